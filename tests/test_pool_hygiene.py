"""Is a pooled connection released after each command, whatever happens to the command?

A storm of concurrent cache operations on one bounded ``QueueAwarePool`` (as ``Cache.from_url`` builds it)
against the machine's Redis (DB 15), with every way a call can end badly mixed in: callers cancelled mid-flight,
budgets that run out mid-command (a tiny cache ``timeout``, and a ``LatencyProxy`` slower than the budget),
loaders that raise, and Redis command errors (WRONGTYPE). Then:

- the pool's in-use count is back to zero (no connection was leaked by any of those paths);
- a sampler running ``CLIENT LIST`` during the storm never saw more of our connections than ``max_connections``;
- no caller ever saw a Redis error (fail-open), only its own cancellation or its loader's exception;
- every connection left in the pool answers the command it was given, not an earlier one's reply
  (a connection abandoned mid-reply and handed out again would return the previous command's answer).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import redis.asyncio
from redis.asyncio import BlockingConnectionPool, Redis

from cachelayer import Cache, CircuitBreaker, LoadFailedError, StampedePolicy
from cachelayer._redis_clients import QueueAwarePool
from harness import LatencyProxy
from tests._doubles import LoaderFailed

MAX_CONNECTIONS = 12
OPERATIONS = 8000
IN_FLIGHT = 400  # tasks alive at once: far more than the pool holds, so callers queue for connections


def in_use(pool: BlockingConnectionPool) -> int:
    # get_connection_count() is public in redis-py 8.1: [(idle, attrs), (in_use, attrs)]. Fall back to the
    # private set if a later version changes the shape.
    counts = pool.get_connection_count()
    if len(counts) == 2:
        return int(counts[1][0])
    return len(pool._in_use_connections)  # private attribute, only as a fallback


def idle(pool: BlockingConnectionPool) -> int:
    return int(pool.get_connection_count()[0][0])


async def count_ours(admin: redis.asyncio.Redis, name: str) -> int:
    clients = await admin.client_list()
    return sum(1 for client in clients if client.get("name") == name)


class Sampler:
    """Counts our connections in CLIENT LIST every few milliseconds while the storm runs.

    Stopped by a flag, not by cancelling it: on Python 3.11 a cancellation can be swallowed inside redis-py's
    send (asyncio.wait_for, see test_failopen.py), and a loop that lost its cancellation would run forever."""

    def __init__(self, admin: redis.asyncio.Redis, name: str) -> None:
        self.admin = admin
        self.name = name
        self.samples: list[int] = []
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stopping:
            self.samples.append(await count_ours(self.admin, self.name))
            await asyncio.sleep(0.01)  # the sampling period (work paced, not a wait for an event)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is None or self._task.done():
            return
        self._stopping = True
        await stop_task(self._task)


async def stop_task(task: asyncio.Task[None]) -> None:
    """Wait for a flag-stopped task; cancel it (repeatedly, if a cancellation gets lost) only if it lingers."""
    done, _ = await asyncio.wait({task}, timeout=5.0)
    while not done:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


@pytest_asyncio.fixture
async def admin(redis_client: redis.asyncio.Redis) -> redis.asyncio.Redis:
    return redis_client  # DB 15, flushed; its own pool, connections not named like ours


async def storm(
    pool: BlockingConnectionPool, admin: Redis, caches: list[Cache], *, seed: int
) -> tuple[dict[str, int], list[BaseException]]:
    """Run OPERATIONS random cache operations over ``caches`` (which share ``pool``); cancel a random subset."""
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    unexpected: list[BaseException] = []
    slots = asyncio.Semaphore(IN_FLIGHT)
    loop = asyncio.get_running_loop()

    async def loader_ok(i: int) -> dict[str, Any]:
        await asyncio.sleep(rng.random() * 0.003)  # stands for the load's work
        return {"i": i, "pad": "x" * rng.randrange(0, 2000)}  # some values big enough to be compressed

    async def loader_raises(i: int) -> Any:
        await asyncio.sleep(rng.random() * 0.002)  # stands for the load's work before it fails
        raise LoaderFailed(i)

    async def operation(i: int) -> None:
        cache = caches[i % len(caches)]
        kind = rng.randrange(9)
        if kind == 0:
            await cache.get(f"hot-{i % 50}")
        elif kind == 1:
            await cache.get_or_set(f"hot-{i % 50}", lambda: loader_ok(i))  # mostly hits after warm-up
        elif kind == 2:
            await cache.get_or_set(f"miss-{i}", lambda: loader_ok(i))  # a miss: lease, load, set, release
        elif kind == 3:
            await cache.get_or_set(f"fail-{i % 20}", lambda: loader_raises(i))  # LoaderFailed reaches us
        elif kind == 4:
            await cache.set(f"hot-{i % 50}", {"i": i}, tags=[f"t{i % 5}"])  # a pipeline (SET + SADD + EXPIRE)
        elif kind == 5:
            await cache.get("wrongtype")  # GET on a list: WRONGTYPE, a Redis command error
        elif kind == 6:
            await cache.get_many([f"hot-{j}" for j in range(i % 50, i % 50 + 5)])
        elif kind == 7:
            await cache.delete(f"miss-{i - 7}")
        else:
            await cache.get_or_set("wrongtype", lambda: loader_ok(i))  # WRONGTYPE on GET; the SET replaces it

    async def run(i: int) -> None:
        async with slots:
            task = asyncio.create_task(operation(i))
            if rng.random() < 0.2:  # cancel one in five somewhere in its flight
                loop.call_later(rng.random() * 0.01, task.cancel)
            try:
                await task
                outcome = "ok"
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
                outcome = "cancelled"
            except LoaderFailed:
                outcome = "loader_failed"
            except LoadFailedError as exc:  # another cache's load of the key failed: its LoaderFailed, told to us
                if not exc.error_type.endswith(".LoaderFailed"):
                    unexpected.append(exc)
                outcome = "loader_failed"
            except BaseException as exc:  # a Redis error reaching a caller: the cache did not fail open
                unexpected.append(exc)
                outcome = type(exc).__name__
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    # Keep a list under the key the cache will GET: every GET of it is a WRONGTYPE error from Redis. Re-created
    # during the storm, because a get_or_set on it stores a value there (SET overwrites any type).
    stopping = False

    async def keep_wrongtype() -> None:
        key = caches[0].key("wrongtype")
        while not stopping:
            # The admin client (its own pool): the storm's pool is saturated by design, and the helper that keeps
            # the list must not queue behind it (it did, on a loaded machine: "No connection available").
            async with admin.pipeline(transaction=True) as pipe:
                pipe.delete(key).rpush(key, "a", "b")
                await pipe.execute()
            await asyncio.sleep(0.005)  # the re-creation period (work paced, not a wait for an event)

    wrongtype = asyncio.create_task(keep_wrongtype())
    try:
        await asyncio.gather(*(run(i) for i in range(OPERATIONS)))
    finally:
        stopping = True
        await stop_task(wrongtype)
    return outcomes, unexpected


async def assert_no_desync(client: Redis, pool: BlockingConnectionPool, prefix: str) -> None:
    """Distinct commands on every connection the pool holds, concurrently: each reply must be its own.

    ECHO answers with the request's own payload whatever else happens to DB 15 (other test
    sessions flush it); a GET must return this pair's value or nothing, never another pair's value."""

    async def pair(i: int) -> None:
        token = f"{i}-{uuid.uuid4().hex}"
        assert await client.echo(f"echo-{token}") == f"echo-{token}".encode()
        assert await client.echo(f"again-{token}") == f"again-{token}".encode()
        key, value = f"{prefix}:sync:{i}", f"value-{token}"
        assert await client.set(key, value, ex=60) is True
        assert await client.get(key) in (value.encode(), None)

    async with asyncio.TaskGroup() as group:  # one failure cancels the rest: nothing left running
        for i in range(MAX_CONNECTIONS * 20):
            group.create_task(pair(i))


def task_report() -> str:
    """Where every other task of this loop is waiting: the diagnosis when something does not finish."""
    lines = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        frames, coro = [], task.get_coro()
        while coro is not None and hasattr(coro, "cr_frame"):
            if coro.cr_frame is not None:
                frames.append(f"{coro.cr_code.co_name}:{coro.cr_frame.f_lineno}")
            coro = coro.cr_await
        lines.append(" > ".join(frames))
    return "\n".join(sorted(lines)[:20])


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "socket_timeout",
    [
        pytest.param(None, id="no-socket-timeout"),  # as docs/operations.md recommends (see test_failopen.py)
        pytest.param(5.0, id="redis-py-default-5s"),  # what Cache.from_url builds today
    ],
)
async def test_every_connection_is_released_after_a_storm(
    redis_url: str, admin: redis.asyncio.Redis, socket_timeout: float | None
) -> None:
    name = f"cl-hygiene-{uuid.uuid4().hex[:10]}"
    # The cache's pool as Cache.from_url builds it (QueueAwarePool: idle connections taken without redis-py's
    # condition), bounded, blocking with a wait timeout, our own CLIENT SETNAME to count connections by.
    pool = QueueAwarePool.from_url(
        redis_url, max_connections=MAX_CONNECTIONS, timeout=2.0, client_name=name, socket_timeout=socket_timeout
    )
    client = Redis.from_pool(pool)
    namespace = f"t-hygiene-{uuid.uuid4().hex[:8]}"
    never_open = CircuitBreaker(failure_threshold=10**9)  # every call really goes to the pool
    # Three caches on one pool, one namespace: a comfortable budget, a budget that runs out mid-command on a
    # loaded loop, and a short lease wait so lease waits and lease timeouts happen too.
    caches = [
        Cache(client, namespace=namespace, timeout=1.0, breaker=never_open),
        Cache(client, namespace=namespace, timeout=0.0005, breaker=CircuitBreaker(failure_threshold=10**9)),
        Cache(client, namespace=namespace, timeout=0.5, breaker=CircuitBreaker(failure_threshold=10**9),
              stampede=StampedePolicy(lease_wait=0.01, lease_ttl=0.5)),
    ]
    sampler = Sampler(admin, name)
    try:
        assert await client.ping()
        sampler.start()
        started = time.monotonic()
        try:
            # A storm takes ~7 s here; a hang becomes a failure that says where every task waits.
            async with asyncio.timeout(60):
                outcomes, unexpected = await storm(pool, admin, caches, seed=20240601)
                elapsed = time.monotonic() - started
                for cache in caches:  # background refreshes (XFetch, stale-while-revalidate) finish too
                    await cache.aclose()
        except TimeoutError:
            pytest.fail(f"the storm did not finish within 60 s; tasks still waiting:\n{task_report()}")
        await sampler.stop()

        assert unexpected == [], f"Redis errors reached callers: {unexpected[:3]!r}"
        assert sum(outcomes.values()) == OPERATIONS
        assert outcomes.get("cancelled", 0) > 100, outcomes
        assert outcomes.get("loader_failed", 0) > 100, outcomes
        assert outcomes.get("ok", 0) > OPERATIONS // 2, outcomes
        redis_errors = sum(cache.stats()["store_errors"] for cache in caches)
        assert redis_errors > 100  # WRONGTYPE replies and budget overruns happened, and were absorbed
        assert caches[1].stats()["store_errors"] > 0  # the tiny budget really ran out mid-command

        # Released: nothing in use, nothing beyond the bound.
        assert in_use(pool) == 0
        assert idle(pool) <= MAX_CONNECTIONS
        assert sampler.samples, "the sampler never ran"
        assert max(sampler.samples) <= MAX_CONNECTIONS, max(sampler.samples)
        assert max(sampler.samples) > 1  # it did see the storm's connections
        assert await count_ours(admin, name) <= MAX_CONNECTIONS

        # No connection hands out a previous command's reply.
        await assert_no_desync(client, pool, namespace)
        assert in_use(pool) == 0
        print(f"\nstorm: {OPERATIONS} operations in {elapsed:.1f}s, outcomes {outcomes}, "
              f"redis_errors {redis_errors}, max connections seen {max(sampler.samples)}")
    finally:
        await sampler.stop()
        await client.aclose()


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_connections_are_released_when_every_reply_is_late(
    redis_url: str, admin: redis.asyncio.Redis
) -> None:
    """Through a proxy whose latency exceeds the budget, every command is abandoned mid-reply. Each such
    connection must be closed (not returned with an unread reply) and the pool must end empty-handed."""
    name = f"cl-hygiene-late-{uuid.uuid4().hex[:8]}"
    parts = urlsplit(redis_url)
    async with LatencyProxy(parts.hostname or "127.0.0.1", parts.port or 6379, latency=0.0) as proxy:
        pool = QueueAwarePool.from_url(
            proxy.url("redis", parts.path or "/15"), max_connections=MAX_CONNECTIONS, timeout=2.0, client_name=name,
            socket_timeout=None,
        )
        client = Redis.from_pool(pool)
        cache = Cache(client, namespace=f"t-late-{uuid.uuid4().hex[:8]}", timeout=0.05,
                      breaker=CircuitBreaker(failure_threshold=10**9))
        sampler = Sampler(admin, name)
        try:
            await cache.set("k", {"v": 1})
            assert await client.echo("through the proxy") == b"through the proxy"
            sampler.start()
            proxy.latency = 0.1  # a reply takes 0.2 s; the budget is 0.05 s
            rng = random.Random(7)

            async def op(i: int) -> Any:
                if rng.random() < 0.5:
                    return await cache.get("k", default="late")
                return await cache.get_or_set(f"m{i}", lambda: _value(i))

            tasks = [asyncio.create_task(op(i)) for i in range(600)]
            for task in rng.sample(tasks, 100):
                asyncio.get_running_loop().call_later(rng.random() * 0.05, task.cancel)
            results = await asyncio.gather(*tasks, return_exceptions=True)
            await sampler.stop()
            leaked = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
            assert leaked == []
            stats = cache.stats()
            # The budget cut calls off again and again: on the wire, a pool's worth at a time (late ones, on a
            # starved machine, are counted apart), the others while they queued for a connection.
            on_the_wire = stats["store_errors"] + stats["store_late_timeouts"]
            assert on_the_wire >= MAX_CONNECTIONS, stats
            assert on_the_wire + stats["store_queue_timeouts"] > 300, stats
            assert in_use(pool) == 0
            assert max(sampler.samples) <= MAX_CONNECTIONS

            proxy.latency = 0.0
            # Our value, or nothing if another session flushed DB 15 meanwhile; never some earlier command's reply.
            assert await cache.get("k", default="gone") in ({"v": 1}, "gone")
            await assert_no_desync(client, pool, cache.namespace)
            assert in_use(pool) == 0
        finally:
            await sampler.stop()
            await cache.aclose()
            await client.aclose()


async def _value(i: int) -> dict[str, int]:
    return {"i": i}
