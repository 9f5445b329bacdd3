"""Stampede protection: the pieces the cache composes so that a cold or expiring key costs one load.

- :class:`SingleFlight` — in one process, concurrent callers for a key share one load.
- the lease (``_lease.py``) — across processes, one loader per key; the others wait a bounded time, woken when
  the value lands, polling with backoff as a safety net.
- :func:`xfetch_due` — probabilistic early recompute (Vattani, Chierichetti, Lowenstein, VLDB 2015).
- stale-while-revalidate / stale-if-error — values outlive their logical expiry by ``stale_ttl``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

__all__ = ["ReadCoalescer", "SingleFlight", "StampedePolicy", "backoff_delays", "jittered", "xfetch_due"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StampedePolicy:
    """Which stampede defences are on, and their knobs. Every one is on by default.

    ``lease_wait`` bounds how long a process waits for another's load; when it runs out the caller gets the stale
    value if there is one, else ``on_lease_timeout`` decides: ``"load"`` (load anyway) or ``"raise"``
    (:class:`LeaseTimeoutError`). ``lease_ttl`` is how long a lease lives without renewal; a running loader renews
    it every third of that, so the lease of a loader that crashed, froze or lost the store lapses within
    ``lease_ttl`` (0.9 s: with one poll interval, a waiter in another process takes over within 1 s): nobody
    waits out ``lease_wait`` for an orphaned lease. Waiters are woken by
    pub/sub the moment the value lands (``wake="pubsub"``) and poll with backoff from ``poll_initial`` to
    ``poll_max`` as a safety net; ``wake="poll"`` polls only.
    """

    single_flight: bool = True
    lease: bool = True
    lease_ttl: float = 0.9
    lease_wait: float = 5.0
    on_lease_timeout: Literal["load", "raise"] = "load"
    wake: Literal["pubsub", "poll"] = "pubsub"
    poll_initial: float = 0.005
    poll_max: float = 0.05
    xfetch: bool = True
    xfetch_beta: float = 1.0
    stale_while_revalidate: bool = True
    stale_if_error: bool = True

    def __post_init__(self) -> None:
        if self.lease_ttl <= 0 or self.lease_wait < 0:
            raise ValueError("lease_ttl must be positive and lease_wait non-negative")
        if self.wake not in ("pubsub", "poll"):
            raise ValueError("wake must be 'pubsub' or 'poll'")
        if self.on_lease_timeout not in ("load", "raise"):
            raise ValueError("on_lease_timeout must be 'load' or 'raise'")
        if not 0 < self.poll_initial <= self.poll_max:
            raise ValueError("need 0 < poll_initial <= poll_max")
        if self.xfetch_beta < 0:
            raise ValueError("xfetch_beta must be non-negative")


def xfetch_due(now: float, expires_at: float, delta: float, beta: float, rand: float) -> bool:
    """XFetch: recompute early when ``now - delta * beta * ln(rand) >= expires_at``, ``rand`` in (0, 1].

    The closer to expiry and the slower the value is to compute (``delta``), the likelier a reader is to
    refresh it; with ``beta`` 1 the expected number of early refreshes per expiry stays near one.
    """
    if delta <= 0 or beta <= 0:
        return False
    return now - delta * beta * math.log(max(rand, 1e-300)) >= expires_at


def jittered(ttl: float, jitter: float, rand: float) -> float:
    """``ttl`` spread uniformly over ``ttl * (1 +- jitter)``, ``rand`` in [0, 1)."""
    return ttl * (1.0 + jitter * (2.0 * rand - 1.0))


def backoff_delays(initial: float, maximum: float, factor: float = 1.6) -> Iterator[float]:
    delay = initial
    while True:
        yield delay
        delay = min(delay * factor, maximum)


class SingleFlight(Generic[T]):
    """Concurrent callers with one key share one running call.

    The call runs in its own task, so a caller that is cancelled stops waiting without cancelling the work the
    others are waiting for.
    """

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def running(self, key: str) -> bool:
        return key in self._flights

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        task = self._flights.get(key)
        if task is None:
            task = self.start(key, work)
        return await asyncio.shield(task)

    def joinable(self, key: str) -> asyncio.Task[T] | None:
        """The running call for ``key``, if any: a caller may wait for it (``await asyncio.shield(task)``)."""
        return self._flights.get(key)

    def start(self, key: str, work: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """Start ``work`` under ``key`` unless it already runs; return the running task either way."""
        task = self._flights.get(key)
        if task is not None:
            return task

        async def call() -> T:
            return await work()

        task = asyncio.create_task(call(), name=f"cachelayer-load:{key}")
        self._flights[key] = task
        task.add_done_callback(lambda t: self._finished(key, t))
        return task

    def _finished(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # mark it retrieved: every waiter may have gone away


class _LeaderGone(Exception):
    """The caller doing a coalesced read was cancelled before it finished: followers read for themselves."""


class ReadCoalescer:
    """Concurrent reads of one key share one Redis round trip.

    Under a burst (10,000 clients asking for one hot page) this turns thousands of GETs queued on the connection
    pool into one, so the reads neither exhaust the pool nor run out of their time budget. The first caller does
    the read itself (no extra task on the hot path) and hands the bytes to whoever asked meanwhile.
    """

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[Any]] = {}

    async def read(self, key: str, read: Callable[[], Awaitable[T]]) -> T:
        pending = self._pending.get(key)
        if pending is not None:
            try:
                result: T = await asyncio.shield(pending)
                return result
            except _LeaderGone:
                return await read()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = await read()
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else _LeaderGone())
            future.exception()  # retrieved: there may be no follower to do it
            raise
        finally:
            del self._pending[key]
        future.set_result(value)
        return value
