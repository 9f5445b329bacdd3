"""HTTP in and out. Cached responses go out as the stored bytes, never parsed again.

A cached read: validate -> ``catalog.<fn>.entry(...)`` -> :meth:`BaseHandler.send_entry`, which sends the stored
zstd frame as is to a client that accepts zstd (``Content-Encoding: zstd``), the decompressed JSON bytes otherwise
(Tornado may gzip them, unless the client refuses gzip with ``q=0``), with a weak ETag of the bytes,
``Cache-Control: max-age`` = the remaining TTL, ``X-Cache`` and ``Cache-Status`` (RFC 9211). Every error is a
JSON ``{"code", "msg"}`` (``write_error`` is overridden: never an HTML traceback).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any, ClassVar, Final, Protocol

import orjson
import pymongo.errors
import pymysql.err  # type: ignore[import-untyped]
import tornado
import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import httputil

from cachelayer import LeaseTimeoutError

from .catalog import ALL
from .downloads import IDEMPOTENCY_KEY_RE, KeyConflict, NotRecorded
from .openapi import openapi_document
from .representations import ONE_YEAR, available_dictionary, dcz_body
from .request_ids import Process, new_request_id
from .runtime import Services
from .validation import (
    CATEGORY_NOT_FOUND,
    DEPENDENCY_UNAVAILABLE,
    IDEMPOTENCY_KEY_CONFLICT,
    INTERNAL_ERROR,
    INVALID_PARAMETER,
    METHOD_NOT_ALLOWED,
    NOT_READY,
    NOT_RECORDED,
    ROUTE_NOT_FOUND,
    WALLPAPER_NOT_FOUND,
    ApiError,
    ListQuery,
    parse_list_query,
    parse_wallpaper_id,
)

__all__ = [
    "BaseHandler",
    "CategoriesHandler",
    "CeilingHandler",
    "DetailHandler",
    "DownloadHandler",
    "HealthHandler",
    "ListHandler",
    "MetricsHandler",
    "NotFoundHandler",
    "OpenAPIHandler",
    "ReadyHandler",
    "cache_status",
]

log = logging.getLogger("wallpaper.http")
JSON_TYPE: Final = "application/json; charset=UTF-8"
_REQUEST_ID_OK: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Entry(Protocol):
    """What :meth:`BaseHandler.send_entry` needs of a :class:`cachelayer.CacheEntry`."""

    @property
    def outcome(self) -> Any: ...
    @property
    def expires_at(self) -> float: ...
    def body(self) -> bytes: ...
    def zstd_frame(self) -> bytes | None: ...
    def dictionary_frame(self) -> tuple[bytes, bytes] | None: ...


def weak_etag(body: bytes) -> str:
    return f'W/"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'


class _ETags:
    """Weak ETags of stored values, memoized: BLAKE2b-96 of the body once per stored value, not per request.

    Keyed by (route and arguments, expires_at, body length): a stored value is written once with its expiry, so a
    rewrite (even of the same bytes) gets a new key. An entry that was not stored (``expires_at`` 0: bypass) is
    hashed every time. The ETag is of the bytes themselves, so changed content never gets an old ETag (no false
    304). Bounded."""

    def __init__(self, limit: int = 2048) -> None:  # ~0.3 KB each: hot keys, not every key
        self.limit = limit
        self.memo: dict[Any, str] = {}

    def get(self, key: Any, entry: Entry, body: bytes) -> str:
        """The ETag of ``body``, the bytes of ``entry``."""
        expires_at = entry.expires_at
        if not expires_at:
            return weak_etag(body)
        memo_key = (key, expires_at, len(body))
        etag = self.memo.get(memo_key)
        if etag is None:
            if len(self.memo) >= self.limit:
                self.memo.clear()
            etag = self.memo[memo_key] = weak_etag(body)
        return etag


ETAGS: Final = _ETags()
_SERVER: Final = f"TornadoServer/{tornado.version}"
_date: list[Any] = [0, ""]


def http_date() -> str:
    """The ``Date`` header value, formatted once per second (Tornado formats it for every response)."""
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, httputil.format_timestamp(now)
    return str(_date[1])


_ACCEPTED: dict[tuple[str, str], bool] = {}
_LIST_QUERIES: dict[str, ListQuery] = {}


def list_args(query: ListQuery) -> tuple[str, str, int, int]:
    """The arguments of ``catalog.list_page`` for a list query."""
    return (query.category or ALL, query.sort, query.page, query.page_size)


def list_query(request: httputil.HTTPServerRequest) -> ListQuery:
    """:func:`parse_list_query` of the request, memoized per raw query string when valid (clients repeat a few
    hundred distinct queries; validation was ~3 % of a cached request in py-spy, docs/performance.md). Invalid
    queries are parsed every time, so that each gets its own 400 and cannot fill the memo."""
    parsed = _LIST_QUERIES.get(request.query)
    if parsed is None:
        parsed = parse_list_query(request.query_arguments)
        if len(_LIST_QUERIES) >= 4096:
            _LIST_QUERIES.clear()
        _LIST_QUERIES[request.query] = parsed
    return parsed


def dependency_of(exc: BaseException) -> str | None:
    """The store an exception comes from, if it is a store being unavailable (-> 503)."""
    if isinstance(exc, pymongo.errors.PyMongoError):
        return "mongo"
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
        return "mysql"
    if isinstance(exc, LeaseTimeoutError):
        return "cache"
    if isinstance(exc, TimeoutError | ConnectionError):
        return "a dependency"
    return None


def accepts(header: str, coding: str) -> bool:
    """Whether an ``Accept-Encoding`` value accepts ``coding``: listed (or ``*`` is) with a q above 0."""
    star: bool | None = None
    for part in header.split(","):
        name, *params = part.split(";")
        name = name.strip().lower()
        if name not in (coding, "*"):
            continue
        ok = True
        for param in params:
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    ok = float(value) > 0
                except ValueError:
                    ok = False
        if name == coding:
            return ok
        star = ok
    return bool(star)


def accepts_cached(header: str, coding: str) -> bool:
    """:func:`accepts`, memoized per header value (clients send a handful of distinct values)."""
    ok = _ACCEPTED.get((header, coding))
    if ok is None:
        if len(_ACCEPTED) >= 1024:
            _ACCEPTED.clear()
        ok = _ACCEPTED[(header, coding)] = accepts(header, coding)
    return ok


class GzipWhenAccepted(tornado.web.GZipContentEncoding):
    """Tornado's gzip transform, but ``gzip;q=0`` (or ``*;q=0``) is a refusal (Tornado only looks for "gzip")."""

    def __init__(self, request: httputil.HTTPServerRequest) -> None:
        super().__init__(request)
        self._gzipping = accepts_cached(request.headers.get("Accept-Encoding", ""), "gzip")


