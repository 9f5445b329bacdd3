"""HTTP in and out. Cached responses go out as the stored bytes, never parsed again.

A cached read: validate -> ``catalog.<fn>.entry(...)`` -> :meth:`BaseHandler.send_entry`, which sends the stored
zstd frame as is to a client that accepts zstd (``Content-Encoding: zstd``), the decompressed JSON bytes otherwise
(Tornado may gzip them), with a weak ETag of the bytes, ``Cache-Control: max-age`` = the remaining TTL and
``X-Cache``. Every error is a JSON ``{"code", "msg"}`` (``write_error`` is overridden: never an HTML traceback).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from typing import Any, Final

import orjson
import pymongo.errors
import pymysql.err  # type: ignore[import-untyped]
import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cachelayer import CacheEntry, LeaseTimeoutError

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
    parse_list_query,
    parse_wallpaper_id,
)

__all__ = [
    "BaseHandler",
    "CategoriesHandler",
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
PID: Final = str(os.getpid())
_REQUEST_ID_OK: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


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


class BaseHandler(tornado.web.RequestHandler):
    services: Services
    route: str = "other"

    def initialize(self, services: Services, route: str = "other") -> None:
        self.services = services
        self.route = route
        self.cache_outcome: str | None = None
        self.request_id = ""

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", JSON_TYPE)
        self.set_header("X-Worker-Pid", PID)
        if not self.application.settings.get("compress_response"):
            self.set_header("Vary", "Accept-Encoding")

    def prepare(self) -> None:
        given = self.request.headers.get("X-Request-Id", "")
        ok = 0 < len(given) <= 64 and all(c in _REQUEST_ID_OK for c in given)
        self.request_id = given if ok else uuid.uuid4().hex
        self.set_header("X-Request-Id", self.request_id)
        self.services.request_started()
        self._counted = True

    def on_finish(self) -> None:
        if getattr(self, "_counted", False):
            self.services.request_finished()
            self._counted = False

    def compute_etag(self) -> str | None:
        return None  # cached responses set their own (from the stored bytes); the rest have none

    def write_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(orjson.dumps(value))

    def send_entry(self, entry: CacheEntry, not_found: ApiError) -> None:
        """Send a cached envelope from its stored bytes (no JSON parse)."""
        self.cache_outcome = entry.outcome
        body = entry.body()
        if body == b"null":
            raise not_found
        etag = f'W/"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'
        remaining = 0 if entry.outcome == "stale" else max(0, int(entry.expires_at - time.time()))
        self.set_header("ETag", etag)
        self.set_header("Cache-Control", f"public, max-age={remaining}")
        self.set_header("X-Cache", entry.outcome)
        inm = self.request.headers.get("If-None-Match")
        if inm is not None and (inm.strip() == "*" or etag in (t.strip() for t in inm.split(","))):
            self.set_status(304)
            self.finish()
            return
        if accepts_zstd(self.request.headers.get("Accept-Encoding", "")):
            frame = entry.zstd_frame()
            if frame is not None:
                self.set_header("Content-Encoding", "zstd")
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
        query = parse_list_query(self.request.query_arguments)
        entry = await self.services.catalog.list_page.entry(
            query.category or ALL, query.sort, query.page, query.page_size
        )
        self.send_entry(
            entry, ApiError(404, CATEGORY_NOT_FOUND, f"unknown category {query.category!r} (parameter category)")
        )


class DetailHandler(BaseHandler):
    async def get(self, raw_id: str) -> None:
        wallpaper_id = parse_wallpaper_id(raw_id)
        entry = await self.services.catalog.detail.entry(wallpaper_id)
        self.send_entry(entry, ApiError(404, WALLPAPER_NOT_FOUND, f"no wallpaper with id {wallpaper_id}"))


class CategoriesHandler(BaseHandler):
    async def get(self) -> None:
        entry = await self.services.catalog.categories.entry()
        self.send_entry(entry, ApiError(404, CATEGORY_NOT_FOUND, "no categories"))


class DownloadHandler(BaseHandler):
    async def post(self, raw_id: str) -> None:
        wallpaper_id = parse_wallpaper_id(raw_id)
        result = await self.services.catalog.record_download(wallpaper_id, self.request.remote_ip)
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
