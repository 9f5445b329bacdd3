"""A caller's deadline bounds its waits, and a failed load wakes its waiters with the failure (issue 17, part 7).

Two caches on one store stand for two processes (``two_processes`` over ``store_factory``: memory, Redis, a Redis
Cluster). Without
these, under a database outage each process waiting on the lease took it in turn once the holder's load failed, so
N processes' requests took N loader timeouts (an audit: p50 6.1 s against a 2.2 s budget); and a waiter sat out
``lease_wait`` (5 s) whatever its request's budget. Every wait here ends on an event or on the deadline under
test, never on a fixed sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import RedisCluster

from cachelayer import (
    Cache,
    ConfigurationError,
    DeadlineExceededError,
    LeaseTimeoutError,
    LoadFailedError,
    MemoryBackend,
    Outcome,
    StampedePolicy,
    current_deadline,
    time_budget,
)
from tests._doubles import FakeClock, eventually
from tests.conftest import StoreFactory


class DatabaseDown(Exception):
    """The loader's failure, as a driver would raise it."""


TwoProcesses = Callable[..., tuple[Cache, Cache]]


@pytest_asyncio.fixture
async def two_processes(store_factory: StoreFactory) -> AsyncIterator[TwoProcesses]:
    """Two caches on one store, as two processes would be; closed after the test (their wake-up subscriptions
    hold connections of their own)."""
    made: list[Cache] = []

    def build(**options: Any) -> tuple[Cache, Cache]:
        options.setdefault("namespace", "deadline")
        pair = Cache(store_factory(), **options), Cache(store_factory(), **options)
        made.extend(pair)
        return pair

    yield build
    for cache in made:
        await cache.aclose()


async def holding_the_lease(cache: Cache, name: str, release: asyncio.Event, *, fail: bool) -> asyncio.Task[Any]:
    """Start a load of ``name`` in ``cache`` that holds the lease until ``release`` is set, then fails or returns."""
    started = asyncio.Event()

    async def loader() -> dict[str, int]:
        started.set()
        await release.wait()
        if fail:
            raise DatabaseDown("no server within 2000 ms")
        return {"v": 1}

    task = asyncio.create_task(cache.get_or_set(name, loader, ttl=60))
    await started.wait()  # the loader runs: the lease is held
    return task


def never_called() -> Any:
    async def loader() -> Any:
        raise AssertionError("this caller must not load")

    return loader


async def test_a_failed_load_wakes_the_other_processes_waiters_with_the_failure(two_processes: TwoProcesses) -> None:
    a, b = two_processes()
    release = asyncio.Event()
    holder = await holding_the_lease(a, "page", release, fail=True)
    waiter = asyncio.create_task(b.get_or_set("page", never_called(), ttl=60))
    await _until_waiting(b)
    release.set()
    with pytest.raises(DatabaseDown):
        await holder
    with pytest.raises(LoadFailedError) as caught:
        await waiter
    assert caught.value.error_type == f"{__name__}.DatabaseDown"
    assert caught.value.reason == "no server within 2000 ms"
    assert "another process failed" in str(caught.value)
    assert b.stats()["loads"] == 0


async def test_the_waiter_serves_its_stale_value_when_the_load_it_waited_for_fails(
    two_processes: TwoProcesses,
) -> None:
    clock = FakeClock()
    # Both must go to the lease with their stale copy in hand, not revalidate in the background.
    a, b = two_processes(clock=clock, stampede=StampedePolicy(stale_while_revalidate=False))
    await a.set("page", {"v": 0}, ttl=60, stale_ttl=600)
    clock.advance(120)  # past the TTL and its jitter, within stale_ttl
    release = asyncio.Event()
    holder = await holding_the_lease(a, "page", release, fail=True)
    waiter = asyncio.create_task(b.fetch("page", never_called()))
    await _until_waiting(b)
    release.set()
    assert (await holder) == {"v": 0}  # stale-if-error in the holder too
    entry = await waiter
    assert entry.outcome is Outcome.STALE
    assert entry.value() == {"v": 0}
    assert b.stats()["loads"] == 0


