"""Counters the cache keeps, a plain ``stats()`` snapshot, and an optional Prometheus collector.

Counters are plain integer attributes bumped on the hot path (no locks, no label lookups); Prometheus
reads them only when it scrapes, through a custom collector, so a hit pays nothing for Prometheus being there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["CacheMetrics", "register_prometheus"]


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
    "invalidations": "Keys deleted by invalidation",
}


_GAUGES: dict[str, str] = {
    "loads_in_flight": "Loads running now in this process",
    "local_entries": "Entries held by the local tier",
    "local_bytes": "Bytes the local tier counts against max_bytes (per-entry overhead included)",
    "local_evictions": "Entries the local tier evicted to stay within its bounds (a running total)",
    "local_hits": "Hits served by the local tier (a running total)",
}


def register_prometheus(
    name: str, stats: Callable[[], dict[str, Any]], registry: Any = None, *, prefix: str = "cachelayer"
) -> Any:
    """Expose a cache's ``stats()`` to Prometheus under ``{prefix}_*{cache="name"}``; returns the collector.

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
    return collector
