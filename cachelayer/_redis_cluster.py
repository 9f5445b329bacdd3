"""Redis Cluster building blocks for the Redis backend: a client that does not storm, key -> node, pub/sub.

Stock ``redis.asyncio.RedisCluster`` (redis-py 8.1) re-runs ``CLUSTER SLOTS`` *and* ``COMMAND`` on the request
path after every connection error or timeout to any node (``_execute_command`` sets ``_initialize``; the next
call awaits ``initialize()``), and parsing ``COMMAND`` blocks the event loop for ~100 ms. Its per-node pools raise
``MaxConnectionsError`` at once when full. Measured in docs/operations.md ("Redis Cluster").

:func:`build_cluster_client` returns a :class:`BoundedRedisCluster`, which

* loads the ``COMMAND`` table once (the first ``initialize``), never again;
* after the first discovery, never makes a request wait for a topology refresh: a refresh runs in a background
  task, at most one at a time, at most every ``min_refresh_interval`` seconds, bounded by ``refresh_timeout``;
* never drops every node's connections because one shard answered CLUSTERDOWN or a pipeline met a dead node
  (stock ``aclose()`` on the request path), and patches MOVED slots one by one (``reinitialize_steps=0``) plus
  one throttled refresh;
* makes callers wait up to ``pool_timeout`` for a free connection of a node instead of failing at once.

It leans on redis-py 8.1 internals (``_initialize``, ``ClusterNode``'s unused ``_lock`` slot, the nodes
manager's event dispatcher, which functions call ``aclose()`` on a failure); ``tests/test_redis_cluster.py``
pins each behaviour against a real cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio import ConnectionPool, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, PipelineStrategy
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.event import AsyncAfterSlotsCacheRefreshEvent, AsyncEventListenerInterface
from redis.exceptions import MaxConnectionsError, RedisClusterException, RedisError
from redis.retry import Retry

from ._backend import Message, StoreUnavailable
from ._budget import note_waiting_for_connection

__all__ = [
    "CLIENT_ERRORS",
    "BoundedRedisCluster",
    "ClusterSubscription",
    "build_cluster_client",
    "cluster_url_to_redis_url",
    "node_name_for_key",
]

log = logging.getLogger("cachelayer")

#: What a redis-py client raises when the store is not usable. ``RedisClusterException`` is not a ``RedisError``:
#: the cluster client raises it when no node answers discovery ("cannot be connected", at start-up with the
#: whole cluster down) and for a slot missing from its map (``SlotNotCoveredError``).
CLIENT_ERRORS: Final = (RedisError, RedisClusterException, OSError)

#: connections per node beyond ``max_connections`` for pub/sub borrowed from node pools (stock ClusterPubSub),
#: so that a subscriber can never make an admitted command hit the node's hard limit
PUBSUB_HEADROOM = 4


def cluster_url_to_redis_url(url: str) -> str:
    """``redis+cluster://h:p`` -> ``redis://h:p`` (``rediss+cluster`` -> ``rediss``), the form redis-py parses."""
    for ours, theirs in (("redis+cluster://", "redis://"), ("rediss+cluster://", "rediss://")):
        if url.startswith(ours):
            return theirs + url[len(ours):]
    return url


class _NodeGate:
    """At most ``limit`` commands of one node in flight; the others wait up to ``timeout`` seconds."""

    __slots__ = ("limit", "semaphore", "timeout")

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self.semaphore = asyncio.Semaphore(limit)

    async def acquire(self, node_name: str) -> None:
        if not self.semaphore.locked():
            await self.semaphore.acquire()  # free: returns without waiting
            return
        note_waiting_for_connection(True)  # a budget that ends meanwhile is not the node's fault
        try:
            async with asyncio.timeout(self.timeout):
                await self.semaphore.acquire()
        except TimeoutError:
            note_waiting_for_connection(False)  # the gate's own limit: an error of its own, held against the node
            raise MaxConnectionsError(f"no free connection to {node_name} within {self.timeout} s") from None
        note_waiting_for_connection(False)


class _GatedClusterNode(ClusterNode):
    """A ClusterNode whose commands wait for a free connection (the gate lives in the unused ``_lock`` slot).

    No slots of its own, so an existing node can be switched to this class in place (``__class__``), which keeps
    its connections; redis-py creates plain ClusterNodes in several places.
    """

    __slots__ = ()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        gate: _NodeGate = self._lock  # type: ignore[attr-defined]
        await gate.acquire(self.name)
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            gate.semaphore.release()

    async def execute_pipeline(self, commands: Any) -> bool:
        gate: _NodeGate = self._lock  # type: ignore[attr-defined]
        await gate.acquire(self.name)
        try:
            return await super().execute_pipeline(commands)
        finally:
            gate.semaphore.release()


