"""Redis Cluster building blocks for the Redis backend: a client that does not storm, key -> node, pub/sub.

Stock ``redis.asyncio.RedisCluster`` (redis-py 8.1) re-runs ``CLUSTER SLOTS`` *and* ``COMMAND`` on the request
path after every connection error or timeout to any node (``_execute_command`` sets ``_initialize``; the next
call awaits ``initialize()``), and parsing ``COMMAND`` blocks the event loop for ~100 ms. Its per-node pools raise
``MaxConnectionsError`` at once when full. Measured in docs/operations.md ("Redis Cluster").

:func:`build_cluster_client` returns a :class:`BoundedRedisCluster`, which

* loads the ``COMMAND`` table once (the first ``initialize``), never again;
* after the first discovery, never makes a request wait for a topology refresh: a refresh runs in a background
  task, at most one at a time, at most every ``min_refresh_interval`` seconds, bounded by ``refresh_timeout``, each
  node it asks by ``refresh_attempt_timeout`` (a frozen node costs that much, then the next node is asked), the
  node that failed last asked last;
* follows a failover within ``failover_poll_interval`` of Redis's promotion: while a master fails calls
  (:meth:`BoundedRedisCluster.suspect`, which the backend calls on every failure of a master), its replicas are asked
  ``ROLE`` at that interval, and the one that says it is a master is put in its master's place in the map at once
  (as a failover's MOVED would), a throttled refresh confirming the whole map later;
* applies ``address_remap`` to MOVED redirections too (stock: to the slot map only);
* never drops every node's connections because one shard answered CLUSTERDOWN or a pipeline met a dead node
  (stock ``aclose()`` on the request path), and patches MOVED slots one by one (``reinitialize_steps=0``) plus
  one throttled refresh;
* keeps, across a refresh, the connections of every node whose role did not change (stock reconnects them all);
* makes callers wait up to ``pool_timeout`` for a free connection of a node instead of failing at once;
* closes every node's connections on ``aclose()``, even after a failure left the client "to be initialized"
  (stock ``aclose()`` then closes nothing).

How, through redis-py's own seams: its nodes are :class:`GatedClusterNode` from the start (the client replaces its
stock ``NodesManager``, before anything connects, by a subclass that builds every node entering its maps in
``set_nodes``, and puts that node in the slot after a MOVED); ``aclose()`` tells a close on the request path
(stock ``_execute_command`` and ``PipelineStrategy.execute`` call it on a node's failure) by a context variable
that ``execute_command`` and the pipeline's ``execute`` set. The redis-py methods overridden are listed in
:data:`OVERRIDDEN`; the private names still touched (the client's ``_initialize`` flag; connection and transport
internals for :func:`abandon_connection`) in :data:`PRIVATES`. ``tests/test_redis_privates.py`` pins both against
the installed redis-py and Python; ``tests/test_redis_cluster.py`` pins each behaviour against a real cluster.

:func:`abandon_connection` closes a connection whose event loop is gone (it cannot be awaited any more).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any, Final

from redis.asyncio import ConnectionPool, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, NodesManager
from redis.backoff import NoBackoff
from redis.cluster import PRIMARY, REPLICA
from redis.crc import key_slot
from redis.event import AsyncAfterSlotsCacheRefreshEvent, AsyncEventListenerInterface, EventDispatcher
from redis.exceptions import AskError, MaxConnectionsError, MovedError, RedisClusterException, RedisError
from redis.retry import Retry

from ._backend import Message, StoreUnavailable
from ._budget import note_waiting_for_connection
from ._errors import CacheClosedError
from ._internals import Internal

__all__ = [
    "CLIENT_ERRORS",
    "OVERRIDDEN",
    "PRIVATES",
    "BoundedRedisCluster",
    "ClusterSubscription",
    "GatedClusterNode",
    "Internal",
    "abandon_connection",
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

#: how long after a node failed a subscription the subscriptions keep asking for a fresh map while it is a master
_FOLLOW_FAILOVER_FOR: Final = 30.0

#: how long after a promotion a refresh that does not show it is taken for one from a node that has not heard of
#: it yet (on loopback every node had after 5-50 ms; a partitioned node can take the node timeout)
_PROMOTION_NEWS: Final = 2.0


#: Every private name this module reads or writes, and why (pinned by tests/test_redis_privates.py).
PRIVATES: Final = (
    Internal("redis.asyncio.cluster:RedisCluster", "_initialize",
             "BoundedRedisCluster.initialize/aclose/forget_topology: the flag on which stock execute_command and "
             "pipelines call initialize(); cleared once a refresh is handed to the background, read by aclose()"),
    Internal("redis.asyncio.connection:AbstractConnection", "_writer",
             "abandon_connection: the StreamWriter whose transport holds the socket; then set to None"),
    Internal("redis.asyncio.connection:AbstractConnection", "_reader",
             "abandon_connection: set to None (the connection's __del__ warns of an open one otherwise)"),
    Internal("asyncio.selector_events:_SelectorTransport", "_loop",
             "abandon_connection: is the transport's loop closed (then connection_lost never runs)"),
    Internal("asyncio.selector_events:_SelectorTransport", "_closing",
             "abandon_connection: set (StreamWriter.__del__ warns of a transport that is not closing otherwise)"),
    Internal("asyncio.selector_events:_SelectorTransport", "_sock",
             "abandon_connection: the socket, closed directly; cleared when the loop is closed"),
    Internal("asyncio.sslproto:_SSLProtocolTransport", "_ssl_protocol",
             "abandon_connection (TLS): the protocol that holds the inner, socket transport"),
    Internal("asyncio.sslproto:_SSLProtocolTransport", "_closed",
             "abandon_connection (TLS): set (its __del__ warns of an unclosed transport otherwise)"),
    Internal("asyncio.sslproto:SSLProtocol", "_transport",
             "abandon_connection (TLS): the inner transport, which owns the socket"),
)

#: redis-py's public methods this module overrides, and what it relies on them to do in redis-py 8.1.
OVERRIDDEN: Final = (
    Internal("redis.asyncio.cluster:RedisCluster", "execute_command",
             "every command of the client runs in it, including the stock request-path aclose() calls"),
    Internal("redis.asyncio.cluster:RedisCluster", "pipeline", "builds the client's pipelines"),
    Internal("redis.asyncio.cluster:RedisCluster", "initialize", "called by stock code whenever _initialize is set"),
    Internal("redis.asyncio.cluster:RedisCluster", "aclose", "called by stock request-path code on a node's failure"),
    Internal("redis.asyncio.cluster:ClusterPipeline", "execute", "runs a pipeline, including its aclose() calls"),
    Internal("redis.asyncio.cluster:NodesManager", "set_nodes",
             "every node that enters nodes_cache or startup_nodes passes through it"),
    Internal("redis.asyncio.cluster:NodesManager", "move_slot",
             "after a MOVED, puts the node it built itself (not the one in nodes_cache) in the slot's list; "
             "takes the redirection's address as announced (we remap it first)"),
    Internal("redis.asyncio.cluster:ClusterNode", "execute_command", "one command on one of the node's connections"),
    Internal("redis.asyncio.cluster:ClusterNode", "execute_pipeline", "a pipeline on one of the node's connections"),
)

#: the client whose command or pipeline is running in this context: redis-py's own aclose() calls from there are
#: the request path's, not its owner's
_REQUEST_OF: ContextVar[RedisCluster | None] = ContextVar("cachelayer_cluster_request_of", default=None)
#: set in a background refresh's own task: how long one node may take to answer (stock discovery waits for each
#: node in turn, without a bound: one frozen node would hold the whole refresh until ``refresh_timeout``)
_ATTEMPT_LIMIT: ContextVar[float | None] = ContextVar("cachelayer_cluster_attempt_limit", default=None)


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


class GatedClusterNode(ClusterNode):
    """A ClusterNode whose commands and pipelines wait at its :class:`_NodeGate` for a free connection."""

    __slots__ = ("gate",)

    def __init__(self, host: str, port: str | int, server_type: str | None = None, *, gate: _NodeGate,
                 **kwargs: Any) -> None:
        super().__init__(host, port, server_type, **kwargs)
        self.gate = gate

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        limit = _ATTEMPT_LIMIT.get()
        if limit is None:
            return await self._gated_command(args, kwargs)
        async with asyncio.timeout(limit):  # a background refresh's attempt: the next node is asked after it
            return await self._gated_command(args, kwargs)

    async def _gated_command(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        await self.gate.acquire(self.name)
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self.gate.semaphore.release()

    async def execute_pipeline(self, commands: Any) -> bool:
        await self.gate.acquire(self.name)
        try:
            return await super().execute_pipeline(commands)
        finally:
            self.gate.semaphore.release()


class _GatedNodesManager(NodesManager):
    """The nodes manager of :class:`BoundedRedisCluster`: every node in its maps is a :class:`GatedClusterNode`
    (stock code builds plain ``ClusterNode``\\ s, in several places, and hands each new one to ``set_nodes``), and a
    refresh keeps the connections of the nodes whose role did not change."""

    __slots__ = ("_closing", "_new_gate")

    def __init__(self, startup_nodes: Sequence[tuple[str, str | int]], new_gate: Callable[[], _NodeGate],
                 require_full_coverage: bool, connection_kwargs: dict[str, Any], **options: Any) -> None:
        self._new_gate = new_gate
        self._closing: set[asyncio.Task[None]] = set()
        nodes: list[ClusterNode] = [self._gated(host, port, None, connection_kwargs) for host, port in startup_nodes]
        super().__init__(nodes, require_full_coverage, connection_kwargs, **options)

    def _gated(self, host: str, port: str | int, server_type: str | None,
               connection_kwargs: dict[str, Any] | None = None) -> GatedClusterNode:
        kwargs = self.connection_kwargs if connection_kwargs is None else connection_kwargs
        return GatedClusterNode(host, port, server_type, gate=self._new_gate(), **kwargs)

    def set_nodes(self, old: dict[str, ClusterNode], new: dict[str, ClusterNode], remove_old: bool = False) -> None:
        if remove_old:
            for name in [name for name in old if name not in new]:
                gone = old.pop(name)
                gone.update_active_connections_for_reconnect()  # in-flight calls finish, then it disconnects
                task = asyncio.get_running_loop().create_task(gone.disconnect_free_connections())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        # Stock set_nodes makes every connection of every node it keeps reconnect, to drop a replica connection's
        # READONLY state: only a changed role needs it (this client reads from masters). During a failover a
        # refresh comes every min_refresh_interval; each would make every healthy node reconnect (a handshake of
        # several round trips per connection) in the middle of requests.
        changed: dict[str, ClusterNode] = {}
        for name, node in new.items():
            kept = old.get(name)
            if kept is None:
                changed[name] = node if isinstance(node, GatedClusterNode) else self._gated(
                    node.host, node.port, node.server_type)
            elif kept.server_type != node.server_type:
                changed[name] = node  # stock: the kept node takes the new role and reconnects
        super().set_nodes(old, changed)

    async def move_slot(self, e: AskError | MovedError) -> None:
        # A MOVED names the node as the cluster announces it: stock applies ``address_remap`` to the slot map only,
        # so a redirection would reach a remapped node (behind NAT, a port forward, a proxy) at the wrong address.
        if self.address_remap is not None:
            e.host, e.port = self.remap_host_port(e.host, e.port)
        await super().move_slot(e)
        # A node new to the map: stock puts the node it built in the slot, while set_nodes kept our gated one.
        nodes = self.slots_cache.get(e.slot_id, [])
        kept = [self.nodes_cache.get(node.name, node) for node in nodes]
        if any(ours is not theirs for ours, theirs in zip(kept, nodes, strict=True)):
            self.slots_cache[e.slot_id] = kept

    def promote(self, master_name: str, replica: ClusterNode) -> bool:
        """``replica`` says it is a master: it took over every slot of ``master_name``, its master in this map (a
        replica is promoted only in its master's place). Patch the map as stock ``move_slot`` does for the MOVED
        of a failover, for all those slots at once: ``replica`` first, the old master last, as a replica.
        Whether anything changed. (Were the map wrong, the node would answer MOVED, which stock code follows.)"""
        patched: set[int] = set()
        for nodes in self.slots_cache.values():
            if id(nodes) in patched or not nodes or nodes[0].name != master_name or replica not in nodes:
                continue
            old = nodes[0]  # the lists are shared by the slots of one range: each is patched once
            nodes.remove(replica)
            nodes[0] = replica
            nodes.append(old)
            patched.add(id(nodes))
            old.server_type, replica.server_type = REPLICA, PRIMARY
            if self.default_node is old:
                self.default_node = replica
        return bool(patched)


class BoundedRedisCluster(RedisCluster):
    """RedisCluster with bounded, background topology refreshes and blocking per-node pools (see module doc)."""

    def __init__(self, host: str | None = None, port: str | int = 6379, *, pool_timeout: float = 1.0,
                 connection_limit: int | None = None, min_refresh_interval: float = 0.5,
                 refresh_timeout: float = 1.0, refresh_attempt_timeout: float = 0.25,
                 failover_poll_interval: float = 0.1, failover_watch_for: float = 10.0,
                 require_full_coverage: bool = True, dynamic_startup_nodes: bool = True,
                 address_remap: Callable[[tuple[str, int]], tuple[str, int]] | None = None,
                 event_dispatcher: EventDispatcher | None = None, **kwargs: Any) -> None:
        dispatcher = event_dispatcher if event_dispatcher is not None else EventDispatcher()
        super().__init__(host, port, require_full_coverage=require_full_coverage,
                         dynamic_startup_nodes=dynamic_startup_nodes, address_remap=address_remap,
                         event_dispatcher=dispatcher, **kwargs)
        self.pool_timeout = pool_timeout
        self.connection_limit = connection_limit or max(1, int(kwargs.get("max_connections", 100)) - PUBSUB_HEADROOM)
        self.min_refresh_interval = min_refresh_interval
        self.refresh_timeout = refresh_timeout
        self.refresh_attempt_timeout = refresh_attempt_timeout
        self.failover_poll_interval = failover_poll_interval
        self.failover_watch_for = failover_watch_for
        #: counters, for tests and stats: full discoveries, background refreshes (done / failed), COMMAND loads,
        #: promotions seen by a failover watch (each patched the map at once)
        self.discoveries = 0
        self.refreshes = 0
        self.refresh_failures = 0
        self.command_table_loads = 0
        self.promotions_seen = 0
        self._promoted: dict[str, tuple[str, float]] = {}  # old master -> (the replica promoted, when seen)
        self._suspected: dict[str, float] = {}  # master -> when it last failed a call (time.monotonic())
        self._watches: dict[str, asyncio.Task[None]] = {}  # master -> its failover watch
        #: changes of the map so far (refreshes, MOVED patches, promotions): the backend retires breakers on one
        self.map_changes = 0
        self._topology_known = False
        self._refreshing = False
        self._last_refresh = float("-inf")
        self._refresh_task: asyncio.Task[None] | None = None
        # Stock __init__ builds its NodesManager itself (no hook): replace it, before anything connected, by one
        # whose nodes are gated, with the same startup nodes and options.
        stock = self.nodes_manager
        self.nodes_manager = _GatedNodesManager(
            [(node.host, node.port) for node in stock.startup_nodes.values()], self._new_gate,
            require_full_coverage, stock.connection_kwargs, dynamic_startup_nodes=dynamic_startup_nodes,
            address_remap=address_remap, event_dispatcher=dispatcher,
        )
        self.startup_nodes = list(self.nodes_manager.startup_nodes.values())
        dispatcher.register_listeners({AsyncAfterSlotsCacheRefreshEvent: [_TopologyListener(self)]})

    def _new_gate(self) -> _NodeGate:
        return _NodeGate(self.connection_limit, self.pool_timeout)

    # -- the request path
    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        request = _REQUEST_OF.set(self)
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            _REQUEST_OF.reset(request)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:  # as stock pipeline()
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        # mypy: ClusterPipeline inherits an attribute of redis-py's CommandsProtocol that it never sets
        return _BoundedPipeline(self, transaction)  # type: ignore[abstract]

    # -- topology
    @property
    def topology_known(self) -> bool:
        """The first discovery is done (later refreshes run in the background)."""
        return self._topology_known

    def forget_topology(self) -> None:
        """After its connections were abandoned (their loop is gone): nothing is left to close."""
        self._topology_known = False
        self._initialize = True  # stock __del__ warns of an unclosed client otherwise

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
            return self
        # Topology known: serve requests from it; a refresh happens beside them.
        self._initialize = False
        if last_failed_node_name is not None:  # stock code saw a connection error or a timeout of that node
            self.suspect(last_failed_node_name)
        else:
            self.request_refresh()
        return self

    def request_refresh(self, last_failed_node_name: str | None = None) -> None:
        """Schedule one background ``CLUSTER SLOTS`` refresh, unless one is running or ran too recently;
        ``last_failed_node_name`` is asked last."""
        if not self._topology_known or self._refreshing:
            return
        if self._refresh_task is not None and not self._refresh_task.done():
            return
        delay = max(0.0, self._last_refresh + self.min_refresh_interval - time.monotonic())
        self._refresh_task = asyncio.get_running_loop().create_task(self._refresh(delay, last_failed_node_name))

    def suspect(self, node_name: str) -> None:
        """A call to the master ``node_name`` failed (or a breaker refused one): ask for a refresh (throttled, that
        node asked last), and watch the master's replicas for a promotion (:meth:`_watch_failover`), so that the
        map follows a failover within ``failover_poll_interval`` of it instead of at the next throttled refresh."""
        if not self._topology_known:
            return
        self._suspected[node_name] = time.monotonic()
        self.request_refresh(node_name)
        if node_name not in self._watches and self._serves_slots(node_name):
            watch = asyncio.get_running_loop().create_task(self._watch_failover(node_name))
            self._watches[node_name] = watch
            watch.add_done_callback(functools.partial(self._watch_ended, node_name))

    def _watch_ended(self, node_name: str, watch: asyncio.Task[None]) -> None:
        if self._watches.get(node_name) is watch:
            del self._watches[node_name]

    def _serves_slots(self, node_name: str) -> bool:
        """``node_name`` is a master in the current map."""
        node = self.nodes_manager.nodes_cache.get(node_name)
        return node is not None and node.server_type == PRIMARY

    def _replicas_of(self, node_name: str) -> list[ClusterNode]:
        for nodes in self.nodes_manager.slots_cache.values():
            if nodes and nodes[0].name == node_name:
                return list(nodes[1:])
        return []

    async def _watch_failover(self, node_name: str) -> None:
        """While ``node_name`` is a master in the map and failed a call within ``failover_watch_for`` seconds:
        every ``failover_poll_interval``, ask its replicas ``ROLE``; once one says it is a master (it won the
        election: Redis's own failover is done), put it in its master's place in the map at once
        (:meth:`_GatedNodesManager.promote`), and ask for a refresh to confirm the whole map. (A refresh at once
        would not do: the other nodes hear of the promotion 5-50 ms after it, so the node asked may not know yet.)
        A ``ROLE`` costs the replica next to nothing; a ``CLUSTER SLOTS`` refresh at that pace would cost every
        client the map's parsing (16,384 slots) ten times a second."""
        _REQUEST_OF.set(None)  # a task of its own, though maybe started from a request's context
        replicas: list[ClusterNode] = []
        seen = -1
        while True:
            await asyncio.sleep(self.failover_poll_interval)
            quiet = time.monotonic() - self._suspected.get(node_name, -math.inf)
            if not self._serves_slots(node_name) or quiet > self.failover_watch_for:
                return  # the map moved on (a promotion learned, the node gone), or the master answers again
            if seen != self.map_changes:
                seen = self.map_changes
                replicas = self._replicas_of(node_name)
            for replica in replicas:
                if await self._says_master(replica) and self._promote(node_name, replica):
                    log.info("cachelayer: cluster node %s took over from %s", replica.name, node_name)
                    return

    def _promote(self, master_name: str, replica: ClusterNode) -> bool:
        manager = self.nodes_manager
        if not isinstance(manager, _GatedNodesManager) or not manager.promote(master_name, replica):
            return False
        self.promotions_seen += 1
        self.map_changes += 1
        self._promoted[master_name] = (replica.name, time.monotonic())
        self.request_refresh(master_name)  # the whole map, confirmed
        return True

    def _keep_promotions(self) -> None:
        """After a refresh: a promotion seen less than ``_PROMOTION_NEWS`` ago that the map does not show is put
        back (the node asked had not heard of it yet, or the refresh began before it)."""
        manager = self.nodes_manager
        now = time.monotonic()
        for master_name, (replica_name, at) in list(self._promoted.items()):
            replica = manager.nodes_cache.get(replica_name)
            if now - at > _PROMOTION_NEWS or replica is None:
                del self._promoted[master_name]
            elif isinstance(manager, _GatedNodesManager) and manager.promote(master_name, replica):
                self.map_changes += 1

    async def _says_master(self, node: ClusterNode) -> bool:
        try:
            async with asyncio.timeout(self.refresh_attempt_timeout):
                role = await node.execute_command("ROLE")
        except (*CLIENT_ERRORS, TimeoutError):
            return False
        first = role[0] if isinstance(role, list | tuple) and role else None
        return first in (b"master", "master")

    async def _refresh(self, delay: float, last_failed_node_name: str | None) -> None:
        _REQUEST_OF.set(None)  # a task of its own, though maybe started from a request's context
        if delay:
            await asyncio.sleep(delay)
        self._refreshing = True
        _ATTEMPT_LIMIT.set(self.refresh_attempt_timeout)  # this task's context only: its CLUSTER SLOTS
        try:
            async with asyncio.timeout(self.refresh_timeout):
                await self.nodes_manager.initialize(last_failed_node_name=last_failed_node_name)
            self._keep_promotions()
            self.refreshes += 1
        except (*CLIENT_ERRORS, TimeoutError) as exc:
            self.refresh_failures += 1
            log.debug("cachelayer: cluster topology refresh failed: %r", exc)
        finally:
            self._refreshing = False
            self._last_refresh = time.monotonic()

    async def aclose(self) -> None:
        # Stock _execute_command calls self.aclose() on CLUSTERDOWN / slot-not-covered, and a pipeline on any
        # connection error of any node (before its retry): that drops the connections of every node (in-flight
        # calls to healthy shards fail) and forces a re-discovery, COMMAND included, on the request path. From
        # there, ask for a background refresh instead; from anyone else, really close.
        if _REQUEST_OF.get() is self:
            self.request_refresh()
            return
        watches = list(self._watches.values())
        for watch in watches:
            watch.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refresh_task
            self._refresh_task = None
        self._topology_known = False
        if self._initialize:  # a failure on the request path left it so: stock aclose() would close nothing
            await self.nodes_manager.aclose()
            await self.nodes_manager.aclose("startup_nodes")
        await super().aclose()


class _BoundedPipeline(ClusterPipeline):
    """A pipeline of a :class:`BoundedRedisCluster`: it runs on the client's request path."""

    __slots__ = ()

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        request = _REQUEST_OF.set(self.cluster_client)
        try:
            return await super().execute(raise_on_error, allow_redirections)
        finally:
            _REQUEST_OF.reset(request)


class _TopologyListener(AsyncEventListenerInterface):
    """After a MOVED patched one slot, refresh the whole map once (in the background) instead of one MOVED per
    slot. The event also ends every refresh: ``request_refresh`` ignores the first discovery's and our own."""

    def __init__(self, client: BoundedRedisCluster) -> None:
        self._client = client

    async def listen(self, event: object) -> None:
        self._client.map_changes += 1
        self._client.request_refresh()


def build_cluster_client(url: str, *, max_connections: int, pool_timeout: float,
                         socket_timeout: float | None = None, min_refresh_interval: float = 0.5,
                         refresh_timeout: float = 1.0, refresh_attempt_timeout: float = 0.25,
                         failover_poll_interval: float = 0.1, **kwargs: Any) -> BoundedRedisCluster:
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
        min_refresh_interval=min_refresh_interval, refresh_timeout=refresh_timeout,
        refresh_attempt_timeout=refresh_attempt_timeout, failover_poll_interval=failover_poll_interval, **options,
    )  # type: ignore[return-value]


def abandon_connection(connection: Any) -> None:
    """Close a redis-py connection's socket without its event loop, which is closed or not running (so its
    ``disconnect()`` cannot be awaited, and ``transport.close()`` would only schedule the closing on it)."""
    writer = getattr(connection, "_writer", None)
    connection._writer = connection._reader = None  # redis-py's __del__ warns of an unclosed Connection otherwise
    if writer is None:
        return
    transport = writer.transport
    ssl_protocol = getattr(transport, "_ssl_protocol", None)
    if ssl_protocol is not None:  # TLS: the socket is the inner transport's; the outer one only has a flag
        transport._closed = True
        transport = getattr(ssl_protocol, "_transport", None)
        if transport is None:
            return
    loop_closed = transport._loop is None or transport._loop.is_closed()
    with contextlib.suppress(Exception):
        transport.close()  # unregisters the socket from a loop that is not running; raises for a closed one
    transport._closing = True  # StreamWriter.__del__ warns of a transport that is not closing otherwise
    sock = getattr(transport, "_sock", None)
    if sock is not None:
        sock.close()
        if loop_closed:  # nothing will run the transport's connection_lost, which would clear it
            transport._sock = None


def node_name_for_key(client: RedisCluster, key: str | bytes) -> str:
    """``"host:port"`` of the master that owns ``key``'s slot in the client's current map (no I/O; a CRC16 and
    a dict lookup). ``"unknown"`` before discovery or while the slot is uncovered."""
    encoded = key.encode() if isinstance(key, str) else key
    nodes = client.nodes_manager.slots_cache.get(key_slot(encoded))
    return nodes[0].name if nodes else "unknown"


class ClusterSubscription:
    """A :class:`cachelayer._backend.Subscription` on a cluster, with connections of its own (not the pools').

    ``sharded=True``: SSUBSCRIBE each channel on the master owning its slot (one connection per such master).
    ``sharded=False``: classic SUBSCRIBE on one node. A cluster forwards every PUBLISH to every node, masters and
    replicas alike, so any live node carries every message and the slot map does not matter: the node is chosen
    among every node of the map, the channel's slot owner first, then the others, and last those on which a
    subscription sharing ``trouble`` (the backend's: node name -> when it last failed one) failed most recently.
    Each attempt (connect, SUBSCRIBE, its confirmation) has ``attempt_timeout``, so a frozen node costs one attempt,
    a dead one a refused connection, and a failover is survived by the next node in the list, before any promotion.

    ``alive_at`` is a watermark (:func:`time.monotonic`): when the newest answered PING (or the confirmed SUBSCRIBE)
    was sent, on every node of this subscription. Whatever a node received before then has been delivered here
    (a node answers in order); a message does not move it, since it may itself be late. A node that never answers
    a ping is noted in ``trouble`` when the subscription is closed.

    Any connection problem, and a channel dropped by the server because its slot moved (Redis 7 sends an unasked
    ``sunsubscribe``), raise :class:`StoreUnavailable` from :meth:`next_message`: close this subscription and open a
    new one, which follows the current topology.
    """

    def __init__(self, client: RedisCluster, *, sharded: bool, connect_timeout: float = 1.0,
                 closed: Callable[[], bool] = lambda: False, attempt_timeout: float = 1.0,
                 trouble: dict[str, float] | None = None) -> None:
        self.alive_at = float("-inf")
        self._backend_closed = closed
        self._client = client
        self._sharded = sharded
        self._connect_timeout = connect_timeout
        self._attempt_timeout = attempt_timeout
        self._trouble: dict[str, float] = trouble if trouble is not None else {}
        self._pubsubs: dict[str, PubSub] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._queue: asyncio.Queue[Message | BaseException] = asyncio.Queue()
        self._channel_node: dict[str, str] = {}
        self._leaving: set[str] = set()
        self._closed = False
        # per node: the pings not answered yet (token -> when sent), and the watermark (see the class docstring)
        self._pings: dict[str, dict[bytes, float]] = {}
        self._watermark: dict[str, float] = {}
        self._ping_count = 0

    # -- the protocol
    async def subscribe(self, *channels: str) -> None:
        self._check_open()
        try:
            await self._client.initialize()
            if not self._sharded and not self._pubsubs:
                await self._subscribe_somewhere(channels)
                return
            for node_name, names in self._by_node(channels).items():
                pubsub = self._pubsub_for(node_name)
                sent = time.monotonic()
                async with asyncio.timeout(self._attempt_timeout):
                    for channel in names:  # SSUBSCRIBE of several channels must be one slot: one by one
                        await (pubsub.ssubscribe(channel) if self._sharded else pubsub.subscribe(channel))
                        self._channel_node[channel] = node_name
                self._watermark.setdefault(node_name, sent)  # moved by the node's first answered ping
                self._update_alive()
                if node_name not in self._readers:
                    self._readers[node_name] = asyncio.get_running_loop().create_task(self._read(node_name, pubsub))
        except (*CLIENT_ERRORS, TimeoutError) as exc:
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
        """Send every node a PING carrying a token of its own; its answer (read by the node's reader) moves the
        node's watermark to when it was sent."""
        self._check_open()
        self._follow_failover()
        try:
            for node_name, pubsub in list(self._pubsubs.items()):
                self._ping_count += 1
                token = f"cachelayer-ping-{self._ping_count}".encode()
                self._pings.setdefault(node_name, {})[token] = time.monotonic()
                async with asyncio.timeout(self._attempt_timeout):
                    await pubsub.ping(token)
        except (*CLIENT_ERRORS, TimeoutError) as exc:
            raise StoreUnavailable(f"cluster subscription ping failed: {exc!r}") from exc

    async def aclose(self) -> None:
        self._closed = True
        now = time.monotonic()
        for node_name, pending in self._pings.items():
            if pending:  # asked for a sign of life and got none: the next subscription tries it last
                self._trouble[node_name] = now
        readers = list(self._readers.values())
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for node_name in list(self._pubsubs):
            await self._drop(node_name)
        self._readers.clear()

    # -- internals
    def _check_open(self) -> None:
        if self._backend_closed():
            raise CacheClosedError("the cache's Redis backend was closed (aclose()); build a new cache")
        if self._closed:
            raise StoreUnavailable("subscription is closed")

    def _by_node(self, channels: Sequence[str]) -> dict[str, list[str]]:
        if self._sharded:
            grouped: dict[str, list[str]] = {}
            for channel in channels:
                grouped.setdefault(node_name_for_key(self._client, channel), []).append(channel)
            return grouped
        # classic: everything on one connection, the one already open
        return {next(iter(self._pubsubs)): list(channels)}

    def candidates(self, channel: str) -> list[str]:
        """Where a classic subscription to ``channel`` is tried, in order (see the class docstring)."""
        owner = node_name_for_key(self._client, channel)
        names = sorted((node.name for node in self._client.get_nodes()), key=lambda name: name != owner)
        return sorted(names, key=lambda name: self._trouble.get(name, float("-inf")))  # stable: owner first

    async def _subscribe_somewhere(self, channels: Sequence[str]) -> None:
        """Classic: SUBSCRIBE on the first node of :meth:`candidates` that confirms within ``attempt_timeout``."""
        failures: list[str] = []
        for node_name in self.candidates(channels[0]):
            sent = time.monotonic()
            try:
                async with asyncio.timeout(self._attempt_timeout):
                    pubsub = self._pubsub_for(node_name)
                    await pubsub.subscribe(*channels)
                    confirmed = 0
                    while confirmed < len(channels):  # the confirmations come first, in order
                        message = await pubsub.get_message(timeout=None)
                        if message is not None and message["type"] in ("subscribe", b"subscribe"):
                            confirmed += 1
            except (*CLIENT_ERRORS, TimeoutError, StoreUnavailable) as exc:
                self._trouble[node_name] = time.monotonic()
                failures.append(f"{node_name}: {exc!r}")
                await self._drop(node_name)
                continue
            for channel in channels:
                self._channel_node[channel] = node_name
            self._trouble.pop(node_name, None)  # it answers again
            self._watermark[node_name] = sent
            self._update_alive()
            self._readers[node_name] = asyncio.get_running_loop().create_task(self._read(node_name, pubsub))
            return
        raise StoreUnavailable(f"cluster subscribe failed on every node: {'; '.join(failures) or 'no node'}")

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

    async def _drop(self, node_name: str) -> None:
        """Close the node's connection, bounded (a frozen node must not hold the caller)."""
        pubsub = self._pubsubs.pop(node_name, None)
        self._pings.pop(node_name, None)
        self._watermark.pop(node_name, None)
        if pubsub is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pubsub.aclose(), self._attempt_timeout)  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pubsub.connection_pool.aclose(), self._attempt_timeout)

    def _follow_failover(self) -> None:
        """While a node that failed a subscription lately is still a master in the client's map, ask for a fresh
        map (the client throttles it to one per ``min_refresh_interval``): after a promotion the map follows within
        that interval, instead of waiting for some request to fail on the dead master first."""
        client = self._client
        if not isinstance(client, BoundedRedisCluster) or not self._trouble:
            return
        now = time.monotonic()
        masters = {node.name for node in client.get_primaries()}
        if any(name in masters and now - at < _FOLLOW_FAILOVER_FOR for name, at in self._trouble.items()):
            client.request_refresh()

    def _update_alive(self) -> None:
        self.alive_at = min(self._watermark.values(), default=float("-inf"))

    def _answered(self, node_name: str, token: bytes) -> None:
        pending = self._pings.get(node_name)
        sent = None if pending is None else pending.get(token)
        if pending is None or sent is None:
            return
        for older in [t for t, at in pending.items() if at <= sent]:  # answers come in order
            del pending[older]
        self._watermark[node_name] = max(self._watermark.get(node_name, sent), sent)
        self._update_alive()

    async def _read(self, node_name: str, pubsub: PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=30.0)
                if message is None:
                    continue
                kind = message["type"]
                kind = kind.decode() if isinstance(kind, bytes) else kind
                if kind == "pong":
                    data = message["data"]
                    self._answered(node_name, data.encode() if isinstance(data, str) else bytes(data or b""))
                    continue
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
            self._trouble[node_name] = time.monotonic()
            self._queue.put_nowait(exc)
