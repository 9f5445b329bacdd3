"""The scheduler: actors park at gates; at each quiet moment of the loop it picks which one proceeds.

Every store command of every cache (through :class:`~harness.consistency.gated.GatedBackend`) and every loader step
awaits :meth:`Scheduler.gate`. Nothing parks while the scheduler is inactive (setting a universe up, checking it at
the end). The loop (:class:`~harness.consistency.loop.VirtualTimeLoop`) calls :meth:`Scheduler.on_idle` only when
no callback is ready and no store call is in flight: then every task of the universe is parked, asleep on a timer
or done, and the choice among the parked ones (and "let the virtual clock move to the next timer") is made by a
:class:`Chooser`: seeded random, or a prefix of choices for exhaustive exploration (stateless model checking: the
universe is re-run from scratch for each prefix; see ``explore.py``).

Reductions, each sound for what the oracle checks:
- a ``poll`` (a lease waiter looking at the store) is not progress, and the clock moves again only after some other
  actor made progress or when nothing else can run: a waiter polling twice with nothing in between would see the
  same store and do the same thing again. The read of the tag stamps of a value it polled (``poll-stamps``: the
  waiter judging what it found, ``cachelayer._tags``) is part of that look and no progress either;
- ``preemption_bound`` (optional): at most that many switches away from an actor that could go on (CHESS-style
  context bounding), for the exhaustive runs of larger configurations.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from harness.consistency.loop import VirtualTimeLoop

__all__ = ["ACTOR", "Chooser", "PrefixChooser", "RandomChooser", "Scheduler"]

ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar("consistency_actor", default="harness")
"""The actor a task works for: set by each actor's task, inherited by the tasks a cache spawns for it (a flight, a
lease renewer, a background refresh)."""

_ADVANCE: Final = "advance-clock"
_NOT_PROGRESS: Final = frozenset({"poll", "poll-stamps"})


class Chooser(Protocol):
    def choose(self, count: int) -> int:
        """One of ``range(count)``; ``count`` >= 2."""
        ...


class RandomChooser:
    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def choose(self, count: int) -> int:
        return self._random.randrange(count)


class PrefixChooser:
    """Follows ``prefix``, then takes option 0; records every choice point as (choice, count)."""

    def __init__(self, prefix: list[int]) -> None:
        self.prefix = prefix
        self.trace: list[tuple[int, int]] = []

    def choose(self, count: int) -> int:
        depth = len(self.trace)
        choice = self.prefix[depth] if depth < len(self.prefix) else 0
        if choice >= count:  # the run diverged from the one that recorded the prefix: not deterministic
            raise RuntimeError(f"choice {choice} of {count} at depth {depth}: the universe is not deterministic")
        self.trace.append((choice, count))
        return choice

    def next_prefix(self) -> list[int] | None:
        """The next schedule in depth-first order, or None when every one was run."""
        trace = list(self.trace)
        while trace:
            choice, count = trace.pop()
            if choice + 1 < count:
                return [c for c, _ in trace] + [choice + 1]
        return None


@dataclass(slots=True)
class _Parked:
    actor: str
    op: str
    future: asyncio.Future[None]


@dataclass(slots=True)
class _Run:
    chooser: Chooser
    preemption_bound: int | None
    horizon: float
    max_steps: int
    steps: int = 0
    preemptions: int = 0
    advanced: float = 0.0
    current: str | None = None
    progress_since_advance: bool = True
    polled: bool = False  # a poll since the clock last moved
    overrun: bool = False
    log: list[str] | None = None
    stall: asyncio.Future[None] | None = None


class Scheduler:
    """Gates and choices for one :class:`VirtualTimeLoop` (one universe at a time)."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self.loop = loop
        self.io_in_flight = 0
        self._parked: list[_Parked] = []
        self._run: _Run | None = None
        self.on_starved: Callable[[], None] | None = None  # called when only waiters polling a dead lease are left
        loop.handler = self

    # -- a universe -------------------------------------------------------------------------------------------

    def start(
        self,
        chooser: Chooser,
        *,
        preemption_bound: int | None = None,
        horizon: float = 60.0,
        max_steps: int = 400,
        log: bool = False,
    ) -> None:
        """Gates park from now on; ``horizon``: how far (virtual seconds) the clock may move in this universe."""
        self._run = _Run(chooser, preemption_bound, horizon, max_steps, log=[] if log else None)

    def stop(self) -> None:
        """Gates pass from now on; parked actors stay parked until they are cancelled."""
        self._run = None

    @property
    def active(self) -> bool:
        return self._run is not None

    @property
    def overrun(self) -> bool:
        return self._run is not None and self._run.overrun

    @property
    def log(self) -> list[str]:
        return [] if self._run is None or self._run.log is None else self._run.log

    def quiet(self) -> asyncio.Future[None]:
        """A future resolved when nothing can happen any more: every task done, or parked with no choice left
        (stuck), or the step limit reached (``overrun``)."""
        run = self._run
        assert run is not None
        run.stall = self.loop.create_future()
        return run.stall

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """A store round trip outside the gated backends (chaos, cleanup): the loop waits for its reply."""
        self.io_in_flight += 1
        try:
            yield
        finally:
            self.io_in_flight -= 1

    # -- the gate ---------------------------------------------------------------------------------------------

    async def gate(self, op: str) -> None:
        """Park until chosen (while a universe runs); ``op`` names the step (``"poll"`` is not progress)."""
        if self._run is None:
            return
        parked = _Parked(ACTOR.get(), op, self.loop.create_future())
        self._parked.append(parked)
        try:
            await parked.future
        finally:
            if not parked.future.done() or parked in self._parked:
                self._parked.remove(parked)

    # -- the choice -------------------------------------------------------------------------------------------

    def on_idle(self, timeout: float | None) -> bool:
        run = self._run
        if run is None:
            return False
        parked = self._parked
        can_advance = timeout is not None and run.advanced + timeout <= run.horizon
        if can_advance and parked and not run.progress_since_advance:
            can_advance = False
        if not parked and not can_advance:
            return self._quiet(run)
        if not parked and not run.progress_since_advance and run.polled and self.on_starved is not None:
            # Only lease waiters polling a lease nobody works under (its holder died without releasing it): in
            # a real store that lease lapses after its TTL, which virtual time does not reach. It lapses now.
            run.progress_since_advance = True
            self.on_starved()
            return True
        run.steps += 1
        if run.steps > run.max_steps:
            run.overrun = True
            return self._quiet(run)
        options: list[_Parked | None] = list(parked)
        current = next((p for p in parked if p.actor == run.current), None)
        if current is not None:
            options.remove(current)
            options.insert(0, current)  # going on with the same actor first: depth-first runs it unpreempted
            if run.preemption_bound is not None and run.preemptions >= run.preemption_bound:
                options = [current]
                can_advance = False
        if can_advance:
            options.append(None)
        chosen = options[run.chooser.choose(len(options))] if len(options) > 1 else options[0]
        if current is not None and chosen is not current:
            run.preemptions += 1
        if chosen is None:
            assert timeout is not None
            self.loop.now += timeout
            run.advanced += timeout
            run.progress_since_advance = False
            run.polled = False
            if run.log is not None:
                run.log.append(f"{_ADVANCE} +{timeout:.3f}")
            return True
        parked.remove(chosen)
        chosen.future.set_result(None)
        run.current = chosen.actor
        if chosen.op not in _NOT_PROGRESS:
            run.progress_since_advance = True
        else:
            run.polled = True
        if run.log is not None:
            listed = ",".join("clock" if o is None else f"{o.actor}:{o.op}" for o in options)
            run.log.append(f"{chosen.actor}: {chosen.op} of [{listed}]")
        return True

    @staticmethod
    def _quiet(run: _Run) -> bool:
        if run.stall is not None and not run.stall.done():
            run.stall.set_result(None)
            return True
        return False
