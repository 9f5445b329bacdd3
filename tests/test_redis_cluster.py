"""A real Redis Cluster (harness/cluster.py) and the cluster building blocks of cachelayer/_redis_cluster.py.

Clusters here are private (free ports, own processes): ``cluster`` is shared by the module and only ever
resharded; tests that kill a master start a cluster of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis
from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import ClusterDownError, MaxConnectionsError, MovedError

from cachelayer._backend import StoreUnavailable
from cachelayer._redis_cluster import (
    CLIENT_ERRORS,
    BoundedRedisCluster,
    ClusterSubscription,
    GatedClusterNode,
    build_cluster_client,
    node_name_for_key,
)
from harness import CACHE_CLUSTER_ARGS, RedisClusterServer
from harness.services import cluster_or_skip
from tests._doubles import eventually

pytestmark = pytest.mark.slow

BUDGET = 0.1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    server = cluster_or_skip(workdir=tmp_path_factory.mktemp("cluster"), extra_args=CACHE_CLUSTER_ARGS)
    try:
        yield server
    finally:
        server.close()



@pytest_asyncio.fixture
async def client(cluster: RedisClusterServer) -> AsyncIterator[BoundedRedisCluster]:
    bounded = build_cluster_client(cluster.url, max_connections=8, pool_timeout=5.0)
    await bounded.initialize()
    try:
        yield bounded
    finally:
        await bounded.aclose()


def keys_of(client: RedisCluster, node_name: str, count: int, prefix: str = "k") -> list[str]:
    """``count`` keys whose slot ``node_name`` owns."""
    found: list[str] = []
    for i in range(count * 20):
        key = f"{prefix}{i}"
        if node_name_for_key(client, key) == node_name:
            found.append(key)
            if len(found) == count:
                return found
    raise AssertionError(f"not enough keys on {node_name}")


# --------------------------------------------------------------------------- the cluster itself


def test_cluster_starts_with_three_masters_and_three_replicas(cluster: RedisClusterServer) -> None:
    assert len(cluster.masters()) == 3
    assert len(cluster.replicas()) == 3
    assert set(cluster.masters()) | set(cluster.replicas()) == set(cluster.ports)
    assert cluster.url == f"redis+cluster://127.0.0.1:{cluster.ports[0]}"
    assert cluster.startup_nodes[0] == ("127.0.0.1", cluster.ports[0])
    assert cluster.is_ok()
    with redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0]) as sync_client:
        for i in range(30):
            sync_client.set(f"start:{i}", i)
        assert [int(sync_client.get(f"start:{i}") or -1) for i in range(30)] == list(range(30))


def test_close_stops_every_node_by_pid(tmp_path: Path) -> None:
    server = cluster_or_skip(workdir=tmp_path / "c")
    pids = [node.pid for node in server.nodes.values()]
    server.close()
    assert all(not node.running for node in server.nodes.values())
    for pid in pids:
        assert pid is not None
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_reshard_moves_slots_and_keys(cluster: RedisClusterServer) -> None:
    source, target = cluster.masters()[:2]
    before = {n.port: n.slot_count for n in cluster.nodes_view()}
    with redis.RedisCluster(host="127.0.0.1", port=source) as sync_client:
        for i in range(200):
            sync_client.set(f"reshard:{i}", i)
        cluster.reshard(source, target, 100)
        assert cluster.wait_until_ok(30)
        after = {n.port: n.slot_count for n in cluster.nodes_view()}
        assert after[source] == before[source] - 100
        assert after[target] == before[target] + 100
        assert [int(sync_client.get(f"reshard:{i}") or -1) for i in range(200)] == list(range(200))


# --------------------------------------------------------------------------- building blocks


async def test_node_name_for_key_matches_the_slot_owner(client: BoundedRedisCluster) -> None:
    for i in range(200):
        key = f"cachelayer:wp:{{user:{i}}}:v"
        assert node_name_for_key(client, key) == client.get_node_from_key(key).name
    assert node_name_for_key(client, b"bytes-key") == client.get_node_from_key(b"bytes-key").name
    fresh = build_cluster_client("redis://127.0.0.1:1", max_connections=1, pool_timeout=0.1)
    assert node_name_for_key(fresh, "k") == "unknown"  # nothing known before discovery, and no I/O


async def test_300_concurrent_calls_wait_for_one_of_8_connections(client: BoundedRedisCluster) -> None:
    async def one(i: int) -> bytes | None:
        await client.set(f"pool:{i}", str(i))
        return await client.get(f"pool:{i}")

    results = await asyncio.gather(*(one(i) for i in range(300)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert results == [str(i).encode() for i in range(300)]
    for node in client.get_nodes():
        assert len(node._connections) <= 8


async def test_pool_timeout_still_bounds_the_wait(cluster: RedisClusterServer) -> None:
    bounded = build_cluster_client(cluster.url, max_connections=1, pool_timeout=0.05)
    await bounded.initialize()
    try:
        key = "pool-timeout:{a}"
        slow = asyncio.create_task(bounded.blpop([key], timeout=0.5))  # holds the node's only connection
        await eventually(bounded.get_node_from_key(key).gate.semaphore.locked, what="the BLPOP to hold it")
        with pytest.raises(MaxConnectionsError):
            await bounded.get(key)
        assert await slow is None
        assert await bounded.get(key) is None  # and the connection is free again
    finally:
        await bounded.aclose()


def every_node(client: BoundedRedisCluster) -> list[ClusterNode]:
    manager = client.nodes_manager
    in_slots = [node for nodes in manager.slots_cache.values() for node in nodes]
    return [*manager.nodes_cache.values(), *manager.startup_nodes.values(), *in_slots, manager.default_node]


async def test_every_node_is_gated_from_discovery_on_and_after_a_moved(client: BoundedRedisCluster) -> None:
    assert all(type(node) is GatedClusterNode for node in every_node(client))
    assert all(node.gate.limit == 8 for node in every_node(client))
    manager = client.nodes_manager
    newcomer = "127.0.0.2:7999"  # a MOVED to a node the map does not know: stock builds a plain node for it
    await manager.move_slot(MovedError(f"1234 {newcomer}"))
    assert manager.slots_cache[1234] == [manager.nodes_cache[newcomer]]
    assert manager.slots_cache[1234][0] is manager.nodes_cache[newcomer]
    assert all(type(node) is GatedClusterNode for node in every_node(client))


async def warm_masters(client: BoundedRedisCluster) -> dict[str, list[object]]:
    """A few connections on every master; returns them by node name."""
    await asyncio.gather(*(client.set(f"warm:{i}", i) for i in range(64)))
    return {node.name: list(node._connections) for node in client.get_primaries()}


def still_connected(client: BoundedRedisCluster, before: dict[str, list[object]], but: str = "") -> bool:
    nodes = {node.name: node for node in client.get_primaries()}
    return all(
        list(nodes[name]._connections) == connections
        and all(c.is_connected and not c.should_reconnect() for c in nodes[name]._connections)
        for name, connections in before.items() if name != but
    )


async def test_clusterdown_on_one_shard_does_not_close_the_others(
    client: BoundedRedisCluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = await warm_masters(client)
    key = "down:{a}"
    victim = node_name_for_key(client, key)
    stock = GatedClusterNode.execute_command
    failed: list[str] = []

    async def down_once(node: GatedClusterNode, *args: object, **kwargs: object) -> object:
        if node.name == victim and not failed:
            failed.append(node.name)
            raise ClusterDownError("CLUSTERDOWN The cluster is down")
        return await stock(node, *args, **kwargs)

    monkeypatch.setattr(GatedClusterNode, "execute_command", down_once)
    assert await client.get(key) is None  # stock closes the whole client here, then retries
    assert failed == [victim]
    assert still_connected(client, before, but=victim)
    assert client.topology_known
    await eventually(lambda: client.refreshes == 1, what="the background refresh asked for instead")
    assert client.discoveries == 1


async def test_a_pipeline_meeting_a_failing_node_does_not_close_the_others(
    client: BoundedRedisCluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = await warm_masters(client)
    key = "pipe:{a}"
    victim = node_name_for_key(client, key)
    stock = GatedClusterNode.execute_pipeline
    failed: list[str] = []

    async def fail_once(node: GatedClusterNode, commands: object) -> bool:
        if node.name == victim and not failed:
            failed.append(node.name)
            raise redis.ConnectionError("connection reset by peer")
        return await stock(node, commands)

    monkeypatch.setattr(GatedClusterNode, "execute_pipeline", fail_once)
    pipe = client.pipeline(transaction=False)
    pipe.get(key)
    pipe.get("pipe:other")
    assert await pipe.execute() == [None, None]  # stock closes the whole client here, then retries
    assert failed == [victim]
    assert still_connected(client, before, but=victim)
    await eventually(lambda: client.refreshes == 1, what="the background refresh asked for instead")


async def test_a_refresh_keeps_the_connections_of_nodes_whose_role_did_not_change(
    client: BoundedRedisCluster,
) -> None:
    before = await warm_masters(client)
    client.request_refresh()
    await eventually(lambda: client.refreshes == 1, what="the background refresh")
    assert still_connected(client, before)  # stock marks every connection of every node for reconnect
    assert all(type(node) is GatedClusterNode for node in every_node(client))


async def test_aclose_from_outside_a_request_closes_every_node(cluster: RedisClusterServer) -> None:
    bounded = build_cluster_client(cluster.url, max_connections=4, pool_timeout=1.0)
    await warm_masters(bounded)
    nodes = every_node(bounded)
    await bounded.aclose()
    assert not any(c.is_connected for node in nodes for c in node._connections)
    assert not bounded.topology_known


async def test_command_table_is_loaded_once(cluster: RedisClusterServer) -> None:
    cluster.topology_calls(reset=True)
    bounded = build_cluster_client(cluster.url, max_connections=4, pool_timeout=1.0)
    try:
        await asyncio.gather(*(bounded.set(f"once:{i}", i) for i in range(50)))
        bounded._initialize = True  # what a connection error does: the next call "re-initializes"
        await asyncio.gather(*(bounded.get(f"once:{i}") for i in range(50)))
        assert bounded.command_table_loads == 1
        assert bounded.discoveries == 1
        assert cluster.topology_calls()["command"] == 1
    finally:
        await bounded.aclose()


async def test_sharded_subscriber_gets_spublish_quickly(client: BoundedRedisCluster) -> None:
    channels = [f"cachelayer:wp:{{item:{i}}}:ready" for i in range(6)]  # spread over the masters
    subscription = ClusterSubscription(client, sharded=True)
    received: asyncio.Queue[tuple[str, bytes, float]] = asyncio.Queue()

    async def reader() -> None:
        while True:
            message = await subscription.next_message(timeout=5.0)
            if message is not None:
                received.put_nowait((*message, time.monotonic()))

    try:
        await subscription.subscribe(*channels)
        task = asyncio.create_task(reader())
        delays = []
        for channel in channels:
            sent = time.monotonic()
            await client.execute_command("SPUBLISH", channel, b"ready")
            got_channel, data, at = await asyncio.wait_for(received.get(), 5.0)
            assert (got_channel, data) == (channel, b"ready")
            delays.append(at - sent)
        assert sorted(delays)[len(delays) // 2] < 0.05, delays
        before = subscription.alive_at
        await subscription.ping()
        assert await asyncio.wait_for(_moves(lambda: subscription.alive_at > before), 5.0)
        task.cancel()
    finally:
        await subscription.aclose()


async def _moves(predicate: object) -> bool:
    assert callable(predicate)
    for _ in range(500):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return False


async def test_classic_subscription_hears_publish_from_any_node(client: BoundedRedisCluster) -> None:
    subscription = ClusterSubscription(client, sharded=False)
    try:
        await subscription.subscribe("cachelayer:wp:invalidate")
        for node in client.get_primaries():  # PUBLISH on any node reaches every node's subscribers
            await client.execute_command("PUBLISH", "cachelayer:wp:invalidate", node.name, target_nodes=node)
            message = await subscription.next_message(timeout=5.0)
            assert message == ("cachelayer:wp:invalidate", node.name.encode())
        assert await subscription.next_message(timeout=0.05) is None
    finally:
        await subscription.aclose()
    with pytest.raises(StoreUnavailable):
        await subscription.next_message(timeout=0.01)


# --------------------------------------------------------------------------- failover


async def test_failover_is_isolated_and_refreshes_are_bounded(own_cluster: RedisClusterServer) -> None:
    cluster = own_cluster
    bounded = build_cluster_client(cluster.url, max_connections=16, pool_timeout=1.0, min_refresh_interval=0.5)
    await bounded.initialize()
    victim = cluster.masters()[0]
    victim_name = f"127.0.0.1:{victim}"
    healthy_names = [f"127.0.0.1:{port}" for port in cluster.masters() if port != victim]
    healthy_keys = [key for name in healthy_names for key in keys_of(bounded, name, 20, prefix=f"{name}:")]
    victim_keys = keys_of(bounded, victim_name, 20, prefix="victim:")
    for key in healthy_keys + victim_keys:
        await bounded.set(key, key)
    # replication is asynchronous: the replica that takes over must hold the victim's keys before the crash
    assert await bounded.execute_command("WAIT", 1, 10_000, target_nodes=bounded.get_node(node_name=victim_name)) == 1
    sharded = ClusterSubscription(bounded, sharded=True)
    classic = ClusterSubscription(bounded, sharded=False)
    await sharded.subscribe(victim_keys[0])
    await classic.subscribe(victim_keys[1])  # the classic connection lives on the victim too
    cluster.topology_calls(reset=True)

    elapsed: list[float] = []
    failed = 0
    stop = asyncio.Event()

    async def load(key: str) -> None:
        nonlocal failed
        while not stop.is_set():
            began = time.monotonic()
            try:
                assert await asyncio.wait_for(bounded.get(key), BUDGET) == key.encode()
            except (TimeoutError, *CLIENT_ERRORS):
                failed += 1
            elapsed.append(time.monotonic() - began)
            await asyncio.sleep(0.01)

    workers = [asyncio.create_task(load(key)) for key in healthy_keys[::4]]
    try:
        killed_at = time.monotonic()
        cluster.kill(victim)
        # a pipeline that meets the dead master fails, and only it: stock redis-py would close the whole client
        # (every node's connections, then a discovery with COMMAND on the request path)
        pipe = bounded.pipeline(transaction=False)
        pipe.get(healthy_keys[1])
        pipe.get(victim_keys[3])
        with pytest.raises(redis.ConnectionError):
            await pipe.execute()
        with pytest.raises(StoreUnavailable):  # both subscriptions learn of it
            await sharded.next_message(timeout=10.0)
        with pytest.raises(StoreUnavailable):
            await classic.next_message(timeout=10.0)
        promoted = await asyncio.to_thread(
            cluster.wait_until, lambda: victim not in cluster.masters() and len(cluster.masters()) == 3, 20.0)
        assert promoted, cluster.describe()
        assert time.monotonic() - killed_at < cluster.node_timeout_ms / 1000 + 5
        await asyncio.to_thread(cluster.wait_until_ok, 20.0)
        # the victim's keys answer again (from the promoted replica) once a background refresh saw it; a call
        # cut off by its budget asks for one, as RedisBackend does on every failure (redis-py only notices the
        # errors it sees itself)
        deadline = time.monotonic() + 20
        outcome: object = None
        while time.monotonic() < deadline:
            try:
                outcome = await asyncio.wait_for(bounded.get(victim_keys[2]), BUDGET)
                if outcome == victim_keys[2].encode():
                    break
            except (TimeoutError, *CLIENT_ERRORS) as exc:
                outcome = exc
            bounded.request_refresh()  # after any wrong answer too: it says so in the failure message below
            await asyncio.sleep(0.05)
        else:
            owner = node_name_for_key(bounded, victim_keys[2])
            pytest.fail(f"the failed shard's keys never answered again: last {outcome!r}, client routes to {owner}, "
                        f"refreshes {bounded.refreshes} (failed {bounded.refresh_failures}), "
                        f"masters {cluster.masters()}, {cluster.describe()}")
        fault_seconds = time.monotonic() - killed_at
    finally:
        stop.set()
        await asyncio.gather(*workers)
        await sharded.aclose()
        await classic.aclose()

    counts = cluster.topology_calls()
    try:
        assert counts["command"] == 0, counts
        # at most one refresh per interval (+ the in-flight one), however many calls failed
        assert counts["cluster|slots"] <= fault_seconds / bounded.min_refresh_interval + 3, (counts, fault_seconds)
        assert bounded.command_table_loads == 1
        assert bounded.discoveries == 1
        over = [e for e in elapsed if e > 2 * BUDGET]
        assert len(over) <= max(1, len(elapsed) // 100), (len(over), len(elapsed), max(elapsed))
        assert failed <= len(elapsed) // 20, (failed, len(elapsed))

        # a new sharded subscription follows the new topology
        again = ClusterSubscription(bounded, sharded=True)
        try:
            await again.subscribe(victim_keys[0])
            await bounded.execute_command("SPUBLISH", victim_keys[0], b"after")
            assert await again.next_message(timeout=5.0) == (victim_keys[0], b"after")
        finally:
            await again.aclose()
    finally:
        await bounded.aclose()
