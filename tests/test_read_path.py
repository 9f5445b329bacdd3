"""The hit path's shortcuts keep every guarantee: a value is checked and decompressed once per stored value, never
served after its stored bytes changed; a coalesced read never answers a caller with a reply to a read sent before
the caller began; a coalesced read's caller or a flight's waiter that is cancelled ends only its own wait; callers
whose shared read found nothing are handed to the load that follows and wake once."""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio

from cachelayer import Cache, time_budget
from cachelayer._coalescing import NOT_TAKEN, HandedOff, ReadCoalescer
from cachelayer._codec import HEADER_SIZE, Codec
from cachelayer._stampede import SingleFlight
from cachelayer._typed import resolve_value_type
from tests._doubles import CountingLoader

PAGE = {"items": [{"id": i, "title": f"wallpaper {i}", "tags": ["a", "b"]} for i in range(40)]}


@pytest.fixture
async def cache(redis_url: str) -> Any:
    built = Cache.from_url(redis_url, namespace=f"readpath-{uuid.uuid4().hex[:8]}", default_ttl=60)
    yield built
    await built.aclose()


async def test_a_value_read_again_is_decompressed_once_and_each_hit_gets_its_own_copy(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    loader = CountingLoader(PAGE)
    await cache.get_or_set("k", loader)
    calls = 0
    serialized = Codec.serialized

    def counting(self: Codec, frame: Any) -> Any:
        nonlocal calls
        calls += 1
        return serialized(self, frame)

    monkeypatch.setattr(Codec, "serialized", counting)
    first = await cache.get_or_set("k", loader)
    second = await cache.get_or_set("k", loader)
    assert first == second == PAGE
    assert first is not second  # each hit parses a value of its own
    assert first["items"] is not second["items"]
    assert calls == 1  # the second read found equal bytes: checked and decompressed once
    assert loader.calls == 1


async def test_a_corrupted_value_is_refused_although_the_good_one_was_read_before(
    cache: Cache, redis_client: redis.asyncio.Redis
) -> None:
    loader = CountingLoader(PAGE)
    await cache.get_or_set("k", loader)
    assert await cache.get_or_set("k", loader) == PAGE  # read and remembered as checked
    key = cache.key("k")
    stored = await redis_client.get(key)
    assert isinstance(stored, bytes)
    flipped = bytes([stored[HEADER_SIZE + 5] ^ 0x01])
    await redis_client.setrange(key, HEADER_SIZE + 5, flipped)  # one bit of the payload, in place
    assert await cache.get_or_set("k", loader) == PAGE
    assert loader.calls == 2  # the corrupt bytes were a miss (dropped and reloaded), not the remembered value
    assert cache.stats()["decode_errors"] == 1


async def test_an_expiry_rewritten_in_place_is_seen_at_once(cache: Cache) -> None:
    loader = CountingLoader(PAGE)
    await cache.get_or_set("k", loader, tags=["t"])
    assert await cache.get_or_set("k", loader, tags=["t"]) == PAGE
    await cache.invalidate_tags("t", mark_stale=True)  # rewrites the expiry field in place
    entry = await cache.fetch("k", loader)
    assert entry.outcome == "miss"  # an invalidated entry is reloaded, whatever was read before
    assert loader.calls == 2


async def _call(read: Callable[[], Awaitable[Any]]) -> Any:
    return await read()


def _idle(reads: ReadCoalescer) -> bool:
    """Nothing left behind: no read in flight, none waiting to go out."""
    return not reads._pending and not reads._tasks


class _Store:
    """A read whose answer is the store's version when the read is performed, released by ``gate``."""

    def __init__(self) -> None:
        self.version = 0
        self.performed = 0
        self.gate = asyncio.Event()

    async def read(self) -> int:
        self.performed += 1
        answer = self.version  # what the store answers: its state when the command runs
        await self.gate.wait()  # the reply on its way back
        return answer


async def _until_idle(reads: ReadCoalescer) -> None:
    """Let the loop run until nothing is left behind (a yield at a time: no wait for time)."""
    for _ in range(100):
        if _idle(reads):
            return
        await asyncio.sleep(0)
    raise AssertionError("the coalescer still holds a read after 100 turns of the loop")


async def _in_flight_then(
    reads: ReadCoalescer, store: _Store, callers: int, version: int | None = None
) -> tuple[Any, list[Any]]:
    """A read of "k" in flight, then (the store at ``version``, when given) ``callers`` more that arrive while
    it is."""
    first = asyncio.create_task(reads.read("k", _call, store.read))
    await asyncio.sleep(0)
    if version is not None:
        store.version = version
    waiting = [asyncio.create_task(reads.read("k", _call, store.read)) for _ in range(callers)]
    await asyncio.sleep(0)
    return first, waiting


async def test_a_caller_never_gets_the_answer_of_a_read_sent_before_it_began() -> None:
    # The free-running consistency check's finding: a read joined one in flight, whose answer predated an
    # invalidation that had ended before the joining read began.
    reads, store = ReadCoalescer(), _Store()
    # An invalidation lands (and ends) while the first read's reply is on its way; then a second read begins.
    first, (second,) = await _in_flight_then(reads, store, 1, version=1)
    store.gate.set()
    assert await first == 0
    assert await second == 1  # not the first read's answer
    assert store.performed == 2
    assert _idle(reads)


async def test_callers_that_arrive_during_one_read_share_the_next() -> None:
    reads, store = ReadCoalescer(), _Store()
    first, waiting = await _in_flight_then(reads, store, 5, version=1)
    store.gate.set()
    assert await first == 0
    assert await asyncio.gather(*waiting) == [1] * 5
    assert store.performed == 2  # one read in flight at a time: the first, then one for the five
    assert _idle(reads)


async def test_a_cancelled_caller_of_a_coalesced_read_ends_only_its_own_wait() -> None:
    reads, store = ReadCoalescer(), _Store()
    first, waiting = await _in_flight_then(reads, store, 3)
    waiting[0].cancel()
    store.gate.set()
    assert await first == 0
    assert await asyncio.gather(*waiting[1:]) == [0, 0]
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
    assert store.performed == 2


async def test_waiting_callers_are_answered_when_the_read_in_flight_is_cancelled() -> None:
    reads, store = ReadCoalescer(), _Store()
    first, (waiting,) = await _in_flight_then(reads, store, 1)
    first.cancel()
    await asyncio.sleep(0)
    store.gate.set()
    assert await waiting == 0
    with pytest.raises(asyncio.CancelledError):
        await first
    assert _idle(reads)


async def test_no_read_goes_out_for_callers_that_all_went_away() -> None:
    reads, store = ReadCoalescer(), _Store()
    first, waiting = await _in_flight_then(reads, store, 2)
    for task in waiting:
        task.cancel()
    store.gate.set()
    assert await first == 0
    await asyncio.gather(*waiting, return_exceptions=True)
    await _until_idle(reads)  # the next read's task sees that nobody waits
    assert store.performed == 1
    assert _idle(reads)


async def test_the_next_reads_failure_reaches_each_of_its_callers() -> None:
    reads, gate = ReadCoalescer(), asyncio.Event()
    calls = 0

    async def read() -> bytes:
        nonlocal calls
        calls += 1
        mine = calls
        await gate.wait()
        if mine > 1:
            raise ConnectionError("store down")
        return b"value"

    first = asyncio.create_task(reads.read("k", _call, read))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(reads.read("k", _call, read)) for _ in range(2)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == b"value"
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
    assert calls == 2
    assert _idle(reads)


async def test_a_flight_error_reaches_every_waiter_and_is_retrieved() -> None:
    flights: SingleFlight[int] = SingleFlight()
    gate = asyncio.Event()

    async def work() -> int:
        await gate.wait()
        raise ValueError("loader failed")

    waiters = [asyncio.create_task(flights.run("k", work)) for _ in range(4)]
    await asyncio.sleep(0)
    waiters[1].cancel()
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [type(r) for r in results] == [ValueError, asyncio.CancelledError, ValueError, ValueError]
    assert len(flights) == 0


@pytest.mark.parametrize("where", ["memory", "redis"])
async def test_a_hit_mutated_by_its_caller_never_changes_the_next_hit(where: str, redis_url: str) -> None:
    url = "memory://" if where == "memory" else redis_url
    cache = Cache.from_url(url, namespace=f"readpath-{uuid.uuid4().hex[:8]}", default_ttl=60)
    try:
        loader = CountingLoader(result=lambda _: copy.deepcopy(PAGE))
        hits = [await cache.get_or_set("k", loader) for _ in range(5)]  # a load, a parse, then template copies
        for value in hits:
            value["items"][0]["tags"].append("mutated")
            value["items"].pop()
            value["extra"] = 1
        assert await cache.get_or_set("k", loader) == PAGE
        assert loader.calls == 1
    finally:
        await cache.aclose()


async def test_the_deepest_value_orjson_writes_is_copied_too(cache: Cache) -> None:
    deep: Any = []
    for _ in range(250):  # orjson writes at most 255 levels
        deep = [deep]
    loader = CountingLoader(deep)
    for _ in range(4):
        assert await cache.get_or_set("deep", loader) == deep
    assert loader.calls == 1


async def test_typed_hits_built_from_a_template_equal_decoding_and_are_each_callers_own(redis_url: str) -> None:
    from dataclasses import dataclass

    @dataclass
    class Row:
        id: int
        tags: list[str]
        score: float
        big: int

    cache = Cache.from_url(redis_url, namespace=f"readpath-{uuid.uuid4().hex[:8]}", default_ttl=60)
    rows = [Row(i, ["a"], 1, 2**70 if i == 3 else i) for i in range(5)]  # 2**70: orjson reads it as a float
    try:

        async def load() -> list[Row]:
            return copy.deepcopy(rows)

        value_type = resolve_value_type(list[Row], cache.codec.serializer, owner="test")
        hits = [(await cache.fetch("k", load, value_type=value_type)).value() for _ in range(5)]
        for hit in hits[1:]:  # the first is the load: the loader's own objects
            assert hit == rows
            assert type(hit[0]) is Row
            assert type(hit[0].score) is float  # stored as 1, read back as the annotated float
            hit[0].tags.append("mutated")
        assert (await cache.fetch("k", load, value_type=value_type)).value() == rows
        small = resolve_value_type(list[Row], cache.codec.serializer, owner="test")
        await cache.set("s", [Row(1, [], 2.5, 3)], value_type=small)
        for _ in range(4):
            assert (await cache.fetch("s", load, value_type=small)).value() == [Row(1, [], 2.5, 3)]
    finally:
        await cache.aclose()


# -- a shared read that finds nothing hands its callers to the load that follows --------------------------------


class _Taker:
    """A ``hand_off`` that takes every caller offered (or none) and keeps their futures, to resolve them itself."""

    def __init__(self, take: bool = True) -> None:
        self.take = take
        self.given: list[asyncio.Future[Any]] = []

    def __call__(self, key: str, waiters: list[asyncio.Future[Any]]) -> object:
        if not self.take:
            return NOT_TAKEN
        self.given.extend(waiters)
        return ("taken", key)


async def _shared_read(reads: ReadCoalescer, store: _Store, callers: list[str]) -> tuple[Any, list[Any]]:
    """A read of "k" in flight, then one caller per name in ``callers`` that waits for the next."""
    first = asyncio.create_task(reads.read("k", _call, store.read, "first"))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(reads.read("k", _call, store.read, name)) for name in callers]
    await asyncio.sleep(0)
    return first, waiting


