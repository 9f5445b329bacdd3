"""The cache lane (service/lane.py) answers what the handlers would: the same status, headers (in the same order)
and bytes, but for ``Date`` and a generated ``X-Request-Id``, from the local tier and from Redis, for a hit and a
miss; what it does not answer reaches the handlers, with what it fetched (an entry counted once, or the exception
the fetch raised)."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pymongo.errors
import pytest
import pytest_asyncio
import redis.asyncio
import tornado.web
from tornado.httpclient import HTTPResponse

from service.answers import hand_over, hand_over_done, handed
from service.config import ServerSettings, Settings
from service.lane import CacheLane, cache_lane
from tests._doubles import eventually
from tests.service._support import API, Running, run_service, stop_service, with_sections

LIST = f"{API}/wallpaperList.json?pageSize=20"
PATHS = [LIST, f"{API}/wallpaperList.json?pageSize=5&page=2&sort=hot", f"{API}/wallpaper/7.json"]
_FRESHNESS = re.compile(r"(max-age=|ttl=)(-?\d+)")


def _lane(running: Running) -> CacheLane:
    lane = running.server.request_callback
    assert isinstance(lane, CacheLane)
    return lane


class Answered:
    """Counts the requests the lane answered itself (a spy on ``CacheLane.answer``)."""

    def __init__(self, lane: CacheLane, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real: Callable[..., bool] = lane.answer

        def answer(*args: Any) -> bool:
            done = real(*args)
            self.count += done
            return done

        monkeypatch.setattr(lane, "answer", answer)


@pytest_asyncio.fixture(params=["local-tier", "redis"])
async def pair(
    request: pytest.FixtureRequest,
    seeded: Settings,
    redis_client: redis.asyncio.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Running, Running]]:
    """Two services on one Redis, with the local tier or without (the shipped config): one with the lane, one
    without. On a loaded machine the lane would decline what these tests expect it to answer once a second had
    passed: the tiers keep entries 60 s even while their channel is not heard (1 s by default), and the catalog
    reuses the highest wallpaper id it read for an hour (a second by default; the lane plans a detail only while
    it holds one). The list queries the handlers have seen start empty (the lane plans only those)."""
    monkeypatch.setattr("service.catalog._HIGHEST_ID_REUSE", 3600.0)
    monkeypatch.setattr("service.routes._LIST_QUERIES", {})
    local = {"local": True, "local_max_staleness": 60.0} if request.param == "local-tier" else {}
    lane = await run_service(with_sections(seeded, cache=local))
    plain = await run_service(with_sections(seeded, cache=local, server={"lane": False}))
    try:
        assert isinstance(lane.server.request_callback, CacheLane)
        assert not isinstance(plain.server.request_callback, CacheLane)
        yield lane, plain
    finally:
        await stop_service(lane)
        await stop_service(plain)


def _shape(response: HTTPResponse) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [
        (name, _FRESHNESS.sub(r"\1N", value))  # the remaining TTL, in seconds: two answers may straddle a second
        for name, value in response.headers.get_all()
        if name != "Date" and not (name == "X-Request-Id" and "X-Request-Id" not in response.request.headers)
    ]
    return response.code, headers, response.body


def _ttls(response: HTTPResponse) -> list[int]:
    return [int(m.group(2)) for name, v in response.headers.get_all() for m in _FRESHNESS.finditer(v)]


async def _same_answer(lane: Running, plain: Running, path: str, answered: Answered, **headers: str) -> HTTPResponse:
    before = answered.count
    ours = await lane.fetch(path, headers=headers)
    theirs = await plain.fetch(path, headers=headers)
    assert _shape(ours) == _shape(theirs), path
    assert all(abs(a - b) <= 1 for a, b in zip(_ttls(ours), _ttls(theirs), strict=True))
    assert answered.count == before + 1, f"the lane did not answer {path} {headers}"
    return ours


async def _warm(lane: Running, plain: Running, answered: Answered, path: str) -> None:
    """Both services have cached ``path``'s entry (in their local tiers, when they have one) and the lane answers
    it."""
    await plain.fetch(path)
    await plain.fetch(path)

    async def lane_answers() -> bool:
        before = answered.count
        await lane.fetch(path)
        return answered.count > before

    await eventually(lane_answers, what=f"the lane answering {path}")


async def test_the_lane_answers_as_the_handlers_do(
    pair: tuple[Running, Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    lane, plain = pair
    answered = Answered(_lane(lane), monkeypatch)
    dictionary = lane.services.dictionary
    assert dictionary is not None  # the shipped config stores with one
    held = ":" + base64.b64encode(dictionary.sha256).decode() + ":"
    for path in PATHS:
        await _warm(lane, plain, answered, path)
        plain_answer = await _same_answer(lane, plain, path, answered)
        assert plain_answer.headers["X-Cache"] == "hit"
        await _same_answer(lane, plain, path, answered, **{"X-Request-Id": "client-given.1"})
        zstd = await _same_answer(lane, plain, path, answered, **{"Accept-Encoding": "zstd"})
        assert "Content-Encoding" not in zstd.headers  # frames stored with a dictionary: no zstd passthrough
        dcz = await _same_answer(
            lane, plain, path, answered, **{"Accept-Encoding": "gzip, deflate, br, zstd, dcb, dcz",
                                             "Available-Dictionary": held}
        )  # fmt: skip
        assert dcz.headers["Content-Encoding"] == "dcz"


async def test_what_the_lane_does_not_answer_reaches_the_handlers_counted_once(
    pair: tuple[Running, Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    lane, plain = pair
    answered = Answered(_lane(lane), monkeypatch)
    await _warm(lane, plain, answered, LIST)
    hits = lane.services.cache.stats()["hits"]
    # Tornado's gzip transform compresses this one: its handler answers it (the lane does not plan it).
    gzipped = await lane.fetch(LIST, headers={"Accept-Encoding": "gzip"})
    assert gzipped.headers["Content-Encoding"] == "gzip"
    assert gzipped.headers["X-Cache"] == "hit"
    assert lane.services.cache.stats()["hits"] == hits + 1  # one lookup
    assert gzipped.body == (await plain.fetch(LIST, headers={"Accept-Encoding": "gzip"})).body
    # Not planned: a validator, HEAD, a query its handler has not seen yet, invalid input.
    etag = gzipped.headers["ETag"]
    before = answered.count
    assert (await lane.fetch(LIST, headers={"If-None-Match": etag, "Accept-Encoding": "gzip"})).code == 304
    assert (await lane.fetch(LIST, method="HEAD")).code == 200
    assert (await lane.fetch(f"{API}/wallpaperList.json?pageSize=21")).code == 200
    assert (await lane.fetch(f"{API}/wallpaperList.json?pageSize=abc")).code == 400
    assert (await lane.fetch(f"{API}/wallpaper/0.json")).code == 400
    assert answered.count == before


async def test_a_miss_and_a_failed_fetch_are_answered_as_the_handlers_do(
    pair: tuple[Running, Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    lane, plain = pair
    answered = Answered(_lane(lane), monkeypatch)
    await _warm(lane, plain, answered, LIST)  # the list handler has seen the query (the lane plans no other)
    detail = f"{API}/wallpaper/7.json"
    await _warm(lane, plain, answered, detail)  # the catalog holds the highest id
    for running in (lane, plain):
        await running.services.cache.clear()
    # A miss: loaded from MongoDB by the lane's fetch, answered by the lane.
    before = answered.count
    ours = await lane.fetch(detail)
    assert ours.headers["X-Cache"] == "miss"
    assert answered.count == before + 1
    assert ours.body == (await plain.fetch(detail)).body
    # A fetch that raises: handed to the handler with its exception, which answers the API's error envelope.
    failures = 0

    async def unreachable(*args: Any) -> None:
        nonlocal failures
        failures += 1
        raise pymongo.errors.ServerSelectionTimeoutError("127.0.0.1:1: connection refused (a test's fault)")

    for running in (lane, plain):
        await running.services.cache.clear()
        monkeypatch.setattr(running.services.catalog.wallpapers, "get", unreachable)
    before = answered.count
    ours, theirs = await lane.fetch(detail), await plain.fetch(detail)
    assert failures == 2  # one load each: the handler did not fetch again what the lane's fetch raised
    assert answered.count == before
    assert _shape(ours) == _shape(theirs)
    assert ours.code == 503


async def test_the_lane_is_on_unless_turned_off(seeded: Settings) -> None:
    shipped = await run_service(seeded)  # no local tier: Redis hits are the lane's too
    off = await run_service(with_sections(seeded, server={"lane": False}))
    try:
        assert isinstance(shipped.server.request_callback, CacheLane)
        app = off.server.request_callback
        assert isinstance(app, tornado.web.Application)  # no lane in front of it
        assert cache_lane(app, off.services) is None
        assert (await off.fetch(LIST)).code == 200
    finally:
        await stop_service(shipped)
        await stop_service(off)


async def test_a_fetch_in_the_lane_is_in_flight_for_the_drain(
    pair: tuple[Running, Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    lane, plain = pair
    answered = Answered(_lane(lane), monkeypatch)
    detail = f"{API}/wallpaper/7.json"
    await _warm(lane, plain, answered, detail)
    await lane.services.cache.clear()
    real = lane.services.catalog.wallpapers.get
    loading, release = asyncio.Event(), asyncio.Event()

    async def held(*args: Any) -> Any:
        loading.set()
        await release.wait()
        return await real(*args)

    monkeypatch.setattr(lane.services.catalog.wallpapers, "get", held)
    before = answered.count
    request = asyncio.ensure_future(lane.fetch(detail))
    await loading.wait()
    assert lane.services.in_flight == 1  # what Services.drain waits for at SIGTERM
    release.set()
    response = await request
    assert response.code == 200
    assert answered.count == before + 1
    assert lane.services.in_flight == 0


def test_a_hand_over_gives_the_access_line_the_lanes_start_and_leaves_nothing_behind() -> None:
    class Connection:  # a key of a weak mapping, as Tornado's HTTP1Connection is
        pass

    class Request:  # what hand_over_done reads of Tornado's HTTPServerRequest
        def __init__(self) -> None:
            self.connection = Connection()

        def request_time(self) -> float:
            return 0.001

    request = Request()
    failure = TimeoutError("a test's store timeout")
    hand_over(request.connection, failure, time.time() - 5.0)  # the lane received it 5 s ago; never consumed
    assert 5.0 <= hand_over_done(request) < 60  # type: ignore[arg-type]
    assert hand_over_done(request) == 0.001  # type: ignore[arg-type]  # not handed over: Tornado's own clock
    assert handed(request) is None  # type: ignore[arg-type]  # what the handler left is gone


def test_the_setting_is_read_under_its_first_name_too() -> None:
    assert ServerSettings.model_validate({"local_lane": False}).lane is False
    assert ServerSettings.model_validate({"lane": False}).lane is False
    assert ServerSettings().lane is True
