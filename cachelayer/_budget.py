"""Time budgets that do not blame the store for the event loop's own lateness.

A budget of 0.1 s that runs out because this process was starved of CPU (a busy loop, a CPU hog beside it) says
nothing about the store: its reply may sit unread in the socket. Counted as a store failure it opens the breaker
on a healthy store, and the cache turns hits into database loads exactly when the machine is busiest.

So the deadline is checked by a timer callback, not enforced blindly: when that callback itself runs late (the
loop did not run on time), the call gets a fresh budget, at most ``MAX_GRACES`` times; and when it runs on time
it still waits ``SETTLE_HOPS`` loop iterations, so a reply that is already in the socket is used (a reply reaches
its caller in two hops: the transport's read callback wakes a future, whose callback resumes the task). A call that
finally runs out only after the loop was late raises :class:`LateLoopTimeout`, which callers count apart from
store failures.

Nor is a call that ran out while it still waited for a free connection of this process's own pool evidence
against the store: the process asked more than its pool carries (a burst of distinct keys), and the calls that
do hold connections are getting answers. A pool says when a call starts and stops waiting for a connection
(:func:`note_waiting_for_connection`); a budget that ends during such a wait raises :class:`QueueTimeout`, also
counted apart. When the store really hangs, the calls on the wire run out too, and those are held against it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Final, TypeVar

__all__ = ["LateLoopTimeout", "QueueTimeout", "note_waiting_for_connection", "within_budget"]

T = TypeVar("T")

MAX_GRACES: Final = 1
# A timer that fires this much past its deadline means the loop was not running: not the store's fault.
LATE_FRACTION: Final = 0.25
LATE_FLOOR: Final = 0.005
SETTLE_HOPS: Final = 3


class LateLoopTimeout(TimeoutError):
    """The budget ran out, but the event loop was late at the deadline: not evidence against the store."""


class QueueTimeout(TimeoutError):
    """The budget ran out while the call waited for a free connection of its own pool: not evidence against the
    store."""


# Set in the calling task's context (a pool runs inline in the task that awaits the command); a part of a call
# that runs in a task of its own (redis-py's cluster pipelines gather one task per node) cannot set it, and such
# a timeout counts against the store as before.
_WAITING: ContextVar[bool] = ContextVar("cachelayer_waiting_for_connection", default=False)


def note_waiting_for_connection(waiting: bool) -> None:
    """For a connection pool: the running call starts (True) or stops (False) waiting for a free connection."""
    if waiting or _WAITING.get():  # the usual case, a free connection at once, sets nothing
        _WAITING.set(waiting)


class _Deadline:
    __slots__ = ("budget", "graces", "handle", "late", "loop", "scope")

    def __init__(self, loop: asyncio.AbstractEventLoop, scope: asyncio.Timeout, budget: float) -> None:
        self.loop = loop
        self.scope = scope
        self.budget = budget
        self.graces = 0
        self.late = False
        self.handle: asyncio.Handle = loop.call_at(loop.time() + budget, self._due, loop.time() + budget)

    def _due(self, deadline: float) -> None:
        now = self.loop.time()
        if now - deadline > max(LATE_FLOOR, self.budget * LATE_FRACTION):
            self.late = True
            if self.graces < MAX_GRACES:
                self.graces += 1
                self.handle = self.loop.call_at(now + self.budget, self._due, now + self.budget)
                return
        # A few more iterations: a reply already read (or readable) resumes the caller before the budget ends it.
        self.handle = self.loop.call_soon(self._expire, SETTLE_HOPS)

    def _expire(self, hops: int) -> None:
        if hops > 1:
            self.handle = self.loop.call_soon(self._expire, hops - 1)
        else:
            self.scope.reschedule(self.loop.time())

    def cancel(self) -> None:
        self.handle.cancel()


async def within_budget(budget: float, make: Callable[[], Awaitable[T]]) -> T:
    """``await make()`` within ``budget`` seconds of loop time the store could use; TimeoutError (or
    :class:`LateLoopTimeout`) past it."""
    loop = asyncio.get_running_loop()
    deadline: _Deadline | None = None
    if _WAITING.get():  # left over from a call of this task that ended while it waited (cancelled, pool timeout)
        _WAITING.set(False)
    try:
        async with asyncio.timeout(None) as scope:
            deadline = _Deadline(loop, scope, budget)
            try:
                return await make()
            finally:
                deadline.cancel()
    except TimeoutError:
        if deadline is not None and deadline.late:
            raise LateLoopTimeout(f"budget of {budget}s ran out while the event loop was late") from None
        if _WAITING.get():
            _WAITING.set(False)
            raise QueueTimeout(f"budget of {budget}s ran out while waiting for a free connection") from None
        raise
