"""The parts of ``benchmarks.cluster``: the load its worker processes run, the faults the parent injects, and the
figures it makes of both (see that module's docstring for what is measured and why).

* :func:`run_worker` (a spawned process): one cache client, :data:`TASKS` callers of a mixed load until told to
  stop, every call recorded (:class:`Op`), with the loop's lag and the breakers' transitions.
* :class:`Faults` (the parent): the phases, one :class:`Window` per run of each, on a
  :class:`~harness.RedisClusterServer` and a :class:`~harness.ProxyProcess` in front of one master.
* :func:`summarize`, :func:`run_rows`: a row per phase and a row per run, from the workers' records.
"""

from __future__ import annotations

import array
import asyncio
import bisect
import dataclasses
import gc
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import redis
from redis.crc import key_slot

from harness import ProxyProcess, RedisClusterServer
from harness.servers import wait_for

BUDGET: Final = 0.1
KEYS: Final = 400  # @cached items, each tagged with a tag of its own (its stamp on another slot)
MANY_KEYS: Final = 400  # plain values read by get_many
MANY_SIZE: Final = 8  # names per get_many: consecutive names, spread over every shard by their hash
TASKS: Final = 16  # callers per worker process
THINK: Final = 0.005  # seconds between one caller's calls: a steady load, not a CPU saturation test
NAMESPACE: Final = "bench-cluster"
LATENCY_S: Final = 0.3  # the latency phase: every byte to and from one master this late, each way
PROMOTION_LIMIT: Final = 20.0  # seconds a failover or a freeze waits for the replica's promotion

# kinds of calls
FETCH: Final = 0  # item.entry(i): a tagged single-key read (the value and its tag's stamp, on two shards)
MANY: Final = 1  # cache.get_many of MANY_SIZE names
WRITE: Final = 2  # item.refresh(i): a tagged write (the value, and its tag's stamp made or renewed)

# one call: when it ended (time.time()), kind, index (item i; first name of a get_many), hits (0/1; a get_many's bit
# k: its name k hit), seconds, error (raised out of the cache), wrong values
Op = tuple[float, int, int, int, float, int, int]


def many_name(j: int) -> str:
    return f"g{j % MANY_KEYS}"


_FAILED: Final = "cachelayer: %s %s failed, failing open: %s"  # cachelayer._guard.Target.failed's line