# A logical expiry before this (Unix seconds) is the library's mark of an invalidated entry (INVALIDATED_AT,
# 1 ms after the epoch), not a moment the entry went stale.
_INVALIDATED_BEFORE: Final = 1.0


def cache_status(outcome: str, expires_at: float, now: float) -> str:
    """The RFC 9211 ``Cache-Status`` value of a cached route (the cache is named ``wallpaper``). ``ttl`` is the
    remaining freshness in seconds, negative once stale; an entry a write marked stale has none to tell."""
    ttl = int(expires_at - now) if expires_at else 0
    if outcome == "hit":
        return f"wallpaper; hit; ttl={ttl}"
    if outcome == "stale":
        if 0 < expires_at < _INVALIDATED_BEFORE:
            return "wallpaper; fwd=stale; detail=invalidated"
        return f"wallpaper; fwd=stale; ttl={ttl}"
    if outcome == "miss":
        return f"wallpaper; fwd=miss; stored; ttl={ttl}"
    if outcome == "fail_open":
        return "wallpaper; fwd=miss; detail=store-unavailable"
    return "wallpaper; fwd=bypass"


_ALLOWED: dict[type, str] = {}


def allowed_methods(handler: type[tornado.web.RequestHandler]) -> str:
    """The ``Allow`` value of a handler class: the methods it implements."""
    allow = _ALLOWED.get(handler)
    if allow is None:
        unimplemented = tornado.web.RequestHandler._unimplemented_method
        methods = [m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
                   if getattr(handler, m.lower()) is not unimplemented]  # fmt: skip
        allow = _ALLOWED[handler] = ", ".join(methods)
    return allow


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


