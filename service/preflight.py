"""Before ``dev`` or ``seed`` does anything: are the databases there? A missing one is named, with its address and
how to start it, within its own budget (it cost ~90 s and a driver traceback that named no store before).

MongoDB is asked to ``ping`` within ``mongo.server_selection_timeout_ms``, MySQL to accept a login within
``mysql.connect_timeout``, each tried again for up to :data:`STARTING` seconds (a store that is still starting,
as right after ``make up``, answers within it). Redis is not checked here: the cache fails open without it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

from .config import Settings
from .repositories.mongo import create_client

__all__ = ["STARTING", "missing_stores"]

STARTING: Final = 5.0


async def _mongo(settings: Settings) -> None:
    m = settings.mongo
    client = create_client(
        "pymongo",
        m.uri,
        max_pool_size=1,
        min_pool_size=0,
        server_selection_timeout_ms=m.server_selection_timeout_ms,
        connect_timeout_ms=m.connect_timeout_ms,
        socket_timeout_ms=m.socket_timeout_ms,
    )
    try:
        await client.admin.command("ping")
    finally:
        await client.close()


async def _mysql(settings: Settings) -> None:
    import aiomysql  # type: ignore[import-untyped]

    q = settings.mysql
    connection = await asyncio.wait_for(
        aiomysql.connect(host=q.host, port=q.port, user=q.user, password=q.password, connect_timeout=q.connect_timeout),
        q.connect_timeout + 1,
    )
    connection.close()


async def _answers(check: Callable[[], Awaitable[None]]) -> Exception | None:
    deadline = time.monotonic() + STARTING
    while True:
        try:
            await check()
            return None
        except Exception as exc:  # the driver's own errors: refused, timed out, access denied
            if time.monotonic() >= deadline:
                return exc
            await asyncio.sleep(0.5)


def _said(error: Exception) -> str:
    """The driver's message without pymongo's topology dump."""
    text = str(error).split(" (configured timeouts", 1)[0]
    return f"{type(error).__name__}: {text[:200]}"


async def missing_stores(settings: Settings) -> list[str]:
    """One line per database that does not answer: which, where, its own message, and what to do."""
    mongo_error, mysql_error = await asyncio.gather(
        _answers(lambda: _mongo(settings)), _answers(lambda: _mysql(settings))
    )
    problems = []
    if mongo_error is not None:
        problems.append(
            f"MongoDB at {settings.mongo.uri} does not answer ({_said(mongo_error)}): start it (`make up`, or "
            "scripts/devstack up mongo) or point mongo.uri (WALLPAPER_MONGO__URI) at one"
        )
    if mysql_error is not None:
        q = settings.mysql
        problems.append(
            f"MySQL at {q.host}:{q.port} does not answer ({_said(mysql_error)}): start it (`make up`, or "
            "scripts/devstack up mysql) or point mysql.host / mysql.port (WALLPAPER_MYSQL__HOST, "
            "WALLPAPER_MYSQL__PORT) at one"
        )
    return problems
