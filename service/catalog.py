"""The cached reads and the download write: the one place that knows cache tags.

Each cached read returns the whole response envelope ``{"code": 0, "msg": "ok", "data": ...}`` so that the stored
bytes are the HTTP body as is (and the stored zstd frame can go out with ``Content-Encoding: zstd``). ``None``
means "not found" (an unknown id or category) and is cached for ``not_found_ttl``.

Tags:

* ``wallpaper:{wallpaper_id}`` -- the detail entry of one wallpaper;
* ``list:{scope}`` -- every list page of one scope: a category slug, or ``_all`` (no filter; ``_all`` cannot be a
  slug, slugs match ``^[a-z0-9-]{1,32}$``).

A download changes one wallpaper's counter, which shows in its detail and in the list pages of its category and
of ``_all`` (as the item's ``downloads`` and, for ``sort=hot``, in the order): exactly those three tags go.
Category counts are wallpaper counts, which a download does not change.

Settings: ``cache.enabled = false`` replaces each cached function by :class:`Uncached` (the loader on every call,
Redis never touched: a measurement setting); ``cache.local = true`` marks the three reads ``local=True``, so a hit
is served from the process's :class:`cachelayer.LocalCache` tier (built in runtime.py) before Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final, Generic, ParamSpec, TypeVar

import orjson

from cachelayer import Cache, CachedFunction, cached

from .config import CacheSettings, EndpointCache
from .demo_data import list_item
from .repositories import MongoWallpaperRepository, MySQLRepository

__all__ = ["ALL", "TAG_LIST", "TAG_WALLPAPER", "Catalog", "DirectEntry", "Uncached", "envelope"]

P = ParamSpec("P")
R = TypeVar("R")

ALL: Final = "_all"
TAG_WALLPAPER: Final = "wallpaper:{wallpaper_id}"
TAG_LIST: Final = "list:{scope}"
TAG_CATEGORIES: Final = "categories"


def envelope(data: Any) -> dict[str, Any]:
    return {"code": 0, "msg": "ok", "data": data}


class DirectEntry:
    """A loader's result as the handlers send a cache entry: ``outcome`` ``"bypass"``, no expiry, no stored frame."""

    __slots__ = ("_body",)
    outcome: Final = "bypass"
    expires_at: Final = 0.0

    def __init__(self, value: Any) -> None:
        self._body = orjson.dumps(value)

    def body(self) -> bytes:
        return self._body

    def zstd_frame(self) -> None:
        return None


class Uncached(Generic[P, R]):
    """The surface of a :class:`cachelayer.CachedFunction` the handlers use (``entry``), calling the loader every
    time."""

    def __init__(self, func: Callable[P, Awaitable[R]]) -> None:
        self._func = func

    async def entry(self, *args: P.args, **kwargs: P.kwargs) -> DirectEntry:
        return DirectEntry(await self._func(*args, **kwargs))


class Catalog:
    """Reads through the cache; the download write and its invalidation."""

    def __init__(
        self,
        cache: Cache,
        wallpapers: MongoWallpaperRepository,
        mysql: MySQLRepository,
        settings: CacheSettings,
    ) -> None:
        self.cache = cache
        self.wallpapers = wallpapers
        self.mysql = mysql
        self.enabled = settings.enabled
        nf = settings.not_found_ttl
        local = settings.local  # hits from this process's LocalCache (runtime.py gives the Cache one when on)

        def through_cache(
            loader: Callable[P, Awaitable[R]], endpoint: EndpointCache, name: str, tag: str, none_ttl: float | None
        ) -> CachedFunction[P, R] | Uncached[P, R]:
            if not settings.enabled:
                return Uncached(loader)
            return cached(
                ttl=endpoint.ttl,
                stale_ttl=endpoint.stale_ttl,
                none_ttl=none_ttl,
                tags=[tag],
                cache=cache,
                name=name,
                local=local,
            )(loader)

        self.list_page = through_cache(self._load_list, settings.list, "wp.list", TAG_LIST, nf)
        self.detail = through_cache(self._load_detail, settings.detail, "wp.detail", TAG_WALLPAPER, nf)
        self.categories = through_cache(
            self._load_categories, settings.categories, "wp.categories", TAG_CATEGORIES, None
        )

    # -- loaders (run on a miss) ------------------------------------------------------------------------------

    async def _load_list(self, scope: str, sort: str, page: int, page_size: int) -> dict[str, Any] | None:
        category = None if scope == ALL else scope
        if category is not None and not await self.mysql.category_exists(category):
            return None
        skip = (page - 1) * page_size
        docs, total = await asyncio.gather(
            self.wallpapers.page(category, "hot" if sort == "hot" else "new", skip, page_size),
            self.wallpapers.count(category),
        )
        return envelope(
            {
                "items": [list_item(doc) for doc in docs],
                "page": page,
                "pageSize": page_size,
                "total": total,
                "hasMore": skip + len(docs) < total,
            }
        )

    async def _load_detail(self, wallpaper_id: int) -> dict[str, Any] | None:
        doc = await self.wallpapers.get(wallpaper_id)
        return None if doc is None else envelope(doc)

    async def _load_categories(self) -> dict[str, Any]:
        rows = await self.mysql.categories()
        counts = await asyncio.gather(*(self.wallpapers.count(row["slug"]) for row in rows))
        return envelope([{**row, "count": count} for row, count in zip(rows, counts, strict=True)])

    # -- the write ----------------------------------------------------------------------------------------------

    async def record_download(self, wallpaper_id: int, client_ip: str | None = None) -> dict[str, Any] | None:
        """Count a download (Mongo ``$inc``, then an event row in MySQL) and drop the entries that show it.

        Returns ``{"id", "downloads"}``, or None for an unknown id (nothing is written then)."""
        doc = await self.wallpapers.increment_downloads(wallpaper_id)
        if doc is None:
            return None
        await self.mysql.record_download(wallpaper_id, client_ip)
        if self.enabled:
            await self.cache.invalidate_tags(
                TAG_WALLPAPER.format(wallpaper_id=wallpaper_id),
                TAG_LIST.format(scope=ALL),
                TAG_LIST.format(scope=doc["category"]),
            )
        return {"id": wallpaper_id, "downloads": doc["counts"]["downloads"]}

    async def invalidate_all(self) -> int:
        """Drop every entry of the namespace (after a reseed)."""
        return await self.cache.clear()