async def test_callers_whose_shared_read_finds_nothing_wake_once_with_what_the_taker_gave_them() -> None:
    taker = _Taker()
    reads, store = ReadCoalescer(taker, lambda caller: caller != "keeps-its-read"), _Store()
    store.version = None  # type: ignore[assignment]  # a miss
    first, waiting = await _shared_read(reads, store, ["a", "b", "keeps-its-read", "c"])
    store.gate.set()
    assert await first is None  # the lone reader reads for itself
    assert await waiting[2] is None  # not allowed to be handed off: the read's answer
    await _until_idle(reads)
    assert len(taker.given) == 3
    assert not any(task.done() for task in (waiting[0], waiting[1], waiting[3]))  # asleep until the taker says
    failure = ValueError("the load failed")
    taker.given[0].set_result("loaded")
    taker.given[1].set_exception(failure)
    taker.given[2].set_result("loaded")
    assert await waiting[0] == HandedOff("loaded", None, ("taken", "k"))
    assert await waiting[1] == HandedOff(None, failure, ("taken", "k"))
    assert await waiting[3] == HandedOff("loaded", None, ("taken", "k"))
    assert store.performed == 2


@pytest.mark.parametrize("answer", ["a value", "a failure", "declined"])
async def test_a_shared_read_hands_nobody_off_unless_it_found_nothing_and_the_taker_took_them(answer: str) -> None:
    taker = _Taker(take=answer != "declined")
    reads, store = ReadCoalescer(taker, lambda caller: True), _Store()
    store.version = 7 if answer == "a value" else None  # type: ignore[assignment]
    if answer == "a failure":

        async def failing() -> int:
            await store.gate.wait()
            raise ConnectionError("store down")

        store.read = failing  # type: ignore[method-assign]
    first, waiting = await _shared_read(reads, store, ["a", "b"])
    store.gate.set()
    results = await asyncio.gather(first, *waiting, return_exceptions=True)
    if answer == "a failure":
        assert [type(r) for r in results] == [ConnectionError] * 3
    else:
        assert results == [store.version] * 3
    assert taker.given == []
    assert _idle(reads)


