"""What the service measures. Where the figures are kept and read is ``exposition.py`` / ``worker_metrics.py``.

Families (dashboards and alert rules are written against these names: a family is never renamed):

- ``wallpaper_http_requests_total{route, method, status, x_cache}``,
  ``wallpaper_http_request_duration_seconds{route, x_cache}``;
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

from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

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


class HttpMetrics:
    """Requests by route, method, status and ``x_cache`` (the answer's X-Cache: ``hit``, ``miss``, ... ; empty for
    an answer not from the cache), and their duration by route and ``x_cache`` (a hit's latency apart)."""

    def __init__(self, registry: Any) -> None:
        self.requests = Counter(
            "wallpaper_http_requests", "HTTP requests served", ["route", "method", "status", "x_cache"],
            registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "wallpaper_http_request_duration_seconds",
            "HTTP request duration",
            ["route", "x_cache"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        # The labelled children, looked up once per label set instead of .labels() on every request.
        self._counters: dict[tuple[str, str, int, str], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    def observe(self, route: str, method: str, status: int, x_cache: str | None, seconds: float) -> None:
        cache = x_cache or ""
        counter = self._counters.get((route, method, status, cache))
        if counter is None:
            counter = self._counters[(route, method, status, cache)] = self.requests.labels(
                route, method, str(status), cache
            )
        counter.inc()
        histogram = self._histograms.get((route, cache))
        if histogram is None:
            histogram = self._histograms[(route, cache)] = self.latency.labels(route, cache)
        histogram.observe(seconds)


def register_metrics(services: Services) -> HttpMetrics:
    """Every family above, in ``services.metrics``; the HTTP ones are returned for the request log to feed."""
    exposition = services.metrics
    registry = exposition.registry
    http = HttpMetrics(registry)
    cache_stats = register_prometheus("wallpaper", services.cache.stats, registry, cache=services.cache)
    exposition.share(cache_stats)
    service_gauges = ServiceGauges(services)
    registry.register(service_gauges)
    exposition.share(service_gauges)
    exposition.share(ProcessCollector(registry=registry))
    return http