async def test_share_failures_false_loads_in_turn(two_processes: TwoProcesses) -> None:
    a, b = two_processes(stampede=StampedePolicy(share_failures=False))
    release = asyncio.Event()
    holder = await holding_the_lease(a, "page", release, fail=True)

    async def loader() -> dict[str, int]:
        return {"v": 2}

    waiter = asyncio.create_task(b.get_or_set("page", loader, ttl=60))
    await _until_waiting(b)
    release.set()
    with pytest.raises(DatabaseDown):
        await holder
    assert await waiter == {"v": 2}
    assert b.stats()["loads"] == 1


async def test_a_deadline_ends_the_wait_for_another_process(two_processes: TwoProcesses) -> None:
    a, b = two_processes()
    release = asyncio.Event()
    holder = await holding_the_lease(a, "page", release, fail=False)
    loop = asyncio.get_running_loop()
    with time_budget(0.3) as deadline, pytest.raises(DeadlineExceededError) as caught:
        await b.get_or_set("page", never_called(), ttl=60)
    assert loop.time() >= deadline  # it waited until the deadline, no longer than the test's own timeout
    assert isinstance(caught.value, LeaseTimeoutError)  # callers that handle lease timeouts handle this too
    assert "deadline ran out" in str(caught.value)
    release.set()
    assert await holder == {"v": 1}  # the load went on, and stored
    assert await b.get_or_set("page", never_called(), ttl=60) == {"v": 1}


async def test_an_explicit_deadline_and_a_time_budget_the_sooner_wins(two_processes: TwoProcesses) -> None:
    a, b = two_processes()
    release = asyncio.Event()
    holder = await holding_the_lease(a, "page", release, fail=False)
    loop = asyncio.get_running_loop()
    with time_budget(3600), pytest.raises(DeadlineExceededError):
        await b.fetch("page", never_called(), deadline=loop.time() + 0.2)
    release.set()
    await holder


async def test_a_deadline_bounds_a_wait_for_this_processes_own_flight(two_processes: TwoProcesses) -> None:
    (a, _) = two_processes()
    release = asyncio.Event()
    holder = await holding_the_lease(a, "page", release, fail=False)
    with time_budget(0.2), pytest.raises(DeadlineExceededError, match="this process's load"):
        await a.get_or_set("page", never_called(), ttl=60)
    release.set()
    assert await holder == {"v": 1}  # the joiner's deadline ended only its own wait


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "2"])
def test_time_budget_refuses_what_is_not_a_number_of_seconds(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="finite number of seconds"), time_budget(bad):
        pass


async def test_an_inner_budget_cannot_extend_an_outer_one() -> None:
    with time_budget(0.5) as outer:
        with time_budget(60) as inner:
            assert inner == outer
        with time_budget(0.1) as shorter:
            assert shorter < outer


async def _until_waiting(cache: Cache, name: str = "page") -> None:
    """Until ``cache`` waits on another process's lease for ``name`` and the store has its subscription to the
    key's wake-up channel: a message published before the store took the subscription is lost, and that waiter
    finds the lease gone and loads (the documented fallback, within one round trip of a failure)."""
    await eventually(lambda: cache.stats()["lease_waits"] > 0, what="the second cache waits on the lease")
    backend = cache.backend
    if isinstance(backend, MemoryBackend):
        return  # subscribed when subscribe() returns
    client: Any = backend.client  # type: ignore[attr-defined]
    channel = cache.key(name) + ":lease:ready"
    # A Cluster's wake-ups are sharded (SSUBSCRIBE on the key's shard); one node's are plain.
    if isinstance(client, RedisCluster):
        command, options = "SHARDNUMSUB", {"target_nodes": client.get_node_from_key(channel)}
    else:
        command, options = "NUMSUB", {}

    async def subscribed() -> bool:
        reply = await client.execute_command("PUBSUB", command, channel, **options)
        counts = dict(zip(reply[::2], reply[1::2], strict=True)) if isinstance(reply, list) else reply
        return int(next(iter(counts.values()), 0)) > 0

    await eventually(subscribed, what="the store took the waiter's subscription")


async def test_a_loader_sees_the_budget_of_the_caller_that_started_it(two_processes: TwoProcesses) -> None:
    (a, _) = two_processes()
    seen: list[float | None] = []

    async def loader() -> int:
        seen.append(current_deadline())  # for its own store calls (the service caps them with it)
        return 1

    assert current_deadline() is None
    with time_budget(30) as deadline:
        assert await a.get_or_set("page", loader, ttl=60) == 1
    assert seen == [deadline]
