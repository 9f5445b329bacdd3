"""Fail-open: whatever Redis does (stopped, unreachable, slow, silent, frozen, restarted, holding garbage), a caller
gets the loader's value or the default, never a Redis error, and within the cache's time budget.

Everything runs against real servers over real sockets: a private ``redis-server`` per test (``private_redis``),
which the test may stop, restart or freeze, and a :class:`LatencyProxy` for a slow or silent network. The
machine's Redis is only used through the flushed DB 15 (``raw``) and never stopped.

Time bounds are deliberately generous (a loaded 2-core machine): they tell "bounded by the budget" from
"hangs for a connect/read timeout", not one millisecond from another.
"""

from __future__ import annotations

import asyncio
import pickle
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio
from redis.asyncio import BlockingConnectionPool, Redis

from cachelayer import Cache, CircuitBreaker, StampedePolicy, cached
from harness import LatencyProxy, RedisServer, free_port
from tests._doubles import CountingLoader, FakeClock, LoaderFailed, eventually

# A generous ceiling for one cache call when Redis misbehaves and the budget is BUDGET: a get_or_set makes at
# most three budgeted Redis calls on that path (GET, the lease attempt, SET of the loaded value), plus noise.
BUDGET = 0.05
CEILING = 1.0


def new_namespace() -> str:
    return f"t-failopen-{uuid.uuid4().hex[:10]}"


CacheFactory = Callable[..., Cache]


@pytest_asyncio.fixture
async def make_cache() -> AsyncIterator[CacheFactory]:
    """Build caches over a bounded BlockingConnectionPool; every one is closed (with its pool) at teardown."""
    caches: list[Cache] = []

    def build(
        url: str,
        *,
        timeout: float = BUDGET,
        breaker: CircuitBreaker | None = None,
        namespace: str | None = None,
        max_connections: int = 8,
        pool_timeout: float = 1.0,
        socket_timeout: float | None = None,
        **options: Any,
    ) -> Cache:
        # socket_timeout=None: the cache's own budget is the timeout. redis-py's default (5 s) makes every send go
        # through asyncio.wait_for, which on Python 3.11 can swallow the budget's cancellation; see
        # test_budget_survives_an_event_loop_stall_with_default_socket_timeout below.
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=pool_timeout, socket_timeout=socket_timeout
        )
        cache = Cache(
            Redis.from_pool(pool),  # the client owns the pool: aclose() closes both
            namespace=namespace or new_namespace(),
            timeout=timeout,
            breaker=breaker if breaker is not None else CircuitBreaker(failure_threshold=3, cooldown=0.2),
            owns_client=True,
            **options,
        )
        caches.append(cache)
        return cache

    yield build
    for cache in caches:
        await cache.aclose()


