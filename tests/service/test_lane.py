"""The local-tier lane (service/lane.py) answers what the handlers would: the same status, headers (in the same
order) and bytes, but for ``Date`` and a generated ``X-Request-Id``; what it does not answer reaches the handlers,
and a lookup it made is counted once."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio
from tornado.httpclient import HTTPResponse

from service.config import Settings
from service.lane import LocalTierLane, local_tier_lane
from tests._doubles import eventually
from tests.service._support import API, Running, run_service, stop_service, with_sections

LIST = f"{API}/wallpaperList.json?pageSize=20"
PATHS = [LIST, f"{API}/wallpaperList.json?pageSize=5&page=2&sort=hot", f"{API}/wallpaper/7.json"]
_FRESHNESS = re.compile(r"(max-age=|ttl=)(-?\d+)")


def _lane(running: Running) -> LocalTierLane:
    lane = running.server.request_callback
    assert isinstance(lane, LocalTierLane)
    return lane


class Answered:
    """Counts the requests the lane answered itself (a spy on ``LocalTierLane.answer``)."""

    def __init__(self, lane: LocalTierLane, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real: Callable[..., bool] = lane.answer

        def answer(*args: Any) -> bool:
            done = real(*args)
            self.count += done
            return done

        monkeypatch.setattr(lane, "answer", answer)


@pytest_asyncio.fixture
async def pair(
    seeded: Settings, redis_client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Running, Running]]:
    """Two services on one Redis, each with its local tier: one with the lane, one without. On a loaded machine
    the lane would decline what these tests expect it to answer once a second had passed: the tiers keep entries
    60 s even while their channel is not heard (1 s by default), and the catalog reuses the highest wallpaper id
    it read for an hour (a second by default; the lane plans a detail only while it holds one)."""
    monkeypatch.setattr("service.catalog._HIGHEST_ID_REUSE", 3600.0)
    local = {"local": True, "local_max_staleness": 60.0}
    lane = await run_service(with_sections(seeded, cache=local))
    plain = await run_service(with_sections(seeded, cache=local, server={"local_lane": False}))
    try:
        assert isinstance(lane.server.request_callback, LocalTierLane)
        assert not isinstance(plain.server.request_callback, LocalTierLane)
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
    """Both local tiers hold ``path``'s entry (the lane answers it)."""
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
    # Looked up, then handed over: Tornado's gzip transform compresses this one.
    gzipped = await lane.fetch(LIST, headers={"Accept-Encoding": "gzip"})
    assert gzipped.headers["Content-Encoding"] == "gzip"
    assert gzipped.headers["X-Cache"] == "hit"
    assert lane.services.cache.stats()["hits"] == hits + 1  # one lookup: the lane's, used by the handler
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


async def test_no_lane_without_a_local_tier_or_when_it_is_off(seeded: Settings) -> None:
    running = await run_service(seeded)  # the shipped config: no local tier
    try:
        assert local_tier_lane(running.server.request_callback, running.services) is None
        assert not isinstance(running.server.request_callback, LocalTierLane)
        assert (await running.fetch(LIST)).code == 200
    finally:
        await stop_service(running)
