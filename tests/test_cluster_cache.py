"""The cache on a real Redis Cluster (issue 10, items 2-5): wake-ups between processes, a notifier that survives
its reader's errors, blocking per-node pools, the local tier's channel (latency and failover), failure isolation.

The 50 ms figures are the issue's targets. They are asserted on medians of many samples (a loaded 2-core machine
can stall one sample for longer than that); each test prints its p99 and asserts a looser bound on it that only a
missed message (the polling safety net taking over) would break.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from cachelayer import Cache, EntryPolicy, LocalCache, StampedePolicy, StoreConnectError
from cachelayer._backend import Message, StoreUnavailable, Subscription
from cachelayer._lease import _ready_channel
from cachelayer._redis_cluster import node_name_for_key
from harness import CACHE_CLUSTER_ARGS, ClusterUnavailable, RedisClusterServer, cluster_supported
from harness.services import skip_or_fail
from tests._doubles import CountingLoader, eventually

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.05  # the 50 ms


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_script(script: str, *args: str, limit: float = 120.0) -> Any:
    """Run ``script`` in a new Python process; its last stdout line is JSON."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])



@pytest.fixture(params=["cluster", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The session cluster, or the machine's standalone Redis (CACHELAYER_TEST_REDIS_URL) for comparison."""
    if request.param == "cluster":
        cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")
        return cluster.url
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest_asyncio.fixture
async def caches() -> AsyncIterator[list[Cache]]:
    """Caches a test builds (append them); closed after the test."""
    made: list[Cache] = []
    yield made
    for cache in made:
        await cache.aclose()


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns()}"


# --------------------------------------------------------------------------- (a) wake-ups between processes

LOADER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from redis.asyncio import RedisCluster
    from cachelayer import Cache
    from cachelayer._lease import _ready_channel

    async def main(url, namespace, count):
        cache = Cache.from_url(url, namespace=namespace, timeout=1.0)
        await cache.connect()
        client = cache.backend.client
        stored_at = []

        async def subscribers(channel):
            if isinstance(client, RedisCluster):  # asked of the channel's shard (redis-py asks a random node)
                owner = client.get_node_from_key(channel)
                reply = await client.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=owner)
                return sum(n for _, n in reply)
            return sum(n for _, n in await client.pubsub_numsub(channel))

        for i in range(count):
            channel = _ready_channel(cache.key(f"w{i}"))

            async def load():
                # Hold the lease until the other process waits on the ready channel (bounded).
                deadline = time.monotonic() + 10
                while await subscribers(channel) < 1 and time.monotonic() < deadline:
                    await asyncio.sleep(0.002)
                stored_at.append(time.time())
                return i

            assert await cache.get_or_set(f"w{i}", load) == i
        print(json.dumps(stored_at))
        await cache.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


async def test_a_waiter_in_another_process_is_woken_within_50ms(store_url: str, caches: list[Cache]) -> None:
    """Another process loads N keys one by one; this one waits for each (the lease is held there). Polling starts
    at 0.3 s, so only the "value ready" message can deliver within 50 ms. Median < 50 ms asserted, p99 printed
    (and < 0.3 s: no waiter was left to the polling safety net)."""
    namespace, count = unique("wake"), 30
    poll_only_late = StampedePolicy(poll_initial=0.3, poll_max=0.5, lease_wait=10.0)
    cache = Cache.from_url(store_url, namespace=namespace, timeout=1.0)
    caches.append(cache)
    await cache.connect()
    loader_process = asyncio.create_task(run_script(LOADER_SCRIPT, store_url, namespace, str(count)))

    async def must_not_load() -> int:
        raise AssertionError("the waiter loaded: the lease holder is the other process")

    got_at: list[float | None] = []
    for i in range(count):
        key = cache.key(f"w{i}")

        async def lease_held(key: str = key) -> bool:
            _, held = await cache.backend.poll(key)
            return held

        await eventually(lease_held, 60.0, f"the other process's lease on w{i}")
        entry = await cache.fetch(f"w{i}", must_not_load, EntryPolicy(stampede=poll_only_late))
        got_at.append(time.time() if entry.outcome == "miss" else None)  # "hit": it landed before we waited
        assert entry.value() == i
    stored_at: list[float] = await loader_process
    delays = [got - stored for got, stored in zip(got_at, stored_at, strict=True) if got is not None]
    print(f"\nwake-up delay over {len(delays)} waits: median {statistics.median(delays) * 1000:.1f} ms, "
          f"p99 {percentile(delays, 0.99) * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms")
    assert len(delays) >= count * 0.8, f"only {len(delays)} of {count} calls waited"
    assert statistics.median(delays) < TARGET, delays
    assert percentile(delays, 0.99) < poll_only_late.poll_initial, delays