class _Failures(logging.Handler):
    """Every store call that failed open (the guard logs each: the first at WARNING, the rest at DEBUG): when,
    which store, the error's type."""

    def __init__(self, into: list[tuple[float, str, str]]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == _FAILED and isinstance(record.args, tuple) and len(record.args) == 3:
            label, _, reason = record.args
            self.into.append((round(record.created, 4), str(label), str(reason).split(":", 1)[0]))


def _log_failures(into: list[tuple[float, str, str]]) -> None:
    logger = logging.getLogger("cachelayer")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(_Failures(into))
    shown = logging.StreamHandler(sys.stderr)  # what would be shown without a handler: WARNING and above
    shown.setLevel(logging.WARNING)
    logger.addHandler(shown)


# -- the worker processes -------------------------------------------------------------------------------------------


async def worker_main(url: str, remap: dict[int, int], ready: Any, start: Any, stop: Any) -> dict[str, Any]:
    from cachelayer import Cache, RedisBackend, cached

    def address_remap(address: tuple[str, int]) -> tuple[str, int]:
        return address[0], remap.get(address[1], address[1])

    failures: list[tuple[float, str, str]] = []
    _log_failures(failures)
    backend = RedisBackend.cluster_from_url(url, timeout=BUDGET, address_remap=address_remap if remap else None)
    events: list[tuple[float, str, str]] = []  # breaker transitions: when, store, state
    backend.guard.listeners.append(lambda store, state, reason: events.append((time.time(), store, state)))
    cache = Cache(backend, namespace=NAMESPACE, owns_client=True)
    await cache.connect()
    loads = 0

    @cached(ttl=600, cache=cache, tags=("item:{i}",), exclude=["loads"])  # a counter, not part of the result
    async def item(i: int) -> int:
        nonlocal loads
        loads += 1
        return i * 7

    # Warm-up: every key stored (or found) once, so the steady phase measures a warm cache.
    for i in range(KEYS):
        await item(i)
    for first in range(0, MANY_KEYS, 50):
        await cache.set_many({many_name(j): j * 7 for j in range(first, first + 50)}, ttl=600)
    slots = {
        "item": [key_slot(item.key(i).encode()) for i in range(KEYS)],
        "tag": [key_slot(cache.keys.tag_key(f"item:{i}").encode()) for i in range(KEYS)],
        "many": [key_slot(cache.key(many_name(j)).encode()) for j in range(MANY_KEYS)],
    }
    # The start-up heap (imported modules, redis-py's command table: ~50k objects) lives for good: frozen out of the
    # garbage collector's sight, as a long-running service does after start-up. Else every full collection (one
    # every ~1.2 s under this load) walks it: 40-90 ms each on a loaded 2-core machine, measured, which is the
    # interpreter's loop lag, not the cache's. The collections that remain are recorded (``gc``).
    gc.collect()
    gc.freeze()
    collections = _Columns("dd")  # when a full collection ended, how long it took (ms)
    gc.callbacks.append(_timed_full_collections(collections))
    ready.put("warm")
    await asyncio.to_thread(start.wait, 300)
    # Recorded in arrays, column by column: a list of a million tuples made every full garbage collection walk them
    # all (60-90 ms every ~1.2 s, measured): the benchmark's own loop lag, not the cache's.
    ops = _Columns("dbiidbb")
    lags = _Columns("dd")
    done = False

    async def stopper() -> None:
        nonlocal done
        await asyncio.to_thread(stop.wait)
        done = True

    async def lag() -> None:
        while not done:
            began = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.time(), (time.perf_counter() - began - 0.01) * 1000)

    async def call(kind: int, index: int) -> tuple[int, int]:
        """(hits, wrong values) of one call."""
        if kind == WRITE:
            return 0, int(await item.refresh(index) != index * 7)
        if kind == FETCH:
            entry = await item.entry(index)
            return int(entry.outcome == "hit"), int(entry.value() != index * 7)
        got = await cache.get_many([many_name(index + k) for k in range(MANY_SIZE)])
        hits = wrong = 0
        for k, value in enumerate(got):
            if value == (index + k) % MANY_KEYS * 7:
                hits |= 1 << k
            elif value is not None:
                wrong += 1
        return hits, wrong

    async def load(seed: int) -> None:
        n = seed
        while not done:
            n = (n * 1103515245 + 12345) % 2**31
            share = (n >> 16) % 20  # the high bits: an LCG's low bits repeat with short periods
            kind = WRITE if share == 0 else MANY if share <= 3 else FETCH
            index = (n >> 4) % (MANY_KEYS if kind == MANY else KEYS)
            began = time.perf_counter()
            hits = wrong = error = 0
            try:
                hits, wrong = await call(kind, index)
            except Exception:  # a caller error: what the cache promises never happens
                error = 1
            elapsed = time.perf_counter() - began
            ops.append(time.time(), kind, index, hits, elapsed, error, wrong)
            await asyncio.sleep(THINK)

    await asyncio.gather(stopper(), lag(), *(load(seed) for seed in range(1, TASKS + 1)))
    client: Any = backend.client
    counters = {name: getattr(client, name, None) for name in ("refreshes", "refresh_failures", "discoveries")}
    await cache.aclose()
    return {"ops": ops.rows(), "lags": lags.rows(), "gc": collections.rows(), "events": events, "failures": failures,
            "loads": loads, "slots": slots, "client": counters}


def _timed_full_collections(into: _Columns) -> Callable[[str, dict[str, int]], None]:
    began = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            into.append(time.time(), (time.perf_counter() - began[0]) * 1000)

    return timed


