"""Which channel keeps the local tiers coherent: pub/sub broadcast or Redis client tracking (issue 5).

``python -m benchmarks.l1_channel [--rounds N]``

One writer, a :class:`cachelayer.Cache` with a :class:`cachelayer.LocalCache` on a fresh namespace in Redis DB 14,
and two observers on their own connections, each timing every message it gets:

* ``pub/sub``: subscribed to the library's invalidation channel (``<ns>:local-invalidations``), as every
  ``LocalCache`` listener is;
* ``tracking``: Redis client tracking in broadcast mode over the namespace's keys, ``CLIENT TRACKING ON BCAST
  PREFIX <ns>: REDIRECT <id>``, its ``invalidate`` messages delivered to a connection subscribed to
  ``__redis__:invalidate`` (a RESP2 connection; over RESP3 the same invalidations come as push frames).

Per kind of operation, ``--rounds`` times: the operation, then how long until each observer heard of the key, and
how many messages each got for it (the observers keep listening 50 ms after the last expected message):

* ``set``: ``Cache.set`` (one value written through the library);
* ``cold load``: ``Cache.get_or_set`` on a missing key (lease, tag stamp, value, lease release);
* ``invalidate_tags``: one tag over 10 stored keys (one new stamp: the broadcast names the tag);
* ``foreign write``: a plain ``SET`` on a key of the namespace by a client that does not use the library;
* ``expiry``: a stored value's Redis TTL running out (no command at all).

Writes ``benchmarks/results/l1_channel.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import redis.asyncio as redis

from benchmarks._common import (
    BENCH_REDIS_URL,
    RESULTS_DIR,
    environment,
    format_table,
    markdown_table,
    write_json,
    write_text,
)
from cachelayer import Cache, EntryPolicy, LocalCache, RedisBackend
from cachelayer._redis_cluster import build_cluster_client, node_name_for_key
from harness.cluster import CACHE_CLUSTER_ARGS, RedisClusterServer
from harness.proxy import LatencyProxy

REDIS_URL = BENCH_REDIS_URL
QUIET_S = 0.05  # after the last expected message, how long an observer keeps counting
WAIT_S = 2.0  # the longest we wait for a message naming the key
EXPIRY_S = 0.5  # how long the expiring value lives in Redis


@dataclass
class Observer:
    """One channel's messages, as (arrival time, keys named; None = everything)."""

    name: str
    heard: list[tuple[float, frozenset[str] | None]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, keys: frozenset[str] | None) -> None:
        self.heard.append((time.perf_counter(), keys))
        self.changed.set()

    def naming(self, key: str, since: float, skip: int) -> float | None:
        """When the message naming ``key`` that follows the first ``skip`` such messages since ``since`` arrived."""
        for at, keys in self.heard:
            if at >= since and (keys is None or key in keys):
                if skip == 0:
                    return at
                skip -= 1
        return None

    def count_since(self, since: float) -> int:
        return sum(1 for at, _ in self.heard if at >= since)


async def _listen(pubsub: Any, observer: Observer, decode: Callable[[Any], frozenset[str] | None]) -> None:
    async for message in pubsub.listen():
        if message["type"] == "message":
            observer.record(decode(message["data"]))


def _pubsub_keys(payload: bytes) -> frozenset[str] | None:
    _origin, _, names = payload.partition(b"\n")
    return None if names == b"*" else frozenset(names.decode().split("\n"))


def _tracking_keys(payload: Any) -> frozenset[str] | None:
    if payload is None:  # FLUSHDB / FLUSHALL
        return None
    return frozenset(k.decode() if isinstance(k, bytes) else str(k) for k in payload)


@dataclass
class Step:
    """What one operation leaves to observe: which key, and from when.

    ``since`` is taken before the operation's first command, so no message it causes can predate it; an operation
    that first writes the key itself (to invalidate or expire it) says how many notices that write gives each
    channel (``skip``): those are told apart by order, not by arrival time, which a loaded machine stretches.
    Latency is timed from ``origin`` (the operation's own start by default).
    """

    key: str
    since: float
    skip: dict[str, int] = field(default_factory=dict)
    origin: float | None = None
    names: dict[str, str] = field(default_factory=dict)  # a channel that names the change otherwise than ``key``


