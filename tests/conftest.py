"""Shared fixtures: where the services are, and private servers for tests that break them.

Services (``make up`` / ``scripts/devstack up`` starts the ones that are not running):

=================  ===========================================  =====================================
fixture            what                                         override
=================  ===========================================  =====================================
``redis_url``      machine Redis, **DB 15** (never DB 0, which  ``CACHELAYER_TEST_REDIS_URL``
                   the demo uses): ``redis://127.0.0.1:6379/15``
``redis_client``   ``redis.asyncio.Redis`` on ``redis_url``,
                   DB flushed before each test, closed after
``mysql_settings`` MariaDB 127.0.0.1:3306, root, empty password, ``CACHELAYER_TEST_MYSQL_HOST``,
                   database ``cachelayer_test`` (created)        ``..._PORT``, ``..._USER``,
                                                                ``..._PASSWORD``, ``..._DATABASE``
``mysql_dsn``      the same as ``mysql://root:@127.0.0.1:3306/cachelayer_test``
``mongo_uri``      a SecantusDB **started for the session** on   ``CACHELAYER_TEST_MONGO_URI`` (then
                   a free port, in memory; database name in      nothing is started)
                   ``mongo_db_name`` (``cachelayer_test``)
``private_redis``  a :class:`RedisServer` of the test's own:
                   stop/kill/start/pause it at will
``redis_cluster``  a private 3 masters + 3 replicas Redis
                   Cluster **started for the session** on free
                   loopback ports (``harness/cluster.py``)
``store``          a fresh, empty :class:`cachelayer.Backend`,
                   parametrized: ``memory``, ``redis`` (DB 15),
                   ``cluster``: the cache-semantics tests run
                   over each
=================  ===========================================  =====================================

A service that does not answer skips the test on a developer machine and fails it in CI
(``CI=true``): see ``harness/services.py:require_service``. So does a private server whose program
is missing (:class:`harness.ServerUnavailable`, raised in a test or a fixture: the hooks below).
The servers, proxies and the cluster are the repository's ``harness`` package, which pytest
imports from the repository root (``pythonpath = ["."]`` in pyproject.toml).

Session fixtures are synchronous on purpose: pytest-asyncio gives each test its own event loop
(``asyncio_default_fixture_loop_scope = "function"``), so anything holding connections bound
to a loop (``redis_client``) is function-scoped.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import redis.asyncio

from cachelayer import Backend, MemoryBackend, RedisBackend
from harness import CACHE_CLUSTER_ARGS, RedisClusterServer, RedisServer, SecantusServer, ServerUnavailable
from harness.services import MySQLSettings, cluster_or_skip, in_ci, require_service, skip_or_fail

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
TEST_DB_NAME = "cachelayer_test"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    except ServerUnavailable as exc:
        skip_or_fail(str(exc))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    except ServerUnavailable as exc:
        skip_or_fail(str(exc))


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the Redis the tests use: the machine's, database 15 (env: CACHELAYER_TEST_REDIS_URL).

    Database 0 is refused, because ``redis_client`` flushes the database before each test.
    """
    url = os.environ.get("CACHELAYER_TEST_REDIS_URL") or DEFAULT_REDIS_URL
    parts = urlsplit(url)
    db = int((parts.path or "/0").lstrip("/") or 0)
    if db == 0:
        pytest.fail(f"refusing to use Redis database 0 for tests ({url}): tests flush their database")
    require_service("redis", parts.hostname or "127.0.0.1", parts.port or 6379)
    return url


@pytest_asyncio.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A ``redis.asyncio.Redis`` on ``redis_url`` (DB 15), emptied before the test, closed after.

    Its pool is a bounded ``BlockingConnectionPool`` (20 connections, 5 s wait), so a test that
    leaks connections blocks and fails instead of opening thousands.
    """
    pool = redis.asyncio.BlockingConnectionPool.from_url(redis_url, max_connections=20, timeout=5)
    client = redis.asyncio.Redis.from_pool(pool)  # the client owns the pool: aclose() closes both
    try:
        await client.flushdb()
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` of this test's own on a free port (``.url``, ``.port``, ``.stop()``,
    ``.kill()``, ``.start()``, ``.pause(s)``, ``.suspended()``), stopped at teardown even when
    the test fails. Use it, never the machine's Redis, for tests that stop or freeze Redis."""
    server = RedisServer(tmp_path / "private-redis")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """A private 3+3 Redis Cluster for the session (fails in CI, skips elsewhere, without cluster support).
    DB 0 only: the ``store`` fixture empties every master before each test. Tests that kill or freeze nodes
    start a cluster of their own (``tests/test_redis_cluster.py``)."""
    server = cluster_or_skip(workdir=tmp_path_factory.mktemp("redis-cluster"), extra_args=CACHE_CLUSTER_ARGS)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterServer]:
    """A 3+3 cluster of this test's own, which it may break (SIGKILL or freeze a master); stopped by PID."""
    server = cluster_or_skip(workdir=tmp_path / "cluster", extra_args=CACHE_CLUSTER_ARGS)
    try:
        yield server
    finally:
        server.close()


