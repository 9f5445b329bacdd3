"""A free-running consistency test (issue 16, part 3): real processes, real Redis, real MariaDB, chaos, a log.

Where ``harness/consistency/`` controls every interleaving of one universe, this lets them happen: ``processes``
OS processes (``python -m harness.freerun worker ...``), each with its own :class:`cachelayer.Cache` on one private
Redis, run readers and a writer against a MariaDB table whose version per row is the truth:

* readers fetch a row through ``get_or_set_entry`` or the ``@cached`` function :func:`row_view` (call and
  ``.entry``); the loader reads the row's version from the database and is sometimes slow (it "holds" after the
  read: the window in which a write overtakes it);
* the writer commits ``version + 1`` in the database, then invalidates: ``delete`` (and the decorator's
  ``invalidate``), ``invalidate_tags`` of the row's or of its group's tag, or ``invalidate_tags(mark_stale=True)``;
* the parent (:func:`run`) meanwhile kills a worker with SIGKILL while one of its loads holds (and starts it
  again), pauses Redis (``CLIENT PAUSE 300 WRITE`` / ``ALL``), and writes ballast under a small ``maxmemory`` with
  ``allkeys-lru`` so values, tickets and tag stamps are evicted.

Every worker appends what it saw to a log of its own (JSON lines, ``time.monotonic_ns()``: one clock for every
process of the machine): read start / end with the version answered and the outcome, commit, invalidation start /
end (and when a deferred one landed), loads and holds, periodic ``stats()``. :func:`check` then verifies, per row:

1. no read that started after an invalidation of version ``v`` had ended (had landed, for a deferred one seen
   from another process) answered a version below ``v``;
2. at the end every entry still cached for a row holds the database's version, or is absent.

An invalidation whose writer was killed before it ended is no constraint, and a row whose last commit was never
invalidated is excused at the end (docs/consistency.md: no cache covers a writer crashing between its commit and
its invalidation); both are counted. The local tier is off: no staleness bound to allow for.

``CACHELAYER_FREERUN_MUTANT=naive-fill`` (what :func:`run` sets for ``mutant="naive-fill"``) gives the workers
:class:`NaiveFillRedisBackend`, whose fill is an unconditional SET: the classic get-load-set, which the check must
catch.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import itertools
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import aiomysql  # type: ignore[import-untyped]
import orjson
import redis.asyncio

from cachelayer import Cache, CacheEntry, CacheHooks, EntryPolicy, FetchHooks, FetchOutcome, RedisBackend, cached
from cachelayer import Tier as FetchTier
from harness.servers import REPO_ROOT, python_env

__all__ = [
    "MUTANT_ENV",
    "FreeRunConfig",
    "FreeRunReport",
    "NaiveFillRedisBackend",
    "check",
    "main",
    "row_view",
    "run",
]

MUTANT_ENV: Final = "CACHELAYER_FREERUN_MUTANT"
MUTANTS: Final = ("naive-fill",)
READ_PATHS: Final = ("get_or_set", "cached", "cached_entry")
INVALIDATIONS: Final = ("delete", "row_tag", "group_tag", "mark_stale")
# The stats() counters a worker records (its last record survives a SIGKILL).
STATS_KEYS: Final = (
    "revoked_fills", "load_unstored", "invalidations_deferred", "invalidations_landed_late", "stale_served",
    "lease_timeouts", "lease_waits", "store_errors", "hits", "misses", "loads",
)  # fmt: skip
_TABLE_PREFIX: Final = "freerun_"


@dataclasses.dataclass(frozen=True)
class FreeRunConfig:
    """One run. ``mysql``: ``aiomysql.connect`` keywords (autocommit on). ``table``: created and dropped by
    :func:`run`. ``redis_url``: a private server, which :func:`run` reconfigures (``maxmemory``) and pauses."""

    redis_url: str
    mysql: dict[str, Any]
    table: str
    namespace: str
    log_dir: str
    duration: float = 12.0
    processes: int = 4
    readers: int = 4
    rows: int = 16
    groups: int = 4
    invalidations: tuple[str, ...] = INVALIDATIONS
    slow_fraction: float = 0.3
    store_timeout: float = 0.25
    kills: int = 3
    pauses: int = 6
    eviction: bool = True
    mutant: str | None = None
    seed: int = 16

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> FreeRunConfig:
        fields = orjson.loads(data)
        return cls(**{**fields, "invalidations": tuple(fields["invalidations"])})


# --------------------------------------------------------------------------- the log


class EventLog:
    """A process's log: one JSON object a line, each written with one ``write(2)`` to an ``O_APPEND`` file, so
    what was written survives a SIGKILL."""

    def __init__(self, path: Path, process: str) -> None:
        self.process = process
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, event: str, **fields: Any) -> None:
        os.write(self._fd, orjson.dumps({"t": time.monotonic_ns(), "p": self.process, "ev": event, **fields}) + b"\n")

    def close(self) -> None:
        os.close(self._fd)


def read_events(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every complete line of the logs (a process killed mid-write leaves at most a partial last line)."""
    events = []
    for path in paths:
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                events.append(orjson.loads(line))
    return events


