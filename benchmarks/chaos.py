"""Chaos benchmark (issue 12, item 9): the wallpaper service under store faults, with load on.

``python -m benchmarks.chaos [--quick] [--faults F,...] [--json PATH] [--results DIR] [--keep]``

The run starts its own stores on free loopback ports: ``redis-server``, SecantusDB (storage in the work directory)
and a private ``mariadbd`` (own datadir; when that cannot start, the machine's MariaDB on 3306 with a private
database ``chaos_<pid>``, dropped at the end). A fault proxy (``harness.faults``, each in its own process) sits
in front of each of them; the service (``python -m service serve`` with ``config/wallpaper.toml``, 2 workers, uvloop,
its own free public and admin ports) reaches every store through its proxy by ``WALLPAPER_...`` environment
overrides. The stores are seeded (``python -m service seed``, ``WALLPAPERS`` documents) and every page the load uses
is fetched once (warm).

Load, for the whole run: ``wrk`` on the warm list and detail pages in back-to-back 1 s runs (one timeline point
each: requests, non-2xx, socket errors, p99), and ``DOWNLOADS_PER_S`` download POSTs from an asyncio client, each
with a unique ``Idempotency-Key``, a 503 / timeout / broken connection retried with the same key (at most
``ATTEMPTS`` tries), the final answer kept per key. Every phase sends its downloads to its own block of wallpaper
ids, so MySQL rows and Mongo counters can be told apart by phase even without a key column. The service's
``cachelayer_loads`` counter is read once a second from one scrape of its admin port (``/metrics`` on
``WALLPAPER_ADMIN__PORT``): whichever worker answers reports every live worker, counters summed over them (a pod
total, which a worker's restart does not set back; the other worker's copy of its counters is up to 1 s old:
``benchmarks/_scrape.py``).

Phases, in turn, each after a baseline gap: none (baseline), Redis SIGKILL + restart on the same port, Redis SIGSTOP
5 s, Redis +200 ms (proxy), SecantusDB SIGKILL + restart, MySQL refuse, blackhole and dropped replies (proxy).
Then the download storm (``download_storm``, issue 16): healthy stores, 300 cached list pages, 12 clients posting
downloads back to back while readers reload the pages; every answer is checked against the downloads answered before
its read was sent, and the cache's counters (breaker openings, store errors, revoked fills, ...) are scraped from the
admin port (the workers' sums) before and after it. ``--faults download_storm`` runs it alone (no wrk needed).
After the load stops and a settling period, the MySQL events and the Mongo counters are read directly.

Writes ``chaos.{md,json,png}`` (``--quick``) or ``chaos-full.{md,json,png}`` to ``--results`` (default
``benchmarks/results/``). Every loop is bounded in count and time, only 127.0.0.1 is used, and every process the
run started is stopped by its PID at the end, also on errors (``finally`` and ``atexit``).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import harness
from benchmarks._common import RESULTS_DIR, environment, format_table, markdown_table, write_json, write_text
from benchmarks._scrape import PUBLISH_S, cache_counters, live_workers, parse
from benchmarks.http_load import parse_wrk

REPO: Final = Path(__file__).resolve().parent.parent
API: Final = "/client/v3/wallpaper_4d"
WALLPAPERS: Final = 60
BLOCK: Final = 5  # wallpaper ids per phase for downloads
DOWNLOADS_PER_S: Final = 20
ATTEMPTS: Final = 5  # tries per idempotency key
ATTEMPT_TIMEOUT_S: Final = 6.0  # the service's budget is 1 s acquire + 2 s query (+0.5): past this it is hung
MAX_IN_FLIGHT: Final = 400  # download keys in flight at once
PACKAGES: Final = ["tornado", "uvloop", "redis", "motor", "pymongo", "aiomysql", "orjson"]
REDIS_FAULTS: Final = ("redis_kill", "redis_stop", "redis_latency")
FAULTS: Final = ("none", *REDIS_FAULTS, "mongo_kill", "mysql_refuse", "mysql_blackhole", "mysql_drop_replies")
FAULT_TEXT: Final = {
    "none": "no fault (baseline)",
    "redis_kill": "Redis SIGKILL, restarted on the same port after the fault time",
    "redis_stop": "Redis SIGSTOP 5 s, then SIGCONT",
    "redis_latency": "Redis +200 ms each way (proxy)",
    "mongo_kill": "SecantusDB SIGKILL, restarted after the fault time",
    "mysql_refuse": "MariaDB proxy refuses (listener closed, open connections reset)",
    "mysql_blackhole": "MariaDB proxy accepts and swallows both ways",
    "mysql_drop_replies": "MariaDB proxy forwards requests, drops replies",
}
ROW_FIELDS: Final = (
    "fault", "requests", "non_2xx_warm", "socket_errors", "p99_ms_during", "recovery_s", "db_loads_during",
    "downloads_2xx", "downloads_counted", "downloads_lost", "downloads_double",
)  # fmt: skip
RECOVERY_TARGET_S: Final = 5.0


@dataclass(frozen=True)
class Plan:
    quick: bool
    gap_s: float  # baseline before each fault
    fault_s: float  # how long a fault lasts (Redis SIGSTOP: 5 s whatever this is)
    after_s: float  # watched after the fault ends (recovery must show within it)
    settle_s: float  # after the load, at most this long for counters to agree
    connections: int  # wrk
    storm_s: float  # the download storm's load

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, gap_s=4, fault_s=5, after_s=9, settle_s=20, connections=32, storm_s=8)
        return cls(False, gap_s=8, fault_s=10, after_s=15, settle_s=60, connections=64, storm_s=60)


# -- small HTTP client (POSTs, metrics) ---------------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body (or a body up to EOF)."""
    status_line = await reader.readline()
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"bad status line {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for _ in range(200):
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read(1 << 20)
    return int(parts[1]), headers, body


def _request(method: str, path: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Download:
    key: str
    wallpaper_id: int
    phase: str
    sent_at: float
    attempts: list[tuple[float, str]] = field(default_factory=list)  # (time, status code or error name)
    final: str = ""
    downloads: int | None = None  # the counter a 200 answered (as of this download)

    @property
    def ok(self) -> bool:
        return self.final[:1] == "2"


async def post_download(port: int, item: Download, clock: Callable[[], float]) -> None:
    """POST until a final answer: a 2xx or a 4xx, or ``ATTEMPTS`` tries of 503 / 5xx / timeouts / errors."""
    path = f"{API}/wallpaper/{item.wallpaper_id}/download"
    request = _request("POST", path, port, {"Idempotency-Key": item.key, "Content-Length": "0", "Connection": "close"})
    for attempt in range(ATTEMPTS):
        retry_after = 0.5 * (attempt + 1)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), ATTEMPT_TIMEOUT_S)
            try:
                writer.write(request)
                status, headers, body = await asyncio.wait_for(read_response(reader), ATTEMPT_TIMEOUT_S)
            finally:
                writer.transport.abort()
            outcome = str(status)
            if status == 200:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    item.downloads = int(json.loads(body)["data"]["downloads"])
            with contextlib.suppress(ValueError):
                retry_after = min(float(headers.get("retry-after", "")), 2.0)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            outcome = type(exc).__name__
        item.attempts.append((clock(), outcome))
        item.final = outcome
        if outcome[:1] in ("2", "4"):
            return
        await asyncio.sleep(retry_after)


