"""The service on the second edition of the cache core (README: "The manager"): ``Cache.disabled``, invalidation
that marks stale (stale beats 503), ``Cache-Status`` (RFC 9211) from ``entry.outcome``/``expires_at``, and the
local tier's figures in /metrics.

Most of these need the new core (``Cache.disabled``, ``invalidate_tags(mark_stale=True)``, the ``fail_open``
outcome); the hit/miss ``Cache-Status`` and /metrics tests pass on the first edition too."""

from __future__ import annotations

import json
import logging

import pytest
import redis.asyncio

from harness import LatencyProxy, free_port
from harness.services import MySQLSettings
from service.config import Settings
from service.errors import StoreTrouble
from service.freshness import cache_status, freshness_headers, max_age
from tests.service._support import API, Running, run_service, stop_service, with_sections

LIST = f"{API}/wallpaperList.json?pageSize=20"


def test_cache_status_values() -> None:
    assert cache_status("hit", 1042.4, 1000.0) == "wallpaper; hit; ttl=42"
    assert cache_status("stale", 990.0, 1000.0) == "wallpaper; fwd=stale; ttl=-10"
    # marked stale by a write (CacheEntry.invalidated): no ttl to tell (it read ttl=-1796455741 before)
    assert cache_status("stale", 0.001, 1_796_455_741.0, True) == "wallpaper; fwd=stale; detail=invalidated"
    assert cache_status("miss", 1030.0, 1000.0) == "wallpaper; fwd=miss; stored; ttl=30"
    assert cache_status("fail_open", 0.0, 1000.0) == "wallpaper; fwd=miss; detail=store-unavailable"
    assert cache_status("bypass", 0.0, 1000.0) == "wallpaper; fwd=bypass"


@pytest.mark.parametrize("outcome", ["hit", "stale", "miss", "fail_open", "bypass"])
@pytest.mark.parametrize("invalidated", [False, True])
def test_memoized_freshness_headers_equal_the_functions(outcome: str, invalidated: bool) -> None:
    """The per-answer memo gives what max_age and cache_status give, whatever came before it (each case asked twice:
    the second answer comes from the memo)."""
    cases = [(0.0, 1000.0), (0.001, 1_796_455_741.0)]
    cases += [(1000.0 + delta, 1000.0) for delta in (-30.7, -1.2, -0.5, 0.0, 0.3, 0.999, 1.0, 41.9, 42.0, 42.4)]
    for _ in range(2):
        for expires_at, now in cases:
            expected = (
                f"public, max-age={max_age(outcome, expires_at, now)}",
                cache_status(outcome, expires_at, now, invalidated),
            )
            assert freshness_headers(outcome, expires_at, now, invalidated) == expected, (expires_at, now)


async def test_cache_status_beside_x_cache_on_every_cached_route(service: Running) -> None:
    # A wallpaper far above the demo's ids, for this test only (before the highest id is first read): a cached "not
    # found" needs an id below the highest (above it, the answer is not cached at all).
    collection = service.services.wallpapers.collection
    await collection.insert_one({**await collection.find_one({"_id": 1}), "_id": 99_999})
    try:
        await _cache_status_beside_x_cache(service)
    finally:
        await collection.delete_one({"_id": 99_999})


async def _cache_status_beside_x_cache(service: Running) -> None:
    for path in (LIST, f"{API}/wallpaper/8.json", f"{API}/categories.json"):
        first = await service.fetch(path)
        second = await service.fetch(path)
        assert first.headers["X-Cache"] == "miss"
        assert first.headers["Cache-Status"].startswith("wallpaper; fwd=miss; stored; ttl=")
        assert second.headers["X-Cache"] == "hit"
        ttl = int(second.headers["Cache-Status"].rsplit("ttl=", 1)[1])
        assert 0 <= ttl <= int(second.headers["Cache-Control"].split("max-age=")[1]) + 1
    # A cached "not found" says so too: the error page keeps the cache's headers.
    first = await service.fetch(f"{API}/wallpaper/99998.json")
    second = await service.fetch(f"{API}/wallpaper/99998.json")
    assert (first.code, second.code) == (404, 404)
    assert first.headers["X-Cache"] == "miss"
    assert first.headers["Cache-Status"].startswith("wallpaper; fwd=miss; stored; ttl=")
    assert second.headers["X-Cache"] == "hit"
    assert second.headers["Cache-Status"].startswith("wallpaper; hit; ttl=")
    for unknown_path in (f"{LIST}&category=nosuch", f"{API}/wallpaper/123456789.json"):  # from what is known
        unknown = await service.fetch(unknown_path)
        assert unknown.code == 404
        assert "X-Cache" not in unknown.headers


