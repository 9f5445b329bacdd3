"""The guard any backend can wear: a budget per call, a breaker, outages told from mistakes, transitions heard.

Over the memory backend (its failure switch stands in for an outage; a gate holds a call open past its budget):
what RedisBackend does with its own guard is pinned against real Redis in test_failopen.py and test_breaker.py.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from cachelayer import (
    Cache,
    CacheClosedError,
    CacheHooks,
    CircuitBreaker,
    ConfigurationError,
    Guard,
    GuardedBackend,
    MemoryBackend,
    StoreUnavailable,
)
from tests._doubles import CountingLoader, FakeClock


class HeldMemory(MemoryBackend):
    """A memory store whose ``get`` waits for ``release`` (a store that stopped answering)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def get(self, key: str) -> bytes | None:
        await self.release.wait()
        return await super().get(key)


class Transitions(CacheHooks):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def store_state_changed(self, store: str, state: str, reason: str | None) -> None:
        self.seen.append((store, state))


def guarded(inner: MemoryBackend, clock: FakeClock | None = None, threshold: int = 2) -> GuardedBackend:
    breaker = CircuitBreaker(threshold, cooldown=5.0, clock=clock or FakeClock())
    return GuardedBackend(inner, Guard(timeout=0.05, breaker=breaker, store="memory test-store"))


async def test_an_outage_is_counted_logged_with_the_store_and_opens_the_breaker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = MemoryBackend()
    backend = guarded(inner)
    inner.fail_with(StoreUnavailable("disk on fire"))
    with caplog.at_level(logging.WARNING, logger="cachelayer"):
        for _ in range(2):
            with pytest.raises(StoreUnavailable, match="memory test-store get failed: StoreUnavailable: disk on fire"):
                await backend.get("k")
    assert "memory test-store get failed, failing open: StoreUnavailable: disk on fire" in caplog.text
    with pytest.raises(StoreUnavailable, match="circuit breaker is open"):
        await backend.get("k")
    stats = backend.stats()
    assert (stats["store_errors"], stats["breaker_state"], stats["breaker_rejections"]) == (2, "open", 1)


async def test_a_call_past_its_budget_fails_open() -> None:
    inner = HeldMemory()
    backend = guarded(inner)
    with pytest.raises(StoreUnavailable, match=r"no answer within 0\.05 s"):
        await backend.get("k")
    inner.release.set()
    assert await backend.get("k") is None
    assert backend.stats()["store_errors"] == 1


async def test_a_mistake_passes_through_and_is_not_held_against_the_store() -> None:
    inner = MemoryBackend()
    backend = guarded(inner, threshold=1)
    await inner.aclose()
    with pytest.raises(CacheClosedError):
        await backend.get("k")
    with pytest.raises(ValueError, match="ttl"):
        await GuardedBackend(MemoryBackend(), Guard()).set("k", b"v", 0)
    assert backend.stats()["breaker_state"] == "closed"
    assert backend.stats()["store_errors"] == 0


async def test_a_cache_over_a_guarded_memory_store_fails_open_and_hears_the_breaker() -> None:
    clock = FakeClock()
    inner = MemoryBackend()
    cache = Cache(guarded(inner, clock), namespace="guard")
    transitions = Transitions()
    cache.add_hooks(transitions)
    loader = CountingLoader("v")
    assert await cache.get_or_set("k", loader) == "v"
    inner.fail_with()
    for _ in range(3):
        entry = await cache.fetch("k", loader)
        assert entry.outcome == "fail_open"
    assert transitions.seen == [("memory test-store", "open")]
    inner.recover()
    clock.advance(5.0)
    assert await cache.get_or_set("k", loader) == "v"  # the half-open probe: the store answers, still holds it
    assert transitions.seen == [("memory test-store", "open"), ("memory test-store", "half_open"),
                                ("memory test-store", "closed")]  # fmt: skip
    await cache.aclose()


def test_the_guard_refuses_a_budget_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Guard(timeout=0)


async def test_wrapped_backend_keeps_what_it_is() -> None:
    inner = MemoryBackend()
    backend = GuardedBackend(inner, Guard())
    assert backend.stores_objects is inner.stores_objects
    await backend.set("k", b"v", 1000)
    assert await backend.mark_stale(["k", "gone"], 0, b"V") == 1
    assert await backend.get("k") == b"V"
    assert await backend.poll("k") == (b"V", False)
    # Every fill call reaches the inner store with its keywords: the exclusive ticket refuses a second one, a fill
    # through an ended ticket is refused, and a fill checks the stamps it is given.
    assert await backend.begin_fill("k", "me", 1000)
    assert not await backend.begin_fill("k", "other", 1000)
    assert await backend.begin_fill("k", "other", 1000, exclusive=False)
    assert await backend.poll("k") == (b"V", True)
    assert await backend.renew_fill("k", "me", 1000)
    await backend.end_fill("k", "me")
    assert not await backend.fill("k", "me", b"W", 1000)
    [stamp] = await backend.tag_stamps(["t"], 2000)
    assert await backend.tag_stamps(["t"], 2000) == [stamp]
    assert await backend.fill("k", "other", b"W", 1000, ["t"], [stamp])
    assert await backend.poll("k") == (b"W", False)
    assert await backend.invalidate_tags(["t", "never"], mark_stale=True) == 1
    [marked] = await backend.get_many(["t"])
    assert marked is not None
    assert marked[:8] == stamp[:8]
    assert marked != stamp
    assert await backend.delete("k") == 1
    assert {"store_entries", "store_errors", "breaker_state"} <= backend.stats().keys()


def test_a_breaker_guards_one_store() -> None:
    breaker = CircuitBreaker()
    Guard(breaker=breaker)
    with pytest.raises(ConfigurationError, match="guards another store"):
        Guard(breaker=breaker)  # its failures would open the other store's calls


async def test_a_closed_cache_stops_listening_to_a_shared_guard() -> None:
    backend = guarded(MemoryBackend())
    caches = [Cache(backend, namespace=f"guard{n}") for n in range(3)]
    assert len(backend.guard.listeners) == 3
    for cache in caches:
        await cache.aclose()
    assert backend.guard.listeners == []
