"""OpenTelemetry for the cache: a span per fetch, a child span per load, and cache metrics (docs/observability.md).

:func:`instrument_opentelemetry` subscribes an :class:`OpenTelemetryHooks` to one cache, or to every cache of the
process; it returns the subscriber, whose :meth:`~OpenTelemetryHooks.uninstrument` removes it. This module is the
only one that imports opentelemetry (the ``otel`` extra), and it is imported only when instrumentation is asked
for, so cachelayer works without it. The package exports a lazy wrapper::

    def instrument_opentelemetry(cache=None, tracer_provider=None, meter_provider=None, *, record_keys=False,
                                 defer_hit_spans=True):
        from ._otel import instrument_opentelemetry as instrument
        return instrument(cache, tracer_provider, meter_provider, record_keys=record_keys,
                          defer_hit_spans=defer_hit_spans)

How the spans nest: the fetch span is made current in the caller's task (``fetch_started``) until the fetch ends,
so the Redis command spans of opentelemetry-instrumentation-redis (the read, the lease) nest under it; the load
runs in a task of its own that inherited that context, where the load span is made current from the loader's start
to the store write, so the loader's own spans and the write nest under it. Callers that joined another caller's
load get a link to that load span. A tracer that drops every span (the SDK's with the ``ALWAYS_OFF`` sampler:
nothing it starts is recorded) gets no span in the caller's task at all, only for the load: the loader still runs
under an (unsampled) load span whose parent is the fetch's, so what it calls continues the trace as always.

**Hit spans are made after the fact, in batches** (``defer_hit_spans=True``, the default): a fetch keeps its
parent context and start time (a few hundred nanoseconds), and a fetch that ends without anything needing its span
while it ran (a hit) is queued; the queue becomes spans, with those exact start and end times, parent and
attributes, every 50 ms or 256 fetches (:meth:`OpenTelemetryHooks.flush`; also at ``uninstrument()`` and at exit).
Made in a batch, with the SDK's code still in the CPU's caches, a span costs less than one made right after a round
trip to Redis (``benchmarks.hit_path``, row ``cachelayer_otel_sampled``: 1.20-1.30 x the plain hit before, 1.06-1.22 x
after; docs/observability.md). A fetch that loads, waits, joins, fails
open or writes gets its span at that moment (its start time kept), so its load span, links and events are as
before. Two things differ for a hit: the span is not current while the hit runs, and it reaches the exporter up to
50 ms later. Spans are made live from the start when opentelemetry-instrumentation-redis traces Redis commands
(they must nest under the fetch span) or with ``defer_hit_spans=False``.
With the SDK's tracer and only its batch or simple processor, a queued hit's span reaches the processors without a
live ``Span`` in between (``_otel_direct.DirectHitSpans``: the same exported span for less than half the cost).

Metrics carry the function, never the key (keys can hold user data); spans carry the key only with
``record_keys=True``. Span attributes are computed only for a span that records. A tracer that drops every span is
not asked for a span per fetch: a hit costs it nothing, and a load's spans are :class:`_UnsampledSpan`, the
``NonRecordingSpan`` that tracer would return, made by that tracer only when something asks for their context (a
child span, a propagator); see :func:`_drops_every_span` and docs/observability.md (Overhead).
"""

from __future__ import annotations

import asyncio
import atexit
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from contextvars import Token
from typing import TYPE_CHECKING, Final

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, StatusCode, Tracer, TracerProvider
from opentelemetry.util.types import AttributeValue

from . import __version__
from ._hooks import CacheHooks, FetchHooks, FetchOutcome, Tier, add_global_hooks, remove_global_hooks
from ._otel_direct import DirectHitSpans

if TYPE_CHECKING:
    from ._cache import Cache

__all__ = ["OpenTelemetryHooks", "flush_pending", "instrument_opentelemetry", "reason_kind"]

SCOPE: Final = "cachelayer"

# Bounded by functions x outcomes x tiers of a program; the cap guards memory against a caller that names fetches
# after their keys (the SDK's own cardinality limit is 2000 series per metric too).
_ATTRIBUTE_MEMO_SIZE: Final = 2000
_OVERFLOW: Final = "(other functions)"

