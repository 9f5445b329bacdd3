"""The handler of each route (``app.py`` maps the URLs to them): parse and validate, ask the catalog or the
services, answer through :class:`BaseHandler` (``send_entry`` for an answer from the cache, ``write_json``
otherwise; errors by raising, into the JSON envelope)."""

from __future__ import annotations

import os
from typing import ClassVar

import orjson
import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST
from tornado import httputil

from cachelayer import time_budget

from .answers import handed
from .base_handler import JSON_TYPE, BaseHandler
from .catalog import ALL
from .downloads import IDEMPOTENCY_KEY_RE
from .openapi import openapi_document
from .representations import ONE_YEAR
from .services import Services
from .validation import (
    CATEGORY_NOT_FOUND,
    INVALID_PARAMETER,
    NOT_READY,
    ROUTE_NOT_FOUND,
    WALLPAPER_NOT_FOUND,
    ApiError,
    ListQuery,
    parse_list_query,
    parse_wallpaper_id,
)

__all__ = [
    "CategoriesHandler",
    "CeilingHandler",
    "DetailHandler",
    "DictionaryHandler",
    "DownloadHandler",
    "HealthHandler",
    "ListHandler",
    "MetricsHandler",
    "NotFoundHandler",
    "OpenAPIHandler",
    "ReadyHandler",
    "known_list_query",
    "list_args",
    "list_query",
]

_LIST_QUERIES: dict[str, ListQuery] = {}


def list_args(query: ListQuery) -> tuple[str, str, int, int]:
    """The arguments of ``catalog.list_page`` for a list query."""
    return (query.category or ALL, query.sort, query.page, query.page_size)


def known_list_query(query: str) -> ListQuery | None:
    """The parsed list query of a raw query string that :func:`list_query` met and found valid, or None."""
    return _LIST_QUERIES.get(query)


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


class ListHandler(BaseHandler):
    async def get(self) -> None:
        query = list_query(self.request)
        args = list_args(query)
        catalog = self.services.catalog
        with time_budget(self.services.settings.server.request_budget):
            entry = handed(self.request)  # the lane's fetch (lane.py), when it did not answer itself: no category
            if entry is None:
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
        catalog = self.services.catalog
        with time_budget(self.services.settings.server.request_budget):
            entry = handed(self.request)  # the lane's fetch (lane.py): it asked may_exist before it planned one
            if entry is None:
                if not await catalog.may_exist(wallpaper_id):
                    raise ApiError(404, WALLPAPER_NOT_FOUND, f"no wallpaper with id {wallpaper_id}")
                entry = await catalog.detail.entry(wallpaper_id)
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
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Cache-Control", f"public, max-age={ONE_YEAR}, immutable")
        self.set_header("Use-As-Dictionary", dictionary.use_as_dictionary)
        self.set_header("ETag", dictionary.etag)
        if self.request.headers.get("If-None-Match", "").strip() == dictionary.etag:
            self.set_status(304)
            self.finish()
            return
        self.finish(dictionary.data)

    head = get


class CategoriesHandler(BaseHandler):
    async def get(self) -> None:
        with time_budget(self.services.settings.server.request_budget):
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
    """Readiness (admin port): 503 when MongoDB (every page needs it) is down or the process is stopping; Redis or
    MySQL down is ``degraded`` but ready (pages are still answered: from MongoDB, or from the cache)."""

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
    """Prometheus' scrape (admin port): this process's figures, or with forked workers every live worker's."""

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.finish(self.services.metrics.render())

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
