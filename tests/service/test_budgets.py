"""Every MySQL and MongoDB call returns within its configured budget (+0.5 s) when the store refuses connections,
swallows everything (blackhole) or loses its replies; a LatencyProxy in front of the real MariaDB and SecantusDB.

Each case runs several calls at once on a small pool, so calls also queue for connections (the aiomysql pool
opens connections under its lock: a hung handshake used to hold every waiter, 11 s in the fault run)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pymongo.errors
import pymysql.err  # type: ignore[import-untyped]
import pytest

from harness import LatencyProxy
from harness.services import MySQLSettings
from service.repositories import (
    MongoWallpaperRepository,
    MySQLRepository,
    close_client,
    create_client,
    create_pool,
    settle_late_calls,
)
from tests._doubles import eventually
from tests.service._support import DB_NAME

FAULTS = ["refuse", "blackhole", "drop_replies"]
SLACK = 0.5


async def inject(proxy: LatencyProxy, fault: str) -> None:
    if fault == "refuse":
        await proxy.aclose()  # the port is closed: connection refused
    elif fault == "blackhole":
        proxy.blackhole = True
    else:
        proxy.downstream_latency = 60.0  # requests arrive, replies never do (within any budget)


async def timed_calls(
    calls: list[Callable[[], Awaitable[Any]]], errors: tuple[type[BaseException], ...]
) -> list[float]:
    """Run the calls at once; each must fail with one of ``errors``; returns each one's duration."""

    async def one(call: Callable[[], Awaitable[Any]]) -> float:
        started = time.monotonic()
        with pytest.raises(errors):
            await call()
        return time.monotonic() - started

    durations = list(await asyncio.gather(*(one(call) for call in calls)))
    print(f"budget case: {len(durations)} calls, slowest {max(durations):.2f} s")  # shown with pytest -s
    return durations


@pytest.mark.parametrize("fault", FAULTS)
async def test_mysql_calls_hold_their_budget(mysql_settings: MySQLSettings, fault: str) -> None:
    acquire, query = 0.5, 1.0
    async with LatencyProxy(mysql_settings.host, mysql_settings.port) as proxy:
        pool = await create_pool(
            host=proxy.host, port=proxy.port, user=mysql_settings.user, password=mysql_settings.password,
            database=mysql_settings.database, minsize=2, maxsize=3, connect_timeout=0.5,
        )  # fmt: skip
        repo = MySQLRepository(pool, query_timeout=query, acquire_timeout=acquire)
        try:
            await repo.ping()
            await inject(proxy, fault)
            calls: list[Callable[[], Awaitable[Any]]] = [repo.ping for _ in range(4)]
            calls += [lambda: repo.download_counts(1, 0) for _ in range(4)]
            durations = await timed_calls(calls, (pymysql.err.OperationalError, pymysql.err.InterfaceError))
            assert max(durations) <= acquire + query + SLACK, durations
            # and again, now that the pool holds only broken or no connections
            durations = await timed_calls([repo.ping for _ in range(4)], (pymysql.err.MySQLError,))
            assert max(durations) <= acquire + query + SLACK, durations
        finally:
            pool.terminate()
            await asyncio.wait_for(pool.wait_closed(), 5)


def _pymongo_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("pymongo_")]


# Motor runs PyMongo's synchronous driver in threads; against a proxy that swallows traffic, a thread of its own
# (not the service's, not the cache's) can drop a socket unclosed after close(): the Motor runs ignore that warning.
_MOTOR_THREADS_DROP_SOCKETS = pytest.mark.filterwarnings(
    "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)


@pytest.mark.parametrize("driver", [pytest.param("motor", marks=_MOTOR_THREADS_DROP_SOCKETS), "pymongo"])
@pytest.mark.parametrize("fault", FAULTS)
async def test_mongo_calls_hold_their_budget(mongo_uri: str, fault: str, driver: str) -> None:
    budget_ms = 1000
    target = mongo_uri.split("//", 1)[1].strip("/")
    host, port = target.rsplit(":", 1)
    async with LatencyProxy(host, int(port)) as proxy:
        client = create_client(
            driver,  # type: ignore[arg-type]
            f"mongodb://{proxy.host}:{proxy.port}/?directConnection=true",
            max_pool_size=3, min_pool_size=0, server_selection_timeout_ms=500, connect_timeout_ms=500,
            socket_timeout_ms=1000, timeout_ms=budget_ms,
        )  # fmt: skip
        repo = MongoWallpaperRepository(client, DB_NAME, timeout=budget_ms / 1000)
        try:
            await repo.ping()
            await repo.get(1)
            await inject(proxy, fault)
            calls: list[Callable[[], Awaitable[Any]]] = [lambda: repo.get(1) for _ in range(4)]
            calls += [lambda: repo.count(None) for _ in range(2)] + [lambda: repo.raise_downloads(1, 0)]
            durations = await timed_calls(calls, (pymongo.errors.PyMongoError,))
            assert max(durations) <= budget_ms / 1000 + SLACK, durations
        finally:
            # As the service's shutdown does: the calls left past their budget end by the driver's timeout.
            assert await settle_late_calls(within_seconds=10.0) == 0
            await asyncio.wait_for(close_client(client), 10)
            if driver == "motor":
                # Motor's PyMongo threads (its server monitor) outlive close() until their blocking call through the
                # broken proxy returns, and may then drop that socket unclosed: wait for them here, and collect it
                # while this test's filter holds, so no later test sees a socket that was never ours.
                await eventually(lambda: not _pymongo_threads(), 15.0, "PyMongo's threads to exit")
                gc.collect()
