"""A short, real demo of cachelayer against the local Redis (DB 0, namespace "demo").

Run with `make run` (or `python examples/demo.py [redis-url]`). It caches a slow "database" call, shows a
cold start served by one load, a hit's cost, tag invalidation and the stored bytes.
"""

from __future__ import annotations

import asyncio
import sys
import time

from cachelayer import Cache, cached, set_default_cache

LOADS = 0


@cached(ttl=30, tags=["wallpaper:{wallpaper_id}"])
async def wallpaper(wallpaper_id: int) -> dict[str, object]:
    """Stands in for a MongoDB query that takes 50 ms."""
    global LOADS
    LOADS += 1
    await asyncio.sleep(0.05)
    return {"id": wallpaper_id, "title": f"雪山 Snow mountain #{wallpaper_id}", "tags": ["风景", "4k"] * 20}


async def main(url: str) -> None:
    cache = Cache.from_url(url, namespace="demo", default_ttl=30)
    set_default_cache(cache)
    await cache.clear()

    started = time.perf_counter()
    results = await asyncio.gather(*(wallpaper(7) for _ in range(1000)))
    print(f"1,000 concurrent cold calls: {LOADS} load, {(time.perf_counter() - started) * 1000:.0f} ms in all")

    started = time.perf_counter()
    for _ in range(1000):
        await wallpaper(7)
    print(f"a hit costs {(time.perf_counter() - started) * 1000:.0f} us per call (1,000 sequential hits)")

    entry = await wallpaper.entry(7)
    stats = cache.stats()
    print(f"stored: {stats['bytes_stored']} bytes for {stats['bytes_raw']} bytes of JSON; {entry.outcome.value}")
    print(f"Redis key: {wallpaper.key(7)}")

    await cache.invalidate_tags("wallpaper:7")
    await wallpaper(7)
    print(f"after invalidate_tags('wallpaper:7'): {LOADS} loads; value title {results[0]['title']!r}")
    print("inspect it: redis-cli --raw GET '" + wallpaper.key(7) + "' | head -c -1 | tail -c +27 | zstd -dc")
    await cache.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"))