@dataclass
class Sample:
    latency_ms: dict[str, float | None]
    messages: dict[str, int]


async def _observe(observers: Sequence[Observer], step: Step, wait: float) -> Sample:
    origin = step.since if step.origin is None else step.origin
    deadline = time.perf_counter() + wait
    latency: dict[str, float | None] = {}
    for observer in observers:
        skip = step.skip.get(observer.name, 0)
        key = step.names.get(observer.name, step.key)
        while (at := observer.naming(key, step.since, skip)) is None and time.perf_counter() < deadline:
            observer.changed.clear()
            try:
                await asyncio.wait_for(observer.changed.wait(), max(0.001, deadline - time.perf_counter()))
            except TimeoutError:
                break
        latency[observer.name] = None if at is None else (at - origin) * 1000
    await asyncio.sleep(QUIET_S)
    return Sample(latency, {o.name: o.count_since(step.since) for o in observers})


async def measure(rounds: int, url: str = REDIS_URL, budget: float = 0.1) -> dict[str, list[Sample]]:
    """``budget``: the writer's budget per Redis call (the library's default)."""
    namespace = f"l1ch-{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(url)
    writer = Cache.from_url(url, namespace=namespace, local=LocalCache(max_staleness=1.0), timeout=budget)
    sub_pubsub = redis.Redis.from_url(url).pubsub()
    tracked = redis.Redis.from_url(url, single_connection_client=True)
    # redis-py 8 opens RESP3 connections (HELLO 3), to which Redis sends invalidations as push frames, not as
    # messages of __redis__:invalidate: the receiving connection speaks RESP2 so that PubSub delivers them.
    track_pubsub = redis.Redis.from_url(url, protocol=2).pubsub()
    observers = [Observer("pub/sub"), Observer("tracking")]
    tasks: list[asyncio.Task[None]] = []
    try:
        await sub_pubsub.subscribe(writer.keys.local_channel())
        # The id of the connection that will receive the invalidations, asked before it enters subscriber mode.
        await track_pubsub.connect()  # type: ignore[no-untyped-call]
        receiver: Any = track_pubsub.connection
        await receiver.send_command("CLIENT", "ID")
        target = await receiver.read_response()
        await track_pubsub.subscribe("__redis__:invalidate")
        await tracked.execute_command(  # type: ignore[no-untyped-call]
            "CLIENT", "TRACKING", "ON", "REDIRECT", target, "BCAST", "PREFIX", f"{namespace}:"
        )
        tasks = [
            asyncio.create_task(_listen(sub_pubsub, observers[0], _pubsub_keys)),
            asyncio.create_task(_listen(track_pubsub, observers[1], _tracking_keys)),
        ]
        await asyncio.sleep(0.1)

        async def load() -> dict[str, int]:
            return {"n": 1}

        samples: dict[str, list[Sample]] = {}

        async def run(kind: str, op: Callable[[int], Awaitable[Step]], wait: float = WAIT_S) -> None:
            for i in range(rounds):
                step = await op(i)
                samples.setdefault(kind, []).append(await _observe(observers, step, wait))

        # A library write of a key is one message naming it on each channel (the broadcast, the tracking notice).
        own_write = {"pub/sub": 1, "tracking": 1}

        async def do_set(i: int) -> Step:
            since = time.perf_counter()
            await writer.set(f"set:{i}", {"i": i}, ttl=60)
            return Step(writer.key(f"set:{i}"), since)

        async def do_cold_load(i: int) -> Step:
            since = time.perf_counter()
            await writer.get_or_set(f"cold:{i}", load, ttl=60, tags=["t"], local=True)
            return Step(writer.key(f"cold:{i}"), since)

        async def do_invalidate(i: int) -> Step:
            for j in range(10):
                await writer.set(f"tagged:{i}:{j}", {"j": j}, ttl=60, tags=[f"tag{i}"])
            await asyncio.sleep(QUIET_S)
            # A tag invalidation writes the tag's stamp, once: the broadcast names the tag (NUL-prefixed), tracking
            # the stamp's key. The writes above came before `since` (and the quiet pause).
            since = time.perf_counter()
            await writer.invalidate_tags(f"tag{i}")
            names = {"pub/sub": "\0" + f"tag{i}", "tracking": writer.keys.tag_key(f"tag{i}")}
            return Step(writer.key(f"tagged:{i}:0"), since, names=names)

        async def do_foreign(i: int) -> Step:
            since = time.perf_counter()
            key = writer.key(f"foreign:{i}")
            await admin.set(key, b"written by another program")
            return Step(key, since)

        async def do_expiry(i: int) -> Step:
            # Kept EXPIRY_S in Redis (TTL + stale window), counted from when Redis runs the SET, after ``since``:
            # timed from the earliest moment it can go. Not shorter: Redis sends a tracking client the keys written
            # in one event-loop iteration as one message, so a Redis stalled that long between the SET and its
            # next iteration would report the write and the expiry in one message.
            since = time.perf_counter()
            await writer.set(f"expiring:{i}", {"i": i}, ttl=EXPIRY_S / 2, stale_ttl=EXPIRY_S / 2)
            return Step(writer.key(f"expiring:{i}"), since, own_write, since + EXPIRY_S)

        await run("set", do_set)
        await run("cold load", do_cold_load)
        await run("invalidate_tags (10 keys)", do_invalidate)
        await run("foreign write", do_foreign)
        # Redis's active expiry samples keys with a TTL ~10 times a second: on a shared, busy Redis it can take a
        # while to reach ours (the observers stop at the first message, so a long bound costs nothing).
        await run("expiry", do_expiry, wait=5.0)
        return samples
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await writer.clear()
        await writer.aclose()
        for pubsub in (sub_pubsub, track_pubsub):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        await tracked.aclose()
        await admin.aclose()