# --------------------------------------------------------------------------- (b) the notifier survives its reader


class FlakySubscription:
    """Wraps a real subscription; :meth:`fail` makes the reader's pending ``next_message`` raise ``error``."""

    def __init__(self, inner: Subscription, error: BaseException | None) -> None:
        self.inner = inner
        self.error = error
        self.injected = asyncio.Event()

    @property
    def alive_at(self) -> float:
        return self.inner.alive_at

    @alive_at.setter
    def alive_at(self, value: float) -> None:  # settable, as the protocol's attribute is
        self.inner.alive_at = value

    async def subscribe(self, *channels: str) -> None:
        await self.inner.subscribe(*channels)

    async def unsubscribe(self, *channels: str) -> None:
        await self.inner.unsubscribe(*channels)

    async def next_message(self, timeout: float) -> Message | None:  # noqa: ASYNC109 - the protocol's
        reading = asyncio.ensure_future(self.inner.next_message(timeout))
        injected = asyncio.ensure_future(self.injected.wait())
        done, _ = await asyncio.wait({reading, injected}, return_when=asyncio.FIRST_COMPLETED)
        injected.cancel()
        if reading not in done:
            reading.cancel()
            assert self.error is not None
            raise self.error
        return reading.result()

    async def ping(self) -> None:
        await self.inner.ping()

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("error", [RuntimeError("pubsub connection not set"), KeyError("type"),
                                   StoreUnavailable("connection lost")], ids=lambda e: type(e).__name__)
async def test_b_notifier_survives_a_reader_error_and_resubscribes(
    redis_cluster: RedisClusterServer, caches: list[Cache], error: BaseException
) -> None:
    """Any error of the reader wakes the waiters (they poll), and the next wait subscribes afresh and is woken
    by pub/sub again (polling starts at 1 s here, so a wake within 0.5 s was a message)."""
    namespace = unique("notify")
    holder = Cache.from_url(redis_cluster.url, namespace=namespace, timeout=1.0)
    waiter = Cache.from_url(redis_cluster.url, namespace=namespace, timeout=1.0)
    caches += [holder, waiter]
    await holder.connect()
    await waiter.connect()
    made: list[FlakySubscription] = []
    real_subscription = waiter.backend.subscription

    def flaky_subscription(*, sharded: bool = False) -> Subscription:
        made.append(FlakySubscription(real_subscription(sharded=sharded), error if not made else None))
        return made[-1]

    waiter.backend.subscription = flaky_subscription  # type: ignore[method-assign]
    release = asyncio.Event()
    stored_at: list[float] = []

    async def slow_load() -> str:
        await release.wait()
        stored_at.append(time.time())
        return "value"

    async def must_not_load() -> str:
        raise AssertionError("the waiter loaded")

    key = holder.key("k")
    loading = asyncio.create_task(holder.get_or_set("k", slow_load))
    await eventually(lambda: holder.stats()["loads_in_flight"] == 1, 10.0, "the holder's load")
    waiting = asyncio.create_task(waiter.fetch(
        "k", must_not_load, EntryPolicy(stampede=StampedePolicy(poll_initial=1.0, poll_max=1.0, lease_wait=20.0))))
    notifier = await _notifier_of(waiter)
    await eventually(lambda: len(made) == 1 and notifier._reader is not None, 10.0, "the first subscription")
    client: Any = waiter.backend.client  # type: ignore[attr-defined]
    channel = _ready_channel(key)

    async def subscribed() -> bool:  # asked of the channel's shard (redis-py asks a random node)
        owner = client.get_node_from_key(channel)
        reply = await client.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=owner)
        return bool(sum(n for _, n in reply) >= 1)

    await eventually(subscribed, 10.0, "the ready channel subscribed")
    made[0].injected.set()  # the reader's next_message raises `error`
    await eventually(lambda: notifier.resets == 1, 10.0, "the notifier's reset")
    # The waiter was woken, polled (lease still held) and subscribed again on a fresh subscription.
    await eventually(lambda: len(made) == 2, 10.0, "a new subscription")
    await eventually(subscribed, 10.0, "the ready channel subscribed again")
    assert not waiting.done()
    release.set()
    entry = await asyncio.wait_for(waiting, 20.0)
    woke_at = time.time()
    assert (entry.outcome, entry.value()) == ("miss", "value")
    assert await loading == "value"
    assert woke_at - stored_at[0] < 0.5, "woken by polling, not by the new subscription"
    assert notifier.resets == 1


