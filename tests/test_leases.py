"""No orphaned leases (issue 9, item 6): a holder that goes silent stops stalling the others within ``lease_ttl``.

Two :class:`Cache` objects with their own connection pools on one private Redis stand for two processes (and one
test runs a real second process). The holder's lease is short (``StampedePolicy().lease_ttl``, 1 s) and renewed
every third of that while its loader runs, so:

- a holder whose store goes silent mid-load (its breaker opens) stops renewing, and a waiter in another process
  takes over once the lease lapses: within ``lease_ttl`` of the silence, never after the whole ``lease_wait``;
- a holder that crashes (SIGKILL) leaves a lease that lapses within ``lease_ttl``;
- a slow loader that is alive keeps its lease well past ``lease_ttl``: nobody loads beside it.

Timing bounds carry slack for a loaded 2-core machine (``SLACK``); the exact checks are the store's own (the
lease's remaining PTTL) and the counters (``lease_timeouts`` stays 0: nobody waited out ``lease_wait``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import BlockingConnectionPool, Redis

from cachelayer import Cache, CircuitBreaker, StampedePolicy
from harness import LatencyProxy, RedisServer
from tests._doubles import CountingLoader, eventually

REPO = Path(__file__).resolve().parent.parent
DEFAULTS = StampedePolicy()
# Scheduling noise allowed on top of a lease's lapse: the waiter polls every poll_max (50 ms); the rest is a
# loaded machine's event-loop delay. Still far below lease_wait (5 s), which is what must never be sat out.
SLACK = 0.5

CacheFactory = Callable[..., Cache]


@pytest_asyncio.fixture
async def make_cache() -> AsyncIterator[CacheFactory]:
    """Caches with a connection pool of their own each (separate "processes"), closed at teardown."""
    caches: list[Cache] = []

    def build(url: str, namespace: str, *, timeout: float = 1.0, breaker: CircuitBreaker | None = None,
              stampede: StampedePolicy | None = None) -> Cache:
        pool = BlockingConnectionPool.from_url(url, max_connections=8, timeout=2.0, socket_timeout=None)
        cache = Cache(Redis.from_pool(pool), namespace=namespace, timeout=timeout, breaker=breaker,
                      stampede=stampede, owns_client=True)
        caches.append(cache)
        return cache

    yield build
    for cache in caches:
        await cache.aclose()


@pytest_asyncio.fixture
async def admin(private_redis: RedisServer) -> AsyncIterator[Redis]:
    """A plain client on the test's own Redis, to read tickets and values as the store sees them."""
    client = Redis.from_url(private_redis.url)
    try:
        yield client
    finally:
        await client.aclose()


def unique_namespace() -> str:
    return f"t-lease-{uuid.uuid4().hex[:10]}"


def lease_key(cache: Cache, name: str) -> str:
    """Where the fill tickets of ``name`` live: a hash of tokens (one token, exclusive: the lease)."""
    return cache.keys.lease_key(cache.key(name))


def test_the_default_lease_is_short() -> None:
    # What the tests below rely on: a silent holder blocks others for at most lease_ttl, well inside lease_wait.
    assert DEFAULTS.lease_ttl <= 1.0
    assert DEFAULTS.lease_wait >= 4 * DEFAULTS.lease_ttl


@pytest.mark.slow
async def test_a_waiter_takes_over_when_the_holders_breaker_opens_mid_load(
    private_redis: RedisServer, admin: Redis, make_cache: CacheFactory
) -> None:
    namespace = unique_namespace()
    async with LatencyProxy(private_redis.host, private_redis.port) as proxy:
        # The holder reaches Redis through the proxy; one failed call opens its breaker for longer than the test.
        # Budget 0.25 s: a renewal that times out while this loop is merely late is not held against Redis, so a
        # larger budget makes the breaker's opening certain on a loaded machine too.
        holder = make_cache(proxy.url(), namespace, timeout=0.25,
                            breaker=CircuitBreaker(failure_threshold=1, cooldown=600.0))
        waiter = make_cache(private_redis.url, namespace)
        release_holder = asyncio.Event()
        holder_load = CountingLoader({"by": "holder"}, gate=release_holder)
        waiter_load = CountingLoader({"by": "waiter"})

        holding = asyncio.create_task(holder.get_or_set("page", holder_load))
        await holder_load.started.wait()  # the holder has the lease and is loading
        waiting = asyncio.create_task(waiter.get_or_set("page", waiter_load))
        await eventually(lambda: waiter.stats()["lease_waits"] == 1)  # the waiter waits for the holder's value

        proxy.blackhole = True  # mid-load, the holder's Redis goes silent: renewals are swallowed
        silent_at = time.monotonic()
        remaining_ms = await admin.pttl(lease_key(waiter, "page"))
        assert 0 < remaining_ms <= DEFAULTS.lease_ttl * 1000  # the lease outlives the silence by <= lease_ttl

        await eventually(lambda: holder.stats()["breaker_state"] == "open")
        assert await asyncio.wait_for(waiting, 30) == {"by": "waiter"}
        assert waiter_load.started_at is not None
        takeover = waiter_load.started_at - silent_at
        print(f"\nwaiter took over {takeover:.3f} s after the holder went silent (lease had {remaining_ms} ms left)")
        stats = waiter.stats()
        assert stats["lease_timeouts"] == 0  # it never sat out lease_wait
        assert stats["lease_wait_seconds"] < DEFAULTS.lease_wait
        assert takeover <= DEFAULTS.lease_ttl + SLACK
        assert holder.stats()["breaker_opened"] == 1

        # The waiter's value landed in Redis: the next reader anywhere gets a hit.
        stored = await admin.get(waiter.key("page"))
        assert isinstance(stored, bytes)
        assert waiter.codec.decode(stored) == {"by": "waiter"}
        reader = CountingLoader({"by": "reader"})
        assert await make_cache(private_redis.url, namespace).get_or_set("page", reader) == {"by": "waiter"}
        assert reader.calls == 0

        # The cut-off holder finishes: its caller still gets its loader's value (fail-open), nothing is overwritten.
        release_holder.set()
        assert await asyncio.wait_for(holding, 30) == {"by": "holder"}
        after = await admin.get(waiter.key("page"))
        assert isinstance(after, bytes)
        assert waiter.codec.decode(after) == {"by": "waiter"}
        assert await admin.exists(lease_key(waiter, "page")) == 0