async def test_metrics_export_the_local_tier(seeded: Settings, redis_client: redis.asyncio.Redis) -> None:
    """Once each: the service exported the local tier's families beside cachelayer's own, two ``# TYPE`` lines
    for each (and ``cachelayer_local_evictions`` as a gauge and a counter), which the exposition format forbids."""
    running = await run_service(with_sections(seeded, cache={"local": True}))
    try:
        await running.fetch(LIST)
        await running.fetch(LIST)
        text = await running.metrics()
        for name in ("cachelayer_local_entries", "cachelayer_local_bytes", "cachelayer_local_evictions"):
            assert f'{name}{{cache="wallpaper"}}' in text, name
        declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
        assert sorted(declared) == sorted(set(declared)), [name for name in set(declared) if declared.count(name) > 1]
    finally:
        await stop_service(running)


async def test_cache_disabled_never_touches_redis(seeded: Settings, redis_client: redis.asyncio.Redis) -> None:
    running = await run_service(with_sections(seeded, cache={"enabled": False}))
    try:
        for _ in range(2):
            response = await running.fetch(LIST)
            assert response.code == 200
            assert response.headers["X-Cache"] == "bypass"
            assert response.headers["Cache-Status"] == "wallpaper; fwd=bypass"
            assert response.headers["Cache-Control"] == "public, max-age=0"
        detail = await running.fetch(f"{API}/wallpaper/4.json")
        assert detail.code == 200
        assert json.loads(detail.body)["data"]["id"] == 4
        assert (await running.fetch(f"{API}/wallpaper/999999.json")).code == 404
        assert (await running.fetch(f"{API}/categories.json")).code == 200
        assert (await running.fetch(f"{API}/wallpaper/4/download", "POST")).code == 200
        assert await redis_client.dbsize() == 0  # nothing read or written: no entries, no tags, no leases
    finally:
        await stop_service(running)


async def test_redis_down_is_fail_open_in_cache_status(seeded: Settings, redis_client: redis.asyncio.Redis) -> None:
    running = await run_service(with_sections(seeded, redis={"url": f"redis://127.0.0.1:{free_port()}/11"}))
    try:
        response = await running.fetch(f"{API}/wallpaper/9.json")
        assert response.code == 200
        assert response.headers["X-Cache"] == "fail_open"
        assert response.headers["Cache-Status"] == "wallpaper; fwd=miss; detail=store-unavailable"
    finally:
        await stop_service(running)


async def test_a_download_marks_pages_stale_and_stale_beats_503(
    seeded: Settings, redis_client: redis.asyncio.Redis, mysql_settings: MySQLSettings
) -> None:
    """After a download the category page must be rebuilt, which needs MySQL (category_exists): with MySQL gone
    the previous copy is served, marked stale, instead of a 503."""
    async with LatencyProxy(mysql_settings.host, mysql_settings.port) as proxy:
        running = await run_service(
            with_sections(
                seeded,
                mysql={"port": proxy.port, "pool_acquire_timeout": 0.3, "query_timeout": 0.3, "connect_timeout": 0.3},
            )
        )
        try:
            page = f"{API}/wallpaperList.json?category=anime&pageSize=100"
            first = await running.fetch(page)
            assert first.code == 200
            item = json.loads(first.body)["data"]["items"][0]["id"]
            posted = await running.fetch(f"{API}/wallpaper/{item}/download", "POST")
            assert posted.code == 200
            await proxy.aclose()  # MySQL refuses from now on
            stale = await running.fetch(page)
            assert stale.code == 200
            assert stale.headers["X-Cache"] == "stale"
            assert stale.headers["Cache-Status"] == "wallpaper; fwd=stale; detail=invalidated"
            assert stale.body == first.body
            assert stale.headers["Cache-Control"].endswith("max-age=0")
        finally:
            await stop_service(running)


async def test_an_old_etag_never_gets_a_304_for_changed_content(service: Running) -> None:
    url = f"{API}/wallpaper/12.json"
    before = await service.fetch(url)
    etag = before.headers["Etag"]
    assert (await service.fetch(url, headers={"If-None-Match": etag})).code == 304
    assert (await service.fetch(f"{API}/wallpaper/12/download", "POST")).code == 200
    after = await service.fetch(url, headers={"If-None-Match": etag})
    assert after.code == 200  # the stale-marked entry was reloaded: new content, new ETag
    assert after.headers["Etag"] != etag
    assert after.headers["X-Cache"] == "miss"


def test_store_trouble_is_a_line_every_interval_not_a_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    trouble = StoreTrouble(interval=10.0, clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="wallpaper.http")
    error = ConnectionError("MySQL refused")
    for _ in range(100):
        trouble.failed("MySQL", error, "r-1")
        now[0] += 0.05  # 100 failures in 5 s
    now[0] += 6
    trouble.failed("MySQL", error, "r-2")
    trouble.failed("MongoDB", error, "r-3")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "MySQL unavailable: ConnectionError('MySQL refused')",
        "MySQL unavailable: ConnectionError('MySQL refused') (99 more requests failed for it since the last such line)",
        "MongoDB unavailable: ConnectionError('MySQL refused')",
    ]
    assert sum(1 for r in caplog.records if r.levelno == logging.DEBUG) == 99