class BaseHandler(tornado.web.RequestHandler):
    services: Services
    route: str = "other"

    def initialize(self, services: Services, route: str = "other") -> None:
        self.services = services
        self.route = route
        self.cache_outcome: str | None = None
        self._counted = False

    def clear(self) -> None:
        """Tornado's ``clear()`` with the Date header formatted once per second and our defaults built in."""
        self._headers = httputil.HTTPHeaders({"Server": _SERVER, "Date": http_date()})
        self.set_default_headers()
        self._write_buffer = []
        self._status_code = 200
        self._reason = "OK"

    def set_default_headers(self) -> None:
        # Trusted constant values: straight into the header map (set_header re-validates each value).
        headers = self._headers
        headers["Content-Type"] = JSON_TYPE
        headers["X-Worker-Pid"] = Process.pid
        # Here, not in prepare(): every answer carries it, also a 405 Tornado raises before prepare() and an
        # error page (send_error clears the headers and comes back here; the id is kept).
        request_id = self.__dict__.get("request_id")
        if request_id is None:
            given = self.request.headers.get("X-Request-Id")
            request_id = given if given is not None and _REQUEST_ID_OK.fullmatch(given) else new_request_id()
            self.request_id = request_id
        headers["X-Request-Id"] = request_id
        if not self.application.settings.get("gzip_transform"):
            headers["Vary"] = "Accept-Encoding"

    def prepare(self) -> None:
        self.services.request_started()
        self._counted = True

    def on_finish(self) -> None:
        if self._counted:
            self.services.request_finished()
            self._counted = False

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
            self._cache_headers = (outcome, cache_status(outcome, expires_at, now))
            raise not_found()
        etag = ETAGS.get(key, entry, body)
        remaining = 0 if outcome == "stale" or not expires_at else max(0, int(expires_at - now))
        headers = self._headers  # values built here, all header-safe: no set_header validation per call
        headers["Cache-Control"] = f"public, max-age={remaining}"
        headers["X-Cache"] = outcome
        headers["Cache-Status"] = cache_status(outcome, expires_at, now)
        request_headers = self.request.headers
        encoding = request_headers.get("Accept-Encoding")
        # The representation: dcz (the stored frame, for a client holding its dictionary), zstd (the stored frame,
        # when it needs no dictionary), else the body (gzipped by the transform when accepted). Each its own ETag.
        coding, payload = None, body
        dictionary = self.services.dictionary
        if dictionary is not None:
            headers["Link"] = dictionary.link
            headers.add("Vary", "Available-Dictionary")
            if encoding is not None and "dcz" in encoding.lower() and accepts_cached(encoding, "dcz"):
                held = available_dictionary(request_headers.get("Available-Dictionary"))
                framed = entry.dictionary_frame() if held is not None else None
                if framed is not None and framed[0] == held:
                    coding, payload = "dcz", dcz_body(framed[0], framed[1])
        if coding is None and encoding is not None and "zstd" in encoding.lower() and accepts_cached(encoding, "zstd"):
            frame = entry.zstd_frame()
            if frame is not None:
                coding, payload = "zstd", frame
        if coding is not None:
            etag = f'{etag[:-1]}-{coding}"'
            headers["Content-Encoding"] = coding
        headers["ETag"] = etag
        inm = request_headers.get("If-None-Match")
        if inm is not None and (inm.strip() == "*" or etag in (t.strip() for t in inm.split(","))):
            self.set_status(304)
            self._headers.pop("Content-Encoding", None)
            self.finish()
            return
        self.finish(payload)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        cached = self.__dict__.get("_cache_headers")
        if cached is not None:
            self._headers["X-Cache"], self._headers["Cache-Status"] = cached
        exc = kwargs.get("exc_info", (None, None, None))[1]
        code, msg = INTERNAL_ERROR, "internal error"
        if isinstance(exc, ApiError):
            status_code, code, msg = exc.status, exc.code, exc.msg
        elif isinstance(exc, tornado.web.HTTPError):
            if status_code == 405:
                code, msg = METHOD_NOT_ALLOWED, f"method {self.request.method} not allowed on {self.request.path}"
                self.set_header("Allow", allowed_methods(type(self)))
            elif status_code == 404:
                code, msg = ROUTE_NOT_FOUND, f"no such path: {self.request.path[:100]}"
            else:
                code, msg = status_code * 100 + 1, exc.log_message or self._reason
        elif isinstance(exc, NotRecorded):
            status_code, code = 503, NOT_RECORDED
            msg = (
                "the download was not recorded (a store is unavailable); retrying with the same Idempotency-Key"
                f" ({exc.key}) is safe: if it was recorded after all, it is found by key and not counted twice"
            )
            self.set_header("Retry-After", "1")
            self.set_header("Idempotency-Key", exc.key)
        elif isinstance(exc, KeyConflict):
            status_code, code, msg = 409, IDEMPOTENCY_KEY_CONFLICT, str(exc)
        elif exc is not None and (store := dependency_of(exc)) is not None:
            status_code, code, msg = 503, DEPENDENCY_UNAVAILABLE, f"{store} unavailable, try again later"
            self.set_header("Retry-After", "1")
        elif status_code < 500:
            code, msg = status_code * 100 + 1, self._reason
        self.set_status(status_code)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(orjson.dumps({"code": code, "msg": msg}))

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        if isinstance(value, ApiError | KeyConflict):
            return
        if isinstance(value, NotRecorded):
            log.warning("%s", value, extra={"request_id": self.request_id})
            return
        if value is not None and (store := dependency_of(value)) is not None:
            STORE_TROUBLE.failed(store, value, self.request_id)
            return
        super().log_exception(typ, value, tb)