def summarize(samples: dict[str, list[Sample]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for kind, runs in samples.items():
        row: list[object] = [kind]
        for name in ("pub/sub", "tracking"):
            heard = [ms for s in runs if (ms := s.latency_ms[name]) is not None]
            row += [
                f"{len(heard)}/{len(runs)}",
                round(statistics.median(heard), 3) if heard else None,
                round(statistics.mean(s.messages[name] for s in runs), 1),
            ]
        rows.append(row)
    return rows


HEADERS = [
    "operation",
    "pub/sub heard",
    "pub/sub ms (median)",
    "pub/sub msgs/op",
    "tracking heard",
    "tracking ms (median)",
    "tracking msgs/op",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.l1_channel", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument(
        "--faults", action="store_true", help="the staleness bound under one cluster node's kill, freeze, latency"
    )
    parser.add_argument("--fault-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.faults:
        return faults_main(args.fault_seconds)
    samples = asyncio.run(measure(args.rounds))
    rows = summarize(samples)
    print(format_table(HEADERS, rows))
    env = environment(["redis", "orjson", "zstandard"])
    write_json(
        RESULTS_DIR / "l1_channel.json",
        {"rounds": args.rounds, "rows": [dict(zip(HEADERS, r, strict=True)) for r in rows], "environment": env},
    )
    write_text(
        RESULTS_DIR / "l1_channel.md",
        "\n".join(
            [
                "# L1 coherence channel: pub/sub broadcast vs Redis client tracking",
                "",
                f"`python -m benchmarks.l1_channel --rounds {args.rounds}` ({time.strftime('%Y-%m-%d %H:%M')}; "
                "Redis 127.0.0.1 DB 14, one writer, both observers on their own connections). `heard`: operations "
                "after which the observer got a message naming the key within the wait; `ms`: from the start of "
                "the operation to that message; `msgs/op`: messages the observer got per operation (for "
                "`invalidate_tags` and `expiry`, the notices of the writes that set the keys up included).",
                "",
                markdown_table(HEADERS, rows),
                "",
                "Decision and reasons: docs/performance.md (L1 coherence channel).",
                "",
                f"Environment: `{env}`",
            ]
        ),
    )
    return 0


def faults_main(fault_s: float) -> int:
    """One fresh cluster per fault; writes ``l1_channel_faults.{md,json}``."""

    async def one(fault: str) -> FaultRun:
        with RedisClusterServer(extra_args=CACHE_CLUSTER_ARGS) as cluster:
            return await run_fault(cluster, fault, fault_s=fault_s)

    runs = [asyncio.run(one(fault)) for fault in FAULTS]
    rows = [run.row() for run in runs]
    print(format_table(FAULT_HEADERS, rows))
    env = environment(["redis"])
    write_json(
        RESULTS_DIR / "l1_channel_faults.json",
        {
            "fault_seconds": fault_s,
            "max_staleness": runs[0].max_staleness,
            "rows": [dict(zip(FAULT_HEADERS, r, strict=True)) for r in rows],
            "environment": env,
        },
    )
    write_text(
        RESULTS_DIR / "l1_channel_faults.md",
        "\n".join(
            [
                "# The local tier's staleness bound under one cluster node's fault",
                "",
                f"`python -m benchmarks.l1_channel --faults --fault-seconds {fault_s:g}` "
                f"({time.strftime('%Y-%m-%d %H:%M')}; a fresh 3+3 cluster per fault, node timeout 2 s; one writer, "
                f"two readers with `LocalCache(max_staleness={runs[0].max_staleness:g})`, 30 keys, a write every "
                f"{WRITE_EVERY * 1000:g} ms, budget 0.1 s). The victim is the master owning the invalidation "
                "channel's slot (the listeners' first node, the writer's first publish target); the keys live on "
                f"the other masters. `kill`: SIGKILL, never restarted; `freeze`: SIGSTOP for {fault_s:g} s; "
                f"`latency`: {LATENCY_S:g} s each way for {fault_s:g} s. `old answers`: L1 answers older than a "
                "write that had begun; `worst staleness`: the longest from a write's start to an L1 answer of the "
                "value it replaced; `listeners resubscribed`: the later of the two readers' first new subscription, "
                "from the fault's start; `promotion`: when another master owned the victim's slots.",
                "",
                markdown_table(FAULT_HEADERS, rows),
                "",
                f"Environment: `{env}`",
            ]
        ),
    )
    return 0 if all(run.over_bound == 0 for run in runs) else 1

# --------------------------------------------------------------------------------------------------------------------
# The staleness bound under one cluster node's fault (``--faults``; also run by tests/test_local_cluster.py).
#
# On a real 3+3 cluster, one writer and two readers (each a Cache with its own LocalCache and its own clients, as
# separate processes would have) share 30 keys. The writer bumps one key's version every WRITE_EVERY s (Cache.set:
# the store, then the broadcast); the readers read every key in a loop through their L1 (fetch(..., local=True)).
# Every answer a reader's L1 serves is checked: a version older than a write that *began* s seconds before is s
# seconds stale (timed from the write's start, so the write's own store call and broadcast count against the tier).
#
# The victim is the master that owns the invalidation channel's slot: where every listener subscribes first and where
# the writer publishes first, so the fault hits both sides. The 30 keys live on the other masters, so every write
# reaches the store and what is measured is the tier's channel alone (a write lost with its shard is the store's
# problem, docs/consistency.md). Faults: ``kill`` (SIGKILL; a replica is promoted after the node timeout; the node
# stays dead), ``freeze`` (SIGSTOP for fault_s, then SIGCONT; longer than the node timeout, so a failover happens
# meanwhile), ``latency`` (every byte to and from the node LATENCY_S late, through a harness LatencyProxy in front of
# each node, for fault_s).

FAULTS: Final = ("kill", "freeze", "latency")
LATENCY_S: Final = 1.0  # each way: longer than max_staleness, so messages through the node come too late
WRITE_EVERY: Final = 0.02
KEYS: Final = 30
READERS: Final = 2
LOCAL: Final = EntryPolicy(local=True, ttl=300)


@dataclass
class FaultRun:
    """What one fault did to the readers' L1s (times in seconds from the fault's start unless said)."""

    fault: str
    max_staleness: float
    writes: int = 0
    l1_answers: int = 0
    stale_answers: int = 0  # an L1 answer older than a write that had begun
    over_bound: int = 0  # ... begun more than max_staleness before
    worst_staleness: float = 0.0
    worst_staleness_during_fault: float = 0.0
    resubscribed: list[float | None] = field(default_factory=list)  # per reader: first new subscription
    promoted: float | None = None  # kill / freeze: when the victim's slots had another master
    fault_ended: float | None = None
    channel_breaks: int = 0
    broadcasts_failed: int = 0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (time, staleness) of stale answers

    def row(self) -> list[object]:
        def seconds(value: float | None) -> object:
            return None if value is None else round(value, 2)

        resubscribed = [r for r in self.resubscribed if r is not None]
        return [
            self.fault,
            self.writes,
            self.l1_answers,
            self.stale_answers,
            round(self.worst_staleness * 1000, 1),
            self.over_bound,
            seconds(max(resubscribed) if len(resubscribed) == len(self.resubscribed) else None),
            seconds(self.promoted),
            self.broadcasts_failed,
        ]


FAULT_HEADERS: Final = [
    "fault (victim: the channel's master)",
    "writes",
    "L1 answers",
    "old answers",
    "worst staleness ms",
    "answers > max_staleness",
    "listeners resubscribed s",
    "promotion s",
    "broadcasts lost",
]


def _cache(url: str, namespace: str, tier: LocalCache, remap: Callable[[tuple[str, int]], tuple[str, int]] | None,
           budget: float) -> Cache:
    def client() -> Any:
        options: dict[str, Any] = {} if remap is None else {"address_remap": remap}
        return build_cluster_client(url, max_connections=16, pool_timeout=budget, **options)

    return Cache(RedisBackend(client, timeout=budget), namespace=namespace, local=tier, owns_client=True)


async def _proxies(cluster: RedisClusterServer) -> dict[int, LatencyProxy]:
    return {port: await LatencyProxy(cluster.host, port).start() for port in cluster.ports}


async def run_fault(
    cluster: RedisClusterServer,
    fault: str,
    *,
    fault_s: float = 3.0,
    settle_s: float = 1.5,
    after_s: float = 3.0,
    max_staleness: float = 1.0,
    budget: float = 0.1,
) -> FaultRun:
    """Run ``fault`` on ``cluster`` (which it leaves broken: use a fresh one per call); see the module docstring.
    ``settle_s`` of healthy traffic first, ``after_s`` after the fault ended (for ``kill``: after the promotion)."""
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {FAULTS}")
    run = FaultRun(fault, max_staleness)
    proxies = await _proxies(cluster) if fault == "latency" else {}
    by_proxy = {proxy.port: port for port, proxy in proxies.items()}
    remap = None if not proxies else (lambda address: (address[0], proxies[address[1]].port)
                                      if address[1] in proxies else address)
    namespace = f"l1fault-{uuid.uuid4().hex[:8]}"
    tiers = [LocalCache(max_staleness=max_staleness) for _ in range(READERS + 1)]
    writer, *readers = caches = [_cache(cluster.url, namespace, tier, remap, budget) for tier in tiers]
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []
    try:
        for cache in caches:
            await cache.connect()
        client: Any = writer.backend.client  # type: ignore[attr-defined]
        channel_node = node_name_for_key(client, writer.keys.local_channel())
        victim = int(channel_node.rsplit(":", 1)[1])
        victim = by_proxy.get(victim, victim)
        on_others = (
            f"k{i}" for i in itertools.count() if node_name_for_key(client, writer.key(f"k{i}")) != channel_node
        )
        names = list(itertools.islice(on_others, KEYS))
        db = dict.fromkeys(names, 1)
        began: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
        for name in names:
            await writer.set(name, {"v": 1}, ttl=300)

        def loader(name: str) -> Callable[[], Any]:
            async def load() -> dict[str, int]:
                return {"v": db[name]}

            return load

        deadline = time.monotonic() + 30
        while not all(t.channel_alive() and len(t) == KEYS for t in tiers[1:]):
            if time.monotonic() > deadline:
                raise RuntimeError("the readers' L1s did not fill with live channels within 30 s")
            for reader in readers:
                for name in names:
                    await reader.fetch(name, loader(name), LOCAL)
            await asyncio.sleep(0.01)

        t0 = float("inf")  # when the fault began (monotonic)
        stopping = asyncio.Event()

        async def write() -> None:
            for name in itertools.cycle(names):
                if stopping.is_set():
                    return
                db[name] += 1
                began[name].append((db[name], time.monotonic()))
                await writer.set(name, {"v": db[name]}, ttl=300)
                run.writes += 1
                await asyncio.sleep(WRITE_EVERY)  # pacing: a steady write rate, not a burst

        def staleness(name: str, served: int, now: float) -> float | None:
            for version, at in began[name]:
                if version > served:
                    return now - at
            return None

        async def read(cache: Cache, tier: LocalCache) -> None:
            while not stopping.is_set():
                for name in names:
                    hits = tier.hits
                    entry = await cache.fetch(name, loader(name), LOCAL)
                    if tier.hits == hits:
                        continue  # not an L1 answer
                    now = time.monotonic()
                    run.l1_answers += 1
                    late = staleness(name, entry.value()["v"], now)
                    if late is None:
                        continue
                    run.stale_answers += 1
                    run.samples.append((now - t0, late))
                    run.worst_staleness = max(run.worst_staleness, late)
                    if now >= t0:
                        run.worst_staleness_during_fault = max(run.worst_staleness_during_fault, late)
                    if late > max_staleness:
                        run.over_bound += 1
                await asyncio.sleep(0.005)  # pacing: two readers must not starve the writer and the listeners

        breaks_before = [t.channel_breaks for t in tiers[1:]]
        run.resubscribed = [None] * READERS

        async def watch_listeners() -> None:
            while not stopping.is_set():
                for i, tier in enumerate(tiers[1:]):
                    if run.resubscribed[i] is None and tier.channel_breaks > breaks_before[i] and tier.channel_alive():
                        run.resubscribed[i] = time.monotonic() - t0
                await asyncio.sleep(0.005)

        tasks = [loop.create_task(write()), loop.create_task(watch_listeners())]
        tasks += [loop.create_task(read(cache, tier)) for cache, tier in zip(readers, tiers[1:], strict=True)]
        await asyncio.sleep(settle_s)  # healthy traffic before the fault (the run's length, not a wait)

        def promoted() -> bool:
            try:
                return victim not in cluster.masters() and len(cluster.masters()) == len(cluster.ports) // 2
            except Exception:  # a node that answers nothing meanwhile
                return False

        t0 = time.monotonic()
        if fault == "kill":
            cluster.kill(victim)
        elif fault == "freeze":
            cluster.pause(victim, fault_s)
        else:
            proxies[victim].latency = LATENCY_S
        if fault == "latency":
            await asyncio.sleep(fault_s)
            proxies[victim].latency = 0.0
            run.fault_ended = time.monotonic() - t0
        elif fault == "freeze":  # a failover may happen meanwhile (a freeze longer than the node timeout)
            while time.monotonic() < t0 + fault_s:
                if run.promoted is None and await asyncio.to_thread(promoted):
                    run.promoted = time.monotonic() - t0
                await asyncio.sleep(0.05)
            run.fault_ended = fault_s
        else:
            limit = t0 + cluster.node_timeout_ms / 1000 + 15
            while not await asyncio.to_thread(promoted):
                if time.monotonic() > limit:
                    raise RuntimeError(f"no replica took over {victim}'s slots: {cluster.describe()}")
                await asyncio.sleep(0.05)
            run.promoted = run.fault_ended = time.monotonic() - t0
        await asyncio.sleep(after_s)  # traffic after the fault: a stale entry coming back would be served now
        stopping.set()
        await asyncio.gather(*tasks)
        run.channel_breaks = sum(t.channel_breaks for t in tiers[1:])
        run.broadcasts_failed = tiers[0].broadcasts_failed
        return run
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for cache in caches:
            await cache.aclose()
        for proxy in proxies.values():
            await proxy.aclose()


if __name__ == "__main__":
    sys.exit(main())
