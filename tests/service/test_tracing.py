"""Traces through the service (issue 18, part 6), end to end: the service exports over OTLP/HTTP to a collector in
this test's event loop (a Tornado handler that decodes the protobuf requests with opentelemetry-proto, as a real
collector does). A request that carries a W3C ``traceparent`` gets a server span in that trace; the cache's fetch
and load spans are its children; its log lines carry the trace id. Off (the default), nothing is exported and no
record carries one."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio
import tornado.web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from tornado.httpserver import HTTPServer

from harness import free_port
from service.config import Settings
from tests._doubles import eventually
from tests.service._support import API, run_service, stop_service, with_sections

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Collector(tornado.web.RequestHandler):
    """``POST /v1/traces``: keeps every span it is sent (name, ids, parent, kind, attributes)."""

    def initialize(self, spans: list[dict[str, Any]]) -> None:
        self.spans = spans

    def post(self) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(self.request.body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append({
                        "name": span.name,
                        "scope": scope.scope.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_id": span.parent_span_id.hex(),
                        "kind": span.kind,
                        "attributes": {a.key: a.value for a in span.attributes},
                    })  # fmt: skip
        self.set_header("Content-Type", "application/x-protobuf")
        self.finish(b"")


@pytest_asyncio.fixture
async def collector() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    spans: list[dict[str, Any]] = []
    port = free_port()
    server = HTTPServer(tornado.web.Application([(r"/v1/traces", Collector, {"spans": spans})]))
    server.listen(port, "127.0.0.1")
    try:
        yield f"http://127.0.0.1:{port}/v1/traces", spans
    finally:
        server.stop()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    """A handler on the root logger, there before the service starts (as logs.py's queue handler is)."""
    handler = Records()
    root = logging.getLogger()
    root.addHandler(handler)
    access = logging.getLogger("wallpaper.access")
    level, disabled = access.level, access.disabled
    access.setLevel(logging.INFO)
    access.disabled = False
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        access.setLevel(level)
        access.disabled = disabled


def access_records(handler: Records) -> list[logging.LogRecord]:
    return [r for r in handler.records if r.name == "wallpaper.access"]


async def test_a_request_is_a_server_span_of_the_callers_trace_with_the_caches_spans_inside(
    seeded: Settings,
    redis_client: redis.asyncio.Redis,
    collector: tuple[str, list[dict[str, Any]]],
    records: Records,
) -> None:
    endpoint, spans = collector
    settings = with_sections(seeded, tracing={"enabled": True, "endpoint": endpoint}, log={"level": "INFO"})
    running = await run_service(settings)
    try:
        for _ in range(2):  # a miss (a load), then a hit
            response = await running.fetch(f"{API}/wallpaper/3.json", headers={"traceparent": TRACEPARENT})
            assert response.code == 200
    finally:
        await stop_service(running)  # exports what is still batched
    await eventually(lambda: len(spans) >= 5, what="the server, fetch and load spans reach the collector")
    servers = [s for s in spans if s["scope"] == "wallpaper"]
    assert len(servers) == 2
    for server in servers:
        assert server["trace_id"] == TRACE_ID
        assert server["parent_id"] == PARENT_ID  # the caller's span, from traceparent
        assert server["name"] == "GET detail"
        assert server["kind"] == 2  # SPAN_KIND_SERVER
        assert server["attributes"]["http.response.status_code"].int_value == 200
    ours = [s for s in spans if s["scope"] == "cachelayer"]
    fetches = [s for s in ours if s["name"] == "wp.detail"]
    loads = [s for s in ours if s["name"] == "wp.detail load"]
    assert len(fetches) >= 2  # the detail's miss and hit (the highest id's fetch besides)
    assert {f["parent_id"] for f in fetches} <= {s["span_id"] for s in servers}
    assert [load["parent_id"] for load in loads] == [
        f["span_id"] for f in fetches if f["attributes"]["cache.outcome"].string_value == "miss"
    ]
    lines = access_records(records)
    assert len(lines) == 2
    assert {getattr(line, "trace_id", None) for line in lines} == {TRACE_ID}


async def test_off_by_default_nothing_is_traced(
    seeded: Settings,
    redis_client: redis.asyncio.Redis,
    collector: tuple[str, list[dict[str, Any]]],
    records: Records,
) -> None:
    _, spans = collector
    settings = with_sections(seeded, log={"level": "INFO"})
    assert not settings.tracing.enabled
    running = await run_service(settings)
    try:
        assert running.services.tracing is None
        response = await running.fetch(f"{API}/wallpaper/3.json", headers={"traceparent": TRACEPARENT})
        assert response.code == 200
    finally:
        await stop_service(running)
    assert spans == []
    assert [getattr(line, "trace_id", None) for line in access_records(records)] == [None]