# How a store call failed, from the store's message (cachelayer's own wording first): few values, no addresses.
_REASON_KINDS: Final = (
    ("circuit breaker is open", "breaker_open"),
    ("waiting for a free connection", "pool_exhausted"),
    ("event loop was late", "loop_late"),
    ("timeout", "timeout"),
    ("timed out", "timeout"),
    ("no answer within", "timeout"),
    ("connect", "connection"),
    ("refused", "connection"),
    ("reset by peer", "connection"),
    ("closed", "connection"),
)


def reason_kind(reason: str) -> str:
    """The kind of a store failure (``timeout``, ``connection``, ``breaker_open``, ``pool_exhausted``,
    ``loop_late``, ``error``): a metric attribute with few values, unlike the message."""
    lowered = reason.lower()
    for marker, kind in _REASON_KINDS:
        if marker in lowered:
            return kind
    return "error"


def instrument_opentelemetry(
    cache: Cache | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    *,
    record_keys: bool = False,
    defer_hit_spans: bool = True,
) -> OpenTelemetryHooks:
    """Trace and measure the fetches of ``cache`` (None: of every cache of this process, present and future),
    with the global tracer and meter providers unless others are given. Returns the subscriber:
    ``hooks.uninstrument()`` stops it. ``record_keys=True`` puts each fetch's store key on its span (keys can
    hold user data: off by default; metrics never carry keys). ``defer_hit_spans``: see the module's docstring
    (call ``hooks.flush()`` before reading an exporter in a test)."""
    namespace = None if cache is None else cache.namespace
    hooks = OpenTelemetryHooks(
        tracer_provider, meter_provider, record_keys=record_keys, namespace=namespace, defer_hit_spans=defer_hit_spans
    )
    if cache is None:
        add_global_hooks(hooks)
        hooks._remove = lambda: remove_global_hooks(hooks)
    else:
        cache.add_hooks(hooks)
        hooks._remove = lambda: cache.remove_hooks(hooks)
    return hooks


