"""One master's trouble stays on that master for multi-key calls (issue 19, part 1).

A real 3 + 3 Redis Cluster of the test's own (stopped by PID), one master frozen with SIGSTOP. Its node timeout is
long (30 s), so no replica is promoted while it is frozen: the frozen master's keys stay unreachable, and what is
tested is the client's split of each multi-key call by master, each part within its own budget and held against
its own master's breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio.cluster import ClusterNode
from redis.cluster import PRIMARY, REPLICA
from redis.crc import key_slot
from redis.exceptions import MovedError

from cachelayer import Cache, CircuitBreaker, Guard, RedisBackend, StoreUnavailable
from cachelayer._redis_clients import RedisClient
from cachelayer._redis_cluster import (
    BoundedRedisCluster,
    GatedClusterNode,
    _GatedNodesManager,
    build_cluster_client,
    node_name_for_key,
)
from harness import CACHE_CLUSTER_ARGS, LatencyProxy, RedisClusterServer
from harness.services import cluster_or_skip
from tests._doubles import FakeClock, eventually

BUDGET = 0.25
KEYS_PER_MASTER = 4


@pytest.fixture
def slow_failover_cluster(tmp_path: Path) -> Iterator[RedisClusterServer]:
    server = cluster_or_skip(workdir=tmp_path / "cluster", node_timeout_ms=30_000, extra_args=CACHE_CLUSTER_ARGS)
    try:
        yield server
    finally:
        server.close()


def _spread(backend: RedisBackend, prefix: str) -> dict[str, list[str]]:
    """KEYS_PER_MASTER keys on every master: node name -> keys."""
    client = backend.client
    by_node: dict[str, list[str]] = {}
    i = 0
    while len(by_node) < 3 or min(len(keys) for keys in by_node.values()) < KEYS_PER_MASTER:
        key = f"{prefix}:{{k{i}}}"
        keys = by_node.setdefault(node_name_for_key(client, key), [])
        if len(keys) < KEYS_PER_MASTER:
            keys.append(key)
        i += 1
    return by_node


async def _stored_on_every_master(backend: RedisBackend, prefix: str) -> tuple[dict[str, list[str]], list[str]]:
    """Connected, KEYS_PER_MASTER keys stored on every master (each holding its own name): by node, and all."""
    await backend.connect()
    by_node = _spread(backend, f"{prefix}-{uuid.uuid4().hex[:8]}")
    everything = [key for keys in by_node.values() for key in keys]
    await backend.set_many([(key, key.encode(), 60_000) for key in everything])
    return by_node, everything


async def _replicated(backend: RedisBackend, nodes: Iterable[str]) -> None:
    """Every master's writes reached its replica (replication is asynchronous): the replica that takes over
    holds the keys."""
    client: Any = backend.client
    for node in nodes:
        assert await client.execute_command("WAIT", 1, 10_000, target_nodes=client.get_node(node_name=node)) == 1


@pytest_asyncio.fixture
async def two_strikes(slow_failover_cluster: RedisClusterServer) -> AsyncIterator[RedisBackend]:
    """A backend on the slow-failover cluster whose breakers open after 2 failures and stay open 30 s."""
    backend = RedisBackend.cluster_from_url(
        slow_failover_cluster.url, timeout=BUDGET, breaker=CircuitBreaker(failure_threshold=2, cooldown=30.0)
    )
    try:
        yield backend
    finally:
        await backend.aclose()


def _port(node: str) -> int:
    return int(node.rsplit(":", 1)[1])


def _opened(backend: RedisBackend, node: str) -> int:
    return backend.guard.target(f"Redis Cluster node {node}").breaker.opened_count


@pytest.mark.slow
async def test_a_frozen_master_costs_only_its_own_keys_and_its_own_breaker(
    slow_failover_cluster: RedisClusterServer, two_strikes: RedisBackend
) -> None:
    backend = two_strikes
    by_node, everything = await _stored_on_every_master(backend, "shards")
    frozen = sorted(by_node)[0]
    healthy = [node for node in by_node if node != frozen]
    with slow_failover_cluster.nodes[_port(frozen)].suspended():
        # Enough calls to open the frozen master's breaker (2 failures) and to probe it: every one of them
        # answers the healthy masters' keys.
        for _ in range(6):
            found = await backend.get_many(everything)
            for key, value in zip(everything, found, strict=True):
                expected = None if key in by_node[frozen] else key.encode()
                assert value == expected, (key, value)
        assert _opened(backend, frozen) >= 1

        # Writes and invalidations land on the healthy masters, and say that a part failed (the cache then
        # retries the whole call).
        with pytest.raises(StoreUnavailable, match=frozen):
            await backend.set_many([(key, b"new", 60_000) for key in everything])
        for node in healthy:
            assert await backend.get_many(by_node[node]) == [b"new"] * KEYS_PER_MASTER
        with pytest.raises(StoreUnavailable, match=frozen):
            await backend.delete(*everything)
        for node in healthy:
            assert await backend.get_many(by_node[node]) == [None] * KEYS_PER_MASTER

        # Every key on the frozen master: an outage of the whole call.
        with pytest.raises(StoreUnavailable):
            await backend.get_many(by_node[frozen])

    for node in healthy:
        assert _opened(backend, node) == 0, f"the healthy master {node}'s breaker opened"
    assert backend.stats()["breakers_open"] == 1  # the frozen one's, until its cooldown ends


@pytest.mark.slow
async def test_cache_get_many_serves_the_healthy_shards_while_one_master_is_frozen(
    slow_failover_cluster: RedisClusterServer,
) -> None:
    cluster = slow_failover_cluster
    backend = RedisBackend.cluster_from_url(cluster.url, timeout=BUDGET)
    cache = Cache(backend, namespace=f"shards-{uuid.uuid4().hex[:8]}")
    try:
        await backend.connect()
        names = [f"n{i}" for i in range(30)]
        assert await cache.set_many({name: {"name": name} for name in names})
        nodes = {name: node_name_for_key(backend.client, cache.key(name)) for name in names}
        frozen = sorted(set(nodes.values()))[0]
        with cluster.nodes[_port(frozen)].suspended():
            got = await cache.get_many(names, default="missing")
        for name, value in zip(names, got, strict=True):
            assert value == ("missing" if nodes[name] == frozen else {"name": name}), name

        async def all_served() -> bool:
            return await cache.get_many(names, default="missing") == [{"name": name} for name in names]

        await eventually(all_served, 10.0, "every shard to answer again")
    finally:
        await cache.aclose()
        await backend.aclose()  # given to the cache, not owned by it


@pytest.fixture
def failover_cluster(tmp_path: Path) -> Iterator[RedisClusterServer]:
    server = cluster_or_skip(workdir=tmp_path / "cluster", extra_args=CACHE_CLUSTER_ARGS)  # node timeout 2 s
    try:
        yield server
    finally:
        server.close()


@pytest.mark.slow
async def test_after_a_failover_the_dead_masters_breaker_is_retired(failover_cluster: RedisClusterServer) -> None:
    cluster = failover_cluster
    states: list[tuple[str, str, str | None]] = []
    backend = RedisBackend.cluster_from_url(
        cluster.url, timeout=BUDGET, breaker=CircuitBreaker(failure_threshold=2, cooldown=0.5)
    )
    backend.guard.listeners.append(lambda store, state, reason: states.append((store, state, reason)))
    try:
        by_node, everything = await _stored_on_every_master(backend, "failover")
        # Else the promoted replica may lack the dead master's last writes (CI beside other work once lost them):
        # its keys would then never answer again.
        await _replicated(backend, by_node)
        dead = sorted(by_node)[0]
        cluster.kill(_port(dead))
        last: list[object] = []

        async def every_key_answered() -> bool:
            try:
                found = await backend.get_many(everything)
            except StoreUnavailable as exc:
                last[:] = [exc]
                return False
            last[:] = [[key for key, value in zip(everything, found, strict=True) if value != key.encode()]]
            return found == [key.encode() for key in everything]

        async def dead_breaker_opened() -> bool:
            with contextlib.suppress(StoreUnavailable):
                await backend.get_many(everything)
            return _opened(backend, dead) >= 1

        await eventually(dead_breaker_opened, 20.0, "the dead master's breaker to open")
        try:
            await eventually(every_key_answered, 30.0, "a replica to be promoted and the client to follow it")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last answer (error, or keys missing): {last}; {cluster.describe()}") from exc
        # The client follows the new map: the dead master serves no slot in it, and its breaker is retired at once.
        stats = backend.stats()
        assert stats["breaker_state"] == "closed", stats
        assert stats["breakers_open"] == 0, stats
        # Listeners (the metrics, OpenTelemetry) were told: the dead master's last state is closed.
        told = [state for store, state, _ in states if store == f"Redis Cluster node {dead}"]
        assert told[0] == "open", states
        assert told[-1] == "closed", states
    finally:
        await backend.aclose()


@pytest.mark.slow
async def test_a_ping_answers_while_one_master_is_frozen_and_opens_only_its_breaker(
    slow_failover_cluster: RedisClusterServer, two_strikes: RedisBackend
) -> None:
    backend = two_strikes
    by_node, _ = await _stored_on_every_master(backend, "ping")
    frozen = sorted(by_node)[0]
    with slow_failover_cluster.nodes[_port(frozen)].suspended():
        for _ in range(4):
            await backend.ping()  # the other masters answer: no StoreUnavailable
        assert _opened(backend, frozen) >= 1
    assert backend.guard.breaker.state == "closed"  # key-less calls share no breaker with the frozen master
    for node in by_node:
        if node != frozen:
            assert _opened(backend, node) == 0


# -- issue 19, part 3: the client follows a failover within a second of Redis's promotion ----------------------------


def _replica_of(cluster: RedisClusterServer, node: str) -> int:
    replica = cluster.replica_of(_port(node))
    assert replica is not None, cluster.describe()
    return replica


def _all_closed_or_retired(backend: RedisBackend) -> bool:
    stats = backend.stats()  # retires the breakers of nodes that serve no slot any more
    return bool(stats["breaker_state"] == "closed" and stats["breakers_open"] == 0)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill", "freeze"])
async def test_after_a_failover_every_breaker_is_closed_or_retired_within_a_second_of_the_promotion(
    own_cluster: RedisClusterServer, fault: str
) -> None:
    cluster = own_cluster
    # A cool-down longer than the test: the failed master's breaker never probes, so what closes or retires the
    # breakers and brings the keys back is the client following the promotion.
    backend = RedisBackend.cluster_from_url(
        cluster.url, timeout=BUDGET, breaker=CircuitBreaker(failure_threshold=2, cooldown=60.0)
    )
    told: list[tuple[str, str]] = []
    backend.guard.listeners.append(lambda store, state, reason: told.append((store, state)))
    stop = asyncio.Event()

    async def load() -> None:  # callers keep asking, as in production: their failures are what the client hears
        while not stop.is_set():
            with contextlib.suppress(StoreUnavailable):
                await backend.get_many(everything)
            await asyncio.sleep(0.01)  # paces the callers (their load), not a wait for an event

    try:
        by_node, everything = await _stored_on_every_master(backend, f"promotion-{fault}")
        await _replicated(backend, by_node)
        failed = sorted(by_node)[0]
        replica = _replica_of(cluster, failed)
        caller = asyncio.create_task(load())
        fault_at = time.time()
        if fault == "kill":
            cluster.kill(_port(failed))
        else:
            cluster.nodes[_port(failed)].suspend()
        try:
            promoted_at = await asyncio.to_thread(cluster.wait_for_promotion, replica, 30.0, since=fault_at)
            assert promoted_at is not None, cluster.describe()

            async def recovered() -> bool:
                if not _all_closed_or_retired(backend):
                    return False
                try:
                    found = await backend.get_many(everything)
                except StoreUnavailable:
                    return False
                return found == [key.encode() for key in everything]

            await eventually(recovered, 10.0, "every key answered, every breaker closed or retired")
            followed = time.time() - promoted_at
        finally:
            cluster.nodes[_port(failed)].resume()  # a no-op for a dead node
            stop.set()
            await caller
        # the failed master's breaker did open, and was retired (told closed), not probed
        mine = [state for store, state in told if store == f"Redis Cluster node {failed}"]
        assert mine[0] == "open", told
        assert mine[-1] == "closed", told
        assert "half_open" not in mine, told
        assert followed <= 1.0, f"the client followed the promotion {followed:.2f} s after it"
    finally:
        await backend.aclose()


@pytest.mark.slow
async def test_a_master_promoted_again_is_not_held_back_by_its_old_breaker(own_cluster: RedisClusterServer) -> None:
    """Master A dies (its breaker opens, for a minute here), B takes over, A comes back as B's replica; then B dies
    and A is promoted: A's keys answer within a second, though nothing reads the backend's stats() meanwhile (which
    retires the breakers of nodes that serve no slot): the breakers follow every change of the map."""
    cluster = own_cluster
    backend = RedisBackend.cluster_from_url(
        cluster.url, timeout=BUDGET, breaker=CircuitBreaker(failure_threshold=2, cooldown=60.0)
    )
    try:
        by_node, _ = await _stored_on_every_master(backend, "again")
        await _replicated(backend, by_node)
        first = sorted(by_node)[0]
        keys = by_node[first]

        async def answered() -> bool:
            with contextlib.suppress(StoreUnavailable):
                return await backend.get_many(keys) == [key.encode() for key in keys]
            return False

        for failed in (_port(first), _replica_of(cluster, first)):  # A, then B (A's replica, promoted)
            heir = cluster.replica_of(failed)
            assert heir is not None, cluster.describe()
            failed_at = time.time()
            cluster.kill(failed)

            async def breaker_opened(node: str = f"127.0.0.1:{failed}") -> bool:
                await answered()
                return _opened(backend, node) >= 1

            await eventually(breaker_opened, 10.0, "the dead master's breaker to open")
            promoted_at = await asyncio.to_thread(cluster.wait_for_promotion, heir, 30.0, since=failed_at)
            assert promoted_at is not None, cluster.describe()
            await eventually(answered, 10.0, f"the keys answered by {heir}")
            assert time.time() - promoted_at <= 1.0, f"{heir} answered {time.time() - promoted_at:.2f} s late"
            cluster.restart(failed)  # back as a replica of the promoted one
            assert await asyncio.to_thread(
                cluster.wait_until, lambda: cluster.is_ok() and cluster.replicas_in_sync(), 30.0
            ), cluster.describe()
            await _replicated(backend, [f"127.0.0.1:{heir}"])
        assert _all_closed_or_retired(backend)
    finally:
        await backend.aclose()


@pytest.mark.slow
async def test_the_failover_watch_alone_follows_a_promotion(own_cluster: RedisClusterServer) -> None:
    """Throttled refreshes out of the way (one a minute): the map follows the promotion because the client asks
    the failing master's replica ``ROLE`` every ``failover_poll_interval`` and puts it in its master's place."""
    cluster = own_cluster

    def client() -> RedisClient:
        return build_cluster_client(cluster.url, max_connections=8, pool_timeout=1.0, min_refresh_interval=0.0)

    backend = RedisBackend(client, timeout=BUDGET)
    try:
        by_node, everything = await _stored_on_every_master(backend, "watch")
        await _replicated(backend, by_node)
        bounded: Any = backend.client
        # A new cluster lists a replica in CLUSTER SLOTS once the node asked heard (by gossip) that it replicated
        # something: the map learns the replicas from a refresh after the writes. Then the throttle goes up to a
        # minute.
        def replicas_known() -> bool:
            if all(len(nodes) == 2 for nodes in bounded.nodes_manager.slots_cache.values()):
                return True
            bounded.request_refresh()
            return False

        await eventually(replicas_known, 20.0, "a map with every master's replica")
        bounded.min_refresh_interval = 60.0
        dead = sorted(by_node)[0]
        replica = _replica_of(cluster, dead)
        cluster.kill(_port(dead))
        killed_at = time.time()
        with contextlib.suppress(StoreUnavailable):  # a failure: the client starts watching the dead master
            await backend.get_many(everything)
        promoted_at = await asyncio.to_thread(cluster.wait_for_promotion, replica, 30.0, since=killed_at)
        assert promoted_at is not None, cluster.describe()

        async def answered() -> bool:
            with contextlib.suppress(StoreUnavailable):
                return await backend.get_many(by_node[dead]) == [key.encode() for key in by_node[dead]]
            return False

        await eventually(answered, 10.0, "the dead master's keys answered by the promoted replica")
        assert time.time() - promoted_at <= 1.0
        assert bounded.promotions_seen == 1
        assert node_name_for_key(bounded, by_node[dead][0]) == f"127.0.0.1:{replica}"
        assert _all_closed_or_retired(backend)
    finally:
        await backend.aclose()


@pytest.mark.slow
async def test_a_refresh_asks_the_next_node_when_one_is_frozen(
    slow_failover_cluster: RedisClusterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stock discovery asks the nodes one after the other and waits for each: a frozen node asked first held a
    refresh until ``refresh_timeout`` (1 s), which then failed. Each node now has ``refresh_attempt_timeout``."""
    cluster = slow_failover_cluster
    client = build_cluster_client(cluster.url, max_connections=8, pool_timeout=1.0, min_refresh_interval=0.0)
    try:
        await client.initialize()
        frozen = f"127.0.0.1:{cluster.masters()[0]}"
        manager = client.nodes_manager
        # the frozen node first, and kept first: stock shuffles the startup nodes before asking them
        manager.startup_nodes = {name: manager.startup_nodes[name]
                                 for name in sorted(manager.startup_nodes, key=lambda name: name != frozen)}
        monkeypatch.setattr(random, "shuffle", lambda nodes: None)
        with cluster.nodes[_port(frozen)].suspended():
            began = time.monotonic()
            client.request_refresh()
            await eventually(lambda: client.refreshes + client.refresh_failures == 1, 5.0, "the refresh to end")
            took = time.monotonic() - began
        assert client.refreshes == 1, f"the refresh failed after {took:.2f} s"
        assert took < client.refresh_timeout
    finally:
        await client.aclose()