STORES = ["memory", "redis", "cluster"]
StoreFactory = Callable[[], Backend]
# The semantics tests are about what a cache keeps, not about budgets (tests/test_failopen.py and
# tests/test_pool_queue.py are): a budget no healthy store misses, even beside a CPU hog on two cores (a 1 s
# budget once dropped a value written to the cluster there, failing a round trip).
STORE_BUDGET = 5.0


@pytest_asyncio.fixture(params=STORES)
async def store_factory(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """Makes backends on one empty store of each kind (``memory``, ``redis`` DB 15, ``cluster``): two calls give
    two "processes" sharing the store (for memory, one shared in-process store). All closed after the test."""
    made: list[Backend] = []
    if request.param == "memory":
        shared = MemoryBackend()

        def make() -> Backend:
            return shared
    elif request.param == "redis":
        redis_url: str = request.getfixturevalue("redis_url")  # DB 15
        admin = redis.asyncio.Redis.from_url(redis_url)
        await admin.flushdb()
        await admin.aclose()

        def make() -> Backend:
            return RedisBackend.from_url(redis_url, max_connections=32, timeout=STORE_BUDGET)
    else:
        cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")

        def make() -> Backend:
            return RedisBackend.cluster_from_url(
                cluster.url, max_connections=32, pool_timeout=STORE_BUDGET, timeout=STORE_BUDGET
            )

        first = make()
        await first.connect()
        client = first.client  # type: ignore[attr-defined]
        await client.flushall(target_nodes=client.PRIMARIES)
        made.append(first)

    def factory() -> Backend:
        backend = make()
        made.append(backend)
        return backend

    try:
        yield factory
    finally:
        for backend in made:
            await backend.aclose()


@pytest.fixture
def store(store_factory: StoreFactory) -> Backend:
    """An empty backend of each kind: the cache-semantics tests run over all three."""
    return store_factory()


# --------------------------------------------------------------------------- MariaDB


@pytest.fixture(scope="session")
def mysql_settings() -> MySQLSettings:
    """The machine's MariaDB with database ``cachelayer_test`` (created if missing)."""
    settings = MySQLSettings(
        host=os.environ.get("CACHELAYER_TEST_MYSQL_HOST", "127.0.0.1"),
        port=int(os.environ.get("CACHELAYER_TEST_MYSQL_PORT", "3306")),
        user=os.environ.get("CACHELAYER_TEST_MYSQL_USER", "root"),
        password=os.environ.get("CACHELAYER_TEST_MYSQL_PASSWORD", ""),
        database=os.environ.get("CACHELAYER_TEST_MYSQL_DATABASE", TEST_DB_NAME),
    )
    require_service("mariadb", settings.host, settings.port)
    import pymysql  # type: ignore[import-untyped]  # aiomysql's dependency; imported here, not at the top

    try:
        conn = pymysql.connect(host=settings.host, port=settings.port, user=settings.user,
                               password=settings.password, connect_timeout=10)
    except pymysql.MySQLError as exc:
        skip_or_fail(f"cannot log in to MariaDB at {settings.host}:{settings.port} as {settings.user}: {exc}")
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{settings.database}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    return settings


@pytest.fixture(scope="session")
def mysql_dsn(mysql_settings: MySQLSettings) -> str:
    """``mysql://root:@127.0.0.1:3306/cachelayer_test``."""
    return mysql_settings.dsn


# --------------------------------------------------------------------------- MongoDB wire (SecantusDB)


@pytest.fixture(scope="session")
def secantus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecantusServer | None]:
    """The session's own SecantusDB (in memory, free port); None if CACHELAYER_TEST_MONGO_URI is set."""
    if os.environ.get("CACHELAYER_TEST_MONGO_URI"):
        yield None
        return
    server = SecantusServer(tmp_path_factory.mktemp("secantus"), storage=":memory:")
    try:
        server.start()
    except RuntimeError as exc:
        server.close()
        skip_or_fail(str(exc))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def mongo_uri(secantus_server: SecantusServer | None) -> str:
    """``mongodb://127.0.0.1:PORT/`` of the session's SecantusDB (or CACHELAYER_TEST_MONGO_URI)."""
    if secantus_server is None:
        uri = os.environ["CACHELAYER_TEST_MONGO_URI"]
        parts = urlsplit(uri)
        require_service("mongo", parts.hostname or "127.0.0.1", parts.port or 27017)
        return uri
    return secantus_server.uri


@pytest.fixture(scope="session")
def mongo_db_name() -> str:
    """The database tests use on ``mongo_uri``: ``cachelayer_test``."""
    return TEST_DB_NAME


def pytest_report_header(config: pytest.Config) -> str:
    return f"cachelayer tests: CI={'yes (missing services fail)' if in_ci() else 'no (missing services skip)'}"
