"""Load the deterministic demo data set (``service.demo_data``) into the stores: idempotent, resumable, marked.

Wallpapers ``1..n`` are upserted by ``_id`` in batches (running it twice gives the same documents, download
counters back at their seeded values); categories are upserted by slug. Progress lives in MongoDB, in the
``seed_state`` collection (one document, ``_id`` ``"demo"``): the parameters, the next id to write and
``complete``, which is set last, after the cache namespace was cleared. A seed that died part-way is
continued from its next id by the next run (``python -m service seed`` or ``dev``); ``dev`` serves only a
complete seed. Every store call is retried with backoff while a store is starting (bounded in count and time).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal, TypeVar

import pymongo.errors
import pymysql.err  # type: ignore[import-untyped]
from tqdm import tqdm  # type: ignore[import-untyped]

from . import demo_data
from .repositories.mysql import ensure_database
from .services import Services

__all__ = ["BATCH", "SeedState", "adopt", "prepare_stores", "retrying", "seed", "seed_state"]

log = logging.getLogger("wallpaper.seed")
BATCH: Final = 500
STATE_ID: Final = "demo"
# Store errors a starting server gives (not a missing table or a bad statement: those do not heal by waiting).
_RETRYABLE: Final = (
    pymongo.errors.ConnectionFailure,
    pymongo.errors.ServerSelectionTimeoutError,
    pymongo.errors.ExecutionTimeout,
    pymongo.errors.WriteConcernError,
    pymongo.errors.NotPrimaryError,
    pymysql.err.OperationalError,
    pymysql.err.InterfaceError,
    OSError,
    TimeoutError,
)
T = TypeVar("T")
SeedState = Literal["complete", "partial", "empty", "unmarked"]


async def retrying(
    what: str, call: Callable[[], Awaitable[T]], *, attempts: int = 10, first_delay: float = 0.25,
    max_delay: float = 4.0, budget: float = 90.0,
) -> T:  # fmt: skip
    """``await call()``, again after a store error (exponential backoff), at most ``attempts`` times and
    ``budget`` seconds; the last error is raised."""
    deadline = time.monotonic() + budget
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except _RETRYABLE as exc:
            if attempt == attempts or time.monotonic() + delay > deadline:
                raise
            log.warning("seed: %s failed (attempt %d/%d), retrying in %.2fs: %r", what, attempt, attempts, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")


def _state_collection(services: Services) -> Any:
    return services.wallpapers.collection.database["seed_state"]


async def _read_state(services: Services) -> dict[str, Any] | None:
    doc: dict[str, Any] | None = await services.wallpapers._bounded(
        _state_collection(services).find_one({"_id": STATE_ID})
    )
    return doc


async def _write_state(services: Services, **fields: Any) -> None:
    await services.wallpapers._bounded(
        _state_collection(services).update_one({"_id": STATE_ID}, {"$set": fields}, upsert=True)
    )


async def seed_state(services: Services, wallpapers: int, seed: int = 0) -> SeedState:
    """``complete`` (this data set, marked done), ``partial`` (started, not finished, or another size), ``empty``,
    or ``unmarked`` (data without a marker: seeded before markers existed)."""
    state = await retrying("read the seed state", lambda: _read_state(services))
    if state is not None:
        same = state.get("wallpapers") == wallpapers and state.get("seed") == seed
        return "complete" if same and state.get("complete") else "partial"
    if await retrying("look at the stores", services.wallpapers.is_empty):
        return "empty"
    return "unmarked"


async def adopt(services: Services, wallpapers: int, seed: int = 0) -> bool:
    """Mark data seeded before markers existed as complete when it looks whole; True if marked."""
    count = await retrying("count wallpapers", services.wallpapers.count_all)
    categories = await retrying("read categories", services.mysql.categories)
    if count >= wallpapers and len(categories) >= len(demo_data.CATEGORIES):
        await retrying("mark the seed", lambda: _write_state(services, wallpapers=wallpapers, seed=seed,
                                                             next=wallpapers + 1, complete=True))  # fmt: skip
        return True
    return False


async def _write_batch(services: Services, first: int, count: int, seed: int) -> None:
    docs = demo_data.wallpapers(count, seed, first)
    await retrying(f"write wallpapers {first}..{first + count - 1}", lambda: services.wallpapers.upsert_many(docs))
    await retrying("record progress", lambda: _write_state(services, next=first + count))


async def prepare_stores(services: Services) -> None:
    """The MySQL database and schema, the MongoDB indexes: idempotent, retried while the stores start."""
    q = services.settings.mysql
    await retrying("create the MySQL database", lambda: ensure_database(
        host=q.host, port=q.port, user=q.user, password=q.password, database=q.database,
        connect_timeout=q.connect_timeout,
    ))  # fmt: skip
    applied = await retrying("migrate the MySQL schema", services.mysql.migrate)
    if applied:
        log.info("mysql: applied schema migrations %s", applied)
    await retrying("create MongoDB indexes", services.wallpapers.ensure_indexes)


async def seed(services: Services, wallpapers: int = 10_000, *, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Load the data set, continuing a partial run of the same parameters; returns what was done."""
    await prepare_stores(services)
    state = await retrying("read the seed state", lambda: _read_state(services))
    start = 1
    same = state is not None and state.get("wallpapers") == wallpapers and state.get("seed") == seed
    if same and state is not None and not state.get("complete"):
        start = max(1, int(state.get("next", 1)))
    await retrying("record the seed start", lambda: _write_state(
        services, wallpapers=wallpapers, seed=seed, next=start, complete=False, started_at=time.time()
    ))  # fmt: skip
    categories = [dict(c) for c in demo_data.CATEGORIES]
    await retrying("upsert categories", lambda: services.mysql.upsert_categories(categories))
    with tqdm(total=wallpapers, initial=start - 1, desc="wallpapers", unit="doc", disable=not progress) as bar:
        for first in range(start, wallpapers + 1, BATCH):
            count = min(BATCH, wallpapers - first + 1)
            await _write_batch(services, first, count, seed)
            bar.update(count)
    cleared = await services.catalog.invalidate_all()
    await retrying("mark the seed complete", lambda: _write_state(services, complete=True, completed_at=time.time()))
    return {
        "wallpapers": wallpapers,
        "resumed_from": start,
        "categories": len(categories),
        "cache_keys_cleared": cleared,
    }
