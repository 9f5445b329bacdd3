"""The caller's deadline: how long a fetch may wait for a load that another caller or process runs.

A web request has a budget; waiting out a lease (``StampedePolicy.lease_wait``, 5 s by default) for another
process's load can spend all of it. ``with time_budget(2.0):`` (or ``Cache.fetch(..., deadline=...)``) bounds
every such wait of the fetches inside it: a lease wait, and a wait for this process's own flight of the key. When
the deadline passes, the caller gets the stale value if there is one, else :class:`DeadlineExceededError`. The
deadline bounds waiting, never a load this caller runs itself: the loader's own timeouts bound that (cancelling a
load would cancel it for everyone who joined it).

Deadlines are on the running loop's clock (``loop.time()``: ``time.monotonic()`` on asyncio's and uvloop's
loops). The context variable is read only on the paths that wait, never on a hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Final

from ._errors import ConfigurationError

__all__ = ["current_deadline", "effective_deadline", "time_budget"]

_DEADLINE: Final[ContextVar[float | None]] = ContextVar("cachelayer_deadline", default=None)


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[float]:
    """Bound the waits of every fetch in this block (and in tasks started from it) to ``seconds`` from now; an
    enclosing budget that ends sooner still holds. Yields the deadline (the running loop's ``time()``)."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
        raise ConfigurationError(f"time_budget needs a finite number of seconds >= 0, not {seconds!r}")
    at = asyncio.get_running_loop().time() + seconds
    outer = _DEADLINE.get()
    if outer is not None and outer < at:
        at = outer
    token = _DEADLINE.set(at)
    try:
        yield at
    finally:
        _DEADLINE.reset(token)


def current_deadline() -> float | None:
    """The deadline of the enclosing :func:`time_budget` (the running loop's ``time()``), or None: for a loader's
    own calls to honour the caller's budget (a load runs in the context of the caller that started it)."""
    return _DEADLINE.get()


def effective_deadline(explicit: float | None) -> float | None:
    """The deadline a fetch waits under: its own (``fetch(deadline=)``) or the enclosing :func:`time_budget`'s,
    whichever ends first."""
    ambient = _DEADLINE.get()
    if explicit is None:
        return ambient
    return explicit if ambient is None or explicit < ambient else ambient
