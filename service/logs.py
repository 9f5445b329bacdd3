"""Logs, one line per event, written off the event loop: JSON, or readable text at a terminal (``log.format``).

The loop's side only puts records on a queue (``QueueHandler``); a ``QueueListener`` thread formats them with
python-json-logger and writes them to stdout/stderr, or ships them to Logstash over TCP with python-logstash-async
(whose handler has its own sender thread). Start it in each process after forking (threads do not survive fork).

Fields: ``time`` (ISO-8601, UTC), ``level``, ``event``, ``logger``, and for access lines ``request_id``, ``method``,
``path``, ``status``, ``duration_ms``, ``cache`` (hit|miss|stale), ``pid``. Text: ``<time> <LEVEL> <logger>:
<event>``, a traceback on the lines after it.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from typing import Any, TypeVar

from pythonjsonlogger.json import JsonFormatter

from .config import LogSettings

__all__ = ["ACCESS_LOGGER", "LoggingHandle", "json_formatter", "setup_logging", "text_formatter", "writes_text"]

ACCESS_LOGGER = "wallpaper.access"


F = TypeVar("F", bound=logging.Formatter)


def _utc(formatter: F) -> F:
    """ISO-8601 times in UTC with milliseconds (``2026-12-05T17:51:13.123Z``), whatever the machine's zone."""
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def text_formatter() -> logging.Formatter:
    return _utc(logging.Formatter("{asctime} {levelname:<7} {name}: {message}", style="{"))


def writes_text(settings: LogSettings) -> bool:
    """Whether the sink gets text lines: ``format = "text"``, or ``"auto"`` with a terminal as the sink."""
    if settings.sink not in ("stdout", "stderr") or settings.format == "json":
        return False
    stream = sys.stdout if settings.sink == "stdout" else sys.stderr
    return settings.format == "text" or stream.isatty()


def json_formatter() -> JsonFormatter:
    return _utc(JsonFormatter(
        "{asctime}{levelname}{message}{name}{process}",
        style="{",
        rename_fields={
            "asctime": "time",
            "levelname": "level",
            "message": "event",
            "name": "logger",
            "process": "pid",
        },
        json_ensure_ascii=False,
    ))


class LoggingHandle:
    """What :func:`setup_logging` installed; :meth:`stop` flushes and removes it."""

    def __init__(self, listener: logging.handlers.QueueListener | None, root_handler: logging.Handler | None):
        self.listener = listener
        self.root_handler = root_handler

    def stop(self) -> None:
        root = logging.getLogger()
        if self.root_handler is not None:
            root.removeHandler(self.root_handler)
        if self.listener is not None:
            self.listener.stop()  # drains the queue
            for handler in self.listener.handlers:
                handler.flush()
                handler.close()


def _sink_handler(settings: LogSettings) -> logging.Handler | None:
    if settings.sink == "none":
        return None
    if settings.sink == "logstash":
        from logstash_async.formatter import LogstashFormatter  # type: ignore[import-untyped]
        from logstash_async.handler import AsynchronousLogstashHandler  # type: ignore[import-untyped]

        handler: logging.Handler = AsynchronousLogstashHandler(
            settings.logstash_host, settings.logstash_port, database_path=None
        )
        handler.setFormatter(LogstashFormatter(extra_prefix=None, metadata={"service": "wallpaper"}))
        return handler
    stream = sys.stdout if settings.sink == "stdout" else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(text_formatter() if writes_text(settings) else json_formatter())
    return handler


def setup_logging(settings: LogSettings, extra_handlers: list[logging.Handler] | None = None) -> LoggingHandle:
    """Route every logger through one queue to the configured sink. Returns a handle to stop it."""
    root = logging.getLogger()
    root.setLevel(settings.level)
    handlers = [h for h in [_sink_handler(settings), *(extra_handlers or [])] if h is not None]
    if not handlers:
        return LoggingHandle(None, None)
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    queue_handler = logging.handlers.QueueHandler(records)
    listener = logging.handlers.QueueListener(records, *handlers, respect_handler_level=True)
    listener.start()
    root.addHandler(queue_handler)
    logging.getLogger(ACCESS_LOGGER).disabled = not settings.access_log
    # Tornado logs each request itself at INFO; our access line replaces it.
    logging.getLogger("tornado.access").propagate = False
    return LoggingHandle(listener, queue_handler)
