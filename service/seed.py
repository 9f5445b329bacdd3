"""Load the deterministic demo data set (``service.demo_data``) into the stores, idempotently.

Wallpapers ``1..n`` are upserted by ``_id`` (running it twice gives the same documents, download counters back
at their seeded values); categories are upserted by slug. The cache namespace is cleared afterwards so no entry
shows the data from before.
"""

from __future__ import annotations

import logging
from typing import Any

from tqdm import tqdm  # type: ignore[import-untyped]

from . import demo_data
from .runtime import Services

__all__ = ["BATCH", "seed", "stores_empty"]

log = logging.getLogger("wallpaper.seed")
BATCH = 500


async def stores_empty(services: Services) -> bool:
    return await services.wallpapers.is_empty() or await services.mysql.is_empty()


async def seed(services: Services, wallpapers: int = 10_000, *, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Upsert ``wallpapers`` documents and the categories; returns what was done."""
    await services.mysql.upsert_categories([dict(c) for c in demo_data.CATEGORIES])
    with tqdm(total=wallpapers, desc="wallpapers", unit="doc", disable=not progress) as bar:
        for start in range(1, wallpapers + 1, BATCH):
            count = min(BATCH, wallpapers - start + 1)
            await services.wallpapers.upsert_many(demo_data.wallpapers(count, seed, start))
            bar.update(count)
    cleared = await services.catalog.invalidate_all()
    return {"wallpapers": wallpapers, "categories": len(demo_data.CATEGORIES), "cache_keys_cleared": cleared}
