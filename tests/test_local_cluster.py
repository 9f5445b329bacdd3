"""The local tier on a real cluster under one node's fault (issue 16, the local-tier bullet).

* The staleness bound: with the master that carries the invalidation channel killed, frozen or slow, no reader's
  L1 serves a value more than ``max_staleness`` after the write that replaced it began; every listener leaves the
  faulty node and subscribes elsewhere within ``max_staleness`` (after a kill: before any promotion); no broadcast
  is lost. The driver is the benchmark's (``benchmarks/l1_channel.py``, ``run_fault``).
* A read whose reply arrives after the invalidation of a newer write does not enter L1 (the tier's epoch), with a
  reply-only delay on the key's master and the reader's channel on another node.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from benchmarks.l1_channel import FAULTS, READERS, run_fault
from cachelayer import Cache, EntryPolicy, LocalCache, RedisBackend
from cachelayer._redis_cluster import build_cluster_client, node_name_for_key
from harness import RedisClusterServer
from harness.proxy import LatencyProxy
from tests._doubles import eventually

pytestmark = pytest.mark.slow

LOCAL = EntryPolicy(local=True, ttl=300)


@pytest.mark.parametrize("fault", FAULTS)
async def test_no_l1_answer_outlives_max_staleness_under_one_node_fault(
    own_cluster: RedisClusterServer, fault: str
) -> None:
    run = await run_fault(own_cluster, fault, fault_s=2.0, settle_s=1.0, after_s=2.0, max_staleness=1.0)
    print(f"\n{fault}: {run.row()} resubscribed {run.resubscribed}")
    assert run.l1_answers > 1000, run  # the readers did read through their L1s
    assert run.writes > 50, run
    assert run.over_bound == 0, (run.worst_staleness, sorted(run.samples, key=lambda s: -s[1])[:5])
    assert run.worst_staleness <= run.max_staleness
    assert run.broadcasts_failed == 0  # the writer published through another master
    # Every listener noticed (an unanswered ping, a broken connection) and moved to another node promptly.
    assert run.channel_breaks >= READERS
    assert all(at is not None and at <= run.max_staleness for at in run.resubscribed), run.resubscribed
    if fault == "kill":
        assert run.promoted is not None
        assert all(at is not None and at < run.promoted for at in run.resubscribed), (run.resubscribed, run.promoted)


async def test_a_reply_that_arrives_after_an_invalidation_stays_out_of_l1(redis_cluster: RedisClusterServer) -> None:
    """The reader reaches every node through a proxy; the key's master answers it 60 ms late (requests are not
    delayed), while its channel, on another node, is not. The writer overwrites the key after the reader's GET
    reached Redis: the reader gets the old value (it asked first) but its L1 must not keep it."""
    proxies = {port: await LatencyProxy(redis_cluster.host, port).start() for port in redis_cluster.ports}
    namespace = f"l1reply-{uuid.uuid4().hex[:8]}"

    def remapped() -> Any:
        return build_cluster_client(
            redis_cluster.url, max_connections=8, pool_timeout=1.0,
            address_remap=lambda address: (address[0], proxies[address[1]].port) if address[1] in proxies else address,
        )

    tier = LocalCache(max_staleness=1.0)
    reader = Cache(RedisBackend(remapped, timeout=1.0), namespace=namespace, local=tier, owns_client=True)
    writer = Cache.from_url(redis_cluster.url, namespace=namespace, timeout=1.0, local=LocalCache())
    try:
        await reader.connect()
        await writer.connect()
        client: Any = reader.backend.client  # type: ignore[attr-defined]
        channel_node = node_name_for_key(client, reader.keys.local_channel())
        names = [f"r{i}" for i in range(200)]
        names = [n for n in names if node_name_for_key(client, reader.key(n)) != channel_node][:10]
        by_name = {proxy.port: proxy for proxy in proxies.values()}

        async def never() -> dict[str, int]:
            raise AssertionError("the value is in the store")

        await writer.set("warm", {"v": 0})
        await reader.fetch("warm", never, LOCAL)  # starts the reader's listener
        await eventually(tier.channel_alive, 10.0, "the reader's channel")
        raced = 0
        for name in names:
            await writer.set(name, {"v": 1}, ttl=300)
            proxy = by_name[int(node_name_for_key(client, reader.key(name)).rsplit(":", 1)[1])]
            proxy.downstream_latency = 0.06
            sent = proxy.bytes_up
            read = asyncio.create_task(reader.fetch(name, never, LOCAL))
            await eventually(lambda p=proxy, s=sent: p.bytes_up > s, 5.0, "the GET to reach Redis")
            epoch = tier.epoch
            await writer.set(name, {"v": 2}, ttl=300)  # returns after its broadcast
            answer = (await read).value()
            proxy.downstream_latency = 0.0
            if answer == {"v": 1} and tier.epoch != epoch:
                raced += 1  # the invalidation reached the reader before the GET's reply
            held = tier.get(reader.key(name))
            assert held is None or held.data == (await writer.backend.get(writer.key(name))), name
        assert raced >= len(names) // 2, raced  # the race happened in most trials
    finally:
        await reader.aclose()
        await writer.aclose()
        for proxy in proxies.values():
            await proxy.aclose()