class ListHandler(BaseHandler):
    async def get(self) -> None:
        query = list_query(self.request)
        args = list_args(query)
        catalog = self.services.catalog
        if query.category is not None and not await catalog.category_known(query.category):
            raise ApiError(404, CATEGORY_NOT_FOUND, f"unknown category {query.category!r} (parameter category)")
        entry = await catalog.list_page.entry(*args)
        self.send_entry(
            entry,
            lambda: ApiError(404, CATEGORY_NOT_FOUND, f"unknown category {query.category!r} (parameter category)"),
            ("list", args),
        )

    head = get


class DetailHandler(BaseHandler):
    async def get(self, raw_id: str) -> None:
        wallpaper_id = parse_wallpaper_id(raw_id)
        entry = await self.services.catalog.detail.entry(wallpaper_id)
        self.send_entry(
            entry,
            lambda: ApiError(404, WALLPAPER_NOT_FOUND, f"no wallpaper with id {wallpaper_id}"),
            ("detail", wallpaper_id),
        )

    head = get


class DictionaryHandler(BaseHandler):
    """The zstd dictionary the cache stores with, for browsers (Compression Dictionary Transport): immutable under
    its URL (which names its id), ``Use-As-Dictionary`` for the API's paths."""

    def get(self, raw_id: str) -> None:
        dictionary = self.services.dictionary
        if dictionary is None or raw_id != str(dictionary.dict_id):
            raise ApiError(404, ROUTE_NOT_FOUND, f"no dictionary {raw_id[:20]!r} here")
        headers = self._headers
        headers["Content-Type"] = "application/octet-stream"
        headers["Cache-Control"] = f"public, max-age={ONE_YEAR}, immutable"
        headers["Use-As-Dictionary"] = dictionary.use_as_dictionary
        headers["ETag"] = dictionary.etag
        if self.request.headers.get("If-None-Match", "").strip() == dictionary.etag:
            self.set_status(304)
            self.finish()
            return
        self.finish(dictionary.data)

    head = get


