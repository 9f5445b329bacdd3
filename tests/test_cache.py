"""The manager against the real Redis (DB 15): plain operations, TTLs, jitter, negative caching, tags."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio

from cachelayer import MISSING, Cache, Codec, StampedePolicy
from cachelayer._codec import HEADER_SIZE
from tests._doubles import FakeClock


def unique(prefix: str) -> str:
    """A namespace of this test's own: exact counts must not see another test session's keys."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture
async def cache(redis_client: redis.asyncio.Redis) -> AsyncIterator[Cache]:
    c = Cache(redis_client, namespace=unique("t"), default_ttl=60)
    yield c
    await c.aclose()


async def test_set_get_delete(cache: Cache) -> None:
    assert await cache.get("a") is None
    await cache.set("a", {"x": [1, 2, "三"]})
    assert await cache.get("a") == {"x": [1, 2, "三"]}
    assert await cache.delete("a") is True
    assert await cache.get("a", "dflt") == "dflt"
    assert await cache.delete("a") is False


async def test_values_are_compressed_frames(cache: Cache, redis_client: redis.asyncio.Redis) -> None:
    await cache.set("big", {"items": [{"title": "壁纸", "n": i} for i in range(200)]})
    stored = await redis_client.get(cache.key("big"))
    assert stored is not None
    assert stored[:2] == b"CL"
    assert stored[HEADER_SIZE : HEADER_SIZE + 4] == b"\x28\xb5\x2f\xfd"  # a zstd frame after the header
    stats = cache.stats()
    assert stats["bytes_stored"] < stats["bytes_raw"]


async def test_negative_caching_tells_none_from_miss(cache: Cache) -> None:
    calls = 0

    async def load() -> None:
        nonlocal calls
        calls += 1

    assert await cache.get_or_set("none", load) is None
    assert await cache.get_or_set("none", load) is None
    assert calls == 1
    assert await cache.get("none", MISSING) is None
    assert await cache.get("absent", MISSING) is MISSING


async def test_none_ttl(redis_client: redis.asyncio.Redis) -> None:
    cache = Cache(redis_client, namespace=unique("t"), default_ttl=600, none_ttl=5, stale_ttl=0, jitter=0)
    await cache.get_or_set("n", _none)
    await cache.get_or_set("v", _one)
    assert 4 <= await redis_client.pttl(cache.key("n")) / 1000 <= 5
    assert 590 <= await redis_client.pttl(cache.key("v")) / 1000 <= 600


async def _none() -> None:
    return None


async def _one() -> int:
    return 1


async def test_ttl_jitter_bounds_and_stale_window(redis_client: redis.asyncio.Redis) -> None:
    clock = FakeClock(1_900_000_000.0)  # logical time (Redis keeps real TTLs; values carry logical expiry)
    cache = Cache(redis_client, namespace=unique("t"), default_ttl=100, stale_ttl=50, jitter=0.1, clock=clock)
    logical, physical = [], []
    for i in range(200):
        await cache.set(f"k{i}", i)
        logical.append(await cache.ttl(f"k{i}"))
        physical.append(await redis_client.pttl(cache.key(f"k{i}")) / 1000)
    assert all(90 <= t <= 110 for t in logical)
    assert max(logical) - min(logical) > 10  # spread, not all at one edge
    assert all(139 <= p <= 160 for p in physical)  # ttl (jittered) + stale_ttl


async def test_per_call_ttl(redis_client: redis.asyncio.Redis) -> None:
    clock = FakeClock(1_900_000_000.0)
    cache = Cache(redis_client, namespace=unique("t"), default_ttl=100, jitter=0, clock=clock)
    await cache.set("k", 1, ttl=5)
    assert await cache.ttl("k") == pytest.approx(5, abs=0.01)
    clock.now += 6
    assert await cache.get("k") is None  # stale: not returned by get
    assert await cache.ttl("k") == pytest.approx(-1, abs=0.01)
    assert await cache.ttl("absent") is None


async def test_get_many_set_many(cache: Cache) -> None:
    await cache.set_many({"a": 1, "b": None, "c": [3]})
    assert await cache.get_many(["a", "b", "c", "d"], MISSING) == [1, None, [3], MISSING]


async def test_get_or_set_loads_once(cache: Cache) -> None:
    calls = 0

    async def load() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)  # stands for the load's work, so the 200 callers overlap it
        return {"v": calls}

    results = await asyncio.gather(*(cache.get_or_set("k", load) for _ in range(200)))
    assert calls == 1
    assert all(r == {"v": 1} for r in results)
    assert cache.stats()["loads"] == 1