# -- without a cluster: the map patch of a promotion ---------------------------------------------------------------


def _mapped_client() -> tuple[BoundedRedisCluster, _GatedNodesManager, ClusterNode, ClusterNode, ClusterNode]:
    """A client (never connected) whose map says: slots 0-99 on master A (replica R), 100-199 on master B."""
    client = BoundedRedisCluster(host="127.0.0.1", port=1)
    manager = client.nodes_manager
    assert isinstance(manager, _GatedNodesManager)
    a, r, b = (GatedClusterNode("127.0.0.1", port, kind, gate=client._new_gate())
               for port, kind in ((1, PRIMARY), (2, REPLICA), (3, PRIMARY)))
    manager.nodes_cache = {node.name: node for node in (a, r, b)}
    first: list[ClusterNode] = [a, r]  # shared by the slots of a range, as stock builds them
    second: list[ClusterNode] = [b]
    manager.slots_cache = {slot: first if slot < 100 else second for slot in range(200)}
    manager.default_node = a
    client._topology_known = True
    return client, manager, a, r, b


async def test_a_promotion_puts_the_replica_in_its_masters_place_for_all_its_slots() -> None:
    client, manager, a, r, b = _mapped_client()
    assert manager.promote(a.name, r)
    assert all(manager.slots_cache[slot] == [r, a] for slot in range(100))
    assert all(manager.slots_cache[slot] == [b] for slot in range(100, 200))
    assert (r.server_type, a.server_type) == (PRIMARY, REPLICA)
    assert client.get_default_node() is r
    assert {node.name for node in client.get_primaries()} == {r.name, b.name}
    assert not manager.promote(a.name, r)  # nothing left to move
    await client.aclose()