@pytest_asyncio.fixture
async def raw(private_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client on the test's own Redis, to plant and inspect raw values. A private server rather than the
    machine's DB 15: other sessions flush DB 15 at any moment, which would make exact counts flaky."""
    client = Redis.from_url(private_redis.url)
    try:
        yield client
    finally:
        await client.aclose()


def Loader(prefix: str = "v", delay: float = 0.0) -> CountingLoader:
    """A counting loader whose n-th call returns ``{"value": "<prefix>-<n>"}``: a value naming the call."""
    return CountingLoader(delay=delay, result=lambda n: {"value": f"{prefix}-{n}"})


def failures(cache: Cache) -> int:
    stats = cache.stats()
    return int(stats["store_errors"] + stats["breaker_rejections"])


async def timed(call: Awaitable[Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


async def assert_fails_open(cache: Cache, *, rounds: int = 5) -> None:
    """Every operation answers (loader value / default / no-op), none raises, each within CEILING."""
    loader = Loader("down")
    before = failures(cache)
    for i in range(rounds):
        value, elapsed = await timed(cache.get_or_set(f"k{i}", loader))
        assert value == {"value": f"down-{loader.calls}"}
        assert elapsed < CEILING, f"get_or_set took {elapsed:.2f}s"
        got, elapsed = await timed(cache.get(f"k{i}", default="dflt"))
        assert got == "dflt"
        assert elapsed < CEILING, f"get took {elapsed:.2f}s"
        _, elapsed = await timed(cache.set(f"k{i}", {"x": i}))
        assert elapsed < CEILING, f"set took {elapsed:.2f}s"
        deleted, elapsed = await timed(cache.delete(f"k{i}"))
        assert deleted is False
        assert elapsed < CEILING, f"delete took {elapsed:.2f}s"
        many, elapsed = await timed(cache.get_many([f"k{i}", "other"], default=0))
        assert many == [0, 0]
        assert elapsed < CEILING, f"get_many took {elapsed:.2f}s"
    assert loader.calls == rounds  # the loader ran once per get_or_set: no stored value was ever seen
    assert failures(cache) > before


# --------------------------------------------------------------------------- Redis stopped, then back


@pytest.mark.slow
async def test_stopped_redis_fails_open_and_recovers_after_restart(
    private_redis: RedisServer, make_cache: CacheFactory
) -> None:
    cache = make_cache(private_redis.url, breaker=CircuitBreaker(failure_threshold=3, cooldown=0.2))
    loader = Loader("up")
    assert await cache.get_or_set("warm", loader) == {"value": "up-1"}
    assert await cache.get_or_set("warm", loader) == {"value": "up-1"}  # a hit
    assert loader.calls == 1

    @cached(ttl=30, cache=cache, exclude=["page_calls"])  # a call log, not part of the result
    async def page(n: int) -> dict[str, int]:
        page_calls.append(n)
        return {"page": n}

    page_calls: list[int] = []
    assert await page(1) == {"page": 1}

    private_redis.stop()

    await assert_fails_open(cache)
    for _ in range(3):
        value, elapsed = await timed(page(1))
        assert value == {"page": 1}
        assert elapsed < CEILING
    assert page_calls == [1, 1, 1, 1]  # the decorator's function ran on every call while Redis was gone
    stats = cache.stats()
    assert stats["store_errors"] >= 3
    assert stats["breaker_rejections"] > 0
    assert stats["breaker_state"] in ("open", "half_open")

    private_redis.start()  # same port, empty (no persistence)

    async def stored_again() -> bool:
        value = await cache.get_or_set("after", Loader("back"))
        return await cache.get("after") == value

    await eventually(stored_again)  # the cache stores values again after the restart
    assert cache.stats()["breaker_state"] == "closed"
    # Redis really holds the value again, and a hit does not call the loader.
    again = Loader("again")
    assert await cache.get_or_set("after", again) == await cache.get("after")
    assert again.calls == 0
    assert await page(2) == {"page": 2}
    assert await page(2) == {"page": 2}
    assert page_calls[-2:] == [1, 2]  # page(2) loaded once, then served from Redis


async def test_unreachable_port_fails_open_within_budget(make_cache: CacheFactory) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    cache = make_cache(url, breaker=CircuitBreaker(failure_threshold=10_000))  # every call really tries
    await assert_fails_open(cache, rounds=10)
    assert cache.stats()["store_errors"] >= 10 * 5
    assert cache.stats()["breaker_rejections"] == 0

    @cached(ttl=30, cache=cache)
    async def item(n: int) -> int:
        return n * 2

    values = await asyncio.gather(*(item(i) for i in range(50)))
    assert values == [i * 2 for i in range(50)]


async def test_from_url_cache_fails_open_on_unreachable_port() -> None:
    cache = Cache.from_url(
        f"redis://127.0.0.1:{free_port()}/0", max_connections=4, pool_timeout=0.5,
        namespace=new_namespace(), timeout=BUDGET,
    )
    try:
        await assert_fails_open(cache)
    finally:
        await cache.aclose()


# --------------------------------------------------------------------------- slow and silent networks


@pytest.mark.slow
async def test_latency_above_budget_fails_open_within_bounded_time(
    private_redis: RedisServer, make_cache: CacheFactory
) -> None:
    async with LatencyProxy(private_redis.host, private_redis.port, latency=0.0) as proxy:
        cache = make_cache(proxy.url(), timeout=BUDGET, breaker=CircuitBreaker(failure_threshold=10_000))
        warm = Loader("warm")
        assert await cache.get_or_set("hot", warm) == {"value": "warm-1"}

        proxy.latency = 0.4  # every reply arrives ~0.8 s after its command: far past the 0.05 s budget
        await assert_fails_open(cache)
        # The stored value is there but out of reach: the loader runs instead, within the budget.
        slow = Loader("slow")
        value, elapsed = await timed(cache.get_or_set("hot", slow))
        assert value == {"value": "slow-1"}
        assert elapsed < CEILING
        assert cache.stats()["store_errors"] > 0

        proxy.latency = 0.0  # the network recovers: the stored value is served again
        await eventually(lambda: _is_hit(cache, "hot", {"value": "warm-1"}))


async def _is_hit(cache: Cache, name: str, expected: Any) -> bool:
    return await cache.get(name) == expected


@pytest.mark.slow
async def test_latency_below_budget_still_hits(private_redis: RedisServer, make_cache: CacheFactory) -> None:
    async with LatencyProxy(private_redis.host, private_redis.port, latency=0.01) as proxy:
        cache = make_cache(proxy.url(), timeout=1.0)
        loader = Loader()
        assert await cache.get_or_set("k", loader) == {"value": "v-1"}
        for _ in range(5):
            assert await cache.get_or_set("k", loader) == {"value": "v-1"}
        assert loader.calls == 1
        stats = cache.stats()
        assert stats["hits"] == 5
        assert stats["store_errors"] == 0
        assert proxy.bytes_down > 0  # the traffic really went through the proxy


@pytest.mark.slow
async def test_blackholed_network_fails_open_within_bounded_time(
    private_redis: RedisServer, make_cache: CacheFactory
) -> None:
    async with LatencyProxy(private_redis.host, private_redis.port) as proxy:
        cache = make_cache(proxy.url(), breaker=CircuitBreaker(failure_threshold=10_000))
        assert await cache.get_or_set("k", Loader()) == {"value": "v-1"}  # a pooled connection exists

        proxy.blackhole = True  # the open connection and every new one: accepted, never answered
        await assert_fails_open(cache)
        values = await asyncio.gather(*(cache.get_or_set(f"c{i}", Loader(f"c{i}")) for i in range(20)))
        assert values == [{"value": f"c{i}-1"} for i in range(20)]
        assert cache.stats()["store_errors"] > 0
        assert cache.stats()["breaker_rejections"] == 0


# --------------------------------------------------------------------------- Redis frozen (SIGSTOP)


async def _stalled_get(cache: Cache, server: RedisServer) -> tuple[Any, float]:
    """One ``get`` on a connected pooled connection of a frozen Redis while something else holds the event loop
    for twice the budget (a CPU-heavy handler, a GC pause): the budget expires while the GET is being written."""
    assert await cache.backend.client.ping()  # a connected connection waits in the pool (asked before the freeze)
    with server.suspended():
        # time.sleep stands for a CPU-bound handler holding the loop (the work), not for a wait.
        asyncio.get_running_loop().call_soon(time.sleep, 2 * BUDGET)
        return await timed(cache.get("k", default="dflt"))


@pytest.mark.slow
async def test_budget_survives_an_event_loop_stall_with_default_socket_timeout(
    private_redis: RedisServer, make_cache: CacheFactory
) -> None:
    """With redis-py's default socket_timeout (5 s) every send runs under asyncio.wait_for, which on Python 3.11
    swallows a cancellation that lands as the send completes (the call then waited 5 s). The budget no longer
    cancels at a deadline the stalled loop reached late: it re-arms (``_budget.py``), so its cancellation lands
    while the reply is awaited, long after the send, and the call stays bounded."""
    cache = make_cache(private_redis.url, socket_timeout=5.0)  # redis-py 8's default
    value, elapsed = await _stalled_get(cache, private_redis)
    assert value == "dflt"
    assert elapsed < CEILING, f"a 0.05 s budget took {elapsed:.2f}s"
    assert cache.stats()["store_late_timeouts"] == 1


@pytest.mark.slow
async def test_budget_survives_an_event_loop_stall_without_socket_timeout(
    private_redis: RedisServer, make_cache: CacheFactory
) -> None:
    """The same stall with socket_timeout=None (the workaround docs/operations.md recommends): bounded."""
    cache = make_cache(private_redis.url, socket_timeout=None)
    value, elapsed = await _stalled_get(cache, private_redis)
    assert value == "dflt"
    assert elapsed < CEILING
    # The loop, not Redis, was late at the deadline: the call fails open, the breaker is not told.
    assert cache.stats()["store_errors"] == 0
    assert cache.stats()["store_late_timeouts"] == 1



@pytest.mark.slow
async def test_paused_redis_fails_open_within_bounded_time(
    private_redis: RedisServer, make_cache: CacheFactory
) -> None:
    cache = make_cache(private_redis.url, breaker=CircuitBreaker(failure_threshold=3, cooldown=0.2))
    assert await cache.get_or_set("k", Loader("before")) == {"value": "before-1"}

    with private_redis.suspended():  # the process keeps its sockets (connects still succeed) but answers nothing
        await assert_fails_open(cache)
        concurrent = await asyncio.gather(*(timed(cache.get_or_set(f"p{i}", Loader(f"p{i}"))) for i in range(20)))
        assert [value for value, _ in concurrent] == [{"value": f"p{i}-1"} for i in range(20)]
        assert max(elapsed for _, elapsed in concurrent) < CEILING
    assert cache.stats()["store_errors"] >= 3

    # Thawed: the value written before the freeze is served again once the breaker lets calls through.
    await eventually(lambda: _is_hit(cache, "k", {"value": "before-1"}))


@pytest.mark.slow
async def test_pause_shorter_than_the_wait_is_bounded_too(
    private_redis: RedisServer, make_cache: CacheFactory
) -> None:
    """``pause(s)`` thaws on its own: calls made during it are bounded, calls after it hit again."""
    cache = make_cache(private_redis.url, breaker=CircuitBreaker(failure_threshold=10_000))
    assert await cache.get_or_set("k", Loader("before")) == {"value": "before-1"}
    private_redis.pause(1.5)
    value, elapsed = await timed(cache.get_or_set("k", Loader("frozen")))
    assert value == {"value": "frozen-1"}
    assert elapsed < CEILING
    await eventually(lambda: _is_hit(cache, "k", {"value": "before-1"}))


# --------------------------------------------------------------------------- Lua scripts across a restart


async def _lease_keys(client: redis.asyncio.Redis) -> list[bytes]:
    return [key async for key in client.scan_iter(match="*:lease")]


@pytest.mark.slow
async def test_lease_scripts_survive_a_redis_restart(private_redis: RedisServer, make_cache: CacheFactory) -> None:
    """The fill (which releases the lease) and the renewal are EVALSHA scripts; a restarted Redis has an empty script
    cache. redis-py's Script reloads on NoScriptError, so nobody sees the error and every lease is released by the
    fill, not left to expire."""
    namespace = new_namespace()
    # lease_ttl 0.6 s: the loader (0.5 s) outlives a third of it, so the EXTEND script runs as well.
    policy = StampedePolicy(lease_ttl=0.6, lease_wait=5.0, xfetch=False)
    # Two caches on one namespace with their own pools: two "processes" racing for one lease.
    a = make_cache(private_redis.url, namespace=namespace, timeout=1.0, stampede=policy)
    b = make_cache(private_redis.url, namespace=namespace, timeout=1.0, stampede=policy)
    admin = Redis.from_url(private_redis.url)
    try:
        async def race(name: str) -> None:
            loader = Loader(name, delay=0.5)
            results = await asyncio.gather(a.get_or_set(name, loader), b.get_or_set(name, loader))
            assert results == [{"value": f"{name}-1"}] * 2
            assert loader.calls == 1  # one took the lease and loaded; the other waited for its value
            assert await _lease_keys(admin) == []  # released by the fill script, not left to expire (0.6 s)

        await race("first")
        scripts = a.backend._loop_client()
        release_sha, extend_sha = scripts.fill.sha, scripts.renew.sha
        assert await admin.script_exists(release_sha, extend_sha) == [True, True]

        private_redis.stop()
        private_redis.start()  # same port, empty: no keys and no scripts
        await admin.aclose()
        admin = Redis.from_url(private_redis.url)  # a fresh client: the old one's connection died with Redis
        assert await admin.script_exists(release_sha, extend_sha) == [False, False]
        # Drop the pools' dead connections (this test is about the script cache, not about stale connections,
        # which test_stopped_redis_fails_open_and_recovers_after_restart covers), then race again.
        for cache in (a, b):
            await cache.backend.client.connection_pool.disconnect()
            await eventually(lambda c=cache: _stores(c))
        errors_before = a.stats()["store_errors"] + b.stats()["store_errors"]

        await race("second")
        assert a.stats()["store_errors"] + b.stats()["store_errors"] == errors_before  # no NoScriptError counted
        assert a.stats()["lease_acquired"] + b.stats()["lease_acquired"] >= 2
        assert await admin.script_exists(release_sha, extend_sha) == [True, True]  # reloaded on demand
    finally:
        await admin.aclose()


async def _stores(cache: Cache) -> bool:
    probe = f"probe-{uuid.uuid4().hex[:6]}"
    await cache.set(probe, 1)
    return await cache.get(probe) == 1


# --------------------------------------------------------------------------- corrupted values


def _garbage(cache: Cache) -> bytes:
    return b"\x00\xffthis is not a cachelayer frame at all"


def _truncated_compressed(cache: Cache) -> bytes:
    frame = cache.codec.encode({"items": [f"wallpaper-{i}" for i in range(400)]}, expires_at=time.time() + 60)
    assert frame[4] == 1, "expected a zstd-compressed frame"
    return frame[: len(frame) // 2]  # the header reads, the zstd payload does not


def _truncated_plain(cache: Cache) -> bytes:
    frame = cache.codec.encode({"a": "short"}, expires_at=time.time() + 60)
    assert frame[4] == 0, "expected an uncompressed frame"
    return frame[:-3]  # the header reads, the JSON does not


def _truncated_header(cache: Cache) -> bytes:
    return cache.codec.encode({"a": 1}, expires_at=time.time() + 60)[:10]


def _future_version(cache: Cache) -> bytes:
    frame = bytearray(cache.codec.encode({"a": 1}, expires_at=time.time() + 60))
    frame[2] = 99  # a format version from the future
    return bytes(frame)


def _pickled(cache: Cache) -> bytes:
    return pickle.dumps({"value": "from another library"})


def _bare_json(cache: Cache) -> bytes:
    return b'{"value": "written by an older version, no frame"}'


CORRUPTIONS = {
    "garbage": _garbage,
    "truncated-compressed": _truncated_compressed,
    "truncated-plain": _truncated_plain,
    "truncated-header": _truncated_header,
    "future-version": _future_version,
    "pickled": _pickled,
    "bare-json": _bare_json,
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
async def test_corrupted_value_is_a_miss_and_is_replaced(
    corruption: str, private_redis: RedisServer, raw: redis.asyncio.Redis, make_cache: CacheFactory
) -> None:
    cache = make_cache(private_redis.url, timeout=1.0)
    key = cache.key("item")
    await raw.set(key, CORRUPTIONS[corruption](cache), ex=60)

    loader = Loader("fresh")
    assert await cache.get_or_set("item", loader) == {"value": "fresh-1"}
    assert loader.calls == 1
    stats = cache.stats()
    assert stats["decode_errors"] == 1
    assert stats["store_errors"] == 0
    stored = await raw.get(key)
    assert stored is not None
    assert cache.codec.decode(stored) == {"value": "fresh-1"}  # the bad value was replaced by a good frame
    assert await cache.get_or_set("item", loader) == {"value": "fresh-1"}  # and now it is a hit
    assert loader.calls == 1
    assert cache.stats()["decode_errors"] == 1


@pytest.mark.parametrize("corruption", ["garbage", "truncated-compressed", "future-version", "pickled"])
async def test_corrupted_value_under_a_decorated_function(
    corruption: str, private_redis: RedisServer, raw: redis.asyncio.Redis, make_cache: CacheFactory
) -> None:
    cache = make_cache(private_redis.url, timeout=1.0)
    calls: list[int] = []

    @cached(ttl=30, cache=cache, exclude=["calls"])  # a call log, not part of the result
    async def detail(wallpaper_id: int) -> dict[str, int]:
        calls.append(wallpaper_id)
        return {"id": wallpaper_id}

    await raw.set(detail.key(7), CORRUPTIONS[corruption](cache), ex=60)
    assert await detail(7) == {"id": 7}
    assert calls == [7]
    assert cache.stats()["decode_errors"] == 1
    assert cache.codec.decode(await raw.get(detail.key(7))) == {"id": 7}
    assert await detail(7) == {"id": 7}
    assert calls == [7]


async def test_corrupted_value_read_by_get_is_the_default_and_deleted(
    private_redis: RedisServer, raw: redis.asyncio.Redis, make_cache: CacheFactory
) -> None:
    cache = make_cache(private_redis.url, timeout=1.0)
    await raw.set(cache.key("item"), _pickled(cache), ex=60)
    assert await cache.get("item", default="dflt") == "dflt"
    assert cache.stats()["decode_errors"] == 1
    assert await raw.exists(cache.key("item")) == 0


# --------------------------------------------------------------------------- stale-if-error (Redis healthy)


async def failing_loader() -> Any:
    raise LoaderFailed("the database is down")


async def test_stale_if_error_serves_the_stale_value(
    private_redis: RedisServer, raw: redis.asyncio.Redis, make_cache: CacheFactory
) -> None:
    clock = FakeClock(time.time())
    # Stale-while-revalidate off, so an expired value goes through the loader in the caller (stale-if-error).
    policy = StampedePolicy(stale_while_revalidate=False, xfetch=False)
    cache = make_cache(
        private_redis.url, timeout=1.0, clock=clock, default_ttl=10, stale_ttl=100, jitter=0.0, stampede=policy
    )
    assert await cache.get_or_set("item", Loader("orig")) == {"value": "orig-1"}

    clock.now += 50  # past the TTL (10 s), within the stale window (100 s more); Redis keeps it (PX = 110 s)
    assert await cache.get("item", default="dflt") == "dflt"  # get never serves stale
    entry = await cache.get_or_set_entry("item", failing_loader)
    assert entry.outcome == "stale"
    assert entry.value() == {"value": "orig-1"}
    assert await cache.get_or_set("item", failing_loader) == {"value": "orig-1"}
    stats = cache.stats()
    assert stats["load_errors"] == 2
    assert stats["stale_served"] == 2
    assert stats["store_errors"] == 0
    assert await _lease_keys(raw) == []

    # A loader that works again replaces the stale value.
    assert await cache.get_or_set("item", Loader("new")) == {"value": "new-1"}
    assert await cache.get("item") == {"value": "new-1"}


async def test_stale_while_revalidate_with_a_failing_refresh_keeps_serving_stale(
    private_redis: RedisServer, make_cache: CacheFactory
) -> None:
    clock = FakeClock(time.time())
    cache = make_cache(
        private_redis.url, timeout=1.0, clock=clock, default_ttl=10, stale_ttl=100, jitter=0.0,
        stampede=StampedePolicy(xfetch=False),
    )
    assert await cache.get_or_set("item", Loader("orig")) == {"value": "orig-1"}
    clock.now += 50
    assert await cache.get_or_set("item", failing_loader) == {"value": "orig-1"}  # served stale at once
    await eventually(_no_background(cache))
    stats = cache.stats()
    assert stats["background_refreshes"] == 1
    assert stats["load_errors"] == 1  # the refresh failed in the background; the caller never saw it
    assert await cache.get_or_set("item", failing_loader) == {"value": "orig-1"}


def _no_background(cache: Cache) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return cache.stats()["background_tasks"] == 0

    return check


async def test_without_a_stale_value_the_loaders_exception_propagates_unchanged(
    private_redis: RedisServer, raw: redis.asyncio.Redis, make_cache: CacheFactory
) -> None:
    cache = make_cache(private_redis.url, timeout=1.0)
    raised = LoaderFailed("the database is down")

    async def loader() -> Any:
        raise raised

    with pytest.raises(LoaderFailed) as info:
        await cache.get_or_set("never", loader)
    assert info.value is raised  # the very exception, not a wrapper
    assert cache.stats()["load_errors"] == 1
    assert await raw.exists(cache.key("never")) == 0  # nothing cached
    assert await _lease_keys(raw) == []  # the lease was released

    # A value whose stale window is over is gone from Redis (PX = TTL + stale_ttl): nothing to fall back on.
    short = make_cache(private_redis.url, timeout=1.0, default_ttl=0.1, stale_ttl=0.1, jitter=0.0,
                       stampede=StampedePolicy(stale_while_revalidate=False, xfetch=False))
    await short.get_or_set("item", Loader())
    await eventually(lambda: _gone(raw, short.key("item")), within=5.0)
    with pytest.raises(LoaderFailed) as info:
        await short.get_or_set("item", loader)
    assert info.value is raised


async def _gone(client: redis.asyncio.Redis, key: str) -> bool:
    return await client.exists(key) == 0
