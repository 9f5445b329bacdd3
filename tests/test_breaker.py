"""The circuit breaker: unit tests with an injected clock, and the breaker in front of a real, stopped Redis.

No test here sleeps to move the breaker's time: every breaker gets a clock the test advances by hand.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from redis.asyncio import BlockingConnectionPool, Redis

from cachelayer import Cache, CircuitBreaker
from harness import RedisServer
from tests._doubles import FakeClock


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert breaker.allow()
        breaker.record_failure()


# --------------------------------------------------------------------------- unit


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)


def test_closed_until_threshold_consecutive_failures() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=2.0, clock=clock)
    assert breaker.state == "closed"
    fail(breaker, 2)
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.record_failure()  # the third consecutive failure
    assert breaker.state == "open"
    assert breaker.opened_count == 1
    assert not breaker.allow()


def test_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=2.0, clock=FakeClock())
    fail(breaker, 2)
    breaker.record_success()
    fail(breaker, 2)
    assert breaker.state == "closed"  # 2 + 2 failures, but never 3 in a row
    breaker.record_failure()
    assert breaker.state == "open"


def test_refuses_every_call_during_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=2.0, clock=clock)
    fail(breaker, 1)
    for _ in range(100):
        assert not breaker.allow()
    clock.advance(1.999)
    assert breaker.state == "open"
    assert not breaker.allow()


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=2.0, clock=clock)
    fail(breaker, 1)
    clock.advance(2.0)
    assert breaker.state == "half_open"
    assert breaker.allow()  # the probe
    assert breaker.state == "half_open"
    for _ in range(10):
        assert not breaker.allow()  # everyone else waits for the probe's verdict
    clock.advance(100.0)
    assert not breaker.allow()  # however long the probe takes


def test_probe_success_closes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown=2.0, clock=clock)
    fail(breaker, 2)
    clock.advance(2.5)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(10))
    # and the count starts again from zero
    fail(breaker, 1)
    assert breaker.state == "closed"


def test_probe_failure_reopens_for_another_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=2.0, clock=clock)
    fail(breaker, 3)
    clock.advance(2.0)
    assert breaker.allow()
    breaker.record_failure()  # one failed probe is enough: no need for another 3
    assert breaker.state == "open"
    assert breaker.opened_count == 2
    assert not breaker.allow()
    clock.advance(1.0)
    assert not breaker.allow()  # the new cool-down counts from the probe's failure
    clock.advance(1.0)
    assert breaker.allow()


def test_abandoned_probe_lets_the_next_caller_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=2.0, clock=clock)
    fail(breaker, 1)
    clock.advance(2.0)
    assert breaker.allow()
    assert not breaker.allow()
    breaker.record_abandoned()  # the probe was cancelled: no verdict
    assert breaker.state == "half_open"
    assert breaker.allow()  # the next caller becomes the probe
    assert not breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"


def test_abandoned_call_while_closed_changes_nothing() -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown=2.0, clock=FakeClock())
    fail(breaker, 1)
    breaker.record_abandoned()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"  # the abandoned call neither reset nor added to the count


# --------------------------------------------------------------------------- integration


@pytest_asyncio.fixture
async def make_cache() -> AsyncIterator[Callable[..., Cache]]:
    caches: list[Cache] = []

    def build(url: str, *, breaker: CircuitBreaker, timeout: float = 0.2) -> Cache:
        pool = BlockingConnectionPool.from_url(url, max_connections=8, timeout=1.0)
        cache = Cache(
            Redis.from_pool(pool),
            namespace=f"t-breaker-{uuid.uuid4().hex[:8]}",
            timeout=timeout,
            breaker=breaker,
            owns_client=True,
        )
        caches.append(cache)
        return cache

    yield build
    for cache in caches:
        await cache.aclose()


@pytest.mark.slow
async def test_breaker_stops_calling_a_stopped_redis_then_closes_after_restart(
    private_redis: RedisServer, make_cache: Callable[..., Cache]
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=4, cooldown=5.0, clock=clock)
    cache = make_cache(private_redis.url, breaker=breaker)
    loads = 0

    async def loader() -> dict[str, int]:
        nonlocal loads
        loads += 1
        return {"n": loads}

    assert await cache.get_or_set("warm", loader) == {"n": 1}
    assert cache.stats()["store_errors"] == 0

    private_redis.stop()
    # A get_or_set against a dead Redis makes a few calls (GET, maybe the lease, SET): each one a failure,
    # until the threshold opens the breaker. However many calls that takes, exactly 4 reach Redis.
    for _ in range(4):
        assert (await cache.get_or_set("k", loader))["n"] >= 2
        if cache.stats()["breaker_state"] == "open":
            break
    stats = cache.stats()
    assert stats["store_errors"] == 4
    assert stats["breaker_state"] == "open"
    assert stats["breaker_opened"] == 1

    # Open: Redis is not called at all, every call is refused at once and the cache still answers.
    rejections_before = stats["breaker_rejections"]
    started = time.monotonic()
    for i in range(50):
        assert await cache.get_or_set(f"k{i}", loader) == {"n": loads}
        assert await cache.get("k") is None
        await cache.set("k", 1)
        assert await cache.delete("k") is False
    elapsed = time.monotonic() - started
    stats = cache.stats()
    assert stats["store_errors"] == 4, "a call reached Redis while the breaker was open"
    # at least one refused call per operation (get_or_set makes two or three)
    assert stats["breaker_rejections"] - rejections_before >= 50 * 4
    assert elapsed < 5.0  # 200+ refusals; with a 0.2 s budget per call they would take 40 s if Redis were tried

    private_redis.start()
    assert await cache.get("k") is None  # still within the (fake) cool-down: refused, Redis not asked
    assert cache.stats()["store_errors"] == 4

    clock.advance(5.0)  # cool-down over: the next call is the probe
    assert cache.stats()["breaker_state"] == "half_open"
    # The probe may land on a pooled connection the restart broke; a failed probe re-opens the breaker for
    # another cool-down, which the fake clock skips. A handful of rounds is plenty.
    for _ in range(5):
        value = await cache.get_or_set("after", loader)
        if cache.stats()["breaker_state"] == "closed":
            break
        clock.advance(5.0)
    assert cache.stats()["breaker_state"] == "closed"
    assert await cache.get("after") == value  # stored again: Redis is back in use
    assert await cache.get_or_set("after", loader) == value  # a hit: the loader is not called
