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
import math
from contextvars import ContextVar, Token
from typing import Final

from ._errors import ConfigurationError

__all__ = ["current_deadline", "effective_deadline", "time_budget"]

_DEADLINE: Final[ContextVar[float | None]] = ContextVar("cachelayer_deadline", default=None)


class time_budget:  # used as a function: ``with time_budget(2.0):``
    """Bound the waits of every fetch in this block (and in tasks started from it) to ``seconds`` from now; an
    enclosing budget that ends sooner still holds. ``with`` gives the deadline (the running loop's ``time()``).

    A class, not a generator-based context manager: the service enters one per request (0.93 us entered and left,
    against 1.67 us for the ``contextlib.contextmanager`` version: timeit, 200,000 each, on this machine)."""

    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float) -> None:
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
            raise ConfigurationError(f"time_budget needs a finite number of seconds >= 0, not {seconds!r}")
        self._seconds = seconds
        self._token: Token[float | None] | None = None

    def __enter__(self) -> float:
        at = asyncio.get_running_loop().time() + self._seconds
        outer = _DEADLINE.get()
        if outer is not None and outer < at:
            at = outer
        self._token = _DEADLINE.set(at)
        return at

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _DEADLINE.reset(self._token)
            self._token = None


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