# --------------------------------------------------------------------------- the mutant


class NaiveFillRedisBackend(RedisBackend):
    """The classic get-load-set: a fill stores whatever its ticket says (an unconditional SET)."""

    async def fill(
        self,
        key: str,
        token: str,
        value: bytes,
        ttl_ms: int,
        tag_keys: Sequence[str] = (),
        stamps: Sequence[bytes] = (),
    ) -> bool:
        # No ticket and no stamp checked: the frame still carries its stamps, so readers refuse it once a tag of it
        # was invalidated; invalidations by key are what this mutant loses.
        await self.set(key, value, ttl_ms)
        return True


# --------------------------------------------------------------------------- the worker (a child process)


_READ: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("freerun_read", default=None)


class _ReadRecord(FetchHooks):
    """What the pipeline told about one read: how it ended for its caller (``"joined"`` included, which the entry
    does not say), whether its fill was revoked, which store calls failed open."""

    __slots__ = ("record",)

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def fill_revoked(self) -> None:
        self.record["revoked"] = True

    def failed_open(self, operation: str, reason: str) -> None:
        self.record.setdefault("failed_open", []).append(operation)

    def ended(self, outcome: FetchOutcome, tier: FetchTier | None, error: BaseException | None) -> None:
        self.record["outcome"] = outcome


class _ReadHooks(CacheHooks):
    """Hooks for the fetch a reader makes now (``_READ`` in its task); silent for the others (refreshes)."""

    __slots__ = ()

    def fetch_started(self, function: str, key: str) -> FetchHooks | None:
        record = _READ.get()
        if record is None or "outcome" in record:  # one fetch a read: a second one is the cache's own
            return None
        return _ReadRecord(record)