async def _notifier_of(cache: Cache) -> Any:
    await eventually(lambda: cache._pipeline is not None, 10.0, "the cache's load state")
    assert cache._pipeline is not None
    return cache._pipeline.flights.notifier


# --------------------------------------------------------------------------- (c) blocking per-node pools


async def test_c_300_cold_calls_with_8_connections_all_stored(
    redis_cluster: RedisClusterServer, caches: list[Cache]
) -> None:
    """Per-node pools wait for a free connection (pool_timeout) instead of raising MaxConnectionsError. The budget
    is longer than the pool wait: the point is the pool, not the latency of 300 calls through 8 connections on a
    busy box (beside a CPU hog, a call queued behind the others once ran past a 1 s budget)."""
    cache = Cache.from_url(redis_cluster.url, namespace=unique("cold"), max_connections=8, pool_timeout=5.0,
                           timeout=10.0)
    caches.append(cache)
    await cache.connect()

    async def call(i: int) -> int:
        async def load() -> int:
            await asyncio.sleep(0.01)
            return i * 3

        return await cache.get_or_set(f"cold:{i}", load)

    results = await asyncio.gather(*(call(i) for i in range(300)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert results == [i * 3 for i in range(300)]
    stats = cache.stats()
    assert stats["store_errors"] == 0, stats  # a MaxConnectionsError would be one (and a dropped write)
    assert stats["loads"] == 300
    stored = await cache.backend.get_many([cache.key(f"cold:{i}") for i in range(300)])
    # Every write reached the store: stored, or refused by its ticket. On a starved box (a CPU hog beside the suite)
    # a load's lease can lapse before its renewal gets one of the 8 connections; its fill is then refused, by
    # design (when in doubt, miss), never dropped by the pool (that would be a store error above).
    assert sum(value is not None for value in stored) + stats["revoked_fills"] == 300, stats
    client: Any = cache.backend.client  # type: ignore[attr-defined]
    for node in client.get_nodes():
        assert len(node._connections) <= 8, node.name


# --------------------------------------------------------------------------- (d) the local tier on a cluster

WRITER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from cachelayer import Cache, LocalCache

    async def main(url, namespace, count):
        cache = Cache.from_url(url, namespace=namespace, timeout=1.0, local=LocalCache())
        await cache.connect()
        sent_at = {}
        for i in range(count):
            sent_at[f"inv{i}"] = time.time()
            await cache.set(f"inv{i}", {"v": 2})
            await asyncio.sleep(0.02)  # pacing: one write at a time, not a burst
        print(json.dumps(sent_at))
        await cache.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)

LOCAL = EntryPolicy(local=True)


async def test_d_invalidations_reach_another_process_l1_within_50ms(
    redis_cluster: RedisClusterServer, caches: list[Cache]
) -> None:
    """Another process writes 60 keys this process holds in its L1; each broadcast is timed from just before the
    write to this process dropping the entry. Median < 50 ms asserted; p99 printed and asserted < 50 ms unless
    the loop itself stalled (then < 0.25 s: the message arrived, the machine was busy)."""
    namespace, count = unique("l1"), 60
    local = LocalCache(max_staleness=1.0)
    cache = Cache.from_url(redis_cluster.url, namespace=namespace, timeout=1.0, local=local)
    caches.append(cache)
    await cache.connect()
    async def nothing() -> None:
        return None

    await cache.fetch("warm-up", nothing)  # the first fetch starts the listener
    # Before filling: a read in flight while the channel (re)connects is not kept in L1 (an invalidation may have
    # been missed in the gap).
    await eventually(local.channel_alive, 10.0, "the local tier's channel")
    for i in range(count):
        await cache.set(f"inv{i}", {"v": 1})

        async def old() -> dict[str, int]:
            return {"v": 1}

        assert (await cache.fetch(f"inv{i}", old, LOCAL)).value() == {"v": 1}
    assert len(local) == count
    dropped_at: dict[str, float] = {}
    apply = local._apply

    def timed_apply(payload: bytes) -> None:
        apply(payload)
        for name in payload.partition(b"\n")[2].decode().split("\n"):
            dropped_at.setdefault(name, time.time())

    local._apply = timed_apply  # type: ignore[method-assign]
    stall = LoopStallMonitor()
    with stall:
        sent_at: dict[str, float] = await run_script(WRITER_SCRIPT, redis_cluster.url, namespace, str(count))
        await eventually(lambda: len(dropped_at) >= count, 10.0, "every invalidation")
    delays = [dropped_at[cache.key(name)] - at for name, at in sent_at.items()]
    p99 = percentile(delays, 0.99)
    print(f"\nL1 invalidation over {len(delays)} writes: median {statistics.median(delays) * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms; worst loop stall {stall.worst * 1000:.0f} ms")
    assert statistics.median(delays) < TARGET, delays
    assert p99 < (TARGET if stall.worst < TARGET else 0.25), (p99, stall.worst)
    assert len(local) == 0
    for i in range(count):
        async def new() -> dict[str, int]:
            raise AssertionError("stored by the other process")

        assert (await cache.fetch(f"inv{i}", new, LOCAL)).value() == {"v": 2}


class LoopStallMonitor:
    """The worst lateness of a 10 ms timer on this loop while active: evidence of a loaded machine."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            began = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.perf_counter() - began - 0.01)

    def __enter__(self) -> LoopStallMonitor:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_d_local_tiers_empty_and_recover_when_the_channel_node_fails(
    own_cluster: RedisClusterServer, caches: list[Cache]
) -> None:
    """SIGKILL the master carrying the invalidation channel: both local tiers drop everything at once, come back
    (channel alive again), and stay coherent: a write by one reaches the other's L1."""
    namespace = unique("l1fo")
    tiers = [LocalCache(max_staleness=1.0), LocalCache(max_staleness=1.0)]
    first, second = (Cache.from_url(own_cluster.url, namespace=namespace, timeout=0.1, local=tier) for tier in tiers)
    caches += [first, second]
    await first.connect()
    await second.connect()
    client: Any = first.backend.client  # type: ignore[attr-defined]
    channel_node = node_name_for_key(client, first.keys.local_channel())
    victim = int(channel_node.rsplit(":", 1)[1])
    names = [f"k{i}" for i in range(40)]
    for name in names:
        await first.set(name, 1)

    async def filled() -> bool:
        # Read every key into both tiers until both hold all of them with live channels: the invalidations of the
        # writes above may reach a tier after it read a key (late on a loaded machine), and drop it again.
        for cache in (first, second):
            for name in names:
                async def one() -> int:
                    return 1

                await cache.fetch(name, one, LOCAL)
        return all(t.channel_alive() and len(t) == len(names) for t in tiers)

    await eventually(filled, 20.0, "both L1s full, both channels alive")

    own_cluster.kill(victim)
    await eventually(lambda: all(len(t) == 0 and t.channel_breaks >= 1 for t in tiers), 10.0, "both L1s to empty")
    recover_by = own_cluster.node_timeout_ms / 1000 + 10
    await eventually(lambda: all(t.channel_alive() for t in tiers), recover_by, "both channels back")
    await eventually(lambda: asyncio.to_thread(own_cluster.is_ok), 30.0, "the cluster to be ok")
    # The channels come back within ~0.1 s, long before the failover: wait until the replica is promoted and both
    # clients' maps say so (a read before that reaches the dead master and fails open).
    await eventually(lambda: asyncio.to_thread(lambda: victim not in own_cluster.masters()), 30.0, "the promotion")

    def map_moved_on() -> bool:
        victim_name = f"127.0.0.1:{victim}"
        for cache in (first, second):
            cache_client: Any = cache.backend.client  # type: ignore[attr-defined]
            cache_client.request_refresh()
            if any(node.name == victim_name for node in cache_client.get_primaries()):
                return False
        return True

    await eventually(map_moved_on, 30.0, "both clients' maps to leave the dead master")

    # Coherent again: each reads into its L1, then a write by one reaches the other's L1.
    for round_, (writer, reader) in enumerate(((first, second), (second, first)), start=2):
        reader_tier = reader.local
        assert reader_tier is not None
        for name in names[:10]:
            async def current(value: int = round_ - 1) -> int:
                return value

            await writer.fetch(name, current, LOCAL)
            await reader.fetch(name, current, LOCAL)

        for name in names[:10]:
            await writer.set(name, round_)
        keys = [reader.key(n) for n in names[:10]]
        await eventually(lambda t=reader_tier, k=keys: all(t.get(key) is None for key in k), 5.0,
                    "the other L1 to drop the written keys")
        for name in names[:10]:
            async def stale() -> int:
                return -1

            assert (await reader.fetch(name, stale, LOCAL)).value() == round_


# --------------------------------------------------------------------------- (e) failure isolation


async def test_e_one_dead_master_fails_open_only_its_keys(
    own_cluster: RedisClusterServer, caches: list[Cache]
) -> None:
    """SIGKILL one master under a steady read load: keys of healthy masters keep hitting (>= 95%), 0 caller
    errors, 0 wrong values, every call within 2x its 0.1 s budget (a call over it is excused only when this
    loop itself stalled that long, i.e. the machine, not the cache, was late), and the dead shard's keys hit
    again after the promotion."""
    budget = 0.1
    cache = Cache.from_url(own_cluster.url, namespace=unique("iso"), timeout=budget)
    caches.append(cache)
    await cache.connect()
    client: Any = cache.backend.client  # type: ignore[attr-defined]
    victim = own_cluster.masters()[0]
    victim_name = f"127.0.0.1:{victim}"
    count = 300
    owner = {i: node_name_for_key(client, cache.key(f"item:{i}")) for i in range(count)}
    assert sum(1 for name in owner.values() if name == victim_name) >= 30

    def loader(i: int) -> Callable[[], Awaitable[int]]:
        async def load() -> int:
            return i * 7

        return load

    for i in range(count):
        await cache.get_or_set(f"item:{i}", loader(i))
    samples: list[tuple[float, bool, str, float, bool]] = []  # began, victim's key, outcome, elapsed, wrong
    errors: list[BaseException] = []
    lags: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def lag_monitor() -> None:
        while not stop.is_set():
            began = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append((began, time.monotonic() - began - 0.01))

    async def reader(seed: int) -> None:
        n = seed
        while not stop.is_set():
            n = (n * 1103515245 + 12345) % 2**31
            i = n % count
            began = time.monotonic()
            try:
                entry = await cache.fetch(f"item:{i}", loader(i))
            except Exception as exc:  # a caller error: what the cache promises never happens
                errors.append(exc)
                continue
            samples.append((began, owner[i] == victim_name, entry.outcome, time.monotonic() - began,
                            entry.value() != i * 7))
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(lag_monitor()), *(asyncio.create_task(reader(s)) for s in range(1, 13))]
    try:
        await eventually(lambda: len(samples) > 200, 20.0, "a steady load")
        killed_at = time.monotonic()
        own_cluster.kill(victim)

        def victim_hits_again() -> bool:
            recent = [s for s in samples if s[0] > killed_at + 0.5 and s[1]][-20:]
            return len(recent) == 20 and all(s[2] == "hit" for s in recent)

        await eventually(lambda: asyncio.to_thread(own_cluster.wait_until, lambda: victim not in own_cluster.masters()
                                              and len(own_cluster.masters()) == 3, 0.5), 30.0, "the promotion")
        await eventually(victim_hits_again, 20.0, "the dead shard's keys to hit again")
        recovered_at = time.monotonic()
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    fault = [s for s in samples if killed_at <= s[0] <= recovered_at]
    healthy = [s for s in fault if not s[1]]
    hit_ratio = sum(s[2] == "hit" for s in healthy) / len(healthy)
    over = [s for s in fault if s[3] > 2 * budget]
    # A monitor sleep [at, at + 10 ms + lag] that overlaps the call and was late by the call's excess: the loop
    # (the machine) was not running, the cache was not slow.
    unexplained = [s for s in over if max((lag for at, lag in lags if at <= s[0] + s[3] and at + 0.01 + lag >= s[0]),
                                          default=0.0) < s[3] - 2 * budget]
    print(f"\nfault {recovered_at - killed_at:.1f} s: {len(fault)} calls, healthy hit ratio {hit_ratio:.3f}, "
          f"{len(over)} over 2x budget ({len(unexplained)} without a loop stall), "
          f"max {max(s[3] for s in fault) * 1000:.0f} ms, worst loop lag {max(lag for _, lag in lags) * 1000:.0f} ms")
    assert not errors, errors[:3]
    assert not any(s[4] for s in samples), "wrong values"
    assert hit_ratio >= 0.95
    assert not unexplained, [(round(s[3], 3), s[2]) for s in unexplained[:10]]
    assert recovered_at - killed_at < own_cluster.node_timeout_ms / 1000 + 15