async def test_a_refresh_that_has_not_heard_of_a_promotion_does_not_undo_it() -> None:
    client, manager, a, r, _ = _mapped_client()
    assert client._promote(a.name, r)
    assert client.promotions_seen == 1
    asked = client._refresh_task  # the refresh it asked for: nothing listens on these ports, so not run here
    assert asked is not None
    asked.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asked
    # A refresh from a node the promotion has not reached yet: the old map again.
    manager.slots_cache = {slot: [a, r] for slot in range(100)}
    a.server_type, r.server_type = PRIMARY, REPLICA
    client._keep_promotions()
    assert manager.slots_cache[0][0] is r
    assert r.server_type == PRIMARY
    await client.aclose()


# -- address remapping: one master through a proxy (what benchmarks/cluster.py slows) -------------------------------


async def test_a_remapped_master_is_reached_through_its_proxy_also_after_a_moved(
    redis_cluster: RedisClusterServer,
) -> None:
    master = redis_cluster.masters()[0]
    async with LatencyProxy(redis_cluster.host, master) as proxy:
        backend = RedisBackend.cluster_from_url(
            redis_cluster.url, timeout=1.0,
            address_remap=lambda address: (address[0], proxy.port) if address[1] == master else address,
        )
        try:
            await backend.connect()
            client: Any = backend.client
            proxied = f"127.0.0.1:{proxy.port}"
            names = [f"remap-{uuid.uuid4().hex[:8]}-{i}" for i in range(60)]
            through = next(name for name in names if node_name_for_key(client, name) == proxied)
            direct = next(name for name in names if node_name_for_key(client, name) != proxied)
            sent = proxy.bytes_up
            await backend.set(through, b"v", 60_000)
            assert await backend.get(through) == b"v"
            assert proxy.bytes_up > sent
            # A MOVED names the master as the cluster announces it (its own port): followed through the proxy too
            # (stock redis-py remaps only the slot map).
            slot = key_slot(direct.encode())
            await client.nodes_manager.move_slot(MovedError(f"{slot} 127.0.0.1:{master}"))
            assert client.nodes_manager.slots_cache[slot][0].name == proxied
            assert f"127.0.0.1:{master}" not in client.nodes_manager.nodes_cache
        finally:
            await backend.aclose()