class _Worker:
    """One worker process's cache, database pool, log and random source."""

    def __init__(self, config: FreeRunConfig, process: str, log: EventLog, cache: Cache, pool: Any) -> None:
        self.config = config
        self.process = process
        self.log = log
        self.cache = cache
        self.pool = pool
        self.rng = random.Random(f"{config.seed}-{process}")
        self.stop = asyncio.Event()
        self.ids = itertools.count()
        self.policies = [EntryPolicy(tags=(f"row{row}", f"group{row % config.groups}")) for row in range(config.rows)]

    def pick_row(self) -> int:
        # Half the traffic on a quarter of the rows: readers and writers meet on them.
        hot = max(1, self.config.rows // 4)
        return self.rng.randrange(hot) if self.rng.random() < 0.5 else self.rng.randrange(self.config.rows)

    async def db_version(self, row: int) -> int:
        async with self.pool.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute(f"SELECT v FROM `{self.config.table}` WHERE k = %s", (row,))
            (version,) = await cursor.fetchone()
        return int(version)

    async def commit(self, row: int) -> int:
        async with self.pool.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute(f"UPDATE `{self.config.table}` SET v = LAST_INSERT_ID(v + 1) WHERE k = %s", (row,))
            await cursor.execute("SELECT LAST_INSERT_ID()")
            (version,) = await cursor.fetchone()
        return int(version)

    async def load(self, row: int) -> dict[str, Any]:
        """The loader: the row's version as the database has it now, sometimes handed back late."""
        version = await self.db_version(row)
        if self.rng.random() < self.config.slow_fraction:
            hold = next(self.ids)
            self.log.write("hold", hold=hold, row=row, v=version)
            await asyncio.sleep(self.rng.uniform(0.05, 0.3))  # stands for a slow query or render: the race window
            self.log.write("unhold", hold=hold)
        else:
            self.log.write("load", row=row, v=version)
        return {"row": row, "v": version, "pad": os.urandom(256).hex()}  # the padding makes eviction bite

    async def read(self, row: int, path: str) -> tuple[int, str | None]:
        """One read by ``path``: the version answered and the entry's outcome (None: the decorator's call hides
        it; the hooks tell how the fetch ended in every case)."""
        group = row % self.config.groups
        entry: CacheEntry[dict[str, Any]]
        if path == "cached":
            return int((await row_view(row, group))["v"]), None
        if path == "cached_entry":
            entry = await row_view.entry(row, group)
        else:
            entry = await self.cache.get_or_set_entry(f"row:{row}", lambda: self.load(row), self.policies[row])
        return int(entry.value()["v"]), entry.outcome.value

    def tag_of(self, row: int, kind: str) -> str | None:
        """The tag an invalidation of ``kind`` names (None: it deletes keys)."""
        if kind == "delete":
            return None
        return f"group{row % self.config.groups}" if kind == "group_tag" else f"row{row}"

    async def invalidate(self, row: int, kind: str) -> None:
        if kind == "delete":
            await self.cache.delete(f"row:{row}")
            await row_view.invalidate(row, row % self.config.groups)
        elif kind == "row_tag":
            await self.cache.invalidate_tags(f"row{row}")
        elif kind == "group_tag":
            await self.cache.invalidate_tags(f"group{row % self.config.groups}")
        else:
            await self.cache.invalidate_tags(f"row{row}", mark_stale=True)

    async def reader(self) -> None:
        while not self.stop.is_set():
            row, path, read = self.pick_row(), self.rng.choice(READ_PATHS), next(self.ids)
            record: dict[str, Any] = {}
            _READ.set(record)
            self.log.write("read_start", id=read, row=row, path=path)
            try:
                version, entry_outcome = await self.read(row, path)
            except Exception as exc:
                self.log.write("read_error", id=read, row=row, error=repr(exc))
            else:
                self.log.write("read_end", id=read, row=row, v=version, entry=entry_outcome, **record)
            _READ.set(None)
            await asyncio.sleep(self.rng.uniform(0.0, 0.02))  # stands for a client's think time

    async def writer(self) -> None:
        while not self.stop.is_set():
            row = self.pick_row()
            version = await self.commit(row)
            self.log.write("commit", row=row, v=version)
            kind = self.rng.choice(self.config.invalidations)
            deferred_before = self.cache.stats()["invalidations_deferred"]
            self.log.write("inv_start", row=row, v=version, kind=kind)
            await self.invalidate(row, kind)
            stats = self.cache.stats()
            deferred = stats["invalidations_deferred"] > deferred_before or stats["invalidations_pending"] > 0
            self.log.write("inv_end", row=row, v=version, kind=kind, tag=self.tag_of(row, kind), deferred=deferred)
            # One writer a process: while its invalidation is pending, nothing else of this process's is.
            if deferred and await self.landed(within=10.0):
                self.log.write("inv_landed", row=row, v=version)
            await asyncio.sleep(self.rng.uniform(0.02, 0.08))  # stands for the time between two writes

    async def landed(self, within: float) -> bool:
        """Wait (polling the cache's own counter) until no invalidation of this process is pending."""
        deadline = time.monotonic() + within
        while self.cache.stats()["invalidations_pending"] > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)  # a poll interval: the retry task gives no signal
        return True

    async def record_stats(self) -> None:
        while not self.stop.is_set():
            self.snapshot()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.25)

    def snapshot(self) -> None:
        stats = self.cache.stats()
        self.log.write("stats", **{name: stats.get(name, 0) for name in STATS_KEYS})


