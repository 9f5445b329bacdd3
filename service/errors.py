"""The error envelope: every failure answers ``{"code", "msg"}`` in JSON, never Tornado's HTML page.

:func:`error_answer` maps what went wrong -- an :class:`ApiError`, a Tornado ``HTTPError`` (404, 405, ...), a
download not recorded, an idempotency key reused, a store unavailable, anything else -- to the status, the code
(HTTP status x 100 + a number), the message and any headers the client needs (``Allow``, ``Retry-After``);
``BaseHandler.write_error`` sends it. :func:`log_failure` decides how a failure is logged: a client's mistake not
at all, a store outage through :class:`StoreTrouble` (a line every few seconds, not one per request), anything
unexpected by Tornado, with its traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.client import responses

import pymongo.errors
import pymysql.err  # type: ignore[import-untyped]
import tornado.web
from tornado import httputil

from cachelayer import DeadlineExceededError, LeaseTimeoutError, LoadFailedError

from .downloads import KeyConflict, NotRecorded
from .validation import (
    DEPENDENCY_UNAVAILABLE,
    IDEMPOTENCY_KEY_CONFLICT,
    INTERNAL_ERROR,
    METHOD_NOT_ALLOWED,
    NOT_RECORDED,
    ROUTE_NOT_FOUND,
    ApiError,
)

__all__ = [
    "STORE_TROUBLE",
    "ErrorAnswer",
    "StoreTrouble",
    "allowed_methods",
    "dependency_of",
    "error_answer",
    "log_failure",
    "reason_phrase",
]

log = logging.getLogger("wallpaper.http")

_STORES_BY_MODULE = {"pymongo": "mongo", "motor": "mongo", "pymysql": "mysql", "aiomysql": "mysql"}
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_ALLOWED: dict[type, str] = {}


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """What an error page says: its status, the envelope's code and message, and headers to add."""

    status: int
    code: int
    msg: str
    headers: tuple[tuple[str, str], ...] = ()


def dependency_of(exc: BaseException) -> str | None:
    """The store an exception comes from, if it is a store being unavailable (-> 503). A load that failed in
    another worker, which this request waited for (:class:`LoadFailedError`), names that load's store by its
    exception's type; a request whose budget ran out waiting for another's load (``DeadlineExceededError``, a
    ``LeaseTimeoutError``) names the cache."""
    if isinstance(exc, pymongo.errors.PyMongoError):
        return "mongo"
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
        return "mysql"
    if isinstance(exc, LoadFailedError):
        return _STORES_BY_MODULE.get(exc.error_type.partition(".")[0], "a dependency")
    if isinstance(exc, DeadlineExceededError):
        return "a dependency"  # the load it waited for (of another request) did not end within its budget
    if isinstance(exc, LeaseTimeoutError):
        return "cache"
    if isinstance(exc, TimeoutError | ConnectionError):
        return "a dependency"
    return None


def allowed_methods(handler: type[tornado.web.RequestHandler]) -> str:
    """The ``Allow`` value of a handler class: the methods it implements (those it does not are still
    ``RequestHandler``'s own, which answer 405)."""
    allow = _ALLOWED.get(handler)
    if allow is None:
        base = tornado.web.RequestHandler
        methods = [m for m in _METHODS if getattr(handler, m.lower()) is not getattr(base, m.lower())]
        allow = _ALLOWED[handler] = ", ".join(methods)
    return allow


def reason_phrase(status_code: int, exc: BaseException | None, given: str | None) -> str:
    """The reason phrase ``send_error`` put on the status line: the ``HTTPError``'s, else the one it was given,
    else the standard one (worked out again: Tornado keeps it in a private attribute)."""
    if isinstance(exc, tornado.web.HTTPError) and exc.reason:
        return str(exc.reason)
    return given or responses.get(status_code, "Unknown")


def error_answer(
    status_code: int,
    exc: BaseException | None,
    reason: str,
    request: httputil.HTTPServerRequest,
    handler: type[tornado.web.RequestHandler],
) -> ErrorAnswer:
    """The answer to ``exc`` (None: ``send_error`` without an exception), which Tornado would send as
    ``status_code`` with ``reason``, raised while ``handler`` served ``request``."""
    if isinstance(exc, ApiError):
        return ErrorAnswer(exc.status, exc.code, exc.msg)
    if isinstance(exc, tornado.web.HTTPError):
        if status_code == 405:
            msg = f"method {request.method} not allowed on {request.path}"
            return ErrorAnswer(405, METHOD_NOT_ALLOWED, msg, (("Allow", allowed_methods(handler)),))
        if status_code == 404:
            return ErrorAnswer(404, ROUTE_NOT_FOUND, f"no such path: {request.path[:100]}")
        return ErrorAnswer(status_code, status_code * 100 + 1, exc.log_message or reason)
    if isinstance(exc, NotRecorded):
        msg = (
            "the download was not recorded (a store is unavailable); retrying with the same Idempotency-Key"
            f" ({exc.key}) is safe: if it was recorded after all, it is found by key and not counted twice"
        )
        return ErrorAnswer(503, NOT_RECORDED, msg, (("Retry-After", "1"), ("Idempotency-Key", exc.key)))
    if isinstance(exc, KeyConflict):
        return ErrorAnswer(409, IDEMPOTENCY_KEY_CONFLICT, str(exc))
    if exc is not None and (store := dependency_of(exc)) is not None:
        msg = f"{store} unavailable, try again later"
        return ErrorAnswer(503, DEPENDENCY_UNAVAILABLE, msg, (("Retry-After", "1"),))
    if status_code < 500:
        return ErrorAnswer(status_code, status_code * 100 + 1, reason)
    return ErrorAnswer(status_code, INTERNAL_ERROR, "internal error")


class StoreTrouble:
    """Requests that failed because a store was unavailable, logged per store at most once per ``interval``
    seconds at WARNING (with how many failed since the last line), each one at DEBUG: an outage under load is a
    line every few seconds, not a line per request."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # store -> (when its last WARNING was, failures since)

    def failed(self, store: str, error: BaseException, request_id: str) -> None:
        now = self._clock()
        last, since = self._last.get(store, (float("-inf"), 0))
        extra = {"request_id": request_id}
        if now - last < self.interval:
            self._last[store] = (last, since + 1)
            log.debug("%s unavailable: %r", store, error, extra=extra)
            return
        self._last[store] = (now, 0)
        more = f" ({since} more requests failed for it since the last such line)" if since else ""
        log.warning("%s unavailable: %r%s", store, error, more, extra=extra)


STORE_TROUBLE = StoreTrouble()


def log_failure(error: BaseException | None, request_id: str) -> bool:
    """Log a request's failure the service's way; False when it is unexpected, for Tornado to log with its
    traceback. A client's mistake (an :class:`ApiError`, a reused key) is its answer, not a log line."""
    if isinstance(error, ApiError | KeyConflict):
        return True
    if isinstance(error, NotRecorded):
        log.warning("%s", error, extra={"request_id": request_id})
        return True
    if error is not None and (store := dependency_of(error)) is not None:
        STORE_TROUBLE.failed(store, error, request_id)
        return True
    return False
