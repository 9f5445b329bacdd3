"""A hard time bound for one store call, whatever the driver does with cancellation.

``asyncio.timeout`` works by cancelling the call; a driver that swallows that cancellation (Python 3.11's
``asyncio.wait_for`` inside a driver can lose it when it lands as a write completes; PyMongo's async client was
seen to swallow one) keeps the caller waiting until the network answers. :func:`within` runs the call as a task
of its own and stops waiting at the deadline: the caller gets ``on_timeout()`` on time; the task is cancelled and
left to finish its own cleanup (a MySQL call discards its connection there), or, with ``cancel=False``, left to end
by the driver's own timeout: PyMongo closes a socket it is still connecting on its own timeout, but drops it
unclosed when cancelled (``pool_shared._async_create_connection``).

A call made while a request's budget runs (``cachelayer.time_budget``, set by the route; a cache load runs in the
context of the request that started it) gets no more than what is left of it: :func:`capped`. Otherwise a load
through two stores (MySQL's acquire + query is 3 s) would outlive the request waiting for it, and every request
that waited for that load with it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from cachelayer import current_deadline

__all__ = ["capped", "settle_late_calls", "within"]

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


def capped(seconds: float) -> float:
    """``seconds``, or what is left of the request's budget when that ends sooner (0 once it has passed)."""
    deadline = current_deadline()
    if deadline is None:
        return seconds
    return max(0.0, min(seconds, deadline - asyncio.get_running_loop().time()))


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
