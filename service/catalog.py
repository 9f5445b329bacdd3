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

An invalidation marks the entries stale instead of deleting them (``mark_stale=True``): the next read reloads, and
when that reload fails (MySQL or MongoDB down) the previous copy is served (``X-Cache: stale``) instead of a 503.

Settings: ``cache.enabled = false`` gives a ``Cache.disabled(...)`` (built in services.py: the loader on every
call, Redis never touched, outcome ``bypass``: a measurement setting); ``cache.local = true`` marks the three
reads ``local=True``, so a hit is served from the process's :class:`cachelayer.LocalCache` tier before Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, ParamSpec, TypeVar

import orjson

from cachelayer import Cache, CachedFunction, cached

from .config import CacheSettings, EndpointCache
from .demo_data import list_item
from .downloads import Downloads
from .repositories import MongoWallpaperRepository, MySQLRepository

__all__ = ["ALL", "TAG_LIST", "TAG_WALLPAPER", "Catalog", "envelope"]

P = ParamSpec("P")
R = TypeVar("R")

ALL: Final = "_all"
TAG_WALLPAPER: Final = "wallpaper:{wallpaper_id}"
TAG_LIST: Final = "list:{scope}"
TAG_CATEGORIES: Final = "categories"
TAG_IDS: Final = "ids"
_HIGHEST_ID_REUSE: Final = 1.0  # seconds a process reuses the highest id it read


def envelope(data: Any) -> dict[str, Any]:
    return {"code": 0, "msg": "ok", "data": data}


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
        self.downloads = Downloads(wallpapers, mysql, self._invalidate_download)
        nf = settings.not_found_ttl
        local = settings.local  # hits from this process's LocalCache (services.py gives the Cache one when on)

        def through_cache(
            loader: Callable[P, Awaitable[R]], endpoint: EndpointCache, name: str, tag: str, none_ttl: float | None
        ) -> CachedFunction[P, R]:
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
        # The highest id, kept like the category list: ids above it are answered without a negative entry.
        self.highest_id = through_cache(self._load_highest_id, settings.categories, "wp.highest_id", TAG_IDS, None)
        self._known: tuple[bytes, frozenset[str]] = (b"", frozenset())
        self._highest: tuple[int, float] = (0, float("-inf"))  # (the highest id, when it was read)

    async def category_known(self, slug: str) -> bool:
        """Whether ``slug`` names a category, by the (cached) category list. A name that is not in it is answered
        without a list entry of its own: the category names a client sends are unbounded, and a negative entry
        per name let any client fill Redis (an audit: 5,382 names in 10 s left 10,796 keys for ~5 minutes). A
        category created after the list was cached is unknown until that entry is reloaded (its TTL)."""
        body = (await self.categories.entry()).body()
        known_body, known = self._known
        if body != known_body:  # parsed once per version of the list
            rows = orjson.loads(body)["data"]
            known = frozenset(row["slug"] for row in rows)
            self._known = (body, known)
        return slug in known

    def may_exist_now(self, wallpaper_id: int) -> bool | None:
        """:meth:`may_exist` when it needs no read (the highest id was read within the last second), else None."""
        highest, read_at = self._highest
        if time.monotonic() - read_at >= _HIGHEST_ID_REUSE:
            return None
        return wallpaper_id <= highest

    async def may_exist(self, wallpaper_id: int) -> bool:
        """Whether a wallpaper may have ``wallpaper_id``: not above the highest id. Ids are the client's to choose,
        and any fetch of an id leaves something in Redis (a "not found" entry, its tag's stamp), so one above the
        highest is answered without one: what Redis holds for unknown ids is bounded by the id range. The highest
        id is a cached entry (the category list's TTL), read again at most once a second per process."""
        highest, read_at = self._highest
        now = time.monotonic()
        if now - read_at >= _HIGHEST_ID_REUSE:
            highest = int((await self.highest_id.entry()).value()["data"])
            self._highest = (highest, now)
        return wallpaper_id <= highest

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

    async def _load_highest_id(self) -> dict[str, Any]:
        return envelope(await self.wallpapers.highest_id())

    async def _load_categories(self) -> dict[str, Any]:
        rows = await self.mysql.categories()
        counts = await asyncio.gather(*(self.wallpapers.count(row["slug"]) for row in rows))
        return envelope([{**row, "count": count} for row, count in zip(rows, counts, strict=True)])

    # -- the write ----------------------------------------------------------------------------------------------

    async def _invalidate_download(self, wallpaper_id: int, category: str) -> None:
        """A download changed one counter: mark stale the entries that show it (never raises)."""
        # Marked stale, not deleted: if the reload fails (MySQL down), the previous copy is served, not a 503.
        await self.cache.invalidate_tags(
            TAG_WALLPAPER.format(wallpaper_id=wallpaper_id),
            TAG_LIST.format(scope=ALL),
            TAG_LIST.format(scope=category),
            mark_stale=True,
        )

    async def invalidate_all(self) -> int:
        """Drop every entry of the namespace (after a reseed)."""
        return await self.cache.clear()
