"""The direct path for hit spans (``cachelayer/_otel_direct.py``), compared with the SDK's own.

For every sampler, parent and limit set below, a span made by ``Tracer.start_span`` + ``end`` and one made by
``DirectHitSpans.end_hit`` from the same inputs (two tracer providers alike, down to an id generator that gives
both the same ids) must reach the exporter identical: every field ``to_json`` writes, plus the parent's context,
the flags, the scope and the dropped counts. The SDK's privates it reads are pinned against the installed SDK, and
anything it does not know (a processor of the user's own, a proxy tracer) takes the SDK's path.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.sdk.version import __version__ as sdk_version
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState

from cachelayer import Cache, MemoryBackend, cached
from cachelayer._otel import flush_pending, instrument_opentelemetry
from cachelayer._otel_direct import PRIVATES, VERIFIED_SDK, DirectHitSpans


class Replayed(IdGenerator):
    """Ids from a seeded generator: two of them with one seed give two providers the same ids."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._random.getrandbits(128) or 1


class ReplayedRandom(Replayed):
    """Replayed ids that claim W3C randomness: root spans then carry the random-trace-id flag."""

    def is_trace_id_random(self) -> bool:
        return True


class OwnSampler(Sampler):
    """A sampler of a user's own: :meth:`decide` from the trace id and the attributes it is given."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Sequence[Any] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        return self.decide(trace_id, attributes)

    def decide(self, trace_id: int, attributes: Any) -> SamplingResult:
        raise NotImplementedError

    def get_description(self) -> str:
        return type(self).__name__


class Reshaping(OwnSampler):
    """Hands back its attributes changed in ways equality does not see: reversed (a limit then keeps others),
    ``False`` as ``0``, and the caller's dict changed in place at every third call."""

    def __init__(self) -> None:
        self.calls = 0

    def decide(self, trace_id: int, attributes: Any) -> SamplingResult:
        self.calls += 1
        given = dict(attributes or {})
        if self.calls % 3 == 0:
            attributes["sampler.seen"] = self.calls  # in place: the next span sees it
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        if self.calls % 3 == 1:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, dict(reversed(given.items())))
        return SamplingResult(Decision.RECORD_AND_SAMPLE, {k: 0 if v is False else v for k, v in given.items()})


class Labelling(OwnSampler):
    """Samples every other trace and adds an attribute and a trace state of its own."""

    def decide(self, trace_id: int, attributes: Any) -> SamplingResult:
        decision = Decision.RECORD_AND_SAMPLE if trace_id % 2 else Decision.RECORD_ONLY
        return SamplingResult(decision, {**(attributes or {}), "sampler.label": "x"}, TraceState([("k", "v")]))


SAMPLERS: dict[str, Sampler] = {
    "always_on": ALWAYS_ON,
    "always_off": ALWAYS_OFF,
    "parent_based": ParentBased(ALWAYS_ON),
    "ratio": TraceIdRatioBased(0.5),
    "parent_based_ratio": ParentBased(TraceIdRatioBased(0.5)),
    "labelling": Labelling(),
}

LIMITS = {"default": None, "tight": SpanLimits(max_span_attributes=2, max_span_attribute_length=3)}
ID_GENERATORS: dict[str, type[Replayed]] = {"plain": Replayed, "random": ReplayedRandom}


def _parents() -> dict[str, Context]:
    sampled = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    remote = SpanContext(
        0x123, 0x456, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT), trace_state=TraceState([("a", "b")])
    )
    random_flag = SpanContext(0x789, 0x111, is_remote=False, trace_flags=TraceFlags(TraceFlags.RANDOM_TRACE_ID | 1))
    return {
        "root": Context(),
        "sampled": trace.set_span_in_context(NonRecordingSpan(sampled)),
        "remote_unsampled": trace.set_span_in_context(NonRecordingSpan(remote)),
        "random_trace_id": trace.set_span_in_context(NonRecordingSpan(random_flag)),
    }


def _provider(
    sampler: Sampler, limits: SpanLimits | None, seed: int, ids: type[Replayed] = Replayed
) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, id_generator=ids(seed), span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _seen(span: ReadableSpan) -> tuple[object, ...]:
    return (
        span.to_json(),
        span.parent,
        span.context.trace_flags if span.context else None,
        span.instrumentation_scope,
        span._instrumentation_info,  # deprecated as a property; still handed to exporters
        span.dropped_attributes,
        span.dropped_events,
        span.dropped_links,
    )


@pytest.mark.parametrize("ids", ID_GENERATORS)
@pytest.mark.parametrize("limits", LIMITS)
@pytest.mark.parametrize("parent", list(_parents()))
@pytest.mark.parametrize("sampler", [*SAMPLERS, "reshaping"])
def test_a_direct_hit_span_is_the_span_the_sdk_would_export(sampler: str, parent: str, limits: str, ids: str) -> None:
    # Each path gets its own attribute dicts (a sampler may change them in place) and its own sampler object.
    def attribute_sets() -> list[dict[str, Any]]:
        return [
            {"cache.outcome": "hit", "cache.lease_waited": False, "cache.tier": "store"},
            {"cache.outcome": "stale", "cache.lease_waited": False, "cache.namespace": "wallpapers"},
        ]

    def sampler_of() -> Sampler:
        return Reshaping() if sampler == "reshaping" else SAMPLERS[sampler]

    context = _parents()[parent]
    sdk_provider, sdk_exported = _provider(sampler_of(), LIMITS[limits], 7, ID_GENERATORS[ids])
    direct_provider, direct_exported = _provider(sampler_of(), LIMITS[limits], 7, ID_GENERATORS[ids])
    sdk_sets, direct_sets = attribute_sets(), attribute_sets()
    sdk_tracer = sdk_provider.get_tracer("cachelayer", "1.0")
    direct = DirectHitSpans.of(direct_provider.get_tracer("cachelayer", "1.0"))
    assert direct is not None
    assert direct.ready()
    for n in range(40):  # enough for the ratio samplers to take and drop some
        start = 1_700_000_000_000_000_000 + n * 1000
        span = sdk_tracer.start_span(f"f{n % 3}", context=context, kind=SpanKind.INTERNAL,
                                     attributes=sdk_sets[n % 2], start_time=start)  # fmt: skip
        span.end(end_time=start + 500)
        direct.end_hit(f"f{n % 3}", context, direct_sets[n % 2], start, start + 500)
    sdk_spans = sdk_exported.get_finished_spans()
    direct_spans = direct_exported.get_finished_spans()
    assert [_seen(s) for s in direct_spans] == [_seen(s) for s in sdk_spans]
    if sampler == "always_off" or (sampler == "parent_based" and parent == "remote_unsampled"):
        assert not sdk_spans
    elif sampler == "always_on":
        assert len(sdk_spans) == 40
    sdk_provider.shutdown()
    direct_provider.shutdown()


