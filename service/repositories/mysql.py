"""Categories and download events in MySQL/MariaDB (aiomysql): storage only, no caching.

Every statement runs under a time budget (``query_timeout``; a connection whose statement ran out of time is
closed, not returned to the pool) and waits at most ``acquire_timeout`` for a pooled connection. The schema is
created and migrated at start-up, idempotently, under a MySQL named lock so that processes starting together
do not race.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Sequence
from typing import Any, Final

import aiomysql  # type: ignore[import-untyped]

__all__ = ["MIGRATIONS", "MySQLRepository", "create_pool"]

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
)


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

    async def _run(self, sql: str, args: Sequence[Any] = (), *, fetch: bool = False) -> Any:
        conn = await asyncio.wait_for(self.pool.acquire(), self.acquire_timeout)
        healthy = True
        try:
            async with conn.cursor() as cursor:
                await asyncio.wait_for(cursor.execute(sql, tuple(args)), self.query_timeout)
                if fetch:
                    return await asyncio.wait_for(cursor.fetchall(), self.query_timeout)
                return cursor.lastrowid
        except BaseException:
            healthy = False
            raise
        finally:
            if not healthy:
                conn.close()  # mid-statement: never hand this connection to anyone else
            self.pool.release(conn)

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
        conn = await asyncio.wait_for(self.pool.acquire(), self.acquire_timeout)
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

    async def record_download(self, wallpaper_id: int, client_ip: str | None = None) -> int:
        """Insert one download event; returns its id."""
        return int(
            await self._run(
                "INSERT INTO download_events (wallpaper_id, client_ip) VALUES (%s, %s)", (wallpaper_id, client_ip)
            )
        )

    async def download_events(self, wallpaper_id: int) -> int:
        rows = await self._run(
            "SELECT COUNT(*) FROM download_events WHERE wallpaper_id = %s", (wallpaper_id,), fetch=True
        )
        return int(rows[0][0])

    async def is_empty(self) -> bool:
        rows = await self._run("SELECT 1 FROM categories LIMIT 1", fetch=True)
        return not rows

    def pool_stats(self) -> dict[str, int]:
        return {"size": self.pool.size, "free": self.pool.freesize, "max": self.pool.maxsize}

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()
