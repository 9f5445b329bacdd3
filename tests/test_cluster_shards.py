"""One master's trouble stays on that master for multi-key calls (issue 19, part 1).

A real 3 + 3 Redis Cluster of the test's own (stopped by PID), one master frozen with SIGSTOP. Its node timeout is
long (30 s), so no replica is promoted while it is frozen: the frozen master's keys stay unreachable, and what is
tested is the client's split of each multi-key call by master, each part within its own budget and held against
its own master's breaker.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from cachelayer import Cache, CircuitBreaker, RedisBackend, StoreUnavailable
from cachelayer._redis_cluster import node_name_for_key
from harness import CACHE_CLUSTER_ARGS, RedisClusterServer
from harness.services import cluster_or_skip
from tests._doubles import eventually

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
        dead = sorted(by_node)[0]
        cluster.kill(_port(dead))

        async def every_key_answered() -> bool:
            try:
                found = await backend.get_many(everything)
            except StoreUnavailable:
                return False
            return found == [key.encode() for key in everything]

        async def dead_breaker_opened() -> bool:
            with contextlib.suppress(StoreUnavailable):
                await backend.get_many(everything)
            return _opened(backend, dead) >= 1

        await eventually(dead_breaker_opened, 20.0, "the dead master's breaker to open")
        await eventually(every_key_answered, 30.0, "a replica to be promoted and the client to follow it")
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
