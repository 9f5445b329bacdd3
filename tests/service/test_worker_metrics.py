"""Forked workers in one scrape (issue 18): ``python -m service serve --processes 2`` as a subprocess, a worker
killed with SIGKILL and restarted by Tornado, and what the admin port's ``/metrics`` shows across it.

- counters continue: no counter, histogram bucket, count or sum of the pod goes backwards across a restart, and
  the requests the dead worker counted are still in the sum (the replacement reopens its slot's files);
- gauges are the live workers' only: once the victim is dead no scrape shows its gauges (its start time), and
  afterwards exactly one value per worker slot; "dead" as /proc says it, which is before its lock is released when
  a thread other than the main one is the last to exit (held open here by a worker whose main thread exits alone);
- the metrics directory holds the same files after every restart (its size is set by the worker count);
- ``promtool check metrics`` accepts a real scrape (``cache.local`` on: its families were printed twice).
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import os
import platform
import shutil
import signal
import sys
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry, generate_latest

from harness import REPO_ROOT
from harness.services import skip_or_fail
from service.config import Settings
from service.worker_metrics import _WorkersCollector, live_workers
from tests._doubles import eventually
from tests.service._served import Scrape, Served, dead
from tests.service._support import API

pytestmark = pytest.mark.slow

LIST = f"{API}/wallpaperList.json?pageSize=5"
REQUESTS = 40


@pytest_asyncio.fixture
async def served(seeded: Settings, tmp_path: Path) -> AsyncIterator[Served]:
    """Two workers with the local tier on, each of them up and publishing its figures."""
    service = Served(seeded, tmp_path, WALLPAPER_CACHE__LOCAL="true")
    try:

        async def both_workers_publish() -> bool:
            scrape = service.running() and await service.scrape()
            return bool(scrape) and set(scrape.by_worker("process_start_time_seconds")) == {"0", "1"}

        await eventually(both_workers_publish, within=60, what="two workers in the admin port's scrape")
        yield service
    finally:
        code = service.stop()
    assert code == 0, service.log()
    assert not list(service.tmpdir.iterdir()), "the parent did not remove the metrics directory"


async def served_by(service: Served, requests: int) -> collections.Counter[int]:
    """``requests`` list pages, each on a new connection; how many each worker (pid) answered."""
    pids: collections.Counter[int] = collections.Counter()
    for _ in range(requests):
        response = await service.get(LIST)
        assert response is not None
        assert response.code == 200
        pids[int(response.headers["X-Worker-Pid"])] += 1
    return pids


async def scrape_when(service: Served, listed: float, what: str) -> Scrape:
    """The first scrape in which the pod has counted ``listed`` list requests."""
    found: list[Scrape] = []

    async def counted() -> bool:
        scrape = await service.scrape()
        if (
            scrape is not None
            and scrape.total("wallpaper_http_requests_total", route="list", method="GET", status="200") == listed
        ):
            found.append(scrape)
            return True
        return False

    await eventually(counted, within=30, what=what)
    return found[-1]


async def test_a_killed_worker_leaves_the_scrape_whole(served: Served) -> None:
    directory = served.metrics_directory()
    files: list[str] = []
    listed = 0
    for restart in range(2):
        pids = await served_by(served, REQUESTS)
        listed += REQUESTS
        before = await scrape_when(served, listed, f"{listed} list requests counted")
        if not files:  # each worker's files once it has served a request (a histogram's file comes with the first)
            files = sorted(os.listdir(directory))
            assert files == ["counter_0.db", "counter_1.db", "gauge_liveall_0.db", "gauge_liveall_1.db",
                             "histogram_0.db", "histogram_1.db", "worker-0.lock", "worker-1.lock"]  # fmt: skip
        victim = max(pids, key=lambda pid: pids[pid])  # it counted some of them: they must stay in the sum
        slot = served.worker_of(victim)
        old_start = before.by_worker("process_start_time_seconds")[slot]

        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: dead(victim), within=10, what=f"worker {victim} dead")  # noqa: B023

        async def replaced() -> bool:
            scrape = await served.scrape()
            if scrape is None:
                return False
            starts = scrape.by_worker("process_start_time_seconds")
            assert starts.get(slot) != old_start, "a dead worker's gauge in the scrape"  # noqa: B023
            return starts.get(slot, 0) > old_start and set(starts) == {"0", "1"}  # noqa: B023

        await eventually(replaced, within=60, what=f"worker slot {slot} restarted (restart {restart + 1})")
        assert victim not in served.workers()

        pids = await served_by(served, REQUESTS)
        listed += REQUESTS
        after = await scrape_when(served, listed, "the requests after the restart counted, and those before it")
        went_back = {key: (v, after.samples.get(key)) for key, v in before.monotonic().items()
                     if after.samples.get(key, -1) < v}  # fmt: skip
        assert not went_back, went_back
        gauges = {key for key in after.samples if after.kinds[key[0]] == "gauge" and key[0] != "wallpaper_workers"}
        assert gauges
        assert all(dict(labels).get("worker") in ("0", "1") for _, labels in gauges)
        assert after.value("wallpaper_workers") == 2
        assert len(after.by_worker("process_start_time_seconds")) == 2
        assert sorted(os.listdir(directory)) == files, f"the directory changed with restart {restart + 1}"


async def test_promtool_accepts_a_scrape_of_the_workers(served: Served) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool is not installed (Debian: apt-get install prometheus)")
    await served_by(served, REQUESTS)
    scrape = await scrape_when(served, REQUESTS, "the list requests counted")
    for name in ("cachelayer_local_entries", "cachelayer_local_bytes", "wallpaper_http_in_flight"):
        assert len(scrape.by_worker(name)) == 2, name
    checker = await asyncio.create_subprocess_exec(promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT)
    said, _ = await asyncio.wait_for(checker.communicate(scrape.text.encode()), 60)
    assert checker.returncode == 0, said.decode()
    assert said.strip() == b"", said.decode()  # lint warnings too


# A worker of slot 0 with a gauge and a second thread; told to on stdin, its main thread exits alone.
MAIN_THREAD_EXITS = """
import ctypes, sys, threading
from pathlib import Path
from prometheus_client import Gauge
from service.worker_metrics import SharedExposition