async def test_e_a_tagged_write_whose_tag_shard_is_dead_stores_nothing(
    own_cluster: RedisClusterServer, caches: list[Cache]
) -> None:
    """A value and its tag live on different masters. With the tag's master dead, the write must not store the
    value untagged (it once did: the cluster pipeline sent the SET and the tag write at once), or invalidate_tags would
    never reach it; with every tag's master alive, the write is stored and invalidated as usual. A load records its
    tags before it takes its ticket: with the tag's master dead it gets no ticket, so it stores nothing either."""
    cache = Cache.from_url(own_cluster.url, namespace=unique("tags"), timeout=0.5)
    caches.append(cache)
    await cache.connect()
    client: Any = cache.backend.client  # type: ignore[attr-defined]
    victim = own_cluster.masters()[0]
    victim_name = f"127.0.0.1:{victim}"
    candidates = [f"n{i}" for i in range(2000)]
    name = next(n for n in candidates if node_name_for_key(client, cache.key(n)) != victim_name)
    dead_tag = next(t for t in candidates if node_name_for_key(client, cache.keys.tag_key(t)) == victim_name)
    live_tag = next(t for t in candidates if node_name_for_key(client, cache.keys.tag_key(t)) != victim_name)
    absent = object()

    own_cluster.kill(victim)
    await cache.set(name, {"v": 1}, ttl=60, tags=[dead_tag, live_tag])  # fails open
    assert await cache.get(name, default=absent) is absent
    load = CountingLoader()
    assert await cache.get_or_set(name, load, ttl=60, tags=[dead_tag, live_tag]) == {"version": 1}
    assert await cache.get(name, default=absent) is absent  # no ticket, no fill

    await cache.set(name, {"v": 2}, ttl=60, tags=[live_tag])
    assert await cache.get(name) == {"v": 2}
    assert await cache.invalidate_tags(live_tag) == 1
    assert await cache.get(name, default=absent) is absent


