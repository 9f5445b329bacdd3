"""Wallpapers in MongoDB: storage only, no caching.

One code path serves both drivers: it uses only what Motor's ``AsyncIOMotorClient`` and PyMongo's
``AsyncMongoClient`` share (``find().sort().skip().limit()`` + ``to_list``, ``find_one``, ``count_documents``,
``find_one_and_update``, ``bulk_write``, ``create_index``, ``admin.command``). The two differences (how a client
is built, and ``close()`` being a coroutine in PyMongo) live in :func:`create_client` and :func:`close_client`.
"""

from __future__ import annotations

import inspect
from typing import Any, Final, Literal

from pymongo import ASCENDING, DESCENDING, ReplaceOne, ReturnDocument

__all__ = ["INDEXES", "LIST_PROJECTION", "MongoWallpaperRepository", "close_client", "create_client"]

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
    if driver == "motor":
        from motor.motor_asyncio import AsyncIOMotorClient

        return AsyncIOMotorClient(uri, **options)
    from pymongo import AsyncMongoClient

    return AsyncMongoClient(uri, **options)


async def close_client(client: Any) -> None:
    result = client.close()
    if inspect.isawaitable(result):
        await result


class MongoWallpaperRepository:
    """The ``wallpapers`` collection; documents are ``demo_data.wallpaper`` dicts with ``_id`` = ``id``."""

    def __init__(self, client: Any, database: str, collection: str = "wallpapers") -> None:
        self.client = client
        self.collection = client[database][collection]

    async def ensure_indexes(self) -> None:
        for name, keys in INDEXES.items():
            await self.collection.create_index(keys, name=name)

    async def ping(self) -> None:
        await self.client.admin.command("ping")

    async def page(self, category: str | None, sort: Sort, skip: int, limit: int) -> list[dict[str, Any]]:
        query: dict[str, Any] = {} if category is None else {"category": category}
        cursor = self.collection.find(query, LIST_PROJECTION).sort(_SORTS[sort]).skip(skip).limit(limit)
        docs: list[dict[str, Any]] = await cursor.to_list(length=limit)
        return docs

    async def count(self, category: str | None) -> int:
        query: dict[str, Any] = {} if category is None else {"category": category}
        return int(await self.collection.count_documents(query))

    async def get(self, wallpaper_id: int) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await self.collection.find_one({"_id": wallpaper_id}, {"_id": 0})
        return doc

    async def increment_downloads(self, wallpaper_id: int) -> dict[str, Any] | None:
        """``$inc`` the download counter; the document's ``category`` and ``counts`` after it, or None."""
        doc: dict[str, Any] | None = await self.collection.find_one_and_update(
            {"_id": wallpaper_id},
            {"$inc": {"counts.downloads": 1}},
            projection={"_id": 0, "category": 1, "counts": 1},
            return_document=ReturnDocument.AFTER,
        )
        return doc

    async def upsert_many(self, docs: list[dict[str, Any]]) -> None:
        if docs:
            await self.collection.bulk_write(
                [ReplaceOne({"_id": d["id"]}, {"_id": d["id"], **d}, upsert=True) for d in docs], ordered=False
            )

    async def is_empty(self) -> bool:
        return await self.collection.find_one({}, {"_id": 1}) is None

    async def drop(self) -> None:
        await self.collection.drop()
