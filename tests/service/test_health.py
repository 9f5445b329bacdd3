"""Liveness and readiness: /healthz says the process serves; /readyz says whether to send it traffic, with each
dependency's state. Redis (or MySQL) down is "degraded" but ready, because pages still answer; MongoDB down is
not ready."""

from __future__ import annotations

import redis.asyncio

from harness import LatencyProxy, free_port
from harness.services import MySQLSettings
from service.config import Settings
from tests.service._support import API, Running, run_service, stop_service, with_sections


async def test_liveness_is_200_until_shutdown(service: Running) -> None:
    response, body = await service.json("/healthz")
    assert response.code == 200
    assert body["data"]["status"] == "alive"
    assert response.headers["Cache-Control"] == "no-store"
    service.services.stopping = True
    try:
        response, body = await service.json("/healthz")
        assert response.code == 503
        ready, ready_body = await service.json("/readyz", admin=True)
        assert ready.code == 503
        assert ready_body["data"]["status"] == "stopping"
    finally:
        service.services.stopping = False


async def test_redis_down_is_degraded_but_ready(seeded: Settings, redis_client: redis.asyncio.Redis) -> None:
    running = await run_service(with_sections(seeded, redis={"url": f"redis://127.0.0.1:{free_port()}/11"}))
    try:
        response, body = await running.json("/readyz", admin=True)
        assert response.code == 200
        assert body["data"]["status"] == "degraded"
        deps = body["data"]["dependencies"]
        assert deps["redis"]["status"] == "down"
        assert deps["mongo"]["status"] == "ok"
        assert deps["mysql"]["status"] == "ok"
        assert all(d["latency_ms"] >= 0 for d in deps.values())
        page = await running.fetch(f"{API}/wallpaperList.json")
        assert page.code == 200  # which is why a balancer must keep this instance
        assert (await running.fetch("/healthz")).code == 200
    finally:
        await stop_service(running)


async def test_mysql_down_is_degraded_but_ready(
    seeded: Settings, redis_client: redis.asyncio.Redis, mysql_settings: MySQLSettings
) -> None:
    async with LatencyProxy(mysql_settings.host, mysql_settings.port) as proxy:
        running = await run_service(with_sections(seeded, mysql={"port": proxy.port, "pool_acquire_timeout": 0.3,
                                                                 "query_timeout": 0.3, "connect_timeout": 0.3}))
        try:
            await proxy.aclose()
            response, body = await running.json("/readyz", admin=True)
            assert response.code == 200
            assert body["data"]["status"] == "degraded"
            assert body["data"]["dependencies"]["mysql"]["status"] == "down"
            assert (await running.fetch(f"{API}/wallpaper/3.json")).code == 200  # detail pages need only MongoDB
        finally:
            await stop_service(running)
