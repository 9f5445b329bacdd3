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
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisClusterException

from ._backend import StoreUnavailable, Subscription
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
from ._redis_urls import check_redis_url, driver_options

__all__ = ["RedisBackend", "RedisClient"]

log = logging.getLogger("cachelayer")

T = TypeVar("T")

# The fill tickets of a value key are a hash of tokens at key + ":lease" (the same slot as the value): see the Backend
# protocol. Every script touches one slot, so it runs on one shard of a cluster.

# KEYS[1] tickets; ARGV[1] token, ARGV[2] TTL in ms, ARGV[3] "1": exclusive (only when no ticket is held).
_BEGIN_FILL: Final = """
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], '1')
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""
# KEYS[1] tickets; ARGV[1] token, ARGV[2] TTL in ms. A shared hash's expiry only ever lengthens.
_RENEW_FILL: Final = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""
# KEYS[1] value, KEYS[2] tickets; ARGV[1] token, ARGV[2] frame, ARGV[3] TTL in ms. The compare-and-set fill.
_FILL: Final = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
# KEYS[1] value, KEYS[2] tickets. Delete the value and revoke every ticket at once; whether the value existed.
# KEYS[1] tickets; ARGV[1] token.
_END_FILL: Final = """
return redis.call('HDEL', KEYS[1], ARGV[1])
"""
# KEYS[1] value, KEYS[2] tickets; ARGV[1] frame, ARGV[2] TTL in ms. An explicit write revokes every ticket.
_SET: Final = """
redis.call('DEL', KEYS[2])
return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
"""
_DELETE: Final = """
redis.call('DEL', KEYS[2])
return redis.call('DEL', KEYS[1])
"""
# KEYS[1] value, KEYS[2] tickets; ARGV[1] offset, ARGV[2] bytes. SETRANGE keeps the key's TTL; never create a key.
_MARK_STALE: Final = """
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('SETRANGE', KEYS[1], ARGV[1], ARGV[2]) return 1 end
return 0
"""
# KEYS[1] value, KEYS[2] tickets, KEYS[3..] tag keys; ARGV[1] token, ARGV[2] frame, ARGV[3] TTL in ms, ARGV[4..] the
# stamps the load began under. The compare-and-set fill of a tagged value (standalone Redis: any keys in one script).
_FILL_STAMPED: Final = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
for i = 3, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[i + 1] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
# KEYS[1] tag key; ARGV[1] a new stamp, ARGV[2] TTL in ms. The stamp, made where none is; its life only lengthens.
_TAG_STAMP: Final = """
local stamp = redis.call('GET', KEYS[1])
if not stamp or string.len(stamp) ~= 16 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return stamp
"""
# KEYS[1] tag key; ARGV[1] a new stamp, ARGV[2] "1": mark stale (keep the first half). Never creates the key.
_INVALIDATE_TAG: Final = """
local stamp = redis.call('GET', KEYS[1])
if not stamp then return 0 end
if ARGV[2] == '1' and string.len(stamp) == 16 then stamp = string.sub(stamp, 1, 8) .. string.sub(ARGV[1], 9, 16)
else stamp = ARGV[1] end
redis.call('SET', KEYS[1], stamp, 'KEEPTTL')
return 1
"""
# Errors of a store call that mean "the store is not usable now" (CLIENT_ERRORS, plus our budget's TimeoutError).
# RuntimeError: redis-py raises it for a connection of a closed loop or an unset pub/sub connection; never a
# caller's problem.
_STORE_ERRORS: Final = (*CLIENT_ERRORS, TimeoutError, RuntimeError)
# How a cluster master's target (its breaker) is named: this, then the node's "host:port".
_NODE_TARGET: Final = "Redis Cluster node "
# The longest one cluster node may take to take a subscription (connect, SUBSCRIBE, confirmation) before the next
# node is tried; the backend's budget when that is longer.
_SUBSCRIBE_ATTEMPT: Final = 0.5


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

    __slots__ = (
        "begin", "bounded", "client", "cluster", "discovery", "end", "fill", "fill_stamped", "loop", "map_seen",
        "renew", "set", "stamp",
    )

    def __init__(self, client: RedisClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        # Known once: an isinstance() against redis-py's client classes costs ~0.5 us a call on the hot path.
        self.cluster: RedisCluster | None = client if isinstance(client, RedisCluster) else None
        self.bounded: BoundedRedisCluster | None = client if isinstance(client, BoundedRedisCluster) else None
        self.loop = loop
        self.begin = _script(client, _BEGIN_FILL)
        self.renew = _script(client, _RENEW_FILL)
        self.end = _script(client, _END_FILL)
        self.fill = _script(client, _FILL)
        self.set = _script(client, _SET)
        self.fill_stamped = _script(client, _FILL_STAMPED)
        self.stamp = _script(client, _TAG_STAMP)
        self.discovery: asyncio.Task[None] | None = None  # a cluster's first topology discovery, shared
        self.map_seen = -1  # the cluster map's change count when the breakers were last matched to it


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
            on_target_failure=self._topology_suspect,
        )
        self._store = store
        self._labelled = False
        self._owns_client = owns_client
        self._current: _LoopClient | None = None
        self._clients: list[_LoopClient] = []  # of every loop still open, for aclose
        self._closed = False
        # cluster node -> when one of this backend's subscriptions last failed on it (tried last next time)
        self._subscription_trouble: dict[str, float] = {}

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
                **driver_options(url),
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
    def cluster_from_url(
        cls,
        url: str,
        *,
        options: StoreOptions | None = None,
        address_remap: Callable[[tuple[str, int]], tuple[str, int]] | None = None,
        **overrides: Any,
    ) -> RedisBackend:
        """A backend over a Redis Cluster found from the node in ``url`` (``redis+cluster://host:port``, or
        ``redis://``): per node at most ``max_connections`` commands in flight, more wait up to ``pool_timeout``;
        topology refreshes bounded and off the request path. Call :meth:`connect` at start-up to learn the
        topology (else the first call does, bounded by ``connect_timeout``).

        ``address_remap``: ``(host, port) -> (host, port)``, applied to every node address the cluster announces
        (in its slot map and in MOVED redirections) before the client connects to it: nodes behind NAT or a port
        forward, or a proxy in front of one node (``benchmarks/cluster.py`` slows one master that way)."""
        settings = dataclasses.replace(options or StoreOptions(), **overrides)
        store = check_redis_url(url, cluster=True)
        remap: dict[str, Any] = {} if address_remap is None else {"address_remap": address_remap}

        def make() -> RedisClient:
            return build_cluster_client(
                url,
                max_connections=settings.max_connections,
                pool_timeout=settings.pool_timeout,
                socket_timeout=settings.socket_timeout,
                **remap,
                **driver_options(url),
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
        return self._node_target(node_name_for_key(cluster, key))

    async def _call(
        self, operation: str, make: Callable[[], Awaitable[T]], budget: float | None = None, key: str | None = None
    ) -> T:
        current = self._current
        if current is not None and current.bounded is not None and not current.bounded.topology_known:
            await self._discover(current)
        return await self.guard.call(self._target_for(key), operation, make, budget)

    async def _per_node(
        self, operation: str, keys: Sequence[str], part: Callable[[list[str]], Awaitable[list[Any]]]
    ) -> tuple[list[Any], list[StoreUnavailable], int]:
        """On a cluster: ``keys`` grouped by the master that owns each one's slot in the current map, each group's
        ``part`` run within its own budget and held against its own master's breaker, all groups at once. Returns
        the results in the order of ``keys`` (None where a group failed), the failures and the number of groups.
        One master dead, frozen or slow costs its own keys, never the other masters' nor their breakers; a
        half-open breaker's probe is a call to its own master only. (``part`` runs a cluster pipeline, so a key
        whose slot moved meanwhile still follows redis-py's MOVED/ASK redirection.)"""
        current = self._loop_client()
        cluster = current.cluster
        assert cluster is not None
        if current.bounded is not None and not current.bounded.topology_known:
            await self._discover(current)
        self._target_for(None)  # names the store in the guard's log lines
        groups: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(node_name_for_key(cluster, key), []).append(index)

        async def run(node: str, indices: list[int]) -> list[Any]:
            group = [keys[i] for i in indices]
            return await self.guard.call(self._node_target(node), operation, lambda: part(group))

        outcomes = await asyncio.gather(
            *(run(node, indices) for node, indices in groups.items()), return_exceptions=True
        )
        results: list[Any] = [None] * len(keys)
        failures: list[StoreUnavailable] = []
        for indices, outcome in zip(groups.values(), outcomes, strict=True):
            if isinstance(outcome, StoreUnavailable):
                failures.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                for index, result in zip(indices, outcome, strict=True):
                    results[index] = result
        return results, failures, len(groups)

    async def _on_every_node(
        self, operation: str, keys: Sequence[str], part: Callable[[list[str]], Awaitable[list[Any]]]
    ) -> list[Any]:
        """:meth:`_per_node` for a write or an invalidation: every master's part lands where it can, then a failure
        of any part raises (naming each failed master; the cache retries the whole call, which repeats harmlessly
        on the keys that landed)."""
        results, failures, _ = await self._per_node(operation, keys, part)
        if failures:
            raise _combined(failures)
        return results

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

    def _topology_suspect(self, target: Target) -> None:
        """A call failed or a breaker refused one: on a cluster, the map may be out of date (a replica promoted,
        slots moved) and nothing else would refresh it: a timeout by our budget (a frozen node) or a refused
        call never reaches redis-py's own "refresh on connection error". The client throttles the requests
        (one refresh at a time, at most every ``min_refresh_interval``), so asking on every failure is cheap;
        without it, a failed-over shard's keys would fail open until some call happened to get a
        connection error. A master's failure also has the client watch that master's replicas for a promotion
        (``BoundedRedisCluster.suspect``): the map follows within ``failover_poll_interval`` of Redis's
        failover rather than at the next throttled refresh."""
        current = self._current
        if current is None or current.bounded is None:
            return
        if target.label.startswith(_NODE_TARGET):
            current.bounded.suspect(target.label[len(_NODE_TARGET):])
        else:
            current.bounded.request_refresh()

    # -- values ----------------------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        client = self._loop_client().client
        value: Any = await self._call("GET", lambda: client.get(key), key=key)
        return value  # type: ignore[no-any-return]  # built with decode_responses=False

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        current = self._loop_client()
        client = current.client
        if not keys:
            return []
        if current.cluster is None:  # one command: a tagged hit reads its value and its stamps with it
            found: list[Any] = await self._call("MGET", lambda: client.mget(keys), key=keys[0] if keys else None)
            return found  # built with decode_responses=False: bytes

        async def part(group: list[str]) -> list[Any]:
            if len(group) == 1:  # a tagged hit: the value on one master, a stamp on another
                return [await client.get(group[0])]
            async with client.pipeline(transaction=False) as pipe:
                for key in group:
                    pipe.get(key)
                return list(await pipe.execute())

        # A master that fails costs only its own keys (misses); all of them failing is an outage of the call.
        found, failures, groups = await self._per_node("GET (many)", keys, part)
        if len(failures) == groups:
            raise _combined(failures)
        return found

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        script = self._loop_client().set
        await self._call("SET", lambda: script(keys=[key, _tickets(key)], args=[value, ttl_ms]), key=key)

    async def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        current = self._loop_client()
        client = current.client
        if not items:
            return
        written = {key: (value, ttl_ms) for key, value, ttl_ms in items}

        async def part(group: Sequence[str]) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for key in group:
                    value, ttl_ms = written[key]
                    pipe.eval(_SET, 2, key, _tickets(key), value, ttl_ms)
                return list(await pipe.execute())

        if current.cluster is not None:
            await self._on_every_node("SET (many)", list(written), part)
        else:
            await self._call("SET (many)", lambda: part(list(written)))

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        current = self._loop_client()
        client = current.client

        async def part(group: Sequence[str]) -> list[Any]:
            # One script per key (keys of different slots cannot share one): each deletes its value and revokes its
            # tickets at once.
            async with client.pipeline(transaction=False) as pipe:
                for key in group:
                    pipe.eval(_DELETE, 2, key, _tickets(key))
                return list(await pipe.execute())

        if current.cluster is not None and len(keys) > 1:
            return sum(int(deleted) for deleted in await self._on_every_node("DEL", keys, part))
        return sum(int(deleted) for deleted in await self._call("DEL", lambda: part(keys), key=keys[0]))

    async def mark_stale(self, keys: Sequence[str], offset: int, field: bytes) -> int:
        if not keys:
            return 0
        current = self._loop_client()
        client = current.client

        async def part(group: Sequence[str]) -> list[Any]:
            # One EVAL per key in one pipeline (keys of different slots cannot share a script). The script is a
            # few bytes: EVAL, not EVALSHA, spares a NOSCRIPT round trip.
            async with client.pipeline(transaction=False) as pipe:
                for key in group:
                    pipe.eval(_MARK_STALE, 2, key, _tickets(key), offset, field)
                return list(await pipe.execute())

        if current.cluster is not None and len(keys) > 1:
            return sum(int(marked) for marked in await self._on_every_node("mark stale", keys, part))
        return sum(int(marked) for marked in await self._call("mark stale", lambda: part(keys), key=keys[0]))

    async def clear(self, prefix: str) -> int:
        client = self._loop_client().client
        pattern = glob_escape(prefix) + "*"

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

    # -- fills ---------------------------------------------------------------------------------------------

    async def begin_fill(self, key: str, token: str, ttl_ms: int, *, exclusive: bool = True) -> bool:
        script = self._loop_client().begin
        args: list[bytes | str | int] = [token, ttl_ms, "1" if exclusive else "0"]
        return bool(await self._call("fill begin", lambda: script(keys=[_tickets(key)], args=args), key=key))

    async def renew_fill(self, key: str, token: str, ttl_ms: int) -> bool:
        script = self._loop_client().renew
        return bool(await self._call(
            "fill renew", lambda: script(keys=[_tickets(key)], args=[token, ttl_ms]), key=key
        ))

    async def end_fill(self, key: str, token: str) -> None:
        script = self._loop_client().end
        await self._call("fill end", lambda: script(keys=[_tickets(key)], args=[token]), key=key)

    async def fill(
        self,
        key: str,
        token: str,
        value: bytes,
        ttl_ms: int,
        tag_keys: Sequence[str] = (),
        stamps: Sequence[bytes] = (),
    ) -> bool:
        current = self._loop_client()
        client = current.client
        keys = [key, _tickets(key)]
        args: list[bytes | str | int] = [token, value, ttl_ms]
        if not tag_keys:
            script = current.fill
            return bool(await self._call("fill", lambda: script(keys=keys, args=args), key=key))
        if current.cluster is None:
            stamped = current.fill_stamped
            return bool(await self._call(
                "fill", lambda: stamped(keys=[*keys, *tag_keys], args=[*args, *stamps]), key=key
            ))

        async def read_stamps(group: Sequence[str]) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for tag_key in group:
                    pipe.get(tag_key)
                return list(await pipe.execute())

        # The stamps live on other shards: read beside the write, each master's part against its own breaker. A
        # stamp that changed means an invalidation came after the load began; what was written carries the old
        # stamp, which every reader refuses.
        fill = current.fill
        filled, now = await asyncio.gather(
            self._call("fill", lambda: fill(keys=keys, args=args), key=key),
            self._on_every_node("tag stamps (read)", tag_keys, read_stamps),
        )
        return bool(filled) and list(now) == list(stamps)

    async def poll(self, key: str) -> tuple[bytes | None, bool]:
        client = self._loop_client().client

        async def run() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.exists(_tickets(key))
                return await pipe.execute()

        value, held = await self._call("fill poll", run, key=key)
        return value, bool(held)

    # -- tags ------------------------------------------------------------------------------------------------

    async def tag_stamps(self, tag_keys: Sequence[str], ttl_ms: int) -> list[bytes]:
        current = self._loop_client()
        client, script = current.client, current.stamp
        if len(tag_keys) == 1:
            tag_key = tag_keys[0]
            stamp = await self._call(
                "tag stamp", lambda: script(keys=[tag_key], args=[os.urandom(16), ttl_ms]), key=tag_key
            )
            return [stamp]

        async def part(group: Sequence[str]) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for tag_key in group:
                    pipe.eval(_TAG_STAMP, 1, tag_key, os.urandom(16), ttl_ms)
                return list(await pipe.execute())

        if current.cluster is not None:
            return await self._on_every_node("tag stamps", tag_keys, part)
        return await self._call("tag stamps", lambda: part(list(tag_keys)))

    async def invalidate_tags(self, tag_keys: Sequence[str], *, mark_stale: bool = False) -> int:
        if not tag_keys:
            return 0
        current = self._loop_client()
        client = current.client
        stale = "1" if mark_stale else "0"

        async def part(group: Sequence[str]) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for tag_key in group:
                    pipe.eval(_INVALIDATE_TAG, 1, tag_key, os.urandom(16), stale)
                return list(await pipe.execute())

        if current.cluster is not None and len(tag_keys) > 1:
            existed = await self._on_every_node("invalidate tags", tag_keys, part)
        else:
            existed = await self._call("invalidate tags", lambda: part(list(tag_keys)), key=tag_keys[0])
        return sum(int(flag) for flag in existed)

    # -- publish / subscribe ---------------------------------------------------------------------------------

    async def publish(self, channel: str, data: bytes, *, sharded: bool = False) -> None:
        client = self._loop_client().client
        if isinstance(client, RedisCluster):
            if sharded:
                await self._call(
                    "publish (SPUBLISH)", lambda: client.execute_command("SPUBLISH", channel, data), key=channel
                )
            else:
                await self._publish_on_a_live_master(client, channel, data)
        else:
            await self._call("publish", lambda: client.publish(channel, data))

    async def _publish_on_a_live_master(self, client: RedisCluster, channel: str, data: bytes) -> None:
        """A classic PUBLISH on a cluster: any master forwards it to every node, so one live master is enough.

        The masters are tried one after the other, each attempt within its own budget and held against that
        master's breaker: those whose breaker is closed first, the channel's own slot owner first among them. A
        frozen, dead or slow master costs one budget (then, once its breaker opened, nothing), never the message:
        with one faulty master a broadcast lands within two budgets. A PUBLISH that timed out may still be
        delivered later (a frozen node runs it when it thaws): a second copy of an invalidation only drops entries
        again. Measured in benchmarks/results/l1_channel_faults.md."""
        current = self._loop_client()
        if current.bounded is not None and not current.bounded.topology_known:
            await self._discover(current)
        self._target_for(None)  # names the store in the guard's log lines
        owner = node_name_for_key(client, channel)

        def rank(node: Any) -> tuple[bool, bool]:
            return self._node_target(node.name).breaker.state != "closed", node.name != owner

        def publish_on(node: Any) -> Callable[[], Awaitable[Any]]:
            return lambda: client.execute_command("PUBLISH", channel, data, target_nodes=node)

        failures: list[StoreUnavailable] = []
        for node in sorted(client.get_primaries(), key=rank):
            try:
                await self.guard.call(self._node_target(node.name), "publish", publish_on(node))
                return
            except StoreUnavailable as exc:
                failures.append(exc)
        raise StoreUnavailable(
            "publish failed on every master: " + ("; ".join(map(str, failures)) or "no master in the cluster map")
        )

    def _node_target(self, node_name: str) -> Target:
        current = self._current
        if current is not None and current.bounded is not None and current.bounded.map_changes != current.map_seen:
            # The map changed (a promotion, a refresh): the breakers of nodes that serve no slot any more go now,
            # not at the next stats(). A node that failed once and is promoted later (its old master failing in
            # turn) must not meet its old breaker, still open for a cool-down or waiting for a probe.
            current.map_seen = current.bounded.map_changes
            self._retire_nodes_without_slots()
        return self.guard.target(_NODE_TARGET + node_name)

    def subscription(self, *, sharded: bool = False) -> Subscription:
        client = self._loop_client().client
        if isinstance(client, RedisCluster):
            return ClusterSubscription(
                client,
                sharded=sharded,
                connect_timeout=max(self.timeout, 1.0),
                # one node's attempt: a frozen one costs this much before the next is tried
                attempt_timeout=max(self.timeout, _SUBSCRIBE_ATTEMPT),
                closed=lambda: self._closed,
                trouble=self._subscription_trouble,
            )
        return RedisSubscription(
            lambda: self.client, store=self.store, timeout=self.timeout, closed=lambda: self._closed
        )

    # -- introspection ---------------------------------------------------------------------------------------

    async def ping(self) -> None:
        """One round trip. On a cluster, every master at once, each against its own breaker: the cluster answers
        when any master does (one frozen master neither fails the health check nor opens a shared breaker)."""
        current = self._loop_client()
        client = current.client
        if current.cluster is None:
            await self._call("PING", lambda: client.ping())
            return
        if current.bounded is not None and not current.bounded.topology_known:
            await self._discover(current)
        self._target_for(None)  # names the store in the guard's log lines
        cluster = current.cluster

        def ping_on(node: Any) -> Callable[[], Awaitable[Any]]:
            return lambda: cluster.execute_command("PING", target_nodes=node)

        primaries = cluster.get_primaries()
        outcomes = await asyncio.gather(
            *(self.guard.call(self._node_target(node.name), "PING", ping_on(node)) for node in primaries),
            return_exceptions=True,
        )
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        for failure in failures:
            if not isinstance(failure, StoreUnavailable):
                raise failure
        if len(failures) == len(outcomes):
            raise _combined(failures)

    def stats(self) -> dict[str, Any]:
        self._retire_nodes_without_slots()
        stats = self.guard.stats()
        current = self._current
        if current is not None and current.cluster is None:
            pool = getattr(current.client, "connection_pool", None)
            if isinstance(pool, QueueAwarePool):  # the pool Cache.from_url builds (a client handed in: its own)
                stats.update(pool.usage())
        return stats

    def _retire_nodes_without_slots(self) -> None:
        """On a cluster: the breakers of nodes absent from the current map (a master that failed over, a node a
        reshard emptied) are retired (``Guard.retire``), so that the breakers reported are those of the masters
        serving slots now."""
        current = self._current
        if current is None or current.cluster is None or not self.guard.has_node_targets:
            return
        bounded = current.bounded
        if bounded is not None and not bounded.topology_known:
            return
        serving = {_NODE_TARGET + node.name for node in current.cluster.get_primaries()}
        if serving:
            self.guard.retire(serving, "the node serves no slot in the current cluster map")


Script = Callable[..., Awaitable[Any]]


def _script(client: RedisClient, text: str) -> Script:
    """A script, called as ``script(keys=[...], args=[...])``. On a standalone Redis an EVALSHA (redis-py loads it
    again after a restart). On a cluster an EVAL: redis-py would load a missing script on every master at once,
    which fails while one of them is down, so a healthy shard could not run it."""
    if isinstance(client, RedisCluster):
        cluster = client

        async def run(keys: Sequence[str] = (), args: Sequence[Any] = ()) -> Any:
            return await cluster.eval(text, len(keys), *keys, *args)

        return run
    return client.register_script(text)


def _tickets(key: str) -> str:
    """Where ``key``'s fill tickets live: in its Redis Cluster slot. The cache's keys carry a hash tag
    (``ns:{name}``), so ``key + ":lease"`` shares it; a key without one (a backend used directly) is made the tag."""
    start = key.find("{")
    if start != -1 and key.find("}", start + 2) != -1:
        return key + ":lease"
    return "{" + key + "}:lease"


async def _delete_now(client: RedisClient, keys: list[str]) -> int:
    # One DEL per key: on a cluster, keys of different slots cannot share a command.
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.delete(key)
        return sum(await pipe.execute())


def _combined(failures: Sequence[BaseException]) -> StoreUnavailable:
    """One StoreUnavailable for the parts of a call that failed on their masters (each names its master)."""
    if len(failures) == 1 and isinstance(failures[0], StoreUnavailable):
        return failures[0]
    return StoreUnavailable("; ".join(map(str, failures)) or "no master in the cluster map")


def glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
