"""After ``POST .../download`` answers, every later read of that wallpaper's detail and of the list pages that show it
shows the new count, also while other clients are reloading those pages (issue 16, part 5; docs/consistency.md).

Two services share Redis, as two processes would: the writer (takes the download) and the reader. Both repositories'
reads are wrapped so that a load that began before the download is held after it read its rows (the old count),
the classic race: the download commits and invalidates while those loads wait; then they are let go and try to
store what they read. Their fills must be refused (``revoked_fills``), every read that began after the download
answered must show its count, and the cache must end up holding the new count (``X-Cache: hit``). With the local
tier on, the reader process may serve its old local copy until the invalidation message reaches it (the tier's
documented ``max_staleness``): reads that begin after it arrived must show the new count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import pytest
import pytest_asyncio
import redis.asyncio
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from service.config import Settings
from service.repositories import MongoWallpaperRepository
from tests.service._support import API, Running, run_service, stop_service, with_sections

T = TypeVar("T")

WALLPAPER = 41  # not downloaded by any other service test
LOCAL_STALENESS = 1.0  # the local tier's max_staleness in these tests (the default)
HOLD_TIMEOUT = 10.0  # bound on every wait for a condition


class HeldReads:
    """Wraps the loaders' reads (``get``, ``page``) of repositories: a read that *began* while ``holding`` is set
    waits for :attr:`release` after it got its rows, so it returns what the store held before whatever happens
    meanwhile."""

    def __init__(self) -> None:
        self.holding = False
        self.release = asyncio.Event()
        self.held = 0
        self._arrived = asyncio.Condition()

    def wrap(self, repo: MongoWallpaperRepository) -> None:
        get, page = repo.get, repo.page

        async def held_get(wallpaper_id: int) -> dict[str, Any] | None:
            return await self._through(get(wallpaper_id))

        async def held_page(category: str | None, sort: Any, skip: int, limit: int) -> list[dict[str, Any]]:
            return await self._through(page(category, sort, skip, limit))

        repo.get = held_get  # type: ignore[method-assign]
        repo.page = held_page  # type: ignore[method-assign]

    async def _through(self, read: Awaitable[T]) -> T:
        hold = self.holding  # decided when the read begins, not when its rows arrive
        rows = await read
        if hold:
            async with self._arrived:
                self.held += 1
                self._arrived.notify_all()
            await self.release.wait()
        return rows

    async def wait_held(self, count: int) -> None:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: self.held >= count), HOLD_TIMEOUT)


@dataclass
class Read:
    """One GET: when it began (monotonic), what it answered, and the wallpaper's count in it (None: not listed)."""

    service: str
    path: str
    started: float
    response: HTTPResponse | None = None
    count: int | None = None
    x_cache: str = ""


@dataclass
class Pages:
    """The wallpaper's detail and every list page its download invalidates that can show it."""

    wallpaper_id: int
    category: str
    paths: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, wallpaper_id: int, category: str) -> Pages:
        lists = [f"{API}/wallpaperList.json?pageSize=100&page={p}&sort={s}" for s in ("new", "hot") for p in (1, 2, 3)]
        lists.append(f"{API}/wallpaperList.json?pageSize=100&category={category}&sort=hot")
        return cls(wallpaper_id, category, [f"{API}/wallpaper/{wallpaper_id}.json", *lists])

    def count_in(self, body: bytes) -> int | None:
        data = orjson.loads(body)["data"]
        if "items" not in data:
            return int(data["counts"]["downloads"])
        return next((int(i["downloads"]) for i in data["items"] if i["id"] == self.wallpaper_id), None)


_CLIENT: dict[str, AsyncHTTPClient] = {}


def client() -> AsyncHTTPClient:
    """This test's HTTP client: many requests at once (Tornado's shared client queues all but 10)."""
    if "client" not in _CLIENT:
        _CLIENT["client"] = AsyncHTTPClient(force_instance=True, max_clients=200)
    return _CLIENT["client"]


async def read(running: Running, name: str, pages: Pages, path: str) -> Read:
    item = Read(name, path, time.monotonic())
    item.response = response = await client().fetch(running.base + path, raise_error=False, request_timeout=15)
    assert response.code == 200, (name, path, response.code, response.body[:200])
    item.count = pages.count_in(response.body)
    item.x_cache = response.headers.get("X-Cache", "")
    return item


def reads(services: dict[str, Running], pages: Pages, copies: int = 1) -> list[asyncio.Task[Read]]:
    """Every page on every service, ``copies`` concurrent GETs each, started now."""
    return [
        asyncio.create_task(read(running, name, pages, path))
        for name, running in services.items()
        for path in pages.paths
        for _ in range(copies)
    ]


async def download(running: Running, wallpaper_id: int) -> int:
    response = await running.fetch(f"{API}/wallpaper/{wallpaper_id}/download", "POST")
    assert response.code == 200, response.body
    return int(orjson.loads(response.body)["data"]["downloads"])


