"""The headers of an answer from the cache, written by one set of functions for both ways it goes out: a
:class:`~service.base_handler.BaseHandler` (Tornado's request handlers) and the cache lane (``lane.py``), which
answers from the cache without one. What the two send is the same bytes but for ``Date`` and
``X-Request-Id`` (``tests/service/test_lane.py`` compares them).

Also the hand-over between them: a request the lane fetched but does not answer itself (a cached "not found", an
answer Tornado's gzip transform will compress, a fetch that raised) goes to its handler with the entry or the
exception (:func:`hand_over`, :func:`handed`), so that the fetch is made, and counted, once.
"""

from __future__ import annotations

import re
import time
import weakref
from typing import Any, Final

import tornado
import tornado.web
from tornado import httputil

from cachelayer import CacheEntry

from .freshness import freshness_headers
from .negotiation import ETAGS, Entry, accepts_cached, header, representation
from .representations import ServedDictionary
from .request_ids import Process, new_request_id

__all__ = [
    "JSON_TYPE",
    "SERVER",
    "gzip_applies",
    "hand_over",
    "hand_over_done",
    "handed",
    "http_date",
    "put_cached",
    "put_defaults",
    "request_id_of",
]

JSON_TYPE: Final = "application/json; charset=UTF-8"
SERVER: Final = f"TornadoServer/{tornado.version}"
_REQUEST_ID_OK: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_GZIP_MIN_LENGTH: Final = tornado.web.GZipContentEncoding.MIN_LENGTH
_date: list[Any] = [0, ""]


def http_date() -> str:
    """The ``Date`` header value, formatted once per second (Tornado formats it for every response)."""
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, httputil.format_timestamp(now)
    return str(_date[1])


def request_id_of(request_headers: httputil.HTTPHeaders) -> str:
    """The request's id: the client's ``X-Request-Id`` when it is a sane token, else a new one."""
    given = header(request_headers, "X-Request-Id")
    return given if given is not None and _REQUEST_ID_OK.fullmatch(given) else new_request_id()


def put_defaults(headers: httputil.HTTPHeaders, request_id: str, gzip_transform: bool) -> None:
    """What every answer carries after ``Server`` and ``Date``. Trusted values: straight into the header map
    (``RequestHandler.set_header`` would re-validate each)."""
    headers["Content-Type"] = JSON_TYPE
    headers["X-Worker-Pid"] = Process.pid
    headers["X-Request-Id"] = request_id
    if not gzip_transform:
        headers["Vary"] = "Accept-Encoding"


def put_cached(
    headers: httputil.HTTPHeaders,
    entry: Entry,
    body: bytes,
    request_headers: httputil.HTTPHeaders,
    dictionary: ServedDictionary | None,
    gzip_transform: bool,
    key: Any,
    now: float,
) -> tuple[str | None, bytes, str]:
    """The cache's headers of a 200 answer of ``entry`` (whose JSON is ``body``) into ``headers``; returns the
    coding it goes out with (None: the JSON itself), the bytes to send and their ETag. ``key`` names the value
    (route and arguments) for the ETag memo."""
    outcome = entry.outcome.value
    cache_control, status = freshness_headers(outcome, entry.expires_at, now, entry.invalidated)
    headers["Cache-Control"] = cache_control
    headers["X-Cache"] = outcome
    headers["Cache-Status"] = status
    if dictionary is not None:
        headers["Link"] = dictionary.link
        # Tornado's gzip transform appends ", Accept-Encoding" to this itself; without it, we name it here.
        headers["Vary"] = "Available-Dictionary" if gzip_transform else "Accept-Encoding, Available-Dictionary"
    coding, payload = representation(entry, body, request_headers, dictionary)
    if coding is not None:
        headers["Content-Encoding"] = coding
    etag = headers["ETag"] = ETAGS.get(key, entry, body, coding)
    return coding, payload, etag


def gzip_applies(request_headers: httputil.HTTPHeaders, coding: str | None, payload: bytes) -> bool:
    """Whether the gzip transform (``negotiation.GzipWhenAccepted``, when on) compresses this answer: the client
    accepts gzip, and the answer is JSON of at least Tornado's minimum length that no other coding took."""
    if coding is not None or len(payload) < _GZIP_MIN_LENGTH:
        return False
    encoding = header(request_headers, "Accept-Encoding")
    return encoding is not None and accepts_cached(encoding, "gzip")


# What the lane fetched for requests it handed to their handler (an entry, or the exception its fetch raised), and
# when the lane received each, by the request's connection object (one per request in Tornado's HTTP/1.1 server):
# weak keys, and popped when the handler finishes (:func:`hand_over_done`) even if it never asked: a handed
# exception's traceback holds the connection, so a leftover would keep its own key alive.
_HANDED: weakref.WeakKeyDictionary[object, CacheEntry[Any] | Exception] = weakref.WeakKeyDictionary()
_STARTED: weakref.WeakKeyDictionary[object, float] = weakref.WeakKeyDictionary()


def hand_over(request_connection: object, fetched: CacheEntry[Any] | Exception, started: float) -> None:
    """Pass what the lane fetched to the request's handler; ``started``: when the lane received the request
    (``time.time()``), for the access line's duration."""
    _HANDED[request_connection] = fetched
    _STARTED[request_connection] = started


def handed(request: httputil.HTTPServerRequest) -> CacheEntry[Any] | None:
    """The entry the lane fetched for this request (once), or None: fetch it. Raises what the lane's fetch
    raised, here, where the handler maps it to its answer."""
    if not _HANDED:
        return None
    fetched = _HANDED.pop(request.connection, None)
    if isinstance(fetched, Exception):
        raise fetched
    return fetched


def hand_over_done(request: httputil.HTTPServerRequest) -> float:
    """The request's duration so far, in seconds, from when it was received: by the lane, when the lane handed it
    over (Tornado's own clock for the request starts when its handler does). Drops what the handler left."""
    if _STARTED:
        started = _STARTED.pop(request.connection, None)
        if started is not None:
            _HANDED.pop(request.connection, None)
            return time.time() - started
    return request.request_time()
