"""The Redis backend: the only module (with ``_redis_cluster.py``) that imports redis-py.

Every call runs under the time budget (``_budget.py``) and a circuit breaker; every redis-py error becomes
:class:`StoreUnavailable`. Works with ``redis.asyncio.Redis`` and ``redis.asyncio.RedisCluster`` alike: every
multi-key command touches keys of one hash slot (a value and its lease), everything else goes through
non-transactional pipelines, which the Cluster client splits by slot.

On a cluster every call is judged by the circuit breaker of the master that owns its key: a failing or
failing-over shard fails open only its own keys while the others keep hitting (``_redis_cluster.py`` bounds the
client's topology refreshes so that one shard's trouble does not stall the rest).

Clients belong to the event loop that made them (their connections are that loop's transports), so the backend
holds one client per loop: a new loop (a second ``asyncio.run()``, a test framework's per-test loop) gets a new
client from the factory, and the old one is dropped with its loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.client import PubSub

from ._backend import Message, StoreUnavailable, Subscription
from ._breaker import CircuitBreaker
from ._budget import LateLoopTimeout, QueueTimeout, note_waiting_for_connection, within_budget
from ._redis_cluster import (
    CLIENT_ERRORS,
    BoundedRedisCluster,
    ClusterSubscription,
    build_cluster_client,
    node_name_for_key,
)

__all__ = ["RedisBackend", "RedisClient"]

log = logging.getLogger("cachelayer")

T = TypeVar("T")
RedisClient = Redis | RedisCluster

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
_OVERWRITE: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('SETRANGE', KEYS[1], ARGV[1], ARGV[2]) return 1 end
return 0
"""
# Errors of a store call that mean "the store is not usable now" (CLIENT_ERRORS, plus our budget's TimeoutError).
# RuntimeError: redis-py raises it for a connection of a closed loop or an unset pub/sub connection; never a
# caller's problem.
_STORE_ERRORS: Final = (*CLIENT_ERRORS, TimeoutError, RuntimeError)
# A failure after this long without one is logged at WARNING: the first sign of trouble at 3 a.m.
_QUIET_PERIOD: Final = 30.0


