"""The store side of the cache's contract: mistakes raise, outages fail open, and both say where.

* A store URL is checked when the backend is built (``cachelayer/_urls.py``, ``check_redis_url``): a port or
  database that is not a number, a missing host, an unknown scheme or option is a :class:`ConfigurationError`
  with the fix, never a backend whose every call fails later.
* ``connect()`` raises :class:`StoreConnectError` naming the store and quoting Redis when it refuses (nothing
  listens, wrong password, no such database); at run time the same conditions fail open.
* A fail-open log line names the store, the operation and the store's message, once per transition.
* A closed backend raises :class:`CacheClosedError`; a given cluster client used from another loop raises
  :class:`WrongEventLoopError`; ``aclose()`` closes the connections of every loop the backend served.
* A cluster's first topology discovery does not eat the first call's budget.
* Fills are alike on every store (memory, Redis, Cluster): a load's ticket (exclusive: the lease; or shared), the
  compare-and-set fill, the revocation of every ticket of a key by each invalidation, tag memberships recorded
  before the value exists and ending on their own.

Real servers throughout: the machine's Redis, private ``redis-server`` processes, the session's Redis Cluster.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from redis.asyncio import Redis, RedisCluster

from cachelayer import (
    Backend,
    CacheClosedError,
    CircuitBreaker,
    ConfigurationError,
    Guard,
    GuardedBackend,
    MemoryBackend,
    RedisBackend,
    StoreConnectError,
    StoreUnavailable,
    WrongEventLoopError,
    _urls,
)
from cachelayer._keys import KeyLayout
from cachelayer._urls import StoreOptions, backend_from_url, register_scheme, registered_schemes
from harness import LatencyProxy, RedisClusterServer, RedisServer, free_port
from harness.servers import port_answers
from tests._doubles import eventually

# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "cluster", "says"),
    [
        ("redis://127.0.0.1:notaport/0", False, "'notaport' in"),
        ("redis://127.0.0.1:70000/0", False, "(1-65535)"),
        ("redis://127.0.0.1:0/0", False, "(1-65535)"),
        ("redis:///0", False, "names no host"),
        ("redis://:secret@/0", False, "names no host"),
        ("redis://127.0.0.1:6379/abc", False, "must be the database number"),
        ("redis://127.0.0.1:6379/-1", False, "must be the database number"),
        ("redis://127.0.0.1:6379/\u00b2", False, "must be the database number"),  # a digit to isdigit(), not to int()
        ("redis://127.0.0.1:6379/2?db=3", False, "names the database twice"),
        ("redis://127.0.0.1:6379/0?retry_on_timeout=maybe", False, "not a boolean"),
        ("redis://127.0.0.1:6379/0?retry_on_timeout=off", False, "not a boolean"),  # redis-py reads "off" as True
        ("redis+cluster://127.0.0.1:7000/3", False, "only database 0"),
        ("redis://127.0.0.1:7000/2", True, "only database 0"),
        ("redis+cluster://127.0.0.1:7000?db=1", False, "unknown option 'db'"),
        ("redis://127.0.0.1:6379/0?socket_timout=1", False, "unknown option 'socket_timout'"),
        ("redis://127.0.0.1:6379/0?ssl_certfile=/x", False, "unknown option 'ssl_certfile'"),  # TLS only
        ("redis://127.0.0.1:6379/0?socket_timeout=soon", False, "socket_timeout='soon'"),
        ("redis://127.0.0.1:6379/0?max_connections=5", False, "pass max_connections= to Cache.from_url"),
        ("redis://127.0.0.1:6379/0?timeout=5", False, "pass pool_timeout= to Cache.from_url"),
        ("unix://", False, "names no socket"),
        ("memcached://127.0.0.1:11211", False, "redis+cluster://, rediss://"),
        ("127.0.0.1:6379", False, "write scheme://"),
        ("memory://somewhere", False, "write memory://"),
        ("memory://", True, "cluster=True needs a redis:// or rediss:// URL"),
        ("unix:///tmp/redis.sock", True, "cluster=True needs"),
    ],
)
def test_a_url_mistake_is_a_configuration_error_at_build_time(url: str, cluster: bool, says: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        backend_from_url(url, StoreOptions(), cluster=cluster)
    assert says in str(info.value)


def test_an_unknown_scheme_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        backend_from_url("memcached://127.0.0.1:11211", StoreOptions())
    for scheme in ("memory", "redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        assert f"{scheme}://" in str(info.value)


def test_a_password_is_not_repeated_in_the_message() -> None:
    with pytest.raises(ConfigurationError) as info:
        backend_from_url("memcached://user:hunter2@127.0.0.1:11211", StoreOptions())
    assert "hunter2" not in str(info.value)


def test_redis_backend_from_url_checks_the_url_too() -> None:
    """The measured bug: a port that is not a number was accepted, then every call (even ping) raised ValueError."""
    with pytest.raises(ConfigurationError):
        RedisBackend.from_url("redis://127.0.0.1:notaport/0")
    with pytest.raises(ConfigurationError):
        RedisBackend.from_url("redis://127.0.0.1:6379/abc")  # used to mean DB 0, silently


@pytest.mark.parametrize(
    ("url", "cluster", "store"),
    [
        ("redis://127.0.0.1:6379/15", False, "127.0.0.1:6379"),
        ("redis://cache.internal", False, "cache.internal:6379"),
        ("redis://user:pw@127.0.0.1:6380/", False, "127.0.0.1:6380"),
        ("rediss://127.0.0.1:6380/0?ssl_cert_reqs=none&ssl_certfile=/etc/c.pem", False, "127.0.0.1:6380"),
        ("redis://127.0.0.1:6379/0?socket_connect_timeout=0.5&client_name=web", False, "127.0.0.1:6379"),
        ("unix:///run/redis/redis.sock?db=2", False, "/run/redis/redis.sock"),
        ("redis+cluster://127.0.0.1:7000", False, "127.0.0.1:7000"),
        ("rediss+cluster://127.0.0.1:7000/0", False, "127.0.0.1:7000"),
        ("redis://127.0.0.1:7000", True, "127.0.0.1:7000"),
        ("redis://[::1]:6379/1", False, "[::1]:6379"),
    ],
)
def test_valid_urls_build_a_backend_without_connecting(url: str, cluster: bool, store: str) -> None:
    backend = backend_from_url(url, StoreOptions(timeout=0.5), cluster=cluster)
    assert isinstance(backend, RedisBackend)
    assert backend.store == store
    assert backend.timeout == 0.5


def test_memory_url_builds_a_memory_backend() -> None:
    backend = backend_from_url("memory://", StoreOptions(timeout=0.3))
    assert isinstance(backend, MemoryBackend)  # in-process: no budget (a GuardedBackend can give it one)


def test_options_out_of_range_are_configuration_errors() -> None:
    for bad in ({"max_connections": 0}, {"timeout": 0}, {"pool_timeout": -1.0}, {"socket_timeout": 0},
                {"connect_timeout": float("nan")}):
        with pytest.raises(ConfigurationError):
            StoreOptions(**bad)
    options = StoreOptions(max_connections=8, timeout=0.2, breaker=CircuitBreaker(failure_threshold=2))
    backend = RedisBackend.from_url("redis://127.0.0.1:6379/15", options=options)
    assert backend.breaker is options.breaker


@pytest.fixture
def scheme_table() -> Iterator[None]:
    """Registrations a test makes are undone after it."""
    saved = dict(_urls._SCHEMES)
    try:
        yield
    finally:
        _urls._SCHEMES.clear()
        _urls._SCHEMES.update(saved)


@pytest.mark.usefixtures("scheme_table")
def test_a_third_party_registers_its_scheme() -> None:
    seen: list[tuple[str, StoreOptions]] = []

    def build(url: str, options: StoreOptions) -> Backend:
        seen.append((url, options))
        return GuardedBackend(MemoryBackend(), Guard(timeout=options.timeout))

    register_scheme("test-store", build)
    options = StoreOptions(timeout=0.25)
    backend = backend_from_url("test-store://anything/at/all", options)
    assert isinstance(backend, GuardedBackend)
    assert backend.guard.timeout == 0.25
    assert seen == [("test-store://anything/at/all", options)]
    assert "test-store" in registered_schemes()
    with pytest.raises(ConfigurationError, match="registered already"):
        register_scheme("test-store", build)
    register_scheme("redis", build, replace=True)  # deliberately, and only so
    assert isinstance(backend_from_url("redis://127.0.0.1:6379/0", options), GuardedBackend)
    with pytest.raises(ConfigurationError, match="not a URL scheme"):
        register_scheme("no spaces", build)


# --------------------------------------------------------------------------- connect()


async def test_connect_to_a_port_nobody_listens_on_raises_store_connect_error() -> None:
    port = free_port()
    backend = RedisBackend.from_url(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        with pytest.raises(StoreConnectError) as info:
            await backend.connect()
        assert info.value.store == f"127.0.0.1:{port}"
        assert "Error 111" in info.value.reason, info.value.reason  # ECONNREFUSED, in redis-py's words
        assert f"127.0.0.1:{port}" in str(info.value)
        with pytest.raises(StoreUnavailable):  # at run time the same condition fails open
            await backend.get("k")
    finally:
        await backend.aclose()


class PasswordRedis(RedisServer):
    """A private Redis with ``--requirepass``: the harness's readiness PING would get NOAUTH, so it only waits
    for the port."""

    def answers(self) -> bool:
        return port_answers(self.host, self.port, timeout=0.5)


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[PasswordRedis]:
    server = PasswordRedis(tmp_path / "password-redis", extra_args=("--requirepass", "right-password"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize(
    ("credentials", "says"),
    [(":wrong-password@", "invalid username-password pair"), ("", "authenticated")],
)
async def test_connect_with_a_wrong_password_raises_with_redis_message(
    password_redis: PasswordRedis, credentials: str, says: str
) -> None:
    store = f"127.0.0.1:{password_redis.port}"
    backend = RedisBackend.from_url(f"redis://{credentials}{store}/0", timeout=1.0)
    try:
        with pytest.raises(StoreConnectError) as info:
            await backend.connect()
        assert info.value.store == store
        assert says in info.value.reason, info.value.reason
        with pytest.raises(StoreUnavailable):
            await backend.set("k", b"v", 1000)
    finally:
        await backend.aclose()
    right = RedisBackend.from_url(f"redis://:right-password@{store}/0", timeout=1.0)
    try:
        await right.connect()
        await right.set("k", b"v", 60_000)
        assert await right.get("k") == b"v"
    finally:
        await right.aclose()


async def test_connect_to_a_database_that_does_not_exist_raises(redis_url: str) -> None:
    parts = urlsplit(redis_url)
    store = f"{parts.hostname}:{parts.port or 6379}"
    backend = RedisBackend.from_url(f"redis://{store}/99", timeout=1.0)
    try:
        with pytest.raises(StoreConnectError) as info:
            await backend.connect()
        assert info.value.store == store
        assert "DB index is out of range" in info.value.reason
        with pytest.raises(StoreUnavailable):
            await backend.get("k")
    finally:
        await backend.aclose()


async def test_cluster_connect_raises_when_no_startup_node_answers() -> None:
    port = free_port()
    backend = RedisBackend.cluster_from_url(f"redis+cluster://127.0.0.1:{port}", timeout=0.2)
    try:
        with pytest.raises(StoreConnectError) as info:
            await backend.connect()
        assert info.value.store == f"127.0.0.1:{port}"
        assert "Error 111" in info.value.reason, info.value.reason  # ECONNREFUSED, in redis-py's words
        with pytest.raises(StoreUnavailable):
            await backend.get("k")
    finally:
        await backend.aclose()


async def test_cluster_connect_to_a_standalone_redis_says_so(private_redis: RedisServer) -> None:
    backend = RedisBackend.cluster_from_url(f"redis+cluster://127.0.0.1:{private_redis.port}", timeout=0.5)
    try:
        with pytest.raises(StoreConnectError) as info:
            await backend.connect()
        assert "Cluster mode is not enabled" in info.value.reason, info.value.reason
    finally:
        await backend.aclose()


# --------------------------------------------------------------------------- log lines


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "cachelayer"]


async def test_fail_open_is_logged_once_with_store_operation_and_message_and_so_is_recovery(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = f"127.0.0.1:{private_redis.port}"
    backend = RedisBackend.from_url(private_redis.url, timeout=0.5, breaker=CircuitBreaker(failure_threshold=10**6))
    caplog.set_level(logging.DEBUG, logger="cachelayer")
    try:
        await backend.set("k", b"v", 60_000)
        private_redis.stop()
        for _ in range(5):
            with pytest.raises(StoreUnavailable) as info:
                await backend.get("k")
            assert store in str(info.value)
        with pytest.raises(StoreUnavailable):
            await backend.begin_fill("k", "token", 1000)
        failed = backend.stats()["store_errors"]
        assert failed == 6
        lines = warnings_of(caplog)
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"cachelayer: Redis {store} GET failed, failing open: ConnectionError: "), lines
        assert lines[0].split("ConnectionError: ", 1)[1]  # redis-py's own message ("Connection closed by server.")
        debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
        assert any(f"Redis {store} fill begin failed" in line for line in debug), debug

        private_redis.start()
        caplog.clear()

        async def answers() -> bool:
            try:
                return await backend.get("k") is None  # restarted empty
            except StoreUnavailable:
                return False

        await eventually(answers, what="the restarted Redis to answer")
        failed = backend.stats()["store_errors"]
        await backend.get("k")
        lines = warnings_of(caplog)
        assert lines == [f"cachelayer: Redis {store} answering again after {failed} failed calls"], lines
    finally:
        await backend.aclose()


async def test_breaker_lines_name_the_store(private_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    store = f"127.0.0.1:{private_redis.port}"
    backend = RedisBackend.from_url(private_redis.url, timeout=0.5, breaker=CircuitBreaker(2, cooldown=0.05))
    caplog.set_level(logging.WARNING, logger="cachelayer")
    try:
        await backend.ping()
        private_redis.stop()
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                await backend.ping()
        with pytest.raises(StoreUnavailable, match="circuit breaker is open"):
            await backend.ping()
        opened = [line for line in warnings_of(caplog) if "circuit breaker" in line]
        assert len(opened) == 1, opened
        assert opened[0].startswith(
            f"cachelayer: circuit breaker for Redis {store} opened after 2 consecutive failures "
            "(last: ConnectionError: "
        ), opened
        private_redis.start()

        async def closed() -> bool:
            return await _pings(backend) and backend.stats()["breaker_state"] == "closed"

        await eventually(closed, what="the breaker to close")
        assert any(
            line.startswith(f"cachelayer: circuit breaker for Redis {store} closed") for line in warnings_of(caplog)
        )
    finally:
        await backend.aclose()


async def _pings(backend: RedisBackend) -> bool:
    try:
        await backend.ping()
    except StoreUnavailable:
        return False
    return True


# --------------------------------------------------------------------------- loops and closing


def test_a_given_cluster_client_on_a_second_loop_raises_wrong_event_loop(
    redis_cluster: RedisClusterServer,
) -> None:
    client = RedisCluster.from_url(redis_cluster.redis_url)
    backend = RedisBackend(client, timeout=2.0, owns_client=True)
    key = f"loops:{{{uuid.uuid4().hex}}}"  # braced, as the cache's keys: a value and its tickets share a slot
    asyncio.run(backend.set(key, b"v", 60_000))

    async def second() -> None:
        try:
            with pytest.raises(WrongEventLoopError, match="factory"):
                await backend.get(key)
        finally:
            await backend.aclose()

    asyncio.run(second())


def count_named(redis_url: str, name: str) -> int:
    with redis.Redis.from_url(redis_url) as admin:
        return sum(1 for client in admin.client_list() if client.get("name") == name)


@pytest.mark.parametrize("kind", ["factory", "given"])
def test_aclose_closes_the_connections_of_every_loop(redis_url: str, kind: str) -> None:
    """Three asyncio.run() in a row, then aclose() in a fourth: no connection stays open (CLIENT LIST), and
    nothing is left for the garbage collector to warn about (a client of a closed loop cannot be awaited: its
    sockets are closed directly)."""
    name = f"cl-loops-{uuid.uuid4().hex[:8]}"
    url = f"{redis_url}?client_name={name}"
    backend = (
        RedisBackend.from_url(url, timeout=2.0)
        if kind == "factory"
        else RedisBackend(Redis.from_url(url), timeout=2.0, owns_client=True)
    )
    key = f"loops:{{{uuid.uuid4().hex}}}"  # braced, as the cache's keys: a value and its tickets share a slot

    async def use(n: int) -> None:
        await asyncio.gather(*(backend.set(f"{key}:{n}:{i}", b"v", 60_000) for i in range(4)))
        assert await backend.get(f"{key}:{n}:0") == b"v"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for n in range(3):
            asyncio.run(use(n))
        assert count_named(redis_url, name) >= 1
        asyncio.run(backend.aclose())
        gc.collect()
    assert count_named(redis_url, name) == 0
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


async def test_every_call_after_aclose_raises_cache_closed(redis_url: str) -> None:
    backend = RedisBackend.from_url(redis_url, timeout=2.0)
    await backend.ping()
    subscription = backend.subscription()
    await subscription.subscribe("contract:closed")
    await backend.aclose()
    await backend.aclose()  # twice is fine
    calls: list[Any] = [
        backend.get("k"), backend.get_many(["k"]), backend.set("k", b"v", 1000), backend.set_many([("k", b"v", 1)]),
        backend.delete("k"), backend.mark_stale(["k"], 0, b"x"), backend.clear("p:"),
        backend.begin_fill("k", "t", 1000), backend.renew_fill("k", "t", 1000), backend.end_fill("k", "t"),
        backend.fill("k", "t", b"v", 1000), backend.poll("k"), backend.tag_stamps(["t"], 1000),
        backend.invalidate_tags(["t"]),
        backend.publish("c", b"x"), backend.ping(), backend.connect(),
        subscription.subscribe("another"), subscription.next_message(0.01), subscription.ping(),
    ]
    for call in calls:
        with pytest.raises(CacheClosedError):
            await call
    with pytest.raises(CacheClosedError):
        backend.subscription()
    await subscription.aclose()  # closing what is left still works


async def test_a_closed_cluster_backend_raises_cache_closed(redis_cluster: RedisClusterServer) -> None:
    backend = RedisBackend.cluster_from_url(redis_cluster.url, timeout=2.0)
    await backend.connect()
    subscription = backend.subscription(sharded=True)
    await backend.aclose()
    for call in (backend.get("k"), backend.publish("c", b"x", sharded=True), subscription.subscribe("c")):
        with pytest.raises(CacheClosedError):
            await call
    await subscription.aclose()


# --------------------------------------------------------------------------- a cluster's first call


async def test_a_clusters_first_discovery_does_not_eat_the_first_calls_budget(
    redis_cluster: RedisClusterServer,
) -> None:
    """Without connect(), the first call discovers the topology (a connection handshake, CLUSTER SLOTS, COMMAND:
    several round trips). Through a slow link to the seed node that takes longer than a call's budget, which
    then dropped the first set; the discovery is bounded by connect_timeout instead. The nodes it finds are
    reached directly (their own addresses), so later calls are fast."""
    seed = redis_cluster.startup_nodes[0]
    async with LatencyProxy(seed[0], seed[1], latency=0.15) as proxy:
        backend = RedisBackend.cluster_from_url(proxy.url("redis+cluster"), timeout=0.25, connect_timeout=10.0)
        key = f"first:{{{uuid.uuid4().hex}}}"
        try:
            await backend.set(key, b"v", 60_000)
            assert await backend.get(key) == b"v"
            assert backend.stats()["store_errors"] == 0
            assert backend.client.discoveries == 1  # type: ignore[union-attr]
        finally:
            await backend.aclose()


async def test_concurrent_first_calls_share_one_discovery(redis_cluster: RedisClusterServer) -> None:
    backend = RedisBackend.cluster_from_url(redis_cluster.url, timeout=0.5, connect_timeout=10.0)
    try:
        keys = [f"first:{{{uuid.uuid4().hex}}}" for _ in range(20)]
        await asyncio.gather(*(backend.set(key, b"v", 60_000) for key in keys))
        assert await asyncio.gather(*(backend.get(key) for key in keys)) == [b"v"] * 20
        assert backend.client.discoveries == 1  # type: ignore[union-attr]
    finally:
        await backend.aclose()


async def test_a_failed_first_discovery_fails_open_and_names_the_cluster(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    backend = RedisBackend.cluster_from_url(f"redis+cluster://127.0.0.1:{port}", timeout=0.1)
    caplog.set_level(logging.WARNING, logger="cachelayer")
    try:
        with pytest.raises(StoreUnavailable):
            await backend.get("k")
        lines = warnings_of(caplog)
        assert len(lines) == 1, lines
        assert lines[0].startswith(
            f"cachelayer: Redis Cluster 127.0.0.1:{port} topology discovery failed, failing open: "
        ), lines
        assert backend.stats()["store_errors"] == 1
    finally:
        await backend.aclose()


# --------------------------------------------------------------------------- fills, alike on every store
#
# The fill protocol (cachelayer/_backend.py) over memory, Redis and Redis Cluster (the ``store_factory`` fixture):
# a load's ticket, the compare-and-set fill, and every invalidation's revocation, with the same answers everywhere.
# Two backends from one factory stand for two processes sharing the store.

LAYOUT = KeyLayout("contract")
KEY, OTHER = LAYOUT.value_key("k"), LAYOUT.value_key("other")
TAG, TAG2 = LAYOUT.tag_key("t"), LAYOUT.tag_key("t2")


async def test_an_exclusive_ticket_is_the_lease_and_shared_ones_run_side_by_side(
    store_factory: Callable[[], Backend],
) -> None:
    one, two = store_factory(), store_factory()
    assert await one.begin_fill(KEY, "holder", 5000) is True
    assert await two.begin_fill(KEY, "other", 5000) is False  # one loader per key across processes
    assert await one.begin_fill(KEY, "holder", 5000) is False  # even for the holder
    assert await two.begin_fill(KEY, "joiner", 5000, exclusive=False) is True  # a shared ticket joins
    assert await two.poll(KEY) == (None, True)
    assert await two.fill(KEY, "joiner", b"from the joiner", 60_000) is True
    assert await one.poll(KEY) == (b"from the joiner", True)  # the holder's ticket is still held and valid
    assert await one.fill(KEY, "holder", b"from the holder", 60_000) is True
    assert await two.poll(KEY) == (b"from the holder", False)  # the last ticket went with its fill
    assert await one.begin_fill(KEY, "next", 5000) is True  # nothing held: the lease is free again


async def test_fill_is_a_compare_and_set_on_the_token(store: Backend) -> None:
    assert await store.fill(KEY, "nobody", b"v", 60_000) is False
    assert await store.get(KEY) is None
    assert await store.begin_fill(KEY, "me", 5000) is True
    assert await store.fill(KEY, "someone else", b"v", 60_000) is False  # another token's ticket is not mine
    assert await store.poll(KEY) == (None, True)
    assert await store.fill(KEY, "me", b"v", 60_000) is True
    assert await store.poll(KEY) == (b"v", False)
    assert await store.fill(KEY, "me", b"again", 60_000) is False  # a ticket fills once


async def test_renew_and_end_only_by_the_tickets_holder(store: Backend) -> None:
    assert await store.renew_fill(KEY, "me", 5000) is False  # nothing to renew
    await store.begin_fill(KEY, "me", 5000)
    assert await store.renew_fill(KEY, "you", 5000) is False
    assert await store.renew_fill(KEY, "me", 5000) is True
    await store.end_fill(KEY, "you")  # never another load's ticket
    assert await store.poll(KEY) == (None, True)
    await store.end_fill(KEY, "me")
    assert await store.poll(KEY) == (None, False)
    assert await store.fill(KEY, "me", b"v", 60_000) is False  # an ended ticket stores nothing
    assert await store.renew_fill(KEY, "me", 5000) is False


async def test_a_lapsed_ticket_refuses_its_fill(store: Backend) -> None:
    """A loader that stops renewing (crashed, frozen, cut off) loses its ticket: its value is never stored."""
    await store.begin_fill(KEY, "silent", 50)

    async def lapsed() -> bool:
        return not (await store.poll(KEY))[1]

    await eventually(lapsed, what="the unrenewed ticket to lapse")
    assert await store.renew_fill(KEY, "silent", 5000) is False
    assert await store.fill(KEY, "silent", b"late", 60_000) is False
    assert await store.get(KEY) is None
    assert await store.begin_fill(KEY, "next", 5000) is True


@pytest.mark.parametrize("invalidation", ["delete", "mark_stale", "set", "set_many", "clear"])
async def test_every_invalidation_revokes_every_ticket_of_its_keys(
    store_factory: Callable[[], Backend], invalidation: str
) -> None:
    """What a load read before an invalidation is never stored after it: the invalidation (from another process
    here) revokes the key's tickets, exclusive and shared, in the same atomic step as its own change."""
    loader, writer = store_factory(), store_factory()
    await writer.set(KEY, b"old", 60_000)
    assert await loader.begin_fill(KEY, "lease", 5000)
    assert await loader.begin_fill(KEY, "shared", 5000, exclusive=False)
    assert await loader.begin_fill(OTHER, "elsewhere", 5000)
    if invalidation == "delete":
        assert await writer.delete(KEY) == 1
    elif invalidation == "mark_stale":
        assert await writer.mark_stale([KEY], 0, b"S") == 1
    elif invalidation == "set":
        await writer.set(KEY, b"written", 60_000)
    elif invalidation == "set_many":
        await writer.set_many([(KEY, b"written", 60_000)])
    else:
        await writer.clear("contract:{")  # covers both keys and their tickets
    expected = {"delete": None, "mark_stale": b"Sld", "set": b"written", "set_many": b"written", "clear": None}
    assert await loader.poll(KEY) == (expected[invalidation], False)
    for token in ("lease", "shared"):
        assert await loader.renew_fill(KEY, token, 5000) is False
        assert await loader.fill(KEY, token, b"read before the invalidation", 60_000) is False
    assert await loader.get(KEY) == expected[invalidation]  # what the invalidation left stands
    # A load that begins after the invalidation stores as usual; other keys' tickets were not touched (clear's
    # prefix covered both, so there the other key's ticket went too).
    assert await loader.begin_fill(KEY, "after", 5000)
    assert await loader.fill(KEY, "after", b"fresh", 60_000) is True
    assert await loader.fill(OTHER, "elsewhere", b"v", 60_000) is (invalidation != "clear")