# -- a healthy master's breaker and one stall: the calls in flight together time out together --------------------


def test_timeouts_that_ran_side_by_side_count_as_one_failure() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=2.0, clock=clock)
    for _ in range(10):  # one stall: every call in flight (begun 0.1 s ago) times out at once
        breaker.record_failure("TimeoutError", began=clock() - 0.1)
    assert breaker.state == "closed"
    for _ in range(2):  # a store that stays silent: each timeout is of a call begun after the last failure
        clock.advance(0.1)
        breaker.record_failure("TimeoutError", began=clock() - 0.1 + 1e-6)
    assert breaker.state == "open"
    assert breaker.opened_count == 1


def test_errors_that_are_not_timeouts_count_one_by_one() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=2.0, clock=clock)
    for _ in range(3):  # connection refused: certain, however many calls learn it at once
        breaker.record_failure("ConnectionError")
    assert breaker.state == "open"


async def test_a_stall_that_times_out_every_call_in_flight_does_not_open_the_breaker() -> None:
    guard = Guard(timeout=0.05, breaker=CircuitBreaker(failure_threshold=3, cooldown=60.0))
    target = guard.target("a healthy master")

    async def stalled() -> None:
        await asyncio.Event().wait()  # never answers: the guard's 50 ms budget ends each call

    async def one_call() -> None:
        with contextlib.suppress(StoreUnavailable):
            await guard.call(target, "GET", stalled)

    await asyncio.gather(*(one_call() for _ in range(20)))
    assert guard.store_errors == 20
    assert target.breaker.state == "closed"
    for _ in range(3):  # a master that stays silent: call after call
        await one_call()
    assert target.breaker.state == "open"
