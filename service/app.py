"""Routes, the access log line and the Prometheus metrics of one process."""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

import orjson
import tornado.ioloop
import tornado.routing
import tornado.web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cachelayer import register_prometheus

from .base_handler import BaseHandler
from .logs import ACCESS_LOGGER, writes_text
from .negotiation import GzipWhenAccepted
from .openapi import PREFIX
from .routes import (
    CategoriesHandler,
    CeilingHandler,
    DetailHandler,
    DictionaryHandler,
    DownloadHandler,
    HealthHandler,
    ListHandler,
    MetricsHandler,
    NotFoundHandler,
    OpenAPIHandler,
    ReadyHandler,
)
from .services import Services

__all__ = ["make_app"]

access_log = logging.getLogger(ACCESS_LOGGER)


_LOCAL_GAUGES = {
    "local_entries": "Entries held by this process's local tier",
    "local_bytes": "Bytes the local tier counts against its max_bytes",
}


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
        # The local tier's figures (cache.stats() has them when cache.local is on); register_prometheus exports a
        # fixed set that does not include them.
        stats = self.services.cache.stats()
        if "local_entries" in stats:
            for name, help_text in _LOCAL_GAUGES.items():
                gauge = GaugeMetricFamily(f"cachelayer_{name}", help_text, labels=["cache"])
                gauge.add_metric(["wallpaper"], float(stats[name]))
                yield gauge
            evictions = CounterMetricFamily(
                "cachelayer_local_evictions", "Entries the local tier evicted to stay in bounds", labels=["cache"]
            )
            evictions.add_metric(["wallpaper"], float(stats["local_evictions"]))
            yield evictions


