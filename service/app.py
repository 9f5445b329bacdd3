"""Routes, the access log line and the Prometheus metrics of one process."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import tornado.routing
import tornado.web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from cachelayer import register_prometheus

from .handlers import (
    BaseHandler,
    CategoriesHandler,
    DetailHandler,
    DownloadHandler,
    HealthHandler,
    ListHandler,
    MetricsHandler,
    NotFoundHandler,
    OpenAPIHandler,
)
from .logs import ACCESS_LOGGER
from .openapi import PREFIX
from .runtime import Services

__all__ = ["make_app"]

access_log = logging.getLogger(ACCESS_LOGGER)


class _PoolCollector:
    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily(
            "wallpaper_pool_connections", "Connections of each store's pool, by state", labels=["store", "state"]
        )
        for store, stats in self.services.pool_stats().items():
            for state, value in stats.items():
                family.add_metric([store, state], float(value))
        yield family
        in_flight = GaugeMetricFamily("wallpaper_http_in_flight", "Requests being served by this process")
        in_flight.add_metric([], float(self.services.in_flight))
        yield in_flight


def make_app(services: Services) -> tornado.web.Application:
    registry = CollectorRegistry()
    requests = Counter(
        "wallpaper_http_requests", "HTTP requests served", ["route", "method", "status"], registry=registry
    )
    latency = Histogram(
        "wallpaper_http_request_duration_seconds",
        "HTTP request duration",
        ["route"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    )
    register_prometheus("wallpaper", services.cache.stats, registry)
    registry.register(_PoolCollector(services))
    pid = os.getpid()

    def log_request(handler: tornado.web.RequestHandler) -> None:
        route = getattr(handler, "route", "other")
        status = handler.get_status()
        seconds = handler.request.request_time()
        requests.labels(route, handler.request.method, str(status)).inc()
        latency.labels(route).observe(seconds)
        if access_log.isEnabledFor(logging.INFO) and not access_log.disabled:
            access_log.info(
                "request",
                extra={
                    "request_id": getattr(handler, "request_id", None),
                    "method": handler.request.method,
                    "path": handler.request.path,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "cache": getattr(handler, "cache_outcome", None),
                    "pid": pid,
                },
            )

    def route(path: str, handler: type[BaseHandler], name: str) -> tornado.routing.URLSpec:
        return tornado.web.url(path, handler, {"services": services, "route": name}, name=name)

    return tornado.web.Application(
        [
            route(rf"{PREFIX}/wallpaperList\.json", ListHandler, "list"),
            route(rf"{PREFIX}/wallpaper/([^/]{{1,64}})\.json", DetailHandler, "detail"),
            route(rf"{PREFIX}/categories\.json", CategoriesHandler, "categories"),
            route(rf"{PREFIX}/wallpaper/([^/]{{1,64}})/download", DownloadHandler, "download"),
            route(r"/healthz", HealthHandler, "healthz"),
            route(r"/metrics", MetricsHandler, "metrics"),
            route(r"/openapi\.json", OpenAPIHandler, "openapi"),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services, "route": "not_found"},
        compress_response=services.settings.server.gzip,
        log_function=log_request,
        metrics_registry=registry,
        serve_traceback=False,
    )
