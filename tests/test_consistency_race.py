"""The classic cache-aside race, on every backend: a reader misses and reads the old row, a writer commits and
invalidates, the reader then stores the old row. An invalidation must beat every fill that began before it
(docs/consistency.md); these are the issue's reproductions, one per path, with real stores."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from cachelayer import (
    Cache,
    CacheHooks,
    ConsistencyMonitor,
    EntryPolicy,
    LocalCache,
    MemoryBackend,
    StampedePolicy,
    StoreUnavailable,
    cached,
)
from tests._doubles import eventually
from tests.conftest import StoreFactory


def unique_namespace() -> str:
    return f"race-{uuid.uuid4().hex[:12]}"


Invalidate = Callable[[Cache], Awaitable[object]]
Loader = Callable[[], Awaitable[int]]


@pytest.fixture
async def cache(store_factory: StoreFactory) -> AsyncIterator[Cache]:
    """A cache on each kind of store: memory, Redis, a Redis Cluster (conftest's ``store_factory``)."""
    made = Cache(store_factory(), namespace=unique_namespace(), default_ttl=60)
    yield made
    await made.aclose()


class HeldLoader:
    """A loader that reads the database, then waits to be released before it returns (a slow reader)."""

    def __init__(self, db: dict[str, int]) -> None:
        self.db = db
        self.read = asyncio.Event()
        self.release = asyncio.Event()
        self.hold = True

    async def __call__(self) -> int:
        value = self.db["v"]
        if self.hold:
            self.hold = False  # only the first load is slow
            self.read.set()
            await self.release.wait()
        return value


@pytest.mark.parametrize(
    "invalidate",
    [
        pytest.param(lambda c: c.delete("row"), id="delete"),
        pytest.param(lambda c: c.invalidate_tags("rows"), id="invalidate_tags"),
        pytest.param(lambda c: c.invalidate_tags("rows", mark_stale=True), id="mark_stale"),
        pytest.param(lambda c: c.clear(), id="clear"),
    ],
)
async def test_a_slow_reader_never_undoes_a_committed_write(cache: Cache, invalidate: Invalidate) -> None:
    db = {"v": 1}
    loader = HeldLoader(db)
    policy = EntryPolicy(tags=("rows",))
    reader = asyncio.create_task(cache.get_or_set("row", loader, policy))
    await loader.read.wait()  # the reader read the old row and is held
    db["v"] = 2  # the writer commits...
    await invalidate(cache)  # ...and invalidates (the key is not stored yet: the fill is in flight)
    loader.release.set()
    assert await reader == 1  # the reader started before the write: it gets what it loaded
    assert await cache.get_or_set("row", loader, policy) == 2  # and everyone after the write sees it
    assert cache.stats()["revoked_fills"] == 1


async def test_a_caller_after_the_invalidation_never_joins_an_older_load(cache: Cache) -> None:
    db = {"v": 1}
    loader = HeldLoader(db)
    first = asyncio.create_task(cache.get_or_set("row", loader))
    await loader.read.wait()
    db["v"] = 2
    await cache.delete("row")
    later = asyncio.create_task(cache.get_or_set("row", loader))  # starts after the invalidation returned
    loader.release.set()
    assert (await first, await later) == (1, 2)


async def test_a_joiner_of_a_revoked_load_loads_again(cache: Cache, store_factory: StoreFactory) -> None:
    db = {"v": 1}
    loader = HeldLoader(db)
    first = asyncio.create_task(cache.get_or_set("row", loader))
    await loader.read.wait()
    joiner = asyncio.create_task(cache.get_or_set("row", loader))  # joins the running load
    await asyncio.sleep(0)  # lets it join (a yield, not a wait for time)
    db["v"] = 2
    other = Cache(store_factory(), namespace=cache.namespace)  # another process invalidates
    await other.delete("row")
    await other.aclose()
    loader.release.set()
    # The joiner may have come after the write: it cannot tell, so it loads again.
    assert (await first, await joiner) == (1, 2)


async def test_a_joiner_of_a_load_whose_fill_failed_loads_again() -> None:
    """The fill of the load it joined did not reach the store (a pause, a timeout): nothing proves no invalidation
    came meanwhile, so a joiner loads again (found by the free-running test under CLIENT PAUSE)."""
    backend = MemoryBackend()
    cache = Cache(backend, namespace=unique_namespace())
    try:
        db = {"v": 1}
        loader = HeldLoader(db)
        first = asyncio.create_task(cache.get_or_set("row", loader))
        await loader.read.wait()
        joiner = asyncio.create_task(cache.get_or_set("row", loader))
        await asyncio.sleep(0)  # lets it join (a yield, not a wait for time)
        db["v"] = 2  # committed; its invalidation is made by another process while the store is paused
        backend.fail_with(methods={"fill"})
        loader.release.set()
        assert (await first, await joiner) == (1, 2)
    finally:
        await cache.aclose()


class ScriptedDeletes(MemoryBackend):
    """A memory store whose deletes follow a script: "fail" (StoreUnavailable before anything is done), "hold" (done
    on the store, the reply held until ``release`` is set), or, once the script is used up, plain."""

    def __init__(self) -> None:
        super().__init__()
        self.script: list[str] = []
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def delete(self, *keys: str) -> int:
        step = self.script.pop(0) if self.script else "pass"
        if step == "fail":
            raise StoreUnavailable("scripted: the delete did not reach the store")
        deleted = await super().delete(*keys)
        if step == "hold":
            self.held.set()
            await self.release.wait()
        return deleted


async def test_an_invalidation_recorded_while_its_retry_is_in_flight_is_not_lost() -> None:
    """The retry of a pending delete lands, but the key was invalidated (and failed) again while it was in flight:
    that second invalidation stays pending (found by the consistency harness's helper, a reply-delay trace)."""
    backend = ScriptedDeletes()
    cache = Cache(backend, namespace=unique_namespace())
    try:
        backend.script = ["fail", "hold", "fail"]  # the delete, its retry (held), the second delete
        await cache.delete("row")
        await backend.held.wait()  # the retry's delete ran on the store; its reply is held
        await cache.set("row", 1)  # a newer value lands meanwhile (another process's fill, say)...
        await cache.delete("row")  # ...and its invalidation fails too
        backend.release.set()
        await eventually(lambda: cache.stats()["invalidations_pending"] == 0, what="the second delete lands")
        assert await backend.get(cache.key("row")) is None  # the retry ran again: the newer value is gone too
    finally:
        await cache.aclose()


class HeldRelease(MemoryBackend):
    """A memory store whose first GET fails (so the reader goes for the lease) and whose ticket release waits for
    ``release`` (the flight has decided its value and is still finishing)."""

    def __init__(self) -> None:
        super().__init__()
        self.gets_to_fail = 0
        self.releasing = asyncio.Event()
        self.release = asyncio.Event()

    async def get(self, key: str) -> bytes | None:
        if self.gets_to_fail:
            self.gets_to_fail -= 1
            raise StoreUnavailable("scripted: this read fails")
        return await super().get(key)

    async def end_fill(self, key: str, token: str) -> None:
        await super().end_fill(key, token)
        self.releasing.set()
        await self.release.wait()


@contextlib.asynccontextmanager
async def two_processes(backend: MemoryBackend) -> AsyncIterator[tuple[Cache, Cache, dict[str, int], Loader]]:
    """Two processes' caches of one namespace over ``backend``, a database row and its loader."""
    namespace = unique_namespace()
    cache = Cache(backend, namespace=namespace)
    other = Cache(backend, namespace=namespace)
    db = {"v": 0}

    async def load() -> int:
        return db["v"]

    try:
        yield cache, other, db, load
    finally:
        await cache.aclose()
        await other.aclose()


async def test_a_caller_never_joins_a_flight_that_found_its_value_before_an_invalidation() -> None:
    """Under the lease, a flight found the value in the store (re-checked after taking the lease); while it finishes,
    another process invalidates. A caller that starts after that must load, not get the flight's old value (found
    by the consistency harness over 10^6 universes, seed 323267)."""
    backend = HeldRelease()
    async with two_processes(backend) as (cache, other, db, load):
        assert await cache.get_or_set("row", load) == 0
        backend.gets_to_fail = 1  # the next read fails: a miss, so the reader takes the lease and re-checks
        first = asyncio.create_task(cache.get_or_set("row", load))
        await backend.releasing.wait()  # its flight found 0 in the store and is releasing its lease
        db["v"] = 1
        await other.delete("row")  # another process commits and invalidates
        later = asyncio.create_task(cache.get_or_set("row", load))  # starts after the invalidation returned
        await asyncio.sleep(0)  # lets it read the store and decide whether to join (a yield, not a wait for time)
        backend.release.set()
        assert (await first, await later) == (0, 1)


class HeldReread(MemoryBackend):
    """A memory store whose first GET fails (so the reader goes for the lease) and whose next GET (the flight's
    re-read under the lease) answers at once but hands its reply over only after ``release``: a reply on its
    way while other things happen."""

    def __init__(self) -> None:
        super().__init__()
        self.gets: int | None = None  # counted from arm()
        self.answered = asyncio.Event()
        self.release = asyncio.Event()

    def arm(self) -> None:
        self.gets = 0

    async def get(self, key: str) -> bytes | None:
        if self.gets is None:
            return await super().get(key)
        self.gets += 1
        if self.gets == 1:
            raise StoreUnavailable("scripted: this read fails")
        data = await super().get(key)
        if self.gets == 2:
            self.answered.set()
            await self.release.wait()
        return data


async def test_a_caller_never_takes_a_value_its_flight_read_before_the_caller_joined() -> None:
    """A flight re-reads the store under its lease and finds the value; while that reply is on its way, another
    process invalidates, and a caller starts and joins the flight. The value was read before the caller began (and
    before the invalidation): the caller reads again (found by the consistency harness with reply steps, seed
    44267 of the quick run)."""
    backend = HeldReread()
    async with two_processes(backend) as (cache, other, db, load):
        assert await other.get_or_set("row", load) == 0
        backend.arm()
        first = asyncio.create_task(cache.get_or_set("row", load))
        await backend.answered.wait()  # its flight's re-read found 0; the reply is held
        db["v"] = 1
        await other.delete("row")  # another process commits and invalidates
        later = asyncio.create_task(cache.get_or_set("row", load))  # starts after the invalidation returned
        await asyncio.sleep(0)  # lets it find the flight and join it (a yield, not a wait for time)
        backend.release.set()
        assert (await first, await later) == (0, 1)


async def test_the_decorators_invalidate_beats_a_slow_reader(cache: Cache) -> None:
    db = {"v": 1}
    loader = HeldLoader(db)

    @cached(cache=cache, ttl=60, name="row")
    async def row(key: str) -> int:
        return await loader()

    reader = asyncio.create_task(row("a"))
    await loader.read.wait()
    db["v"] = 2
    await row.invalidate("a")
    loader.release.set()
    assert await reader == 1
    assert await row("a") == 2


async def test_a_refresh_loaded_before_mark_stale_does_not_overwrite_it(cache: Cache) -> None:
    db = {"v": 1}
    await cache.set("row", 1, tags=["rows"])
    loader = HeldLoader(db)
    refresh = asyncio.create_task(cache.refresh("row", loader, EntryPolicy(tags=("rows",))))
    await loader.read.wait()
    db["v"] = 2
    await cache.invalidate_tags("rows", mark_stale=True)
    loader.release.set()
    await refresh
    assert await cache.get("row") is None  # still marked stale: the refresh's old value was refused
    assert await cache.get_or_set("row", loader, EntryPolicy(tags=("rows",))) == 2


@pytest.mark.parametrize("lease", [True, False], ids=["lease", "no-lease"])
async def test_the_rule_holds_with_and_without_the_lease(cache: Cache, lease: bool) -> None:
    db = {"v": 1}
    loader = HeldLoader(db)
    policy = EntryPolicy(stampede=StampedePolicy(lease=lease))
    reader = asyncio.create_task(cache.get_or_set("row", loader, policy))
    await loader.read.wait()
    db["v"] = 2
    await cache.delete("row")
    loader.release.set()
    assert await reader == 1
    assert await cache.get_or_set("row", loader, policy) == 2


async def test_an_explicit_set_beats_a_slow_reader(cache: Cache) -> None:
    db = {"v": 1}
    loader = HeldLoader(db)
    reader = asyncio.create_task(cache.get_or_set("row", loader))
    await loader.read.wait()
    await cache.set("row", 3)
    loader.release.set()
    assert await reader == 1
    assert await cache.get("row") == 3


async def test_a_revoked_fill_never_enters_the_local_tier() -> None:
    backend = MemoryBackend()
    namespace = unique_namespace()
    cache = Cache(backend, namespace=namespace, local=LocalCache(max_staleness=60))
    try:
        db = {"v": 1}
        loader = HeldLoader(db)
        policy = EntryPolicy(local=True)
        reader = asyncio.create_task(cache.get_or_set("row", loader, policy))
        await loader.read.wait()
        db["v"] = 2
        await cache.delete("row")
        loader.release.set()
        assert await reader == 1
        assert await cache.get_or_set("row", loader, policy) == 2
        assert await cache.get_or_set("row", loader, policy) == 2  # from L1 now: the new value
    finally:
        await cache.aclose()


@pytest.mark.parametrize("operation", ["delete", "set"])
async def test_an_invalidation_the_store_missed_is_retried_and_honoured_meanwhile(operation: str) -> None:
    """A delete, or an explicit set (a write is an invalidation too: found by the consistency harness, seed 835),
    that did not reach the store is retried until it lands, and the old value is not served meanwhile."""
    backend = MemoryBackend()
    cache = Cache(backend, namespace=unique_namespace())
    try:
        db = {"v": 1}

        async def load() -> int:
            return db["v"]

        assert await cache.get_or_set("row", load) == 1
        db["v"] = 2
        backend.fail_with(methods={operation})
        if operation == "delete":
            assert await cache.delete("row") is False  # did not land
        else:
            assert await cache.set("row", 2) is False
        assert cache.stats()["invalidations_pending"] == 1
        backend.recover()  # reads work again, but the old value is still stored...
        assert await cache.get_or_set("row", load) == 2  # ...and not served while the invalidation is pending
        await eventually(lambda: cache.stats()["invalidations_pending"] == 0, what="the retried invalidation lands")
        assert await backend.get(cache.key("row")) is None
        assert cache.stats()["invalidations_landed_late"] == 1
    finally:
        await cache.aclose()


async def test_the_monitor_reports_a_stale_write_it_finds(caplog: pytest.LogCaptureFixture) -> None:
    heard: list[tuple[str, str]] = []

    class Listener(CacheHooks):
        def inconsistency(self, function: str, key: str, detail: str) -> None:
            heard.append((function, key))

    # Every fill sampled; the check runs 0.2 s after it (long enough for the write below to come first).
    monitor = ConsistencyMonitor(sample_rate=1.0, delay=0.2, confirm_delay=0.01)
    cache = Cache(MemoryBackend(), namespace=unique_namespace(), monitor=monitor)
    cache.add_hooks(Listener())
    db = {"v": 1}

    @cached(cache=cache, name="monitored")
    async def row() -> int:
        return db["v"]

    try:
        assert await row() == 1
        db["v"] = 2  # a write whose invalidation never comes: the stored 1 is now stale
        await monitor.drain()
        assert cache.stats()["consistency_violations"] == 1
        assert heard == [("monitored", row.key())]
        assert any("monitored" in r.getMessage() and row.key() in r.getMessage() for r in caplog.records)
        await row.invalidate()  # the fix; the store and the loader agree again
        assert await row() == 2
        await monitor.drain()
        assert cache.stats()["consistency_violations"] == 1
    finally:
        await cache.aclose()


async def test_a_tag_of_many_entries_is_invalidated_by_one_stamp(cache: Cache) -> None:
    """However many entries carry a tag, its invalidation is one write (a new stamp) and reaches every one."""
    names = [f"item-{i}" for i in range(1_200)]
    for i, name in enumerate(names):  # one after the other: 1,200 at once would queue past the pool's wait
        assert await cache.set(name, i, tags=["big"])
    assert await cache.invalidate_tags("big") == 1  # the tags that had a stamp
    assert await cache.get_many(names[:5] + names[-5:]) == [None] * 10
    assert cache.stats()["invalidations_deferred"] == 0


async def test_an_evicted_tag_stamp_leaves_every_entry_it_stamped_a_miss(cache: Cache) -> None:
    """A stamp the store evicted (or that expired) is never taken for the one an entry carries: the entry is gone,
    and a tag invalidation after that has nothing left to reach (once a known limit of tag sets: an evicted set
    hid its members from the invalidation; found by tests/test_consistency_processes.py under allkeys-lru)."""
    db = {"v": 1}

    async def load() -> int:
        return db["v"]

    policy = EntryPolicy(tags=("rows",))
    assert await cache.get_or_set("row", load, policy) == 1
    await cache.backend.delete(cache.keys.tag_key("rows"))  # what an eviction of the stamp does
    assert await cache.get("row") is None  # gone: its stamp is missing
    db["v"] = 2
    assert await cache.invalidate_tags("rows") == 0  # no stamp to renew: nothing stamped with it is live
    assert await cache.get_or_set("row", load, policy) == 2
