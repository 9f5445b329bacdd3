"""An event loop on virtual time whose idle moments belong to a scheduler.

The loop runs every ready callback as usual. When it would block (nothing ready, no socket readable now) it asks
its :class:`IdleHandler` what happens next, instead of sleeping:

- a store call is in flight (a real Redis reply is awaited): wait for the socket, in real time, without moving the
  virtual clock, so budgets and timers never fire because Redis was slow;
- otherwise the handler releases one parked actor, or moves the virtual clock to the next timer (a lease waiter's
  poll delay, a retry's backoff), or says that nothing can happen any more (quiescence).

So a choice is only ever made when every task is parked at a gate, sleeping on a timer or done: the schedule is a
function of the choices alone, the same on the memory backend and on real Redis.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from typing import Any, Final, Protocol

__all__ = ["IdleHandler", "VirtualTimeLoop"]

# How long a store call may stay silent (real seconds) before the virtual clock moves anyway: only ever reached
# when a client sleeps inside a call (a retry's backoff); a healthy local Redis answers in well under a second.
_SILENT_CALL_S: Final = 1.0
# Clock moves in a row with no scheduler around (a poller that never stops): a livelock, reported.
_MAX_FREE_ADVANCES: Final = 100_000
# A store call that stays silent this long is stuck: the run is broken, not slow.
_STUCK_CALL_S: Final = 30.0


class IdleHandler(Protocol):
    io_in_flight: int

    def on_idle(self, timeout: float | None) -> bool:
        """The loop is idle and no store call is in flight; ``timeout`` is the virtual time to the next timer
        (None: no timer). True when the handler made something happen (released a gate, resolved a future, moved
        the clock); False to let the loop do what it would do alone."""
        ...


class _IdleSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if events or (timeout is not None and timeout <= 0) or self.loop is None:
            return events
        return self.loop.idle(timeout, super().select)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``time()`` is virtual: it moves only when nothing else can happen (see the module docstring)."""

    def __init__(self) -> None:
        selector = _IdleSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 0.0
        self.handler: IdleHandler | None = None
        self._free_advances = 0

    def time(self) -> float:
        return self.now

    def idle(self, timeout: float | None, real_select: Any) -> list[tuple[selectors.SelectorKey, int]]:
        handler = self.handler
        if handler is not None and handler.io_in_flight > 0:
            return self._await_io(timeout, real_select)
        if handler is not None and handler.on_idle(timeout):
            self._free_advances = 0
            return []
        if timeout is not None:
            self._free_advances += 1
            if self._free_advances > _MAX_FREE_ADVANCES:
                raise RuntimeError("VirtualTimeLoop: timers keep firing with nothing else happening (a livelock)")
            self.now += timeout
            return []
        # Nothing scheduled and nothing tracked in flight: only untracked I/O can wake the loop.
        events: list[tuple[selectors.SelectorKey, int]] = real_select(_STUCK_CALL_S)
        if not events:
            raise RuntimeError("VirtualTimeLoop: nothing can happen (no timer, no parked actor, no I/O)")
        return events

    def _await_io(self, timeout: float | None, real_select: Any) -> list[tuple[selectors.SelectorKey, int]]:
        started = time.monotonic()
        while True:
            events: list[tuple[selectors.SelectorKey, int]] = real_select(0.05)
            if events:
                return events
            silent = time.monotonic() - started
            if silent >= _STUCK_CALL_S:
                raise RuntimeError(f"VirtualTimeLoop: a store call has been silent for {silent:.0f} s")
            if timeout is not None and silent >= _SILENT_CALL_S:
                self.now += timeout  # a client sleeping inside its call (a retry backoff): let its timer fire
                return []
