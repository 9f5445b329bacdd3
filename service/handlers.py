"""HTTP in and out. Cached responses go out as the stored bytes, never parsed again.

A cached read: validate -> ``catalog.<fn>.entry(...)`` -> :meth:`BaseHandler.send_entry`, which sends the stored
zstd frame as is to a client that accepts zstd (``Content-Encoding: zstd``), the decompressed JSON bytes otherwise
(Tornado may gzip them), with a weak ETag of the bytes, ``Cache-Control: max-age`` = the remaining TTL and
``X-Cache``. Every error is a JSON ``{"code", "msg"}`` (``write_error`` is overridden: never an HTML traceback).
"""

from __future__ import annotations

import hashlib
import itertools
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
import tornado.netutil
import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import httputil

from cachelayer import LeaseTimeoutError

from .catalog import ALL
from .openapi import openapi_document
from .runtime import Services
from .validation import (
    CATEGORY_NOT_FOUND,
    DEPENDENCY_UNAVAILABLE,
    INTERNAL_ERROR,
    METHOD_NOT_ALLOWED,
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
]

log = logging.getLogger("wallpaper.http")
JSON_TYPE: Final = "application/json; charset=UTF-8"
_REQUEST_ID_OK: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Entry(Protocol):
    """What :meth:`BaseHandler.send_entry` needs: a :class:`cachelayer.CacheEntry`, or catalog's uncached one."""

    @property
    def outcome(self) -> str: ...
    @property
    def expires_at(self) -> float: ...
    def body(self) -> bytes: ...
    def zstd_frame(self) -> bytes | None: ...


class _Process:
    """Per-process constants, reset in a forked child: the pid header and the request-id generator.

    A generated request id is ``<8 random hex of this process>-<counter, hex>``: unique across workers and
    restarts for any practical purpose, and ~10x cheaper than ``uuid4().hex`` (no urandom read per request)."""

    pid = str(os.getpid())
    prefix = os.urandom(4).hex() + "-"
    counter = itertools.count(1)

    @classmethod
    def reset(cls) -> None:
        cls.pid = str(os.getpid())
        cls.prefix = os.urandom(4).hex() + "-"
        cls.counter = itertools.count(1)


os.register_at_fork(after_in_child=_Process.reset)


def new_request_id() -> str:
    return f"{_Process.prefix}{next(_Process.counter):x}"


def weak_etag(body: bytes) -> str:
    return f'W/"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'


class _ETags:
    """Weak ETags of stored values, memoized: BLAKE2b-96 of the body once per stored value, not per request.

    Keyed by (route, arguments, expires_at, recompute_time, stored payload size): a stored value is written once
    and these header fields come with it, so a rewrite (even of the same bytes) gets a new key. Bounded."""

    def __init__(self, limit: int = 8192) -> None:
        self.limit = limit
        self.memo: dict[Any, str] = {}

    def get(self, key: Any, entry: Entry, body: bytes) -> str:
        """The ETag of ``body``, the bytes of ``entry``."""
        frame = getattr(entry, "frame", None)
        if frame is None:  # not from the cache (caching switched off): hash the bytes
            return weak_etag(body)
        memo_key = (key, frame.expires_at, frame.recompute_time, len(frame.payload))
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


def client_ip(request: httputil.HTTPServerRequest) -> str | None:
    """The client's address: ``X-Real-Ip``, else the last ``X-Forwarded-For`` hop, else the peer (what
    Tornado's ``xheaders`` did, here only where an address is used)."""
    forwarded = request.headers.get("X-Forwarded-For")
    ip = forwarded.split(",")[-1].strip() if forwarded else None
    ip = request.headers.get("X-Real-Ip", ip)
    if ip and tornado.netutil.is_valid_ip(ip):
        return ip
    return request.remote_ip


_ZSTD_ACCEPTED: dict[str, bool] = {}
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


def accepts_zstd(header: str) -> bool:
    """Whether an ``Accept-Encoding`` value accepts zstd (present, and not with ``q=0``)."""
    for part in header.split(","):
        coding, *params = part.split(";")
        if coding.strip().lower() != "zstd":
            continue
        for param in params:
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def accepts_zstd_cached(header: str) -> bool:
    """:func:`accepts_zstd`, memoized per header value (clients send a handful of distinct values)."""
    ok = _ZSTD_ACCEPTED.get(header)
    if ok is None:
        if len(_ZSTD_ACCEPTED) >= 1024:
            _ZSTD_ACCEPTED.clear()
        ok = _ZSTD_ACCEPTED[header] = accepts_zstd(header)
    return ok


