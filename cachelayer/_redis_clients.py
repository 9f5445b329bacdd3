"""redis-py clients as the Redis backend keeps them: one per event loop, bounded pools that tell the budget when a
call waits for a connection, copies for another loop, and sockets closed by hand when a client's loop is gone."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

from ._budget import note_waiting_for_connection
from ._errors import WrongEventLoopError
from ._redis_cluster import BoundedRedisCluster, abandon_connection

__all__ = [
    "QueueAwarePool",
    "RedisClient",
    "abandon_client",
    "copy_client",
    "initialize",
    "store_of",
    "warn_socket_timeout",
]

log = logging.getLogger("cachelayer")

RedisClient = Redis | RedisCluster


def store_of(client: RedisClient) -> str:
    """``host:port`` (or the socket path) of a client's store; of a cluster client, its first startup node."""
    if isinstance(client, RedisCluster):
        nodes = list(client.nodes_manager.startup_nodes) or list(client.nodes_manager.nodes_cache)
        return nodes[0] if nodes else "unknown"
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


async def initialize(client: RedisClient) -> None:
    if isinstance(client, RedisCluster):
        await client.initialize()
    else:
        await client.ping()


class QueueAwarePool(BlockingConnectionPool):
    """A blocking pool that tells the time budget while a call waits for a free connection
    (``_budget.note_waiting_for_connection``): a call cut off then says nothing about Redis.

    redis-py's ``get_connection`` waits until ``can_get_connection()`` is true, then takes a connection with no
    suspension point in between, and only then connects it: so the wait ends before connecting, and a connect
    to a hung Redis counts against it. The hook is a plain call on redis-py's own path (no extra await).

    An idle connection is taken and given back without the pool's condition, lock and timeout when nobody waits
    for one: that bookkeeping costs about as much as all of cachelayer's own work on a hit (``benchmarks.hit_path``,
    rows ``raw`` and ``raw_direct_pool``: a GET + parse 0.87 x through this pool). It is the same pop and append
    redis-py does under its lock, with nothing awaited in between, so the single-threaded loop keeps it atomic;
    the connection is still checked (``ensure_connection``: connected, nothing unread). redis-py's own path runs
    whenever its extra work is needed: a caller is queued (it is woken in order), a connection must be made or
    reconnected, the pool is in maintenance, the client re-authenticates on release (a credential provider), or
    redis-py's own observability counts connections.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued = 0  # callers inside redis-py's get_connection: they wait on its condition, in order
        self._reauthenticates = self.connection_kwargs.get("credential_provider") is not None

    def usage(self) -> dict[str, int]:
        """The pool's connections now: in use, idle (connected, free) and the limit (for ``Backend.stats()``)."""
        return {
            "store_pool_in_use": len(self._in_use_connections),
            "store_pool_idle": len(self._available_connections),
            "store_pool_max": int(self.max_connections),
            "store_pool_queued": self._queued,
        }

    def can_get_connection(self) -> bool:
        free = bool(super().can_get_connection())
        note_waiting_for_connection(not free)
        return free

    def _direct(self) -> bool:
        return not (self._queued or self._in_maintenance or self._reauthenticates or _redis_counts_connections())

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        if command_name is not None or keys or options:  # redis-py's deprecated form: its own path says so
            return await super().get_connection(command_name, *keys, **options)  # type: ignore[no-untyped-call]
        available = self._available_connections
        if not available or not self._direct():
            self._queued += 1
            try:
                return await super().get_connection()  # type: ignore[no-untyped-call]
            finally:
                self._queued -= 1
        connection = available.pop()
        self._in_use_connections.add(connection)
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: Any) -> None:
        if connection.should_reconnect() or not self._direct():
            await super().release(connection)
            return
        self._in_use_connections.remove(connection)
        self._available_connections.append(connection)


def _redis_counts_connections() -> bool:
    """Whether redis-py's own observability is on (its pool then counts idle and used connections)."""
    return _collector is not None and _collector() is not None


_collector: Callable[[], object] | None
try:  # redis-py >= 7.1 (pinned in tests/test_redis_privates.py); without it, nothing counts connections
    from redis.asyncio.observability.recorder import _get_or_create_collector as _collector
except ImportError:  # pragma: no cover
    _collector = None


def copy_client(client: RedisClient) -> RedisClient:
    """A client with ``client``'s connection settings, for another event loop."""
    if isinstance(client, RedisCluster):
        raise WrongEventLoopError(
            "the RedisCluster client given to the cache serves the event loop it was first used on, and this call "
            "runs on another: give RedisBackend a factory (RedisBackend(lambda: RedisCluster(...))) or build the "
            "cache with Cache.from_url('redis+cluster://host:port') to use it from several event loops"
        )
    pool = client.connection_pool
    options: dict[str, Any] = dict(pool.connection_kwargs)
    if isinstance(pool, BlockingConnectionPool):
        options["timeout"] = pool.timeout
    copy = type(pool)(connection_class=pool.connection_class, max_connections=pool.max_connections, **options)
    return Redis.from_pool(copy)


def abandon_client(client: RedisClient) -> None:
    """Close the sockets of a client whose event loop cannot run its ``aclose()`` (closed, or not running)."""
    connections: Iterable[Any]
    if isinstance(client, RedisCluster):
        manager = client.nodes_manager
        nodes = [*manager.nodes_cache.values(), *manager.startup_nodes.values()]
        connections = [connection for node in nodes for connection in node._connections]
        if isinstance(client, BoundedRedisCluster):
            client.forget_topology()
        client._initialize = True  # stock __del__ warns of an unclosed client otherwise
    else:
        pool = client.connection_pool
        connections = [*pool._available_connections, *pool._in_use_connections]
    for connection in connections:
        abandon_connection(connection)


_warned: set[int] = set()


def warn_socket_timeout(client: RedisClient, budget: float) -> None:
    if sys.version_info >= (3, 12) or id(client) in _warned:
        return
    if isinstance(client, RedisCluster):
        socket_timeout = client.nodes_manager.connection_kwargs.get("socket_timeout")
    else:
        socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    if socket_timeout is not None:
        _warned.add(id(client))
        log.warning(
            "cachelayer: the Redis client has socket_timeout=%s; on Python 3.11 it can stretch the cache's "
            "%.3f s budget to the socket timeout: build it with socket_timeout=None (docs/operations.md)",
            socket_timeout,
            budget,
        )