class _Columns:
    """Rows of numbers kept as one array per column (no object per row for the garbage collector to walk)."""

    def __init__(self, typecodes: str) -> None:
        self.columns = [array.array(code) for code in typecodes]

    def append(self, *row: float) -> None:
        for column, value in zip(self.columns, row, strict=True):
            column.append(value)  # type: ignore[arg-type]  # an int column is given ints

    def rows(self) -> list[list[float]]:
        """The rows, floats rounded to 0.1 ms (for JSON)."""
        rounded = [[round(v, 4) for v in column] if column.typecode == "d" else column.tolist()
                   for column in self.columns]
        return [list(row) for row in zip(*rounded, strict=True)]


def run_worker(url: str, remap: dict[int, int], ready: Any, start: Any, stop: Any, out: str) -> None:
    Path(out).write_text(json.dumps(asyncio.run(worker_main(url, remap, ready, start, stop))))


async def idle_loop_lag(stop: Any) -> list[tuple[float, float]]:
    """The lateness of a 10 ms timer on an otherwise idle loop: what the machine alone costs a loop."""
    lags: list[tuple[float, float]] = []
    while not stop.is_set():
        began = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append((time.time(), (time.perf_counter() - began - 0.01) * 1000))
    return lags


def run_idle(ready: Any, start: Any, stop: Any, out: str) -> None:
    ready.put("idle")
    start.wait(300)
    Path(out).write_text(json.dumps({"lags": asyncio.run(idle_loop_lag(stop))}))


# -- the faults -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Window:
    """One run of one phase: when it began and ended, its fault, Redis's promotion, the fault's end."""

    phase: str
    run: int
    start: float
    touched: frozenset[int] = frozenset()  # shards whose keys the fault touches
    fault_at: float | None = None
    promoted_at: float | None = None  # the replica won its election (its log), or None: no promotion
    healed_at: float | None = None  # SIGCONT, latency back to 0
    end: float = math.inf