def parse_counters(text: str) -> dict[str, float]:
    """The cache's own counters in a ``/metrics`` text: ``cachelayer_<name>_total{cache="wallpaper"}`` -> name (with
    forked workers, the workers' sum)."""
    return cache_counters(parse(text))


class PodMetrics:
    """The cache's counters from the service's admin port: one scrape per sample, on a connection of its own (the
    kernel hands it to any worker, and that worker answers for every live one: counters are the workers' sums).
    ``samples``: (time, ``cachelayer_loads``)."""

    def __init__(self, admin_port: int, workers: int) -> None:
        self.port, self.workers = admin_port, workers
        self.samples: list[tuple[float, float]] = []
        self.counters: dict[str, float] = {}  # the cache's counters at the last scrape that answered
        self.live: int | None = None  # wallpaper_workers at the last scrape that answered
        self.failures = 0
        self.fewer: tuple[float, int] | None = None  # the first scrape with fewer live workers: (time, how many)

    async def scrape(self) -> str:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 3.0)
        try:
            writer.write(_request("GET", "/metrics", self.port, {"Connection": "close"}))
            status, _headers, body = await asyncio.wait_for(read_response(reader), 3.0)
        finally:
            writer.transport.abort()
        if status != 200:
            raise ConnectionError(f"/metrics answered {status}")
        return body.decode()

    async def sample(self, now: float) -> bool:
        """One scrape; False when it failed (the sample is skipped: a gap, not a reset)."""
        try:
            text = await self.scrape()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            self.failures += 1
            return False
        samples = parse(text)
        self.counters = cache_counters(samples)
        self.live = live_workers(samples)
        if self.live < self.workers and self.fewer is None:
            self.fewer = (round(now, 1), self.live)
        if "loads" in self.counters:
            self.samples.append((now, self.counters["loads"]))
        return True

    @property
    def note(self) -> str:
        notes = []
        if self.failures:
            notes.append(f"{self.failures} scrape(s) of the admin port failed (those samples skipped)")
        if self.fewer is not None:
            notes.append(f"a scrape at {self.fewer[0]:g} s held {self.fewer[1]} of {self.workers} live workers")
        return "; ".join(notes)


# -- result building (pure functions; tests/test_chaos_benchmark.py feeds them synthetic data) -----------------


@dataclass
class Second:
    """One wrk run of about a second: a timeline point."""

    t: float  # start, seconds since the load started
    duration: float
    requests: int
    non_2xx: int
    socket_errors: int
    p99_ms: float | None
    db_loads: float | None = None
    download_attempts: int = 0
    download_errors: int = 0

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


@dataclass(frozen=True)
class PhaseWindow:
    fault: str
    start: float  # baseline gap begins
    fault_start: float
    fault_end: float
    end: float  # the watch after the fault ends


def loads_at(samples: Sequence[tuple[float, float]], t: float) -> float | None:
    """The service's loads (the workers' sum) at time ``t``: the last sample taken at or before it."""
    best: float | None = None
    for when, loads in samples:
        if when > t:
            break
        best = loads
    return best


def add_loads(seconds: Sequence[Second], samples: Sequence[tuple[float, float]]) -> None:
    for s in seconds:
        a, b = loads_at(samples, s.t), loads_at(samples, s.t + s.duration)
        s.db_loads = None if a is None or b is None else b - a


def add_downloads(seconds: Sequence[Second], downloads: Sequence[Download]) -> None:
    for s in seconds:
        end = s.t + s.duration
        for item in downloads:
            for when, outcome in item.attempts:
                if s.t <= when < end:
                    s.download_attempts += 1
                    s.download_errors += outcome[:1] != "2"


def _baseline(seconds: Sequence[Second], window: PhaseWindow) -> tuple[float, float]:
    """The gap before the fault: median p99 (ms) and median requests per second."""
    base = [s for s in seconds if window.start <= s.t and s.t + s.duration <= window.fault_start]
    p99 = statistics.median([s.p99_ms for s in base if s.p99_ms is not None] or [0.0])
    rate = statistics.median([s.requests / s.duration for s in base if s.duration > 0] or [0.0])
    return p99, rate


def _first_after(seconds: Sequence[Second], window: PhaseWindow, good: Callable[[Second], bool]) -> float | None:
    for s in seconds:
        if window.fault_end <= s.t < window.end and good(s):
            return round(max(0.0, s.t - window.fault_end), 1)
    return None


def recovery_seconds(seconds: Sequence[Second], window: PhaseWindow) -> float | None:
    """From the fault's end to the start of the first second with answers, no error, and a p99 within 2x the
    baseline gap's median p99. None: not within the watch."""
    base_p99, _rate = _baseline(seconds, window)
    return _first_after(
        seconds,
        window,
        lambda s: s.errors == 0 and s.p99_ms is not None and (base_p99 <= 0 or s.p99_ms <= 2 * base_p99),
    )


def rate_recovery_seconds(seconds: Sequence[Second], window: PhaseWindow) -> float | None:
    """From the fault's end to the first second with no error and at least half the baseline's requests (the
    throughput side of recovery, which ``recovery_s`` does not look at)."""
    _p99, base_rate = _baseline(seconds, window)
    return _first_after(seconds, window, lambda s: s.errors == 0 and s.requests >= 0.5 * base_rate * s.duration)


def count_downloads(
    downloads: Sequence[Download], rows_per_key: dict[str, int] | None, rows_in_block: int
) -> dict[str, int]:
    """What one phase's downloads became. With a key column (``rows_per_key``): exact per key. Without it, by
    totals: the rows in the phase's id block against the 2xx answers (lost and double then net each other out)."""
    answered = [d for d in downloads if d.ok]
    if rows_per_key is not None:
        rows = {d.key: rows_per_key.get(d.key, 0) for d in downloads}
        return {
            "downloads_2xx": len(answered),
            "downloads_counted": sum(1 for d in downloads if rows[d.key] > 0),
            "downloads_lost": sum(1 for d in answered if rows[d.key] == 0),
            "downloads_double": sum(1 for d in downloads if rows[d.key] > 1),
            "counted_after_failure": sum(1 for d in downloads if not d.ok and rows[d.key] > 0),
        }
    return {
        "downloads_2xx": len(answered),
        "downloads_counted": rows_in_block,
        "downloads_lost": max(0, len(answered) - rows_in_block),
        "downloads_double": max(0, rows_in_block - len(answered)),
        "counted_after_failure": 0,
    }


def build_row(
    window: PhaseWindow,
    seconds: Sequence[Second],
    samples: Sequence[tuple[float, float]],
    counts: dict[str, int],
) -> dict[str, Any]:
    """One fault's row. The fault's span is from its start to the end of the watch after it (what a fault leaves
    behind, such as a cold Redis, counts too); p99 is the worst per-second p99 within it."""
    during = [s for s in seconds if window.fault_start <= s.t < window.end]
    p99s = [s.p99_ms for s in during if s.p99_ms is not None]
    a, b = loads_at(samples, window.fault_start), loads_at(samples, window.end)
    return {
        "fault": window.fault,
        "requests": sum(s.requests for s in during),
        "non_2xx_warm": sum(s.non_2xx for s in during),
        "socket_errors": sum(s.socket_errors for s in during),
        "p99_ms_during": max(p99s) if p99s else None,
        "recovery_s": recovery_seconds(seconds, window),
        "rate_recovery_s": rate_recovery_seconds(seconds, window),
        "db_loads_during": None if a is None or b is None else round(b - a),
        **counts,
    }