def revoked_fills(running: Running) -> int:
    return int(running.services.cache.stats()["revoked_fills"])


async def metric(running: Running, name: str) -> float:
    text = await running.metrics()
    line = next(line for line in text.splitlines() if line.startswith(f'{name}{{cache="wallpaper"}}'))
    return float(line.rsplit(" ", 1)[1])


async def until(condition: Callable[[], bool], what: str, within: float = HOLD_TIMEOUT) -> float:
    """Wait for ``condition`` (checked every 5 ms: it has no event to wait on); returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            pytest.fail(f"not within {within} s: {what}")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


@pytest.fixture(params=[False, True], ids=["redis-only", "local-tier"])
def local_tier(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest_asyncio.fixture
async def two_processes(
    seeded: Settings, driver: str, local_tier: bool, redis_client: redis.asyncio.Redis
) -> AsyncIterator[dict[str, Running]]:
    """A writer and a reader service (the chosen Mongo driver, local tier on or off) on one Redis namespace."""
    settings = with_sections(
        seeded, mongo={"driver": driver}, cache={"local": local_tier, "local_max_staleness": LOCAL_STALENESS}
    )
    started: dict[str, Running] = {}
    try:
        for name in ("writer", "reader"):
            started[name] = await run_service(settings)
        yield started
    finally:
        if "client" in _CLIENT:
            _CLIENT.pop("client").close()
        for running in started.values():
            await stop_service(running)


async def test_a_download_beats_every_reload_in_flight(two_processes: dict[str, Running], local_tier: bool) -> None:
    writer, reader = two_processes["writer"], two_processes["reader"]
    first = await read(writer, "writer", Pages(WALLPAPER, ""), f"{API}/wallpaper/{WALLPAPER}.json")
    assert first.response is not None
    pages = Pages.of(WALLPAPER, orjson.loads(first.response.body)["data"]["category"])
    for _ in range(2):  # cached everywhere (the second round: hits, and local copies when the tier is on)
        await asyncio.gather(*reads(two_processes, pages))

    # A first download marks every page stale; clients reload them, and each reload is held after reading the row.
    gate = HeldReads()
    for running in two_processes.values():
        gate.wrap(running.services.wallpapers)
    local = reader.services.cache.local
    epoch = local.epoch if local is not None else 0
    before = await download(writer, WALLPAPER)
    if local is not None:  # the reader process serves its local copies until it heard of the invalidation
        await until(lambda: local.epoch > epoch, "the first invalidation reached the reader's local tier")
    gate.holding = True
    reloading = reads(two_processes, pages, copies=3)
    await gate.wait_held(len(pages.paths))  # one load per page (the lease); the other readers wait for it

    # The download that races them: it commits and invalidates while every reload holds the old count.
    gate.holding = False
    epoch = local.epoch if local is not None else 0
    revoked_before = revoked_fills(writer) + revoked_fills(reader)
    new = await download(writer, WALLPAPER)
    answered = time.monotonic()
    assert new > before
    during = reads(two_processes, pages)  # while the old loads are still held
    heard = 0.0
    if local is not None:  # the reader process drops its local copies when the invalidation message arrives
        heard = await until(lambda: local.epoch > epoch, "the invalidation reached the reader's local tier")
        assert heard <= LOCAL_STALENESS, f"heard after {heard:.3f} s, past max_staleness {LOCAL_STALENESS} s"
    gate.release.set()
    after = reads(two_processes, pages, copies=2)  # while the old loads try to store what they read
    old_loads = await asyncio.gather(*reloading)
    later = await asyncio.gather(*during, *after)

    assert len(old_loads) == 3 * 2 * len(pages.paths)  # begun before the download: either count is right for them
    stale = [
        (r.service, r.path, r.count, r.x_cache, round(r.started - answered, 3))
        for r in later
        if r.count is not None
        and r.count < new
        # the local tier's documented window: a process other than the writer may answer from its local copy
        # until the invalidation message reached it
        and not (local_tier and r.service == "reader" and r.started < answered + heard)
    ]
    assert not stale, f"reads begun after the download answered {new} showed less: {stale}"
    assert any(r.count is not None for r in later if "sort=new" in r.path)  # the pages really list it
    assert any(r.count is not None for r in later if "sort=hot" in r.path)
    # Every held reload had its fill refused: the cache never took the old count back.
    revoked = revoked_fills(writer) + revoked_fills(reader) - revoked_before
    assert revoked >= len(pages.paths), revoked
    assert await metric(writer, "cachelayer_revoked_fills_total") + await metric(
        reader, "cachelayer_revoked_fills_total"
    ) >= len(pages.paths)
    # What the cache keeps now is the new count, on both processes, served as a hit.
    final = await asyncio.gather(*reads(two_processes, pages))
    assert {r.x_cache for r in final} == {"hit"}, [(r.service, r.path, r.x_cache) for r in final]
    assert all(r.count is None or r.count >= new for r in final), [(r.path, r.count) for r in final]