class CategoriesHandler(BaseHandler):
    async def get(self) -> None:
        entry = await self.services.catalog.categories.entry()
        self.send_entry(entry, lambda: ApiError(404, CATEGORY_NOT_FOUND, "no categories"), ("categories",))

    head = get


class DownloadHandler(BaseHandler):
    async def post(self, raw_id: str) -> None:
        wallpaper_id = parse_wallpaper_id(raw_id)
        key = self.request.headers.get("Idempotency-Key")
        if key is not None and not IDEMPOTENCY_KEY_RE.fullmatch(key):
            raise ApiError(400, INVALID_PARAMETER, "invalid header Idempotency-Key: expected 1-64 of [A-Za-z0-9_-]")
        client = self.services.proxies.client_ip(self.request)
        result = await self.services.catalog.downloads.record(wallpaper_id, client, key)
        if result is None:
            raise ApiError(404, WALLPAPER_NOT_FOUND, f"no wallpaper with id {wallpaper_id}")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Idempotency-Key", result.key)
        if result.replayed:
            self.set_header("Idempotent-Replayed", "true")
        if result.counted:
            self.write_json({"code": 0, "msg": "ok", "data": {"id": wallpaper_id, "downloads": result.downloads}})
        else:
            msg = "accepted: the download is recorded; the counter catches up within seconds"
            self.write_json({"code": 0, "msg": msg, "data": {"id": wallpaper_id, "downloads": None}}, 202)


class HealthHandler(BaseHandler):
    """Liveness: the process serves (200), unless it is shutting down (503). Touches no dependency."""

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if self.services.stopping:
            self.write_json({"code": NOT_READY, "msg": "shutting down", "data": {"status": "stopping"}}, 503)
        else:
            self.write_json({"code": 0, "msg": "ok", "data": {"status": "alive", "pid": os.getpid()}})

    head = get


class ReadyHandler(BaseHandler):
    """Readiness: 503 when MongoDB (every page needs it) is down or the process is stopping; Redis or MySQL down
    is ``degraded`` but ready (pages are still answered: from MongoDB, or from the cache)."""

    async def get(self) -> None:
        dependencies = await self.services.readiness()
        down = [name for name, state in dependencies.items() if state["status"] != "ok"]
        ready = dependencies["mongo"]["status"] == "ok" and not self.services.stopping
        status = "stopping" if self.services.stopping else "down" if not ready else "degraded" if down else "ok"
        data = {"status": status, "pid": os.getpid(), "dependencies": dependencies}
        self.set_header("Cache-Control", "no-store")
        listed = ", ".join(down) or "none"
        if ready:
            msg = "ok" if not down else f"degraded: {listed} down"
            self.write_json({"code": 0, "msg": msg, "data": data})
        else:
            self.write_json({"code": NOT_READY, "msg": f"not ready: {status}; down: {listed}", "data": data}, 503)

    head = get


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.application.settings["metrics_registry"]))

    head = get


class OpenAPIHandler(BaseHandler):
    _body: bytes | None = None

    def get(self) -> None:
        if OpenAPIHandler._body is None:
            OpenAPIHandler._body = orjson.dumps(openapi_document())
        self.finish(OpenAPIHandler._body)

    head = get


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        super().prepare()
        raise tornado.web.HTTPError(404)


class CeilingHandler(tornado.web.RequestHandler):
    """``GET /_bench/ceiling?<list query>`` (only with ``[server] bench_routes = true``): the list endpoint's
    response bytes, fetched once through the cache, then written from memory. No validation per request, no
    metrics, no access line: the most this Tornado process can serve, the yardstick of the load benchmark."""

    route = "bench"
    _bodies: ClassVar[dict[str, bytes]] = {}

    def initialize(self, services: Services) -> None:
        self.services = services

    async def get(self) -> None:
        body = self._bodies.get(self.request.query)
        if body is None:
            entry = await self.services.catalog.list_page.entry(*list_args(list_query(self.request)))
            body = self._bodies[self.request.query] = entry.body()
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(body)
