"""OpenTelemetry instrumentation (``cachelayer._otel``): the spans and metrics of real fetches.

Each test gets its own SDK providers (an in-memory span exporter and metric reader, never the global providers)
and real caches, over the in-process store and over the machine's Redis (DB 15). The Redis instrumentation of
opentelemetry-instrumentation-redis is switched on around the tests that check that its command spans nest under
ours. The first tests drive the hooks directly, as the pipeline does, to pin the context handling on its own.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import StatusCode

from cachelayer import Cache, MemoryBackend, cached
from cachelayer._otel import (
    OpenTelemetryHooks,
    _drops_every_span,
    flush_pending,
    instrument_opentelemetry,
    reason_kind,
)
from tests._doubles import CountingLoader, LoaderFailed, eventually

REDIS_SCOPE = "opentelemetry.instrumentation.redis"


@dataclass
class Telemetry:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def spans(self) -> list[ReadableSpan]:
        flush_pending()  # hit spans are made in batches, after the fact
        return list(self.exporter.get_finished_spans())

    def ours(self) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans()
            if s.instrumentation_scope is not None and s.instrumentation_scope.name == "cachelayer"
        ]

    def fetch_spans(self) -> list[ReadableSpan]:
        return [s for s in self.ours() if not s.name.endswith(" load")]

    def load_spans(self) -> list[ReadableSpan]:
        return [s for s in self.ours() if s.name.endswith(" load")]

    def redis_spans(self) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans()
            if s.instrumentation_scope is not None and s.instrumentation_scope.name == REDIS_SCOPE
        ]

    def points(self, name: str) -> list[NumberDataPoint | HistogramDataPoint]:
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def count(self, name: str, **attributes: str) -> float:
        """The sum (a counter) or the count (a histogram) of the points of ``name`` that carry ``attributes``."""
        total = 0.0
        for point in self.points(name):
            if all(point.attributes is not None and point.attributes.get(k) == v for k, v in attributes.items()):
                total += point.count if isinstance(point, HistogramDataPoint) else point.value
        return total

    def instrument(self, cache: Cache | None, **options: Any) -> OpenTelemetryHooks:
        return instrument_opentelemetry(cache, self.tracer_provider, self.meter_provider, **options)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(exporter, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


@pytest.fixture
def redis_instrumented(telemetry: Telemetry) -> Iterator[None]:
    instrumentor = RedisInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider)
    yield
    instrumentor.uninstrument()


@pytest.fixture(params=["memory", "redis"])
def cache_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest_asyncio.fixture
async def cache(cache_url: str) -> AsyncIterator[Cache]:
    built = Cache.from_url(cache_url, namespace=f"t-otel-{uuid.uuid4().hex[:10]}")
    yield built
    await built.clear()
    await built.aclose()


def attributes_of(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def only(spans: Sequence[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


# -- the hooks, driven directly --------------------------------------------------------------------------------


async def test_the_fetch_span_is_current_until_the_fetch_ends(telemetry: Telemetry) -> None:
    hooks = OpenTelemetryHooks(telemetry.tracer_provider, telemetry.meter_provider, defer_hit_spans=False)
    before = trace.get_current_span()
    fetch = hooks.fetch_started("app.page", "ns:{app.page}:k")
    assert fetch is not None
    current = trace.get_current_span()
    assert current is not before
    assert current.is_recording()
    fetch.ended("hit", "store", None)
    assert trace.get_current_span() is before
    span = only(telemetry.fetch_spans())
    assert span.name == "app.page"
    assert attributes_of(span) == {"cache.outcome": "hit", "cache.tier": "store", "cache.lease_waited": False}


async def test_the_load_span_is_a_child_current_in_the_loading_task_and_joiners_link_to_it(
    telemetry: Telemetry,
) -> None:
    hooks = OpenTelemetryHooks(telemetry.tracer_provider, telemetry.meter_provider)
    leader = hooks.fetch_started("app.page", "k")
    follower = hooks.fetch_started("app.page", "k")
    assert leader is not None
    assert follower is not None
    seen_in_load: list[trace.Span] = []

    async def load() -> None:  # a task of its own, as SingleFlight runs it: it inherits the leader's context
        leader.load_started()
        seen_in_load.append(trace.get_current_span())
        await asyncio.sleep(0)
        leader.load_ended(0.01, None)
        leader.stored(123)

    follower.joined(leader)  # before the load task ran: the link is made when the follower's fetch ends
    await asyncio.create_task(load())
    follower.ended("joined", None, None)
    leader.ended("miss", None, None)

    load_span = only(telemetry.load_spans())
    leader_span = next(s for s in telemetry.fetch_spans() if attributes_of(s)["cache.outcome"] == "miss")
    follower_span = next(s for s in telemetry.fetch_spans() if attributes_of(s)["cache.outcome"] == "joined")
    assert load_span.name == "app.page load"
    assert parent_id(load_span) == span_id(leader_span)
    assert seen_in_load[0].get_span_context().span_id == span_id(load_span)
    assert [link.context.span_id for link in follower_span.links] == [span_id(load_span)]
    assert attributes_of(leader_span)["cache.stored_size"] == 123
    assert attributes_of(load_span)["cache.stored_size"] == 123


async def test_unsampled_fetches_record_no_attributes_but_count(telemetry: Telemetry) -> None:
    unsampled = TracerProvider(sampler=ALWAYS_OFF)
    unsampled.add_span_processor(SimpleSpanProcessor(telemetry.exporter))
    hooks = OpenTelemetryHooks(unsampled, telemetry.meter_provider, record_keys=True)
    fetch = hooks.fetch_started("app.page", "k")
    assert fetch is not None
    assert not trace.get_current_span().is_recording()
    fetch.ended("hit", "local", None)
    assert telemetry.spans() == []
    assert telemetry.count("cache.gets", result="hit", tier="local") == 1


async def test_an_always_off_tracer_is_asked_for_no_span_on_a_hit(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    unsampled = TracerProvider(sampler=ALWAYS_OFF)
    unsampled.add_span_processor(SimpleSpanProcessor(telemetry.exporter))
    hooks = OpenTelemetryHooks(unsampled, telemetry.meter_provider)
    started: list[str] = []
    start_span = hooks.tracer.start_span

    def counting(name: str, *args: Any, **kwargs: Any) -> trace.Span:
        started.append(name)
        return start_span(name, *args, **kwargs)

    monkeypatch.setattr(hooks.tracer, "start_span", counting)
    outer = telemetry.tracer_provider.get_tracer("app").start_span("GET /page")
    with trace.use_span(outer, end_on_exit=True):
        fetch = hooks.fetch_started("app.page", "k")
        assert fetch is not None
        assert trace.get_current_span() is outer  # nothing of a span that every child would drop anyway
        fetch.ended("hit", "store", None)
    assert started == []
    assert [s.name for s in telemetry.spans()] == ["GET /page"]
    assert telemetry.count("cache.gets", result="hit", tier="store") == 1
    unsampled.shutdown()


async def test_an_always_off_tracer_still_gives_the_loader_a_load_span_continuing_the_trace(
    telemetry: Telemetry,
) -> None:
    # The loader runs under what the SDK's tracer makes for the fetch and its load: NonRecordingSpans continuing
    # the caller's trace, each with a span id of its own, unsampled, parents of the spans started under them.
    unsampled = TracerProvider(sampler=ALWAYS_OFF)
    sampling_all = TracerProvider(sampler=ALWAYS_ON)  # e.g. an HTTP client's, which samples whatever its parent
    sampling_all.add_span_processor(SimpleSpanProcessor(telemetry.exporter))
    cache = Cache(MemoryBackend(), namespace="t-otel-off")
    instrument_opentelemetry(cache, unsampled, telemetry.meter_provider)
    seen: list[trace.Span] = []

    @cached(cache=cache, name="t-otel-off.page")  # the providers it closes over do not change its result
    async def page(n: int) -> int:
        seen.append(trace.get_current_span())
        sampling_all.get_tracer("http").start_span("GET /upstream").end()
        follower = telemetry.tracer_provider.get_tracer("http").start_span("GET /other")
        assert not follower.is_recording()  # the default sampler follows the unsampled load span
        follower.end()
        return n

    outer = telemetry.tracer_provider.get_tracer("app").start_span("GET /page")
    with trace.use_span(outer, end_on_exit=True):
        assert await page(1) == 1
        assert await page(1) == 1
    load = only(seen)
    assert isinstance(load, trace.NonRecordingSpan)
    context = load.get_span_context()
    assert context.is_valid
    assert not context.trace_flags.sampled
    assert context.trace_id == outer.get_span_context().trace_id
    assert context.span_id != outer.get_span_context().span_id
    upstream = next(s for s in telemetry.spans() if s.name == "GET /upstream")
    assert parent_id(upstream) == context.span_id
    assert sorted(s.name for s in telemetry.spans()) == ["GET /page", "GET /upstream"]
    assert telemetry.count("cache.gets", result="miss") == 1
    assert telemetry.count("cache.gets", result="hit", tier="store") == 1
    assert telemetry.count("cache.loads", result="success") == 1
    assert telemetry.count("cache.puts") == 1
    await cache.aclose()
    unsampled.shutdown()
    sampling_all.shutdown()


def test_only_the_sdks_always_off_sampler_skips_spans() -> None:
    def tracer(sampler: Any) -> trace.Tracer:
        return TracerProvider(sampler=sampler).get_tracer("t")

    assert _drops_every_span(tracer(ALWAYS_OFF))
    for sampler in (ALWAYS_ON, ParentBased(ALWAYS_OFF), TraceIdRatioBased(0.0)):
        assert not _drops_every_span(tracer(sampler))
    assert not _drops_every_span(trace.NoOpTracer())


def test_reason_kinds() -> None:
    assert reason_kind("127.0.0.1:6379: circuit breaker is open") == "breaker_open"
    assert reason_kind("Redis 127.0.0.1:6379 GET failed: TimeoutError: no answer within 0.1 s") == "timeout"
    assert reason_kind("Redis 127.0.0.1:6379 GET failed: ConnectionError: Error 111 connecting to x") == "connection"
    assert reason_kind("Redis x GET: budget of 0.1s ran out while waiting for a free connection") == "pool_exhausted"
    assert reason_kind("MemoryBackend.fail_with: simulated failure") == "error"


# -- real fetches ----------------------------------------------------------------------------------------------


async def test_a_hits_span_is_made_after_the_fact_with_its_own_times_and_parent(
    telemetry: Telemetry, cache: Cache
) -> None:
    hooks = telemetry.instrument(cache)

    @cached(cache=cache)
    async def front_page(edition: str) -> dict[str, str]:
        return {"title": edition}

    await front_page("morning")  # the miss: its span is made live (it loads)
    telemetry.exporter.clear()
    tracer = telemetry.tracer_provider.get_tracer("the application")
    with tracer.start_as_current_span("request") as request:
        before = time.time_ns()
        assert await front_page("morning") == {"title": "morning"}
        after = time.time_ns()
    assert telemetry.exporter.get_finished_spans()[-1].name == "request"  # ours is not made yet
    # Made by the timer, without anyone asking, within its 50 ms.
    await eventually(lambda: len(telemetry.exporter.get_finished_spans()) == 2, what="the hit's span is made")
    hit = only(telemetry.fetch_spans())
    assert parent_id(hit) == request.get_span_context().span_id
    assert hit.start_time is not None
    assert hit.end_time is not None
    assert before <= hit.start_time <= hit.end_time <= after
    assert attributes_of(hit)["cache.outcome"] == "hit"
    hooks.uninstrument()


async def test_a_full_batch_of_hits_is_made_at_once(telemetry: Telemetry) -> None:
    hooks = OpenTelemetryHooks(telemetry.tracer_provider, telemetry.meter_provider)
    for n in range(256):  # no await in between: the 50 ms timer cannot run, only the batch rule can make spans
        fetch = hooks.fetch_started("app.page", f"ns:{{app.page}}:{n}")
        assert fetch is not None
        fetch.ended("hit", "store", None)
        assert len(telemetry.exporter.get_finished_spans()) == (256 if n == 255 else 0)
    hooks.uninstrument()


async def test_a_miss_has_a_load_child_span_and_a_hit_has_none(telemetry: Telemetry, cache: Cache) -> None:
    telemetry.instrument(cache)
    loader = CountingLoader({"title": "front page"})

    @cached(cache=cache, exclude=["loader"])
    async def front_page(edition: str) -> dict[str, str]:
        return await loader()  # type: ignore[no-any-return]

    assert await front_page("morning") == {"title": "front page"}
    miss = only(telemetry.fetch_spans())
    load = only(telemetry.load_spans())
    assert miss.name.endswith("test_a_miss_has_a_load_child_span_and_a_hit_has_none.<locals>.front_page")
    assert load.name == f"{miss.name} load"
    assert parent_id(load) == span_id(miss)
    miss_attributes = attributes_of(miss)
    assert miss_attributes["cache.outcome"] == "miss"
    assert miss_attributes["cache.lease_waited"] is False
    assert miss_attributes["cache.stored_size"] > 0
    assert miss_attributes["cache.namespace"] == cache.namespace
    assert "cache.key" not in miss_attributes
    assert miss.status.status_code is StatusCode.UNSET

    telemetry.exporter.clear()
    assert await front_page("morning") == {"title": "front page"}
    hit = only(telemetry.fetch_spans())
    assert telemetry.load_spans() == []
    assert attributes_of(hit)["cache.outcome"] == "hit"
    assert attributes_of(hit)["cache.tier"] == "store"
    assert "cache.stored_size" not in attributes_of(hit)

    assert telemetry.count("cache.gets", result="miss") == 1
    assert telemetry.count("cache.gets", result="hit", tier="store") == 1
    assert telemetry.count("cache.loads", result="success") == 1
    assert telemetry.count("cache.load.duration", result="success") == 1
    assert telemetry.count("cache.puts") == 1


async def test_concurrent_callers_of_a_cold_key_share_one_load_span_and_link_to_it(
    telemetry: Telemetry, cache: Cache
) -> None:
    telemetry.instrument(cache)
    gate = asyncio.Event()
    loader = CountingLoader({"n": 1}, gate=gate)

    @cached(cache=cache, exclude=["loader"])
    async def cold(item: int) -> dict[str, int]:
        return await loader()  # type: ignore[no-any-return]

    callers = asyncio.gather(*(cold(7) for _ in range(20)))
    await loader.started.wait()  # every caller ran to its wait before the one loader got here
    gate.set()
    assert await callers == [{"n": 1}] * 20
    assert loader.calls == 1

    load = only(telemetry.load_spans())
    fetches = telemetry.fetch_spans()
    assert len(fetches) == 20
    leader = only([s for s in fetches if span_id(s) == parent_id(load)])
    followers = [s for s in fetches if s is not leader]
    assert attributes_of(leader)["cache.outcome"] == "miss"
    assert {attributes_of(s)["cache.outcome"] for s in followers} == {"joined"}
    for follower in followers:
        assert [link.context.span_id for link in follower.links] == [span_id(load)]
    assert telemetry.count("cache.gets", result="joined") == 19
    assert telemetry.count("cache.loads") == 1


async def test_a_revoked_fill_is_an_event_of_its_load_span(telemetry: Telemetry) -> None:
    cache = Cache(MemoryBackend(), namespace="t-otel-revoked")
    telemetry.instrument(cache)
    loading, release = asyncio.Event(), asyncio.Event()

    async def slow() -> int:
        loading.set()
        await release.wait()
        return 1

    reader = asyncio.create_task(cache.get_or_set("row", slow))
    await loading.wait()
    await cache.delete("row")  # the write's invalidation, while the load runs
    release.set()
    assert await reader == 1
    load = only(telemetry.load_spans())
    assert [e.name for e in load.events] == ["cache.fill_revoked"]
    assert "cache.stored_size" not in attributes_of(load)
    await cache.aclose()


async def test_a_fail_open_fetch_says_so_on_its_span_and_in_metrics(telemetry: Telemetry) -> None:
    backend = MemoryBackend()
    backend.fail_with()
    cache = Cache(backend, namespace="t-otel-failopen")
    telemetry.instrument(cache)

    @cached(cache=cache)
    async def report(day: str) -> str:
        return f"report of {day}"

    assert await report("monday") == "report of monday"
    span = only(telemetry.fetch_spans())
    assert attributes_of(span)["cache.outcome"] == "fail_open"
    events = [e for e in span.events if e.name == "cache.fail_open"]
    # The read failed, then the ticket (so nothing is written: a load without a ticket stores nothing).
    assert {dict(e.attributes or {})["cache.operation"] for e in events} >= {"read", "lease"}
    assert all("simulated failure" in str(dict(e.attributes or {})["cache.fail_open.reason"]) for e in events)
    assert span.status.status_code is StatusCode.UNSET
    assert telemetry.count("cache.gets", result="fail_open") == 1
    assert telemetry.count("cache.fail_open", operation="read", reason="error") == 1
    assert telemetry.count("cache.fail_open", operation="lease", reason="error") == 1
    await cache.aclose()
    await backend.aclose()


async def test_a_loader_error_marks_both_spans_as_errors(telemetry: Telemetry, cache: Cache) -> None:
    telemetry.instrument(cache)
    loader = CountingLoader(fail=True)

    @cached(cache=cache, exclude=["loader"])
    async def broken(item: int) -> dict[str, int]:
        return await loader()  # type: ignore[no-any-return]

    with pytest.raises(LoaderFailed):
        await broken(1)
    span = only(telemetry.fetch_spans())
    load = only(telemetry.load_spans())
    assert attributes_of(span)["cache.outcome"] == "error"
    assert span.status.status_code is StatusCode.ERROR
    assert attributes_of(span)["error.type"] == "tests._doubles.LoaderFailed"
    assert load.status.status_code is StatusCode.ERROR
    assert [e.name for e in load.events] == ["exception"]
    assert telemetry.count("cache.gets", result="error") == 1
    assert telemetry.count("cache.loads", result="failure") == 1


async def test_redis_command_spans_nest_under_the_fetch_and_the_load(
    telemetry: Telemetry, redis_url: str, redis_instrumented: None
) -> None:
    cache = Cache.from_url(redis_url, namespace=f"t-otel-{uuid.uuid4().hex[:10]}")
    telemetry.instrument(cache)

    @cached(cache=cache)
    async def article(slug: str) -> dict[str, str]:
        return {"slug": slug}

    try:
        await article("hello")
        await article("hello")
    finally:
        await cache.clear()
        await cache.aclose()
    fetches = telemetry.fetch_spans()
    load = only(telemetry.load_spans())
    ours = {span_id(s) for s in [*fetches, load]}
    first, last = fetches[0].start_time or 0, fetches[-1].end_time or 0
    commands = [s for s in telemetry.redis_spans() if s.start_time is not None and first <= s.start_time <= last]
    nested = [s for s in commands if parent_id(s) in ours]
    assert {s.name for s in nested} >= {"GET", "EVALSHA"}  # the ticket and the fill are scripts
    # Every command a fetch sends is inside its span (a background task started during a fetch would not be).
    for command in commands:
        assert parent_id(command) in ours, (command.name, command.parent)
    assert any(s.name == "EVALSHA" and parent_id(s) == span_id(load) for s in nested)  # the fill
    hit = next(s for s in fetches if attributes_of(s)["cache.outcome"] == "hit")
    assert [s.name for s in nested if parent_id(s) == span_id(hit)] == ["GET"]


async def test_metric_attributes_never_hold_keys_and_spans_only_when_asked(telemetry: Telemetry, cache: Cache) -> None:
    hooks = telemetry.instrument(cache, record_keys=True)
    secret = "alice@example.com"

    @cached(cache=cache)
    async def profile(email: str) -> dict[str, str]:
        return {"email": email}

    other = "bob@example.com"
    for email in (secret, secret, other, other):
        await profile(email)
    key = profile.key(secret)
    assert {attributes_of(s).get("cache.key") for s in telemetry.fetch_spans()} == {key, profile.key(other)}
    names = ["cache.gets", "cache.loads", "cache.load.duration", "cache.puts"]
    values = [str(v) for name in names for p in telemetry.points(name) for v in (p.attributes or {}).values()]
    assert values
    assert not [v for v in values if secret in v or key in v]
    # Two arguments, one function: the same attribute sets (nothing of an argument in them).
    assert sorted(p.value for p in telemetry.points("cache.gets")) == [2, 2]  # type: ignore[union-attr]
    hooks.uninstrument()
    telemetry.exporter.clear()
    await profile(secret)
    assert telemetry.spans() == []


async def test_instrumenting_every_cache_reaches_caches_built_later(telemetry: Telemetry) -> None:
    hooks = telemetry.instrument(None)
    cache = Cache.from_url("memory://", namespace="t-otel-global")
    try:

        @cached(cache=cache)
        async def headline(n: int) -> int:
            return n

        await headline(1)
        assert len(telemetry.fetch_spans()) == 1
        assert "cache.namespace" not in attributes_of(telemetry.fetch_spans()[0])
    finally:
        hooks.uninstrument()
    telemetry.exporter.clear()
    await headline(2)
    assert telemetry.spans() == []
    await cache.aclose()


async def test_two_instrumented_caches_on_one_meter_both_report_and_uninstrument_stops_one(
    telemetry: Telemetry,
) -> None:
    first = Cache.from_url("memory://", namespace="t-otel-first")
    second = Cache.from_url("memory://", namespace="t-otel-second")
    first_hooks = telemetry.instrument(first)
    telemetry.instrument(second)
    await first.get_or_set("k", CountingLoader("v"))
    await second.get_or_set("k", CountingLoader("v"))
    await second.get_or_set("k", CountingLoader("v"))
    assert telemetry.count("cache.gets", namespace="t-otel-first") == 1
    assert telemetry.count("cache.gets", namespace="t-otel-second") == 2
    first_hooks.uninstrument()
    await first.get_or_set("k", CountingLoader("v"))
    assert telemetry.count("cache.gets", namespace="t-otel-first") == 0  # no longer reported
    assert telemetry.count("cache.gets", namespace="t-otel-second") == 2
    await first.aclose()
    await second.aclose()


def test_cachelayer_imports_and_caches_without_opentelemetry() -> None:
    script = textwrap.dedent(
        """
        import asyncio, importlib.abc, sys

        class NoOpenTelemetry(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ModuleNotFoundError(name)
                return None

        sys.meta_path.insert(0, NoOpenTelemetry())
        import cachelayer

        async def main():
            cache = cachelayer.Cache.from_url("memory://")
            assert await cache.get_or_set("k", lambda: asyncio.sleep(0, "v")) == "v"
            await cache.aclose()

        asyncio.run(main())
        assert "cachelayer._otel" not in sys.modules
        assert not [m for m in sys.modules if m.startswith("opentelemetry")]
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
