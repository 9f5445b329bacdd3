"""Stampede protection: single-flight, the Redis lease (also between two real processes), XFetch,
stale-while-revalidate, stale-if-error. Logical time is injected; Redis is real (DB 15), and every test works in a
namespace of its own, so the exact counts here cannot be disturbed by another test session."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio

from cachelayer import Cache, LeaseTimeoutError, StampedePolicy
from cachelayer._stampede import SingleFlight, jittered, xfetch_due
from tests._doubles import CountingLoader, FakeClock, FixedRandom, LoaderFailed, eventually

REPO = Path(__file__).resolve().parent.parent

Loader = CountingLoader
CacheMaker = Callable[..., Cache]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_900_000_000.0)


@pytest_asyncio.fixture
async def make_cache(redis_client: redis.asyncio.Redis, clock: FakeClock) -> AsyncIterator[CacheMaker]:
    """Caches on the test's Redis in one namespace of this test's own (two of them stand for two processes)."""
    namespace = f"st-{uuid.uuid4().hex[:10]}"
    made: list[Cache] = []

    def make(rand: FixedRandom | None = None, **kw: object) -> Cache:
        cache = Cache(
            redis_client, namespace=namespace, default_ttl=60, stale_ttl=60, jitter=0, clock=clock,
            rand=rand or FixedRandom(), **kw,  # type: ignore[arg-type]
        )
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.aclose()


# -- pure parts ------------------------------------------------------------------------------------------------


def test_xfetch_formula() -> None:
    # now - delta * beta * ln(rand) >= expiry
    assert not xfetch_due(now=90, expires_at=100, delta=1, beta=1, rand=0.5)  # 90 + 0.69 < 100
    assert xfetch_due(now=99.5, expires_at=100, delta=1, beta=1, rand=0.5)  # 99.5 + 0.69 >= 100
    assert xfetch_due(now=90, expires_at=100, delta=1, beta=1, rand=1e-5)  # 90 + 11.5 >= 100
    assert not xfetch_due(now=99.9, expires_at=100, delta=0, beta=1, rand=1e-9)  # no measured delta: never early
    assert not xfetch_due(now=99.9, expires_at=100, delta=1, beta=0, rand=1e-9)  # beta 0 switches it off
    assert xfetch_due(now=90, expires_at=100, delta=1, beta=1, rand=0.0)  # rand 0 cannot blow up


def test_jitter_bounds() -> None:
    assert jittered(100, 0.1, 0.0) == pytest.approx(90)
    assert jittered(100, 0.1, 0.999999) == pytest.approx(110, abs=1e-3)
    assert jittered(100, 0.0, 0.3) == 100


async def test_single_flight_survives_a_cancelled_caller() -> None:
    flights: SingleFlight[int] = SingleFlight()
    started = asyncio.Event()
    finished = 0

    async def work() -> int:
        nonlocal finished
        started.set()
        await asyncio.sleep(0.05)  # the work the other callers join
        finished += 1
        return 42

    first = asyncio.create_task(flights.run("k", work))
    await started.wait()
    others = [asyncio.create_task(flights.run("k", work)) for _ in range(5)]
    first.cancel()
    assert await asyncio.gather(*others) == [42] * 5
    assert finished == 1
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(flights) == 0


# -- the lease ---------------------------------------------------------------------------------------------


async def test_lease_makes_two_caches_load_once(redis_client: redis.asyncio.Redis, make_cache: CacheMaker) -> None:
    # Two Cache objects have separate single-flight tables, like two processes: only the lease joins them.
    a, b = make_cache(), make_cache()
    loader = Loader(delay=0.1)
    results = await asyncio.gather(*(c.get_or_set("k", loader) for c in (a, b) for _ in range(50)))
    assert loader.calls == 1
    assert all(r == {"version": 1} for r in results)
    assert a.stats()["lease_waits"] + b.stats()["lease_waits"] == 1
    assert await redis_client.exists(a.keys.lease_key(a.key("k"))) == 0


async def test_waiter_takes_over_when_the_loader_fails(make_cache: CacheMaker) -> None:
    # With share_failures (the default) b would get a's failure at once: tests/test_deadlines.py.
    taking_over = StampedePolicy(share_failures=False)
    a, b = make_cache(stampede=taking_over), make_cache(stampede=taking_over)
    fail_now = asyncio.Event()
    failing, working = Loader(fail=True, gate=fail_now), Loader()
    first = asyncio.create_task(a.get_or_set("k", failing))
    await failing.started.wait()  # a holds the lease
    second = asyncio.create_task(b.get_or_set("k", working))
    await eventually(lambda: b.stats()["lease_waits"] == 1)  # b waits for a's load
    fail_now.set()
    with pytest.raises(LoaderFailed):
        await first
    assert await second == {"version": 1}
    assert (failing.calls, working.calls) == (1, 1)


async def test_lease_timeout_policies(
    redis_client: redis.asyncio.Redis, make_cache: CacheMaker, clock: FakeClock
) -> None:
    cache = make_cache()
    lease_key = cache.keys.lease_key(cache.key("k"))

    async def held_elsewhere() -> None:  # a loader elsewhere that never finishes (its ticket: a hash of tokens)
        await redis_client.hset(lease_key, "someone-else", "1")
        await redis_client.pexpire(lease_key, 10_000)

    await held_elsewhere()

    quick_load = StampedePolicy(lease_wait=0.2, on_lease_timeout="load")
    loader = Loader()
    assert await cache.get_or_set("k", loader, stampede=quick_load) == {"version": 1}
    assert cache.stats()["lease_timeouts"] == 1
    await cache.delete("k")  # revokes every ticket of the key, the other loader's too
    await held_elsewhere()

    quick_raise = StampedePolicy(lease_wait=0.2, on_lease_timeout="raise")
    with pytest.raises(LeaseTimeoutError):
        await cache.get_or_set("k", loader, stampede=quick_raise)

    # With a stale value the waiter serves it, whatever the policy.
    no_swr = StampedePolicy(lease_wait=0.2, on_lease_timeout="raise", stale_while_revalidate=False)
    await cache.set("k", {"version": 0}, ttl=10)  # an explicit write revokes the tickets too
    await held_elsewhere()
    clock.now += 20
    entry = await cache.get_or_set_entry("k", loader, stampede=no_swr)
    assert (entry.outcome, entry.value()) == ("stale", {"version": 0})
    assert await redis_client.hkeys(lease_key) == [b"someone-else"]  # never released by a non-owner


async def test_crashed_loader_lease_frees_itself(redis_client: redis.asyncio.Redis, make_cache: CacheMaker) -> None:
    cache = make_cache()
    await redis_client.hset(cache.keys.lease_key(cache.key("k")), "crashed", "1")
    await redis_client.pexpire(cache.keys.lease_key(cache.key("k")), 300)
    loader = Loader()
    assert await cache.get_or_set("k", loader, stampede=StampedePolicy(lease_wait=5)) == {"version": 1}
    stats = cache.stats()
    assert (stats["lease_waits"], stats["lease_timeouts"]) == (1, 0)  # took over when it lapsed, not at lease_wait


TWO_PROCESS_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, time
    import redis.asyncio
    from cachelayer import Cache

    async def main(url, namespace, callers):
        cache = Cache.from_url(url, namespace=namespace, max_connections=32)
        client = cache.backend.client
        async def load():
            await client.incr(namespace + "-loads")
            await asyncio.sleep(0.2)  # stands for the database query
            return {"loaded": True}
        await cache.connect()
        print("ready", flush=True)
        sys.stdin.readline()  # the start line: both processes are ready
        results = await asyncio.gather(*(cache.get_or_set("cold", load) for _ in range(callers)))
        assert all(r == {"loaded": True} for r in results), results
        print(cache.stats()["loads"], cache.stats()["lease_waits"])
        await cache.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


@pytest.mark.slow
async def test_lease_between_two_real_processes(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    namespace = f"st2-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            TWO_PROCESS_SCRIPT,
            redis_url,
            namespace,
            "200",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(2)
    ]
    for p in procs:  # a start barrier: both are connected before either asks for the cold key
        assert p.stdout is not None
        line = await asyncio.wait_for(p.stdout.readline(), 60)
        assert line == b"ready\n", (line, await p.communicate())
    outputs = [await asyncio.wait_for(p.communicate(b"go\n"), 60) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()
    assert await redis_client.get(namespace + "-loads") == b"1"
    loads = sorted(int(out.split()[0]) for out, _ in outputs)
    assert loads == [0, 1]


# -- XFetch and stale-while-revalidate -------------------------------------------------------------------


async def wait_background(cache: Cache) -> None:
    await eventually(lambda: not cache.stats()["background_tasks"])


async def test_xfetch_recomputes_early_in_the_background(make_cache: CacheMaker, clock: FakeClock) -> None:
    rand = FixedRandom(0.5)  # -ln(0.5) = 0.69
    cache = make_cache(rand)
    loader = Loader(delay=0.05)
    await cache.get_or_set("k", loader)
    frame_delta = (await cache.get_or_set_entry("k", loader)).frame.recompute_time
    assert 0.04 <= frame_delta <= 1.0  # the measured load time is kept in the header

    clock.now += 50  # 10 s before expiry: 0.05 * 0.69 is far too small to go early
    assert (await cache.get_or_set_entry("k", loader)).outcome == "hit"
    await wait_background(cache)
    assert loader.calls == 1

    rand.value = 1e-300  # -ln(rand) ~ 690: 0.05 s * 690 = 34 s ahead of expiry, so due now
    entry = await cache.get_or_set_entry("k", loader)
    assert (entry.outcome, entry.value()) == ("hit", {"version": 1})  # the caller never waits for it
    await wait_background(cache)
    assert loader.calls == 2
    assert cache.stats()["early_recomputes"] == 1
    assert await cache.get("k") == {"version": 2}


async def test_stale_while_revalidate(make_cache: CacheMaker, clock: FakeClock) -> None:
    cache = make_cache()
    loader = Loader(delay=0.05)
    await cache.get_or_set("k", loader, ttl=10, stale_ttl=100)
    clock.now += 20
    entries = await asyncio.gather(*(cache.get_or_set_entry("k", loader, ttl=10, stale_ttl=100) for _ in range(20)))
    assert {e.outcome for e in entries} == {"stale"}
    assert {e.value()["version"] for e in entries} == {1}
    await wait_background(cache)
    assert loader.calls == 2  # exactly one refresh for twenty stale readers
    fresh = await cache.get_or_set_entry("k", loader, ttl=10, stale_ttl=100)
    assert (fresh.outcome, fresh.value()) == ("hit", {"version": 2})


async def test_without_swr_a_stale_value_is_a_miss(make_cache: CacheMaker, clock: FakeClock) -> None:
    cache = make_cache()
    policy = StampedePolicy(stale_while_revalidate=False)
    loader = Loader()
    await cache.get_or_set("k", loader, ttl=10, stampede=policy)
    clock.now += 20
    entry = await cache.get_or_set_entry("k", loader, ttl=10, stampede=policy)
    assert (entry.outcome, entry.value()) == ("miss", {"version": 2})


async def test_stale_if_error(make_cache: CacheMaker, clock: FakeClock) -> None:
    cache = make_cache()
    policy = StampedePolicy(stale_while_revalidate=False)
    await cache.get_or_set("k", Loader(), ttl=10, stampede=policy)
    clock.now += 20
    failing = Loader(fail=True)
    entry = await cache.get_or_set_entry("k", failing, ttl=10, stampede=policy)
    assert (entry.outcome, entry.value()) == ("stale", {"version": 1})
    assert cache.stats()["load_errors"] == 1
    off = StampedePolicy(stale_while_revalidate=False, stale_if_error=False)
    with pytest.raises(LoaderFailed):
        await cache.get_or_set("k", failing, ttl=10, stampede=off)


async def test_a_streak_of_failed_loads_served_stale_logs_two_warnings(
    make_cache: CacheMaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Stale served because the loader fails (a database outage): one WARNING when the streak starts, one when a
    load succeeds again; the failures between are DEBUG lines (no traceback per request at WARNING)."""
    cache = make_cache()
    policy = StampedePolicy(stale_while_revalidate=False)
    await cache.get_or_set("k", Loader(), ttl=10, stampede=policy)
    clock.now += 20
    failing = Loader(fail=True)
    caplog.set_level(logging.DEBUG, logger="cachelayer")
    for _ in range(25):
        entry = await cache.get_or_set_entry("k", failing, ttl=10, stampede=policy)
        assert entry.outcome == "stale"
    await cache.get_or_set("k", Loader(), ttl=10, stampede=policy)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "loader of" in r.getMessage()]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    # Keyed by function (get_or_set calls are "cachelayer.fetch"), never by key; the key is in the line.
    assert warnings[0].getMessage().startswith("cachelayer: loader of cachelayer.fetch failed (LoaderFailed")
    assert cache.key("k") in warnings[0].getMessage()
    assert warnings[0].exc_info is None  # the traceback is at DEBUG
    assert "succeeded again after 25 failed loads" in warnings[1].getMessage()
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and "loader of cachelayer.fetch" in r.getMessage()]
    assert len(debug) == 25  # the first failure's traceback, then one line per later failure


