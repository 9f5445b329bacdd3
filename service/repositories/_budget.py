"""A hard time bound for one store call, whatever the driver does with cancellation.

``asyncio.timeout`` works by cancelling the call; a driver that swallows that cancellation (Python 3.11's
``asyncio.wait_for`` inside a driver can lose it when it lands as a write completes; PyMongo's async client was
seen to swallow one) keeps the caller waiting until the network answers. :func:`within` runs the call as a task
of its own and stops waiting at the deadline: the caller gets ``on_timeout()`` on time; the task is cancelled and
left to finish its own cleanup (a MySQL call discards its connection there), or, with ``cancel=False``, left to end
by the driver's own timeout: PyMongo closes a socket it is still connecting on its own timeout, but drops it
unclosed when cancelled (``pool_shared._async_create_connection``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["settle_late_calls", "within"]

T = TypeVar("T")

# Calls the caller stopped waiting for but did not cancel: a shutdown waits for them (settle_late_calls), so that a
# driver closes what it opened before the loop goes.
_LATE: set[asyncio.Future[Any]] = set()


def _consume(task: asyncio.Future[Any]) -> None:
    _LATE.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" at garbage collection


def _left_running(task: asyncio.Future[Any]) -> None:
    _LATE.add(task)
    task.add_done_callback(_consume)


async def settle_late_calls(within_seconds: float) -> int:
    """Wait up to ``within_seconds`` for the calls :func:`within` stopped waiting for (``cancel=False``) to end by
    their drivers' own timeouts; how many were still running at the end."""
    loop = asyncio.get_running_loop()
    pending = {task for task in _LATE if task.get_loop() is loop and not task.done()}
    if pending:
        await asyncio.wait(pending, timeout=within_seconds)
    return sum(1 for task in pending if not task.done())


async def within(
    seconds: float, call: Coroutine[Any, Any, T], on_timeout: Callable[[], BaseException], *, cancel: bool = True
) -> T:
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        if cancel:
            task.cancel()
        _left_running(task)
        raise
    if not done:
        if cancel:
            task.cancel()
        _left_running(task)
        raise on_timeout()
    return task.result()