class Faults:
    """The phases, on the cluster's shards: shard k is the k-th master at start and its replica (the pair swaps
    roles at each failover). Failovers hit shard 0, freezes shard 1, the latency (through ``proxy``) shard 2, and
    the reshard moves slots from shard 0 to shard 1, away from the proxied master (cachelayer remaps a MOVED to
    it, but redis-py's ASK redirections are not remapped: they would reach it around the proxy)."""

    def __init__(self, cluster: RedisClusterServer, proxy: ProxyProcess, settle: float) -> None:
        self.cluster = cluster
        self.proxy = proxy
        self.settle = settle
        masters = cluster.masters()
        self.shards: list[tuple[int, int]] = []
        for master in masters:
            replica = cluster.replica_of(master)
            if replica is None:
                raise RuntimeError(f"master {master} has no replica: {cluster.describe()}")
            self.shards.append((master, replica))
        self.windows: list[Window] = []

    def shard_of_port(self) -> dict[int, int]:
        ports = {port: shard for shard, pair in enumerate(self.shards) for port in pair}
        ports[self.proxy.port] = ports[self.proxy.target_port]
        return ports

    def roles(self, shard: int) -> tuple[int, int]:
        """(master, replica) of the shard now."""
        first, second = self.shards[shard]
        return (first, second) if self.cluster.says_master(first) else (second, first)

    def _open(self, phase: str, run: int, touched: set[int]) -> Window:
        window = Window(phase, run, time.time(), frozenset(touched))
        self.windows.append(window)
        return window

    def _settled(self, window: Window, limit: float = 60.0) -> None:
        """Wait until every node agrees, every master has its replica in sync: the next run starts from there.
        Asked twice a second: one check costs this process ~20 ms of CPU (new connections to every node), which
        the workers beside it would feel as loop lag at the harness's usual 20 checks a second."""
        ok = wait_for(lambda: self.cluster.is_ok() and self.cluster.replicas_in_sync(), limit, interval=0.5)
        if not ok:
            raise RuntimeError(f"{window.phase} run {window.run}: the cluster did not settle: "
                               f"{self.cluster.describe()}")
        window.end = time.time()

    def steady(self, seconds: float) -> None:
        window = self._open("steady", 0, set())
        time.sleep(seconds)
        window.end = time.time()

    def failover(self, run: int) -> None:
        """SIGKILL shard 0's master; its replica is promoted; the dead node is started again (a replica now)."""
        master, replica = self.roles(0)
        window = self._open("failover", run, {0})
        window.fault_at = time.time()
        self.cluster.kill(master)
        window.promoted_at = self.cluster.wait_for_promotion(replica, PROMOTION_LIMIT, since=window.fault_at)
        time.sleep(self.settle)
        self.cluster.restart(master)
        self._settled(window)

    def freeze(self, run: int) -> None:
        """SIGSTOP shard 1's master until its replica is promoted and ``settle`` more seconds, then SIGCONT: it
        wakes up a replica of the promoted one."""
        master, replica = self.roles(1)
        node = self.cluster.nodes[master]
        window = self._open("freeze", run, {1})
        window.fault_at = time.time()
        node.suspend()
        try:
            window.promoted_at = self.cluster.wait_for_promotion(replica, PROMOTION_LIMIT, since=window.fault_at)
            time.sleep(self.settle)
        finally:
            node.resume()
        window.healed_at = time.time()
        self._settled(window)

    def latency(self, seconds: float) -> None:
        """Every byte to and from shard 2's master LATENCY_S late (each way) for ``seconds``."""
        window = self._open("latency", 0, {2})
        window.fault_at = time.time()
        self.proxy.set_latency(LATENCY_S)
        time.sleep(seconds)
        self.proxy.set_latency(0.0)
        window.healed_at = time.time()
        time.sleep(self.settle)
        window.end = time.time()

    def reshard(self, slots: int, seconds: float) -> None:
        """Move ``slots`` slots (and their keys) from shard 0's master to shard 1's, then ``seconds`` more."""
        window = self._open("reshard", 0, {0, 1})
        window.fault_at = time.time()
        self.cluster.reshard(self.roles(0)[0], self.roles(1)[0], slots)
        time.sleep(max(0.0, window.fault_at + seconds - time.time()))
        window.end = time.time()


def slot_owners(port: int) -> dict[int, int]:
    """slot -> master port, from CLUSTER SLOTS."""
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as conn:
        ranges = conn.execute_command("CLUSTER SLOTS")
    owners: dict[int, int] = {}
    for entry in ranges:  # redis-py parses it to {(low, high): {"primary": (host, port), ...}}
        if isinstance(ranges, dict):
            (low, high), info = entry, ranges[entry]
            master = int(info["primary"][1])
        else:
            low, high, master = int(entry[0]), int(entry[1]), int(entry[2][1])
        for slot in range(low, high + 1):
            owners[slot] = master
    return owners


# -- the figures ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Keyspace:
    """Which shards each call depends on: a tagged item its value's and its stamp's, a get_many name its own."""

    item_shards: list[frozenset[int]]
    many_shard: list[int]

    @classmethod
    def of(cls, slots: dict[str, list[int]], shard_of_slot: dict[int, int]) -> Keyspace:
        return cls(
            [frozenset({shard_of_slot[a], shard_of_slot[b]}) for a, b in zip(slots["item"], slots["tag"], strict=True)],
            [shard_of_slot[slot] for slot in slots["many"]],
        )

    def touched_items(self, op: Op, touched: frozenset[int]) -> tuple[list[bool], list[bool]]:
        """(does each read of the call touch a ``touched`` shard, did each hit); empty for a write."""
        kind, index, hits = op[1], op[2], op[3]
        if kind == FETCH:
            return [bool(self.item_shards[index] & touched)], [bool(hits)]
        if kind == MANY:
            return ([self.many_shard[(index + k) % MANY_KEYS] in touched for k in range(MANY_SIZE)],
                    [bool(hits >> k & 1) for k in range(MANY_SIZE)])
        return [], []


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile (p99 of 10 runs is their maximum); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def ops_between(ops: Sequence[Op], start: float, end: float) -> list[Op]:
    """The calls (sorted by time) that ended in [start, end)."""
    return list(ops[bisect.bisect_left(ops, (start,)):bisect.bisect_left(ops, (end,))])


