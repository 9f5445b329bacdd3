"""The Redis backend: with its helpers (``_redis_clients.py``, ``_redis_cluster.py``, ``_redis_pubsub.py``,
``_redis_urls.py``), the only code that imports redis-py.

Every call goes through the backend's :class:`Guard` (``_guard.py``): the time budget, one circuit breaker per store
(per cluster master), and the classification of errors (redis-py's connection and response errors are outages and
become :class:`StoreUnavailable`; anything else is a mistake and passes through). Works with ``redis.asyncio.Redis``
and ``redis.asyncio.RedisCluster`` alike: every multi-key command touches keys of one hash slot (a value and its
lease), everything else goes through non-transactional pipelines, which the Cluster client splits by slot.

On a cluster every call is judged by the circuit breaker of the master that owns its key: a failing or
failing-over shard fails open only its own keys while the others keep hitting (``_redis_cluster.py`` bounds the
client's topology refreshes so that one shard's trouble does not stall the rest). The first topology discovery,
when :meth:`RedisBackend.connect` did not run it, is bounded by ``connect_timeout``, not by the first call's budget,
and concurrent first calls share one.

Mistakes raise, outages fail open, and both say where. A URL is checked when the backend is built
(:func:`check_redis_url`, :class:`ConfigurationError`); :meth:`RedisBackend.connect` raises
:class:`StoreConnectError` when the store refuses (nothing listens, wrong password, no such database), while the
same conditions at run time fail open. The first failure of a store (a cluster node) after a healthy period is
logged once at WARNING with the store, the operation and the store's own message, and so is its recovery. A
backend used after :meth:`RedisBackend.aclose` raises :class:`CacheClosedError`.

Clients belong to the event loop that made them (their connections are that loop's transports), so the backend
holds one client per loop: a new loop (a second ``asyncio.run()``, a test framework's per-test loop) gets a new
client from the factory (a given standalone client is copied; a given cluster client cannot be, and another loop
gets :class:`WrongEventLoopError`). :meth:`RedisBackend.aclose` closes the clients of every loop; a client whose
loop is closed cannot be awaited, so its sockets are closed directly (at close, or as soon as another loop finds
its loop closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisClusterException

from ._backend import Subscription
from ._breaker import CircuitBreaker
from ._budget import within_budget
from ._errors import CacheClosedError, ConfigurationError, StoreConnectError
from ._guard import Guard, Target
from ._options import StoreOptions
from ._redis_clients import (
    QueueAwarePool,
    RedisClient,
    abandon_client,
    copy_client,
    initialize,
    store_of,
    warn_socket_timeout,
)
from ._redis_cluster import (
    CLIENT_ERRORS,
    BoundedRedisCluster,
    ClusterSubscription,
    build_cluster_client,
    node_name_for_key,
)
from ._redis_pubsub import CLOSED_MESSAGE, RedisSubscription
from ._redis_urls import check_redis_url

__all__ = ["RedisBackend", "RedisClient"]

log = logging.getLogger("cachelayer")

T = TypeVar("T")

# KEYS[1] lease key; ARGV[1] token. Delete only if we still own it, so a lease that expired and was taken by
# another process is never released by us.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] lease key; ARGV[1] token; ARGV[2] new TTL in ms.
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS[1] value key; ARGV[1] offset; ARGV[2] bytes. SETRANGE keeps the key's TTL; never create a key.
_MARK_STALE: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('SETRANGE', KEYS[1], ARGV[1], ARGV[2]) return 1 end
return 0
"""
# Errors of a store call that mean "the store is not usable now" (CLIENT_ERRORS, plus our budget's TimeoutError).
# RuntimeError: redis-py raises it for a connection of a closed loop or an unset pub/sub connection; never a
# caller's problem.
_STORE_ERRORS: Final = (*CLIENT_ERRORS, TimeoutError, RuntimeError)


