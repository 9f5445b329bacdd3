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
from typing import Any, Final, Generic, Literal, TypeVar

from ._backoff import Backoff, ExponentialBackoff

__all__ = ["XFETCH_HORIZON", "SingleFlight", "StampedePolicy", "jittered", "xfetch_due"]

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
    ``poll_max`` as a safety net (``poll_backoff`` replaces that schedule); ``wake="poll"`` polls only.
    ``share_failures``: when the load a process waits for fails, its waiters hear of it (with ``wake="pubsub"``)
    and get the stale value or :class:`LoadFailedError` at once, instead of each taking the lease and loading in
    turn (under a database outage, N processes' waits would add up to N loader timeouts); False: they load.
    A caller's deadline (:func:`cachelayer.time_budget`) bounds its wait below ``lease_wait``.
    """

    single_flight: bool = True
    lease: bool = True
    lease_ttl: float = 0.9
    lease_wait: float = 5.0
    on_lease_timeout: Literal["load", "raise"] = "load"
    wake: Literal["pubsub", "poll"] = "pubsub"
    share_failures: bool = True
    poll_initial: float = 0.005
    poll_max: float = 0.05
    poll_backoff: Backoff | None = None
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

    def poll_delays(self) -> Iterator[float]:
        """The delays between a lease waiter's polls."""
        backoff = self.poll_backoff or ExponentialBackoff(self.poll_initial, self.poll_max, factor=1.6)
        return backoff.delays()


XFETCH_HORIZON: Final = 691.0
"""How far ahead of expiry XFetch can fire, in units of ``delta * beta``: ``-ln(1e-300)``, rounded up. A hit
further from expiry than that skips the random draw and the logarithm."""


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


class _Flight(Generic[T]):
    __slots__ = ("labels", "leader", "task", "waiters")

    def __init__(self, task: asyncio.Task[T], leader: object, labels: tuple[str, ...]) -> None:
        self.task = task
        self.leader = leader
        self.labels = labels
        self.waiters: list[asyncio.Future[T]] = []


class SingleFlight(Generic[T]):
    """Concurrent callers with one key share one running call.

    The call runs in its own task, and each caller waits on a future of its own (:meth:`wait`), so a caller that
    is cancelled stops waiting without cancelling the work the others are waiting for. One future per caller,
    resolved from one done-callback, costs each caller one wake-up; ``asyncio.shield`` per caller cost two.
    """

    def __init__(self) -> None:
        self._flights: dict[str, _Flight[T]] = {}
        self._running: set[asyncio.Task[T]] = set()  # detached calls included

    def __len__(self) -> int:
        return len(self._running)

    def running(self, key: str) -> bool:
        return key in self._flights

    def tasks(self) -> list[asyncio.Task[T]]:
        """The calls running now (detached ones included)."""
        return list(self._running)

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        if key not in self._flights:
            self.start(key, work)
        return await self.wait(key)

    def wait(self, key: str) -> asyncio.Future[T]:
        """A future of the running call's result (``running(key)`` must be true), this caller's own."""
        flight = self._flights[key]
        future: asyncio.Future[T] = flight.task.get_loop().create_future()
        flight.waiters.append(future)
        return future

    def adopt(self, key: str, waiters: list[asyncio.Future[T]]) -> bool:
        """Resolve ``waiters`` with the running call of ``key`` as if each had called :meth:`wait`; False when no
        call of ``key`` takes callers now (they are left as they are)."""
        flight = self._flights.get(key)
        if flight is None:
            return False
        flight.waiters.extend(waiters)
        return True

    def leader(self, key: str) -> object:
        """What the caller that started ``key``'s running call left with it (``start(..., leader=)``), or None."""
        flight = self._flights.get(key)
        return None if flight is None else flight.leader

    def detach(self, key: str, task: asyncio.Task[Any] | None = None) -> None:
        """Let later callers of ``key`` start a new call (``task``: only if the running call is that one); the
        detached call goes on for the callers that wait for it."""
        flight = self._flights.get(key)
        if flight is not None and (task is None or flight.task is task):
            del self._flights[key]

    def detach_labelled(self, labels: set[str]) -> None:
        """:meth:`detach` every call started with a label in ``labels``."""
        for key in [key for key, flight in self._flights.items() if labels.intersection(flight.labels)]:
            del self._flights[key]

    def detach_all(self) -> None:
        self._flights.clear()

    def start(
        self, key: str, work: Callable[[], Awaitable[T]], leader: object = None, labels: tuple[str, ...] = ()
    ) -> asyncio.Task[T]:
        """Start ``work`` under ``key`` unless it already runs; return the running task either way. ``labels``
        (a fetch's tags) let :meth:`detach_labelled` find it."""
        flight = self._flights.get(key)
        if flight is not None:
            return flight.task

        async def call() -> T:
            try:
                return await work()
            finally:
                # Closed to new callers the moment the work ends, not one loop iteration later when its done-callback
                # runs: a caller arriving in between would get a result that may predate it.
                if self._flights.get(key) is flight:
                    del self._flights[key]

        task = asyncio.create_task(call(), name=f"cachelayer-load:{key}")
        flight = self._flights[key] = _Flight(task, leader, labels)
        self._running.add(task)
        task.add_done_callback(lambda t: self._finished(key, flight))
        return task

    def _finished(self, key: str, flight: _Flight[T]) -> None:
        self._running.discard(flight.task)
        if self._flights.get(key) is flight:
            del self._flights[key]
        task = flight.task
        if task.cancelled():
            for waiter in flight.waiters:
                waiter.cancel()
            return
        error = task.exception()  # retrieved here: every waiter may have gone away
        for waiter in flight.waiters:
            if waiter.done():  # its caller was cancelled
                continue
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(task.result())