def test_the_installed_sdk_is_one_the_direct_path_was_compared_with() -> None:
    assert ".".join(sdk_version.split(".")[:2]) in VERIFIED_SDK, (
        f"opentelemetry-sdk {sdk_version}: cachelayer/_otel_direct.py was compared with {sorted(VERIFIED_SDK)}, so "
        "hit spans take the SDK's slower start_span now. Read the new Tracer.start_span and Span.end, mirror any "
        "change in DirectHitSpans.end_hit, check this file passes, then add the version to VERIFIED_SDK"
    )


def test_every_private_the_direct_path_reads_is_still_there() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    tracer = provider.get_tracer("cachelayer")
    instances: dict[str, object] = {
        "opentelemetry.sdk.trace:Tracer": tracer,
        "opentelemetry.sdk.trace:SynchronousMultiSpanProcessor": tracer.span_processor,  # type: ignore[attr-defined]
    }
    for private in PRIVATES:
        owner = instances[private.owner]
        assert f"{type(owner).__module__}:{type(owner).__name__}" == private.owner
        assert hasattr(owner, private.name), (
            f"{private.owner}.{private.name} is gone; cachelayer uses it: {private.use}"
        )
    assert tracer._is_enabled() is True  # type: ignore[attr-defined]
    assert type(tracer._tracer_metrics).__name__ == "NoOpTracerMetrics"  # type: ignore[attr-defined]
    assert isinstance(tracer.span_processor._span_processors, tuple)  # type: ignore[attr-defined]
    provider.shutdown()


def test_the_batch_and_simple_processors_do_nothing_on_start_or_ending() -> None:
    """What makes skipping ``on_start`` and ``_on_ending`` the same: both are ``pass`` in the SDK's two processors."""
    for kind in (BatchSpanProcessor, SimpleSpanProcessor):
        for method in ("on_start", "_on_ending"):
            code = getattr(kind, method).__code__
            assert code.co_code == (lambda *_a, **_k: None).__code__.co_code, f"{kind.__name__}.{method} does work now"


class Started(SpanProcessor):
    """A processor of a user's own that labels spans as they start."""

    def __init__(self) -> None:
        self.started = 0

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        self.started += 1
        span.set_attribute("user.label", "x")


async def test_hits_take_the_sdks_path_when_a_processor_of_ones_own_listens() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    direct = DirectHitSpans.of(provider.get_tracer("cachelayer"))
    assert direct is not None
    assert direct.ready()
    labeller = Started()
    provider.add_span_processor(labeller)
    assert not direct.ready()

    cache = Cache(MemoryBackend())
    hooks = instrument_opentelemetry(cache, provider)

    @cached(ttl=60, cache=cache)
    async def square(x: int) -> int:
        return x * x

    for _ in range(5):
        assert await square(3) == 9
    flush_pending()
    spans = [s for s in exporter.get_finished_spans() if s.name.endswith("square")]
    assert len(spans) == 5
    assert labeller.started >= 5
    assert all(s.attributes is not None and s.attributes.get("user.label") == "x" for s in spans)
    hooks.uninstrument()
    await cache.aclose()
    provider.shutdown()


def test_a_tracer_that_is_not_the_sdks_has_no_direct_path() -> None:
    assert DirectHitSpans.of(trace.NoOpTracer()) is None
    assert DirectHitSpans.of(trace.ProxyTracer("cachelayer", None)) is None


def test_hits_instrumented_before_the_tracer_provider_was_set_take_the_direct_path_once_it_is() -> None:
    """In a process of its own: the global tracer provider can be set once per process."""
    script = textwrap.dedent(
        """
        import asyncio
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from cachelayer import Cache, MemoryBackend, cached
        from cachelayer._otel import flush_pending, instrument_opentelemetry
        from cachelayer._otel_direct import DirectHitSpans

        made = []
        original = DirectHitSpans.end_hit
        def counted(self, *args):
            made.append(args[0])
            original(self, *args)
        DirectHitSpans.end_hit = counted

        async def main():
            cache = Cache(MemoryBackend())
            hooks = instrument_opentelemetry(cache)  # no provider yet: a proxy tracer
            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)

            @cached(ttl=60, cache=cache)
            async def square(x: int) -> int:
                return x * x

            for _ in range(4):
                await square(3)
            flush_pending()
            hits = [s for s in exporter.get_finished_spans() if s.name.endswith("square")]
            print(len(hits), len(made))
            hooks.uninstrument()
            await cache.aclose()

        asyncio.run(main())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4", "3"]  # four fetch spans, the three hits' made directly
