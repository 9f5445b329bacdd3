"""What every handler does around its route: default headers, the in-flight count, answers from the cache and
errors. Cached responses go out as the stored bytes, never parsed again.

A cached read: validate -> ``catalog.<fn>.entry(...)`` -> :meth:`BaseHandler.send_entry`, which sends the stored
frame as is to a client that accepts its coding (``negotiation.py``: ``dcz``, ``zstd``), the decompressed JSON
bytes otherwise (Tornado may gzip them, unless the client refuses gzip with ``q=0``), with a weak ETag of the
bytes, ``Cache-Control: max-age`` = the remaining TTL, ``X-Cache`` and ``Cache-Status`` (RFC 9211:
``freshness.py``). Every error is a JSON ``{"code", "msg"}`` (``write_error`` is overridden: never an HTML
traceback; ``errors.py`` maps each failure to its answer).

Two of Tornado's private attributes are written here, on the hot path, each pinned against the installed Tornado
by ``tests/service/test_tornado_privates.py``: ``_headers`` (the header map: :meth:`BaseHandler.clear` builds it,
and trusted constant values go straight into it, without ``set_header``'s validation of each) and
``_write_buffer`` (reset by ``clear()``, which has no public equivalent).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import tornado.web
from tornado import httputil

from .answers import JSON_TYPE, SERVER, http_date, put_cached, put_defaults, request_id_of
from .errors import error_answer, log_failure, reason_phrase
from .freshness import cache_status
from .negotiation import Entry, header
from .services import Services
from .validation import ApiError

__all__ = ["JSON_TYPE", "BaseHandler", "http_date"]


class BaseHandler(tornado.web.RequestHandler):
    services: Services
    route: str = "other"

    def initialize(self, services: Services, route: str = "other") -> None:
        self.services = services
        self.route = route
        self.cache_outcome: str | None = None
        self._counted = False
        self._traced: tuple[Any, Any] | None = None  # the request's span and context token (tracing.py)

    def clear(self) -> None:
        """Tornado's ``clear()`` with the Date header formatted once per second and our defaults built in."""
        self._headers = httputil.HTTPHeaders({"Server": SERVER, "Date": http_date()})
        self.set_default_headers()
        self._write_buffer = []
        self.set_status(200)

    def set_default_headers(self) -> None:
        # Here, not in prepare(): every answer carries the request id, also a 405 Tornado raises before prepare()
        # and an error page (send_error clears the headers and comes back here; the id is kept).
        request_id = self.__dict__.get("request_id")
        if request_id is None:
            request_id = self.request_id = request_id_of(self.request.headers)
        put_defaults(self._headers, request_id, bool(self.application.settings.get("gzip_transform")))

    def prepare(self) -> None:
        services = self.services
        services.request_started()
        self._counted = True
        if services.tracing is not None:  # the one test a request pays while tracing is off
            request = self.request
            self._traced = services.tracing.start(request.method or "", self.route, request.path, request.headers)

    def trace_id(self) -> str | None:
        """The request's trace id (32 hex digits) while it is traced, for its access line."""
        traced = self._traced
        return None if traced is None else f"{traced[0].get_span_context().trace_id:032x}"

    def on_finish(self) -> None:
        if self._counted:
            self.services.request_finished()
            self._counted = False
        traced = self._traced
        if traced is not None:
            self._traced = None
            tracing = self.services.tracing
            assert tracing is not None
            tracing.end(traced, self.get_status())

    def compute_etag(self) -> str | None:
        return None  # cached responses set their own (from the stored bytes); the rest have none

    def write_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(orjson.dumps(value))

    def send_entry(self, entry: Entry, not_found: Callable[[], ApiError], key: Any) -> None:
        """Send a cached envelope from its stored bytes (no JSON parse); ``not_found()`` is raised for a cached
        "not found". ``key`` identifies the value (route and arguments) for the ETag memo."""
        outcome = self.cache_outcome = entry.outcome.value
        body = entry.body()
        now = time.time()
        expires_at = entry.expires_at
        if body == b"null":
            # A cached "not found": the error page says where it came from too (send_error clears the headers).
            self._cache_headers = (outcome, cache_status(outcome, expires_at, now, entry.invalidated))
            raise not_found()
        request_headers = self.request.headers
        gzip = bool(self.application.settings.get("gzip_transform"))
        _, payload, etag = put_cached(
            self._headers, entry, body, request_headers, self.services.dictionary, gzip, key, now
        )
        inm = header(request_headers, "If-None-Match")
        if inm is not None and (inm.strip() == "*" or etag in (t.strip() for t in inm.split(","))):
            self.set_status(304)
            self.clear_header("Content-Encoding")
            self.finish()
            return
        self.finish(payload)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        cached = self.__dict__.get("_cache_headers")
        if cached is not None:
            self.set_header("X-Cache", cached[0])
            self.set_header("Cache-Status", cached[1])
        exc = kwargs.get("exc_info", (None, None, None))[1]
        reason = reason_phrase(status_code, exc, kwargs.get("reason"))
        answer = error_answer(status_code, exc, reason, self.request, type(self))
        for name, value in answer.headers:
            self.set_header(name, value)
        self.set_status(answer.status)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(orjson.dumps({"code": answer.code, "msg": answer.msg}))

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        if not log_failure(value, self.request_id):
            super().log_exception(typ, value, tb)