# --------------------------------------------------------------------------- (f) down when the process starts


async def test_f_a_cluster_down_at_start_up_fails_open_then_serves_once_up(
    tmp_path: Path, caches: list[Cache]
) -> None:
    """A process (re)started while its whole cluster is down, the 3 a.m. case: ``connect()`` says so
    (:class:`StoreConnectError`, for an application that wants to know), every call fails open (redis-py's
    cluster client raises ``RedisClusterException``, which is not a ``RedisError``, when no node answers
    discovery; it once escaped to the caller), and once the cluster is up the same cache stores values again,
    without a restart."""
    reason = cluster_supported()
    if reason is not None:
        skip_or_fail(reason)
    cluster = RedisClusterServer(workdir=tmp_path / "cluster", extra_args=CACHE_CLUSTER_ARGS)  # ports, no servers
    try:
        cache = Cache.from_url(cluster.url, namespace=unique("down"), timeout=0.2)
        caches.append(cache)
        with pytest.raises(StoreConnectError) as refused:
            await cache.connect()
        assert refused.value.store == f"127.0.0.1:{cluster.ports[0]}"
        assert not await cache.ping()
        load = CountingLoader()
        assert await cache.get_or_set("k", load) == {"version": 1}
        assert await cache.get_or_set("k", load) == {"version": 2}  # nothing was stored
        assert await cache.get("k", default="dflt") == "dflt"
        await cache.set("k", {"version": 0})
        assert await cache.delete("k") is False
        assert await cache.get_many(["k", "j"], default=0) == [0, 0]
        assert cache.stats()["store_errors"] >= 1

        try:
            await asyncio.to_thread(cluster.start)
        except ClusterUnavailable as exc:
            skip_or_fail(str(exc))

        async def stored() -> bool:
            value = await cache.get_or_set("after", load)
            return bool(await cache.get("after") == value)

        await eventually(stored, 30.0, "values stored once the cluster is up")
        assert await cache.ping()
    finally:
        cluster.close()
