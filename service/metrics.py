"""What the service measures. Where the figures are kept and read is ``exposition.py`` / ``worker_metrics.py``.

Families (dashboards and alert rules are written against these names: a family is never renamed):

- ``wallpaper_http_requests_total{route, method, status, x_cache}`` (``method``: the standard ones, any other is
  ``other``), ``wallpaper_http_request_duration_seconds{route, x_cache}``;
- ``wallpaper_pool_connections{store, state}``, ``wallpaper_http_in_flight``, ``wallpaper_store_ready{store}``,
  ``wallpaper_downloads_pending``;
- ``cachelayer_*{cache="wallpaper"}``: the cache's ``stats()`` (hits, misses, loads, lease waits, revoked fills,
  store errors by cause, ``breaker_open``, the local tier's figures when ``cache.local`` is on) and, per cached
  function, gets by result and tier, loads and their duration, fail-open by operation, breaker transitions
  (cachelayer's ``register_prometheus``); no key or id is ever a label value;
- ``process_*``: CPU, memory, file descriptors and start time (prometheus_client's ``ProcessCollector``);
- ``wallpaper_workers``: worker processes alive (``exposition.py``).

With forked workers every gauge carries ``worker`` (the task id) and counters are the workers' sum.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator
from typing import Final

from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from cachelayer import register_prometheus

from .services import Services

__all__ = ["HttpMetrics", "ServiceGauges", "register_metrics"]


class ServiceGauges:
    """The figures of the service's own that are read when scraped: pool connections and requests in flight."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "wallpaper_pool_connections", "Connections of each store's pool, by state", labels=["store", "state"]
        )
        for store, stats in self.services.pool_stats().items():
            for state, value in stats.items():
                family.add_metric([store, state], float(value))
        yield family
        in_flight = GaugeMetricFamily("wallpaper_http_in_flight", "Requests being served by this process")
        in_flight.add_metric([], float(self.services.in_flight))
        yield in_flight
        ready = GaugeMetricFamily(
            "wallpaper_store_ready", "1 when the store answered its last readiness check (every 5 s)", labels=["store"]
        )
        checked = self.services.store_ready
        for store in ("mongo", "mysql", "redis"):
            answered = checked.get(store)  # NaN until the first check: not known, so no alert either way
            ready.add_metric([store], float("nan") if answered is None else 1.0 if answered else 0.0)
        yield ready
        pending = GaugeMetricFamily(
            "wallpaper_downloads_pending", "Downloads whose counter step failed here: the reconciler's next job"
        )
        pending.add_metric([], float(len(self.services.catalog.downloads.pending)))
        yield pending
        # The local tier's figures are cachelayer's (register_prometheus exports them from stats()): exporting
        # them here too printed each of those families twice, which the exposition format forbids.


_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf)
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# The "le" label values, as prometheus_client writes them ("0.001", "1.0", "+Inf").
_LE: Final[tuple[str, ...]] = tuple(floatToGoString(bound) for bound in _LATENCY_BUCKETS)  # type: ignore[no-untyped-call]


class HttpMetrics:
    """Requests by route, method, status and ``x_cache`` (the answer's X-Cache: ``hit``, ``miss``, ... ; empty for
    an answer not from the cache), and their duration by route and ``x_cache`` (a hit's latency apart).

    Counted in plain dicts on the request path and made into families when read (a collector, like the figures of
    ``stats()``): a labelled prometheus_client counter and histogram cost ~1 us a request (a lock per value, and with
    forked workers a write to a file each), a dict entry and a ``bisect`` ~0.2 us (``timeit`` here, 2026-12-06: 0.38
    and 0.70 us against 0.20 us; docs/performance.md has the instruction counts). A lone process's scrape reads
    them as they are; forked workers publish them with their other computed figures (``worker_metrics.py``), so a
    scrape another worker answers shows this one's at most ``PUBLISH_SECONDS`` late."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int, str], int] = {}
        # Per (route, x_cache): a count per bucket (not cumulative; the last is +Inf), then the sum of durations.
        self._latency: dict[tuple[str, str], list[float]] = {}

    def observe(self, route: str, method: str, status: int, x_cache: str | None, seconds: float) -> None:
        cache = x_cache or ""
        if method not in _METHODS:
            method = "other"  # the method is the client's to choose: one series for every unknown one
        requests = self._requests
        key = (route, method, status, cache)
        requests[key] = requests.get(key, 0) + 1
        row = self._latency.get((route, cache))
        if row is None:
            row = self._latency[(route, cache)] = [0.0] * (len(_LATENCY_BUCKETS) + 1)
        row[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1  # the first bound >= seconds: Prometheus's "le"
        row[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "wallpaper_http_requests", "HTTP requests served", labels=["route", "method", "status", "x_cache"]
        )
        for (route, method, status, cache), count in list(self._requests.items()):
            requests.add_metric([route, method, str(status), cache], float(count))
        yield requests
        latency = HistogramMetricFamily(
            "wallpaper_http_request_duration_seconds", "HTTP request duration", labels=["route", "x_cache"]
        )
        for (route, cache), row in list(self._latency.items()):
            buckets = list(zip(_LE, itertools.accumulate(row[:-1]), strict=True))
            latency.add_metric([route, cache], buckets, row[-1])
        yield latency


def register_metrics(services: Services) -> HttpMetrics:
    """Every family above, in ``services.metrics``; the HTTP ones are returned for the request log to feed."""
    exposition = services.metrics
    registry = exposition.registry
    http = HttpMetrics()
    registry.register(http)
    exposition.share(http)
    cache_stats = register_prometheus("wallpaper", services.cache.stats, registry, cache=services.cache)
    exposition.share(cache_stats)
    service_gauges = ServiceGauges(services)
    registry.register(service_gauges)
    exposition.share(service_gauges)
    exposition.share(ProcessCollector(registry=registry))
    return http
