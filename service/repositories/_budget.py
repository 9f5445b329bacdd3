"""A hard time bound for one store call, whatever the driver does with cancellation.

``asyncio.timeout`` works by cancelling the call; a driver that swallows that cancellation (Python 3.11's
``asyncio.wait_for`` inside a driver can lose it when it lands as a write completes; PyMongo's async client was
seen to swallow one) keeps the caller waiting until the network answers. :func:`within` runs the call as a task
of its own and stops waiting at the deadline: the caller gets ``on_timeout()`` on time; the task is cancelled and
left to finish its own cleanup (a MySQL call discards its connection there)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["within"]

T = TypeVar("T")


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" at garbage collection


async def within(seconds: float, call: Coroutine[Any, Any, T], on_timeout: Callable[[], BaseException]) -> T:
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_consume)
        raise on_timeout()
    return task.result()
