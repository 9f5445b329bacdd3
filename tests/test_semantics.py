"""Cache semantics, the same over every backend: memory, Redis, Redis Cluster (the ``store`` fixture).

What a user relies on whatever the store: fresh values hit, misses load once, tags, stale copies, the lease
between "processes" (two caches on one store), the local tier kept coherent through the store's pub/sub, typed
values, and the disabled cache. Fail-open under store faults is in test_failopen.py (real Redis) and below for
the memory backend's failure switch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachelayer import (
    MISSING,
    Backend,
    Cache,
    CacheEntry,
    EntryPolicy,
    LocalCache,
    MemoryBackend,
    Outcome,
    StampedePolicy,
    StoreUnavailable,
    cached,
)
from tests._doubles import CountingLoader, FakeClock, LoaderFailed, eventually
from tests._typed_strategies import CASES, assert_same
from tests.conftest import StoreFactory


def new_cache(store: Backend, **options: Any) -> Cache:
    options.setdefault("namespace", "sem")
    return Cache(store, **options)


async def test_set_get_delete_and_ttl(store: Backend) -> None:
    cache = new_cache(store, default_ttl=60, jitter=0)
    assert await cache.get("k") is None
    assert await cache.get("k", MISSING) is MISSING
    await cache.set("k", {"a": [1, 2]})
    assert await cache.get("k") == {"a": [1, 2]}
    remaining = await cache.ttl("k")
    assert remaining is not None
    assert 58 < remaining <= 60.01  # the frame keeps milliseconds
    await cache.set("none", None)
    assert await cache.get("none", MISSING) is None  # a cached None is not a miss
    assert await cache.delete("k") is True
    assert await cache.get("k", MISSING) is MISSING
    await cache.set_many({"a": 1, "b": 2})
    assert await cache.get_many(["a", "b", "c"], 0) == [1, 2, 0]


async def test_a_miss_loads_once_then_hits(store: Backend) -> None:
    cache = new_cache(store)
    loader = CountingLoader()
    first = await cache.fetch("page", loader)
    second = await cache.fetch("page", loader)
    assert (first.outcome, second.outcome) == (Outcome.MISS, Outcome.HIT)
    assert first.value() == second.value() == {"version": 1}
    assert loader.calls == 1
    body = await cache.fetch("page", loader, parse=False)
    assert body.body() == b'{"version":1}'


async def test_concurrent_misses_share_one_load(store: Backend) -> None:
    cache = new_cache(store)
    gate = asyncio.Event()
    loader = CountingLoader(gate=gate)
    callers = [asyncio.create_task(cache.get_or_set("cold", loader)) for _ in range(50)]
    await loader.started.wait()
    gate.set()
    assert await asyncio.gather(*callers) == [{"version": 1}] * 50
    assert loader.calls == 1


async def test_two_processes_share_one_load_through_the_lease(store_factory: StoreFactory) -> None:
    """Two caches on one store, as two processes would be: one loads, the other waits for its value."""
    a, b = new_cache(store_factory()), new_cache(store_factory())
    # As processes do at start-up, so that this tests the lease and not a fresh cluster client's topology
    # discovery (it parses COMMAND on the loop: 0.15-0.23 s stalls beside a CPU hog). With b discovering mid-test,
    # two full-suite runs beside the hog failed here: b never reached its lease wait.
    await a.connect()
    await b.connect()
    gate = asyncio.Event()
    loader = CountingLoader(gate=gate)
    first = asyncio.create_task(a.get_or_set("cold", loader))
    await loader.started.wait()
    second = asyncio.create_task(b.get_or_set("cold", loader))
    await eventually(lambda: b.stats()["lease_waits"] == 1)  # b found the lease held and waits
    gate.set()
    assert await asyncio.gather(first, second) == [{"version": 1}] * 2
    assert loader.calls == 1
    await a.aclose()
    await b.aclose()


async def test_tags_delete_every_tagged_entry(store: Backend) -> None:
    cache = new_cache(store)
    await cache.set("a", 1, tags=["t1"])
    await cache.set("b", 2, tags=["t1", "t2"])
    await cache.set("c", 3, tags=["t2"])
    assert await cache.invalidate_tags("t1") == 1  # the tags it reached
    assert await cache.get_many(["a", "b", "c"]) == [None, None, 3]
    assert await cache.invalidate_tags("t1", "t2", "never") == 2
    assert await cache.get_many(["a", "b", "c"]) == [None, None, None]


async def test_marked_stale_reloads_and_serves_the_old_copy_if_the_reload_fails(store: Backend) -> None:
    cache = new_cache(store)
    policy = EntryPolicy(tags=("page",))
    await cache.fetch("p", CountingLoader({"n": 1}), policy)
    assert await cache.invalidate_tags("page", mark_stale=True) == 1
    # The next read reloads (no stale-while-revalidate for an invalidated entry)...
    reloaded = await cache.fetch("p", CountingLoader({"n": 2}), policy)
    assert (reloaded.outcome, reloaded.value()) == (Outcome.MISS, {"n": 2})
    assert not reloaded.invalidated
    # ...and when the reload fails, the previous copy is served rather than the error.
    await cache.invalidate_tags("page", mark_stale=True)
    failed = await cache.fetch("p", CountingLoader(fail=True), policy)
    assert (failed.outcome, failed.value()) == (Outcome.STALE, {"n": 2})
    assert failed.invalidated  # a write marked it: no freshness left or past to tell (Cache-Status)
    assert await cache.get("p") is None  # marked stale: not a fresh value for get()


async def test_clear_empties_the_namespace_only(store: Backend) -> None:
    mine, other = new_cache(store, namespace="mine"), new_cache(store, namespace="other")
    for i in range(30):
        await mine.set(f"k{i}", i)
    await other.set("keep", 1)
    assert await mine.clear() == 30
    assert await mine.get("k1") is None
    assert await other.get("keep") == 1


async def test_stale_while_revalidate_and_stale_if_error(store: Backend) -> None:
    clock = FakeClock()
    cache = new_cache(store, default_ttl=10, stale_ttl=100, jitter=0, clock=clock)
    loader = CountingLoader()
    await cache.get_or_set("k", loader)
    clock.advance(20)
    stale = await cache.fetch("k", loader)
    assert (stale.outcome, stale.value()) == (Outcome.STALE, {"version": 1})
    await eventually(lambda: cache.stats()["background_refreshes"] == 1 and cache.stats()["background_tasks"] == 0)
    assert (await cache.fetch("k", loader)).value() == {"version": 2}

    clock.advance(20)
    no_swr = EntryPolicy(stampede=StampedePolicy(stale_while_revalidate=False))
    failed = await cache.fetch("k", CountingLoader(fail=True), no_swr)
    assert (failed.outcome, failed.value()) == (Outcome.STALE, {"version": 2})
    with pytest.raises(LoaderFailed):  # no stale value to fall back on: the loader's own error
        await cache.fetch("other", CountingLoader(fail=True), no_swr)


async def test_local_tier_stays_coherent_between_two_caches(store_factory: StoreFactory) -> None:
    a = new_cache(store_factory(), local=LocalCache(max_staleness=5.0))
    b = new_cache(store_factory(), local=LocalCache(max_staleness=5.0))
    await a.connect()
    await b.connect()
    policy = EntryPolicy(local=True)
    assert (await a.fetch("page", CountingLoader({"v": 1}), policy)).value() == {"v": 1}
    assert a.local is not None
    assert b.local is not None
    await eventually(lambda: a.local is not None and a.local.channel_alive())
    # A read in flight while the channel connected is not kept in L1 (it may have missed an invalidation): read
    # once more now that it is up, so L1 holds the page.
    await a.fetch("page", CountingLoader({"v": 0}), policy)
    hits = a.local.stats()["local_hits"]
    hit = await a.fetch("page", CountingLoader({"v": 0}), policy)
    assert (hit.outcome, a.local.stats()["local_hits"]) == (Outcome.HIT, hits + 1)
    await b.set("page", {"v": 2})  # another process replaces the value: a's local copy must go
    await eventually(lambda: len(a.local) == 0)  # type: ignore[arg-type]
    assert (await a.fetch("page", CountingLoader({"v": 0}), policy)).value() == {"v": 2}
    await a.aclose()
    await b.aclose()


@dataclasses.dataclass
class Wallpaper:
    id: int
    title: str
    price: Decimal
    updated: dt.datetime
    tags: tuple[str, ...]


async def test_a_hit_returns_what_the_loader_returned(store: Backend) -> None:
    cache = new_cache(store)

    @cached(cache=cache)
    async def wallpapers(n: int) -> list[Wallpaper]:
        stamp = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
        return [Wallpaper(i, f"w{i}", Decimal("12.50"), stamp, ("a", "b")) for i in range(n)]

    miss, hit = await wallpapers(3), await wallpapers(3)
    assert hit == miss
    assert [type(hit[0]), type(hit[0].price), type(hit[0].tags), type(hit[0].updated)] == [
        Wallpaper, Decimal, tuple, dt.datetime
    ]
    assert hit[0].updated.tzinfo is not None


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_typed_round_trip_over_the_store(
    store: Backend, request: pytest.FixtureRequest, case: Any, data: st.DataObject
) -> None:
    """Property test through a real store: set with the type, get with the type, equal in type and value. Over
    memory and Redis every case draws its full count (10,220 values in all, as tests/test_typed_properties.py
    does over the codec alone); over the cluster a tenth."""
    from cachelayer._serializers import serializer_by_name
    from cachelayer._typed import resolve_value_type

    value_type = resolve_value_type(case.annotation, serializer_by_name("orjson"), owner=f"test.{case.id}")
    share = 100 if "cluster" in request.node.callspec.id else 10
    count = max(1, case.examples // share)
    values = data.draw(st.lists(case.values, min_size=count, max_size=count))
    cache = new_cache(store, namespace=f"typed-{case.id}")
    for i, value in enumerate(values):
        await cache.set(f"v{i}", value, value_type=value_type)
    for i, value in enumerate(values):
        assert_same(await cache.get(f"v{i}", value_type=value_type), value)


async def test_disabled_cache_calls_the_loader_every_time() -> None:
    cache = Cache.disabled(namespace="off")
    loader = CountingLoader()
    entries: list[CacheEntry[Any]] = [await cache.fetch("k", loader) for _ in range(3)]
    assert [e.outcome for e in entries] == [Outcome.BYPASS] * 3
    assert loader.calls == 3
    assert entries[2].body() == b'{"version":3}'
    assert await cache.get("k") is None
    await cache.set("k", 1)
    assert await cache.get("k") is None
    assert await cache.clear() == 0


async def test_every_public_call_fails_open_when_the_store_is_unavailable() -> None:
    """The memory backend's failure switch stands in for a dead store (test_failopen.py does it with Redis)."""
    backend = MemoryBackend()
    cache = new_cache(backend, local=LocalCache())
    await cache.set("k", 1, tags=["t"])
    backend.fail_with(StoreUnavailable("switched off by the test"))
    loader = CountingLoader()
    entry = await cache.fetch("k", loader, EntryPolicy(local=True))
    assert (entry.outcome, entry.value()) == (Outcome.FAIL_OPEN, {"version": 1})
    assert await cache.get("k", "default") == "default"
    assert await cache.get_many(["k"]) == [None]
    await cache.set("k", 2)
    await cache.set_many({"k": 3})
    assert await cache.delete("k") is False
    assert await cache.ttl("k") is None
    assert await cache.invalidate_tags("t") == 0
    assert await cache.invalidate_tags("t", mark_stale=True) == 0
    assert await cache.clear() == 0
    assert await cache.ping() is False
    await cache.connect()
    assert cache.stats()["store_errors"] > 0
    backend.recover()
    assert await cache.ping() is True
    await cache.aclose()


def test_one_module_level_cache_serves_several_event_loops(redis_url: str) -> None:
    """Two asyncio.run() in a row (a script, a test framework's per-test loops) with one cache built once."""
    for url in ("memory://", redis_url):
        cache = Cache.from_url(url, namespace="loops")
        loader = CountingLoader()

        @cached(cache=cache, exclude=["loader"])
        async def page(n: int, loader: CountingLoader = loader) -> dict[str, int]:
            return {"n": n, **(await loader())}

        async def run() -> tuple[dict[str, int], str]:
            value = await page(1)
            return value, (await page.entry(1)).outcome

        first, second = asyncio.run(run()), asyncio.run(run())
        assert first == second == ({"n": 1, "version": 1}, Outcome.HIT)
        assert loader.calls == 1, url
        asyncio.run(cache.clear())
        asyncio.run(cache.aclose())
