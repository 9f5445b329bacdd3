"""A hit's span handed to the SDK's processors as the SDK would hand it, without building a live span first.

A hit's span is made after the hit ended (``_otel.OpenTelemetryHooks.flush``): nothing happens to it between its
start and its end. Through ``Tracer.start_span`` and ``Span.end`` such a span still costs the SDK ~12 us (a live
``Span`` with its lock, its attributes cleaned one by one, empty event and link lists, the processors' ``on_start``
and ``_on_ending``, then a ``ReadableSpan`` copy for ``on_end``), more than the 15 % of a Redis hit the sampled
budget allows (docs/observability.md, Overhead). :class:`DirectHitSpans` does what ``start_span`` + ``end`` do for
such a span and nothing else: the same id generator calls in the same order, the same sampler call (with the same
arguments), flags and trace state, the same resource and scope, the attributes bounded by the tracer's limits (once
per attribute set, not per span), and the ``ReadableSpan`` that ``Span.end`` gives ``on_end``, for ~5 us
(``benchmarks.hit_path``'s ``otel_sdk_span_vs_cachelayer``, 2026-12-06: 0.115-0.120 x a ~105 us Redis hit through
``start_span``, 0.047-0.050 x this way).

It is used only where that is the same span, decided per batch (:meth:`DirectHitSpans.ready`): the SDK's own
``Tracer`` of a version whose ``start_span`` was compared with this, exported span for exported span
(tests/test_otel_direct.py; ``VERIFIED_SDK``), enabled, not counting its spans
(``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``), whose processors are only the SDK's batch and simple processors
(their ``on_start`` and ``_on_ending`` do nothing, so skipping them changes nothing). Any other tracer, version or
processor (a user's own ``on_start``, say) gets ``start_span`` as before. The SDK's private names this reads are
``PRIVATES``, each pinned by a test against the installed SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, Tracer, get_current_span
from opentelemetry.util.types import AttributeValue

from ._internals import Internal

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import Tracer as SdkTracer

__all__ = ["PRIVATES", "VERIFIED_SDK", "DirectHitSpans"]

# opentelemetry-sdk versions (major.minor) whose start_span + end this module was compared with, span for span.
VERIFIED_SDK: Final = frozenset({"1.45"})


PRIVATES: Final = (
    Internal("opentelemetry.sdk.trace:Tracer", "_is_enabled", "a tracer its configurator disabled: start_span's path"),
    Internal(
        "opentelemetry.sdk.trace:Tracer",
        "_tracer_metrics",
        "a tracer that counts its spans (internal metrics on): start_span's path",
    ),
    Internal("opentelemetry.sdk.trace:Tracer", "_span_limits", "the limits a span's attributes are bounded by"),
    Internal("opentelemetry.sdk.trace:Tracer", "_instrumentation_scope", "the scope every span names"),
    Internal(
        "opentelemetry.sdk.trace:SynchronousMultiSpanProcessor",
        "_span_processors",
        "which processors a span reaches (only the SDK's batch and simple ones: this path)",
    ),
)

_MEMO_SIZE: Final = 256


class DirectHitSpans:
    """Ends hit spans of one SDK tracer straight into its processors (see the module's docstring)."""

    __slots__ = ("_bounded", "_multi", "_quiet", "_readable", "_tracer")

    def __init__(self, tracer: SdkTracer) -> None:
        # The SDK's classes, looked up once (the SDK made ``tracer``, so it is imported): not on each span.
        from opentelemetry.sdk.trace import ReadableSpan, SynchronousMultiSpanProcessor
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        self._tracer = tracer
        self._quiet: tuple[type, ...] = (BatchSpanProcessor, SimpleSpanProcessor)
        self._multi = SynchronousMultiSpanProcessor
        self._readable = ReadableSpan
        # id(attributes) -> (the attributes, kept alive so the id stays theirs; their items when bounded; those
        # items bounded and frozen)
        self._bounded: dict[
            int, tuple[dict[str, AttributeValue], tuple[tuple[str, AttributeValue], ...], BoundedAttributes]
        ] = {}

    @classmethod
    def of(cls, tracer: Tracer) -> DirectHitSpans | None:
        """The direct path for ``tracer``, or None when it is not the SDK's tracer of a verified version."""
        kind = type(tracer)
        if kind.__module__ != "opentelemetry.sdk.trace" or kind.__name__ != "Tracer":
            return None
        from opentelemetry.sdk.version import __version__ as sdk_version

        if ".".join(sdk_version.split(".")[:2]) not in VERIFIED_SDK:
            return None
        if not all(hasattr(tracer, private.name) for private in PRIVATES if private.owner.endswith(":Tracer")):
            return None
        from opentelemetry.sdk.trace import Tracer as SdkTracer

        assert isinstance(tracer, SdkTracer)
        return cls(tracer)

    def ready(self) -> bool:
        """Whether this batch may take the direct path: asked per batch, since a processor may have been added or
        the tracer disabled since the last."""
        tracer = self._tracer
        if not tracer._is_enabled() or type(tracer._tracer_metrics).__name__ != "NoOpTracerMetrics":
            return False
        processor = tracer.span_processor
        if type(processor) is not self._multi:
            return False
        quiet = self._quiet
        return all(type(each) in quiet for each in processor._span_processors)

    def end_hit(
        self, name: str, parent: Context | None, attributes: dict[str, AttributeValue], start: int, end: int
    ) -> None:
        """What ``start_span(name, parent, INTERNAL, attributes, start_time=start)`` and ``end(end)`` would give the
        processors (nothing, when the sampler drops it)."""
        tracer = self._tracer
        ids = tracer.id_generator
        parent_span = get_current_span(parent).get_span_context()
        if parent_span.is_valid:
            trace_id = parent_span.trace_id
            random_trace_id = parent_span.trace_flags.random_trace_id
            parent_context: SpanContext | None = parent_span
        else:
            trace_id = ids.generate_trace_id()
            parent_context = None
        result = tracer.sampler.should_sample(parent, trace_id, name, SpanKind.INTERNAL, attributes, ())
        decision = result.decision
        flags = TraceFlags.SAMPLED if decision.is_sampled() else TraceFlags.DEFAULT  # type: ignore[no-untyped-call, unused-ignore]
        if parent_context is None:
            random_trace_id = ids.is_trace_id_random()
        if random_trace_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        context = SpanContext(
            trace_id, ids.generate_span_id(), is_remote=False, trace_flags=TraceFlags(flags),
            trace_state=result.trace_state,
        )  # fmt: skip
        if not decision.is_recording():  # type: ignore[no-untyped-call, unused-ignore]
            return
        span = self._readable(
            name=name,
            context=context,
            parent=parent_context,
            resource=tracer.resource,
            attributes=self._bounded_attributes(attributes, result.attributes),
            kind=SpanKind.INTERNAL,
            instrumentation_info=tracer.instrumentation_info,
            start_time=start,
            end_time=end,
            instrumentation_scope=tracer._instrumentation_scope,
        )
        tracer.span_processor.on_end(span)

    def _bounded_attributes(
        self, given: dict[str, AttributeValue], sampled: MappingProxyType[str, AttributeValue]
    ) -> BoundedAttributes:
        """The span's attributes as ``Span`` keeps them: what the sampler returned, bounded by the tracer's limits
        and frozen. Built once per attribute set while the sampler hands back exactly the items it was given (the
        same keys and values, the same objects, in the same order: what every built-in sampler does); otherwise,
        and after a sampler changed ``given`` in place, built for this span alone, as ``Span`` builds them."""
        found = self._bounded.get(id(given))
        if found is not None and found[0] is given and _same_items(found[1], sampled):
            return found[2]
        limits = self._tracer._span_limits
        bounded = BoundedAttributes(
            limits.max_span_attributes, sampled, immutable=True, max_value_len=limits.max_span_attribute_length
        )
        items = tuple(given.items())
        if _same_items(items, sampled) and len(self._bounded) < _MEMO_SIZE:
            self._bounded[id(given)] = (given, items, bounded)
        return bounded


def _same_items(items: tuple[tuple[str, AttributeValue], ...], mapping: Mapping[str, AttributeValue]) -> bool:
    """Whether ``mapping`` holds exactly ``items``, in order, the same objects (equal is not enough: ``0 == False``,
    and the order decides which attributes a limit drops)."""
    if len(items) != len(mapping):
        return False
    for (key, value), (other_key, other_value) in zip(items, mapping.items(), strict=True):
        if key is not other_key or value is not other_value:
            return False
    return True