class _Current:
    """The worker of this process, for :func:`row_view` (a module-level function: its key is the same in every
    process, where a closure's would carry what it closes over)."""

    worker: _Worker | None = None
    cache: Cache | None = None


def _current_cache() -> Cache:
    assert _Current.cache is not None, "row_view is used in a worker, or after run() set the checking cache"
    return _Current.cache


@cached(cache=_current_cache, name="freerun-view", ttl=60, tags=("row{row}", "group{group}"))
async def row_view(row: int, group: int) -> dict[str, Any]:
    """A row through ``@cached``, tagged like the ``get_or_set`` entry of the same row."""
    assert _Current.worker is not None
    return await _Current.worker.load(row)


def _backend(config: FreeRunConfig, mutant: str | None) -> RedisBackend:
    if mutant not in (None, *MUTANTS):
        raise ValueError(f"unknown mutant {mutant!r}; known: {MUTANTS}")
    kind = NaiveFillRedisBackend if mutant == "naive-fill" else RedisBackend
    return kind.from_url(config.redis_url, timeout=config.store_timeout, max_connections=32)


async def _work(config: FreeRunConfig, index: int, generation: int) -> None:
    process = f"{index}.{generation}"
    log = EventLog(Path(config.log_dir) / f"worker-{process}.jsonl", process)
    cache = Cache(_backend(config, os.environ.get(MUTANT_ENV) or None), namespace=config.namespace,
                  default_ttl=60, owns_client=True)  # fmt: skip
    pool = await aiomysql.create_pool(minsize=1, maxsize=8, **config.mysql)
    worker = _Current.worker = _Worker(config, process, log, cache, pool)
    _Current.cache = cache
    cache.add_hooks(_ReadHooks())
    try:
        await cache.connect()
        log.write("start")
        print("ready", flush=True)
        tasks = [asyncio.create_task(worker.reader()) for _ in range(config.readers)]
        tasks += [asyncio.create_task(worker.writer()), asyncio.create_task(worker.record_stats())]
        await asyncio.to_thread(sys.stdin.readline)  # "stop", or EOF: the parent is done with us
        worker.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20.0)  # each loop finishes the operation it is in
        worker.snapshot()
        log.write("stop")
    finally:
        await cache.aclose(grace=1.0)
        pool.close()
        await pool.wait_closed()
        log.close()
    print("done", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.freerun worker CONFIG_JSON_PATH INDEX GENERATION``: one worker, until ``stop`` on stdin."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4 or args[0] != "worker":
        print(main.__doc__, file=sys.stderr)
        return 2
    config = FreeRunConfig.from_json(Path(args[1]).read_bytes())
    # This process's warnings (the cache's failing-open lines) go beside its log, not to the parent's pipe.
    with open(Path(config.log_dir) / f"worker-{args[2]}.{args[3]}.err", "ab") as errors:
        os.dup2(errors.fileno(), sys.stderr.fileno())
    asyncio.run(_work(config, int(args[2]), int(args[3])))
    return 0


# --------------------------------------------------------------------------- the checker


@dataclasses.dataclass
class FreeRunReport:
    """What :func:`check` found, with the run's chaos counts (filled in by :func:`run`)."""

    reads: int = 0
    read_errors: int = 0
    reads_constrained: int = 0  # reads that started after at least one invalidation of their row had taken effect
    commits: int = 0
    invalidations: int = 0
    invalidations_deferred: int = 0
    invalidations_landed: int = 0
    invalidations_unfinished: int = 0  # started, never ended: the writer was killed
    violations: int = 0
    violations_by: dict[str, int] = dataclasses.field(default_factory=dict)  # "invalidation -> read outcome"
    stale_outcome_old: int = 0  # old answers marked as stale (stale-if-error, lease timeout): not counted above
    examples: list[str] = dataclasses.field(default_factory=list)
    entries_checked: int = 0
    entries_cached: int = 0
    final_mismatches: int = 0
    rows_excused: int = 0  # last commit never invalidated (its writer was killed in between)
    outcomes: dict[str, int] = dataclasses.field(default_factory=dict)
    stats: dict[str, float] = dataclasses.field(default_factory=dict)  # summed over processes' last records
    processes: int = 0
    kills: int = 0
    pauses: int = 0
    evicted_keys: int = 0
    evicted: dict[str, int] = dataclasses.field(default_factory=dict)  # by kind: value, tickets, tag stamp, ballast
    mutant: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        stats = ", ".join(f"{name}={value:g}" for name, value in self.stats.items())
        lines = [
            f"free run{f' (mutant {self.mutant})' if self.mutant else ''}: {self.seconds:.1f} s, "
            f"{self.processes} worker processes started, {self.kills} killed (SIGKILL mid-load), "
            f"{self.pauses} CLIENT PAUSEs, {self.evicted_keys} keys evicted {self.evicted}",
            f"reads {self.reads} (constrained {self.reads_constrained}, errors {self.read_errors}), "
            f"commits {self.commits}, invalidations {self.invalidations} (deferred {self.invalidations_deferred}, "
            f"landed later {self.invalidations_landed}, unfinished {self.invalidations_unfinished})",
            f"violations {self.violations}, stale-outcome old answers {self.stale_outcome_old}; at the end "
            f"{self.entries_cached}/{self.entries_checked} entries cached, {self.final_mismatches} mismatches, "
            f"{self.rows_excused} rows excused",
            f"outcomes {dict(sorted(self.outcomes.items()))}",
            *([f"violations by invalidation -> read outcome: {self.violations_by}"] if self.violations_by else []),
            f"stats {stats}",
            *self.examples,
        ]
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class _Invalidation:
    version: int
    kind: str
    tag: str | None
    process: str
    ended: int
    landed: int | None  # None: deferred and never seen landing (or not deferred: see ``deferred``)
    deferred: bool

    def in_effect_for(self, process: str, at: int) -> bool:
        """Whether a read by ``process`` starting at ``at`` must see this invalidation: at once in the writer's own
        process (it honours a pending invalidation), once it landed in the others."""
        if process == self.process or not self.deferred:
            return self.ended < at
        return self.landed is not None and self.landed < at


def _how(read_end: dict[str, Any]) -> str:
    """How a read ended: the hooks' outcome, with the entry's for a caller that joined another's load."""
    outcome = str(read_end.get("outcome"))
    return f"joined/{read_end.get('entry')}" if outcome == "joined" else outcome


def check(
    events: Sequence[dict[str, Any]],
    final_db: dict[int, int],
    final_cache: dict[int, list[int | None]],
) -> FreeRunReport:
    """Verify the logs (see the module docstring). ``final_db``: row -> version; ``final_cache``: row -> the
    version each of its cache entries holds at the end (None: absent)."""
    report = FreeRunReport()
    invalidations: dict[int, list[_Invalidation]] = defaultdict(list)
    started: dict[tuple[str, int], dict[str, Any]] = {}
    landed: dict[tuple[str, int, int], int] = {}
    pending_ends: set[tuple[str, int, int]] = set()
    last_stats: dict[str, dict[str, Any]] = {}
    outcomes: Counter[str] = Counter()
    violations: Counter[str] = Counter()
    for event in events:
        kind = event["ev"]
        if kind == "inv_landed":
            landed[(event["p"], event["row"], event["v"])] = event["t"]
        elif kind == "inv_start":
            pending_ends.add((event["p"], event["row"], event["v"]))
        elif kind == "stats":
            last_stats[event["p"]] = event
        elif kind == "commit":
            report.commits += 1
    for event in events:
        kind = event["ev"]
        if kind == "inv_end":
            key = (event["p"], event["row"], event["v"])
            pending_ends.discard(key)
            report.invalidations += 1
            report.invalidations_deferred += event["deferred"]
            report.invalidations_landed += key in landed
            invalidations[event["row"]].append(_Invalidation(
                event["v"], event["kind"], event.get("tag"), event["p"], event["t"], landed.get(key), event["deferred"]
            ))  # fmt: skip
        elif kind == "read_start":
            started[(event["p"], event["id"])] = event
        elif kind == "read_error":
            report.read_errors += 1
    report.invalidations_unfinished = len(pending_ends)
    for event in events:
        if event["ev"] != "read_end":
            continue
        report.reads += 1
        how = _how(event)
        outcomes[how] += 1
        start = started[(event["p"], event["id"])]
        binding = [i for i in invalidations[event["row"]] if i.in_effect_for(event["p"], start["t"])]
        if not binding:
            continue
        report.reads_constrained += 1
        newest = max(binding, key=lambda i: i.version)
        if event["v"] >= newest.version:
            continue
        if "stale" in (event.get("outcome"), event.get("entry")):
            report.stale_outcome_old += 1
            continue
        report.violations += 1
        # (An evicted tag stamp hides nothing: a missing stamp means every entry stamped with the tag is gone.)
        violations[f"{newest.kind}{' (deferred)' if newest.deferred else ''} -> {how}"] += 1
        if len(report.examples) < 5:
            report.examples.append(
                f"  row {event['row']}: process {event['p']} read {event['id']} ({start['path']}, {how}) started "
                f"{(start['t'] - newest.ended) / 1e6:.1f} ms after process "
                f"{newest.process}'s {newest.kind} of v{newest.version} ended and answered v{event['v']}"
            )
    report.outcomes = dict(outcomes)
    report.violations_by = dict(violations)
    ended_versions = {(row, i.version) for row, found in invalidations.items() for i in found
                      if not i.deferred or i.landed is not None}  # fmt: skip
    for row, version in final_db.items():
        entries = final_cache.get(row, [])
        report.entries_checked += len(entries)
        report.entries_cached += sum(cached_version is not None for cached_version in entries)
        if version > 1 and (row, version) not in ended_versions:
            report.rows_excused += 1
            continue
        for cached_version in entries:
            if cached_version is not None and cached_version != version:
                report.final_mismatches += 1
                if len(report.examples) < 10:
                    report.examples.append(f"  at the end row {row} is v{version} but an entry holds v{cached_version}")
    totals: Counter[str] = Counter()
    for record in last_stats.values():
        totals.update({name: record.get(name, 0) for name in STATS_KEYS})
    report.stats = {name: totals[name] for name in STATS_KEYS}
    return report


# --------------------------------------------------------------------------- the parent


class _WorkerProcess:
    """A running worker: its process (ours, killed by its PID) and its log file."""

    def __init__(self, index: int, generation: int, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.index = index
        self.generation = generation
        self.proc = proc
        self.log = log
        self._offset = 0
        self._holds: set[int] = set()

    def holding(self) -> bool:
        """Whether one of its loads holds now (read from the log's new complete lines)."""
        with open(self.log, "rb") as file:
            file.seek(self._offset)
            data = file.read()
        complete = data.rfind(b"\n") + 1
        self._offset += complete
        for line in data[:complete].splitlines():
            event = orjson.loads(line)
            if event["ev"] == "hold":
                self._holds.add(event["hold"])
            elif event["ev"] == "unhold":
                self._holds.discard(event["hold"])
        return bool(self._holds)


class FreeRun:
    """The parent of one run: the worker processes and the chaos."""

    def __init__(self, config: FreeRunConfig) -> None:
        self.config = config
        self.log_dir = Path(config.log_dir)
        self.rng = random.Random(config.seed)
        self.workers: dict[int, _WorkerProcess] = {}
        self.started = 0
        self.kills = 0
        self.pauses = 0
        self.evicted: Counter[str] = Counter()
        self.restarts: list[asyncio.Task[None]] = []
        self._chaos_log = EventLog(self.log_dir / "chaos.jsonl", "parent")

    async def start_worker(self, index: int, generation: int) -> None:
        env = python_env({MUTANT_ENV: self.config.mutant or ""})  # empty: the real backend
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "harness.freerun", "worker", str(self.log_dir / "config.json"), str(index),
            str(generation), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT, env=env,
        )  # fmt: skip
        self.started += 1
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60.0)
        if line.strip() != b"ready":
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"worker {index}.{generation} did not start: see worker-{index}.{generation}.err")
        log = self.log_dir / f"worker-{index}.{generation}.jsonl"
        self.workers[index] = _WorkerProcess(index, generation, proc, log)

    async def stop_workers(self) -> None:
        async def stop(worker: _WorkerProcess) -> None:
            proc = worker.proc
            assert proc.stdin is not None
            assert proc.stdout is not None
            with contextlib.suppress(ConnectionError):
                proc.stdin.write(b"stop\n")
                await proc.stdin.drain()
            try:
                await asyncio.wait_for(proc.wait(), 30.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            await proc.stdout.read()
            proc.stdin.close()

        await asyncio.gather(*(stop(worker) for worker in self.workers.values()))

    async def kill_one(self) -> None:
        """SIGKILL a worker while one of its loads holds (the loader is mid-load), then start it again."""
        alive = [worker for worker in self.workers.values() if worker.proc.returncode is None]
        worker = alive[self.rng.randrange(len(alive))]  # not one whose restart is under way
        deadline = time.monotonic() + 3.0
        while not worker.holding():
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.005)  # a poll interval over its log
        worker.proc.send_signal(signal.SIGKILL)
        await worker.proc.wait()
        assert worker.proc.stdin is not None
        worker.proc.stdin.close()
        self.kills += 1
        self._chaos_log.write("kill", worker=f"{worker.index}.{worker.generation}")
        # In the background: under load a start takes seconds, which the chaos must not wait for.
        self.restarts.append(asyncio.create_task(self.start_worker(worker.index, worker.generation + 1)))

    async def chaos(self, admin: redis.asyncio.Redis) -> None:
        """Kills and pauses at random moments over the run, in one random order."""
        actions = ["kill"] * self.config.kills + ["pause"] * self.config.pauses
        self.rng.shuffle(actions)
        slot = self.config.duration / (len(actions) + 1)
        for action in actions:
            await asyncio.sleep(self.rng.uniform(0.5, 1.0) * slot)  # the time between two chaos events
            if action == "kill":
                await self.kill_one()
            else:
                mode = self.rng.choice(("WRITE", "ALL"))
                await admin.execute_command("CLIENT", "PAUSE", 300, mode)  # type: ignore[no-untyped-call]
                self.pauses += 1
                self._chaos_log.write("pause", mode=mode, ms=300)

    async def ballast(self, admin: redis.asyncio.Redis, stop: asyncio.Event) -> None:
        """Eviction pressure: values the cache never reads, written faster than ``maxmemory`` keeps them."""
        for number in itertools.count():
            if stop.is_set():
                return
            await admin.set(f"ballast:{number}", os.urandom(16 * 1024))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.005)  # the ballast's rate: about 3 MB/s

    async def count_evictions(self, subscriber: redis.asyncio.client.PubSub, stop: asyncio.Event) -> None:
        """Count evicted keys by kind, from the server's keyspace notifications."""
        while not stop.is_set():
            message = await subscriber.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                key = bytes(message["data"]).decode()
                kind = _key_kind(key)
                self.evicted[kind] += 1
                if kind != "ballast":
                    self._chaos_log.write("evicted", key=key, kind=kind)

    def close(self) -> None:
        for worker in self.workers.values():
            if worker.proc.returncode is None:
                worker.proc.kill()
        self._chaos_log.close()