async def test_delete_counts_values_and_revokes_tickets_without_one(store: Backend) -> None:
    await store.set(KEY, b"v", 60_000)
    await store.begin_fill(OTHER, "me", 5000)  # a load of a key that has no value yet
    assert await store.delete(KEY, OTHER, LAYOUT.value_key("missing")) == 1
    assert await store.poll(OTHER) == (None, False)
    assert await store.fill(OTHER, "me", b"v", 60_000) is False
    assert await store.delete() == 0


async def test_a_fill_is_refused_when_a_tag_was_invalidated_after_its_stamps_were_read(
    store_factory: Callable[[], Backend],
) -> None:
    """The stamps come before the load reads its source; a tag invalidation after that changes one, and the fill
    that carries the old stamp is refused (on a cluster: answered False, what it wrote refused by readers)."""
    loader, invalidator = store_factory(), store_factory()
    stamps = await loader.tag_stamps([TAG, TAG2], 60_000)
    assert len(stamps) == 2
    assert all(len(stamp) == 16 for stamp in stamps)
    assert stamps[0] != stamps[1]
    assert await loader.begin_fill(KEY, "me", 5000)
    assert await invalidator.invalidate_tags([TAG]) == 1
    assert await loader.fill(KEY, "me", b"read before", 60_000, [TAG, TAG2], stamps) is False
    # A load that begins after the invalidation reads the new stamp and stores.
    fresh = await loader.tag_stamps([TAG, TAG2], 60_000)
    assert fresh[0] != stamps[0]
    assert fresh[1] == stamps[1]
    assert await loader.begin_fill(KEY, "after", 5000)
    assert await loader.fill(KEY, "after", b"read after", 60_000, [TAG, TAG2], fresh) is True
    assert await loader.get(KEY) == b"read after"