def verdict(row: dict[str, Any]) -> tuple[bool, list[str]]:
    """The issue's targets for one row: (pass, the failed ones)."""
    failed = []
    if (row["fault"] in REDIS_FAULTS or row["fault"] in ("mongo_kill", "none")) and row["non_2xx_warm"] != 0:
        failed.append(f"non_2xx_warm {row['non_2xx_warm']} (target 0)")
    if row["downloads_lost"] != 0:
        failed.append(f"downloads_lost {row['downloads_lost']} (target 0)")
    if row["downloads_double"] != 0:
        failed.append(f"downloads_double {row['downloads_double']} (target 0)")
    if row.get("mongo_counted") is not None and row["mongo_counted"] != row["downloads_counted"]:
        failed.append(f"mongo_counted {row['mongo_counted']} != downloads_counted {row['downloads_counted']}")
    if row["recovery_s"] is None or row["recovery_s"] > RECOVERY_TARGET_S:
        failed.append(f"recovery_s {row['recovery_s']} (target <= {RECOVERY_TARGET_S:g})")
    return not failed, failed


def timeline_for(seconds: Sequence[Second], window: PhaseWindow) -> list[dict[str, Any]]:
    """The window's seconds, time relative to the fault's start."""
    return [
        {**asdict(s), "t": round(s.t - window.fault_start, 2), "errors": s.errors}
        for s in seconds
        if window.start <= s.t < window.end
    ]


# -- the stack ----------------------------------------------------------------------------------------------------