class _Instruments:
    """One meter's instruments, shared by every subscriber that reports to it: an SDK meter keeps the first
    callback of an observable instrument of a given name, so a second subscriber's own would be lost."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.subscribers: list[OpenTelemetryHooks] = []
        meter.create_observable_counter(
            "cache.gets",
            [self._observe_gets],
            unit="{get}",
            description="Fetches of a cached value, by result and tier",
        )
        self.loads = meter.create_counter(
            "cache.loads", unit="{load}", description="Calls of a loader, by result (success, failure)"
        )
        self.load_duration = meter.create_histogram(
            "cache.load.duration", unit="s", description="How long a loader ran, by result"
        )
        self.puts = meter.create_counter("cache.puts", unit="{put}", description="Loaded values written to the store")
        self.lease_wait = meter.create_histogram(
            "cache.lease.wait.duration", unit="s", description="How long a fetch waited for another process's load"
        )
        self.fail_open = meter.create_counter(
            "cache.fail_open",
            unit="{failure}",
            description="Store calls that failed, the fetch going on without the store, by operation and reason",
        )
        self.state_changes = meter.create_counter(
            "cache.store.state_changes", unit="{change}", description="Circuit breaker transitions, by store and state"
        )

    def _observe_gets(self, options: CallbackOptions) -> Iterable[Observation]:
        # Runs in the reader's thread: snapshots of the lists and dicts the event loop may be adding to. Subscribers
        # that report the same attribute set (two caches of one namespace) are summed into one observation.
        totals: dict[tuple[tuple[str, AttributeValue], ...], tuple[int, dict[str, AttributeValue]]] = {}
        for hooks in list(self.subscribers):
            for (function, outcome, tier), count in list(hooks.get_counts.items()):
                attributes = hooks.get_attributes(function, outcome, tier)
                key = tuple(sorted(attributes.items()))
                known = totals.get(key)
                totals[key] = (count + (known[0] if known else 0), attributes)
        for count, attributes in totals.values():
            yield Observation(count, attributes)


# Per meter object (the SDK hands out one meter per provider and scope): the instruments, made once.
_INSTRUMENTS: weakref.WeakKeyDictionary[metrics.Meter, _Instruments] = weakref.WeakKeyDictionary()


def _instruments_of(meter: metrics.Meter) -> _Instruments:
    found = _INSTRUMENTS.get(meter)
    if found is None:
        found = _INSTRUMENTS[meter] = _Instruments(meter)
    return found


class OpenTelemetryHooks(CacheHooks):
    """The subscriber: one :class:`_FetchSpan` per fetch. Instruments are shared per meter (:class:`_Instruments`)."""

    __slots__ = (
        "__weakref__",
        "_attributes",
        "_defer",
        "_direct",
        "_drops_all",
        "_end_attributes",
        "_fail_open",
        "_flush_timer",
        "_lease_wait",
        "_load_duration",
        "_loads",
        "_pending",
        "_proxied",
        "_puts",
        "_remove",
        "_shared",
        "_state_changes",
        "get_counts",
        "namespace",
        "record_keys",
        "tracer",
    )

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        record_keys: bool = False,
        namespace: str | None = None,
        defer_hit_spans: bool = True,
    ) -> None:
        self.tracer = trace.get_tracer(SCOPE, __version__, tracer_provider)
        self._drops_all = _drops_every_span(self.tracer)
        self._defer = defer_hit_spans
        self._direct = DirectHitSpans.of(self.tracer) if defer_hit_spans else None
        # Instrumented before the program set its tracer provider: the direct path is looked for again at each
        # flush until one is set (the proxy tracer then hands every span to that provider's tracer).
        self._proxied = defer_hit_spans and isinstance(self.tracer, trace.ProxyTracer)
        self._pending: list[_DeferredFetch] = []  # ended hits whose spans are still to be made (flush)
        self._flush_timer: asyncio.TimerHandle | None = None
        meter = metrics.get_meter(SCOPE, __version__, meter_provider)
        self.record_keys = record_keys
        self.namespace = namespace
        self._remove: Callable[[], None] | None = None
        self._attributes: dict[tuple[object, ...], dict[str, AttributeValue]] = {}
        # The attributes a recording fetch span ends with, by (outcome, tier), when it neither waited nor stored.
        self._end_attributes: dict[tuple[str, str | None], dict[str, AttributeValue]] = {}
        # The hit path counts in a dict (a synchronous OpenTelemetry counter costs microseconds per add); the
        # totals are reported when a reader collects.
        self.get_counts: dict[tuple[str, FetchOutcome, Tier | None], int] = {}
        shared = self._shared = _instruments_of(meter)
        shared.subscribers.append(self)
        self._loads = shared.loads
        self._load_duration = shared.load_duration
        self._puts = shared.puts
        self._lease_wait = shared.lease_wait
        self._fail_open = shared.fail_open
        self._state_changes = shared.state_changes

    def uninstrument(self) -> None:
        """Stop tracing and measuring (fetches already started finish their spans); its gets are no longer
        reported either."""
        self.flush()
        if self._remove is not None:
            self._remove()
            self._remove = None
        if self in self._shared.subscribers:
            self._shared.subscribers.remove(self)

    def attributes(self, *pairs: tuple[str, str | None]) -> dict[str, AttributeValue]:
        """The metric attribute set of ``pairs`` (None values left out) and the namespace, built once."""
        found = self._attributes.get(pairs)
        if found is None:
            found = self._remember(pairs, pairs)
        return found

    def get_attributes(self, function: str, outcome: str, tier: str | None) -> dict[str, AttributeValue]:
        """:meth:`attributes` of a fetch's end, on the hit path: memoized by the bare values."""
        memo_key = (function, outcome, tier)
        found = self._attributes.get(memo_key)
        if found is None:
            found = self._remember(memo_key, (("function", function), ("result", outcome), ("tier", tier)))
        return found

    def _remember(
        self, memo_key: tuple[object, ...], pairs: tuple[tuple[str, str | None], ...]
    ) -> dict[str, AttributeValue]:
        built: dict[str, AttributeValue] = {name: value for name, value in pairs if value is not None}
        if self.namespace is not None:
            built["namespace"] = self.namespace
        if len(self._attributes) < _ATTRIBUTE_MEMO_SIZE:
            self._attributes[memo_key] = built
        return built

    def count_get(self, function: str, outcome: FetchOutcome, tier: Tier | None) -> None:
        counts = self.get_counts
        counted = (function, outcome, tier)
        known = counts.get(counted)
        if known is not None:
            counts[counted] = known + 1
        elif len(counts) < _ATTRIBUTE_MEMO_SIZE:
            counts[counted] = 1
        else:  # a program that names fetches after their keys: bounded memory, one series for the rest
            overflow = (_OVERFLOW, outcome, tier)
            counts[overflow] = counts.get(overflow, 0) + 1

    def fetch_started(self, function: str, key: str) -> FetchHooks | None:
        if self._drops_all:
            return _DroppedFetch(self, function)
        if self._defer and not _redis_commands_traced():
            return _DeferredFetch(self, function, key)
        parent = otel_context.get_current()
        span = self.tracer.start_span(function, context=parent, kind=SpanKind.INTERNAL)
        recording = span.is_recording()
        if recording and self.record_keys:
            span.set_attribute("cache.key", key)
        return _FetchSpan(self, function, span, otel_context.attach(trace.set_span_in_context(span, parent)), recording)

    def end_attributes(self, outcome: str, tier: str | None) -> dict[str, AttributeValue]:
        """A recording fetch span's attributes at its end, when it neither waited on a lease nor stored: built once
        per outcome and tier (the SDK copies them into the span)."""
        found = self._end_attributes.get((outcome, tier))
        if found is None:
            found = {"cache.outcome": outcome, "cache.lease_waited": False}
            if tier is not None:
                found["cache.tier"] = tier
            if self.namespace is not None:
                found["cache.namespace"] = self.namespace
            if len(self._end_attributes) < _ATTRIBUTE_MEMO_SIZE:
                self._end_attributes[(outcome, tier)] = found
        return found

    def hit_ended(self, hit: _DeferredFetch) -> None:
        """Queue a deferred fetch's span; made by :meth:`flush`, within 50 ms or 256 fetches."""
        pending = self._pending
        pending.append(hit)
        if len(pending) >= _FLUSH_BATCH:
            self.flush()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(_FLUSH_DELAY, self.flush)
            _WITH_PENDING.add(self)

    def flush(self) -> None:
        """Make the spans of the fetches queued so far (with their own start and end times)."""
        timer, self._flush_timer = self._flush_timer, None
        if timer is not None:
            timer.cancel()
        pending, self._pending = self._pending, []
        tracer = self.tracer
        record_keys = self.record_keys
        if self._proxied:
            self._unproxy()
        # A span with its key has attributes of its own per hit: start_span's path.
        direct = self._direct if self._direct is not None and not record_keys and self._direct.ready() else None
        for hit in pending:
            outcome, error = hit.outcome, hit.error
            attributes = self.end_attributes(outcome, hit.tier)
            if direct is not None and error is None:
                direct.end_hit(hit.function, hit.parent, attributes, hit.started, hit.ended_at)
                continue
            if record_keys:
                attributes = {**attributes, "cache.key": hit.key}
            span = tracer.start_span(
                hit.function, context=hit.parent, kind=SpanKind.INTERNAL, attributes=attributes, start_time=hit.started
            )
            if error is not None and span.is_recording():
                span.set_attribute("error.type", _qualified_name(error))
                if outcome == "error":
                    span.set_status(StatusCode.ERROR, _qualified_name(error))
            span.end(end_time=hit.ended_at)

    def _unproxy(self) -> None:
        """Once the global tracer provider is set, the direct path of its tracer (the one our proxy now uses)."""
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider):
            return
        self._proxied = False
        self._direct = DirectHitSpans.of(provider.get_tracer(SCOPE, __version__))

    def store_state_changed(self, store: str, state: str, reason: str | None) -> None:
        self._state_changes.add(1, self.attributes(("store", store), ("state", state)))


