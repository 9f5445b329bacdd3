"""Traces through the service, off by default (``[tracing] enabled``): a server span per request, W3C
``traceparent`` honoured, the cache's spans nested inside it, and the trace id on every log line of the request.

Each worker builds its own SDK ``TracerProvider`` after forking (the batch processor's thread does not survive a
fork): sampling ``ParentBased(TraceIdRatioBased(sample_ratio))``, so a caller's sampling decision wins; spans go in
batches to an OTLP/HTTP collector (``endpoint``, e.g. ``http://127.0.0.1:4318/v1/traces``). The cache is
instrumented with the same provider (``cachelayer.instrument_opentelemetry``): its fetch and load spans are children
of the request's span (its hit spans are made in batches, after the fact, with their own times and that parent).

Off, the request path pays one attribute test per request (``BaseHandler.prepare``): nothing of OpenTelemetry is
imported.
"""

from __future__ import annotations

import logging
import os
from contextvars import Token
from typing import TYPE_CHECKING, Any, Final

from .config import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from cachelayer import Cache

__all__ = ["RequestTracing", "TraceIdFilter", "start_tracing"]

SCOPE: Final = "wallpaper"


class RequestTracing:
    """Starts and ends the server span of each request, current in the request's task while it runs."""

    def __init__(self, provider: Any, hooks: Any) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.hooks = hooks
        self._tracer = provider.get_tracer(SCOPE)
        self._propagator = TraceContextTextMapPropagator()
        self._context = context
        self._trace = trace
        self._server = SpanKind.SERVER
        self._error = StatusCode.ERROR
        self.log_filter = TraceIdFilter()

    def start(self, method: str, route: str, path: str, headers: Any) -> tuple[Span, Token[Context]]:
        """The request's span (a child of the caller's, when ``traceparent`` names one), made current."""
        parent = self._propagator.extract(headers)
        span = self._tracer.start_span(
            f"{method} {route}",
            context=parent,
            kind=self._server,
            attributes={"http.request.method": method, "http.route": route, "url.path": path},
        )
        return span, self._context.attach(self._trace.set_span_in_context(span, parent))

    def end(self, started: tuple[Span, Token[Context]], status: int) -> None:
        span, token = started
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(self._error)
        span.end()
        self._context.detach(token)

    def close(self) -> None:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self.log_filter)
        self.hooks.uninstrument()
        self.provider.shutdown()  # exports what the batch processor still holds


class TraceIdFilter(logging.Filter):
    """Puts ``trace_id`` and ``span_id`` on each record logged while a span is current (the request's, a cache
    span under it): runs where the record is made, in the request's task, before the queue hands it to the writer
    thread."""

    def __init__(self) -> None:
        super().__init__()
        from opentelemetry import trace

        self._current = trace.get_current_span

    def filter(self, record: logging.LogRecord) -> bool:
        context = self._current().get_span_context()
        if context.is_valid:
            record.trace_id = f"{context.trace_id:032x}"
            record.span_id = f"{context.span_id:016x}"
        return True


def start_tracing(settings: TracingSettings, cache: Cache) -> RequestTracing | None:
    """This worker's tracing, or None when it is off. Call after forking."""
    if not settings.enabled:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from cachelayer import instrument_opentelemetry

    resource = Resource.create(
        {"service.name": settings.service_name, "service.instance.id": f"{os.uname().nodename}:{os.getpid()}"}
    )
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint, timeout=settings.export_timeout))
    )
    hooks = instrument_opentelemetry(cache, provider)
    tracing = RequestTracing(provider, hooks)
    # On the root's handlers (logs.py's queue handler, set up before the services): a handler's filters run where
    # the record is made, in the request's task.
    for handler in logging.getLogger().handlers:
        handler.addFilter(tracing.log_filter)
    return tracing
