"""Forked workers' figures in one scrape: prometheus_client's multiprocess files, one set per worker *slot*.

Every worker binds the admin port with SO_REUSEPORT, so the kernel hands a scrape to any of them; that worker
answers for all by merging the files in one directory (``PROMETHEUS_MULTIPROC_DIR``), which the parent makes
before forking and removes when it exits. prometheus_client's multiprocess mode alone does not fit Tornado's
``fork_processes`` (issue 18): the parent has no hook when a child dies, so a dead pid's files stay (a ``livesum``
gauge read 300 instead of 200) and pile up with restarts (0.3 ms of scrape and 128 KiB each). Here:

- **Identity = Tornado's task id**, not the pid: a restarted worker has its predecessor's id, so it opens the same
  files. The file count is fixed (three ``.db`` files and one lock a slot) and a counter goes on from where the
  dead worker left it (the pod's sum never goes backwards across a restart).
- **Liveness = a lock**: each worker holds ``worker-<id>.lock`` (flock) until it exits; the kernel drops it when
  the process dies, SIGKILL included. A scrape reads gauges only from slots whose lock is held, so a dead worker's
  gauges vanish at once, and a restarted one deletes its predecessor's gauge files before taking the lock.
  "When the process dies" is late, though: a killed worker's threads exit one by one, and its open files (the lock
  among them) are closed by the last, often after the main one, so that for some milliseconds (its address space
  being torn down) the worker is a zombie and its lock still held. The worker writes its pid in the lock file, and
  a held lock counts only while that process's main thread has not exited.
- **Gauges per worker** (``multiprocess_mode="liveall"``, the ``worker`` label = the task id); counters and
  histograms summed over the slots, as prometheus_client does.
- **Figures computed when read** (cachelayer's ``stats()`` collector, pool sizes, ``process_*``, the HTTP request
  counts and durations, which are counted in plain dicts: ``metrics.HttpMetrics``) are not metric objects, so
  prometheus_client cannot share them: each worker copies them into its files every second (and the answering
  worker just before it answers), counters and histograms as increments so that they too go on across restarts.
  A worker killed with SIGKILL loses at most that last second of them.
- **The parent makes no metric**: it only makes the directory, so no series of its own appears.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from tornado.ioloop import PeriodicCallback

from .exposition import WORKERS_HELP, WORKERS_METRIC

__all__ = ["PUBLISH_SECONDS", "SharedExposition", "live_workers", "make_metrics_directory", "remove_metrics_directory"]

log = logging.getLogger("wallpaper")

PUBLISH_SECONDS = 1.0  # how old a worker's computed figures may be in another worker's answer to a scrape
_PREFIX = "wallpaper-metrics-"


def make_metrics_directory() -> Path:
    """A fresh directory for one run's workers (``TMPDIR`` chooses where: an emptyDir with a read-only root)."""
    return Path(tempfile.mkdtemp(prefix=_PREFIX))