class Stack:
    """The stores, their proxies, and the service: everything the run starts, stopped in :meth:`close`."""

    def __init__(self, workdir: Path, source: Path = REPO) -> None:
        self.workdir = workdir
        self.source = source  # the tree whose service/ and cachelayer/ run
        self.redis = harness.RedisServer(workdir)
        self.mongo = harness.SecantusServer(workdir)
        self.mariadb: harness.MariaDBServer | None = harness.MariaDBServer(workdir)
        self.mysql_port = 0
        self.database = f"wallpaper_bench_{WALLPAPERS}"
        self.mysql_note = "private mariadbd"
        self.proxies: dict[str, harness.ProxyProcess] = {}
        self.service: subprocess.Popen[bytes] | None = None
        self.service_port = harness.free_port()
        self.admin_port = harness.free_port()  # /metrics and /readyz: never the shipped 9888, which may be taken
        while self.admin_port == self.service_port:
            self.admin_port = harness.free_port()
        self.service_log = workdir / "service.log"

    def start_stores(self) -> None:
        self.redis.start()
        self.mongo.start()
        assert self.mariadb is not None
        try:
            self.mariadb.start()
            self.mysql_port = self.mariadb.port
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            self.mariadb.stop()
            self.mariadb = None
            self.mysql_port = 3306
            self.database = f"chaos_{os.getpid()}"
            self.mysql_note = f"machine MariaDB, database {self.database} (private mariadbd failed: {exc!r:.200})"
            print(f"  {self.mysql_note}", flush=True)
        for name, port in (("redis", self.redis.port), ("mongo", self.mongo.port), ("mysql", self.mysql_port)):
            self.proxies[name] = harness.ProxyProcess(name, port, log=self.workdir / f"proxy-{name}.log")

    def env(self, *, direct: bool) -> dict[str, str]:
        """The service's environment: every store through its proxy (``direct``: the stores themselves)."""
        redis_port = self.redis.port if direct else self.proxies["redis"].port
        mongo_port = self.mongo.port if direct else self.proxies["mongo"].port
        mysql_port = self.mysql_port if direct else self.proxies["mysql"].port
        env = {k: v for k, v in os.environ.items() if not k.startswith("WALLPAPER_")}
        env["PYTHONPATH"] = str(self.source)
        env.update(
            WALLPAPER_REDIS__URL=f"redis://127.0.0.1:{redis_port}/0",
            WALLPAPER_MONGO__URI=f"mongodb://127.0.0.1:{mongo_port}/",
            WALLPAPER_MONGO__DATABASE=self.database,
            WALLPAPER_MYSQL__HOST="127.0.0.1",
            WALLPAPER_MYSQL__PORT=str(mysql_port),
            WALLPAPER_MYSQL__DATABASE=self.database,
            WALLPAPER_SERVER__HOST="127.0.0.1",
            WALLPAPER_ADMIN__HOST="127.0.0.1",
            WALLPAPER_ADMIN__PORT=str(self.admin_port),
            WALLPAPER_LOG__SINK="stdout",
        )
        return env

    def seed(self) -> None:
        """``python -m service seed`` straight into the stores; retried, since a just-started SecantusDB may time
        out the first bulk write."""
        config = self.source / "config" / "wallpaper.toml"
        cmd = [sys.executable, "-m", "service", "seed", "--config", str(config), "--wallpapers", str(WALLPAPERS)]
        last = ""
        for _ in range(3):
            out = subprocess.run(
                cmd,
                cwd=self.source,
                env=self.env(direct=True),
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if out.returncode == 0:
                return
            last = (out.stderr or out.stdout)[-800:]
            time.sleep(1)
        raise RuntimeError(f"seeding failed 3 times:\n{last}")

    def start_service(self) -> None:
        config = self.source / "config" / "wallpaper.toml"
        cmd = [sys.executable, "-m", "service", "serve", "--config", str(config), "--port", str(self.service_port)]
        cmd += ["--processes", "2", "--loop", "uvloop"]
        with self.service_log.open("ab") as log:
            self.service = subprocess.Popen(
                cmd, cwd=self.source, env=self.env(direct=False), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.service.poll() is not None:
                raise RuntimeError(f"service exited with {self.service.returncode}:\n{self.log_tail()}")
            # Ready: the public port's liveness, and the admin port's readiness (200: MongoDB answers).
            if (
                http_get(f"{self.base}/healthz", timeout=2) == 200
                and http_get(f"{self.admin}/readyz", timeout=2) == 200
            ):
                return
            time.sleep(0.3)
        raise RuntimeError(f"service not healthy and ready after 60 s:\n{self.log_tail()}")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.service_port}"

    @property
    def admin(self) -> str:
        """The admin port: ``/metrics`` (every live worker's figures) and ``/readyz``."""
        return f"http://127.0.0.1:{self.admin_port}"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.service_log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop_service(self) -> None:
        proc = self.service
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
        # The workers share the parent's session: none may outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def close(self) -> None:
        self.stop_service()
        for proxy in self.proxies.values():
            proxy.stop()
        if self.mariadb is None and self.mysql_port == 3306:
            with contextlib.suppress(Exception):
                conn = self.mysql()
                with conn.cursor() as cur:
                    cur.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
                conn.close()
        for store in (self.mariadb, self.mongo, self.redis):
            if store is not None:
                store.stop()

    def mysql(self) -> Any:
        import pymysql  # type: ignore[import-untyped]

        return pymysql.connect(host="127.0.0.1", port=self.mysql_port, user="root", password="", connect_timeout=5)


def http_get(url: str, timeout: float = 5.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def load_paths() -> list[str]:
    from service.demo_data import CATEGORIES

    lists = [f"{API}/wallpaperList.json?pageSize=20&page={p}&sort={s}" for s in ("new", "hot") for p in (1, 2, 3)]
    lists += [f"{API}/wallpaperList.json?pageSize=20&category={c['slug']}" for c in CATEGORIES[:3]]
    return lists + [f"{API}/wallpaper/{i}.json" for i in range(1, WALLPAPERS + 1)]


def wrk_script(paths: Sequence[str], path: Path) -> Path:
    quoted = ", ".join(json.dumps(p) for p in paths)
    path.write_text(
        f"local paths = {{{quoted}}}\nlocal i = 0\n"
        "request = function()\n  i = i % #paths + 1\n  return wrk.format('GET', paths[i])\nend\n"
    )
    return path


# -- the run ------------------------------------------------------------------------------------------------------


class Run:
    """The load, the faults and what they left, on a started :class:`Stack`."""

    def __init__(self, stack: Stack, plan: Plan, script: Path) -> None:
        self.stack, self.plan, self.script = stack, plan, script
        self.t0 = time.monotonic()
        self.seconds: list[Second] = []
        self.downloads: list[Download] = []
        self.windows: list[PhaseWindow] = []
        self.phase = "none"
        self.metrics = PodMetrics(stack.admin_port, workers=2)
        self.stop = asyncio.Event()

    def clock(self) -> float:
        return time.monotonic() - self.t0

    async def wrk_loop(self) -> None:
        url = self.stack.base + "/"
        argv = ["wrk", "-t1", f"-c{self.plan.connections}", "-d1s", "--timeout", "1s", "--latency"]
        argv += ["-s", str(self.script), url]
        for _ in range(3600):
            if self.stop.is_set():
                return
            started = self.clock()
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                continue
            try:
                result = parse_wrk(out.decode())
            except ValueError:
                continue
            requests = int(result["requests"] or 0)
            self.seconds.append(
                Second(
                    t=started,
                    duration=self.clock() - started,
                    requests=requests,
                    non_2xx=int(result["non_2xx"]),
                    socket_errors=int(result["socket_errors"]),
                    p99_ms=result["p99_ms"] if requests else None,
                )
            )

    async def download_loop(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / DOWNLOADS_PER_S
        next_at = time.monotonic()
        for counter in range(100_000):
            if self.stop.is_set():
                break
            block_start = 1 + FAULTS.index(self.phase) * BLOCK
            item = Download(uuid.uuid4().hex, block_start + counter % BLOCK, self.phase, self.clock())
            if len(tasks) < MAX_IN_FLIGHT:
                self.downloads.append(item)
                task = asyncio.create_task(post_download(self.stack.service_port, item, self.clock))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if tasks:  # each key ends within ATTEMPTS x (timeout + 2 s)
            await asyncio.wait(tasks, timeout=ATTEMPTS * (ATTEMPT_TIMEOUT_S + 2))
            for task in tasks:
                task.cancel()

    async def metrics_loop(self) -> None:
        for _ in range(3600):
            await self.metrics.sample(self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)
            if self.stop.is_set():
                await self.metrics.sample(self.clock())
                return

    async def inject(self, fault: str) -> None:
        """Apply one fault for ``plan.fault_s`` (blocking calls run in a thread)."""
        stack, hold = self.stack, self.plan.fault_s

        def blocking(action: Callable[[], object]) -> Awaitable[object]:
            return asyncio.to_thread(action)

        if fault == "none":
            await asyncio.sleep(hold)
        elif fault == "redis_kill":
            await blocking(stack.redis.kill)
            await asyncio.sleep(hold)
            await blocking(stack.redis.start)
        elif fault == "redis_stop":
            stack.redis.signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(5.0)
            finally:
                stack.redis.signal(signal.SIGCONT)
        elif fault == "redis_latency":
            await blocking(lambda: stack.proxies["redis"].set_latency(0.2))
            try:
                await asyncio.sleep(hold)
            finally:
                await blocking(lambda: stack.proxies["redis"].set_latency(0.0))
        elif fault == "mongo_kill":
            await blocking(stack.mongo.kill)
            await asyncio.sleep(hold)
            await blocking(stack.mongo.start)
        elif fault.startswith("mysql_"):
            mode = fault.removeprefix("mysql_")
            await blocking(lambda: stack.proxies["mysql"].set_mode(mode))  # type: ignore[arg-type]
            try:
                await asyncio.sleep(hold)
            finally:
                await blocking(lambda: stack.proxies["mysql"].set_mode("pass"))
        else:
            raise ValueError(f"unknown fault {fault!r}")

    async def phases(self, faults: Sequence[str]) -> None:
        await asyncio.sleep(2.0)  # the first timeline points before anything happens
        for fault in faults:
            start = self.clock()
            self.phase = fault
            print(f"  {self.clock():6.1f} s  {fault}: baseline {self.plan.gap_s:g} s", flush=True)
            await asyncio.sleep(self.plan.gap_s)
            fault_start = self.clock()
            await self.inject(fault)
            fault_end = self.clock()
            print(f"  {self.clock():6.1f} s  {fault}: ended after {fault_end - fault_start:.1f} s", flush=True)
            await asyncio.sleep(self.plan.after_s)
            self.windows.append(PhaseWindow(fault, start, fault_start, fault_end, self.clock()))

    async def run(self, faults: Sequence[str]) -> None:
        loops = [asyncio.create_task(c) for c in (self.wrk_loop(), self.download_loop(), self.metrics_loop())]
        try:
            await self.phases(faults)
        finally:
            self.stop.set()
            await asyncio.wait(loops, timeout=ATTEMPTS * (ATTEMPT_TIMEOUT_S + 2) + 20)
            for task in loops:
                task.cancel()
        for task in loops:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"a load loop failed: {task.exception()!r}")


# -- the download storm: 300 cached list pages, 12 clients downloading (issue 16, part 2) ------------------------
#
# Healthy stores (through their proxies, in pass mode). Every download invalidates its wallpaper's detail and every
# list page of ``_all`` and of its category, so each one reaches all 300 cached ``_all`` pages while readers reload
# them. Each reader answer is checked against the downloads answered before that read was sent: it must show, for
# every storm wallpaper it shows, at least the highest count a download of it had answered by then.

STORM: Final = "download_storm"
STORM_TEXT: Final = "healthy stores: 300 cached list pages, 12 clients downloading, readers reloading the pages"
STORM_CLIENTS: Final = 12
STORM_READERS: Final = 16  # keep-alive connections cycling through the pages
STORM_IDS: Final = range(41, 61)  # past every fault phase's block (8 x 5 ids)
STORM_COUNTERS: Final = (
    "breaker_opened", "store_errors", "store_queue_timeouts", "store_late_timeouts", "invalidations_deferred",
    "revoked_fills", "invalidations", "loads",
)  # fmt: skip
STORM_FIELDS: Final = (
    "row", "list_pages", "download_clients", "downloads", "download_failures", "reads", "read_failures",
    "stale_answers", "breaker_opened", "store_errors", "store_queue_timeouts", "invalidations_deferred",
    "revoked_fills", "download_p99_ms", "read_p99_ms",
)  # fmt: skip


def storm_list_paths() -> list[str]:
    """300 distinct list pages of the unfiltered scope (tag ``list:_all``), every one showing wallpapers."""
    pages = [f"{API}/wallpaperList.json?pageSize={n}&page=1&sort={s}" for s in ("new", "hot") for n in range(1, 101)]
    pages += [f"{API}/wallpaperList.json?pageSize={n}&page=2&sort={s}" for s in ("new", "hot") for n in range(1, 51)]
    return pages


def storm_paths() -> list[str]:
    return [*storm_list_paths(), *(f"{API}/wallpaper/{i}.json" for i in STORM_IDS)]


class Ledger:
    """The counts downloads answered, per wallpaper, in the order the answers arrived."""

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {}
        self.highest: dict[int, list[int]] = {}  # running maximum of the answered counts

    def add(self, wallpaper_id: int, answered_at: float, downloads: int) -> None:
        times, highest = self.times.setdefault(wallpaper_id, []), self.highest.setdefault(wallpaper_id, [])
        if times and answered_at < times[-1]:
            raise ValueError("answers must be added in the order they arrived")
        times.append(answered_at)
        highest.append(max(downloads, highest[-1] if highest else downloads))

    def floor(self, wallpaper_id: int, before: float) -> int | None:
        """The highest count answered for ``wallpaper_id`` strictly before ``before`` (None: no answer yet)."""
        times = self.times.get(wallpaper_id, [])
        index = bisect.bisect_left(times, before)
        return self.highest[wallpaper_id][index - 1] if index else None


@dataclass
class Answer:
    """One reader GET: when it was sent, its status and ``X-Cache``, and the storm wallpapers' counts it showed."""

    sent_at: float
    path: str
    status: int
    x_cache: str
    latency_ms: float
    counts: dict[int, int]


def counts_shown(body: bytes) -> dict[int, int]:
    """Storm wallpaper id -> the download count a list or detail body shows."""
    data = json.loads(body)["data"]
    items = data["items"] if isinstance(data, dict) and "items" in data else [data]
    shown = {}
    for item in items:
        downloads = item["downloads"] if "downloads" in item else item["counts"]["downloads"]
        if int(item["id"]) in STORM_IDS:
            shown[int(item["id"])] = int(downloads)
    return shown


def stale_answers(answers: Sequence[Answer], ledger: Ledger) -> list[dict[str, Any]]:
    """Answers showing a count below one a download had answered before the read was sent."""
    stale = []
    for answer in answers:
        for wallpaper_id, shown in answer.counts.items():
            floor = ledger.floor(wallpaper_id, answer.sent_at)
            if floor is not None and shown < floor:
                stale.append({"path": answer.path, "wallpaper": wallpaper_id, "shown": shown, "answered": floor,
                              "x_cache": answer.x_cache, "sent_at": round(answer.sent_at, 3)})  # fmt: skip
    return stale


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def storm_row(
    downloads: Sequence[Download],
    answers: Sequence[Answer],
    counters: dict[str, float],
    failed_reads: int,
    list_pages: int,
) -> dict[str, Any]:
    """The storm's row (pure: the quick test feeds it synthetic data)."""
    ledger = Ledger()
    answered = sorted((d.attempts[-1][0], d) for d in downloads if d.ok and d.downloads is not None and d.attempts)
    for answered_at, item in answered:
        assert item.downloads is not None
        ledger.add(item.wallpaper_id, answered_at, item.downloads)
    stale = stale_answers(answers, ledger)
    row: dict[str, Any] = {
        "row": STORM,
        "list_pages": list_pages,
        "download_clients": STORM_CLIENTS,
        "downloads": len(downloads),
        "download_failures": sum(1 for d in downloads if not d.ok),
        "reads": len(answers) + failed_reads,
        "read_failures": failed_reads + sum(1 for a in answers if a.status != 200),
        "stale_answers": len(stale),
        **{name: round(counters.get(name, 0.0)) for name in STORM_COUNTERS},
        "download_p99_ms": percentile([(d.attempts[-1][0] - d.sent_at) * 1000 for d in downloads if d.attempts], 0.99),
        "read_p99_ms": percentile([a.latency_ms for a in answers], 0.99),
        "x_cache": dict(collections.Counter(a.x_cache for a in answers)),
        "stale_examples": stale[:10],
    }
    row["pass"], row["failed"] = storm_verdict(row)
    return row


def storm_verdict(row: dict[str, Any]) -> tuple[bool, list[str]]:
    """The issue's targets for the storm: 0 breaker openings, 0 store errors, 0 answers older than the last
    completed download."""
    failed = [f"{name} {row[name]} (target 0)" for name in ("breaker_opened", "store_errors", "stale_answers")
              if row[name] != 0]  # fmt: skip
    if row["downloads"] == 0 or row["reads"] == 0:
        failed.append("no load")
    return not failed, failed


def redis_commandstats(port: int) -> dict[str, tuple[int, int]]:
    """Redis's own ``INFO commandstats``: command -> (calls, microseconds spent), read on the server directly."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        info = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in info.items()}


def redis_cost(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, dict[str, int]]:
    """The commands Redis ran between two ``commandstats``: name -> {calls, usec}, largest time first."""
    grown = {
        name: {"calls": calls - before.get(name, (0, 0))[0], "usec": usec - before.get(name, (0, 0))[1]}
        for name, (calls, usec) in after.items()
    }
    return dict(sorted(((n, v) for n, v in grown.items() if v["calls"] > 0), key=lambda item: -item[1]["usec"]))


class Storm:
    """The storm's load on a started :class:`Stack` for ``seconds``."""

    def __init__(self, stack: Stack, seconds: float) -> None:
        self.stack, self.seconds = stack, seconds
        self.t0 = time.monotonic()
        self.stop = asyncio.Event()
        self.downloads: list[Download] = []
        self.answers: list[Answer] = []
        self.failed_reads = 0
        self.paths = storm_paths()

    def clock(self) -> float:
        return time.monotonic() - self.t0

    async def download_client(self, number: int) -> None:
        ids = list(STORM_IDS)
        for n in range(1_000_000):
            if self.stop.is_set():
                return
            item = Download(uuid.uuid4().hex, ids[(number + n * STORM_CLIENTS) % len(ids)], STORM, self.clock())
            self.downloads.append(item)
            await post_download(self.stack.service_port, item, self.clock)

    async def reader(self, number: int) -> None:
        port, conn = self.stack.service_port, None
        for n in range(10_000_000):
            if self.stop.is_set():
                break
            path = self.paths[(number * 37 + n) % len(self.paths)]
            sent_at = self.clock()
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), ATTEMPT_TIMEOUT_S)
                conn[1].write(_request("GET", path, port, {}))
                status, headers, body = await asyncio.wait_for(read_response(conn[0]), ATTEMPT_TIMEOUT_S)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                self.failed_reads += 1
                if conn is not None:
                    conn[1].transport.abort()
                conn = None
                continue
            latency_ms = (self.clock() - sent_at) * 1000
            counts = counts_shown(body) if status == 200 else {}
            self.answers.append(Answer(sent_at, path, status, headers.get("x-cache", ""), latency_ms, counts))
            if headers.get("connection", "").lower() == "close":
                conn[1].transport.abort()
                conn = None
        if conn is not None:
            conn[1].transport.abort()

    async def run(self) -> dict[str, Any]:
        metrics = PodMetrics(self.stack.admin_port, workers=2)
        # The answering worker's counters are current, the other's copy up to PUBLISH_S old: with no load on, a
        # scrape after that holds both workers' as of now (here, and at the end).
        await asyncio.sleep(PUBLISH_S + 0.5)
        for _ in range(5):
            if await metrics.sample(0.0):
                break
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError(f"the admin port ({self.stack.admin}/metrics) answered no scrape")
        before = dict(metrics.counters)
        redis_before = await asyncio.to_thread(redis_commandstats, self.stack.redis.port)
        self.t0 = time.monotonic()
        clients = [asyncio.create_task(self.download_client(i)) for i in range(STORM_CLIENTS)]
        readers = [asyncio.create_task(self.reader(i)) for i in range(STORM_READERS)]
        # Sampled once a second, not only at the end: should the last scrape fail, the one before stands in.
        for _ in range(int(self.seconds) + 1):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), min(1.0, max(0.0, self.seconds - self.clock())))
            if self.stop.is_set() or self.clock() >= self.seconds:
                break
            await metrics.sample(self.clock())
        self.stop.set()
        tasks = [*clients, *readers]
        await asyncio.wait(tasks, timeout=ATTEMPTS * (ATTEMPT_TIMEOUT_S + 2))
        for task in tasks:
            task.cancel()
        seconds = self.clock()
        redis_after = await asyncio.to_thread(redis_commandstats, self.stack.redis.port)
        await asyncio.sleep(PUBLISH_S + 0.5)
        await metrics.sample(seconds)
        measured = metrics.live  # live workers whose figures the last scrape held (wallpaper_workers)
        counters = {name: metrics.counters.get(name, 0.0) - before.get(name, 0.0) for name in STORM_COUNTERS}
        row = storm_row(self.downloads, self.answers, counters, self.failed_reads, len(storm_list_paths()))
        row["seconds"] = round(seconds, 1)
        row["workers_measured"] = measured
        cost = redis_cost(redis_before, redis_after)
        row["redis_commands"] = cost
        row["redis_busy_ms_per_s"] = round(sum(v["usec"] for v in cost.values()) / 1000 / max(seconds, 0.1), 1)
        counted = max(1, sum(1 for d in self.downloads if d.ok))
        row["redis_evals_per_download"] = round(cost.get("eval", {}).get("calls", 0) / counted, 1)
        if metrics.note:
            row["note"] = metrics.note
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"a storm client failed: {task.exception()!r}")
        return row