async def test_a_stamp_is_made_once_and_kept_for_the_longest_life_asked(store: Backend) -> None:
    [first] = await store.tag_stamps([TAG], 60_000)
    assert await store.tag_stamps([TAG], 30) == [first]  # a shorter life does not cut the 60 s short
    assert await store.get_many([TAG]) == [first]
    sentinel = "sentinel:{t}"
    await store.set(sentinel, b"v", 30)

    async def sentinel_expired() -> bool:
        return await store.get(sentinel) is None

    await eventually(sentinel_expired, what="a 30 ms value to expire")
    assert await store.get_many([TAG]) == [first]


async def test_invalidating_a_tag_replaces_its_stamp_and_never_creates_one(store: Backend) -> None:
    [first] = await store.tag_stamps([TAG], 60_000)
    assert await store.invalidate_tags([TAG, TAG2]) == 1  # TAG2 has no stamp: nothing it stamped can be live
    assert await store.get_many([TAG2]) == [None]
    [deleted] = await store.get_many([TAG])
    assert deleted is not None
    assert deleted[:8] != first[:8]
    assert await store.invalidate_tags([TAG], mark_stale=True) == 1
    [marked] = await store.get_many([TAG])
    assert marked is not None
    assert marked[:8] == deleted[:8]
    assert marked[8:] != deleted[8:]
    assert await store.invalidate_tags([]) == 0


