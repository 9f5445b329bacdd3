"""The public routes of one process and its request log line (the access line, the HTTP metrics: metrics.py).
The admin port's routes are admin.py's."""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from typing import IO, Any

import orjson
import tornado.ioloop
import tornado.routing
import tornado.web

from .answers import hand_over_done
from .base_handler import BaseHandler
from .logs import ACCESS_LOGGER, writes_text
from .metrics import register_metrics
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
    NotFoundHandler,
    OpenAPIHandler,
)
from .services import Services

__all__ = ["make_app"]

access_log = logging.getLogger(ACCESS_LOGGER)
# ".000Z" to ".999Z": the millisecond field of a line's time without a format spec per line (cold code that showed
# up in the L1 path's instruction-cache misses, docs/performance.md).
_MILLIS: tuple[str, ...] = tuple(f".{ms:03d}Z" for ms in range(1000))


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

    def line(
        self,
        request_id: Any,
        method: str,
        path: str,
        status: int,
        duration_ms: float,
        cache: Any,
        trace_id: str | None = None,
    ) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        stamp = self._stamp + _MILLIS[int((now - second) * 1000)]
        if self.text:
            self._pending.append(
                f"{stamp} INFO    {ACCESS_LOGGER}: {method} {path} {status} {duration_ms} ms cache={cache} "
                f"id={request_id}{'' if trace_id is None else ' trace=' + trace_id}".encode()
            )
        else:
            fields = {
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
            if trace_id is not None:
                fields["trace_id"] = trace_id
            self._pending.append(orjson.dumps(fields))
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
    """The public app: the API, the dictionary, ``/healthz`` and ``/openapi.json``. Registers the process's metrics
    (call once per ``services``); its ``log_function`` setting is the request log the admin app shares."""
    http = register_metrics(services)
    pid = os.getpid()
    make_record = access_log.makeRecord
    lines = _access_lines(services)

    def record(
        route: str,
        method: str,
        path: str,
        status: int,
        seconds: float,
        cache: Any,
        request_id: Any,
        trace_id: str | None = None,
    ) -> None:
        """One answered request: the HTTP metrics and the access line (a handler's, or the lane's: lane.py)."""
        http.observe(route, method, status, cache, seconds)
        duration_ms = int(seconds * 1_000_000) / 1000  # to the microsecond; round() reaches float formatting code
        if lines is not None:
            lines.line(request_id, method, path, status, duration_ms, cache, trace_id)
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
                    "path": path,
                    "status": status,
                    "duration_ms": duration_ms,
                    "cache": cache,
                    "pid": pid,
                },
            )
            access_log.handle(record)

    def log_request(handler: tornado.web.RequestHandler) -> None:
        route = getattr(handler, "route", "other")
        if route == "bench":
            return
        request = handler.request
        traced = lines is not None and services.tracing is not None and isinstance(handler, BaseHandler)
        record(
            route,
            request.method or "",
            request.path,
            handler.get_status(),
            hand_over_done(request),  # from when the lane received it, if it handed it over
            getattr(handler, "cache_outcome", None),
            getattr(handler, "request_id", None),
            handler.trace_id() if traced else None,  # type: ignore[attr-defined]
        )

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
            route(r"/healthz", HealthHandler, "healthz"),  # liveness; readiness and metrics: the admin port only
            route(r"/openapi\.json", OpenAPIHandler, "openapi"),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services, "route": "not_found"},
        # Tornado's gzip transform ignores q=0; ours does not (negotiation.GzipWhenAccepted).
        transforms=[GzipWhenAccepted] if services.settings.server.gzip else [],
        gzip_transform=services.settings.server.gzip,
        log_function=log_request,
        record_request=record,  # the lane's way to the same metrics and access line
        serve_traceback=False,
    )