async def test_a_cancelled_caller_is_not_handed_off() -> None:
    taker = _Taker()
    reads, store = ReadCoalescer(taker, lambda caller: True), _Store()
    store.version = None  # type: ignore[assignment]
    first, waiting = await _shared_read(reads, store, ["a", "b"])
    waiting[0].cancel()
    store.gate.set()
    await first
    await _until_idle(reads)
    assert len(taker.given) == 1
    taker.given[0].set_result("loaded")
    assert await waiting[1] == HandedOff("loaded", None, ("taken", "k"))
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]


async def _cold_burst(cache: Cache, monkeypatch: pytest.MonkeyPatch, callers: int) -> tuple[list[int], int]:
    """``callers`` concurrent fetches of a cold key: how many callers each hand-off took, and how many callers
    joined the flight by waking and calling ``wait``."""
    handed: list[int] = []
    joined = 0
    adopt, wait = SingleFlight.adopt, SingleFlight.wait

    def counting_adopt(self: SingleFlight[Any], key: str, waiters: list[asyncio.Future[Any]]) -> bool:
        taken = adopt(self, key, waiters)
        if taken:
            handed.append(len(waiters))
        return taken

    def counting_wait(self: SingleFlight[Any], key: str) -> asyncio.Future[Any]:
        nonlocal joined
        joined += 1
        return wait(self, key)

    monkeypatch.setattr(SingleFlight, "adopt", counting_adopt)
    monkeypatch.setattr(SingleFlight, "wait", counting_wait)
    gate = asyncio.Event()
    loader = CountingLoader(PAGE, gate=gate)
    burst = asyncio.gather(*(cache.get_or_set("cold", loader) for _ in range(callers)))
    await loader.started.wait()
    gate.set()
    assert await burst == [PAGE] * callers
    assert loader.calls == 1
    assert cache.stats()["misses"] == callers
    return handed, joined


async def test_a_cold_burst_wakes_each_waiting_caller_once(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    handed, joined = await _cold_burst(cache, monkeypatch, 20)
    # The first caller reads alone and starts the load (its own wait); the other 19 waited for the next read,
    # which found nothing: handed to the load at once, none woke to join it.
    assert handed == [19]
    assert joined == 1


async def test_callers_with_a_deadline_join_the_load_themselves(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    with time_budget(60.0):  # their waits for the load are bounded: each joins it by itself (_wait_for_flight)
        handed, joined = await _cold_burst(cache, monkeypatch, 20)
    assert handed == []
    assert joined == 20