def remove_metrics_directory(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def _lock_path(directory: Path, worker: str) -> Path:
    return directory / f"worker-{worker}.lock"


def _alive(lock: Path) -> bool:
    """Whether a live process holds ``lock``: a shared lock cannot be had while the worker holds its exclusive one,
    and the worker's main thread has not exited."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return not _holder_exited(fd)
    finally:
        os.close(fd)  # also drops the shared lock, when it was had
    return False


def _holder_exited(fd: int) -> bool:
    """Whether the process that holds the lock (its pid is in the file) is past exiting: a zombie, or being reaped.

    Its pid cannot have gone to another process meanwhile: a process's id stays its own, zombie included, until the
    last of its threads has exited, and that closes its files, the lock among them."""
    try:
        pid = int(os.pread(fd, 32, 0))
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # pid (comm) state ...: comm may hold spaces and parentheses, so split after the last ')'.
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (ValueError, IndexError, OSError):
        return False  # no pid to check (a file being written, no /proc): the lock alone says
    return state in (b"Z", b"X")


def live_workers(directory: Path) -> set[str]:
    """The task ids of the workers alive now."""
    return {path.stem.removeprefix("worker-") for path in directory.glob("worker-*.lock") if _alive(path)}


class _WorkersCollector:
    """The merge of every slot's files: counters and histograms of all slots, gauges of live workers only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        live = live_workers(self.directory)
        files = []
        for path in self.directory.glob("*.db"):
            kind, _, worker = path.stem.rpartition("_")  # counter_0, histogram_0, gauge_liveall_0
            if kind.startswith("gauge") and worker not in live:
                continue
            files.append(str(path))
        merged: list[Metric] = list(MultiProcessCollector.merge(files))  # type: ignore[no-untyped-call]
        for metric in sorted(merged, key=lambda m: m.name):
            if metric.type == "gauge":
                # prometheus_client names a gauge's process "pid"; here it is the worker's task id.
                metric.samples = [
                    sample._replace(labels={("worker" if k == "pid" else k): v for k, v in sample.labels.items()})
                    for sample in metric.samples
                ]
            yield metric
        workers = GaugeMetricFamily(WORKERS_METRIC, WORKERS_HELP)
        workers.add_metric([], float(len(live)))
        yield workers


class _Copies:
    """What collectors compute when read, kept in this worker's files: a gauge as its value, a counter and a
    histogram as the increments since the last copy (so they go on from the files' values after a restart)."""

    def __init__(self) -> None:
        self._gauges: dict[str, Any] = {}
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}  # by sample name and labels
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}  # the file values increments go to
        self._skipped: set[str] = set()

    def copy(self, collector: Collector) -> None:
        for family in collector.collect():
            if family.type == "gauge":
                for sample in family.samples:
                    self._gauge(family, tuple(sorted(sample.labels.items()))).set(sample.value)
            elif family.type == "counter":
                for sample in family.samples:
                    if sample.name.endswith("_total"):  # not _created: this process's start, meaningless summed
                        self._add(family, "_total", tuple(sorted(sample.labels.items())), sample.value)
            elif family.type == "histogram":
                self._copy_histogram(family)
            elif family.name not in self._skipped:  # no collector here makes one; say so once if one ever does
                self._skipped.add(family.name)
                log.warning("metric family %s (%s) is not shared between workers", family.name, family.type)

    def _copy_histogram(self, family: Metric) -> None:
        """A histogram as the increments of its buckets (each its own count, not the cumulative one: the files hold
        them so, and the merge accumulates them) and of its sum."""
        below: dict[tuple[tuple[str, str], ...], float] = {}  # per label set: the cumulative count of the bucket before
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                count = sample.value - below.get(labels, 0.0)
                below[labels] = sample.value
                self._add(family, "_bucket", (*labels, ("le", sample.labels["le"])), count)
            elif sample.name.endswith("_sum"):
                self._add(family, "_sum", tuple(sorted(sample.labels.items())), sample.value)

    def _add(self, family: Metric, suffix: str, labels: tuple[tuple[str, str], ...], total: float) -> None:
        """Add what ``total`` (the sample ``family.name + suffix``) grew by since the last copy to the file value
        prometheus_client's own counter or histogram writes that sample to. A source that went back (a new cache)
        counts on from its new value."""
        key = (family.name + suffix, labels)
        increase = total - self._last.get(key, 0.0)
        self._last[key] = total
        if increase <= 0:
            return
        value = self._values.get(key)
        if value is None:
            value = self._values[key] = values.ValueClass(
                family.type,
                family.name,
                family.name + suffix,
                tuple(name for name, _ in labels),
                tuple(label for _, label in labels),
                family.documentation,
            )
        value.inc(increase)

    def _gauge(self, family: Metric, labels: tuple[tuple[str, str], ...]) -> Any:
        gauge = self._gauges.get(family.name)
        if gauge is None:
            names = [name for name, _ in labels]
            gauge = Gauge(family.name, family.documentation, names, registry=None, multiprocess_mode="liveall")
            self._gauges[family.name] = gauge
        return gauge.labels(**dict(labels)) if labels else gauge


class SharedExposition:
    """The figures of forked worker ``worker`` (its task id), shared through ``directory``. Make it first thing
    after the fork, before any metric object: it points prometheus_client at the files of this worker's slot."""

    def __init__(self, directory: Path, worker: int) -> None:
        self.directory = directory
        self.worker = str(worker)
        # The gauges of this slot's previous worker, if it died: not this one's (deleted before the lock is taken,
        # so that no scrape can see them as alive).
        for stale in directory.glob(f"gauge_*_{self.worker}.db"):
            stale.unlink(missing_ok=True)
        self._lock = os.open(_lock_path(directory, self.worker), os.O_RDWR | os.O_CREAT, 0o600)
        # The pid before the lock: a scrape that finds the lock held reads whose it is (the predecessor's pid, left
        # in the file, may be another process's by now).
        os.ftruncate(self._lock, 0)
        os.pwrite(self._lock, f"{os.getpid()}\n".encode(), 0)
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # blocks only while a scrape is checking the lock
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # where prometheus_client opens the files
        # The slot's files are named by the task id instead of the pid; MultiProcessValue documents the argument.
        values.ValueClass = values.MultiProcessValue(process_identifier=lambda: self.worker)  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()  # made in here, read through the files: never rendered itself
        self._shared: list[Collector] = []
        self._copies = _Copies()
        self._scrape = CollectorRegistry()
        self._scrape.register(_WorkersCollector(directory))
        self._timer: PeriodicCallback | None = None

    def share(self, collector: Collector) -> None:
        self._shared.append(collector)

    def publish(self) -> None:
        for collector in self._shared:
            self._copies.copy(collector)

    def render(self) -> bytes:
        self.publish()  # this worker's own figures as of now; the others' at most PUBLISH_SECONDS old
        return generate_latest(self._scrape)

    def start(self) -> None:
        self.publish()
        self._timer = PeriodicCallback(self.publish, PUBLISH_SECONDS * 1000)
        self._timer.start()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self._lock >= 0:
            try:
                self.publish()  # the last counts of a worker that stops on purpose are not lost
            except Exception:  # a worker on its way out must still exit 0, or the parent would restart it
                log.exception("metrics: the last publish failed")
            os.close(self._lock)  # the others' scrapes stop showing this worker's gauges
            self._lock = -1
