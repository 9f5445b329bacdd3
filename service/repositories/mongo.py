"""Wallpapers in MongoDB: storage only, no caching.

One code path serves both drivers: it uses only what Motor's ``AsyncIOMotorClient`` and PyMongo's
``AsyncMongoClient`` share (``find().sort().skip().limit()`` + ``to_list``, ``find_one``, ``count_documents``,
``find_one_and_update``, ``bulk_write``, ``create_index``, ``admin.command``). The two differences (how a client
is built, and ``close()`` being a coroutine in PyMongo) live in :func:`create_client` and :func:`close_client`.

Budgets: every call runs under ``timeout`` seconds twice over: pymongo's client-side operation timeout
(``timeoutMS``, which also bounds server selection, the pool wait and the connection handshake) and
:func:`._budget.within` around the call, which returns to the caller on time even when Motor's thread is still
stuck in a socket read or the async driver swallowed a cancellation. Either way the caller gets a PyMongo error.

Download counters (docs/service.md, "Downloads"): ``counts.downloads`` = ``downloads_base`` + the wallpaper's
MySQL events; it only ever moves up, by ``$max``, so replaying the step is harmless.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import Any, Final, Literal, TypeVar

from pymongo import ASCENDING, DESCENDING, ReplaceOne
from pymongo.errors import NetworkTimeout

from ._budget import within

__all__ = ["INDEXES", "LIST_PROJECTION", "MongoWallpaperRepository", "close_client", "create_client"]

T = TypeVar("T")
_MARGIN: Final = 0.2

Sort = Literal["hot", "new"]

#: The index behind each query; created at start-up (``create_index`` is idempotent).
INDEXES: Final[dict[str, list[tuple[str, int]]]] = {
    "hot": [("counts.downloads", DESCENDING), ("_id", ASCENDING)],
    "new": [("created_at", DESCENDING), ("_id", DESCENDING)],
    "category_hot": [("category", ASCENDING), ("counts.downloads", DESCENDING), ("_id", ASCENDING)],
    "category_new": [("category", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
}

_SORTS: Final[dict[str, list[tuple[str, int]]]] = {"hot": INDEXES["hot"], "new": INDEXES["new"]}

#: The fields a list item needs (see ``demo_data.list_item``).
LIST_PROJECTION: Final[dict[str, int]] = {
    "_id": 0,
    "id": 1,
    "title": 1,
    "category": 1,
    "images.thumb": 1,
    "images.preview": 1,
    "colors": 1,
    "author.id": 1,
    "author.name": 1,
    "counts.likes": 1,
    "counts.downloads": 1,
    "flags.is_vip": 1,
    "flags.is_4d": 1,
}


def create_client(
    driver: Literal["motor", "pymongo"],
    uri: str,
    *,
    max_pool_size: int,
    min_pool_size: int,
    server_selection_timeout_ms: int,
    connect_timeout_ms: int,
    socket_timeout_ms: int,
    timeout_ms: int | None = None,
) -> Any:
    """A client of the chosen driver, with a bounded pool and bounded timeouts. Build it after forking."""
    options: dict[str, Any] = {
        "maxPoolSize": max_pool_size,
        "minPoolSize": min_pool_size,
        "serverSelectionTimeoutMS": server_selection_timeout_ms,
        "connectTimeoutMS": connect_timeout_ms,
        "socketTimeoutMS": socket_timeout_ms,
        "waitQueueTimeoutMS": server_selection_timeout_ms,
        "retryWrites": False,
        "appname": "wallpaper-service",
    }
    if timeout_ms is not None:
        options["timeoutMS"] = timeout_ms
    if driver == "motor":
        from motor.motor_asyncio import AsyncIOMotorClient

        return AsyncIOMotorClient(uri, **options)
    from pymongo import AsyncMongoClient

    return AsyncMongoClient(uri, **options)


async def close_client(client: Any) -> None:
    result = client.close()
    if inspect.isawaitable(result):
        await result


async def _awaited(call: Awaitable[T]) -> T:
    return await call


class MongoWallpaperRepository:
    """The ``wallpapers`` collection; documents are ``demo_data.wallpaper`` dicts with ``_id`` = ``id``."""

    def __init__(
        self, client: Any, database: str, collection: str = "wallpapers", *, timeout: float | None = None
    ) -> None:
        self.client = client
        self.collection = client[database][collection]
        self.timeout = timeout

    async def _bounded(self, call: Awaitable[T]) -> T:
        # A little over the driver's own timeoutMS, so that the driver's error (which says why) usually wins;
        # ours is raised as a PyMongo error too, so callers see one kind of failure.
        if self.timeout is None:
            return await call
        # Not cancelled when late: the driver's timeoutMS ends it soon after, and closes what it opened (a
        # cancelled PyMongo connect leaves its socket unclosed).
        return await within(
            self.timeout + _MARGIN,
            _awaited(call),
            lambda: NetworkTimeout(f"mongo call exceeded its {self.timeout}s budget"),
            cancel=False,
        )

    async def ensure_indexes(self) -> None:
        for name, keys in INDEXES.items():
            await self._bounded(self.collection.create_index(keys, name=name))

    async def ping(self) -> None:
        await self._bounded(self.client.admin.command("ping"))

    async def page(self, category: str | None, sort: Sort, skip: int, limit: int) -> list[dict[str, Any]]:
        query: dict[str, Any] = {} if category is None else {"category": category}
        cursor = self.collection.find(query, LIST_PROJECTION).sort(_SORTS[sort]).skip(skip).limit(limit)
        docs: list[dict[str, Any]] = await self._bounded(cursor.to_list(length=limit))
        return docs

    async def count(self, category: str | None) -> int:
        query: dict[str, Any] = {} if category is None else {"category": category}
        return int(await self._bounded(self.collection.count_documents(query)))

    async def get(self, wallpaper_id: int) -> dict[str, Any] | None:
        # downloads_base is the counter's bookkeeping (docs/service.md, "Downloads"), not part of the answer.
        doc: dict[str, Any] | None = await self._bounded(
            self.collection.find_one({"_id": wallpaper_id}, {"_id": 0, "downloads_base": 0})
        )
        return doc

    async def highest_id(self) -> int:
        """The largest wallpaper id (0 when there is none): the ``_id`` index's last entry."""
        doc = await self._bounded(self.collection.find_one({}, {"_id": 1}, sort=[("_id", -1)]))
        return int(doc["_id"]) if doc is not None else 0

    async def counter_state(self, wallpaper_id: int) -> dict[str, Any] | None:
        """``category``, ``counts.downloads`` and ``downloads_base`` (absent until first set), or None."""
        doc: dict[str, Any] | None = await self._bounded(
            self.collection.find_one(
                {"_id": wallpaper_id}, {"_id": 0, "category": 1, "counts.downloads": 1, "downloads_base": 1}
            )
        )
        return doc

    async def set_downloads_base(self, wallpaper_id: int, seen_downloads: int, base: int) -> bool:
        """Set ``downloads_base`` once, only if the counter still holds ``seen_downloads``; True if set."""
        result = await self._bounded(
            self.collection.update_one(
                {"_id": wallpaper_id, "downloads_base": {"$exists": False}, "counts.downloads": seen_downloads},
                {"$set": {"downloads_base": base}},
            )
        )
        return bool(result.modified_count)

    async def raise_downloads(self, wallpaper_id: int, downloads: int) -> None:
        """``counts.downloads = max(counts.downloads, downloads)``: idempotent, never moves it down."""
        await self._bounded(
            self.collection.update_one({"_id": wallpaper_id}, {"$max": {"counts.downloads": downloads}})
        )

    async def upsert_many(self, docs: list[dict[str, Any]]) -> None:
        if docs:
            await self._bounded(
                self.collection.bulk_write(
                    [ReplaceOne({"_id": d["id"]}, {"_id": d["id"], **d}, upsert=True) for d in docs], ordered=False
                )
            )

    async def count_all(self) -> int:
        return int(await self._bounded(self.collection.estimated_document_count()))

    async def is_empty(self) -> bool:
        return await self._bounded(self.collection.find_one({}, {"_id": 1})) is None

    async def drop(self) -> None:
        await self._bounded(self.collection.drop())