def _key_kind(key: str) -> str:
    if key.startswith("ballast:"):
        return "ballast"
    if ":tag:" in key:
        return "tag stamp"
    return "tickets" if key.endswith(":lease") else "value"


async def _prepare_table(config: FreeRunConfig) -> None:
    conn = await aiomysql.connect(**config.mysql)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(f"CREATE TABLE `{config.table}` (k INT PRIMARY KEY, v BIGINT NOT NULL)")
            await cursor.executemany(f"INSERT INTO `{config.table}` (k, v) VALUES (%s, 1)",
                                     [(row,) for row in range(config.rows)])  # fmt: skip
    finally:
        conn.close()


async def _final_db(config: FreeRunConfig, *, drop: bool) -> dict[int, int]:
    conn = await aiomysql.connect(**config.mysql)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(f"SELECT k, v FROM `{config.table}`")
            versions = {int(k): int(v) for k, v in await cursor.fetchall()}
            if drop:
                await cursor.execute(f"DROP TABLE IF EXISTS `{config.table}`")
    finally:
        conn.close()
    return versions


async def _final_cache(config: FreeRunConfig) -> dict[int, list[int | None]]:
    """What each row's two entries hold now (None: absent or marked stale), read through a cache of our own."""
    cache = Cache(RedisBackend.from_url(config.redis_url, timeout=5.0), namespace=config.namespace, owns_client=True)
    _Current.cache = cache
    prefix = f"{config.namespace}:{{"
    try:
        found: dict[int, list[int | None]] = {}
        for row in range(config.rows):
            view_key = row_view.key(row, row % config.groups)
            assert view_key.startswith(prefix), view_key
            assert view_key.endswith("}"), view_key
            names = [f"row:{row}", view_key[len(prefix) : -1]]  # the store key is "{namespace}:{<name>}"
            found[row] = [None if (value := await cache.get(name)) is None else int(value["v"]) for name in names]
        return found
    finally:
        _Current.cache = None
        await cache.aclose()


