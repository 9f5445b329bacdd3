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

**Handed off on a miss.** When the read its callers waited for finds nothing, each of them would wake only to
find the load of the key that the caller ahead of them started, and wait again for it. A coalescer given
``hand_off`` offers it the waiting callers' futures instead (those that ``may_hand_off`` allowed when they came):
the pipeline adds them to the running load's waiters, and they wake once, with its value (:class:`HandedOff`). The
load began after every one of them (a caller that found it running would have joined it instead of reading), so it
is one they may join. At 8 processes x 1,250 callers of a cold key, with two allocation cuts that came with it, the
CPU a call went from 23.5 to 20.1 us (docs/stampede.md, "One wake-up per waiting caller")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final, NamedTuple, TypeVar

__all__ = ["NOT_TAKEN", "HandOff", "HandedOff", "ReadCoalescer"]

T = TypeVar("T")
A = TypeVar("A")

NOT_TAKEN: Final[Any] = object()
"""What ``hand_off`` returns when it does not take the callers."""

#: Given a key and the futures of callers whose read found nothing, resolve them later itself and return what
#: they are told about who took them (anything but NOT_TAKEN), or leave them to the read (NOT_TAKEN).
HandOff = Callable[[str, list[asyncio.Future[Any]]], object]


class HandedOff(NamedTuple):
    """A caller's read found nothing and ``hand_off`` took the caller: what it was resolved with."""

    result: Any
    error: BaseException | None
    taker: object  # what hand_off returned


class _Next:
    """The read that goes out once the one in flight returns, and the callers it will answer."""

    __slots__ = ("arg", "handable", "loop", "read", "taker", "waiters")

    def __init__(self, read: Callable[[Any], Awaitable[Any]], arg: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.read = read
        self.arg = arg
        self.loop = loop
        self.waiters: list[asyncio.Future[Any]] = []
        self.handable: list[asyncio.Future[Any]] = []  # callers that may be handed off on a miss
        self.taker: object = NOT_TAKEN

    def everyone(self) -> list[asyncio.Future[Any]]:
        return [*self.waiters, *self.handable]


class ReadCoalescer:
    """Concurrent reads of one key share round trips (see the module docstring for which ones)."""

    def __init__(self, hand_off: HandOff | None = None, may_hand_off: Callable[[Any], bool] | None = None) -> None:
        # key -> the read waiting behind the one in flight (None: nobody waits); absent: no read in flight
        self._pending: dict[str, _Next | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._hand_off = hand_off
        self._may_hand_off = may_hand_off

    async def read(self, key: str, read: Callable[[A], Awaitable[T]], arg: A, caller: object = None) -> T | HandedOff:
        """What ``read(arg)`` returns: this caller's own call of it, or the next one, shared; or :class:`HandedOff`
        when the shared read found nothing and ``hand_off`` took this caller (never a caller of None).
        ``may_hand_off(caller)`` is asked only when the caller has to wait, in its own context (it may read context
        variables). A function and its argument, not a closure: a closure is four objects a call, which a burst of
        callers keeps alive."""
        pending = self._pending
        if key not in pending:
            pending[key] = None
            try:
                return await read(arg)
            finally:
                self._returned(key)
        behind = self._behind(key, read, arg)
        waiter: asyncio.Future[T] = behind.loop.create_future()
        handable = caller is not None and self._may_hand_off is not None and self._may_hand_off(caller)
        (behind.handable if handable else behind.waiters).append(waiter)
        try:
            value = await waiter
        except _NextGone:
            return await read(arg)
        except Exception as exc:
            if not handable or behind.taker is NOT_TAKEN:
                raise  # the read's own failure
            return HandedOff(None, exc, behind.taker)
        return value if not handable or behind.taker is NOT_TAKEN else HandedOff(value, None, behind.taker)

    def _behind(self, key: str, read: Callable[[Any], Awaitable[Any]], arg: Any) -> _Next:
        """The read that goes out after the one in flight."""
        behind = self._pending[key]
        if behind is None:
            behind = self._pending[key] = _Next(read, arg, asyncio.get_running_loop())
        return behind

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
        if all(waiter.done() for waiter in behind.everyone()):  # every caller went away meanwhile
            self._returned(key)
            return
        try:
            value = await behind.read(behind.arg)
            if value is None and self._hand_off is not None:
                live = [waiter for waiter in behind.handable if not waiter.done()]
                if live:
                    behind.taker = self._hand_off(key, live)
        except Exception as exc:  # the read's own failure (a store outage): each caller gets it
            for waiter in behind.everyone():
                if not waiter.done():
                    waiter.set_exception(exc)
        else:
            waiters = behind.everyone() if behind.taker is NOT_TAKEN else behind.waiters
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
        for waiter in behind.everyone():  # its callers read for themselves
            if not waiter.done():
                waiter.set_exception(_NextGone())


class _NextGone(Exception):
    """The task doing a coalesced read was cancelled before it finished: its callers read for themselves."""