# -- what the stores hold at the end -----------------------------------------------------------------------------


def key_column(conn: Any, database: str) -> tuple[str, str] | None:
    """(table, column) of an idempotency key in the service's schema, if it has one."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s"
            " AND COLUMN_NAME LIKE %s ORDER BY TABLE_NAME = 'download_events' DESC",
            (database, "%idempot%"),
        )
        row = cur.fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def store_counts(stack: Stack, seeded: dict[int, int]) -> dict[str, Any]:
    """Rows per wallpaper id and per key in MySQL, and download counters in Mongo (minus their seeded values)."""
    import pymongo

    conn = stack.mysql()
    try:
        conn.select_db(stack.database)
        with conn.cursor() as cur:
            cur.execute("SELECT wallpaper_id, COUNT(*) FROM download_events GROUP BY wallpaper_id")
            rows_by_id = {int(i): int(n) for i, n in cur.fetchall()}
        column = key_column(conn, stack.database)
        rows_by_key: dict[str, int] | None = None
        if column is not None:
            with conn.cursor() as cur:
                cur.execute(f"SELECT `{column[1]}`, COUNT(*) FROM `{column[0]}` GROUP BY `{column[1]}`")
                rows_by_key = {str(k): int(n) for k, n in cur.fetchall() if k is not None}
    finally:
        conn.close()
    client: Any = pymongo.MongoClient(f"mongodb://127.0.0.1:{stack.mongo.port}/", serverSelectionTimeoutMS=5000)
    try:
        docs = client[stack.database]["wallpapers"].find({}, {"_id": 1, "counts.downloads": 1})
        mongo_by_id = {int(d["_id"]): int(d["counts"]["downloads"]) - seeded.get(int(d["_id"]), 0) for d in docs}
    finally:
        client.close()
    return {"rows_by_id": rows_by_id, "rows_by_key": rows_by_key, "key_column": column, "mongo_by_id": mongo_by_id}


def seeded_counters(stack: Stack) -> dict[int, int]:
    import pymongo

    client: Any = pymongo.MongoClient(f"mongodb://127.0.0.1:{stack.mongo.port}/", serverSelectionTimeoutMS=5000)
    try:
        docs = client[stack.database]["wallpapers"].find({}, {"_id": 1, "counts.downloads": 1})
        return {int(d["_id"]): int(d["counts"]["downloads"]) for d in docs}
    finally:
        client.close()


def settle(stack: Stack, seeded: dict[int, int], seconds: float) -> tuple[dict[str, Any], float]:
    """Read the stores until MySQL rows and Mongo counters agree for every id (or ``seconds`` passed)."""
    started = time.monotonic()
    for _ in range(int(seconds) + 1):
        counts = store_counts(stack, seeded)
        ids = set(counts["rows_by_id"]) | {i for i, n in counts["mongo_by_id"].items() if n}
        if all(counts["rows_by_id"].get(i, 0) == counts["mongo_by_id"].get(i, 0) for i in ids):
            break
        if time.monotonic() - started >= seconds:
            break
        time.sleep(1.0)
    return counts, time.monotonic() - started


# -- output -------------------------------------------------------------------------------------------------------


def chart(timelines: dict[str, list[dict[str, Any]]], windows: Sequence[PhaseWindow], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    faults = [w for w in windows if w.fault in timelines]
    fig, axes = plt.subplots(len(faults), 1, figsize=(10, 2.3 * len(faults)), squeeze=False)
    for ax, window in zip(axes[:, 0], faults, strict=True):
        points = timelines[window.fault]
        ts = [p["t"] for p in points]
        ax.plot(ts, [p["requests"] / max(p["duration"], 0.1) for p in points], label="requests/s (wrk)", color="C0")
        ax.set_ylabel("req/s", fontsize=8)
        ax.axvspan(0, window.fault_end - window.fault_start, color="red", alpha=0.12)
        right = ax.twinx()
        right.plot(ts, [p["errors"] for p in points], color="C3", marker=".", label="errors (wrk)")
        right.plot(ts, [p["db_loads"] or 0 for p in points], color="C2", marker=".", label="DB loads")
        right.plot(ts, [p["download_errors"] for p in points], color="C1", ls=":", label="download errors")
        right.set_ylabel("per second", fontsize=8)
        ax.set_ylim(bottom=0)
        right.set_ylim(bottom=0)
        ax.set_title(f"{window.fault}: {FAULT_TEXT[window.fault]}", fontsize=9)
        handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        ax.legend(handles, [str(h.get_label()) for h in handles], fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds from the fault's start (shaded: the fault)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[object]]]:
    extra = ("mongo_counted", "rate_recovery_s")
    headers = [*ROW_FIELDS, *extra, "verdict"]
    body = [[*(r[f] for f in ROW_FIELDS), *(r.get(f) for f in extra), "PASS" if r["pass"] else "FAIL"] for r in rows]
    return headers, body


def render_markdown(data: dict[str, Any]) -> str:
    headers, body = table(data["rows"])
    lines = [
        "# Chaos: the wallpaper service under store faults",
        "",
        f"`python -m benchmarks.chaos{' --quick' if data['quick'] else ''}` ({data['date']}, {data['elapsed_s']} s). "
        f"Service: `config/wallpaper.toml`, 2 workers, uvloop, every store behind a fault proxy; MySQL: "
        f"{data['mysql']}; {WALLPAPERS} wallpapers. Load: wrk -t1 -c{data['connections']} on "
        f"{data['paths']} warm list and detail pages in back-to-back 1 s runs, plus {DOWNLOADS_PER_S} download "
        f"POSTs/s with a unique `Idempotency-Key` each, retried with the same key on a 503, a timeout "
        f"({ATTEMPT_TIMEOUT_S:g} s) or a broken connection, at most {ATTEMPTS} tries. Each fault: "
        f"{data['gap_s']:g} s baseline, the fault for {data['fault_s']:g} s (Redis SIGSTOP: 5 s), "
        f"{data['after_s']:g} s watched after it. Code under test: {data['source']}.",
        "",
        markdown_table(headers, body),
        "",
        "## Targets (issue 12, item 9)",
        "",
        "* `non_2xx_warm` 0 under every Redis fault and MongoDB down (and the baseline);",
        "* `downloads_lost` 0 and `downloads_double` 0 under every fault, and the Mongo counters agreeing with the "
        "MySQL events after settling (`mongo_counted` = `downloads_counted`: item 1, every download counted once);",
        f"* `recovery_s` <= {RECOVERY_TARGET_S:g}.",
        "",
        markdown_table(
            ["fault", "verdict", "what failed"],
            [[r["fault"], "PASS" if r["pass"] else "FAIL", "; ".join(r["failed"]) or ""] for r in data["rows"]],
        ),
        "",
        "## How the columns are measured",
        "",
        "* `requests`, `non_2xx_warm`, `socket_errors`: wrk's counts from the fault's start to the end of the watch "
        "after it (what a fault leaves behind, such as a restarted empty Redis, counts too); socket errors include "
        "wrk's 1 s timeouts. `p99_ms_during`: the worst per-second p99 in that span.",
        "* `recovery_s`: from the fault's end to the start of the first 1 s run with no error, a p99 within 2x the "
        "median p99 of the baseline gap before it. Empty: not within the watch. `rate_recovery_s` (not a target): "
        "to the first second with no error and at least half the baseline's requests per second.",
        "* `db_loads_during`: the growth of `cachelayer_loads` over the same span (one scrape of the service's admin "
        "port a second: `/metrics`, the workers' sum).",
        f"* Downloads: each phase posts to its own {BLOCK} wallpaper ids. {data['download_method']} "
        "`mongo_counted`: the phase's Mongo counters minus their seeded values after settling "
        f"({data['settle_s']} s; agreement with MySQL: {data['stores_agree']}).",
        "",
        f"![timeline per fault]({data['chart']})",
        "",
        f"Environment: `{json.dumps(data['environment'])}`",
    ]
    if data["notes"]:
        lines[6:6] = ["Notes: " + " ".join(data["notes"]), ""]
    storm = data.get("storm")
    if storm is not None:
        env_line = lines.pop()
        if not data["rows"]:  # the storm alone: none of the fault phases' text applies
            lines = lines[:2]
        lines += [*render_storm(storm, data), "", env_line]
    return "\n".join(lines)


def render_storm(row: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """The download storm's section of the Markdown."""
    return [
        f"## Downloads beside 300 cached list pages (issue 16, part 2): {'PASS' if row['pass'] else 'FAIL'}",
        "",
        f"`python -m benchmarks.chaos{' --quick' if data['quick'] else ''} --faults {STORM}` (part of the run "
        f"above; {data['date']}). Healthy stores (every proxy passing), {WALLPAPERS} wallpapers. "
        f"{row['list_pages']} distinct list pages of the unfiltered scope (`list:_all`, every one showing "
        f"wallpapers) and the detail pages of wallpapers {STORM_IDS.start}-{STORM_IDS.stop - 1}, all cached first; "
        f"then for {row['seconds']} s {STORM_CLIENTS} clients POST downloads of those wallpapers back to back (a "
        f"unique `Idempotency-Key` each, retried as above) while {STORM_READERS} keep-alive readers cycle through "
        "the pages. Every download invalidates its wallpaper's detail and every list page of `_all` and of its "
        "category (`invalidate_tags(..., mark_stale=True)`).",
        "",
        markdown_table(list(STORM_FIELDS), [[row[f] for f in STORM_FIELDS]]),
        "",
        f"X-Cache of the reads: `{json.dumps(row['x_cache'])}`; loads: {row['loads']}; tags given a new stamp "
        f"(`invalidations`): {row['invalidations']}; Mongo counters agree with the MySQL events after settling: "
        f"{'yes' if row.get('counters_agree') else 'NO'}. Redis's own command time (`INFO commandstats`): "
        f"{row['redis_busy_ms_per_s']} ms per second of the storm; the five largest: "
        f"`{json.dumps(dict(list(row['redis_commands'].items())[:5]))}`.",
        "",
        "* Targets: `breaker_opened` 0, `store_errors` 0, `stale_answers` 0 "
        f"({'; '.join(row['failed']) or 'all met'}).",
        "* `stale_answers`: reader answers that show a storm wallpaper with a count below the highest count a "
        "download of it had answered *before the read was sent* (the client's clock: the answer received, then the "
        "GET written). A download answers the counter as of its own event, after raising the Mongo counter and "
        "invalidating, so any read sent later must show at least that.",
        "* `breaker_opened`, `store_errors`, `store_queue_timeouts`, `invalidations_deferred`, `revoked_fills`: the "
        "growth of `cachelayer_<name>_total` over the storm (the admin port's `/metrics`: both workers' sum). "
        "`revoked_fills`: reloads that began before a download's invalidation and were refused their write (the "
        "race the cache won).",
        "* `download_p99_ms`: from the first try to the final answer; `read_p99_ms`: per GET.",
        *(
            [f"* Stale answers, the first ones: `{json.dumps(row['stale_examples'][:5])}`"]
            * bool(row["stale_examples"])
        ),
    ]