class _LoopClient:
    """A client and its scripts, for one event loop."""

    __slots__ = ("client", "loop", "overwrite", "release", "renew")

    def __init__(self, client: RedisClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.release = client.register_script(_RELEASE)
        self.renew = client.register_script(_RENEW)
        self.overwrite = client.register_script(_OVERWRITE)


class RedisBackend:
    """A :class:`cachelayer.Backend` over redis-py's asyncio client (standalone or Cluster).

    ``client`` is a client, or a zero-argument factory that builds one (then one is built per event loop, and
    :meth:`aclose` closes them). A client passed as is serves the loop it is first used on; on another loop the
    backend builds a copy with the same connection settings. ``timeout`` is the budget of every call;
    ``breaker`` stops calling Redis for a cool-down after consecutive failures.
    """

    def __init__(
        self,
        client: RedisClient | Callable[[], RedisClient],
        *,
        timeout: float = 0.1,
        breaker: CircuitBreaker | None = None,
        owns_client: bool = False,
        clear_budget: float = 60.0,
    ) -> None:
        if callable(client) and not isinstance(client, Redis | RedisCluster):
            self._factory: Callable[[], RedisClient] = client
            self._given: RedisClient | None = None
            owns_client = True
        else:
            given: RedisClient = client
            if given.get_encoder().decode_responses:
                raise ValueError("the Redis client must be built with decode_responses=False: values are bytes")
            self._given = given
            self._factory = lambda: _copy_client(given)
        self.timeout = timeout
        self.stores_objects = False  # every GET is a new bytes object off the wire
        self.clear_budget = clear_budget
        self.breaker = breaker if breaker is not None else CircuitBreaker(name="redis")
        self._node_breakers: dict[str, CircuitBreaker] = {}
        self._owns_client = owns_client
        self._current: _LoopClient | None = None
        self._made: list[RedisClient] = []
        self._closed = False
        self.store_errors = 0
        self.late_timeouts = 0
        self.queue_timeouts = 0
        self.breaker_rejections = 0
        self._last_failure = float("-inf")

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        max_connections: int = 64,
        pool_timeout: float = 1.0,
        socket_timeout: float | None = None,
        **options: Any,
    ) -> RedisBackend:
        """A backend with its own clients (one per event loop): a bounded, blocking connection pool (a caller
        waits up to ``pool_timeout`` for a free connection instead of opening more).

        ``socket_timeout`` is None on purpose: the budget bounds every call, and on Python 3.11 redis-py's socket
        timeout runs sends under ``asyncio.wait_for``, which can swallow the budget's cancellation."""

        def make() -> RedisClient:
            pool = QueueAwarePool.from_url(
                url, max_connections=max_connections, timeout=pool_timeout, socket_timeout=socket_timeout
            )
            return Redis(connection_pool=pool)

        return cls(make, **options)

    @classmethod
    def cluster_from_url(
        cls,
        url: str,
        *,
        max_connections: int = 64,
        pool_timeout: float = 1.0,
        socket_timeout: float | None = None,
        **options: Any,
    ) -> RedisBackend:
        """A backend over a Redis Cluster found from the node in ``url`` (``redis+cluster://host:port``): per node
        at most ``max_connections`` commands in flight, more wait up to ``pool_timeout``; topology refreshes
        bounded and off the request path. Call :meth:`connect` at start-up to learn the topology."""

        def make() -> RedisClient:
            return build_cluster_client(
                url, max_connections=max_connections, pool_timeout=pool_timeout, socket_timeout=socket_timeout
            )

        return cls(make, **options)

    # -- clients per loop ------------------------------------------------------------------------------------

    def _loop_client(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        current = self._current
        if current is not None and current.loop is loop:
            return current
        if self._closed:
            raise StoreUnavailable("the Redis backend is closed")
        if current is None and self._given is not None and not self._made:
            client = self._given
        else:
            client = self._factory()
            self._made.append(client)
            if len(self._made) > 1:
                self._made = self._made[-1:]  # the older ones belong to loops that are gone
        _warn_socket_timeout(client, self.timeout)
        self._current = _LoopClient(client, loop)
        return self._current

    @property
    def client(self) -> RedisClient:
        """The client of the running loop."""
        return self._loop_client().client

    async def connect(self) -> None:
        client = self._loop_client().client
        await self._call(lambda: _initialize(client), budget=max(self.timeout, 5.0))

    async def aclose(self) -> None:
        self._closed = True
        current, self._current = self._current, None
        if current is None or (not self._owns_client and current.client is self._given):
            return
        with contextlib.suppress(Exception):
            await current.client.aclose()

    # -- the budgeted call -----------------------------------------------------------------------------------

    def _breaker_for(self, key: str | None) -> CircuitBreaker:
        current = self._current
        if key is None or current is None or not isinstance(current.client, RedisCluster):
            return self.breaker
        node = node_name_for_key(current.client, key)
        breaker = self._node_breakers.get(node)
        if breaker is None:
            template = self.breaker
            breaker = self._node_breakers[node] = CircuitBreaker(
                template.failure_threshold, template.cooldown, name=f"redis node {node}", clock=template.clock
            )
        return breaker

    async def _call(self, make: Callable[[], Awaitable[T]], budget: float | None = None, key: str | None = None) -> T:
        breaker = self._breaker_for(key)
        permit = breaker.permit()
        if permit is None:
            self.breaker_rejections += 1
            self._topology_suspect()
            raise StoreUnavailable("circuit breaker is open")
        try:
            result = await within_budget(self.timeout if budget is None else budget, make)
        except (LateLoopTimeout, QueueTimeout) as exc:
            # The loop was late, or the call never left this process's pool: this call fails open, the breaker
            # learns nothing (the calls on the wire tell it how Redis is).
            if isinstance(exc, LateLoopTimeout):
                self.late_timeouts += 1
            else:
                self.queue_timeouts += 1
            if permit == "probe":
                breaker.record_abandoned()
            raise StoreUnavailable(str(exc)) from exc
        except _STORE_ERRORS as exc:
            self._failed(breaker, exc)
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            if permit == "probe":  # only the probe's fate decides the half-open state
                breaker.record_abandoned()
            raise
        breaker.record_success()
        return result

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

    def _failed(self, breaker: CircuitBreaker, exc: BaseException) -> None:
        self._topology_suspect()
        self.store_errors += 1
        now = time.monotonic()
        if now - self._last_failure > _QUIET_PERIOD:
            log.warning("cachelayer: Redis call failed after a healthy period (failing open): %r", exc)
        else:
            log.debug("cachelayer: Redis call failed: %r", exc)
        self._last_failure = now
        breaker.record_failure(exc)

    # -- values ----------------------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        client = self._loop_client().client
        value: Any = await self._call(lambda: client.get(key), key=key)
        return value  # type: ignore[no-any-return]  # built with decode_responses=False

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        client = self._loop_client().client

        async def run() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                return await pipe.execute()

        return await self._call(run, key=keys[0] if keys else None)

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

        await self._call(run, key=key)

    async def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        client = self._loop_client().client

        async def run() -> None:
            async with client.pipeline(transaction=False) as pipe:
                for key, value, ttl_ms in items:
                    pipe.set(key, value, px=ttl_ms)
                await pipe.execute()

        await self._call(run, key=items[0][0] if items else None)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        client = self._loop_client().client
        return await self._call(lambda: _delete_now(client, list(keys)), key=keys[0])

    async def overwrite(self, key: str, offset: int, data: bytes) -> bool:
        script = self._loop_client().overwrite
        return bool(await self._call(lambda: script(keys=[key], args=[offset, data]), key=key))

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

        return await self._call(run, budget=self.clear_budget)

    # -- leases ----------------------------------------------------------------------------------------------

    async def acquire_lease(self, lease_key: str, token: str, ttl_ms: int) -> bool:
        client = self._loop_client().client
        return bool(await self._call(lambda: client.set(lease_key, token, nx=True, px=ttl_ms), key=lease_key))

    async def renew_lease(self, lease_key: str, token: str, ttl_ms: int) -> bool:
        script = self._loop_client().renew
        return bool(await self._call(lambda: script(keys=[lease_key], args=[token, ttl_ms]), key=lease_key))

    async def release_lease(self, lease_key: str, token: str) -> None:
        script = self._loop_client().release
        await self._call(lambda: script(keys=[lease_key], args=[token]), key=lease_key)

    async def poll(self, key: str, lease_key: str) -> tuple[bytes | None, bool]:
        client = self._loop_client().client

        async def run() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.exists(lease_key)
                return await pipe.execute()

        value, lease_held = await self._call(run, key=key)
        return value, bool(lease_held)

    # -- tags ------------------------------------------------------------------------------------------------

    async def tag_members(self, tag_key: str) -> list[str]:
        client = self._loop_client().client
        members = await self._call(lambda: client.smembers(tag_key), key=tag_key)
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def remove_tag_members(self, tag_key: str, members: Sequence[str]) -> None:
        client = self._loop_client().client
        await self._call(lambda: client.srem(tag_key, *members), key=tag_key)

    # -- publish / subscribe ---------------------------------------------------------------------------------

    async def publish(self, channel: str, data: bytes, *, sharded: bool = False) -> None:
        client = self._loop_client().client
        if isinstance(client, RedisCluster):
            if sharded:
                await self._call(lambda: client.execute_command("SPUBLISH", channel, data), key=channel)
            else:
                await self._call(lambda: _publish_on_any_master(client, channel, data))
        else:
            await self._call(lambda: client.publish(channel, data))

    def subscription(self, *, sharded: bool = False) -> Subscription:
        client = self._loop_client().client
        if isinstance(client, RedisCluster):
            return ClusterSubscription(client, sharded=sharded, connect_timeout=max(self.timeout, 1.0))
        return RedisSubscription(self, sharded=sharded)

    # -- introspection ---------------------------------------------------------------------------------------

    async def ping(self) -> None:
        client = self._loop_client().client
        await self._call(lambda: client.ping())

    def stats(self) -> dict[str, Any]:
        breakers = [self.breaker, *self._node_breakers.values()]
        states = {b.state for b in breakers}
        worst = "open" if "open" in states else "half_open" if "half_open" in states else "closed"
        stats: dict[str, Any] = {
            "store_errors": self.store_errors,
            "store_late_timeouts": self.late_timeouts,
            "store_queue_timeouts": self.queue_timeouts,
            "breaker_rejections": self.breaker_rejections,
            "breaker_state": worst,
            "breaker_opened": sum(b.opened_count for b in breakers),
        }
        if self._node_breakers:
            stats["breakers_open"] = sum(1 for b in breakers if b.state != "closed")
        return stats


class RedisSubscription:
    """A pub/sub connection of the running loop's client (see :class:`cachelayer.Subscription`)."""

    def __init__(self, backend: RedisBackend, *, sharded: bool) -> None:
        self._backend = backend
        self._sharded = sharded
        self._pubsub: PubSub | None = None
        self._cluster = False
        self.alive_at = float("-inf")

    def _connection(self) -> PubSub:
        if self._pubsub is None:
            client = self._backend.client
            self._cluster = isinstance(client, RedisCluster)
            self._pubsub = client.pubsub()
        return self._pubsub

    async def _guarded(self, make: Callable[[], Awaitable[T]], budget: float) -> T:
        try:
            return await within_budget(budget, make)
        except _STORE_ERRORS as exc:
            raise StoreUnavailable(f"pub/sub: {type(exc).__name__}: {exc}") from exc

    async def subscribe(self, *channels: str) -> None:
        pubsub = self._connection()
        method = pubsub.ssubscribe if self._sharded and self._cluster else pubsub.subscribe
        await self._guarded(lambda: method(*channels), self._backend.timeout)

    async def unsubscribe(self, *channels: str) -> None:
        if self._pubsub is None:
            return
        pubsub = self._pubsub
        method = pubsub.sunsubscribe if self._sharded and self._cluster else pubsub.unsubscribe
        await self._guarded(lambda: method(*channels), self._backend.timeout)

    async def next_message(self, timeout: float) -> Message | None:  # noqa: ASYNC109  # the protocol's
        pubsub = self._connection()
        read = (
            pubsub.get_sharded_message  # type: ignore[attr-defined]
            if self._sharded and self._cluster
            else pubsub.get_message
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            message = await self._guarded(lambda: read(timeout=remaining), remaining + self._backend.timeout)
            if message is None:
                continue
            self.alive_at = time.monotonic()
            kind = message["type"]
            if kind in ("message", "smessage", "pmessage"):
                channel = message["channel"]
                return (channel.decode() if isinstance(channel, bytes) else channel), message["data"]
        return None

    async def ping(self) -> None:
        pubsub = self._connection()
        await self._guarded(lambda: pubsub.ping(), self._backend.timeout)

    async def aclose(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), self._backend.timeout)  # type: ignore[no-untyped-call]


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


async def _initialize(client: RedisClient) -> None:
    if isinstance(client, RedisCluster):
        await client.initialize()
    else:
        await client.ping()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class QueueAwarePool(BlockingConnectionPool):
    """A blocking pool that tells the time budget while a call waits for a free connection
    (``_budget.note_waiting_for_connection``): a call cut off then says nothing about Redis.

    redis-py's ``get_connection`` waits until ``can_get_connection()`` is true, then takes a connection with no
    suspension point in between, and only then connects it: so the wait ends before connecting, and a connect
    to a hung Redis counts against it. The hook is a plain call on redis-py's own path (no extra await)."""

    def can_get_connection(self) -> bool:
        free = bool(super().can_get_connection())
        note_waiting_for_connection(not free)
        return free


def _copy_client(client: RedisClient) -> RedisClient:
    """A client with ``client``'s connection settings, for another event loop."""
    if isinstance(client, RedisCluster):
        raise StoreUnavailable(
            "a RedisCluster client serves the event loop it was first used on: give RedisBackend a factory "
            "(RedisBackend(lambda: RedisCluster(...))) or use Cache.from_url to use the cache from several loops"
        )
    pool = client.connection_pool
    options: dict[str, Any] = dict(pool.connection_kwargs)
    if isinstance(pool, BlockingConnectionPool):
        options["timeout"] = pool.timeout
    copy = type(pool)(connection_class=pool.connection_class, max_connections=pool.max_connections, **options)
    return Redis(connection_pool=copy)


_warned: set[int] = set()


def _warn_socket_timeout(client: RedisClient, budget: float) -> None:
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
