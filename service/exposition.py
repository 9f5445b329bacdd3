"""Where one process keeps its Prometheus figures, and what a scrape of the admin port reads.

Two kinds, one interface (:class:`Exposition`): a lone process (``server.processes = 1``, the in-process tests)
renders its own registry (:class:`ProcessExposition`); forked workers keep their figures in files they all read, so
that whichever worker the kernel hands a scrape to answers for every live one (``worker_metrics.SharedExposition``).
``metrics.py`` says what is measured; this module and ``worker_metrics.py`` only where it is kept.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.registry import Collector

__all__ = ["WORKERS_HELP", "WORKERS_METRIC", "Exposition", "ProcessExposition"]

WORKERS_METRIC = "wallpaper_workers"
WORKERS_HELP = "Worker processes alive whose figures this scrape holds"


class Exposition(Protocol):
    """A process's figures: metric objects are made in :attr:`registry`; :meth:`render` is the scrape's body."""

    registry: CollectorRegistry

    def share(self, collector: Collector) -> None:
        """``collector`` (registered in :attr:`registry`) computes its figures when read, so they live in this
        process only: forked workers copy them where the others read them; a lone process needs nothing more."""

    def render(self) -> bytes:
        """The Prometheus text exposition of every figure this scrape can see."""
        ...

    def start(self) -> None:
        """Begin whatever runs on the event loop (called once it runs)."""

    def close(self) -> None:
        """The process stops: publish what is left, let the others know it is gone."""


class ProcessExposition:
    """One process, one registry: a scrape renders it as it is."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # The same family forked workers report (worker_metrics), so that one dashboard fits both.
        Gauge(WORKERS_METRIC, WORKERS_HELP, registry=self.registry).set(1)

    def share(self, collector: Collector) -> None:
        return None  # read straight from the registry at each scrape

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None