async def test_entry_gives_stored_bytes(cache: Cache) -> None:
    value = {"items": [{"t": "风景", "i": i} for i in range(100)]}

    async def load() -> Any:
        return value

    miss = await cache.get_or_set_entry("e", load)
    hit = await cache.get_or_set_entry("e", load)
    assert (miss.outcome, hit.outcome) == ("miss", "hit")
    import orjson
    import zstandard

    assert miss.body() == hit.body() == orjson.dumps(value)
    frame = hit.zstd_frame()
    assert frame is not None
    assert zstandard.ZstdDecompressor().decompress(frame) == orjson.dumps(value)
    assert hit.value() == value


async def test_tags_invalidate_exactly_their_keys(cache: Cache) -> None:
    await cache.set("w1", 1, tags=["wallpaper:1", "list"])
    await cache.set("w2", 2, tags=["wallpaper:2", "list"])
    await cache.set("other", 3)
    assert await cache.invalidate_tags("wallpaper:1") == 1
    assert await cache.get_many(["w1", "w2", "other"], MISSING) == [MISSING, 2, 3]
    assert await cache.invalidate_tags("list") == 1  # w1 is already gone
    assert await cache.get_many(["w1", "w2", "other"], MISSING) == [MISSING, MISSING, 3]
    assert await cache.invalidate_tags("never-used") == 0
    assert cache.stats()["invalidations"] == 2


async def test_tag_sets_expire_after_their_keys(redis_client: redis.asyncio.Redis) -> None:
    cache = Cache(redis_client, namespace=unique("t"), jitter=0)
    await cache.set("w1", 1, ttl=10, stale_ttl=0, tags=["t"])
    await cache.set("w2", 2, ttl=1000, stale_ttl=0, tags=["t"])
    await cache.set("w3", 3, ttl=5, stale_ttl=0, tags=["t"])  # GT: a shorter key never shortens the set
    assert await redis_client.ttl(cache.keys.tag_key("t")) >= 1000


async def test_clear_uses_scan_and_spares_other_namespaces(redis_client: redis.asyncio.Redis) -> None:
    mine = Cache(redis_client, namespace=unique("mine"))
    other = Cache(redis_client, namespace=unique("other"))
    for i in range(1200):
        await mine.set(f"k{i}", i)
    await other.set("k", 1)
    assert await mine.clear() == 1200
    assert await mine.get("k1") is None
    assert await other.get("k") == 1


async def test_msgpack_codec(redis_client: redis.asyncio.Redis) -> None:
    cache = Cache(redis_client, namespace=unique("mp"), codec=Codec("msgpack"))
    await cache.set("k", {"a": [1, 2.5, "x", None, True]})
    assert await cache.get("k") == {"a": [1, 2.5, "x", None, True]}


async def test_decode_responses_client_is_refused(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            Cache(client)
    finally:
        await client.aclose()


async def test_from_url_owns_a_bounded_pool(redis_url: str) -> None:
    # A budget that covers queueing for one of 4 connections behind 49 others on a loaded machine: this test is
    # about the pool being bounded and owned, not about budgets (test_failopen.py).
    cache = Cache.from_url(redis_url, namespace=unique("fu"), max_connections=4, timeout=5.0)
    pool = cache.backend.client.connection_pool
    assert isinstance(pool, redis.asyncio.BlockingConnectionPool)
    assert pool.max_connections == 4
    await asyncio.gather(*(cache.set(f"k{i}", i) for i in range(50)))
    assert cache.stats()["store_errors"] == 0
    assert await cache.get("k7") == 7
    await cache.clear()
    await cache.aclose()


async def test_loader_errors_propagate_and_are_counted(cache: Cache) -> None:
    async def boom() -> None:
        raise RuntimeError("db down")

    with pytest.raises(RuntimeError, match="db down"):
        await cache.get_or_set("x", boom)
    assert cache.stats()["load_errors"] == 1
    assert await cache.get("x", MISSING) is MISSING


async def test_no_single_flight_policy_loads_per_caller(cache: Cache) -> None:
    calls = 0

    async def load() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)  # stands for the load's work, so the five callers overlap it
        return 1

    policy = StampedePolicy(single_flight=False, lease=False)
    await asyncio.gather(*(cache.get_or_set("k", load, stampede=policy) for _ in range(5)))
    assert calls == 5
