"""Chaos benchmark (issue 12, item 9): the wallpaper service under store faults, with load on.

``python -m benchmarks.chaos [--quick] [--json PATH] [--keep]``

The run starts its own stores on free loopback ports: ``redis-server``, SecantusDB (storage in the work directory)
and a private ``mariadbd`` (own datadir; when that cannot start, the machine's MariaDB on 3306 with a private
database ``chaos_<pid>``, dropped at the end). A fault proxy (``harness.faults``, each in its own process) sits
in front of each of them; the service (``python -m service serve`` with ``config/wallpaper.toml``, 2 workers, uvloop,
its own port) reaches every store through its proxy by ``WALLPAPER_...`` environment overrides. The stores are
seeded (``python -m service seed``, ``WALLPAPERS`` documents) and every page the load uses is fetched once (warm).

Load, for the whole run: ``wrk`` on the warm list and detail pages in back-to-back 1 s runs (one timeline point
each: requests, non-2xx, socket errors, p99), and ``DOWNLOADS_PER_S`` download POSTs from an asyncio client, each
with a unique ``Idempotency-Key``, a 503 / timeout / broken connection retried with the same key (at most
``ATTEMPTS`` tries), the final answer kept per key. Every phase sends its downloads to its own block of wallpaper
ids, so MySQL rows and Mongo counters can be told apart by phase even without a key column. Each worker's
``cachelayer_loads`` counter is read once a second from ``/metrics`` on a keep-alive connection pinned to that worker
(identified by ``/healthz``'s ``pid``).

Phases, in turn, each after a baseline gap: none (baseline), Redis SIGKILL + restart on the same port, Redis SIGSTOP
5 s, Redis +200 ms (proxy), SecantusDB SIGKILL + restart, MySQL refuse, blackhole and dropped replies (proxy).
After the load stops and a settling period, the MySQL events and the Mongo counters are read directly.

Writes ``benchmarks/results/chaos.{md,json,png}`` (``--quick``) or ``chaos-full.{md,json,png}``. Every loop is
bounded in count and time, only 127.0.0.1 is used, and every process the run started is stopped by its PID at the
end, also on errors (``finally`` and ``atexit``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
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

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, gap_s=4, fault_s=5, after_s=9, settle_s=20, connections=32)
        return cls(False, gap_s=8, fault_s=10, after_s=15, settle_s=60, connections=64)


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
                status, headers, _ = await asyncio.wait_for(read_response(reader), ATTEMPT_TIMEOUT_S)
            finally:
                writer.transport.abort()
            outcome = str(status)
            with contextlib.suppress(ValueError):
                retry_after = min(float(headers.get("retry-after", "")), 2.0)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            outcome = type(exc).__name__
        item.attempts.append((clock(), outcome))
        item.final = outcome
        if outcome[:1] in ("2", "4"):
            return
        await asyncio.sleep(retry_after)


class WorkerMetrics:
    """``cachelayer_loads`` of every worker: one keep-alive connection per worker (identified by ``/healthz``'s
    ``pid``), read once a second. ``samples``: (time, {pid: loads})."""

    def __init__(self, port: int, workers: int) -> None:
        self.port, self.workers = port, workers
        self.connections: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self.last: dict[int, float] = {}
        self.samples: list[tuple[float, dict[int, float]]] = []
        self.note = ""

    async def _get(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str) -> bytes:
        reader, writer = conn
        writer.write(_request("GET", path, self.port, {}))
        status, _headers, body = await asyncio.wait_for(read_response(reader), 3.0)
        if path == "/metrics" and status != 200:
            raise ConnectionError(f"/metrics answered {status}")
        return body

    async def identify(self, tries: int = 40) -> None:
        """Open connections until each worker has one (SO_REUSEPORT spreads them by the client port)."""
        for _ in range(tries):
            if len(self.connections) >= self.workers:
                return
            conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 3.0)
            try:
                pid = int(json.loads(await self._get(conn, "/healthz"))["data"]["pid"])
            except (ValueError, KeyError, TypeError, OSError, TimeoutError, asyncio.IncompleteReadError):
                pid = 0
            if pid and pid not in self.connections:
                self.connections[pid] = conn
            else:
                conn[1].transport.abort()
        self.note = f"only {len(self.connections)} of {self.workers} workers identified for /metrics"

    async def sample(self, now: float) -> None:
        for pid, conn in list(self.connections.items()):
            try:
                text = (await self._get(conn, "/metrics")).decode()
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                conn[1].transport.abort()
                del self.connections[pid]  # counted from its last value on: a gap, not a reset
                self.note = f"lost the /metrics connection to worker {pid}"
                continue
            match = re.search(r"^cachelayer_loads_total\{[^}]*\}\s+([0-9.e+]+)", text, re.M)
            if match:
                self.last[pid] = float(match.group(1))
        self.samples.append((now, dict(self.last)))

    def close(self) -> None:
        for _reader, writer in self.connections.values():
            writer.transport.abort()


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


def loads_at(samples: Sequence[tuple[float, dict[int, float]]], t: float) -> float | None:
    """Total loads (every worker) at time ``t``: the last sample taken at or before it."""
    best: dict[int, float] | None = None
    for when, values in samples:
        if when > t:
            break
        best = values
    return None if best is None else sum(best.values())


def add_loads(seconds: Sequence[Second], samples: Sequence[tuple[float, dict[int, float]]]) -> None:
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
    samples: Sequence[tuple[float, dict[int, float]]],
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
            if http_get(f"{self.base}/healthz", timeout=2) == 200:
                return
            time.sleep(0.3)
        raise RuntimeError(f"service not healthy after 60 s:\n{self.log_tail()}")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.service_port}"

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
        self.metrics = WorkerMetrics(stack.service_port, workers=2)
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
        await self.metrics.identify()
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
            self.metrics.close()
        for task in loops:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"a load loop failed: {task.exception()!r}")


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
        "* `db_loads_during`: the growth of `cachelayer_loads` (every worker's `/metrics`) over the same span.",
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
    return "\n".join(lines)


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
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, datadirs)")
    parser.add_argument("--faults", help=f"comma-separated subset of {','.join(FAULTS)}")
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO,
        help="the tree whose service/, cachelayer/ and config/ run (default: this checkout; e.g. a `git archive` "
        "snapshot of a commit while the checkout is mid-change)",
    )
    parser.add_argument("--source-label", help="how the results name --source (default: its path)")
    args = parser.parse_args(argv)
    faults = list(FAULTS) if not args.faults else [f for f in FAULTS if f in args.faults.split(",")]
    if shutil.which("wrk") is None:
        print("chaos: wrk is not installed", file=sys.stderr)
        return 2
    plan = Plan.make(args.quick)
    signal.signal(signal.SIGTERM, _interrupted)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    stack = Stack(workdir, args.source.resolve())
    try:
        print(f"starting stores and service (work directory {workdir}) ...", flush=True)
        stack.start_stores()
        stack.seed()
        seeded = seeded_counters(stack)
        stack.start_service()
        paths = load_paths()
        for _ in range(2):  # the second pass finds every page cached
            bad = [p for p in paths if http_get(stack.base + p, timeout=10) != 200]
        if bad:
            raise RuntimeError(f"pages not warm: {bad[:5]}")
        run = Run(stack, plan, wrk_script(paths, workdir / "paths.lua"))
        print(f"load on: {len(paths)} pages, {DOWNLOADS_PER_S} downloads/s; faults: {', '.join(faults)}", flush=True)
        asyncio.run(run.run(faults))
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
    rows, timelines, method, notes = build_results(run, counts, settled, seeded)
    agree = all(counts["rows_by_id"].get(i, 0) == n for i, n in counts["mongo_by_id"].items())
    stem = "chaos" if plan.quick else "chaos-full"
    data: dict[str, Any] = {
        "rows": rows,
        "quick": plan.quick,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "elapsed_s": round(time.monotonic() - started, 1),
        "mysql": stack.mysql_note,
        "source": args.source_label or str(args.source.resolve()),
        "connections": plan.connections,
        "paths": len(paths),
        "gap_s": plan.gap_s,
        "fault_s": plan.fault_s,
        "after_s": plan.after_s,
        "settle_s": round(settled, 1),
        "stores_agree": "yes" if agree else "NO",
        "download_method": method,
        "key_column": counts["key_column"],
        "notes": notes,
        "chart": f"{stem}.png",
        "environment": environment(PACKAGES),
        "timelines": timelines,
    }
    headers, body = table(rows)
    print()
    print(format_table(headers, body))
    for row in rows:
        print(f"  {'PASS' if row['pass'] else 'FAIL'}  {row['fault']:20} {'; '.join(row['failed'])}")
    for note in [method, *notes]:
        print(f"  note: {note}")
    if "Traceback" in service_log:
        print("  note: the service log has tracebacks (run with --keep to read it)")
    write_json(RESULTS_DIR / f"{stem}.json", data)
    if args.json is not None:
        write_json(args.json, data)
    write_text(RESULTS_DIR / f"{stem}.md", render_markdown(data))
    chart(timelines, run.windows, RESULTS_DIR / f"{stem}.png")
    print(f"({data['elapsed_s']} s) wrote {RESULTS_DIR / stem}.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
