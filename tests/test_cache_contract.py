"""The cache's contract at the caller's boundary, on every backend (the ``store`` fixture):

- every hit hands its caller a value of its own (mutating it changes nothing for the next caller), on memory as on
  Redis, through the store and through the local tier; ``shared_values=True`` is the explicit opt-out;
- a closed cache stays closed: every later call raises :class:`CacheClosedError` instead of silently loading;
- a write says whether the store took it;
- a tag with many entries is invalidated in batches, each within its own budget.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from cachelayer import Backend, Cache, CacheClosedError, LocalCache, MemoryBackend, cached
from tests._doubles import CountingLoader, eventually


@dataclasses.dataclass
class Basket:
    name: str
    items: list[int]


def new_cache(store: Backend, **options: Any) -> Cache:
    options.setdefault("namespace", "contract")
    return Cache(store, **options)


# -- every hit its own value ----------------------------------------------------------------------------------


async def test_mutating_a_hit_does_not_change_the_next_hit(store: Backend) -> None:
    cache = new_cache(store)
    await cache.set("k", [1, 2, 3])
    first = await cache.get("k")
    first.append(100)
    assert await cache.get("k") == [1, 2, 3]
    loader = CountingLoader([1, 2, 3])
    hit = await cache.get_or_set("k", loader)
    hit.append(100)
    assert await cache.get_or_set("k", loader) == [1, 2, 3]
    assert loader.calls == 0


async def test_mutating_a_typed_hit_does_not_change_the_next_hit(store: Backend) -> None:
    cache = new_cache(store)

    @cached(cache=cache)
    async def basket(name: str) -> Basket:
        return Basket(name, [1, 2, 3])

    await basket("a")  # the miss: the loader's own object
    hit = await basket("a")
    hit.items.append(100)
    again = await basket("a")
    assert again == Basket("a", [1, 2, 3])
    assert again is not hit


async def test_mutating_a_local_tier_hit_does_not_change_the_next_hit(store: Backend) -> None:
    cache = new_cache(store, local=LocalCache())

    @cached(cache=cache, local=True)
    async def numbers() -> list[int]:
        return [1, 2, 3]

    try:
        await numbers()
        for _ in range(3):
            hit = await numbers()
            assert hit == [1, 2, 3]
            hit.append(100)
        assert cache.stats()["local_hits"] >= 2  # the hits above came from the local tier
    finally:
        await cache.aclose()


async def test_shared_values_is_the_explicit_opt_in_for_one_object() -> None:
    cache = Cache(MemoryBackend(), namespace="contract", shared_values=True)
    await cache.set("k", [1, 2, 3])
    first = await cache.get("k")
    assert await cache.get("k") is first  # decoded once: the caller promised not to mutate it
    await cache.aclose()


# -- a closed cache stays closed ------------------------------------------------------------------------------


async def test_every_call_after_aclose_raises_cache_closed_error() -> None:
    cache = Cache(MemoryBackend(), namespace="contract", owns_client=True)
    loader = CountingLoader("v")

    @cached(cache=cache)
    async def f(x: int) -> int:
        return x

    await cache.set("k", 1)
    await cache.aclose()
    await cache.aclose()  # safe twice
    calls = [
        lambda: cache.get_or_set("k", loader),
        lambda: cache.get("k"),
        lambda: cache.get_many(["k"]),
        lambda: cache.set("k", 1),
        lambda: cache.set_many({"k": 1}),
        lambda: cache.delete("k"),
        lambda: cache.ttl("k"),
        lambda: cache.invalidate_tags("t"),
        lambda: cache.clear(),
        lambda: cache.connect(),
        lambda: cache.ping(),
        lambda: f(1),
        lambda: f.invalidate(1),
    ]
    for call in calls:
        with pytest.raises(CacheClosedError, match="aclose"):
            await call()
    assert loader.calls == 0  # never silently loaded


async def test_a_closed_cache_over_a_backend_it_does_not_own_refuses_too(store: Backend) -> None:
    cache = new_cache(store)  # the backend stays open: the fixture owns it
    await cache.aclose()
    with pytest.raises(CacheClosedError):
        await cache.get("k")
    assert await new_cache(store).get("k") is None  # another cache on the same store still works


# -- writes say whether they landed ---------------------------------------------------------------------------


async def test_set_says_whether_the_store_took_it() -> None:
    backend = MemoryBackend()
    cache = Cache(backend, namespace="contract")
    assert await cache.set("k", 1) is True
    assert await cache.set_many({"a": 1, "b": 2}) is True
    backend.fail_with()
    assert await cache.set("k", 2) is False
    assert await cache.set_many({"a": 1}) is False
    assert cache.stats()["store_errors"] >= 2
    backend.recover()
    # A write that did not land is an invalidation kept until it does: the old 1 is not served meanwhile, and the
    # retry deletes it (docs/consistency.md).
    assert await cache.get("k") is None
    await eventually(lambda: cache.stats()["invalidations_pending"] == 0, what="the missed writes' invalidations")
    assert await backend.get(cache.key("k")) is None
    await cache.aclose()


# -- a tag of many entries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mark_stale", [True, False])
async def test_a_large_tag_is_invalidated_with_one_write(store: Backend, mark_stale: bool) -> None:
    cache = new_cache(store)
    names = [f"k{n}" for n in range(1_200)]
    for start in range(0, len(names), 100):
        await asyncio.gather(*(cache.set(name, {"n": name}, tags=["big"]) for name in names[start : start + 100]))
    await cache.set("untagged", "kept")
    assert await cache.invalidate_tags("big", mark_stale=mark_stale) == 1  # one tag's stamp, whatever the entries
    assert await cache.invalidate_tags("never used") == 0
    assert await cache.get_many(names) == [None] * len(names)  # gone, or stale (not fresh for get)
    loader = CountingLoader("fresh")
    for name in names[:: len(names) // 12]:
        assert await cache.get_or_set(name, loader) == "fresh"  # stale or gone: reloaded
    assert await cache.get("untagged") == "kept"
    assert cache.stats().get("store_errors", 0) == 0


async def test_aclose_lets_a_running_load_finish_for_its_callers(store: Backend) -> None:
    cache = new_cache(store)
    gate = asyncio.Event()
    loader = CountingLoader("loaded", gate=gate)
    caller = asyncio.create_task(cache.get_or_set("k", loader))
    await loader.started.wait()
    closing = asyncio.create_task(cache.aclose(grace=30.0))
    await asyncio.sleep(0)  # aclose has begun: new calls are refused while the load runs
    with pytest.raises(CacheClosedError):
        await cache.get("k")
    gate.set()
    assert await caller == "loaded"  # not a CacheClosedError from the lease release or the write
    await closing
    assert await store.poll("contract:{k}") == (await store.get("contract:{k}"), False)