class _FetchSpan(FetchHooks):
    """One fetch: its span (current in the caller's task from start to end), its load span, what it learned.

    Made without a span by a :class:`_DroppedFetch` (a tracer that drops every span): nothing is current in the
    caller's task then; ``load_started`` makes the fetch's span and the load's, both :class:`_UnsampledSpan`, so the
    loader runs under a load span whose parent is the fetch's, as always."""

    __slots__ = (
        "_load_open",
        "_load_task",
        "_load_token",
        "_over",
        "function",
        "leader",
        "lease_wait",
        "load_span",
        "owner",
        "recording",
        "span",
        "stored_size",
        "token",
    )

    def __init__(
        self,
        owner: OpenTelemetryHooks,
        function: str,
        span: Span | None,
        token: Token[otel_context.Context] | None,
        recording: bool,
    ) -> None:
        self.owner = owner
        self.function = function
        self.span = span
        self.token: Token[otel_context.Context] | None = token
        self.recording = recording  # the span's is_recording(), asked once (it stays so until the span ends)
        self.load_span: Span | None = None
        self._load_token: Token[otel_context.Context] | None = None
        self._load_task: asyncio.Task[object] | None = None
        self._load_open = False
        self.leader: _FetchSpan | _DeferredFetch | None = None
        self.lease_wait: float | None = None
        self.stored_size: int | None = None
        self._over = False

    def joined(self, leader: FetchHooks | None) -> None:
        # Linked at the end: the leader's load span may not have started yet (its task has not run).
        if isinstance(leader, _FetchSpan | _DeferredFetch):
            self.leader = leader

    def lease_waited(self, seconds: float) -> None:
        self.lease_wait = (self.lease_wait or 0.0) + seconds
        self.owner._lease_wait.record(seconds, self.owner.attributes(("function", self.function)))

    def load_started(self) -> None:
        owner = self.owner
        name = f"{self.function} load"
        load_span: Span
        span = self.span
        if span is None:  # a tracer that drops every span: this task's context is still the caller's
            caller = otel_context.get_current()
            span = self.span = _UnsampledSpan(owner.tracer, self.function, caller)
            parent = trace.set_span_in_context(span, caller)
            load_span = _UnsampledSpan(owner.tracer, name, parent)
        else:
            parent = trace.set_span_in_context(span)
            load_span = owner.tracer.start_span(name, context=parent, kind=SpanKind.INTERNAL)
        self.load_span = load_span
        self._load_token = otel_context.attach(trace.set_span_in_context(load_span, parent))
        self._load_task = asyncio.current_task()
        self._load_open = True

    def load_ended(self, seconds: float, error: BaseException | None) -> None:
        owner = self.owner
        attributes = owner.attributes(
            ("function", self.function), ("result", "success" if error is None else "failure")
        )
        owner._loads.add(1, attributes)
        owner._load_duration.record(seconds, attributes)
        load_span = self.load_span
        if load_span is None:
            return
        if load_span.is_recording():
            load_span.set_attribute("cache.load.duration", seconds)
            if error is not None:
                load_span.record_exception(error)
                load_span.set_attribute("error.type", _qualified_name(error))
                load_span.set_status(StatusCode.ERROR, _qualified_name(error))
        if error is not None or self._over:
            self._end_load()
        # Otherwise the load span lasts until its value is written (stored), so the write nests under it.

    def stored(self, size: int) -> None:
        self.stored_size = size
        self.owner._puts.add(1, self.owner.attributes(("function", self.function)))
        load_span = self.load_span
        if load_span is not None and load_span.is_recording():
            load_span.set_attribute("cache.stored_size", size)
        self._end_load()

    def fill_revoked(self) -> None:
        load_span = self.load_span
        if load_span is not None and load_span.is_recording():
            load_span.add_event("cache.fill_revoked")  # an invalidation came while it loaded: nothing stored
        self._end_load()

    def failed_open(self, operation: str, reason: str) -> None:
        owner = self.owner
        attributes = owner.attributes(
            ("function", self.function), ("operation", operation), ("reason", reason_kind(reason))
        )
        owner._fail_open.add(1, attributes)
        span = self.span
        if self.recording and span is not None:
            span.add_event(
                "cache.fail_open",
                {"cache.operation": operation, "cache.fail_open.reason": reason},
            )

    def ended(self, outcome: FetchOutcome, tier: Tier | None, error: BaseException | None) -> None:
        # On every hit: no call that a hit does not need (no load to end, nothing to record when unsampled).
        self._over = True
        if self.load_span is not None:
            self._end_load()
        token = self.token
        if token is not None:
            self.token = None
            otel_context.detach(token)
        owner = self.owner
        span = self.span
        if span is not None:
            if self.recording:
                self._record_end(span, outcome, tier, error)
            span.end()
        owner.count_get(self.function, outcome, tier)

    def _record_end(self, span: Span, outcome: FetchOutcome, tier: Tier | None, error: BaseException | None) -> None:
        owner = self.owner
        lease_wait = self.lease_wait
        stored_size = self.stored_size
        if lease_wait is None and stored_size is None:
            span.set_attributes(owner.end_attributes(outcome, tier))
        else:
            attributes: dict[str, AttributeValue] = {
                "cache.outcome": outcome,
                "cache.lease_waited": lease_wait is not None,
            }
            if tier is not None:
                attributes["cache.tier"] = tier
            if lease_wait is not None:
                attributes["cache.lease_wait.duration"] = lease_wait
            if stored_size is not None:
                attributes["cache.stored_size"] = stored_size
            if owner.namespace is not None:
                attributes["cache.namespace"] = owner.namespace
            span.set_attributes(attributes)
        leader = self.leader
        if isinstance(leader, _DeferredFetch):
            leader = leader.full  # made when its load started
        if leader is not None:
            target = leader.load_span if leader.load_span is not None else leader.span
            if target is not None:
                span.add_link(target.get_span_context(), {"cache.link": "joined_load"})
        if error is not None:
            span.set_attribute("error.type", _qualified_name(error))
        if outcome == "error":
            span.set_status(StatusCode.ERROR, None if error is None else _qualified_name(error))

    def _end_load(self) -> None:
        load_span = self.load_span
        if load_span is None or not self._load_open:
            return
        self._load_open = False
        token = self._load_token
        self._load_token = None
        # The load's context belongs to its task: detached there; elsewhere it dies with that task (or with the
        # caller's own detach, when the load ran in the caller's task).
        if token is not None and asyncio.current_task() is self._load_task:
            otel_context.detach(token)
        self._load_task = None
        load_span.end()