class AccessLines:
    """The access log when the sink is stdout/stderr: the same JSON fields as the logging path (``time``,
    ``level``, ``event``, ``logger``, ``pid``, ``request_id``, ``method``, ``path``, ``status``, ``duration_ms``,
    ``cache``), serialized with orjson on the loop (~1 us) and written in batches (every ``interval`` seconds or
    ``batch`` lines) by a writer thread. Per line, the logging path cost a LogRecord, a copy of it, a
    python-json-logger format and a write in the listener thread (~170 us of the process's CPU under load, the
    GIL shared with the loop); this costs a dict and an orjson.dumps."""

    def __init__(
        self, stream: IO[bytes], pid: int, *, interval: float = 0.05, batch: int = 512, text: bool = False
    ) -> None:
        self.stream, self.pid, self.interval, self.batch = stream, pid, interval, batch
        self.text = text  # one readable line (a terminal), else the JSON object
        self._pending: list[bytes] = []
        self._scheduled = False
        self._second = -1
        self._stamp = ""
        self._chunks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="access-log", daemon=True)
        self._thread.start()

    def line(self, request_id: Any, method: str, path: str, status: int, duration_ms: float, cache: Any) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        stamp = f"{self._stamp}.{int((now - second) * 1000):03d}Z"
        if self.text:
            self._pending.append(
                f"{stamp} INFO    {ACCESS_LOGGER}: {method} {path} {status} {duration_ms} ms cache={cache} "
                f"id={request_id}".encode()
            )
        else:
            self._pending.append(
                orjson.dumps(
                    {
                        "time": stamp,
                        "level": "INFO",
                        "event": "request",
                        "logger": ACCESS_LOGGER,
                        "pid": self.pid,
                        "request_id": request_id,
                        "method": method,
                        "path": path,
                        "status": status,
                        "duration_ms": duration_ms,
                        "cache": cache,
                    }
                )
            )
        if len(self._pending) >= self.batch:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            tornado.ioloop.IOLoop.current().call_later(self.interval, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._pending:
            self._pending.append(b"")
            self._chunks.put(b"\n".join(self._pending))
            self._pending = []

    def _write(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            try:
                self.stream.write(chunk)
                self.stream.flush()
            except (OSError, ValueError):
                continue

    def close(self) -> None:
        self.flush()
        self._chunks.put(None)
        self._thread.join(2)


def _access_lines(services: Services) -> AccessLines | None:
    """The batched writer when the settings allow it (access log on, level INFO or lower, a stream sink)."""
    log = services.settings.log
    if not log.access_log or log.sink not in ("stdout", "stderr") or logging.getLevelName(log.level) > logging.INFO:
        return None
    stream = sys.stdout if log.sink == "stdout" else sys.stderr
    writer = AccessLines(stream.buffer, os.getpid(), text=writes_text(log))
    services.on_close(writer.close)
    return writer


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
    register_prometheus("wallpaper", services.cache.stats, registry, cache=services.cache)
    registry.register(_PoolCollector(services))
    pid = os.getpid()
    # The labelled children, looked up once per (route, method, status) instead of .labels() on every request.
    counters: dict[tuple[str, str, int], Any] = {}
    histograms: dict[str, Any] = {}
    make_record = access_log.makeRecord
    lines = _access_lines(services)

    def log_request(handler: tornado.web.RequestHandler) -> None:
        route = getattr(handler, "route", "other")
        if route == "bench":
            return
        request = handler.request
        method = request.method or ""
        status = handler.get_status()
        seconds = request.request_time()
        counter = counters.get((route, method, status))
        if counter is None:
            counter = counters[(route, method, status)] = requests.labels(route, method, str(status))
        counter.inc()
        histogram = histograms.get(route)
        if histogram is None:
            histogram = histograms[route] = latency.labels(route)
        histogram.observe(seconds)
        request_id = getattr(handler, "request_id", None)
        duration_ms = round(seconds * 1000, 3)
        cache = getattr(handler, "cache_outcome", None)
        if lines is not None:
            lines.line(request_id, method, request.path, status, duration_ms, cache)
        elif not access_log.disabled and access_log.isEnabledFor(logging.INFO):
            # Logger.info() minus its stack walk (findCaller): the record is built directly and handed to the
            # handlers (the queue); the JSON line is formatted off the event loop by the listener thread.
            record = make_record(
                ACCESS_LOGGER,
                logging.INFO,
                __file__,
                0,
                "request",
                (),
                None,
                extra={
                    "request_id": request_id,
                    "method": method,
                    "path": request.path,
                    "status": status,
                    "duration_ms": duration_ms,
                    "cache": cache,
                    "pid": pid,
                },
            )
            access_log.handle(record)

    def route(path: str, handler: type[BaseHandler], name: str) -> tornado.routing.URLSpec:
        return tornado.web.url(path, handler, {"services": services, "route": name}, name=name)

    bench: list[tornado.routing.Rule] = []
    if services.settings.server.bench_routes:
        bench.append(tornado.web.url(r"/_bench/ceiling", CeilingHandler, {"services": services}, name="bench"))
    return tornado.web.Application(
        [
            *bench,
            route(rf"{PREFIX}/wallpaperList\.json", ListHandler, "list"),
            route(rf"{PREFIX}/wallpaper/([^/]{{1,64}})\.json", DetailHandler, "detail"),
            route(rf"{PREFIX}/categories\.json", CategoriesHandler, "categories"),
            route(r"/dictionaries/([0-9]{1,10})\.zdict", DictionaryHandler, "dictionary"),
            route(rf"{PREFIX}/wallpaper/([^/]{{1,64}})/download", DownloadHandler, "download"),
            route(r"/healthz", HealthHandler, "healthz"),
            route(r"/readyz", ReadyHandler, "readyz"),
            route(r"/metrics", MetricsHandler, "metrics"),
            route(r"/openapi\.json", OpenAPIHandler, "openapi"),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services, "route": "not_found"},
        # Tornado's gzip transform ignores q=0; ours does not (negotiation.GzipWhenAccepted).
        transforms=[GzipWhenAccepted] if services.settings.server.gzip else [],
        gzip_transform=services.settings.server.gzip,
        log_function=log_request,
        metrics_registry=registry,
        serve_traceback=False,
    )
