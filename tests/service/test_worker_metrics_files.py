"""The workers' shared metrics files (service/worker_metrics.py), in one process: each "worker" is a
:class:`SharedExposition` of its own slot, its death the release of its lock (what the kernel does when a worker
dies), its restart a new one on the same slot. The real processes are tests/service/test_worker_metrics.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from service.metrics import HttpMetrics
from service.worker_metrics import SharedExposition, live_workers
from tests.service._served import Scrape


class Figures:
    """A collector that computes its figures when read, as cachelayer's ``stats()`` collector does."""

    def __init__(self) -> None:
        self.hits = 0
        self.in_flight = 0

    def collect(self) -> Iterator[Metric]:
        hits = CounterMetricFamily("t_hits", "Hits", labels=["cache"])
        hits.add_metric(["x"], self.hits)
        yield hits
        in_flight = GaugeMetricFamily("t_in_flight", "Requests in flight", labels=["cache"])
        in_flight.add_metric(["x"], self.in_flight)
        yield in_flight


class Worker:
    """One worker's side. In one process the workers share prometheus_client's ``ValueClass`` (which files a new
    metric object writes to), so each makes its objects with its own put back first."""

    def __init__(self, directory: Path, slot: int) -> None:
        self.exposition = SharedExposition(directory, slot)
        self.value_class = values.ValueClass
        self.figures = Figures()
        self.exposition.share(self.figures)
        self.requests = Counter("t_requests", "Requests", registry=self.exposition.registry)

    def publish(self) -> None:
        values.ValueClass = self.value_class
        self.exposition.publish()

    def scrape(self) -> Scrape:
        values.ValueClass = self.value_class
        return Scrape.parse(self.exposition.render().decode())

    def close(self) -> None:
        values.ValueClass = self.value_class
        self.exposition.close()


@pytest.fixture
def directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A metrics directory; prometheus_client as it was after the test (a worker points it at its files)."""
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    return tmp_path


def test_counters_go_on_across_a_restart_and_gauges_are_the_live_workers(directory: Path) -> None:
    first, second = Worker(directory, 0), Worker(directory, 1)
    first.figures.hits, first.figures.in_flight = 5, 2
    first.requests.inc(3)
    second.figures.hits, second.figures.in_flight = 1, 1
    second.requests.inc()
    first.publish()
    scrape = second.scrape()
    assert scrape.value("t_hits_total", cache="x") == 6
    assert scrape.value("t_requests_total") == 4
    assert scrape.by_worker("t_in_flight") == {"0": 2, "1": 1}
    assert scrape.value("wallpaper_workers") == 2
    files = sorted(os.listdir(directory))

    first.figures.hits = 7
    first.close()  # dies: its lock goes (here after a last publish, as on SIGTERM)
    assert live_workers(directory) == {"1"}
    scrape = second.scrape()
    assert scrape.by_worker("t_in_flight") == {"1": 1}  # the dead worker's gauge is gone at once
    assert scrape.value("t_hits_total", cache="x") == 8  # its counts are not
    assert scrape.value("t_requests_total") == 4
    assert scrape.value("wallpaper_workers") == 1

    for restart in range(3):
        replacement = Worker(directory, 0)  # the same slot: its counters reopen the files at their values
        replacement.figures.hits, replacement.figures.in_flight = 2, 3  # a new process counts from 0
        replacement.requests.inc()
        replacement.publish()
        scrape = second.scrape()
        assert scrape.value("t_hits_total", cache="x") == 8 + 2 * (restart + 1)
        assert scrape.value("t_requests_total") == 4 + restart + 1
        assert scrape.by_worker("t_in_flight") == {"0": 3, "1": 1}
        assert sorted(os.listdir(directory)) == files
        replacement.close()
    second.close()


def test_a_worker_that_never_published_shows_no_gauge(directory: Path) -> None:
    """A restarted worker deletes its predecessor's gauges before it takes the lock: a scrape between its start
    and its first publish shows none of them, not the dead worker's."""
    first, second = Worker(directory, 0), Worker(directory, 1)
    first.figures.in_flight = 9
    first.publish()
    first.close()
    replacement = SharedExposition(directory, 0)
    try:
        assert second.scrape().by_worker("t_in_flight") == {"1": 0}
    finally:
        replacement.close()
        second.close()