class BoundedRedisCluster(RedisCluster):
    """RedisCluster with bounded, background topology refreshes and blocking per-node pools (see module doc)."""

    def __init__(self, *args: Any, pool_timeout: float = 1.0, connection_limit: int | None = None,
                 min_refresh_interval: float = 0.5, refresh_timeout: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool_timeout = pool_timeout
        self.connection_limit = connection_limit or max(1, int(kwargs.get("max_connections", 100)) - PUBSUB_HEADROOM)
        self.min_refresh_interval = min_refresh_interval
        self.refresh_timeout = refresh_timeout
        #: counters, for tests and stats: full discoveries, background refreshes (done / failed), COMMAND loads
        self.discoveries = 0
        self.refreshes = 0
        self.refresh_failures = 0
        self.command_table_loads = 0
        self._topology_known = False
        self._refreshing = False
        self._last_refresh = float("-inf")
        self._refresh_task: asyncio.Task[None] | None = None
        self.nodes_manager._event_dispatcher.register_listeners(
            {AsyncAfterSlotsCacheRefreshEvent: [_TopologyListener(self)]}
        )
        self._adopt_nodes()

    # -- topology
    async def initialize(self, additional_startup_nodes_info: Any = None,
                         last_failed_node_name: str | None = None) -> BoundedRedisCluster:
        if not self._topology_known:
            if self._initialize:
                await super().initialize(additional_startup_nodes_info, last_failed_node_name)
                if not self._topology_known:  # the first of several concurrent callers counts it
                    self.discoveries += 1
                    self.command_table_loads += 1
                    self._last_refresh = time.monotonic()
                    self._topology_known = True
                    self._adopt_nodes()
            return self
        # Topology known: serve requests from it; a refresh happens beside them.
        self._initialize = False
        self.request_refresh(last_failed_node_name)
        return self

    def request_refresh(self, last_failed_node_name: str | None = None) -> None:
        """Schedule one background ``CLUSTER SLOTS`` refresh, unless one is running or ran too recently."""
        if not self._topology_known or self._refreshing:
            return
        if self._refresh_task is not None and not self._refresh_task.done():
            return
        delay = max(0.0, self._last_refresh + self.min_refresh_interval - time.monotonic())
        self._refresh_task = asyncio.get_running_loop().create_task(self._refresh(delay, last_failed_node_name))

    async def _refresh(self, delay: float, last_failed_node_name: str | None) -> None:
        if delay:
            await asyncio.sleep(delay)
        self._refreshing = True
        roles = {name: node.server_type for name, node in self.nodes_manager.nodes_cache.items()}
        try:
            async with asyncio.timeout(self.refresh_timeout):
                await self.nodes_manager.initialize(last_failed_node_name=last_failed_node_name)
            self.refreshes += 1
            self._keep_connections(roles)
        except (*CLIENT_ERRORS, TimeoutError) as exc:
            self.refresh_failures += 1
            log.debug("cachelayer: cluster topology refresh failed: %r", exc)
        finally:
            self._refreshing = False
            self._last_refresh = time.monotonic()
            self._adopt_nodes()

    def _keep_connections(self, roles: dict[str, str | None]) -> None:
        """Undo redis-py's "reconnect every connection of every node" after a refresh, for nodes whose role did not
        change. Its reason (a replica connection's READONLY state) does not apply to a client that reads from
        masters only, and during a failover refreshes come every ``min_refresh_interval``: each would make every
        healthy node's connections reconnect (a handshake of several round trips each) in the middle of requests."""
        for name, node in self.nodes_manager.nodes_cache.items():
            if roles.get(name) is not None and roles[name] == node.server_type:
                for connection in node._connections:
                    connection.reset_should_reconnect()  # type: ignore[no-untyped-call]

    def _adopt_nodes(self) -> None:
        """Give every node a connection gate (nodes appear on discovery, refreshes and MOVED)."""
        managers = (self.nodes_manager.nodes_cache, self.nodes_manager.startup_nodes)
        for nodes in managers:
            for node in nodes.values():
                if type(node) is ClusterNode:
                    node.__class__ = _GatedClusterNode
                    node._lock = _NodeGate(self.connection_limit, self.pool_timeout)  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        # Stock _execute_command calls self.aclose() on CLUSTERDOWN / slot-not-covered, and a pipeline on any
        # connection error of any node (before its retry): that drops the connections of every node (in-flight
        # calls to healthy shards fail) and forces a re-discovery, COMMAND included, on the request path. From
        # there, ask for a background refresh instead; from anyone else, really close.
        if sys._getframe(1).f_code in _REQUEST_PATH_CLOSERS:
            self.request_refresh()
            return
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refresh_task
            self._refresh_task = None
        self._topology_known = False
        await super().aclose()


#: redis-py's request-path code that calls ``RedisCluster.aclose()`` on a node's failure (redis-py 8.1)
_REQUEST_PATH_CLOSERS: Final = frozenset({RedisCluster._execute_command.__code__, PipelineStrategy.execute.__code__})


class _TopologyListener(AsyncEventListenerInterface):
    """After a MOVED patched one slot, refresh the whole map once (in the background) instead of one MOVED per
    slot; a refresh of our own also ends here and must not schedule another."""

    def __init__(self, client: BoundedRedisCluster) -> None:
        self._client = client

    async def listen(self, event: object) -> None:
        client = self._client
        client._adopt_nodes()
        if not client._refreshing:
            client.request_refresh()


def build_cluster_client(url: str, *, max_connections: int, pool_timeout: float,
                         socket_timeout: float | None = None, min_refresh_interval: float = 0.5,
                         refresh_timeout: float = 1.0, **kwargs: Any) -> BoundedRedisCluster:
    """A cluster client with blocking per-node pools (``max_connections`` commands in flight per node; more
    wait up to ``pool_timeout``) and bounded topology refreshes. ``url``: ``redis+cluster://``, ``redis://``
    (``rediss`` forms too). Nothing is connected until ``await client.initialize()`` (do it in ``connect()``).

    ``socket_timeout`` is None on purpose: the caller's budget bounds each call (on Python 3.11 a socket
    timeout can stretch it), whereas redis-py's cluster default is 5 s.
    """
    options: dict[str, Any] = {
        "reinitialize_steps": 0,  # MOVED patches its slot (plus one background refresh), never a full close
        # one retry (a pooled connection may be stale after a node restart); the caller's budget bounds the rest.
        # The cluster client's loop does not sleep between attempts, so the backoff is moot.
        "retry": Retry(NoBackoff(), 1),
        "socket_connect_timeout": kwargs.pop("socket_connect_timeout", 1.0),
    }
    options.update(kwargs)
    return BoundedRedisCluster.from_url(
        cluster_url_to_redis_url(url), max_connections=max_connections + PUBSUB_HEADROOM,
        connection_limit=max_connections, pool_timeout=pool_timeout, socket_timeout=socket_timeout,
        min_refresh_interval=min_refresh_interval, refresh_timeout=refresh_timeout, **options,
    )  # type: ignore[return-value]


def node_name_for_key(client: RedisCluster, key: str | bytes) -> str:
    """``"host:port"`` of the master that owns ``key``'s slot in the client's current map (no I/O; a CRC16 and
    a dict lookup). ``"unknown"`` before discovery or while the slot is uncovered."""
    encoded = key.encode() if isinstance(key, str) else key
    nodes = client.nodes_manager.slots_cache.get(key_slot(encoded))
    return nodes[0].name if nodes else "unknown"


class ClusterSubscription:
    """A :class:`cachelayer._backend.Subscription` on a cluster, with connections of its own (not the pools').

    ``sharded=True``: SSUBSCRIBE each channel on the master owning its slot (one connection per such master).
    ``sharded=False``: classic SUBSCRIBE on one node (PUBLISH reaches every node of a cluster); the node is the
    owner of the first channel's slot. Any connection problem, and a channel dropped by the server because its
    slot moved (Redis 7 sends an unasked ``sunsubscribe``), raise :class:`StoreUnavailable` from
    :meth:`next_message`: close this subscription and open a new one, which follows the current topology.
    """

    def __init__(self, client: RedisCluster, *, sharded: bool, connect_timeout: float = 1.0) -> None:
        self.alive_at = time.monotonic()
        self._client = client
        self._sharded = sharded
        self._connect_timeout = connect_timeout
        self._pubsubs: dict[str, PubSub] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._queue: asyncio.Queue[Message | BaseException] = asyncio.Queue()
        self._channel_node: dict[str, str] = {}
        self._leaving: set[str] = set()
        self._closed = False

    # -- the protocol
    async def subscribe(self, *channels: str) -> None:
        self._check_open()
        try:
            await self._client.initialize()
            for node_name, names in self._by_node(channels).items():
                pubsub = self._pubsub_for(node_name)
                for channel in names:  # SSUBSCRIBE of several channels must be one slot: one by one
                    await (pubsub.ssubscribe(channel) if self._sharded else pubsub.subscribe(channel))
                    self._channel_node[channel] = node_name
                if node_name not in self._readers:
                    self._readers[node_name] = asyncio.get_running_loop().create_task(self._read(node_name, pubsub))
        except CLIENT_ERRORS as exc:
            raise StoreUnavailable(f"cluster subscribe failed: {exc!r}") from exc

    async def unsubscribe(self, *channels: str) -> None:
        self._check_open()
        try:
            for channel in channels:
                node_name = self._channel_node.pop(channel, None)
                if node_name is None:
                    continue
                self._leaving.add(channel)
                pubsub = self._pubsubs[node_name]
                await (pubsub.sunsubscribe(channel) if self._sharded else pubsub.unsubscribe(channel))
        except CLIENT_ERRORS as exc:
            raise StoreUnavailable(f"cluster unsubscribe failed: {exc!r}") from exc

    async def next_message(self, timeout: float) -> Message | None:  # noqa: ASYNC109 - the protocol's signature
        self._check_open()
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)  # unusable from now on: every later call says so too
            raise StoreUnavailable(f"cluster subscription lost: {item!r}") from item
        return item

    async def ping(self) -> None:
        self._check_open()
        try:
            for pubsub in list(self._pubsubs.values()):
                await pubsub.ping()  # the answer arrives through the reader, which moves alive_at
        except CLIENT_ERRORS as exc:
            raise StoreUnavailable(f"cluster subscription ping failed: {exc!r}") from exc

    async def aclose(self) -> None:
        self._closed = True
        readers = list(self._readers.values())
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for pubsub in self._pubsubs.values():
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                await pubsub.connection_pool.aclose()
        self._readers.clear()
        self._pubsubs.clear()

    # -- internals
    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("subscription is closed")

    def _by_node(self, channels: Sequence[str]) -> dict[str, list[str]]:
        if self._sharded:
            grouped: dict[str, list[str]] = {}
            for channel in channels:
                grouped.setdefault(node_name_for_key(self._client, channel), []).append(channel)
            return grouped
        # classic: everything on one connection, the one already open if any
        node_name = next(iter(self._pubsubs), None) or node_name_for_key(self._client, channels[0])
        return {node_name: list(channels)}

    def _pubsub_for(self, node_name: str) -> PubSub:
        pubsub = self._pubsubs.get(node_name)
        if pubsub is not None:
            return pubsub
        node = self._client.get_node(node_name=node_name)
        if node is None:
            raise StoreUnavailable(f"no node {node_name} in the cluster map")
        kwargs = dict(node.connection_kwargs)
        # Our own connection: no socket timeout while waiting for messages, no silent reconnect (which would
        # lose messages unnoticed: the owner must learn of it and resync), a short connect timeout.
        kwargs.update(socket_timeout=None, socket_connect_timeout=self._connect_timeout,
                      retry=Retry(NoBackoff(), 0))
        pool = ConnectionPool(connection_class=node.connection_class, max_connections=1, **kwargs)
        pubsub = PubSub(connection_pool=pool)
        self._pubsubs[node_name] = pubsub
        return pubsub

    async def _read(self, node_name: str, pubsub: PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=30.0)
                if message is None:
                    continue
                self.alive_at = time.monotonic()
                kind = message["type"]
                kind = kind.decode() if isinstance(kind, bytes) else kind
                channel = message["channel"]
                channel = channel.decode() if isinstance(channel, bytes) else channel
                if kind in ("message", "smessage"):
                    self._queue.put_nowait((channel, message["data"]))
                elif kind == "sunsubscribe" and channel not in self._leaving:
                    raise StoreUnavailable(f"{node_name} dropped sharded channel {channel!r} (slot moved)")
                elif kind in ("sunsubscribe", "unsubscribe"):
                    self._leaving.discard(channel)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every reader failure is handed to next_message
            self._queue.put_nowait(exc)