def client_recovery(window: Window, per_worker: Sequence[Sequence[Op]], keys: Keyspace) -> float | None:
    """From Redis's promotion to the first hit on a key of the failed shard, in the slowest of the worker
    processes (each is a client of its own); None if a worker had none before the fault ended (SIGCONT) or the
    run did. Measured only where the replica was promoted."""
    if window.promoted_at is None:
        return None
    until = window.healed_at if window.healed_at is not None else window.end
    worst = 0.0
    for ops in per_worker:
        first = None
        for op in ops_between(ops, window.promoted_at, until):
            touched, hit = keys.touched_items(op, window.touched)
            if any(t and h for t, h in zip(touched, hit, strict=True)):
                first = op[0]
                break
        if first is None:
            return None
        worst = max(worst, first - window.promoted_at)
    return worst


def recovery(window: Window, ops: Sequence[Op], keys: Keyspace) -> float:
    """From the fault (for the latency: its end) to the last miss, error or call over 2x budget on a touched key."""
    began = window.healed_at if window.phase == "latency" and window.healed_at is not None else window.fault_at
    if began is None:
        return 0.0
    last = began
    for op in ops_between(ops, began, window.end):
        touched, hit = keys.touched_items(op, window.touched)
        missed = any(t and not h for t, h in zip(touched, hit, strict=True))
        if any(touched) and (op[5] or op[4] > 2 * BUDGET or missed):
            last = op[0]
    return last - began


def healthy_reads(windows: Sequence[Window], ops: Sequence[Op], keys: Keyspace) -> tuple[list[int], list[int]]:
    """From each window's fault on, the reads of keys that depend on no touched shard: [hits, reads] of the
    single-key fetches, and of the get_many items."""
    single = [0, 0]
    many = [0, 0]
    for w in windows:
        for op in ops_between(ops, w.fault_at if w.fault_at is not None else w.start, w.end):
            touched, hit = keys.touched_items(op, w.touched)
            tally = single if op[1] == FETCH else many
            for t, h in zip(touched, hit, strict=True):
                if not t:
                    tally[0] += int(h)
                    tally[1] += 1
    return single, many


def _ratio(tally: list[int]) -> float | None:
    return round(tally[0] / tally[1], 4) if tally[1] else None


def run_rows(windows: Sequence[Window], ops: Sequence[Op], per_worker: Sequence[Sequence[Op]],
             keys: Keyspace, lags: Sequence[tuple[float, float]] = ()) -> list[dict[str, Any]]:
    """One row per run of a failover or a freeze: Redis's promotion, the client's share after it, recovery, the
    workers' loop lag."""
    rows = []
    for window in windows:
        if window.phase not in ("failover", "freeze"):
            continue
        promotion = None if window.promoted_at is None or window.fault_at is None else (
            window.promoted_at - window.fault_at)
        single, many = healthy_reads([window], ops, keys)
        rows.append({
            "phase": window.phase,
            "run": window.run,
            "promotion_s": _rounded(promotion, 3),
            "client_recovery_s": _rounded(client_recovery(window, per_worker, keys), 3),
            "recovery_s": round(recovery(window, ops, keys), 3),
            "loop_lag_p99_ms": _rounded(percentile([v for t, v in lags if window.start <= t < window.end], 0.99), 1),
            "healthy_shard_hit_ratio": _ratio(single),
            "healthy_get_many_item_hit_ratio": _ratio(many),
        })
    return rows