def test_a_scrape_declares_each_family_once(directory: Path) -> None:
    workers = [Worker(directory, slot) for slot in range(3)]
    for worker in workers:
        worker.figures.in_flight = 1
        worker.publish()
    text = workers[0].scrape().text
    declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert sorted(declared) == sorted(set(declared))
    assert "pid=" not in text  # prometheus_client's process label is the worker's task id here
    for worker in workers:
        worker.close()


def _http_requests(http: HttpMetrics, *durations: float, route: str = "list", x_cache: str | None = "hit") -> None:
    for seconds in durations:
        http.observe(route, "GET", 200, x_cache, seconds)


def _assert_hits(scrape: Scrape, count: int, seconds: float, buckets: dict[str, int]) -> None:
    """The list route's hits in ``scrape``: ``count`` requests taking ``seconds`` in all, ``buckets`` (le -> count)."""
    hit = {"route": "list", "x_cache": "hit"}
    assert scrape.value("wallpaper_http_requests_total", method="GET", status="200", **hit) == count
    for le, in_bucket in buckets.items():
        assert scrape.value("wallpaper_http_request_duration_seconds_bucket", le=le, **hit) == in_bucket, le
    assert scrape.value("wallpaper_http_request_duration_seconds_count", **hit) == count
    assert scrape.value("wallpaper_http_request_duration_seconds_sum", **hit) == pytest.approx(seconds)


def test_http_metrics_read_alone_are_the_counts() -> None:
    """A lone process renders the request counts and durations as they are when scraped."""
    registry = CollectorRegistry()
    http = HttpMetrics()
    registry.register(http)
    _http_requests(http, 0.0004, 0.001, 0.003, 7.0)
    http.observe("list", "BREW", 405, None, 0.0001)  # a method of the client's own: not a series of its own
    scrape = Scrape.parse(generate_latest(registry).decode())
    assert scrape.value("wallpaper_http_requests_total", route="list", method="other", status="405", x_cache="") == 1
    _assert_hits(scrape, 4, 7.0044, {"0.001": 2, "0.005": 3, "2.5": 3, "+Inf": 4})  # le: <= bound


def test_http_metrics_of_workers_sum_in_a_scrape_and_go_on_across_a_restart(directory: Path) -> None:
    """Forked workers publish their HTTP counts and durations (a histogram) as increments: a scrape any worker
    answers sums them, bucket by bucket, and a restarted worker's counts go on from the files'."""
    first, second = Worker(directory, 0), Worker(directory, 1)
    http_first, http_second = HttpMetrics(), HttpMetrics()
    first.exposition.share(http_first)
    second.exposition.share(http_second)
    _http_requests(http_first, 0.0004, 0.02)
    first.publish()
    _http_requests(http_first, 0.3)  # after its publish: counted with the next one
    _http_requests(http_second, 0.002, 3.0)
    scrape = second.scrape()  # the answering worker publishes its own first
    _assert_hits(scrape, 4, 3.0224, {"0.001": 1, "0.0025": 2, "0.025": 3, "+Inf": 4})

    first.publish()
    first.close()
    replacement = Worker(directory, 0)
    http_replacement = HttpMetrics()  # a new process counts from 0
    replacement.exposition.share(http_replacement)
    _http_requests(http_replacement, 0.0001)
    replacement.publish()
    _assert_hits(second.scrape(), 6, 3.3225, {"0.001": 2, "0.5": 5})
    replacement.close()
    second.close()