_FLUSH_DELAY: Final = 0.05
_FLUSH_BATCH: Final = 256
# Subscribers with spans still queued, flushed at exit (a loop closed before its timer fired).
_WITH_PENDING: weakref.WeakSet[OpenTelemetryHooks] = weakref.WeakSet()


@atexit.register
def flush_pending() -> None:
    """Make the queued spans of every subscriber now (at exit; in tests, before reading an exporter)."""
    for hooks in list(_WITH_PENDING):
        hooks.flush()


class _UntilNeeded(FetchHooks):
    """A fetch with no span of its own until one is needed: every event but ``joined`` and ``ended`` makes (in
    ``_full``) the :class:`_FetchSpan` that then hears the rest."""

    __slots__ = ()

    def _full(self) -> _FetchSpan:
        raise NotImplementedError

    def lease_waited(self, seconds: float) -> None:
        self._full().lease_waited(seconds)

    def load_started(self) -> None:
        self._full().load_started()

    def load_ended(self, seconds: float, error: BaseException | None) -> None:
        self._full().load_ended(seconds, error)

    def stored(self, size: int) -> None:
        self._full().stored(size)

    def fill_revoked(self) -> None:
        self._full().fill_revoked()

    def failed_open(self, operation: str, reason: str) -> None:
        self._full().failed_open(operation, reason)