SharedExposition(Path(sys.argv[1]), 0)
Gauge("t_up", "Up", registry=None, multiprocess_mode="liveall").set(1)
threading.Thread(target=threading.Event().wait).start()
print("ready", flush=True)
sys.stdin.readline()
ctypes.CDLL(None).syscall(int(sys.argv[2]), 0)
"""
EXIT_THREAD = {"x86_64": 60, "aarch64": 93}  # exit (the calling thread), not exit_group (the process)


def held(lock: Path) -> bool:
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def scrape_of(directory: Path) -> Scrape:
    registry = CollectorRegistry()
    registry.register(_WorkersCollector(directory))
    return Scrape.parse(generate_latest(registry).decode())


async def test_a_worker_whose_main_thread_exited_is_dead_though_its_lock_is_held(tmp_path: Path) -> None:
    """SIGKILL's few milliseconds, held open: the worker's main thread has exited (/proc says zombie) while
    another thread keeps its files open, the lock among them. It is not alive: its gauges are not in a scrape."""
    number = EXIT_THREAD.get(platform.machine())
    if number is None:
        pytest.skip(f"the exit system call's number on {platform.machine()} is not known here")
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MAIN_THREAD_EXITS, str(tmp_path), str(number), stdin=PIPE, stdout=PIPE, cwd=REPO_ROOT
    )
    assert worker.stdin is not None
    assert worker.stdout is not None
    try:
        assert await asyncio.wait_for(worker.stdout.readline(), 60) == b"ready\n"
        assert live_workers(tmp_path) == {"0"}
        assert scrape_of(tmp_path).by_worker("t_up") == {"0": 1}

        worker.stdin.write(b"exit\n")
        await worker.stdin.drain()
        await eventually(lambda: dead(worker.pid), within=10, what="the worker's main thread exited")
        assert held(tmp_path / "worker-0.lock"), "the window is not open: nothing is tested"
        assert live_workers(tmp_path) == set()
        scrape = scrape_of(tmp_path)
        assert scrape.by_worker("t_up") == {}
        assert scrape.value("wallpaper_workers") == 0
    finally:
        worker.kill()
        await worker.wait()
