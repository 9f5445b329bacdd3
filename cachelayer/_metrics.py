"""Counters the cache keeps, a plain ``stats()`` snapshot, and the optional Prometheus exposition.

Counters are plain integer attributes bumped on the hot path (no locks, no label lookups); Prometheus reads them
only when it scrapes, through a custom collector, so a hit pays nothing for Prometheus being there. Per-function
series (gets by result and tier, loads and their duration, fail-open by operation, breaker transitions) come from a
hooks subscriber (:class:`PrometheusHooks`, ``_hooks.py``), added when ``register_prometheus`` is given the cache.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final, Protocol

from ._hooks import CacheHooks, FetchHooks, FetchOutcome, Tier

__all__ = ["CacheMetrics", "PrometheusHooks", "register_prometheus"]


class _Subscribable(Protocol):
    def add_hooks(self, hooks: CacheHooks) -> None: ...


@dataclasses.dataclass(slots=True)
class CacheMetrics:
    hits: int = 0
    misses: int = 0
    stale_served: int = 0
    early_recomputes: int = 0
    background_refreshes: int = 0
    loads: int = 0
    load_errors: int = 0
    load_seconds: float = 0.0
    lease_acquired: int = 0
    lease_waits: int = 0
    lease_wait_seconds: float = 0.0
    lease_timeouts: int = 0
    decode_errors: int = 0
    unstorable: int = 0
    writes: int = 0
    bytes_raw: int = 0
    bytes_stored: int = 0
    invalidations: int = 0
    revoked_fills: int = 0
    tag_invalidated: int = 0
    load_unstored: int = 0
    invalidations_deferred: int = 0
    consistency_violations: int = 0

    def snapshot(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def count_write(self, raw: int, stored: int) -> None:
        self.writes += 1
        self.bytes_raw += raw
        self.bytes_stored += stored


_DESCRIPTIONS: dict[str, str] = {
    "hits": "Lookups answered by a fresh stored value",
    "misses": "Lookups that found no usable value",
    "stale_served": "Lookups answered by a stale value (stale-while-revalidate, stale-if-error, lease timeout)",
    "early_recomputes": "Probabilistic early recomputes (XFetch) started",
    "background_refreshes": "Background refreshes run",
    "loads": "Loader calls",
    "load_errors": "Loader calls that raised",
    "load_seconds": "Total time spent in loaders",
    "lease_acquired": "Load leases taken in Redis",
    "lease_waits": "Times a caller waited for another process's lease",
    "lease_wait_seconds": "Total time spent waiting for leases",
    "lease_timeouts": "Lease waits that ran out of time",
    "store_errors": "Store calls that failed or ran out of their time budget",
    "store_late_timeouts": "Store calls that ran out of time while the event loop was late (not held against it)",
    "store_queue_timeouts": (
        "Store calls that ran out of time waiting for a free connection of this process's pool (not held against it)"
    ),
    "breaker_rejections": "Store calls not made because a circuit breaker was open",
    "breaker_opened": "Times a circuit breaker of the store opened",
    "decode_errors": "Stored values that could not be decoded (treated as misses and deleted)",
    "unstorable": "Loaded values that could not be stored (returned uncached)",
    "writes": "Values written",
    "bytes_raw": "Serialized bytes of written values, before compression",
    "bytes_stored": "Bytes of written frames, after compression",
    "invalidations": "Keys deleted, or tags given a new stamp, by invalidation",
    "revoked_fills": "Loaded values not stored because an invalidation revoked the load's ticket while it ran",
    "tag_invalidated": "Stored values refused on read because a tag they carry was invalidated after their load began",
    "load_unstored": "Loaded values not stored because the store gave the load no ticket (unavailable)",
    "invalidations_deferred": "Invalidations that did not reach the store at once (retried in the background)",
    "invalidations_landed_late": "Deferred invalidations that reached the store on a retry",
    "invalidations_expired_pending": "Deferred invalidations dropped because what they cover expired meanwhile",
    "invalidations_retried": "Retry rounds of deferred invalidations",
    "consistency_violations": "Stored values the consistency monitor found the loader no longer answers",
}


_GAUGES: dict[str, str] = {
    "invalidations_pending": "Invalidations that have not reached the store yet (retried in the background)",
    "loads_in_flight": "Loads running now in this process",
    "local_entries": "Entries held by the local tier",
    "local_bytes": "Bytes the local tier counts against max_bytes (per-entry overhead included)",
    "local_evictions": "Entries the local tier evicted to stay within its bounds (a running total)",
    "local_hits": "Hits served by the local tier (a running total)",
}


def register_prometheus(
    name: str,
    stats: Callable[[], dict[str, Any]],
    registry: Any = None,
    *,
    prefix: str = "cachelayer",
    cache: _Subscribable | None = None,
) -> Any:
    """Expose a cache's ``stats()`` to Prometheus under ``{prefix}_*{cache="name"}``; returns the collector. Given
    ``cache``, also subscribe a :class:`PrometheusHooks` to it for per-function series.

    Needs ``prometheus_client`` (``pip install cachelayer[prometheus]``).
    """
    from prometheus_client import REGISTRY
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self) -> Iterator[Any]:
            snapshot = stats()
            for field, help_text in _DESCRIPTIONS.items():
                family = CounterMetricFamily(f"{prefix}_{field}", help_text, labels=["cache"])
                family.add_metric([name], float(snapshot.get(field, 0)))
                yield family
            if "breaker_state" in snapshot:  # a guarded store (an in-process one has no breaker)
                state = GaugeMetricFamily(
                    f"{prefix}_breaker_open", "1 while a circuit breaker of the store refuses calls", labels=["cache"]
                )
                state.add_metric([name], 0.0 if snapshot["breaker_state"] == "closed" else 1.0)
                yield state
            for field, help_text in _GAUGES.items():
                if field in snapshot:
                    gauge = GaugeMetricFamily(f"{prefix}_{field}", help_text, labels=["cache"])
                    gauge.add_metric([name], float(snapshot[field]))
                    yield gauge

    collector = _Collector()
    (registry if registry is not None else REGISTRY).register(collector)
    if cache is not None:
        cache.add_hooks(PrometheusHooks(name, registry, prefix=prefix))
    return collector


class _Families:
    """One registry's per-function metric families under one prefix: made once and shared by every cache that
    registers there (each its own ``cache`` label), since a registry refuses a second family of a name."""

    def __init__(self, registry: Any, prefix: str) -> None:
        from prometheus_client import Counter, Histogram

        self.gets = Counter(
            f"{prefix}_function_gets", "Fetches by outcome and tier", ["cache", "function", "result", "tier"],
            registry=registry,
        )  # fmt: skip
        self.loads = Counter(
            f"{prefix}_function_loads", "Loader calls by result", ["cache", "function", "result"], registry=registry
        )
        self.load_seconds = Histogram(
            f"{prefix}_function_load_duration_seconds", "Loader durations", ["cache", "function"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )  # fmt: skip
        self.lease_wait_seconds = Histogram(
            f"{prefix}_function_lease_wait_duration_seconds",
            "Time a fetch waited for another process's load of its key (the cross-process lease)",
            ["cache", "function"], registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )  # fmt: skip
        self.fail_open = Counter(
            f"{prefix}_function_fail_open", "Store calls of a fetch that failed open, by operation",
            ["cache", "function", "operation"], registry=registry,
        )  # fmt: skip
        self.state_changes = Counter(
            f"{prefix}_store_state_changes", "Circuit breaker transitions of the store", ["cache", "store", "state"],
            registry=registry,
        )  # fmt: skip


_FAMILIES: weakref.WeakKeyDictionary[Any, dict[str, _Families]] = weakref.WeakKeyDictionary()
# Label sets per subscriber, bounded: a program that names fetches after their keys must not grow without end.
_MAX_CHILDREN: Final = 2000
_OVERFLOW: Final = "(other functions)"


class PrometheusHooks(CacheHooks):
    """Per-function Prometheus series, from the fetch pipeline's hooks (label values: the cache's name, the cached
    function's qualified name, outcomes, tiers, operations and stores; never a key):

    - ``{prefix}_function_gets_total{cache, function, result, tier}``: fetches by outcome (``hit``, ``stale``,
      ``miss``, ``joined``, ``fail_open``, ``bypass``, ``error``) and, for hits, tier (``local``, ``store``);
    - ``{prefix}_function_loads_total{cache, function, result}`` (``success``, ``failure``) and
      ``{prefix}_function_load_duration_seconds{cache, function}``;
    - ``{prefix}_function_lease_wait_duration_seconds{cache, function}``: waits for another process's load;
    - ``{prefix}_function_fail_open_total{cache, function, operation}`` (``read``, ``lease``, ``write``);
    - ``{prefix}_store_state_changes_total{cache, store, state}``: circuit breaker transitions.
    """

    def __init__(self, name: str, registry: Any = None, *, prefix: str = "cachelayer") -> None:
        from prometheus_client import REGISTRY

        registry = registry if registry is not None else REGISTRY
        by_prefix = _FAMILIES.setdefault(registry, {})
        families = by_prefix.get(prefix)
        if families is None:
            families = by_prefix[prefix] = _Families(registry, prefix)
        self.name = name
        self.families = families
        # Labelled children, looked up once per label set: .labels() on every hit would cost more than the hit.
        self._children: dict[tuple[str, ...], Any] = {}
        # A function's fetch hooks hold no state of the fetch: one object a function, not one a fetch (bounded).
        self._fetches: dict[str, _PrometheusFetch] = {}

    def child(self, family: str, *labels: str) -> Any:
        key = (family, *labels)
        found = self._children.get(key)
        if found is None:
            if len(self._children) >= _MAX_CHILDREN and family != "state_changes":
                labels = (_OVERFLOW, *labels[1:])
                key = (family, *labels)
                found = self._children.get(key)
                if found is not None:
                    return found
            found = self._children[key] = getattr(self.families, family).labels(self.name, *labels)
        return found

    def fetch_started(self, function: str, key: str) -> FetchHooks | None:
        found = self._fetches.get(function)
        if found is None:
            found = _PrometheusFetch(self, function)
            if len(self._fetches) < _MAX_CHILDREN:
                self._fetches[function] = found
        return found

    def store_state_changed(self, store: str, state: str, reason: str | None) -> None:
        self.child("state_changes", store, state).inc()


class _PrometheusFetch(FetchHooks):
    """The hooks of every fetch of one function: the function's labels and its ``gets`` children, nothing of a
    fetch (fetches of a function share it)."""

    __slots__ = ("_gets", "function", "metrics")

    def __init__(self, metrics: PrometheusHooks, function: str) -> None:
        self.metrics = metrics
        self.function = function
        self._gets: dict[tuple[str, str | None], Any] = {}

    def load_ended(self, seconds: float, error: BaseException | None) -> None:
        metrics = self.metrics
        metrics.child("loads", self.function, "failure" if error else "success").inc()
        metrics.child("load_seconds", self.function).observe(seconds)

    def failed_open(self, operation: str, reason: str) -> None:
        self.metrics.child("fail_open", self.function, operation).inc()

    def lease_waited(self, seconds: float) -> None:
        self.metrics.child("lease_wait_seconds", self.function).observe(seconds)

    def ended(self, outcome: FetchOutcome, tier: Tier | None, error: BaseException | None) -> None:
        counter = self._gets.get((outcome, tier))
        if counter is None:
            counter = self._gets[(outcome, tier)] = self.metrics.child("gets", self.function, outcome, tier or "")
        counter.inc()