class _DeferredFetch(_UntilNeeded):
    """A fetch whose span is made after it ended (a hit: :meth:`OpenTelemetryHooks.flush`), or, the moment it
    needs one (it loads, waits, joins, fails open, writes), a :class:`_FetchSpan` started at the fetch's start."""

    # Once ended, the record its span is made from (the queue holds these objects: no tuple per hit).
    __slots__ = ("ended_at", "error", "full", "function", "key", "outcome", "owner", "parent", "started", "tier")

    ended_at: int
    outcome: FetchOutcome
    tier: Tier | None
    error: BaseException | None

    def __init__(self, owner: OpenTelemetryHooks, function: str, key: str) -> None:
        self.owner = owner
        self.function = function
        self.key = key
        self.parent = otel_context.get_current()
        self.started = time.time_ns()
        self.full: _FetchSpan | None = None

    def _full(self) -> _FetchSpan:
        full = self.full
        if full is None:
            owner = self.owner
            span = owner.tracer.start_span(
                self.function, context=self.parent, kind=SpanKind.INTERNAL, start_time=self.started
            )
            recording = span.is_recording()
            if recording and owner.record_keys:
                span.set_attribute("cache.key", self.key)
            # Not made current: this task's context is the caller's (what the load task inherited too); the load
            # span, made current in the loading task, names this span as its parent.
            full = self.full = _FetchSpan(owner, self.function, span, None, recording)
        return full

    def joined(self, leader: FetchHooks | None) -> None:
        self._full().joined(leader)

    def ended(self, outcome: FetchOutcome, tier: Tier | None, error: BaseException | None) -> None:
        full = self.full
        if full is not None:
            full.ended(outcome, tier, error)
            return
        self.ended_at = time.time_ns()
        self.outcome = outcome
        self.tier = tier
        self.error = error
        owner = self.owner
        owner.count_get(self.function, outcome, tier)
        owner.hit_ended(self)


