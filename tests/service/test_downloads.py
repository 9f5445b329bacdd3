"""Every download counted exactly once: the event row is the truth, the Mongo counter is derived (docs/service.md).

The faults go through a LatencyProxy in front of the real MariaDB (refused, blackholed, replies dropped), or a
Mongo that is not there; the machine's services are never stopped."""

from __future__ import annotations

import asyncio
import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio

from harness import LatencyProxy
from harness.services import MySQLSettings
from service.config import Settings
from service.repositories.mysql import MIGRATIONS, MySQLRepository, create_pool
from tests._doubles import eventually
from tests.service._support import API, Running, mysql_rows, run_service, stop_service, with_sections


def unique(prefix: str) -> str:
    """A key of this run only (the data set lives for the session; each test runs once per Mongo driver)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def download(wallpaper_id: int) -> str:
    return f"{API}/wallpaper/{wallpaper_id}/download"


def events(settings: Settings, wallpaper_id: int) -> int:
    rows = mysql_rows(settings, "SELECT COUNT(*) FROM download_events WHERE wallpaper_id = %s", (wallpaper_id,))
    return int(rows[0][0])


def events_with_key(settings: Settings, key: str) -> int:
    return int(mysql_rows(settings, "SELECT COUNT(*) FROM download_events WHERE idempotency_key = %s", (key,))[0][0])


async def counter(running: Running, wallpaper_id: int) -> tuple[int, int]:
    """``(counts.downloads, downloads_base)`` of a wallpaper, read from Mongo."""
    state = await running.services.wallpapers.counter_state(wallpaper_id)
    assert state is not None
    return int(state["counts"]["downloads"]), int(state["downloads_base"])


async def assert_consistent(running: Running, wallpaper_id: int, direct: Settings | None = None) -> None:
    """Counter == base + events. ``direct``: settings that reach MariaDB without the test's proxy (the proxy runs
    on this event loop, which a blocking pymysql call would stall)."""
    downloads, base = await counter(running, wallpaper_id)
    assert downloads == base + events(direct or running.services.settings, wallpaper_id)


async def test_download_counts_once_and_a_retry_with_the_key_is_a_replay(service: Running) -> None:
    wid = 21
    key = unique("retry")
    first, body = await service.json(download(wid), "POST", headers={"Idempotency-Key": key})
    assert first.code == 200, body
    assert first.headers["Idempotency-Key"] == key
    before = events(service.services.settings, wid)
    again, body_again = await service.json(download(wid), "POST", headers={"Idempotency-Key": key})
    assert again.code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert body_again == body  # the same answer: the count as of that event
    assert events(service.services.settings, wid) == before
    assert events_with_key(service.services.settings, key) == 1
    await assert_consistent(service, wid)
    # Without a key, each POST is a download of its own; the server's key comes back for a retry.
    plain, plain_body = await service.json(download(wid), "POST")
    assert plain.code == 200
    assert plain.headers["Idempotency-Key"].startswith("s-")
    assert plain_body["data"]["downloads"] == body["data"]["downloads"] + 1
    await assert_consistent(service, wid)


@pytest.mark.parametrize("key", ["", "x" * 65, "has space", "dots.not.allowed", "cl\u00e9", "a/b"])
async def test_a_malformed_idempotency_key_is_a_400_and_writes_nothing(service: Running, key: str) -> None:
    before = events(service.services.settings, 22)
    response, body = await service.json(download(22), "POST", headers={"Idempotency-Key": key})
    assert response.code == 400, body
    assert "Idempotency-Key" in body["msg"]
    assert events(service.services.settings, 22) == before


async def test_a_key_reused_for_another_wallpaper_is_a_409(service: Running) -> None:
    key = unique("reused")
    ok, _ = await service.json(download(23), "POST", headers={"Idempotency-Key": key})
    assert ok.code == 200
    before = events(service.services.settings, 24)
    conflict, body = await service.json(download(24), "POST", headers={"Idempotency-Key": key})
    assert conflict.code == 409
    assert body["code"] == 40901
    assert events(service.services.settings, 24) == before


async def test_concurrent_downloads_all_count(service: Running) -> None:
    wid = 25
    before_events = events(service.services.settings, wid)
    answers = await asyncio.gather(*(service.json(download(wid), "POST") for _ in range(20)))
    assert [r.code for r, _ in answers] == [200] * 20
    assert events(service.services.settings, wid) == before_events + 20
    await assert_consistent(service, wid)
    # Each answer counts its own download and every earlier one committed by then: between the counter before
    # and after the burst. Not one number each: rows commit out of id order, so two answers can show the same
    # number (seen once, beside other tests); the counter itself counts all 20 (above).
    final, _ = await counter(service, wid)
    numbers = [body["data"]["downloads"] for _, body in answers]
    assert all(final - 20 < n <= final for n in numbers), (numbers, final)


async def test_unknown_wallpaper_is_404_and_writes_nothing(service: Running) -> None:
    response, _ = await service.json(download(777777), "POST", headers={"Idempotency-Key": "nobody-777777"})
    assert response.code == 404
    assert events_with_key(service.services.settings, "nobody-777777") == 0


@pytest_asyncio.fixture
async def mysql_proxy(mysql_settings: MySQLSettings) -> AsyncIterator[LatencyProxy]:
    async with LatencyProxy(mysql_settings.host, mysql_settings.port) as proxy:
        yield proxy


def through(seeded: Settings, proxy: LatencyProxy, **mysql: Any) -> Settings:
    return with_sections(
        seeded,
        mysql={"port": proxy.port, "pool_min": 1, "pool_max": 3, "connect_timeout": 0.5, "query_timeout": 1.0,
               "pool_acquire_timeout": 0.5, **mysql},
        downloads={"reconcile_interval": 0.2, "reconcile_settle": 0.0},
    )  # fmt: skip


async def test_replies_dropped_then_retry_with_the_key_counts_once(
    seeded: Settings, redis_client: redis.asyncio.Redis, mysql_proxy: LatencyProxy
) -> None:
    """The insert commits but its reply never arrives: 503 naming the key; the retry finds the row by key."""
    # The reconciler runs once at start, then not again: a pass of it while the replies are held would hold the
    # pool's lock while it opens a connection through the proxy (aiomysql connects under the lock), and the
    # download could then find no connection within its budget (never inserted, nothing to retry).
    running = await run_service(with_sections(through(seeded, mysql_proxy), downloads={"reconcile_interval": 3600.0}))
    wid = 26
    try:
        warm, _ = await running.json(download(wid), "POST")  # the pool and downloads_base exist
        assert warm.code == 200
        reconciler = running.services.reconciler
        await eventually(lambda: reconciler.passes >= 1, what="the reconciler's first pass")
        before = events(seeded, wid)
        mysql_proxy.downstream_latency = 30.0  # replies held back far past every budget: dropped
        key = unique("dropped")
        lost, body = await running.json(download(wid), "POST", headers={"Idempotency-Key": key})
        assert lost.code == 503, body
        assert body["code"] == 50302
        assert "Idempotency-Key" in body["msg"]
        assert key in body["msg"]
        assert lost.headers["Retry-After"] == "1"
        mysql_proxy.downstream_latency = 0.0
        await mysql_proxy.close_all()  # the held replies are gone with their connections
        assert events(seeded, wid) == before + 1  # it was committed after all
        retry, retry_body = await running.json(download(wid), "POST", headers={"Idempotency-Key": key})
        assert retry.code == 200, retry_body
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert events(seeded, wid) == before + 1
        assert events_with_key(seeded, key) == 1
        await assert_consistent(running, wid, seeded)
    finally:
        await stop_service(running)


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
async def test_mysql_down_is_a_503_and_nothing_is_counted(
    seeded: Settings, redis_client: redis.asyncio.Redis, mysql_proxy: LatencyProxy, fault: str
) -> None:
    running = await run_service(through(seeded, mysql_proxy))
    wid = 27
    try:
        warm, _ = await running.json(download(wid), "POST")
        assert warm.code == 200
        downloads_before, _ = await counter(running, wid)
        before = events(seeded, wid)
        if fault == "refuse":
            await mysql_proxy.aclose()
        else:
            mysql_proxy.blackhole = True
        answers = await asyncio.gather(*(running.json(download(wid), "POST") for _ in range(4)))
        assert {r.code for r, _ in answers} == {503}
        assert events(seeded, wid) == before
        assert (await counter(running, wid))[0] == downloads_before
    finally:
        await stop_service(running)


async def test_counter_step_failing_gives_202_and_the_reconciler_catches_up(
    seeded: Settings, redis_client: redis.asyncio.Redis
) -> None:
    running = await run_service(with_sections(seeded, downloads={"reconcile_interval": 0.1, "reconcile_settle": 0.0}))
    wid = 28
    try:
        warm, _ = await running.json(download(wid), "POST")
        assert warm.code == 200
        repo = running.services.wallpapers
        real = repo.raise_downloads
        failing = asyncio.Event()

        async def broken(wallpaper_id: int, downloads: int) -> None:
            if not failing.is_set():
                failing.set()
                raise ConnectionError("mongo went away between the insert and the counter step")
            await real(wallpaper_id, downloads)

        repo.raise_downloads = broken  # type: ignore[method-assign]
        accepted, body = await running.json(download(wid), "POST")
        assert accepted.code == 202, body
        assert body["data"]["id"] == wid
        passes = running.services.reconciler.passes
        for _ in range(200):  # bounded: the reconciler runs every 0.1 s
            if running.services.reconciler.passes > passes + 1:
                break
            await asyncio.sleep(0.05)
        await assert_consistent(running, wid)
    finally:
        await stop_service(running)


async def test_reconciler_catches_up_events_written_behind_its_back(
    seeded: Settings, redis_client: redis.asyncio.Redis
) -> None:
    """A process that died between commit and counter step: the next process's start-up pass counts it."""
    running = await run_service(seeded)
    wid = 29
    try:
        warm, _ = await running.json(download(wid), "POST")
        assert warm.code == 200
        mysql_rows(seeded, "INSERT INTO download_events (wallpaper_id, idempotency_key) VALUES (%s, %s)",
                   (wid, unique("orphan")))  # fmt: skip
        checked = await running.services.reconciler.run_once()
        assert checked >= 1
        await assert_consistent(running, wid)
        assert await running.services.reconciler.run_once() >= 0  # idempotent: a second pass changes nothing
        await assert_consistent(running, wid)
    finally:
        await stop_service(running)


