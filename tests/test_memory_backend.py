"""MemoryBackend: the in-process twin of the Redis backend (values, expiry, bounds, leases, tags, pub/sub)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine
from typing import Any

import pytest

from cachelayer._backend import Backend, StoreUnavailable, Subscription
from cachelayer._errors import CacheClosedError
from cachelayer._memory_backend import ENTRY_OVERHEAD, TAG_MEMBER_OVERHEAD, MemoryBackend
from tests._doubles import FakeClock

WAIT = 5.0  # upper bound for anything a test waits on; it normally takes microseconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def backend(clock: FakeClock) -> MemoryBackend:
    return MemoryBackend(clock=clock)


def entry_size(key: str, value: bytes, *tag_keys: str) -> int:
    return ENTRY_OVERHEAD + len(key) + len(value) + sum(TAG_MEMBER_OVERHEAD + len(tag) for tag in tag_keys)


# -- the protocol ---------------------------------------------------------------------------------------------


def test_satisfies_the_backend_protocol(backend: MemoryBackend) -> None:
    assert isinstance(backend, Backend)
    statically: Backend = backend  # mypy checks the signatures too
    assert statically is backend
    subscription: Subscription = backend.subscription()
    for name in ("subscribe", "unsubscribe", "next_message", "ping", "aclose", "alive_at"):
        assert hasattr(subscription, name)


def test_calls_complete_without_yielding_to_the_loop(backend: MemoryBackend) -> None:
    """Atomic with respect to other tasks: each coroutine finishes on its first step."""
    calls: list[Coroutine[Any, Any, Any]] = [
        backend.set("k", b"v", 1000, ["t"], 2),
        backend.get("k"),
        backend.get_many(["k", "x"]),
        backend.mark_stale(["k"], 0, b"w"),
        backend.acquire_lease("k:lease", "me", 1000),
        backend.poll("k", "k:lease"),
        backend.tag_members("t"),
        backend.publish("ch", b"m"),
        backend.delete("k"),
        backend.clear(""),
    ]
    for call in calls:
        with pytest.raises(StopIteration):
            call.send(None)


async def test_connect_ping_and_stats(backend: MemoryBackend) -> None:
    await backend.connect()
    await backend.connect()
    await backend.ping()
    await backend.set("k", b"value", 1000)
    stats = backend.stats()
    assert stats["store_errors"] == 0
    assert "breaker_state" not in stats  # no breaker to report: a GuardedBackend adds one
    assert stats["store_entries"] == 1
    assert stats["store_bytes"] == entry_size("k", b"value")
    assert stats["store_evictions"] == 0


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryBackend(max_entries=0)


# -- values ---------------------------------------------------------------------------------------------------


async def test_set_get_keeps_the_bytes_object_itself(backend: MemoryBackend) -> None:
    value = b"x" * 1000
    await backend.set("k", value, 1000)
    assert await backend.get("k") is value
    assert await backend.get("missing") is None


async def test_get_many_and_set_many(backend: MemoryBackend) -> None:
    await backend.set_many([("a", b"1", 1000), ("b", b"2", 1000)])
    assert await backend.get_many(["a", "missing", "b"]) == [b"1", None, b"2"]
    assert await backend.get_many([]) == []


async def test_bad_arguments_are_programming_errors(backend: MemoryBackend) -> None:
    with pytest.raises(ValueError, match="ttl_ms"):
        await backend.set("k", b"v", 0)
    with pytest.raises(ValueError, match="tag_ttl_s"):
        await backend.set("k", b"v", 1000, ["t"], 0)
    with pytest.raises(TypeError, match="bytes"):
        await backend.set("k", "text", 1000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl_ms"):  # nothing of a bad batch is written
        await backend.set_many([("a", b"1", 1000), ("b", b"2", -1)])
    assert await backend.get("a") is None
    with pytest.raises(ValueError, match="offset"):
        await backend.mark_stale(["k"], -1, b"x")


async def test_expiry_is_millisecond_precise(backend: MemoryBackend, clock: FakeClock) -> None:
    start = clock.now
    await backend.set("k", b"v", 250)
    clock.now = start + 0.249
    assert await backend.get("k") == b"v"
    clock.now = start + 0.250
    assert await backend.get("k") is None
    assert backend.stats()["store_entries"] == 0
    assert backend.stats()["store_expired"] == 1


async def test_set_replaces_value_and_expiry(backend: MemoryBackend, clock: FakeClock) -> None:
    await backend.set("k", b"old", 100)
    await backend.set("k", b"newer", 1000)
    clock.advance(0.5)
    assert await backend.get("k") == b"newer"
    assert backend.stats()["store_bytes"] == entry_size("k", b"newer")


async def test_sweep_removes_expired_values_a_bounded_number_per_call(backend: MemoryBackend, clock: FakeClock) -> None:
    await backend.set_many([(f"k{i}", b"v", 10) for i in range(40)])
    await backend.set("keep", b"v", 10_000)
    clock.advance(1)
    await backend.ping()  # an unrelated call sweeps a little
    assert backend.stats()["store_entries"] == 41 - 16
    for _ in range(2):
        await backend.ping()
    assert backend.stats()["store_entries"] == 1
    assert backend.stats()["store_bytes"] == entry_size("keep", b"v")


async def test_expiry_records_stay_bounded_under_rewrites(backend: MemoryBackend) -> None:
    for _ in range(5000):
        await backend.set("k", b"v", 1000)
    assert len(backend._expiries) <= 2 * 1 + 1024 + 1


async def test_delete_counts_what_existed(backend: MemoryBackend, clock: FakeClock) -> None:
    await backend.set("a", b"1", 1000)
    await backend.set("b", b"2", 1000)
    await backend.set("gone", b"3", 10)
    clock.advance(0.5)
    assert await backend.delete("a", "missing", "gone") == 1
    assert await backend.get("a") is None
    assert await backend.get("b") == b"2"
    assert await backend.delete() == 0
    assert backend.stats()["store_entries"] == 1


async def test_delete_removes_leases_and_tag_sets_too(backend: MemoryBackend) -> None:
    await backend.set("k", b"v", 1000, ["tag"], 10)
    await backend.acquire_lease("k:lease", "me", 1000)
    assert await backend.delete("tag", "k:lease", "tag") == 2
    assert await backend.tag_members("tag") == []
    assert await backend.poll("k", "k:lease") == (b"v", False)
    assert backend.stats()["store_bytes"] == entry_size("k", b"v")  # the membership is no longer charged


# -- mark_stale (SETRANGE of each existing key) ----------------------------------------------------------------


async def test_mark_stale_writes_in_place_and_keeps_expiry(backend: MemoryBackend, clock: FakeClock) -> None:
    start = clock.now
    await backend.set("k", b"hello world", 100)
    assert await backend.mark_stale(["k"], 6, b"WORLD") == 1
    assert await backend.get("k") == b"hello WORLD"
    clock.now = start + 0.1
    assert await backend.get("k") is None


async def test_mark_stale_of_an_absent_or_expired_key_writes_nothing(backend: MemoryBackend, clock: FakeClock) -> None:
    assert await backend.mark_stale(["missing"], 0, b"x") == 0
    assert await backend.get("missing") is None
    await backend.set("k", b"v", 10)
    clock.advance(1)
    assert await backend.mark_stale(["k"], 0, b"x") == 0
    assert await backend.get("k") is None


async def test_mark_stale_past_the_end_extends_like_setrange(backend: MemoryBackend) -> None:
    await backend.set("k", b"abc", 1000)
    assert await backend.mark_stale(["k"], 2, b"XYZ") == 1
    assert await backend.get("k") == b"abXYZ"
    assert await backend.mark_stale(["k"], 7, b"!") == 1
    assert await backend.get("k") == b"abXYZ\0\0!"
    assert await backend.mark_stale(["k"], 20, b"") == 1  # an empty write changes nothing, not even the length
    assert await backend.get("k") == b"abXYZ\0\0!"
    assert backend.stats()["store_bytes"] == entry_size("k", b"abXYZ\0\0!")


# -- clear ----------------------------------------------------------------------------------------------------


async def test_clear_by_prefix(backend: MemoryBackend, clock: FakeClock) -> None:
    await backend.set("a:1", b"v", 1000, ["a:tag:x"], 10)
    await backend.set("a:2", b"v", 1000)
    await backend.set("a:old", b"v", 10)
    await backend.acquire_lease("a:1:lease", "me", 1000)
    await backend.set("b:1", b"v", 1000, ["b:tag:x"], 10)
    clock.advance(0.5)
    assert await backend.clear("a:") == 4  # two values, a lease, a tag set; not the expired value
    assert await backend.get_many(["a:1", "a:2", "b:1"]) == [None, None, b"v"]
    assert await backend.tag_members("b:tag:x") == ["b:1"]
    stats = backend.stats()
    assert (stats["store_entries"], stats["store_leases"], stats["store_tag_sets"]) == (1, 0, 1)
    assert await backend.clear("") == 2
    assert backend.stats()["store_bytes"] == 0


# -- bounds and eviction --------------------------------------------------------------------------------------


async def test_eviction_by_entries_is_lru(clock: FakeClock) -> None:
    backend = MemoryBackend(max_entries=3, clock=clock)
    for key in "abc":
        await backend.set(key, b"v", 1000)
    assert await backend.get("a") == b"v"  # b is now the least recently used
    await backend.set("d", b"v", 1000)
    assert await backend.get_many(["a", "b", "c", "d"]) == [b"v", None, b"v", b"v"]
    assert backend.stats()["store_evictions"] == 1


async def test_mark_stale_and_poll_count_as_uses(clock: FakeClock) -> None:
    backend = MemoryBackend(max_entries=3, clock=clock)
    for key in "abc":
        await backend.set(key, b"v", 1000)
    await backend.mark_stale(["a"], 0, b"w")
    await backend.poll("b", "b:lease")
    await backend.set("d", b"v", 1000)
    assert await backend.get("c") is None


async def test_expired_values_go_before_lru_ones(clock: FakeClock) -> None:
    backend = MemoryBackend(max_entries=3, clock=clock)
    await backend.set("old", b"v", 1000)
    await backend.set("short", b"v", 10)
    await backend.set("recent", b"v", 1000)
    clock.advance(0.5)
    await backend.set("new", b"v", 1000)
    assert await backend.get_many(["old", "recent", "new"]) == [b"v", b"v", b"v"]
    assert backend.stats()["store_evictions"] == 0


async def test_eviction_by_bytes_is_lru(clock: FakeClock) -> None:
    value = b"x" * 100
    backend = MemoryBackend(max_bytes=3 * entry_size("a", value), clock=clock)
    for key in "abc":
        await backend.set(key, value, 1000)
    assert backend.stats()["store_bytes"] == 3 * entry_size("a", value)
    await backend.get("a")
    await backend.set("d", value, 1000)
    assert await backend.get_many(["a", "b", "c", "d"]) == [value, None, value, value]
    await backend.set("e", value * 2, 1000)  # needs the room of two: c and a go
    assert await backend.get_many(["a", "c", "d", "e"]) == [None, None, value, value * 2]
    assert backend.stats()["store_evictions"] == 3
    assert backend.stats()["store_bytes"] <= backend.max_bytes


async def test_growing_mark_stale_evicts_others(clock: FakeClock) -> None:
    backend = MemoryBackend(max_bytes=2 * entry_size("a", b"x" * 100), clock=clock)
    await backend.set("a", b"x" * 100, 1000)
    await backend.set("b", b"x" * 100, 1000)
    assert await backend.mark_stale(["b"], 100, b"y" * 50) == 1
    assert await backend.get("a") is None
    assert await backend.get("b") == b"x" * 100 + b"y" * 50


async def test_a_value_larger_than_max_bytes_is_not_stored(clock: FakeClock) -> None:
    backend = MemoryBackend(max_bytes=3 * entry_size("k", b"x" * 100), clock=clock)
    await backend.set("other", b"x", 1000)
    await backend.set("k", b"x" * 50, 1000)
    await backend.set("k", b"x" * backend.max_bytes, 1000, ["tag"], 10)
    assert await backend.get("k") is None  # the old value went too: never serve what a write replaced
    assert await backend.tag_members("tag") == []
    assert await backend.get("other") == b"x"  # nothing else was evicted for a value that cannot fit
    assert backend.stats()["store_evictions"] == 1
    assert backend.stats()["store_bytes"] == entry_size("other", b"x")


# -- leases ---------------------------------------------------------------------------------------------------


async def test_lease_is_taken_once(backend: MemoryBackend) -> None:
    assert await backend.acquire_lease("L", "one", 1000) is True
    assert await backend.acquire_lease("L", "two", 1000) is False
    assert await backend.acquire_lease("L", "one", 1000) is False  # NX, even for the holder


async def test_lease_renew_and_release_only_by_its_holder(backend: MemoryBackend, clock: FakeClock) -> None:
    start = clock.now
    await backend.acquire_lease("L", "one", 100)
    assert await backend.renew_lease("L", "two", 1000) is False
    assert await backend.renew_lease("L", "one", 1000) is True
    clock.now = start + 0.5  # past the first TTL, within the renewed one
    assert (await backend.poll("k", "L"))[1] is True
    await backend.release_lease("L", "two")
    assert (await backend.poll("k", "L"))[1] is True
    await backend.release_lease("L", "one")
    assert (await backend.poll("k", "L"))[1] is False
    assert await backend.acquire_lease("L", "two", 100) is True


async def test_lease_expires(backend: MemoryBackend, clock: FakeClock) -> None:
    await backend.acquire_lease("L", "one", 100)
    clock.advance(0.1)
    assert await backend.poll("k", "L") == (None, False)
    assert await backend.renew_lease("L", "one", 1000) is False
    assert await backend.acquire_lease("L", "two", 100) is True
    await backend.release_lease("L", "one")  # the old holder cannot free the new holder's lease
    assert (await backend.poll("k", "L"))[1] is True


async def test_poll_returns_value_and_lease_state(backend: MemoryBackend) -> None:
    await backend.set("k", b"v", 1000)
    assert await backend.poll("k", "k:lease") == (b"v", False)
    await backend.acquire_lease("k:lease", "me", 1000)
    assert await backend.poll("k", "k:lease") == (b"v", True)
    assert await backend.poll("missing", "k:lease") == (None, True)


async def test_lease_table_is_bounded(clock: FakeClock) -> None:
    backend = MemoryBackend(max_leases=2, clock=clock)
    await backend.acquire_lease("L1", "t", 10)
    await backend.acquire_lease("L2", "t", 1000)
    with pytest.raises(StoreUnavailable, match="max_leases"):
        await backend.acquire_lease("L3", "t", 1000)
    assert backend.stats()["store_errors"] == 1
    clock.advance(0.5)  # L1 expired: its room is reused, the live lease is never broken
    assert await backend.acquire_lease("L3", "t", 1000) is True
    assert (await backend.poll("k", "L2"))[1] is True
    assert backend.stats()["store_leases"] == 2


# -- tags -----------------------------------------------------------------------------------------------------


async def test_tag_members_sorted(backend: MemoryBackend) -> None:
    await backend.set("b", b"v", 1000, ["t1", "t2"], 10)
    await backend.set("a", b"v", 1000, ["t1"], 10)
    assert await backend.tag_members("t1") == ["a", "b"]
    assert await backend.tag_members("t2") == ["b"]
    assert await backend.tag_members("none") == []
    assert backend.stats()["store_bytes"] == entry_size("a", b"v", "t1") + entry_size("b", b"v", "t1", "t2")


async def test_tag_set_expiry_only_lengthens(backend: MemoryBackend, clock: FakeClock) -> None:
    start = clock.now
    await backend.set("a", b"v", 100_000, ["t"], 10)
    await backend.set("b", b"v", 100_000, ["t"], 5)  # does not shorten the set's 10 s
    clock.now = start + 9
    assert await backend.tag_members("t") == ["a", "b"]
    await backend.set("c", b"v", 100_000, ["t"], 20)  # lengthens it to start + 29
    clock.now = start + 28.999
    assert await backend.tag_members("t") == ["a", "b", "c"]
    clock.now = start + 29
    assert await backend.tag_members("t") == []
    assert backend.stats()["store_tag_sets"] == 0
    assert backend.stats()["store_bytes"] == sum(entry_size(key, b"v") for key in "abc")


async def test_remove_tag_members(backend: MemoryBackend) -> None:
    await backend.set("a", b"v", 1000, ["t"], 10)
    await backend.set("b", b"v", 1000, ["t"], 10)
    await backend.remove_tag_members("t", ["a", "missing"])
    assert await backend.tag_members("t") == ["b"]
    assert await backend.get("a") == b"v"  # the value stays
    await backend.remove_tag_members("t", ["b"])
    assert backend.stats()["store_tag_sets"] == 0  # an empty set does not exist
    await backend.remove_tag_members("missing", ["a"])


async def test_tag_sets_lose_members_whose_value_is_gone(backend: MemoryBackend, clock: FakeClock) -> None:
    await backend.set("deleted", b"v", 1000, ["t"], 10)
    await backend.set("expires", b"v", 100, ["t"], 10)
    await backend.set("stays", b"v", 1000, ["t"], 10)
    await backend.delete("deleted")
    assert await backend.tag_members("t") == ["expires", "stays"]
    clock.advance(0.1)
    assert await backend.tag_members("t") == ["stays"]
    await backend.delete("stays")
    assert backend.stats()["store_tag_sets"] == 0
    assert backend.stats()["store_bytes"] == 0


async def test_rewriting_a_value_keeps_its_tag_memberships(backend: MemoryBackend) -> None:
    """As in Redis, where SET leaves the tag sets alone: invalidating the old tag still removes the key."""
    await backend.set("k", b"v1", 1000, ["old"], 10)
    await backend.set("k", b"v2", 1000, ["new"], 10)
    await backend.set("k", b"v3", 1000)
    assert await backend.tag_members("old") == ["k"]
    assert await backend.tag_members("new") == ["k"]


async def test_evicted_values_leave_their_tag_sets(clock: FakeClock) -> None:
    backend = MemoryBackend(max_entries=1, clock=clock)
    await backend.set("a", b"v", 1000, ["t"], 10)
    await backend.set("b", b"v", 1000, ["t"], 10)
    assert await backend.tag_members("t") == ["b"]


# -- publish / subscribe --------------------------------------------------------------------------------------


async def test_publish_reaches_every_subscriber_of_the_channel(backend: MemoryBackend) -> None:
    first, second, elsewhere = backend.subscription(), backend.subscription(), backend.subscription()
    await first.subscribe("ch")
    await second.subscribe("ch", "other")
    await elsewhere.subscribe("other")
    data = b"payload"
    await backend.publish("ch", data)
    await backend.publish("ch", b"second", sharded=True)  # sharded means the same here
    for subscription in (first, second):
        message = await subscription.next_message(WAIT)
        assert message == ("ch", data)
        assert message is not None
        assert message[1] is data  # the same bytes object, not a copy
        assert await subscription.next_message(WAIT) == ("ch", b"second")
        assert await subscription.next_message(0) is None
    assert await elsewhere.next_message(0) is None


async def test_a_waiting_reader_is_woken_by_publish(backend: MemoryBackend) -> None:
    subscription = backend.subscription()
    await subscription.subscribe("ch")
    reader = asyncio.create_task(subscription.next_message(WAIT))
    await asyncio.sleep(0)  # let the reader start waiting
    assert not reader.done()
    await backend.publish("ch", b"m")
    assert await asyncio.wait_for(reader, WAIT) == ("ch", b"m")


async def test_unsubscribe(backend: MemoryBackend) -> None:
    subscription = backend.subscription()
    await subscription.subscribe("a", "b", "c")
    await subscription.unsubscribe("a")
    await backend.publish("a", b"1")
    await backend.publish("b", b"2")
    assert await subscription.next_message(WAIT) == ("b", b"2")
    await subscription.unsubscribe()  # every channel
    await backend.publish("b", b"3")
    await backend.publish("c", b"4")
    assert await subscription.next_message(0) is None


async def test_queue_drops_the_oldest_when_full(clock: FakeClock) -> None:
    backend = MemoryBackend(max_queued_messages=3, clock=clock)
    subscription = backend.subscription()
    await subscription.subscribe("ch")
    for i in range(5):
        await backend.publish("ch", str(i).encode())
    with pytest.raises(StoreUnavailable, match="2 message"):  # the reader learns that it missed messages
        await subscription.next_message(WAIT)
    assert [await subscription.next_message(WAIT) for _ in range(3)] == [("ch", b"2"), ("ch", b"3"), ("ch", b"4")]
    assert await subscription.next_message(0) is None
    assert subscription.dropped == 2
    assert backend.stats()["pubsub_dropped"] == 2


async def test_alive_at_moves_on_subscribe_ping_and_message(backend: MemoryBackend) -> None:
    subscription = backend.subscription()
    assert subscription.alive_at == -math.inf
    await subscription.subscribe("ch")
    after_subscribe = subscription.alive_at
    assert after_subscribe > -math.inf
    await subscription.ping()
    assert subscription.alive_at >= after_subscribe
    subscription.alive_at = 0.0
    await backend.publish("ch", b"m")
    await subscription.next_message(WAIT)
    assert subscription.alive_at > 0.0


async def test_closed_subscription(backend: MemoryBackend) -> None:
    subscription = backend.subscription()
    await subscription.subscribe("ch")
    reader = asyncio.create_task(subscription.next_message(WAIT))
    await asyncio.sleep(0)
    await subscription.aclose()
    with pytest.raises(StoreUnavailable, match="closed"):
        await asyncio.wait_for(reader, WAIT)
    await subscription.aclose()
    await subscription.unsubscribe("ch")
    await backend.publish("ch", b"m")  # nobody listens any more
    with pytest.raises(StoreUnavailable, match="closed"):
        await subscription.next_message(0)


def test_usable_from_two_event_loops_in_turn() -> None:
    backend = MemoryBackend()
    subscription = backend.subscription()

    async def round_trip(data: bytes) -> None:
        await backend.set("k", data, 60_000)
        assert await backend.get("k") == data
        await subscription.subscribe("ch")
        reader = asyncio.create_task(subscription.next_message(WAIT))
        await asyncio.sleep(0)
        await backend.publish("ch", data)
        assert await asyncio.wait_for(reader, WAIT) == ("ch", data)
        assert await subscription.next_message(0) is None

    asyncio.run(round_trip(b"first"))
    asyncio.run(round_trip(b"second"))
    asyncio.run(backend.aclose())


# -- closing and failure injection ----------------------------------------------------------------------------


async def test_aclose_then_every_call_raises_cache_closed_error(backend: MemoryBackend) -> None:
    subscription = backend.subscription()
    await subscription.subscribe("ch")
    reader = asyncio.create_task(subscription.next_message(WAIT))
    await asyncio.sleep(0)
    await backend.set("k", b"v", 1000)
    await backend.aclose()
    await backend.aclose()  # safe twice
    with pytest.raises(StoreUnavailable, match="closed"):
        await asyncio.wait_for(reader, WAIT)
    calls: list[Coroutine[Any, Any, Any]] = [
        backend.connect(),
        backend.ping(),
        backend.get("k"),
        backend.get_many(["k"]),
        backend.set("k", b"v", 1000),
        backend.set_many([("k", b"v", 1000)]),
        backend.delete("k"),
        backend.mark_stale(["k"], 0, b"x"),
        backend.clear(""),
        backend.acquire_lease("L", "t", 1000),
        backend.renew_lease("L", "t", 1000),
        backend.release_lease("L", "t"),
        backend.poll("k", "L"),
        backend.tag_members("t"),
        backend.remove_tag_members("t", ["k"]),
        backend.publish("ch", b"m"),
        backend.subscription().subscribe("ch"),
    ]
    for call in calls:
        with pytest.raises(CacheClosedError, match="aclose"):  # a mistake, not an outage: never failed open
            await call
    assert backend.stats()["store_entries"] == 0


async def test_fail_with_and_recover(backend: MemoryBackend) -> None:
    await backend.set("k", b"v", 1000)
    backend.fail_with()
    with pytest.raises(StoreUnavailable, match="simulated"):
        await backend.get("k")
    with pytest.raises(StoreUnavailable):
        await backend.publish("ch", b"m")
    backend.recover()
    assert await backend.get("k") == b"v"
    assert backend.stats()["store_errors"] == 2


async def test_fail_with_chosen_methods_and_exception(backend: MemoryBackend) -> None:
    subscription = backend.subscription()
    await subscription.subscribe("ch")
    backend.fail_with(StoreUnavailable("timed out"), methods={"get", "next_message"})
    with pytest.raises(StoreUnavailable, match="timed out"):
        await backend.get("k")
    with pytest.raises(StoreUnavailable, match="timed out"):
        await subscription.next_message(0)
    await backend.set("k", b"v", 1000)  # not named: works
    await backend.publish("ch", b"m")
    backend.recover()
    assert await backend.get("k") == b"v"
    assert await subscription.next_message(WAIT) == ("ch", b"m")


async def test_deleting_a_value_and_its_only_tag_set_counts_both(backend: MemoryBackend) -> None:
    await backend.set("k", b"v", 1000, ["t"], 10)
    assert await backend.delete("k", "t") == 2
    assert backend.stats()["store_bytes"] == 0