# -- main ---------------------------------------------------------------------------------------------------------


def _interrupted(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def build_results(
    run: Run, counts: dict[str, Any], settle_s: float, seeded: dict[int, int]
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]], str, list[str]]:
    add_loads(run.seconds, run.metrics.samples)
    add_downloads(run.seconds, run.downloads)
    rows, timelines, notes = [], {}, []
    rows_by_key = counts["rows_by_key"]
    if rows_by_key is not None and not any(d.key in rows_by_key for d in run.downloads if d.ok):
        notes.append(f"The key column {counts['key_column']} holds none of the keys sent: counted by row totals.")
        rows_by_key = None
    if rows_by_key is None:
        method = (
            "The schema has no idempotency key column: `downloads_counted` is the rows in the phase's id block, "
            "`downloads_lost` = max(0, 2xx - rows), `downloads_double` = max(0, rows - 2xx) (net figures: a lost "
            "download and a double one cancel out)."
        )
    else:
        method = (
            f"Idempotency keys are in `{counts['key_column'][0]}.{counts['key_column'][1]}`: `downloads_counted` = "
            "keys with a row, `downloads_lost` = keys answered 2xx without a row, `downloads_double` = keys with more "
            "than one row."
        )
    if run.metrics.note:
        notes.append(run.metrics.note + ".")
    for window in run.windows:
        block = range(1 + FAULTS.index(window.fault) * BLOCK, 1 + (FAULTS.index(window.fault) + 1) * BLOCK)
        downloads = [d for d in run.downloads if d.phase == window.fault]
        rows_in_block = sum(counts["rows_by_id"].get(i, 0) for i in block)
        row = build_row(
            window, run.seconds, run.metrics.samples, count_downloads(downloads, rows_by_key, rows_in_block)
        )
        row["downloads_sent"] = len(downloads)
        row["downloads_failed"] = sum(1 for d in downloads if not d.ok)
        row["mongo_counted"] = sum(counts["mongo_by_id"].get(i, 0) for i in block)
        row["pass"], row["failed"] = verdict(row)
        rows.append(row)
        timelines[window.fault] = timeline_for(run.seconds, window)
    return rows, timelines, method, notes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short faults and watches (the run in < 5 minutes)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where chaos.{md,json,png} go")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, datadirs)")
    parser.add_argument("--faults", help=f"comma-separated subset of {','.join((*FAULTS, STORM))}")
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO,
        help="the tree whose service/, cachelayer/ and config/ run (default: this checkout; e.g. a `git archive` "
        "snapshot of a commit while the checkout is mid-change)",
    )
    parser.add_argument("--source-label", help="how the results name --source (default: its path)")
    args = parser.parse_args(argv)
    chosen = (*FAULTS, STORM) if not args.faults else tuple(args.faults.split(","))
    faults = [f for f in FAULTS if f in chosen]
    storm = STORM in chosen
    if faults and shutil.which("wrk") is None:
        print("chaos: wrk is not installed", file=sys.stderr)
        return 2
    plan = Plan.make(args.quick)
    signal.signal(signal.SIGTERM, _interrupted)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    stack = Stack(workdir, args.source.resolve())
    run: Run | None = None
    storm_result: dict[str, Any] | None = None
    paths = load_paths()
    try:
        print(f"starting stores and service (work directory {workdir}) ...", flush=True)
        stack.start_stores()
        stack.seed()
        seeded = seeded_counters(stack)
        stack.start_service()
        if faults:
            for _ in range(2):  # the second pass finds every page cached
                bad = [p for p in paths if http_get(stack.base + p, timeout=10) != 200]
            if bad:
                raise RuntimeError(f"pages not warm: {bad[:5]}")
            run = Run(stack, plan, wrk_script(paths, workdir / "paths.lua"))
            print(
                f"load on: {len(paths)} pages, {DOWNLOADS_PER_S} downloads/s; faults: {', '.join(faults)}", flush=True
            )
            asyncio.run(run.run(faults))
        if storm:
            bad = [p for p in storm_paths() if http_get(stack.base + p, timeout=10) != 200]
            if bad:
                raise RuntimeError(f"storm pages not cached: {bad[:5]}")
            print(f"  {STORM}: {STORM_TEXT}, {plan.storm_s:g} s ...", flush=True)
            storm_result = asyncio.run(Storm(stack, plan.storm_s).run())
        print(f"settling (at most {plan.settle_s:g} s) ...", flush=True)
        counts, settled = settle(stack, seeded, plan.settle_s)
        service_log = stack.log_tail(4000)
    except BaseException:
        print(f"chaos: failed; service log tail:\n{stack.log_tail()}", file=sys.stderr)
        raise
    finally:
        stack.close()
        harness.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    timelines: dict[str, list[dict[str, Any]]] = {}
    method, notes = "", list[str]()
    if run is not None:
        rows, timelines, method, notes = build_results(run, counts, settled, seeded)
    if storm_result is not None:
        storm_result["counters_agree"] = all(
            counts["rows_by_id"].get(i, 0) == counts["mongo_by_id"].get(i, 0) for i in STORM_IDS
        )
    agree = all(counts["rows_by_id"].get(i, 0) == n for i, n in counts["mongo_by_id"].items())
    stem = "chaos" if plan.quick else "chaos-full"
    data: dict[str, Any] = {
        "rows": rows,
        "storm": storm_result,
        "quick": plan.quick,
        "faults": faults,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "elapsed_s": round(time.monotonic() - started, 1),
        "mysql": stack.mysql_note,
        "source": args.source_label or str(args.source.resolve()),
        "connections": plan.connections,
        "paths": len(paths),
        "gap_s": plan.gap_s,
        "fault_s": plan.fault_s,
        "after_s": plan.after_s,
        "storm_s": plan.storm_s,
        "settle_s": round(settled, 1),
        "stores_agree": "yes" if agree else "NO",
        "download_method": method,
        "key_column": counts["key_column"],
        "notes": notes,
        "chart": f"{stem}.png",
        "environment": environment(PACKAGES),
        "timelines": timelines,
    }
    print()
    if rows:
        headers, body = table(rows)
        print(format_table(headers, body))
        for row in rows:
            print(f"  {'PASS' if row['pass'] else 'FAIL'}  {row['fault']:20} {'; '.join(row['failed'])}")
    if storm_result is not None:
        print(format_table(list(STORM_FIELDS), [[storm_result[f] for f in STORM_FIELDS]]))
        verdict_text = "PASS" if storm_result["pass"] else "FAIL"
        print(f"  {verdict_text}  {STORM:20} {'; '.join(storm_result['failed'])}")
        print(f"  X-Cache of the reads: {storm_result['x_cache']}")
        top = dict(list(storm_result["redis_commands"].items())[:5])
        print(f"  Redis busy {storm_result['redis_busy_ms_per_s']} ms/s; top commands: {top}")
        for example in storm_result["stale_examples"][:3]:
            print(f"  stale: {example}")
    for note in [method, *notes]:
        if note:
            print(f"  note: {note}")
    if "Traceback" in service_log:
        print("  note: the service log has tracebacks (run with --keep to read it)")
    write_json(args.results / f"{stem}.json", data)
    if args.json is not None:
        write_json(args.json, data)
    write_text(args.results / f"{stem}.md", render_markdown(data))
    if rows:
        chart(timelines, run.windows if run is not None else [], args.results / f"{stem}.png")
    print(f"({data['elapsed_s']} s) wrote {args.results / stem}.{{md,json{',png' if rows else ''}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