def _redis_commands_traced() -> bool:
    """Whether opentelemetry-instrumentation-redis traces Redis commands now (their spans nest under the fetch's,
    so the fetch's span must be current while it runs)."""
    module = sys.modules.get("opentelemetry.instrumentation.redis")
    if module is None:
        return False
    return bool(getattr(module.RedisInstrumentor(), "is_instrumented_by_opentelemetry", False))


class _DroppedFetch(_UntilNeeded):
    """A fetch whose tracer drops every span: a hit is counted and costs nothing else; a load gets a
    :class:`_FetchSpan` (without a span of its own until ``load_started``) for its metrics and its context."""

    __slots__ = ("full", "function", "owner")

    def __init__(self, owner: OpenTelemetryHooks, function: str) -> None:
        self.owner = owner
        self.function = function
        self.full: _FetchSpan | None = None

    def _full(self) -> _FetchSpan:
        full = self.full
        if full is None:
            full = self.full = _FetchSpan(self.owner, self.function, None, None, False)
        return full

    def joined(self, leader: FetchHooks | None) -> None:
        pass  # a link is recorded only on a recording span

    def ended(self, outcome: FetchOutcome, tier: Tier | None, error: BaseException | None) -> None:
        full = self.full
        if full is not None:
            full.ended(outcome, tier, error)
            return
        self.owner.count_get(self.function, outcome, tier)


class _UnsampledSpan(NonRecordingSpan):
    """The span of a loading fetch, or of its load, when the tracer drops every span: what that tracer would
    return, a ``NonRecordingSpan``, whose context (the parent's trace id, a span id of its own, the sampler's flags
    and trace state) the tracer makes only when something asks for it: a child span, a propagator,
    ``get_current_span()`` in the loader."""

    def __init__(self, tracer: Tracer, name: str, parent: Context) -> None:
        # NonRecordingSpan's own __init__ sets the context, which this span makes later.
        self._tracer = tracer
        self._name = name
        self._parent: Context | None = parent
        self._made: SpanContext | None = None

    def get_span_context(self) -> SpanContext:
        made = self._made
        if made is None:
            span = self._tracer.start_span(self._name, context=self._parent, kind=SpanKind.INTERNAL)
            made = self._made = span.get_span_context()
            self._parent = None
        return made

    def __repr__(self) -> str:
        return f"NonRecordingSpan({self.get_span_context()!r})"


def _drops_every_span(tracer: Tracer) -> bool:
    """Whether every span ``tracer`` starts is a NonRecordingSpan whatever its parent, and starting one has no other
    effect: the SDK's tracer with the ``ALWAYS_OFF`` sampler (``OTEL_TRACES_SAMPLER=always_off``), unless the SDK
    counts the spans it starts (``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``). Any other tracer or sampler
    (``ParentBased``, a ratio, a proxy tracer) is asked for every span."""
    if type(tracer).__module__ != "opentelemetry.sdk.trace":
        return False
    from opentelemetry.sdk.trace.sampling import StaticSampler  # imported already: the SDK made this tracer

    sampler = getattr(tracer, "sampler", None)
    if type(sampler) is not StaticSampler or sampler.get_description() != "AlwaysOffSampler":
        return False
    counting = getattr(tracer, "_tracer_metrics", None)  # the SDK's own span metrics (1.3x), no-op unless enabled
    return counting is None or type(counting).__name__ == "NoOpTracerMetrics"


def _qualified_name(error: BaseException) -> str:
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
