"""QueueAwarePool hands out an idle connection without redis-py's condition, lock and timeout, and takes redis-py's
own path whenever that path does something the direct one does not (``cachelayer/_redis_clients.py``).

Real Redis throughout (the machine's, DB 15). What must hold: every caller gets its own reply, a caller queued
on redis-py's condition is woken (the direct path never gives a connection back without waking it), nothing is
leaked, and a pool that must re-authenticate or is in maintenance never skips redis-py's path.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis.asyncio
from redis.asyncio import Redis

from cachelayer import RedisBackend
from cachelayer._redis_clients import QueueAwarePool
from tests._doubles import eventually


async def test_concurrent_callers_each_get_their_own_reply_and_nothing_leaks(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    prefix = f"direct:{uuid.uuid4().hex}"
    await redis_client.mset({f"{prefix}:{i}": str(i) for i in range(300)})
    pool = QueueAwarePool.from_url(redis_url, max_connections=3, timeout=5)
    client = Redis.from_pool(pool)
    try:
        for _ in range(3):  # bursts: the first makes the connections, the later ones mostly take them directly
            got = await asyncio.gather(*(client.get(f"{prefix}:{i}") for i in range(300)))
            assert got == [str(i).encode() for i in range(300)]
        assert len(pool._in_use_connections) == 0
        assert len(pool._available_connections) <= 3
        assert pool._queued == 0
    finally:
        await client.aclose()


async def test_a_caller_queued_on_the_condition_is_woken_when_a_direct_caller_gives_back(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    blocker = f"direct-blocker:{uuid.uuid4().hex}"
    pool = QueueAwarePool.from_url(redis_url, max_connections=1, timeout=10)
    client = Redis.from_pool(pool)
    try:
        assert await client.ping()  # one idle connection: the next taker goes direct
        holder = asyncio.create_task(client.blpop([blocker], timeout=10))
        await eventually(lambda: len(pool._in_use_connections) == 1, what="the BLPOP to hold the only connection")
        queued = asyncio.create_task(client.echo("queued"))
        await eventually(lambda: pool._queued == 1, what="a caller to queue on redis-py's condition")
        await redis_client.lpush(blocker, b"go")
        assert list(await holder) == [blocker.encode(), b"go"]
        # The holder's release saw the queued caller: redis-py's release, which notifies it.
        assert await asyncio.wait_for(queued, 5) == b"queued"
        assert len(pool._in_use_connections) == 0
        assert pool._queued == 0
    finally:
        await client.aclose()


class _Provider:
    """A credential provider (redis-py calls ``get_credentials`` at connect)."""

    def get_credentials(self) -> tuple[str]:
        return ("",)

    async def get_credentials_async(self) -> tuple[str]:
        return ("",)


async def test_redis_py_path_when_it_has_work_the_direct_path_skips(redis_url: str) -> None:
    plain = QueueAwarePool.from_url(redis_url, max_connections=2)
    reauth = QueueAwarePool.from_url(redis_url, max_connections=2, credential_provider=_Provider())
    try:
        assert plain._direct()
        assert not reauth._direct()  # a release must run redis-py's re-authentication listener
        plain.set_in_maintenance(True)
        assert not plain._direct()
        plain.set_in_maintenance(False)
        plain._queued = 1
        assert not plain._direct()  # a queued caller is served in order
        plain._queued = 0
        assert plain._direct()
    finally:
        await plain.aclose()
        await reauth.aclose()


async def test_a_connection_that_must_reconnect_is_given_back_through_redis_py(redis_url: str) -> None:
    pool = QueueAwarePool.from_url(redis_url, max_connections=2)
    client = Redis.from_pool(pool)
    try:
        assert await client.ping()
        connection: Any = await pool.get_connection()
        connection.mark_for_reconnect()
        await pool.release(connection)
        assert not connection.is_connected  # redis-py's release disconnected it
        assert await client.ping()  # and the pool goes on
    finally:
        await client.aclose()


async def test_the_backend_reports_its_pool_in_stats(redis_url: str) -> None:
    backend = RedisBackend.from_url(redis_url, max_connections=7)
    try:
        await backend.set("pool-stats-probe", b"x", 10_000)
        stats = backend.stats()
        assert stats["store_pool_max"] == 7
        assert stats["store_pool_in_use"] == 0  # the call gave its connection back
        assert stats["store_pool_idle"] >= 1
        assert stats["store_pool_queued"] == 0
    finally:
        await backend.aclose()