CRASHING_HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from cachelayer import Cache

    async def main(url, namespace):
        cache = Cache.from_url(url, namespace=namespace, timeout=1.0)
        async def load():
            print("loading", flush=True)
            await asyncio.Event().wait()  # never returns: the process is killed mid-load
        await cache.get_or_set("page", load)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


@pytest.mark.slow
async def test_a_crashed_holders_lease_lapses_within_lease_ttl(
    private_redis: RedisServer, admin: Redis, make_cache: CacheFactory
) -> None:
    namespace = unique_namespace()
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_HOLDER, private_redis.url, namespace,
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 60) == b"loading\n"
        waiter = make_cache(private_redis.url, namespace)
        waiter_load = CountingLoader({"by": "waiter"})
        waiting = asyncio.create_task(waiter.get_or_set("page", waiter_load))
        await eventually(lambda: waiter.stats()["lease_waits"] == 1)

        holder.kill()  # SIGKILL mid-load: no release, no goodbye
        await asyncio.wait_for(holder.wait(), 30)
        killed_at = time.monotonic()
        remaining_ms = await admin.pttl(lease_key(waiter, "page"))
        # Still the dead holder's lease, with at most lease_ttl to live; or already lapsed (-2, no key).
        assert remaining_ms == -2 or 0 < remaining_ms <= DEFAULTS.lease_ttl * 1000, remaining_ms

        assert await asyncio.wait_for(waiting, 30) == {"by": "waiter"}
        assert waiter_load.started_at is not None
        takeover = waiter_load.started_at - killed_at
        print(f"\nwaiter took over {takeover:.3f} s after the holder was killed")
        assert waiter.stats()["lease_timeouts"] == 0
        assert takeover <= DEFAULTS.lease_ttl + SLACK
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


def count_renewals(cache: Cache) -> list[int]:
    """Count the renewals of ``cache``'s tickets that the store accepted (a spy on its backend)."""
    accepted = [0]
    renew: Callable[..., Awaitable[bool]] = cache.backend.renew_fill

    async def spy(*args: Any) -> bool:
        kept = await renew(*args)
        accepted[0] += kept
        return kept

    cache.backend.renew_fill = spy  # type: ignore[method-assign, assignment]
    return accepted


async def test_renewal_keeps_a_slow_loaders_lease_alive(
    private_redis: RedisServer, admin: Redis, make_cache: CacheFactory
) -> None:
    namespace = unique_namespace()
    # Renewed every 0.4 s: long enough that a CPU-starved test loop (CI shares its cores) does not let the
    # lease lapse between renewals, short enough that three renewals outlive an unrenewed lease.
    policy = StampedePolicy(lease_ttl=1.2)
    holder = make_cache(private_redis.url, namespace, stampede=policy)
    waiter = make_cache(private_redis.url, namespace, stampede=policy)
    renewals = count_renewals(holder)
    finish = asyncio.Event()
    slow = CountingLoader({"by": "holder"}, gate=finish)  # as slow as the test wants: until `finish`
    other = CountingLoader({"by": "waiter"})

    holding = asyncio.create_task(holder.get_or_set("page", slow, stampede=policy))
    await slow.started.wait()
    tokens = await admin.hkeys(lease_key(holder, "page"))
    assert len(tokens) == 1  # the holder's exclusive ticket: the lease
    waiting = asyncio.create_task(waiter.get_or_set("page", other, stampede=policy))
    await eventually(lambda: waiter.stats()["lease_waits"] == 1)

    # Four accepted renewals, 0.4 s apart: the load has run past the 1.2 s an unrenewed lease would live.
    await eventually(lambda: renewals[0] >= 4)
    assert await admin.hkeys(lease_key(holder, "page")) == tokens  # still the holder's, never taken over
    assert other.calls == 0

    finish.set()
    assert list(await asyncio.wait_for(asyncio.gather(holding, waiting), 30)) == [{"by": "holder"}] * 2
    assert (slow.calls, other.calls) == (1, 0)
    assert waiter.stats()["lease_timeouts"] == 0
    assert await admin.exists(lease_key(holder, "page")) == 0  # used by the fill at the end, not left to lapse
