"""Read coalescing: concurrent reads of one key share round trips, and no caller gets an answer older than itself.

Under a burst (10,000 clients asking for one hot page) this turns thousands of GETs queued on the connection pool
into a few, so the reads neither exhaust the pool nor run out of their time budget.

A caller never joins a read that is already in flight. That read may have been answered by the store before the
caller began, and an invalidation (by any process) may have landed in between: handing its answer to a caller that
started after the invalidation ended would serve the invalidated value (the free-running consistency check caught
it: a read 3.4 ms after another process's ``mark_stale`` answered the older version). So callers that find a read of
their key in flight wait for the next one, which goes out as soon as the one in flight returns and answers all of
them: every caller it answers began before it was sent. One read of a key is in flight at a time (as many round
trips as before, the fewest there can be); a caller that arrives during one waits for the rest of it and one more.

A lone caller (the hit path) reads itself: no task, no future. The next read runs in a task of its own, so a
waiting caller's cancellation ends only its own wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["ReadCoalescer"]

T = TypeVar("T")


class _Next:
    """The read that goes out once the one in flight returns, and the callers it will answer."""

    __slots__ = ("loop", "read", "waiters")

    def __init__(self, read: Callable[[], Awaitable[Any]], loop: asyncio.AbstractEventLoop) -> None:
        self.read = read
        self.loop = loop
        self.waiters: list[asyncio.Future[Any]] = []


class ReadCoalescer:
    """Concurrent reads of one key share round trips (see the module docstring for which ones)."""

    def __init__(self) -> None:
        # key -> the read waiting behind the one in flight (None: nobody waits); absent: no read in flight
        self._pending: dict[str, _Next | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, key: str, read: Callable[[], Awaitable[T]]) -> T:
        pending = self._pending
        if key not in pending:
            pending[key] = None
            try:
                return await read()
            finally:
                self._returned(key)
        behind = pending[key]
        if behind is None:
            behind = pending[key] = _Next(read, asyncio.get_running_loop())
        waiter: asyncio.Future[T] = behind.loop.create_future()
        behind.waiters.append(waiter)
        try:
            return await waiter
        except _NextGone:
            return await read()

    def _returned(self, key: str) -> None:
        """The read of ``key`` in flight returned (or failed): the one waiting behind it, if any, goes out now
        (until its task runs, callers that arrive still join it: it has not been sent)."""
        behind = self._pending[key]
        if behind is None or behind.loop.is_closed():  # closed: a coroutine closed after its loop, nobody to answer
            del self._pending[key]
            return
        task = behind.loop.create_task(self._send(key, behind))
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._sent(key, behind, done))

    async def _send(self, key: str, behind: _Next) -> None:
        self._pending[key] = None  # in flight from now on: later callers wait for the one after it
        waiters = behind.waiters
        if all(waiter.done() for waiter in waiters):  # every caller went away meanwhile
            self._returned(key)
            return
        try:
            value = await behind.read()
        except Exception as exc:  # the read's own failure (a store outage): each caller gets it
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
        else:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(value)
        finally:
            self._returned(key)

    def _sent(self, key: str, behind: _Next, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            return
        # The loop is closing. Cancelled before it began, the read was never in flight: nothing is.
        if self._pending.get(key) is behind:
            del self._pending[key]
        for waiter in behind.waiters:  # its callers read for themselves
            if not waiter.done():
                waiter.set_exception(_NextGone())


class _NextGone(Exception):
    """The task doing a coalesced read was cancelled before it finished: its callers read for themselves."""
