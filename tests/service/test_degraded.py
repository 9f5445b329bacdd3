"""A store that does not answer: 503 JSON quickly, or a stale cached answer when there is one."""

from __future__ import annotations

import time

import redis.asyncio

from harness import free_port
from service.config import Settings
from tests._doubles import eventually
from tests.service._support import API, run_service, stop_service


def dead_mongo(settings: Settings, **cache: dict[str, float]) -> Settings:
    mongo = settings.mongo.model_copy(
        update={
            "uri": f"mongodb://127.0.0.1:{free_port()}/",
            "server_selection_timeout_ms": 300,
            "connect_timeout_ms": 200,
        }
    )
    return settings.model_copy(update={"mongo": mongo})


async def test_mongo_down_gives_503_json_without_hanging(seeded: Settings, redis_client: redis.asyncio.Redis) -> None:
    running = await run_service(dead_mongo(seeded))
    try:
        started = time.monotonic()
        response, body = await running.json(f"{API}/wallpaper/1.json")
        assert time.monotonic() - started < 3
        assert response.code == 503
        assert body["code"] == 50301
        assert "mongo" in body["msg"]
        response, body = await running.json(f"{API}/wallpaperList.json")
        assert response.code == 503
        response, body = await running.json(f"{API}/wallpaper/1/download", "POST")
        assert response.code == 503
        response, body = await running.json("/healthz")
        assert response.code == 200  # liveness: the process serves
        response, body = await running.json("/readyz", admin=True)
        assert response.code == 503  # readiness: no page can be built without MongoDB
        assert body["data"]["dependencies"]["mongo"]["status"] == "down"
        assert body["data"]["dependencies"]["mysql"]["status"] == "ok"
    finally:
        await stop_service(running)


async def test_mongo_down_serves_stale_when_cached(seeded: Settings, redis_client: redis.asyncio.Redis) -> None:
    short = seeded.cache.model_copy(
        update={"detail": seeded.cache.detail.model_copy(update={"ttl": 0.5, "stale_ttl": 60})}
    )
    healthy = seeded.model_copy(update={"cache": short})
    up = await run_service(healthy)
    try:
        fresh, body = await up.json(f"{API}/wallpaper/2.json")
        assert fresh.code == 200
        expires_at = (await up.services.catalog.detail.entry(2)).expires_at
    finally:
        await stop_service(up)
    await eventually(lambda: time.time() > expires_at, what="the entry's TTL to run out (inside its stale window)")
    down = await run_service(dead_mongo(healthy))
    try:
        response, stale_body = await down.json(f"{API}/wallpaper/2.json")
        assert response.code == 200
        assert response.headers["X-Cache"] == "stale"
        assert response.headers["Cache-Control"].endswith("max-age=0")
        assert stale_body == body
    finally:
        await stop_service(down)
