"""The local tier: bounded LRU, maximum staleness, and coherence between processes through Redis pub/sub."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from cachelayer import Cache, Codec, LocalCache, cached
from cachelayer._local import ENTRY_OVERHEAD
from harness import RedisServer
from tests._doubles import FakeClock, eventually

REPO = Path(__file__).resolve().parent.parent


def namespace(prefix: str) -> str:
    """A namespace of this test's own: pub/sub channels are server-wide (no DB), so another session's caches in
    a same-named namespace would hear, and send, our invalidations."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def subscribed(admin: redis.asyncio.Redis, channel: str, listeners: int = 1) -> None:
    """Wait until Redis itself counts ``listeners`` subscribers on ``channel``: a message published after that
    reaches them (a listener that has only *sent* SUBSCRIBE may not be registered yet)."""

    async def registered() -> bool:
        counts = await admin.pubsub_numsub(channel)
        return int(counts[0][1]) >= listeners

    await eventually(registered)


def frame_bytes(value: Any) -> tuple[bytes, Any]:
    codec = Codec()
    data = codec.encode(value, expires_at=time.time() + 60)
    return data, codec.read_frame(data)


def test_lru_is_bounded_by_entries_and_bytes() -> None:
    local = LocalCache(max_entries=3, max_bytes=10_000)
    for i in range(5):
        local.put(f"k{i}", *frame_bytes(i))
    assert len(local) == 3
    assert local.get("k0") is None
    assert local.get("k4") is not None
    local.get("k2")  # most recently used now
    local.put("k5", *frame_bytes(5))
    assert local.get("k3") is None
    assert local.get("k2") is not None

    small = LocalCache(max_entries=100, max_bytes=300)
    for i in range(10):
        small.put(f"k{i}", *frame_bytes("x" * 50))
    assert small.size_bytes <= 300
    small.put("huge", *frame_bytes(os.urandom(1000).hex()))  # larger than the whole tier: not kept
    assert small.get("huge") is None


def test_an_uncompressed_body_is_not_counted_twice() -> None:
    codec = Codec()
    data = codec.encode({"n": 1}, expires_at=time.time() + 60)  # small: stored uncompressed
    frame = codec.read_frame(data)
    body = codec.serialized(frame)
    assert isinstance(body, memoryview)
    assert body.obj is data  # a view into the stored frame, no copy
    local = LocalCache()
    local.put("k", data, frame, body)
    assert local.size_bytes == ENTRY_OVERHEAD + len("k") + len(data)
    local.discard(["k"])
    assert local.size_bytes == 0


def test_without_a_live_channel_nothing_older_than_max_staleness_is_served() -> None:
    clock = FakeClock(1000.0)
    local = LocalCache(max_staleness=0.5, clock=clock)
    local.put("k", *frame_bytes(1))
    clock.now += 0.4
    assert local.get("k") is not None
    clock.now += 0.2
    assert local.get("k") is None


async def test_invalidation_reaches_another_cache_local_tier(redis_client: redis.asyncio.Redis) -> None:
    # Two Cache objects with their own local tiers stand for two processes (a real pair is tested below).
    ns = namespace("l1")
    a = Cache(redis_client, namespace=ns, local=LocalCache(max_staleness=5))
    b = Cache(redis_client, namespace=ns, local=LocalCache(max_staleness=5))
    version = {"n": 1}

    async def load() -> dict[str, int]:
        return dict(version)

    assert await b.get_or_set("k", load, tags=["t"], local=True) == {"n": 1}
    assert b.local is not None
    await subscribed(redis_client, b.keys.local_channel())
    assert b.local.channel_alive()
    # A read in flight while the channel connected is not kept in L1 (it could have missed an invalidation): this
    # one, after, is.
    assert await b.get_or_set("k", load, tags=["t"], local=True) == {"n": 1}
    hits = b.stats()["local_hits"]
    await redis_client.set(b.key("k"), b"junk")  # a Redis-level change that b's L1 does not see...
    assert await b.get_or_set("k", load, tags=["t"], local=True) == {"n": 1}  # ...served from L1
    assert b.stats()["local_hits"] == hits + 1

    version["n"] = 2
    await a.invalidate_tags("t")  # a drops the entry in Redis and broadcasts
    local_b = b.local

    def dropped() -> bool:
        return local_b.get(b.key("k")) is None

    await eventually(dropped)
    assert await b.get_or_set("k", load, tags=["t"], local=True) == {"n": 2}
    await a.aclose()
    await b.aclose()


async def test_a_write_in_one_process_replaces_the_other_local_copy(redis_client: redis.asyncio.Redis) -> None:
    ns = namespace("l1w")
    a = Cache(redis_client, namespace=ns, local=LocalCache())
    b = Cache(redis_client, namespace=ns, local=LocalCache())

    @cached(ttl=60, cache=b, local=True, name="page")
    async def page_b() -> str:
        return "old"

    assert await page_b() == "old"
    await subscribed(redis_client, b.keys.local_channel())
    await a.set("x", 1)  # warm a's publisher path
    await redis_client.delete(page_b.key())
    # a's write of the same entry: another process's @cached function of the same name
    @cached(ttl=60, cache=a, local=True, name="page")
    async def page_a() -> str:
        return "new"

    await page_a.refresh()

    async def replaced() -> bool:
        return await page_b() == "new"

    await eventually(replaced)
    assert await page_b() == "new"
    await a.aclose()
    await b.aclose()


