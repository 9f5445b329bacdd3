"""Categories and download events in MySQL/MariaDB (aiomysql): storage only, no caching.

Budgets: a call waits at most ``acquire_timeout`` for a pooled connection (including opening a new one: aiomysql's
``connect_timeout`` covers only the TCP connect, not the handshake) and then ``query_timeout`` for its statement
and rows, each under ``asyncio.timeout`` (not ``asyncio.wait_for``, whose Python 3.11 version can lose the
cancellation), and the whole call under :func:`._budget.within`, which returns on time even if a cancellation is
swallowed. A failed call closes its connection (transport aborted) before anything else awaits; the cursor is
closed only after a successful statement (its ``close()`` may read from the socket). Running out of a budget
raises ``OperationalError(2013)``, as a dead server does.

The schema is created and migrated at start-up, idempotently, under a MySQL named lock so that processes
starting together do not race.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Sequence
from typing import Any, Final

import aiomysql  # type: ignore[import-untyped]
import pymysql.err  # type: ignore[import-untyped]

from ._budget import within

__all__ = ["MIGRATIONS", "DuplicateKey", "MySQLRepository", "create_pool", "ensure_database"]

_DUPLICATE_ENTRY: Final = 1062
_GRACE: Final = 0.1  # past the inner budgets: only a call whose cancellation was swallowed gets here
WATERMARK: Final = "mongo_downloads"

#: (version, statements): applied in order, each version once, recorded in ``schema_migrations``.
MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (
        1,
        (
            "CREATE TABLE IF NOT EXISTS categories ("
            " slug VARCHAR(32) NOT NULL PRIMARY KEY,"
            " name VARCHAR(64) NOT NULL,"
            " sort INT NOT NULL,"
            " cover VARCHAR(255) NOT NULL"
            ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            "CREATE TABLE IF NOT EXISTS download_events ("
            " id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
            " wallpaper_id BIGINT NOT NULL,"
            " created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),"
            " KEY idx_wallpaper_time (wallpaper_id, created_at)"
            ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        ),
    ),
    (
        2,
        (
            # Where the download came from (added after v1: shows the migration path on an existing table).
            "ALTER TABLE download_events ADD COLUMN IF NOT EXISTS client_ip VARCHAR(45) NULL",
        ),
    ),
    (
        3,
        (
            # Exactly-once downloads (docs/service.md): the client's Idempotency-Key or one the server made;
            # case-sensitive (ascii_bin). Rows from before v3 keep NULL (a UNIQUE index allows many NULLs).
            "ALTER TABLE download_events ADD COLUMN IF NOT EXISTS"
            " idempotency_key VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL",
            "CREATE UNIQUE INDEX IF NOT EXISTS uq_idempotency_key ON download_events (idempotency_key)",
            "CREATE TABLE IF NOT EXISTS counter_sync ("
            " name VARCHAR(32) NOT NULL PRIMARY KEY,"
            " last_event_id BIGINT NOT NULL"
            ") ENGINE=InnoDB",
            # Events written before v3 were counted by the old $inc-first path: the reconciler starts after them.
            f"INSERT IGNORE INTO counter_sync (name, last_event_id)"
            f" SELECT '{WATERMARK}', COALESCE(MAX(id), 0) FROM download_events",
        ),
    ),
)


def _budget_error(what: str, seconds: float) -> pymysql.err.OperationalError:
    # 2013 "Lost connection to MySQL server during query": what the driver itself raises for a dead server.
    return pymysql.err.OperationalError(2013, f"mysql: {what} within the {seconds}s budget")


class DuplicateKey(Exception):
    """The idempotency key names an event already recorded: ``event_id`` of that event, ``wallpaper_id`` its."""

    def __init__(self, event_id: int, wallpaper_id: int) -> None:
        super().__init__(f"idempotency key already used by event {event_id}")
        self.event_id = event_id
        self.wallpaper_id = wallpaper_id


async def ensure_database(
    *, host: str, port: int, user: str, password: str, database: str, connect_timeout: float
) -> None:
    """Create ``database`` when it is missing (bounded: ``3 x connect_timeout`` in all)."""
    async with asyncio.timeout(connect_timeout * 3):
        conn = await aiomysql.connect(
            host=host, port=port, user=user, password=password, connect_timeout=connect_timeout, autocommit=True
        )
        try:
            async with conn.cursor() as cursor:
                await cursor.execute("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (database,))
                if not await cursor.fetchall():
                    await cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4")
        finally:
            conn.close()


_ensure_database = ensure_database  # create_pool's parameter of the same name hides the function


async def create_pool(
    *,
    host: str,
    port: int,
    user: str,
    password: str,
    database: str,
    minsize: int,
    maxsize: int,
    connect_timeout: float,
    ensure_database: bool = True,
) -> aiomysql.Pool:
    """A bounded pool on ``database``, creating the database first when it is missing (``ensure_database``: a
    server that is down at start-up gets a pool that connects later instead). Build it after forking."""
    if ensure_database:
        await _ensure_database(
            host=host, port=port, user=user, password=password, database=database, connect_timeout=connect_timeout
        )
    return await aiomysql.create_pool(
        host=host,
        port=port,
        user=user,
        password=password,
        db=database,
        minsize=minsize,
        maxsize=maxsize,
        connect_timeout=connect_timeout,
        autocommit=True,
        charset="utf8mb4",
        pool_recycle=3600,
    )


class MySQLRepository:
    def __init__(self, pool: aiomysql.Pool, *, query_timeout: float = 2.0, acquire_timeout: float = 1.0) -> None:
        self.pool = pool
        self.query_timeout = query_timeout
        self.acquire_timeout = acquire_timeout

    async def _acquire(self) -> Any:
        try:
            async with asyncio.timeout(self.acquire_timeout):
                return await self.pool.acquire()
        except TimeoutError:
            raise _budget_error("no pooled connection", self.acquire_timeout) from None

    def _discard(self, conn: Any) -> None:
        conn.close()  # mid-statement: abort the transport, never hand this connection to anyone else
        self.pool.release(conn)

    async def _run(self, sql: str, args: Sequence[Any] = (), *, fetch: bool = False) -> Any:
        """One statement: rows (``fetch``) or ``(lastrowid, rowcount)``; never longer than the two budgets."""
        budget = self.acquire_timeout + self.query_timeout
        return await within(
            budget + _GRACE, self._statement(sql, args, fetch), lambda: _budget_error("no answer", budget)
        )

    async def _statement(self, sql: str, args: Sequence[Any], fetch: bool) -> Any:
        conn = await self._acquire()
        try:
            async with asyncio.timeout(self.query_timeout):
                cursor = await conn.cursor()
                await cursor.execute(sql, tuple(args))
                result = await cursor.fetchall() if fetch else (cursor.lastrowid, cursor.rowcount)
                await cursor.close()
        except TimeoutError:
            self._discard(conn)
            raise _budget_error("no reply", self.query_timeout) from None
        except BaseException:
            self._discard(conn)
            raise
        self.pool.release(conn)
        return result

    async def migrate(self) -> list[int]:
        """Apply the migrations not yet applied; returns the versions applied now."""
        with warnings.catch_warnings():  # "table already exists" notes are the point of IF NOT EXISTS
            warnings.simplefilter("ignore")
            return await self._migrate()

    async def _migrate(self) -> list[int]:
        await self._run(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INT NOT NULL PRIMARY KEY,"
            " applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)"
            ") ENGINE=InnoDB"
        )
        applied: list[int] = []
        conn = await self._acquire()
        try:
            async with conn.cursor() as cursor:
                await cursor.execute("SELECT GET_LOCK('wallpaper_schema', 10)")
                try:
                    await cursor.execute("SELECT version FROM schema_migrations")
                    done = {row[0] for row in await cursor.fetchall()}
                    for version, statements in MIGRATIONS:
                        if version in done:
                            continue
                        for statement in statements:
                            await cursor.execute(statement)
                        await cursor.execute("INSERT IGNORE INTO schema_migrations (version) VALUES (%s)", (version,))
                        applied.append(version)
                finally:
                    await cursor.execute("SELECT RELEASE_LOCK('wallpaper_schema')")
        finally:
            self.pool.release(conn)
        return applied

    async def ping(self) -> None:
        await self._run("SELECT 1", fetch=True)

    async def categories(self) -> list[dict[str, Any]]:
        rows = await self._run("SELECT slug, name, sort, cover FROM categories ORDER BY sort, slug", fetch=True)
        return [{"slug": r[0], "name": r[1], "sort": r[2], "cover": r[3]} for r in rows]

    async def category_exists(self, slug: str) -> bool:
        rows = await self._run("SELECT 1 FROM categories WHERE slug = %s LIMIT 1", (slug,), fetch=True)
        return bool(rows)

    async def upsert_categories(self, categories: Sequence[dict[str, Any]]) -> None:
        for c in categories:
            await self._run(
                "INSERT INTO categories (slug, name, sort, cover) VALUES (%s, %s, %s, %s)"
                " ON DUPLICATE KEY UPDATE name = VALUES(name), sort = VALUES(sort), cover = VALUES(cover)",
                (c["slug"], c["name"], c["sort"], c["cover"]),
            )

    async def insert_download(self, wallpaper_id: int, client_ip: str | None, key: str) -> int:
        """Insert one download event under its idempotency key; returns its id. Raises :class:`DuplicateKey`
        when the key is taken (the caller decides whether that is a replay)."""
        try:
            last_id, _ = await self._run(
                "INSERT INTO download_events (wallpaper_id, client_ip, idempotency_key) VALUES (%s, %s, %s)",
                (wallpaper_id, client_ip, key),
            )
            return int(last_id)
        except pymysql.err.IntegrityError as exc:
            if exc.args[0] != _DUPLICATE_ENTRY:
                raise
        rows = await self._run(
            "SELECT id, wallpaper_id FROM download_events WHERE idempotency_key = %s", (key,), fetch=True
        )
        raise DuplicateKey(int(rows[0][0]), int(rows[0][1]))

    async def download_counts(self, wallpaper_id: int, upto_event_id: int = 0) -> tuple[int, int]:
        """``(events of the wallpaper, those with id <= upto_event_id)``."""
        rows = await self._run(
            "SELECT COUNT(*), COALESCE(SUM(id <= %s), 0) FROM download_events WHERE wallpaper_id = %s",
            (upto_event_id, wallpaper_id),
            fetch=True,
        )
        return int(rows[0][0]), int(rows[0][1])

    async def download_events(self, wallpaper_id: int) -> int:
        return (await self.download_counts(wallpaper_id))[0]

    async def events_after(self, event_id: int, limit: int) -> list[tuple[int, int, float]]:
        """Up to ``limit`` events with id > ``event_id``, in id order: ``(id, wallpaper_id, age in seconds)``."""
        rows = await self._run(
            "SELECT id, wallpaper_id, TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)) FROM download_events"
            " WHERE id > %s ORDER BY id LIMIT %s",
            (event_id, limit),
            fetch=True,
        )
        return [(int(r[0]), int(r[1]), int(r[2]) / 1e6) for r in rows]

    async def watermark(self) -> int:
        """The id up to which every event's counter is known to be caught up (reconciler)."""
        rows = await self._run("SELECT last_event_id FROM counter_sync WHERE name = %s", (WATERMARK,), fetch=True)
        return int(rows[0][0]) if rows else 0

    async def advance_watermark(self, event_id: int) -> None:
        await self._run(
            "INSERT INTO counter_sync (name, last_event_id) VALUES (%s, %s)"
            " ON DUPLICATE KEY UPDATE last_event_id = GREATEST(last_event_id, VALUES(last_event_id))",
            (WATERMARK, event_id),
        )

    async def is_empty(self) -> bool:
        rows = await self._run("SELECT 1 FROM categories LIMIT 1", fetch=True)
        return not rows

    def pool_stats(self) -> dict[str, int]:
        return {"size": self.pool.size, "free": self.pool.freesize, "max": self.pool.maxsize}

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()
