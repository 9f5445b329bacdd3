"""The tests' shared doubles: a settable clock, a counting loader, and waiting for a condition.

One set for every test module, so that a test reads the same whatever file it is in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["CountingLoader", "FakeClock", "FixedRandom", "LoaderFailed", "eventually"]


class FakeClock:
    """A clock the test moves by hand: ``clock.now += 20``. Callable, like ``time.time``."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FixedRandom:
    """A ``random.random`` stand-in that returns ``value`` (settable) every time: XFetch and jitter made exact."""

    def __init__(self, value: float = 0.5) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


class LoaderFailed(Exception):
    """What a failing :class:`CountingLoader` raises."""


class CountingLoader:
    """An async loader that counts its calls and returns ``{"version": n}`` (or ``value``) on the n-th call.

    ``delay``: seconds it takes (a real sleep: it stands in for a database). ``fail``: raise
    :class:`LoaderFailed` instead. ``gate``: an event the loader waits for before returning (a test holds the
    load open exactly as long as it needs, without timing guesses). ``started`` is set on the first call, and
    ``started_at`` is its ``time.monotonic()`` (when a takeover happened). ``result``: builds the value from the
    call number instead (``lambda n: {"value": f"down-{n}"}``).
    """

    def __init__(
        self,
        value: Any = None,
        *,
        delay: float = 0.0,
        fail: bool = False,
        gate: asyncio.Event | None = None,
        result: Callable[[int], Any] | None = None,
    ) -> None:
        self.value = value
        self.delay = delay
        self.fail = fail
        self.gate = gate
        self.result = result
        self.calls = 0
        self.started = asyncio.Event()
        self.started_at: float | None = None

    async def __call__(self) -> Any:
        self.calls += 1
        if self.started_at is None:
            self.started_at = time.monotonic()
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)  # stands for the loader's work (a database query), not a wait
        if self.fail:
            raise LoaderFailed(f"call {self.calls}")
        if self.result is not None:
            return self.result(self.calls)
        return {"version": self.calls} if self.value is None else self.value


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    within: float = 10.0,
    what: str | None = None,
    *,
    interval: float = 0.005,
) -> None:
    """Wait until ``check()`` is true; fail the test (AssertionError, naming ``what``) if it is not within
    ``within`` seconds.

    For conditions that another process or a store's message makes true, where no event can be awaited.
    ``within`` is generous on purpose (a loaded 2-core machine); a passing test returns as soon as it holds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {within} s: {what or getattr(check, '__name__', check)!r}")
        await asyncio.sleep(interval)