async def test_a_write_by_the_same_process_replaces_its_own_local_copy(redis_client: redis.asyncio.Redis) -> None:
    # The broadcast skips its sender, so the writer must drop its own copy itself; a set() without local=True
    # used to leave the old value in the writer's L1 until it expired.
    cache = Cache(redis_client, namespace=namespace("l1self"), local=LocalCache())

    async def old() -> str:
        return "old"

    assert await cache.get_or_set("warm-up", old) == "old"  # starts the listener
    assert cache.local is not None
    # A read in flight while the channel connects is not kept in L1 (it may have missed an invalidation).
    await eventually(cache.local.channel_alive, what="the local tier's channel")
    assert await cache.get_or_set("k", old, local=True) == "old"
    assert cache.local.get(cache.key("k")) is not None
    await cache.set("k", "new")
    assert await cache.get_or_set("k", old, local=True) == "new"
    await cache.aclose()


async def test_channel_loss_drops_the_local_tier(tmp_path: Path) -> None:
    server = RedisServer(workdir=tmp_path / "redis").start()
    try:
        client = redis.asyncio.Redis.from_url(server.url)
        cache = Cache(client, namespace=namespace("l1c"), local=LocalCache(max_staleness=0.3))
        loads = 0

        async def load() -> int:
            nonlocal loads
            loads += 1
            return loads

        assert await cache.get_or_set("k", load, local=True) == 1
        assert cache.local is not None
        local = cache.local
        await subscribed(client, cache.keys.local_channel())
        await eventually(local.channel_alive)
        await client.client_kill_filter(_type="pubsub")

        def emptied() -> bool:
            return len(local) == 0

        await eventually(emptied)
        assert len(cache.local) == 0  # the listener noticed and dropped everything it might hold wrongly
        assert cache.stats()["local_channel_breaks"] >= 1

        # Redis frozen: the channel cannot prove itself alive, so L1 serves nothing older than max_staleness.
        assert await cache.get_or_set("k", load, local=True) == 1  # back in L1 (from Redis)
        await subscribed(client, cache.keys.local_channel())  # the listener is back: the channel can prove itself
        with server.suspended():
            # Not a synchronization: the passing of time is what is tested. 0.5 s is past max_staleness (0.3 s),
            # and a longer stall on a loaded machine only makes the entry older.
            await asyncio.sleep(0.5)  # the time passing is what is tested (see above), not a wait for an event
            assert cache.local.get(cache.key("k")) is None
        await cache.aclose()
        await client.aclose()
    finally:
        server.close()


READER = textwrap.dedent(
    """
    import asyncio, sys, time
    import redis.asyncio
    from cachelayer import Cache, LocalCache

    async def main(url, namespace):
        client = redis.asyncio.Redis.from_url(url)
        cache = Cache(client, namespace=namespace, local=LocalCache(max_staleness=5))
        async def load():
            return (await client.get(namespace + "-version")).decode()
        first = await cache.get_or_set("k", load, tags=["t"], local=True)
        print("ready", first, flush=True)
        sys.stdin.readline()  # the writer has changed the version and invalidated
        started = time.perf_counter()
        while (value := await cache.get_or_set("k", load, tags=["t"], local=True)) == first:
            await asyncio.sleep(0.001)  # a poll interval: how soon the change is seen is what is measured
        print("seen", value, round((time.perf_counter() - started) * 1000, 2), cache.stats()["local_hits"], flush=True)
        await cache.aclose()
        await client.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


@pytest.mark.slow
async def test_invalidation_between_two_real_processes(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    ns = namespace("l1p")
    await redis_client.set(ns + "-version", "v1")
    reader = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        READER,
        redis_url,
        ns,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert reader.stdout is not None
    assert reader.stdin is not None
    line = await asyncio.wait_for(reader.stdout.readline(), 30)
    assert line.split() == [b"ready", b"v1"]
    writer = Cache(redis_client, namespace=ns, local=LocalCache())
    await subscribed(redis_client, writer.keys.local_channel())  # the reader's listener
    await redis_client.set(ns + "-version", "v2")
    await writer.invalidate_tags("t")
    reader.stdin.write(b"go\n")
    await reader.stdin.drain()
    seen = (await asyncio.wait_for(reader.stdout.readline(), 30)).split()
    await reader.wait()
    assert seen[:2] == [b"seen", b"v2"]
    print(f"invalidation seen by the other process after {float(seen[2]):.2f} ms")
    # The bound this project states (docs): seen within the pub/sub delivery time; 1 s is a generous ceiling.
    assert float(seen[2]) < 1000
    await writer.aclose()