class BaseHandler(tornado.web.RequestHandler):
    services: Services
    route: str = "other"

    def initialize(self, services: Services, route: str = "other") -> None:
        self.services = services
        self.route = route
        self.cache_outcome: str | None = None
        self.request_id = ""
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
        headers["X-Worker-Pid"] = _Process.pid
        if not self.application.settings.get("compress_response"):
            headers["Vary"] = "Accept-Encoding"

    def prepare(self) -> None:
        given = self.request.headers.get("X-Request-Id")
        self.request_id = given if given is not None and _REQUEST_ID_OK.fullmatch(given) else new_request_id()
        self._headers["X-Request-Id"] = self.request_id
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
        outcome = self.cache_outcome = entry.outcome
        body = entry.body()
        if body == b"null":
            raise not_found()
        etag = ETAGS.get(key, entry, body)
        remaining = 0 if outcome == "stale" else max(0, int(entry.expires_at - time.time()))
        headers = self._headers  # values built here, all header-safe: no set_header validation per call
        headers["ETag"] = etag
        headers["Cache-Control"] = f"public, max-age={remaining}"
        headers["X-Cache"] = outcome
        request_headers = self.request.headers
        inm = request_headers.get("If-None-Match")
        if inm is not None and (inm.strip() == "*" or etag in (t.strip() for t in inm.split(","))):
            self.set_status(304)
            self.finish()
            return
        encoding = request_headers.get("Accept-Encoding")
        if encoding is not None and "zstd" in encoding.lower() and accepts_zstd_cached(encoding):
            frame = entry.zstd_frame()
            if frame is not None:
                headers["Content-Encoding"] = "zstd"
                self.finish(frame)
                return
        self.finish(body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        code, msg = INTERNAL_ERROR, "internal error"
        if isinstance(exc, ApiError):
            status_code, code, msg = exc.status, exc.code, exc.msg
        elif isinstance(exc, tornado.web.HTTPError):
            if status_code == 405:
                code, msg = METHOD_NOT_ALLOWED, f"method {self.request.method} not allowed on {self.request.path}"
            elif status_code == 404:
                code, msg = ROUTE_NOT_FOUND, f"no such path: {self.request.path[:100]}"
            else:
                code, msg = status_code * 100 + 1, exc.log_message or self._reason
        elif exc is not None and (store := dependency_of(exc)) is not None:
            status_code, code, msg = 503, DEPENDENCY_UNAVAILABLE, f"{store} unavailable, try again later"
            self.set_header("Retry-After", "1")
        elif status_code < 500:
            code, msg = status_code * 100 + 1, self._reason
        self.set_status(status_code)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(orjson.dumps({"code": code, "msg": msg}))

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        if isinstance(value, ApiError):
            return
        if value is not None and (store := dependency_of(value)) is not None:
            log.warning("%s unavailable: %r", store, value, extra={"request_id": self.request_id})
            return
        super().log_exception(typ, value, tb)


class ListHandler(BaseHandler):
    async def get(self) -> None:
        query = list_query(self.request)
        args = list_args(query)
        entry = await self.services.catalog.list_page.entry(*args)
        self.send_entry(
            entry,
            lambda: ApiError(404, CATEGORY_NOT_FOUND, f"unknown category {query.category!r} (parameter category)"),
            ("list", args),
        )


class DetailHandler(BaseHandler):
    async def get(self, raw_id: str) -> None:
        wallpaper_id = parse_wallpaper_id(raw_id)
        entry = await self.services.catalog.detail.entry(wallpaper_id)
        self.send_entry(
            entry,
            lambda: ApiError(404, WALLPAPER_NOT_FOUND, f"no wallpaper with id {wallpaper_id}"),
            ("detail", wallpaper_id),
        )


class CategoriesHandler(BaseHandler):
    async def get(self) -> None:
        entry = await self.services.catalog.categories.entry()
        self.send_entry(entry, lambda: ApiError(404, CATEGORY_NOT_FOUND, "no categories"), ("categories",))


class DownloadHandler(BaseHandler):
    async def post(self, raw_id: str) -> None:
        wallpaper_id = parse_wallpaper_id(raw_id)
        result = await self.services.catalog.record_download(wallpaper_id, client_ip(self.request))
        if result is None:
            raise ApiError(404, WALLPAPER_NOT_FOUND, f"no wallpaper with id {wallpaper_id}")
        self.set_header("Cache-Control", "no-store")
        self.write_json({"code": 0, "msg": "ok", "data": result})


class HealthHandler(BaseHandler):
    async def get(self) -> None:
        dependencies = await self.services.health()
        down = [name for name, state in dependencies.items() if not state["ok"]]
        data = {"status": "down" if down else "ok", "pid": os.getpid(), "dependencies": dependencies}
        self.set_header("Cache-Control", "no-store")
        if down:
            self.write_json(
                {"code": DEPENDENCY_UNAVAILABLE, "msg": f"unavailable: {', '.join(down)}", "data": data}, 503
            )
        else:
            self.write_json({"code": 0, "msg": "ok", "data": data})


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.application.settings["metrics_registry"]))


class OpenAPIHandler(BaseHandler):
    _body: bytes | None = None

    def get(self) -> None:
        if OpenAPIHandler._body is None:
            OpenAPIHandler._body = orjson.dumps(openapi_document())
        self.finish(OpenAPIHandler._body)


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