async def test_failed_background_refresh_keeps_the_stale_value(
    redis_client: redis.asyncio.Redis, make_cache: CacheMaker, clock: FakeClock
) -> None:
    cache = make_cache()
    await cache.get_or_set("k", Loader(), ttl=10, stale_ttl=100)
    clock.now += 20
    failing = Loader(fail=True)
    assert await cache.get_or_set("k", failing, ttl=10, stale_ttl=100) == {"version": 1}
    await wait_background(cache)
    assert failing.calls == 1
    assert await cache.get_or_set("k", failing, ttl=10, stale_ttl=100) == {"version": 1}
    assert await redis_client.exists(cache.keys.lease_key(cache.key("k"))) == 0


async def test_pubsub_wakes_waiters_before_their_next_poll(
    redis_client: redis.asyncio.Redis, make_cache: CacheMaker
) -> None:
    # Polls 60 s apart: a waiter that gets the value within the 30 s below was woken by the loader's message.
    policy = StampedePolicy(poll_initial=60.0, poll_max=60.0, lease_wait=120)
    a, b = make_cache(), make_cache()
    finish = asyncio.Event()
    loader = Loader(gate=finish)
    first = asyncio.create_task(a.get_or_set("k", loader, stampede=policy))
    await loader.started.wait()  # a holds the lease
    other = Loader()
    second = asyncio.create_task(b.get_or_set("k", other, stampede=policy))

    async def waiter_subscribed() -> bool:  # Redis has registered b's subscription to the key's "ready" channel
        return bool(await redis_client.pubsub_channels(f"{b.namespace}:*ready*"))

    await eventually(waiter_subscribed)
    finish.set()
    assert await asyncio.wait_for(second, 30) == {"version": 1}
    assert await first == {"version": 1}
    assert other.calls == 0
    assert b.stats()["lease_waits"] == 1


async def test_poll_only_waiters_still_get_the_value(make_cache: CacheMaker) -> None:
    policy = StampedePolicy(wake="poll", poll_initial=0.01, poll_max=0.02)
    a, b = make_cache(), make_cache()
    loader = Loader(delay=0.1)
    results = await asyncio.gather(
        a.get_or_set("k", loader, stampede=policy), b.get_or_set("k", loader, stampede=policy)
    )
    assert results == [{"version": 1}, {"version": 1}]
    assert loader.calls == 1
