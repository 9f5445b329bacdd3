"""The service with its cache on a Redis Cluster (``redis.url = "redis+cluster://..."``): pages hit, a download
marks the pages that show it stale, and nothing else changes for a client."""

from __future__ import annotations

from harness import RedisClusterServer
from service.config import Settings
from tests.service._support import API, run_service, stop_service, with_sections


async def test_the_service_caches_on_a_cluster(seeded: Settings, redis_cluster: RedisClusterServer) -> None:
    settings = with_sections(seeded, redis={"url": redis_cluster.url, "namespace": "wp-cluster-test"})
    running = await run_service(settings)
    try:
        await running.services.cache.clear()
        first = await running.fetch(f"{API}/wallpaper/3.json")
        second = await running.fetch(f"{API}/wallpaper/3.json")
        assert (first.code, second.code) == (200, 200)
        assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
        assert second.body == first.body
        listing = f"{API}/wallpaperList.json?pageSize=5&sort=hot"
        assert (await running.fetch(listing)).code == 200
        assert (await running.fetch(listing)).headers["X-Cache"] == "hit"
        download = await running.fetch(f"{API}/wallpaper/3/download", "POST")
        assert download.code in (200, 202)
        assert (await running.fetch(f"{API}/wallpaper/3.json")).headers["X-Cache"] == "miss"  # marked stale, reloaded
        response = await running.fetch("/readyz", admin=True)
        assert response.code == 200
        stats = running.services.cache.stats()
        assert stats["store_errors"] == 0
        assert stats["breaker_state"] == "closed"
    finally:
        await running.services.cache.clear()
        await stop_service(running)