async def test_an_evicted_stamp_is_made_anew_never_the_old_one(store: Backend) -> None:
    """A stamp that is gone (evicted, expired, cleared) comes back as a new random one: an entry stamped before can
    never look live again (the "missing counts as the initial generation" mistake)."""
    [first] = await store.tag_stamps([TAG], 60_000)
    await store.clear(TAG)
    [second] = await store.tag_stamps([TAG], 60_000)
    assert second != first


# -- the clients a URL makes ------------------------------------------------------------------------------------


async def test_connections_share_one_driver_info_unless_the_url_names_its_own(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-py would read its version from the package's metadata for every new connection (0.5 ms each, 2.7 ms
    # the first in a process); ours states the package's version without reading it.
    from cachelayer._redis_urls import _driver_info, driver_options

    def read_metadata() -> str:
        raise AssertionError("the driver info read redis-py's package metadata")

    monkeypatch.setattr("redis.utils.get_lib_version", read_metadata)
    assert _driver_info.__wrapped__().lib_version == redis.__version__
    shared = driver_options(redis_url)["driver_info"]
    assert driver_options(redis_url + "?protocol=3")["driver_info"] is shared
    assert driver_options(redis_url + "?lib_name=mine") == {}
    assert driver_options(redis_url + "?lib_version=1.0") == {}
    backend = RedisBackend.from_url(redis_url)
    try:
        await backend.connect()
        assert backend.client.connection_pool.connection_kwargs["driver_info"] is shared
        assert await backend.get(f"driver-{uuid.uuid4().hex}") is None
    finally:
        await backend.aclose()
