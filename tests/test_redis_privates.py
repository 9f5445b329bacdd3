"""The redis-py (and asyncio) internals cachelayer relies on, pinned against the installed versions.

``cachelayer/_redis_cluster.py`` lists its own: ``PRIVATES`` (private names it reads or writes) and ``OVERRIDDEN``
(redis-py methods it overrides, relying on what they do). ``cachelayer/_redis_clients.py`` touches a few
privates too: ``BACKEND_PRIVATES`` below. An upgrade that moves one fails here, with a message that names it and
says where cachelayer uses it. (The behaviour behind each, against a real cluster: tests/test_redis_cluster.py.)
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import ssl
import sys
import warnings
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from importlib import import_module
from typing import Any

import pytest
import pytest_asyncio
import redis
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode, NodesManager
from redis.asyncio.connection import Connection

from cachelayer import _redis_cluster
from cachelayer._redis_clients import QueueAwarePool
from cachelayer._redis_cluster import OVERRIDDEN, PRIVATES, Internal, abandon_connection

#: privates that cachelayer/_redis_clients.py touches itself (kept here: that module has no list of its own)
BACKEND_PRIVATES = (
    Internal("redis.asyncio.cluster:ClusterNode", "_connections",
             "_redis_clients.abandon_client: every connection of every node, to close without the loop"),
    Internal("redis.asyncio.cluster:RedisCluster", "_initialize",
             "_redis_clients.abandon_client: set, so that stock __del__ does not warn of an unclosed client"),
    Internal("redis.asyncio.connection:ConnectionPool", "_available_connections",
             "_redis_clients.abandon_client: the pool's idle connections, to close without the loop"),
    Internal("redis.asyncio.connection:ConnectionPool", "_in_use_connections",
             "_redis_clients.abandon_client: the pool's busy connections, to close without the loop; "
             "QueueAwarePool: an idle connection taken and given back without the pool's condition"),
    Internal("redis.asyncio.connection:BlockingConnectionPool", "_in_maintenance",
             "_redis_clients.QueueAwarePool: a pool in maintenance takes redis-py's own path"),
)

#: private functions _redis_clients.py calls: (module, name, use)
BACKEND_PRIVATE_FUNCTIONS = (
    ("redis.asyncio.observability.recorder", "_get_or_create_collector",
     "_redis_clients.QueueAwarePool: redis-py's own connection counts on (not None) take redis-py's path"),
)

#: public methods _redis_clients.py overrides (QueueAwarePool), relying on redis-py calling them
BACKEND_OVERRIDDEN = (
    Internal("redis.asyncio.connection:BlockingConnectionPool", "can_get_connection",
             "_redis_clients.QueueAwarePool: get_connection() waits on it, then takes a connection at once"),
    Internal("redis.asyncio.connection:BlockingConnectionPool", "get_connection",
             "_redis_clients.QueueAwarePool: an idle connection directly, else redis-py's own"),
    Internal("redis.asyncio.connection:BlockingConnectionPool", "release",
             "_redis_clients.QueueAwarePool: given back directly, else redis-py's own (which wakes a waiter)"),
)

#: our subclass of each class whose methods are overridden
OURS: dict[str, type] = {
    "redis.asyncio.cluster:RedisCluster": _redis_cluster.BoundedRedisCluster,
    "redis.asyncio.cluster:ClusterPipeline": _redis_cluster._BoundedPipeline,
    "redis.asyncio.cluster:NodesManager": _redis_cluster._GatedNodesManager,
    "redis.asyncio.cluster:ClusterNode": _redis_cluster.GatedClusterNode,
    "redis.asyncio.connection:BlockingConnectionPool": QueueAwarePool,
}


def _owner_class(owner: str) -> type:
    module, _, name = owner.partition(":")
    found = getattr(import_module(module), name, None)
    assert isinstance(found, type), f"{owner} is gone (redis-py {redis.__version__}, Python {sys.version})"
    return found


@dataclass(frozen=True)
class Shape:
    """What a private must look like, checked on a live ``instance`` of its owner."""

    instance: str
    check: Callable[[Any], bool]
    expected: str


def _is_collection(value: Any) -> bool:
    return isinstance(value, Collection)


# One entry per (owner, name) above; a private listed without one fails test_every_private_has_a_pin.
SHAPES: dict[tuple[str, str], Shape] = {
    ("redis.asyncio.cluster:RedisCluster", "_initialize"): Shape(
        "cluster", lambda v: v is True, "True on a client not yet initialized"),
    ("redis.asyncio.connection:AbstractConnection", "_writer"): Shape(
        "connection", lambda v: isinstance(v, asyncio.StreamWriter), "the asyncio.StreamWriter of a connection"),
    ("redis.asyncio.connection:AbstractConnection", "_reader"): Shape(
        "connection", lambda v: isinstance(v, asyncio.StreamReader), "the asyncio.StreamReader of a connection"),
    ("asyncio.selector_events:_SelectorTransport", "_loop"): Shape(
        "transport", lambda v: isinstance(v, asyncio.AbstractEventLoop), "the transport's event loop"),
    ("asyncio.selector_events:_SelectorTransport", "_closing"): Shape(
        "transport", lambda v: v is False, "False on an open transport"),
    ("asyncio.selector_events:_SelectorTransport", "_sock"): Shape(
        "transport", lambda v: hasattr(v, "fileno") and hasattr(v, "close") and v.fileno() >= 0,
        "the transport's open socket"),
    ("asyncio.sslproto:_SSLProtocolTransport", "_ssl_protocol"): Shape(
        "ssl_transport", lambda v: isinstance(v, _owner_class("asyncio.sslproto:SSLProtocol")),
        "the SSLProtocol of the transport"),
    ("asyncio.sslproto:_SSLProtocolTransport", "_closed"): Shape(
        "ssl_transport", lambda v: v is False, "False on an open transport"),
    ("asyncio.sslproto:SSLProtocol", "_transport"): Shape(
        "ssl_protocol", lambda v: v is None, "None before connection_made (then the inner transport)"),
    ("redis.asyncio.cluster:ClusterNode", "_connections"): Shape(
        "node", lambda v: isinstance(v, list), "the list of the node's connections"),
    ("redis.asyncio.connection:ConnectionPool", "_available_connections"): Shape(
        "pool", _is_collection, "a collection of idle connections"),
    ("redis.asyncio.connection:ConnectionPool", "_in_use_connections"): Shape(
        "pool", _is_collection, "a collection of connections in use"),
    ("redis.asyncio.connection:BlockingConnectionPool", "_in_maintenance"): Shape(
        "pool", lambda v: v is False, "False on a pool not in maintenance"),
}

ALL_PRIVATES = (*PRIVATES, *BACKEND_PRIVATES)


@pytest_asyncio.fixture
async def instances(redis_url: str) -> AsyncIterator[dict[str, Any]]:
    """A live object of every owner: a connection is connected (to the test Redis), so it has its transport."""
    client = Redis.from_url(redis_url)
    connection = await client.connection_pool.get_connection()
    assert isinstance(connection, Connection)
    loop = asyncio.get_running_loop()
    ssl_protocol = _owner_class("asyncio.sslproto:SSLProtocol")(
        loop, asyncio.Protocol(), ssl.create_default_context(), None)
    ssl_transport = ssl_protocol._app_transport  # the transport a TLS StreamWriter holds
    cluster = RedisCluster(host="127.0.0.1", port=1)  # builds its nodes, connects nothing
    writer = connection._writer
    assert writer is not None
    try:
        yield {
            "cluster": cluster,
            "connection": connection,
            "transport": writer.transport,
            "ssl_protocol": ssl_protocol,
            "ssl_transport": ssl_transport,
            "node": ClusterNode("127.0.0.1", 1),
            "pool": BlockingConnectionPool.from_url(redis_url),
        }
    finally:
        ssl_transport._closed = True  # never opened: nothing to close, and its __del__ would warn
        await client.connection_pool.release(connection)
        await client.aclose()


def test_the_installed_redis_py_is_the_one_these_pins_were_checked_for() -> None:
    version = tuple(int(part) for part in redis.__version__.split(".")[:2])
    assert version == (8, 1), (
        f"redis-py {redis.__version__}: the privates and overrides in cachelayer/_redis_cluster.py (PRIVATES, "
        "OVERRIDDEN) and tests/test_redis_privates.py were checked against 8.1; read the new version's "
        "redis/asyncio/cluster.py and connection.py for each, then widen this and pyproject's pin"
    )


def test_every_private_has_a_pin() -> None:
    unpinned = [f"{p.owner}.{p.name}" for p in ALL_PRIVATES if (p.owner, p.name) not in SHAPES]
    assert not unpinned, f"add a Shape to SHAPES for {unpinned}"


@pytest.mark.parametrize(("module", "name", "use"), BACKEND_PRIVATE_FUNCTIONS)
def test_private_function_is_still_there_and_answers_none_with_observability_off(
    module: str, name: str, use: str
) -> None:
    function = getattr(import_module(module), name, None)
    assert callable(function), f"{module}.{name}, used by {use}: gone in redis-py {redis.__version__}"
    assert not inspect.iscoroutinefunction(function), f"{module}.{name} ({use}): became a coroutine function"
    assert function() is None, f"{module}.{name} ({use}): not None with redis-py's observability off"


def _id(internal: Internal) -> str:
    return f"{internal.owner.rsplit(':')[-1]}.{internal.name}"


@pytest.mark.parametrize("private", list(ALL_PRIVATES), ids=_id)
async def test_private_still_has_its_shape(private: Internal, instances: dict[str, Any]) -> None:
    where = f"{private.owner}.{private.name}, used by {private.use}"
    versions = f"redis-py {redis.__version__}, Python {sys.version.split()[0]}"
    owner = _owner_class(private.owner)
    shape = SHAPES[(private.owner, private.name)]
    instance = instances[shape.instance]
    assert isinstance(instance, owner), f"{where}: the live {shape.instance} is a {type(instance)} ({versions})"
    assert hasattr(instance, private.name), f"{where}: gone in {versions}"
    value = getattr(instance, private.name)
    assert shape.check(value), f"{where}: expected {shape.expected}, found {value!r} ({versions})"


def _accepted(function: Callable[..., Any]) -> tuple[set[str], bool, bool]:
    parameters = inspect.signature(function).parameters.values()
    names = {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}
    return names, any(p.kind is p.VAR_POSITIONAL for p in parameters), any(p.kind is p.VAR_KEYWORD for p in parameters)


@pytest.mark.parametrize("method", [*OVERRIDDEN, *BACKEND_OVERRIDDEN], ids=_id)
def test_overridden_method_still_exists_with_a_signature_ours_accepts(method: Internal) -> None:
    where = f"{method.owner}.{method.name} (relied on: {method.use})"
    theirs = getattr(_owner_class(method.owner), method.name, None)
    assert callable(theirs), f"{where}: gone in redis-py {redis.__version__}"
    ours_class = OURS[method.owner]
    ours = getattr(ours_class, method.name)
    assert ours is not theirs, f"{where}: {ours_class.__name__} no longer overrides it"
    assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs), f"{where}: sync/async changed"
    their_names, their_args, their_kwargs = _accepted(theirs)
    our_names, our_args, our_kwargs = _accepted(ours)
    missing = their_names - our_names if not our_kwargs else set()
    assert not missing, f"{where}: redis-py now takes {sorted(missing)}, which our override does not"
    assert our_args or not their_args, f"{where}: redis-py now takes *args, our override does not"
    assert our_kwargs or not their_kwargs, f"{where}: redis-py now takes **kwargs, our override does not"


def test_stock_nodes_manager_defaults_are_the_ones_bounded_redis_cluster_repeats() -> None:
    # BoundedRedisCluster takes these itself (to build its own NodesManager) with the stock defaults
    theirs = inspect.signature(RedisCluster.__init__).parameters
    ours = inspect.signature(_redis_cluster.BoundedRedisCluster.__init__).parameters
    for name in ("host", "port", "require_full_coverage", "dynamic_startup_nodes", "address_remap", "event_dispatcher"):
        assert ours[name].default == theirs[name].default, f"RedisCluster(..., {name}=) default changed"
    nodes_manager = inspect.signature(NodesManager.__init__).parameters
    assert {"dynamic_startup_nodes", "address_remap", "event_dispatcher"} <= nodes_manager.keys()
    assert list(nodes_manager)[1:4] == ["startup_nodes", "require_full_coverage", "connection_kwargs"]


def test_our_subclasses_add_no_name_redis_py_uses() -> None:
    # A name we add that redis-py starts using too would be shadowed without a sound.
    stock = RedisCluster(host="127.0.0.1", port=1)  # builds its nodes, connects nothing
    bounded = _redis_cluster.BoundedRedisCluster(host="127.0.0.1", port=1)
    theirs = set(dir(RedisCluster)) | set(vars(stock)) | _slots(RedisCluster)
    bare = set(vars(type("Bare", (RedisCluster,), {})))  # what any subclass gets (ABC and Protocol machinery)
    ours = (set(vars(_redis_cluster.BoundedRedisCluster)) | set(vars(bounded))) - set(vars(stock)) - bare
    overridden = {m.name for m in OVERRIDDEN if m.owner.endswith(":RedisCluster")}
    clash = {name for name in ours & theirs if not name.startswith("__")} - overridden
    assert not clash, f"RedisCluster now has these names of BoundedRedisCluster too: {sorted(clash)}"
    for subclass, base in ((_redis_cluster.GatedClusterNode, ClusterNode),
                           (_redis_cluster._GatedNodesManager, NodesManager)):
        clash = set(getattr(subclass, "__slots__", ())) & _slots(base)
        assert not clash, f"{base.__name__} now has the slots {clash} of {subclass.__name__}"


def _slots(cls: type) -> set[str]:
    return {slot for klass in cls.__mro__ for slot in getattr(klass, "__slots__", ())}


# --------------------------------------------------------------------------- abandon_connection, end to end


def _connected_on_a_closed_loop(redis_url: str) -> Connection:
    """A redis-py connection, connected on an event loop that is closed since."""
    connection = Redis.from_url(redis_url).connection_pool.make_connection()
    assert isinstance(connection, Connection)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(connection.connect())
    finally:
        loop.close()
    return connection


def test_abandon_connection_closes_the_socket_of_a_connection_whose_loop_is_closed(redis_url: str) -> None:
    connection = _connected_on_a_closed_loop(redis_url)
    writer = connection._writer
    assert writer is not None
    sock = writer.transport.get_extra_info("socket")
    assert sock.fileno() >= 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        abandon_connection(connection)
        del writer
        gc.collect()
    assert sock.fileno() == -1
    assert not connection.is_connected
