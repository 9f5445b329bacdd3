"""Hooks: the pipeline tells subscribers each step of a fetch, on every backend (the ``store`` fixture), and costs
nothing when nobody listens."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cachelayer import Backend, Cache, CacheHooks, FetchHooks, LocalCache, MemoryBackend, cached
from cachelayer._hooks import add_global_hooks, remove_global_hooks
from tests._doubles import CountingLoader, LoaderFailed, eventually


class Recorded(FetchHooks):
    def __init__(self, log: list[tuple[Any, ...]], function: str, key: str) -> None:
        self.log = log
        self.function = function
        self.key = key
        self.events: list[tuple[Any, ...]] = []

    def _add(self, *event: Any) -> None:
        self.events.append(event)

    def joined(self, leader: FetchHooks | None) -> None:
        self._add("joined", leader)

    def lease_waited(self, seconds: float) -> None:
        self._add("lease_waited")

    def load_started(self) -> None:
        self._add("load_started")

    def load_ended(self, seconds: float, error: BaseException | None) -> None:
        self._add("load_ended", type(error).__name__ if error else None)

    def stored(self, size: int) -> None:
        self._add("stored", size > 0)

    def failed_open(self, operation: str, reason: str) -> None:
        self._add("failed_open", operation)

    def ended(self, outcome: str, tier: str | None, error: BaseException | None) -> None:
        self._add("ended", outcome, tier)
        self.log.append((self.function, *self.events))


class Recorder(CacheHooks):
    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.fetches: list[Recorded] = []

    def fetch_started(self, function: str, key: str) -> FetchHooks | None:
        hooks = Recorded(self.log, function, key)
        self.fetches.append(hooks)
        return hooks


def new_cache(store: Backend, **options: Any) -> tuple[Cache, Recorder]:
    cache = Cache(store, namespace="hooks", **options)
    recorder = Recorder()
    cache.add_hooks(recorder)
    return cache, recorder


async def test_miss_then_store_hit(store: Backend) -> None:
    cache, recorder = new_cache(store)
    loader = CountingLoader("v")
    await cache.get_or_set("k", loader)
    await cache.get_or_set("k", loader)
    assert recorder.log == [
        ("cachelayer.fetch", ("load_started",), ("load_ended", None), ("stored", True), ("ended", "miss", None)),
        ("cachelayer.fetch", ("ended", "hit", "store")),
    ]


async def test_local_tier_hit_says_its_tier(store: Backend) -> None:
    cache, recorder = new_cache(store, local=LocalCache())
    try:
        await cache.get_or_set("k", CountingLoader("v"), local=True)
        await cache.get_or_set("k", CountingLoader("v"), local=True)
        assert recorder.log[-1] == ("cachelayer.fetch", ("ended", "hit", "local"))
    finally:
        await cache.aclose()


async def test_a_local_entry_is_told_and_counted_only_when_it_is_there(store: Backend) -> None:
    # CachedFunction.local_entry: the pipeline's first step alone, for a server that answers before any await.
    cache, recorder = new_cache(store, local=LocalCache())
    loads = CountingLoader({"v": 1})

    @cached(ttl=60, cache=cache, local=True, name="page")
    async def page(n: int) -> Any:
        return await loads()

    try:
        assert page.local_entry(1) is None  # nothing held: nothing counted, nothing told
        assert cache.stats()["hits"] == 0
        assert recorder.log == []
        fetched = await page.entry(1)
        held = page.local_entry(1)
        assert held is not None
        assert held.body() == fetched.body()
        assert held.outcome.value == "hit"
        assert recorder.log[-1] == ("page", ("ended", "hit", "local"))
        assert cache.stats()["hits"] == 1
        assert page.local_entry(2) is None  # other arguments, another entry
        await page.invalidate(1)
        assert page.local_entry(1) is None
        assert loads.calls == 1
    finally:
        await cache.aclose()


async def test_concurrent_callers_join_the_leaders_flight(store: Backend) -> None:
    cache, recorder = new_cache(store)
    gate = asyncio.Event()
    loader = CountingLoader("v", gate=gate)
    callers = [asyncio.create_task(cache.get_or_set("cold", loader)) for _ in range(10)]
    await loader.started.wait()
    await eventually(lambda: cache.stats()["misses"] == 10, 10.0, "every caller at the flight")
    gate.set()
    await asyncio.gather(*callers)
    assert loader.calls == 1
    outcomes = sorted(f.events[-1][1] for f in recorder.fetches)
    assert outcomes == ["joined"] * 9 + ["miss"]
    leader = next(f for f in recorder.fetches if f.events[-1][1] == "miss")
    for follower in recorder.fetches:
        if follower is not leader:
            assert follower.events[0] == ("joined", leader)  # a link to the leader's load is possible


async def test_loader_error_and_stale_and_fail_open() -> None:
    backend = MemoryBackend()
    cache, recorder = new_cache(backend)
    with pytest.raises(LoaderFailed):
        await cache.get_or_set("k", CountingLoader(fail=True))
    load_failed = ("cachelayer.fetch", ("load_started",), ("load_ended", "LoaderFailed"), ("ended", "error", None))
    assert recorder.log[-1] == load_failed
    backend.fail_with()
    await cache.get_or_set("k", CountingLoader("v"))
    events = recorder.log[-1]
    assert ("failed_open", "read") in events
    assert events[-1] == ("ended", "fail_open", None)
    await cache.aclose()


async def test_decorated_function_is_named_after_itself(store: Backend) -> None:
    cache, recorder = new_cache(store)

    @cached(cache=cache)
    async def wallpaper(wallpaper_id: int) -> dict[str, int]:
        return {"id": wallpaper_id}

    await wallpaper(1)
    assert recorder.fetches[-1].function.endswith("test_decorated_function_is_named_after_itself.<locals>.wallpaper")


async def test_disabled_cache_reports_bypass() -> None:
    cache = Cache.disabled(namespace="hooks")
    recorder = Recorder()
    cache.add_hooks(recorder)
    await cache.get_or_set("k", CountingLoader("v"))
    assert recorder.log == [("cachelayer.fetch", ("ended", "bypass", None))]


async def test_global_hooks_reach_every_cache_and_can_be_removed() -> None:
    recorder = Recorder()
    cache = Cache(MemoryBackend(), namespace="hooks")
    await cache.get_or_set("before", CountingLoader("v"))
    add_global_hooks(recorder)
    try:
        await cache.get_or_set("during", CountingLoader("v"))
    finally:
        remove_global_hooks(recorder)
    await cache.get_or_set("after", CountingLoader("v"))
    assert [fetch.key for fetch in recorder.fetches] == ["hooks:{during}"]
    await cache.aclose()


async def test_nobody_listening_means_no_hooks_object() -> None:
    cache = Cache(MemoryBackend(), namespace="hooks")
    seen: list[Any] = []
    pipeline = cache._state()
    real = pipeline.fetch

    async def spy(fetch: Any) -> Any:
        seen.append(fetch.hooks)
        return await real(fetch)

    pipeline.fetch = spy  # type: ignore[method-assign]
    await cache.get_or_set("k", CountingLoader("v"))
    assert seen == [None]
    await cache.aclose()


async def test_a_cancelled_leader_ends_cancelled_and_its_load_goes_on_silently(store: Backend) -> None:
    cache, recorder = new_cache(store)
    gate = asyncio.Event()
    loader = CountingLoader("v", gate=gate)
    leader = asyncio.create_task(cache.get_or_set("k", loader))
    await loader.started.wait()
    follower = asyncio.create_task(cache.get_or_set("k", loader))
    await eventually(lambda: cache.stats()["misses"] == 2, 10.0, "the follower at the flight")
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    gate.set()
    assert await follower == "v"  # the flight went on for the follower
    first = recorder.fetches[0]
    assert first.events[-1] == ("ended", "cancelled", None)
    assert [e for e in first.events if e[0] in ("load_ended", "stored")] == []  # nothing after its end
    assert recorder.fetches[1].events[-1] == ("ended", "joined", None)


async def test_refresh_is_heard_too(store: Backend) -> None:
    cache, recorder = new_cache(store)
    await cache.refresh("k", CountingLoader("v"))
    assert recorder.log == [
        ("cachelayer.fetch", ("load_started",), ("load_ended", None), ("stored", True), ("ended", "miss", None)),
    ]