def healthy_openings(windows: Sequence[Window], events: Sequence[tuple[float, str, str]],
                     shard_of_store: Callable[[str], int | None]) -> list[dict[str, Any]]:
    """The breaker openings, in ``windows``, of masters their fault did not touch, and of the key-less breaker
    (shared by every master): what happened when, for the JSON."""
    found = []
    for w in windows:
        for at, store, state in events:
            if state != "open" or not w.start <= at < w.end:
                continue
            shard = shard_of_store(store)
            if shard is None or shard not in w.touched:
                since = at - (w.fault_at if w.fault_at is not None else w.start)
                found.append({"phase": w.phase, "run": w.run, "store": store, "shard": shard,
                              "s_after_fault": round(since, 3)})
    return found


def healthy_failures(windows: Sequence[Window], failures: Sequence[tuple[float, str, str]],
                     shard_of_store: Callable[[str], int | None]) -> list[dict[str, Any]]:
    """The store calls that failed open, in ``windows``, on masters their fault did not touch (and on the key-less
    target): what happened when, for the JSON."""
    found = []
    for w in windows:
        for at, store, reason in failures:
            if not w.start <= at < w.end:
                continue
            shard = shard_of_store(store)
            if shard is None or shard not in w.touched:
                since = at - (w.fault_at if w.fault_at is not None else w.start)
                found.append({"phase": w.phase, "run": w.run, "store": store, "shard": shard,
                              "s_after_fault": round(since, 3), "error": reason})
    return found


def summarize(phase: str, windows: Sequence[Window], ops: Sequence[Op], per_worker: Sequence[Sequence[Op]],
              lags: Sequence[tuple[float, float]], events: Sequence[tuple[float, str, str]],
              shard_of_store: Callable[[str], int | None], keys: Keyspace, steady_miss_rate: float) -> dict[str, Any]:
    """The row of ``phase``: every run of it together (see benchmarks/cluster.py for the columns)."""
    mine = [w for w in windows if w.phase == phase]
    calls = [op for w in mine for op in ops_between(ops, w.start, w.end)]
    single, many = healthy_reads(mine, ops, keys)
    openings = len(healthy_openings(mine, events, shard_of_store))
    lag_values = [value for w in mine for t, value in lags if w.start <= t < w.end]
    duration = sum(w.end - w.start for w in mine)
    misses = len([op for op in calls if op[1] == FETCH and not op[3]])
    runs = run_rows(mine, ops, per_worker, keys, lags)
    promotions = [r["promotion_s"] for r in runs if r["promotion_s"] is not None]
    shares = [r["client_recovery_s"] for r in runs]
    measured = [s for s in shares if s is not None]
    if runs:
        recoveries = [r["recovery_s"] for r in runs]
    else:
        recoveries = [recovery(w, ops, keys) for w in mine if w.fault_at is not None]
    return {
        "phase": phase,
        "runs": len(mine),
        "ops": len(calls),
        "caller_errors": sum(op[5] for op in calls),
        "wrong_values": sum(op[6] for op in calls),
        "over_budget_calls": len([op for op in calls if op[4] > 2 * BUDGET]),
        "healthy_shard_hit_ratio": _ratio(single),
        "healthy_get_many_item_hit_ratio": _ratio(many),
        "healthy_breaker_openings": openings,
        "extra_loads": max(0, round(misses - steady_miss_rate * duration)),
        "loop_lag_p99_ms": round(percentile(lag_values, 0.99) or 0.0, 1),
        "recovery_s": _rounded(percentile(recoveries, 0.99), 2) if recoveries else None,
        "promotion_s": _rounded(statistics.median(promotions), 2) if promotions else None,
        # a run without a promotion or without a hit after it has no share to show: the row says so (None)
        "client_recovery_s": _rounded(percentile(measured, 0.99), 3) if runs and len(measured) == len(runs) else None,
        "client_recovery_p50_s": _rounded(statistics.median(measured), 3) if measured else None,
    }