async def test_migrations_upgrade_an_existing_v2_table(mysql_settings: MySQLSettings) -> None:
    """The schema of before (v1 + v2, with rows) gains the key column, its index and the watermark."""
    database = mysql_settings.database + "_mig"
    settings = MySQLSettings(mysql_settings.host, mysql_settings.port, mysql_settings.user,
                             mysql_settings.password, database)  # fmt: skip
    pool = await create_pool(host=settings.host, port=settings.port, user=settings.user, password=settings.password,
                             database=database, minsize=0, maxsize=2, connect_timeout=2)  # fmt: skip
    repo = MySQLRepository(pool)
    try:
        with warnings.catch_warnings():  # "unknown table" notes from IF EXISTS
            warnings.simplefilter("ignore")
            for table in ("download_events", "categories", "schema_migrations", "counter_sync"):
                await repo._run(f"DROP TABLE IF EXISTS {table}")
        await repo._run("CREATE TABLE schema_migrations (version INT NOT NULL PRIMARY KEY,"
                        " applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))")  # fmt: skip
        for version, statements in MIGRATIONS[:2]:
            for statement in statements:
                await repo._run(statement)
            await repo._run("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        for _ in range(3):
            await repo._run("INSERT INTO download_events (wallpaper_id, client_ip) VALUES (5, '10.0.0.1')")
        assert await repo.migrate() == [3]
        assert await repo.migrate() == []  # idempotent
        assert await repo.watermark() == (await repo._run("SELECT MAX(id) FROM download_events", fetch=True))[0][0]
        event = await repo.insert_download(5, None, "k-1")
        with pytest.raises(Exception, match="already used"):
            await repo.insert_download(5, None, "k-1")
        assert await repo.download_counts(5, event) == (4, 4)
        # A half-applied v3 (statements ran, version not recorded) applies again without error.
        await repo._run("DELETE FROM schema_migrations WHERE version = 3")
        assert await repo.migrate() == [3]
    finally:
        await repo._run(f"DROP DATABASE IF EXISTS `{database}`")
        await repo.close()