def _connect_reason(exc: BaseException, budget: float) -> str:
    """The store's own message: a cluster's "cannot be connected" wraps the last node's error."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {budget:g} s"
    cause = exc.__cause__
    if isinstance(exc, RedisClusterException) and isinstance(cause, Exception) and str(cause):
        return str(cause)
    return str(exc) or type(exc).__name__


# -- the backend --------------------------------------------------------------------------------------------------


class _LoopClient:
    """A client and its scripts, for one event loop."""

    __slots__ = ("bounded", "client", "cluster", "discovery", "loop", "release", "renew")

    def __init__(self, client: RedisClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        # Known once: an isinstance() against redis-py's client classes costs ~0.5 us a call on the hot path.
        self.cluster: RedisCluster | None = client if isinstance(client, RedisCluster) else None
        self.bounded: BoundedRedisCluster | None = client if isinstance(client, BoundedRedisCluster) else None
        self.loop = loop
        self.release = client.register_script(_RELEASE)
        self.renew = client.register_script(_RENEW)
        self.discovery: asyncio.Task[None] | None = None  # a cluster's first topology discovery, shared


class RedisBackend:
    """A :class:`cachelayer.Backend` over redis-py's asyncio client (standalone or Cluster).

    ``client`` is a client, or a zero-argument factory that builds one (then one is built per event loop, and
    :meth:`aclose` closes them). A client passed as is serves the loop it is first used on; on another loop the
    backend builds a copy with the same connection settings (a cluster client: :class:`WrongEventLoopError`).
    ``timeout`` is the budget of every call; ``breaker`` stops calling Redis for a cool-down after consecutive
    failures; ``connect_timeout`` bounds :meth:`connect` and a cluster's first discovery.
    """

    def __init__(
        self,
        client: RedisClient | Callable[[], RedisClient],
        *,
        timeout: float = 0.1,
        breaker: CircuitBreaker | None = None,
        owns_client: bool = False,
        clear_budget: float = 60.0,
        connect_timeout: float = 5.0,
        store: str | None = None,
    ) -> None:
        if callable(client) and not isinstance(client, Redis | RedisCluster):
            self._factory: Callable[[], RedisClient] = client
            self._given: RedisClient | None = None
            owns_client = True
        else:
            given: RedisClient = client
            if given.get_encoder().decode_responses:
                raise ConfigurationError(
                    "the Redis client must be built with decode_responses=False: values are bytes"
                )
            self._given = given
            self._factory = lambda: copy_client(given)
            store = store or store_of(given)
        self.connect_timeout = connect_timeout
        self.stores_objects = False  # every GET is a new bytes object off the wire
        self.clear_budget = clear_budget
        # The budget, the breakers (one per cluster master) and which errors are outages: see _guard.py.
        self.guard = Guard(
            timeout=timeout,
            breaker=breaker if breaker is not None else CircuitBreaker(name="redis"),
            outage_errors=_STORE_ERRORS,
            on_failure=self._topology_suspect,
        )
        self._store = store
        self._labelled = False
        self._owns_client = owns_client
        self._current: _LoopClient | None = None
        self._clients: list[_LoopClient] = []  # of every loop still open, for aclose
        self._closed = False

    @property
    def timeout(self) -> float:
        """The budget of every call (the guard's)."""
        return self.guard.timeout

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker of the store (on a cluster: the template of each master's, and the discovery's)."""
        return self.guard.breaker

    @classmethod
    def from_url(cls, url: str, *, options: StoreOptions | None = None, **overrides: Any) -> RedisBackend:
        """A backend with its own clients (one per event loop) on a ``redis://``, ``rediss://`` or ``unix://``
        URL: a bounded, blocking connection pool (a caller waits up to ``pool_timeout`` for a free connection
        instead of opening more). ``options`` (:class:`StoreOptions`), or its fields as keywords
        (``max_connections=8``). The URL is checked now (:class:`ConfigurationError`).

        ``socket_timeout`` is None on purpose: the budget bounds every call, and on Python 3.11 redis-py's socket
        timeout runs sends under ``asyncio.wait_for``, which can swallow the budget's cancellation."""
        settings = dataclasses.replace(options or StoreOptions(), **overrides)
        store = check_redis_url(url)

        def make() -> RedisClient:
            pool = QueueAwarePool.from_url(
                url,
                max_connections=settings.max_connections,
                timeout=settings.pool_timeout,
                socket_timeout=settings.socket_timeout,
            )
            return Redis.from_pool(pool)

        return cls(
            make,
            timeout=settings.timeout,
            breaker=settings.breaker,
            connect_timeout=settings.connect_timeout,
            store=store,
        )

    @classmethod
    def cluster_from_url(cls, url: str, *, options: StoreOptions | None = None, **overrides: Any) -> RedisBackend:
        """A backend over a Redis Cluster found from the node in ``url`` (``redis+cluster://host:port``, or
        ``redis://``): per node at most ``max_connections`` commands in flight, more wait up to ``pool_timeout``;
        topology refreshes bounded and off the request path. Call :meth:`connect` at start-up to learn the
        topology (else the first call does, bounded by ``connect_timeout``)."""
        settings = dataclasses.replace(options or StoreOptions(), **overrides)
        store = check_redis_url(url, cluster=True)

        def make() -> RedisClient:
            return build_cluster_client(
                url,
                max_connections=settings.max_connections,
                pool_timeout=settings.pool_timeout,
                socket_timeout=settings.socket_timeout,
            )

        return cls(
            make,
            timeout=settings.timeout,
            breaker=settings.breaker,
            connect_timeout=settings.connect_timeout,
            store=store,
        )

    # -- clients per loop ------------------------------------------------------------------------------------

    def _loop_client(self) -> _LoopClient:
        if self._closed:
            raise CacheClosedError(CLOSED_MESSAGE)
        loop = asyncio.get_running_loop()
        current = self._current
        if current is not None and current.loop is loop:
            return current
        return self._switch_to(loop)

    def _switch_to(self, loop: asyncio.AbstractEventLoop) -> _LoopClient:
        for known in self._clients:
            if known.loop is loop:
                self._current = known
                return known
        # Loops that are gone cannot close their clients any more: close their sockets now.
        for gone in [c for c in self._clients if c.loop.is_closed()]:
            self._clients.remove(gone)
            if self._owns(gone.client):
                abandon_client(gone.client)
        if self._given is not None and self._current is None and not self._clients:
            client = self._given
        else:
            client = self._factory()
        if self._store is None:
            self._store = store_of(client)
        warn_socket_timeout(client, self.timeout)
        self._current = _LoopClient(client, loop)
        self._clients.append(self._current)
        return self._current

    def _owns(self, client: RedisClient) -> bool:
        return self._owns_client or client is not self._given

    @property
    def client(self) -> RedisClient:
        """The client of the running loop."""
        return self._loop_client().client

    @property
    def store(self) -> str:
        """``host:port`` of the store (a cluster: its first startup node; a socket: its path)."""
        if self._store is None:
            return "unknown"  # a factory's client is not made yet
        return self._store

    async def connect(self) -> None:
        """Connect (authenticate, select the database; on a cluster, learn the topology) now, within
        ``connect_timeout``. Raises :class:`StoreConnectError` (the store, and its own message) when the store
        refuses: nothing listens, the password is wrong, the database does not exist."""
        client = self._loop_client().client
        try:
            await within_budget(self.connect_timeout, lambda: initialize(client))
        except _STORE_ERRORS as exc:
            raise StoreConnectError(self.store, _connect_reason(exc, self.connect_timeout)) from exc

    async def aclose(self) -> None:
        """Close the clients of every loop (safe to call twice). Every later call raises
        :class:`CacheClosedError`."""
        self._closed = True
        self._current = None
        clients, self._clients = self._clients, []
        running = asyncio.get_running_loop()
        for loop_client in clients:
            if loop_client.discovery is not None:
                loop_client.discovery.cancel()
            if not self._owns(loop_client.client):
                continue
            if loop_client.loop is running:
                with contextlib.suppress(Exception):
                    await loop_client.client.aclose()
            elif loop_client.loop.is_closed() or not loop_client.loop.is_running():
                abandon_client(loop_client.client)
            else:  # a loop running in another thread: its own thread closes the sockets
                with contextlib.suppress(RuntimeError):
                    loop_client.loop.call_soon_threadsafe(abandon_client, loop_client.client)

    # -- the budgeted call -----------------------------------------------------------------------------------

    def _target_for(self, key: str | None) -> Target:
        current = self._current
        cluster = None if current is None else current.cluster
        if not self._labelled:
            self.guard.store = f"Redis {'Cluster ' if cluster is not None else ''}{self.store}"
            self._labelled = self._store is not None
        if key is None or cluster is None:
            return self.guard.target()
        return self.guard.target(f"Redis Cluster node {node_name_for_key(cluster, key)}")

    async def _call(
        self, operation: str, make: Callable[[], Awaitable[T]], budget: float | None = None, key: str | None = None
    ) -> T:
        current = self._current
        if current is not None and current.bounded is not None and not current.bounded.topology_known:
            await self._discover(current)
        return await self.guard.call(self._target_for(key), operation, make, budget)

    async def _discover(self, current: _LoopClient) -> None:
        """A cluster's first topology discovery (``CLUSTER SLOTS``, ``COMMAND``), within ``connect_timeout``
        rather than a call's budget, shared by the calls that arrive meanwhile; a failure fails them open."""
        task = current.discovery
        if task is None or task.done():
            client = current.client

            async def discover() -> None:
                await self.guard.call(
                    self._target_for(None), "topology discovery", lambda: initialize(client), self.connect_timeout
                )

            task = current.discovery = asyncio.get_running_loop().create_task(discover())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if self._closed and task.cancelled():  # aclose() cancelled it, not our caller
                raise CacheClosedError(CLOSED_MESSAGE) from None
            raise

    def _topology_suspect(self) -> None:
        """A call failed or a breaker refused one: on a cluster, the map may be out of date (a replica promoted,
        slots moved) and nothing else would refresh it: a timeout by our budget (a frozen node) or a refused
        call never reaches redis-py's own "refresh on connection error". The client throttles the requests
        (one refresh at a time, at most every ``min_refresh_interval``), so asking on every failure is cheap;
        without it, a failed-over shard's keys would fail open until some call happened to get a
        connection error."""
        current = self._current
        if current is not None and isinstance(current.client, BoundedRedisCluster):
            current.client.request_refresh()

    # -- values ----------------------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        client = self._loop_client().client
        value: Any = await self._call("GET", lambda: client.get(key), key=key)
        return value  # type: ignore[no-any-return]  # built with decode_responses=False

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        client = self._loop_client().client

        async def run() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                return await pipe.execute()

        return await self._call("GET (many)", run, key=keys[0] if keys else None)

    async def set(self, key: str, value: bytes, ttl_ms: int, tag_keys: Sequence[str] = (), tag_ttl_s: int = 0) -> None:
        client = self._loop_client().client

        async def run() -> None:
            if not tag_keys:
                await client.set(key, value, px=ttl_ms)
                return
            # Tags, value, tags again. The tags first: a write cut off after them leaves a tag naming a missing key
            # (harmless), never a value that invalidate_tags cannot reach. The tags again after the value: an
            # invalidation that ran in between (SREM, then DEL of a key not yet written) would otherwise leave it
            # untagged (and, SREM having emptied the set, Redis dropped it: its TTL is set again too). One
            # connection keeps a pipeline's order; a cluster pipeline sends each node's part at once, so there
            # each step waits for the one before.
            def add_tags(pipe: Any) -> None:
                for tag_key in tag_keys:
                    pipe.sadd(tag_key, key)
                    # NX gives a new set a TTL; GT only ever lengthens it, so a tag outlives every key it names.
                    pipe.expire(tag_key, tag_ttl_s, nx=True)
                    pipe.expire(tag_key, tag_ttl_s, gt=True)

            if isinstance(client, RedisCluster):
                async with client.pipeline(transaction=False) as tags:
                    add_tags(tags)
                    await tags.execute()
                    await client.set(key, value, px=ttl_ms)
                    add_tags(tags)
                    await tags.execute()
                return
            async with client.pipeline(transaction=False) as pipe:
                add_tags(pipe)
                pipe.set(key, value, px=ttl_ms)
                add_tags(pipe)
                await pipe.execute()

        await self._call("SET", run, key=key)

    async def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        client = self._loop_client().client

        async def run() -> None:
            async with client.pipeline(transaction=False) as pipe:
                for key, value, ttl_ms in items:
                    pipe.set(key, value, px=ttl_ms)
                await pipe.execute()

        await self._call("SET (many)", run, key=items[0][0] if items else None)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        client = self._loop_client().client
        return await self._call("DEL", lambda: _delete_now(client, list(keys)), key=keys[0])

    async def mark_stale(self, keys: Sequence[str], offset: int, field: bytes) -> int:
        if not keys:
            return 0
        client = self._loop_client().client

        async def run() -> int:
            # One EVAL per key in one pipeline (a cluster pipeline splits it by slot: keys of different slots
            # cannot share a script). The script is a few bytes: EVAL, not EVALSHA, spares a NOSCRIPT round trip.
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.eval(_MARK_STALE, 1, key, offset, field)
                return sum(int(marked) for marked in await pipe.execute())

        return await self._call("mark stale", run, key=keys[0])

    async def clear(self, prefix: str) -> int:
        client = self._loop_client().client
        pattern = _glob_escape(prefix) + "*"

        async def run() -> int:
            deleted = 0
            batch: list[str] = []
            async for key in client.scan_iter(match=pattern, count=500):
                batch.append(key.decode() if isinstance(key, bytes) else key)
                if len(batch) >= 500:
                    deleted += await _delete_now(client, batch)
                    batch = []
            if batch:
                deleted += await _delete_now(client, batch)
            return deleted

        return await self._call("clear (SCAN, DEL)", run, budget=self.clear_budget)

    # -- leases ----------------------------------------------------------------------------------------------

    async def acquire_lease(self, lease_key: str, token: str, ttl_ms: int) -> bool:
        client = self._loop_client().client
        return bool(await self._call(
            "lease acquire", lambda: client.set(lease_key, token, nx=True, px=ttl_ms), key=lease_key
        ))

    async def renew_lease(self, lease_key: str, token: str, ttl_ms: int) -> bool:
        script = self._loop_client().renew
        return bool(await self._call(
            "lease renew", lambda: script(keys=[lease_key], args=[token, ttl_ms]), key=lease_key
        ))

    async def release_lease(self, lease_key: str, token: str) -> None:
        script = self._loop_client().release
        await self._call("lease release", lambda: script(keys=[lease_key], args=[token]), key=lease_key)

    async def poll(self, key: str, lease_key: str) -> tuple[bytes | None, bool]:
        client = self._loop_client().client

        async def run() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.exists(lease_key)
                return await pipe.execute()

        value, lease_held = await self._call("lease poll", run, key=key)
        return value, bool(lease_held)

    # -- tags ------------------------------------------------------------------------------------------------

    async def tag_members(self, tag_key: str) -> list[str]:
        client = self._loop_client().client
        members = await self._call("tag members (SMEMBERS)", lambda: client.smembers(tag_key), key=tag_key)
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def remove_tag_members(self, tag_key: str, members: Sequence[str]) -> None:
        client = self._loop_client().client
        await self._call("tag remove (SREM)", lambda: client.srem(tag_key, *members), key=tag_key)

    # -- publish / subscribe ---------------------------------------------------------------------------------

    async def publish(self, channel: str, data: bytes, *, sharded: bool = False) -> None:
        client = self._loop_client().client
        if isinstance(client, RedisCluster):
            if sharded:
                await self._call(
                    "publish (SPUBLISH)", lambda: client.execute_command("SPUBLISH", channel, data), key=channel
                )
            else:
                await self._call("publish", lambda: _publish_on_any_master(client, channel, data))
        else:
            await self._call("publish", lambda: client.publish(channel, data))

    def subscription(self, *, sharded: bool = False) -> Subscription:
        client = self._loop_client().client
        if isinstance(client, RedisCluster):
            return ClusterSubscription(
                client, sharded=sharded, connect_timeout=max(self.timeout, 1.0), closed=lambda: self._closed
            )
        return RedisSubscription(
            lambda: self.client, store=self.store, timeout=self.timeout, closed=lambda: self._closed
        )

    # -- introspection ---------------------------------------------------------------------------------------

    async def ping(self) -> None:
        client = self._loop_client().client
        await self._call("PING", lambda: client.ping())

    def stats(self) -> dict[str, Any]:
        return self.guard.stats()


async def _publish_on_any_master(client: RedisCluster, channel: str, data: bytes) -> None:
    """A cluster forwards PUBLISH to every node, so any live master will do: a dead one (the channel's own slot
    owner, failing over) must not drop a local-tier invalidation that every other node could carry."""
    masters = client.get_primaries()
    random.shuffle(masters)
    for attempt, node in enumerate(masters):
        try:
            await client.execute_command("PUBLISH", channel, data, target_nodes=node)
            return
        except CLIENT_ERRORS:
            if attempt == len(masters) - 1:
                raise


async def _delete_now(client: RedisClient, keys: list[str]) -> int:
    # One DEL per key: on a cluster, keys of different slots cannot share a command.
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.delete(key)
        return sum(await pipe.execute())


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
