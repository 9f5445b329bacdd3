"""MemoryBackend: the in-process twin of the Redis backend (values, expiry, bounds, fill tickets, tags, pub/sub).

What memory, Redis and Cluster must all do alike (fills, revocation, tag stamps) is pinned over the three
stores in tests/test_store_contract.py; here, with a fake clock that makes expiry exact: the in-process store's own
bounds, eviction and failure injection, and the edges of expiry a real clock cannot reach."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine
from typing import Any

import pytest

from cachelayer._backend import Backend, StoreUnavailable, Subscription
from cachelayer._errors import CacheClosedError
from cachelayer._memory_backend import ENTRY_OVERHEAD, MemoryBackend
from tests._doubles import FakeClock

WAIT = 5.0  # upper bound for anything a test waits on; it normally takes microseconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def backend(clock: FakeClock) -> MemoryBackend:
    return MemoryBackend(clock=clock)


def entry_size(key: str, value: bytes) -> int:
    """What a value is charged against ``max_bytes`` (a tag's stamp is a value like any other)."""
    return ENTRY_OVERHEAD + len(key) + len(value)


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
        backend.set("k", b"v", 1000),
        backend.get("k"),
        backend.get_many(["k", "x"]),
        backend.mark_stale(["k"], 0, b"w"),
        backend.tag_stamps(["t"], 2),
        backend.begin_fill("k", "me", 1000),
        backend.renew_fill("k", "me", 1000),
        backend.poll("k"),
        backend.fill("k", "me", b"w", 1000, ["t"], [bytes(16)]),
        backend.begin_fill("k", "me", 1000, exclusive=False),
        backend.end_fill("k", "me"),
        backend.invalidate_tags(["t"], mark_stale=True),
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
    with pytest.raises(ValueError, match="ttl_ms"):
        await backend.tag_stamps(["t"], 0)
    with pytest.raises(ValueError, match="stamps"):
        await backend.fill("k", "me", b"v", 1000, ["t"], [])
    with pytest.raises(ValueError, match="ttl_ms"):
        await backend.begin_fill("k", "me", 0)
    with pytest.raises(ValueError, match="ttl_ms"):
        await backend.renew_fill("k", "me", -1)
    assert await backend.begin_fill("k", "me", 1000)
    with pytest.raises(TypeError, match="bytes"):
        await backend.fill("k", "me", bytearray(b"v"), 1000)  # type: ignore[arg-type]
    assert await backend.poll("k") == (None, True)  # a refused call leaves the ticket alone
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


async def test_delete_revokes_the_tickets_and_keeps_the_stamps(backend: MemoryBackend) -> None:
    [stamp] = await backend.tag_stamps(["tag"], 10_000)
    await backend.set("k", b"v", 1000)
    assert await backend.begin_fill("k", "me", 1000)
    assert await backend.delete("k") == 1
    assert await backend.poll("k") == (None, False)  # the ticket went with the value, in the same step
    assert await backend.fill("k", "me", b"old", 1000) is False
    assert await backend.get("k") is None
    assert await backend.get("tag") == stamp  # a tag's stamp is not the value's to delete
    assert await backend.begin_fill("k", "next", 1000) is True  # a load that starts after the delete may store
    assert await backend.fill("k", "next", b"new", 1000) is True
    assert await backend.begin_fill("missing", "me", 1000)
    assert await backend.delete("missing") == 0  # counts values, not tickets: but revokes them all the same
    assert await backend.poll("missing") == (None, False)


async def test_delete_removes_whatever_it_names_and_counts_only_values(backend: MemoryBackend) -> None:
    """The cache passes value keys only; a ticket hash named directly still goes (as DEL removes any key), but
    only values are counted (a tag's stamp is a value)."""
    await backend.set("k", b"v", 1000)
    await backend.begin_fill("k", "me", 1000)
    assert await backend.delete("k:lease") == 0
    assert await backend.poll("k") == (b"v", False)
    assert backend.stats()["store_bytes"] == entry_size("k", b"v")


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
    await backend.tag_stamps(["a:tag:{x}"], 10_000)
    await backend.set("a:{1}", b"v", 1000)
    await backend.set("a:{2}", b"v", 1000)
    await backend.set("a:{old}", b"v", 10)
    await backend.begin_fill("a:{1}", "me", 1000)
    [kept] = await backend.tag_stamps(["b:tag:{x}"], 10_000)
    await backend.set("b:{1}", b"v", 1000)
    await backend.begin_fill("b:{1}", "me", 1000)
    clock.advance(0.5)
    assert await backend.clear("a:") == 4  # two values, a ticket hash, a tag's stamp; not the expired value
    assert await backend.get_many(["a:{1}", "a:{2}", "b:{1}"]) == [None, None, b"v"]
    assert await backend.fill("a:{1}", "me", b"old", 1000) is False  # clear revokes the tickets it covers
    assert await backend.get("b:tag:{x}") == kept
    stats = backend.stats()
    assert (stats["store_entries"], stats["store_leases"]) == (2, 1)
    assert await backend.clear("") == 3
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


async def test_mark_stale_poll_and_fill_count_as_uses(clock: FakeClock) -> None:
    backend = MemoryBackend(max_entries=4, clock=clock)
    for key in "abcd":
        await backend.set(key, b"v", 1000)
    await backend.mark_stale(["a"], 0, b"w")
    await backend.poll("b")
    await backend.begin_fill("c", "me", 1000)
    await backend.fill("c", "me", b"v2", 1000)
    await backend.set("e", b"v", 1000)
    assert await backend.get_many(["a", "b", "c", "d", "e"]) == [b"w", b"v", b"v2", None, b"v"]


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
    await backend.set("k", b"x" * backend.max_bytes, 1000)
    assert await backend.get("k") is None  # the old value went too: never serve what a write replaced
    assert await backend.get("other") == b"x"  # nothing else was evicted for a value that cannot fit
    assert backend.stats()["store_evictions"] == 1
    assert backend.stats()["store_bytes"] == entry_size("other", b"x")


# -- fill tickets -------------------------------------------------------------------------------------------


async def test_an_exclusive_ticket_is_taken_once(backend: MemoryBackend) -> None:
    assert await backend.begin_fill("k", "one", 1000) is True
    assert await backend.begin_fill("k", "two", 1000) is False
    assert await backend.begin_fill("k", "one", 1000) is False  # even for the holder: the lease is taken
    assert backend.stats()["store_leases"] == 1


async def test_shared_tickets_run_side_by_side_and_each_fills_once(backend: MemoryBackend) -> None:
    assert await backend.begin_fill("k", "a", 1000, exclusive=False) is True
    assert await backend.begin_fill("k", "b", 1000, exclusive=False) is True
    assert await backend.begin_fill("k", "c", 1000) is False  # a shared ticket is held: no lease
    assert await backend.fill("k", "a", b"from a", 1000) is True
    assert await backend.fill("k", "a", b"again", 1000) is False  # the fill used a's ticket
    assert await backend.poll("k") == (b"from a", True)  # b's ticket stays valid
    assert await backend.fill("k", "b", b"from b", 1000) is True
    assert await backend.poll("k") == (b"from b", False)
    assert backend.stats()["store_leases"] == 0  # an empty hash does not exist


async def test_a_shared_ticket_joins_a_held_lease_and_only_lengthens_it(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    start = clock.now
    assert await backend.begin_fill("k", "holder", 1000) is True
    assert await backend.begin_fill("k", "joiner", 100, exclusive=False) is True  # does not shorten the 1 s
    clock.now = start + 0.5
    assert await backend.renew_fill("k", "joiner", 100) is True  # nor does a shorter renewal
    clock.now = start + 0.9
    assert await backend.fill("k", "joiner", b"v", 1000) is True
    assert await backend.poll("k") == (b"v", True)  # the holder's ticket lives on
    clock.now = start + 1.0
    assert await backend.poll("k") == (b"v", False)
    assert await backend.fill("k", "holder", b"late", 1000) is False


async def test_renew_and_end_only_by_the_tickets_holder(backend: MemoryBackend, clock: FakeClock) -> None:
    start = clock.now
    await backend.begin_fill("k", "one", 100)
    assert await backend.renew_fill("k", "two", 1000) is False
    assert await backend.renew_fill("k", "one", 1000) is True
    clock.now = start + 0.5  # past the first TTL, within the renewed one
    assert (await backend.poll("k"))[1] is True
    await backend.end_fill("k", "two")
    assert (await backend.poll("k"))[1] is True
    await backend.end_fill("k", "one")
    assert (await backend.poll("k"))[1] is False
    assert await backend.fill("k", "one", b"v", 1000) is False  # an ended ticket stores nothing
    assert await backend.get("k") is None
    assert await backend.begin_fill("k", "two", 100) is True


async def test_a_ticket_lapses_and_its_fill_is_refused(backend: MemoryBackend, clock: FakeClock) -> None:
    await backend.begin_fill("k", "one", 100)
    clock.advance(0.1)
    assert await backend.poll("k") == (None, False)
    assert await backend.renew_fill("k", "one", 1000) is False
    assert await backend.fill("k", "one", b"late", 1000) is False  # a silent loader's value is never stored
    assert await backend.get("k") is None
    assert await backend.begin_fill("k", "two", 100) is True
    await backend.end_fill("k", "one")  # the old holder cannot end the new holder's ticket
    assert (await backend.poll("k"))[1] is True


async def test_fill_is_a_compare_and_set(backend: MemoryBackend, clock: FakeClock) -> None:
    assert await backend.fill("k", "nobody", b"v", 1000) is False  # no ticket: nothing stored
    assert await backend.get("k") is None
    await backend.begin_fill("k", "me", 1000)
    assert await backend.fill("k", "me", b"v", 250) is True
    assert await backend.poll("k") == (b"v", False)  # the fill dropped the ticket in the same step
    assert backend.stats()["store_bytes"] == entry_size("k", b"v")
    clock.advance(0.25)
    assert await backend.get("k") is None  # stored for the fill's TTL


@pytest.mark.parametrize("invalidation", ["delete", "mark_stale", "set", "set_many", "clear"])
async def test_every_invalidation_revokes_every_ticket_of_the_key(backend: MemoryBackend, invalidation: str) -> None:
    await backend.set("k", b"old", 1000)
    await backend.begin_fill("k", "a", 1000, exclusive=False)
    await backend.begin_fill("k", "b", 1000, exclusive=False)
    await backend.begin_fill("other", "c", 1000)
    if invalidation == "delete":
        await backend.delete("k")
    elif invalidation == "mark_stale":
        await backend.mark_stale(["k"], 0, b"S")
    elif invalidation == "set":
        await backend.set("k", b"written", 1000)
    elif invalidation == "set_many":
        await backend.set_many([("k", b"written", 1000)])
    else:
        await backend.clear("k")
    left = await backend.get("k")
    assert await backend.poll("k") == (left, False)
    for token in ("a", "b"):
        assert await backend.fill("k", token, b"loaded before", 1000) is False
    assert await backend.get("k") == left  # what the invalidation left stands
    assert await backend.fill("other", "c", b"v", 1000) is True  # other keys' tickets are untouched


async def test_poll_returns_the_value_and_whether_a_ticket_is_held(backend: MemoryBackend) -> None:
    await backend.set("k", b"v", 1000)
    assert await backend.poll("k") == (b"v", False)
    await backend.begin_fill("k", "me", 1000)
    assert await backend.poll("k") == (b"v", True)
    assert await backend.poll("missing") == (None, False)
    await backend.begin_fill("missing", "me", 1000)
    assert await backend.poll("missing") == (None, True)


async def test_the_ticket_table_is_bounded(clock: FakeClock) -> None:
    backend = MemoryBackend(max_leases=2, clock=clock)
    await backend.begin_fill("k1", "t", 10)
    await backend.begin_fill("k2", "t", 1000)
    with pytest.raises(StoreUnavailable, match="max_leases"):
        await backend.begin_fill("k3", "t", 1000)
    assert backend.stats()["store_errors"] == 1
    assert await backend.begin_fill("k2", "u", 1000, exclusive=False) is True  # a held hash takes more tokens
    clock.advance(0.5)  # k1's ticket lapsed: its room is reused, a live ticket is never broken
    assert await backend.begin_fill("k3", "t", 1000) is True
    assert (await backend.poll("k2"))[1] is True
    assert backend.stats()["store_leases"] == 2


# -- tags: one stamp per tag, an ordinary value -----------------------------------------------------------------


async def test_a_stamp_is_a_value_made_once_and_charged_like_one(backend: MemoryBackend) -> None:
    first, second = await backend.tag_stamps(["t1", "t2"], 10_000)
    assert first != second
    assert len(first) == len(second) == 16
    assert await backend.tag_stamps(["t1"], 10_000) == [first]
    assert await backend.get_many(["t1", "t2", "none"]) == [first, second, None]
    assert backend.stats()["store_bytes"] == entry_size("t1", first) + entry_size("t2", second)


async def test_a_stamps_life_only_lengthens(backend: MemoryBackend, clock: FakeClock) -> None:
    start = clock.now
    [stamp] = await backend.tag_stamps(["t"], 10_000)
    assert await backend.tag_stamps(["t"], 5_000) == [stamp]  # does not shorten the 10 s
    clock.now = start + 9.999
    assert await backend.get("t") == stamp
    assert await backend.tag_stamps(["t"], 20_000) == [stamp]  # lengthened from now
    clock.now = start + 29.998
    assert await backend.get("t") == stamp
    clock.now = start + 30
    assert await backend.get("t") is None
    [anew] = await backend.tag_stamps(["t"], 1000)
    assert anew != stamp  # never the old one again


async def test_invalidating_a_tag_keeps_the_stamps_life(backend: MemoryBackend, clock: FakeClock) -> None:
    start = clock.now
    [stamp] = await backend.tag_stamps(["t"], 10_000)
    assert await backend.invalidate_tags(["t", "missing"]) == 1
    [deleted] = await backend.get_many(["t"])
    assert deleted is not None
    assert deleted[:8] != stamp[:8]
    assert await backend.invalidate_tags(["t"], mark_stale=True) == 1
    [marked] = await backend.get_many(["t"])
    assert marked is not None
    assert marked[:8] == deleted[:8]
    assert marked != deleted
    assert await backend.get("missing") is None  # never created
    clock.now = start + 10
    assert await backend.get("t") is None


async def test_a_fill_checks_every_stamp(backend: MemoryBackend) -> None:
    stamps = await backend.tag_stamps(["t", "u"], 10_000)
    await backend.begin_fill("k", "me", 1000)
    assert await backend.fill("k", "me", b"v", 1000, ["t", "u"], [stamps[0], bytes(16)]) is False
    assert await backend.poll("k") == (None, False)  # the ticket went with the refusal
    await backend.begin_fill("k", "me", 1000)
    backend.evict("u")  # an evicted stamp refuses too: it can never match again
    assert await backend.fill("k", "me", b"v", 1000, ["t", "u"], stamps) is False
    await backend.begin_fill("k", "me", 1000)
    assert await backend.fill("k", "me", b"v", 1000, ["t"], stamps[:1]) is True



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
        backend.begin_fill("k", "t", 1000),
        backend.renew_fill("k", "t", 1000),
        backend.end_fill("k", "t"),
        backend.fill("k", "t", b"v", 1000),
        backend.poll("k"),
        backend.tag_stamps(["t"], 1000),
        backend.invalidate_tags(["t"]),
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


async def test_a_stamp_named_in_a_delete_is_a_value_like_any_other(backend: MemoryBackend) -> None:
    await backend.tag_stamps(["t"], 10_000)
    await backend.set("k", b"v", 1000)
    assert await backend.delete("k", "t") == 2
    assert backend.stats()["store_bytes"] == 0


async def test_evict_removes_what_a_redis_eviction_would_without_revoking(backend: MemoryBackend) -> None:
    await backend.set("k", b"v", 1000)
    await backend.tag_stamps(["t"], 1000)
    assert await backend.begin_fill("k", "me", 1000)
    assert backend.evict("k") is True  # the value only: the ticket stays valid
    assert await backend.get("k") is None
    assert await backend.fill("k", "me", b"w", 1000) is True
    assert backend.evict("t") is True  # a tag's stamp
    assert await backend.get("t") is None
    assert await backend.begin_fill("k", "me", 1000)
    assert backend.evict("k:lease") is True  # a ticket hash: the fill is then refused
    assert await backend.fill("k", "me", b"x", 1000) is False
    assert backend.evict("missing") is False
    assert backend.stats()["store_evictions"] == 3