def _prepare_log_dir(config: FreeRunConfig) -> Path:
    log_dir = Path(config.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "config.json").write_bytes(config.to_json())  # what the workers read
    return log_dir


def _logs(log_dir: Path) -> list[Path]:
    return [*sorted(log_dir.glob("worker-*.jsonl")), log_dir / "chaos.jsonl"]


async def run(config: FreeRunConfig) -> FreeRunReport:
    """One free run (see the module docstring): set up, run the workers and the chaos, stop, check, clean up."""
    if not config.table.startswith(_TABLE_PREFIX):
        raise ValueError(f"the table must be named {_TABLE_PREFIX}*: it is dropped at the end")
    began = time.monotonic()
    log_dir = _prepare_log_dir(config)
    admin = redis.asyncio.Redis.from_url(config.redis_url)
    subscriber = admin.pubsub()
    parent = FreeRun(config)
    await _prepare_table(config)
    try:
        await admin.config_set("maxmemory-policy", "allkeys-lru")
        await asyncio.gather(*(parent.start_worker(index, 0) for index in range(config.processes)))
        if config.eviction:
            # Tight now that every worker's connections are counted: about 2 MB for values, tickets and tag stamps.
            used = int((await admin.info("memory"))["used_memory"])
            await admin.config_set("maxmemory", used + 2 * 1024 * 1024)
        stop = asyncio.Event()
        background = []
        if config.eviction:
            await admin.config_set("notify-keyspace-events", "Ee")
            await subscriber.subscribe("__keyevent@0__:evicted")
            background += [asyncio.create_task(parent.ballast(admin, stop)),
                           asyncio.create_task(parent.count_evictions(subscriber, stop))]  # fmt: skip
        chaos = asyncio.create_task(parent.chaos(admin))
        await asyncio.sleep(config.duration)  # the run's length (the chaos is spread over it)
        await chaos
        await asyncio.gather(*parent.restarts)  # every worker stops the same way, through its stdin
        stop.set()
        await asyncio.gather(*background)
        await parent.stop_workers()
        evicted = int((await admin.info("stats"))["evicted_keys"])
        final_db = await _final_db(config, drop=False)
        final_cache = await _final_cache(config)
    finally:
        parent.close()
        await subscriber.aclose()  # type: ignore[no-untyped-call]
        await admin.aclose()
        with contextlib.suppress(Exception):
            await _final_db(config, drop=True)
    report = check(read_events(_logs(log_dir)), final_db, final_cache)
    report.processes, report.kills, report.pauses = parent.started, parent.kills, parent.pauses
    report.evicted = dict(parent.evicted)
    report.evicted_keys, report.mutant, report.seconds = evicted, config.mutant, time.monotonic() - began
    return report


if __name__ == "__main__":
    # Through the package's module, not this __main__ copy: row_view must be the one the worker sets up.
    from harness.freerun import main as worker_main

    sys.exit(worker_main())
