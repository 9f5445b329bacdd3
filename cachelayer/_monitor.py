"""A sampled consistency monitor, checked in production as Meta's Polaris checks its caches: for a fraction of fills
and invalidations, re-read the stored entry after a delay and compare it with what the loader answers now.

Off unless a Cache is given one (no monitor, no cost). When on, an event that is not sampled costs one random draw;
a sampled one schedules a background check (never on a caller's path, never raising). The extra loads are bounded
by a token bucket (``max_checks_per_second`` on average; a sampled event the bucket refuses is counted, not
queued), and memory by ``max_pending`` scheduled checks and ``max_tracked`` remembered loaders.

One check of key K with loader R, in rounds (S = the stored payload, L = R's fresh payload)::

    wait delay; S1 = read(K)            None: nothing stored to judge (absent, stale, store down)
    L1 = R(); S2 = read(K)              S2 != S1: the entry changed meanwhile, no verdict
                                        L1 == S1: they agree
    wait confirm_delay; L2 = R(); S3 = read(K)
    violation iff S3 == S1 and L2 != S1

Why a second round: a write committed just before L1 whose invalidation is still in flight makes S1 == S2 != L1
in a correct system. So a first disagreement is only a suspicion, and the verdict is: the store still answered S1
``confirm_delay`` seconds after the loader had stopped answering it, and the loader still does not answer it.
An invalidation that takes longer than ``confirm_delay`` to land is therefore reported, deliberately: that is the
window the monitor measures ("consistent within confirm_delay", as Polaris measures within five minutes). The
second load also clears a value that went back to what is stored (1 -> 2 -> 1) before the verdict.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TypeVar

__all__ = ["ConsistencyMonitor"]

log = logging.getLogger("cachelayer")

_T = TypeVar("_T")

Read = Callable[[str], Awaitable[bytes | None]]
Reload = Callable[[], Awaitable[bytes]]
Report = Callable[[str, str, str], None]


class _TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved. ``take(force=True)`` may go into debt (a confirmation
    must not be starved by new checks); the debt is repaid before the next ``take()``, so the long-run average
    stays at ``rate``."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = capacity
        self.clock = clock
        self.tokens = capacity
        self.updated = clock()

    def take(self, *, force: bool = False) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0 or force:
            self.tokens -= 1.0
            return True
        return False


def _digest(payload: bytes) -> str:
    """A short fingerprint for log lines: payloads may be large or private, so they are never logged."""
    return f"#{hashlib.blake2b(payload, digest_size=4).hexdigest()} ({len(payload)} bytes)"


class ConsistencyMonitor:
    """Off unless a Cache is given one: ``Cache(..., monitor=ConsistencyMonitor(sample_rate=0.01))``.

    ``sample_rate``: the fraction of fills and of invalidations checked. ``delay``: how long after the event the
    check reads the store. ``max_checks_per_second``: the bound on extra loads (each check loads once, twice when
    it confirms a disagreement). ``confirm_delay`` (default ``delay``): the grace given to an invalidation in
    flight. ``ignore``: names of functions whose loader does not answer the same payload twice for the same data
    (a timestamp in the value): they would be reported on every check.
    """

    def __init__(
        self,
        *,
        sample_rate: float = 0.01,
        delay: float = 5.0,
        max_checks_per_second: float = 1.0,
        rand: Callable[[], float] = random.random,
        confirm_delay: float | None = None,
        burst: float | None = None,
        max_pending: int = 100,
        max_tracked: int = 1000,
        timeout: float = 30.0,
        ignore: Collection[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError("sample_rate must be between 0 and 1")
        if delay < 0 or (confirm_delay is not None and confirm_delay < 0):
            raise ValueError("delay and confirm_delay must not be negative")
        if max_checks_per_second <= 0:
            raise ValueError("max_checks_per_second must be positive (use sample_rate=0 to check nothing)")
        if max_pending < 1 or max_tracked < 1:
            raise ValueError("max_pending and max_tracked must be at least 1")
        self.sample_rate = sample_rate
        self.delay = delay
        self.confirm_delay = delay if confirm_delay is None else confirm_delay
        self.max_pending = max_pending
        self.max_tracked = max_tracked
        self.timeout = timeout
        self.ignore = frozenset(ignore)
        self._rand = rand
        self._bucket = _TokenBucket(
            max_checks_per_second, max(1.0, max_checks_per_second) if burst is None else burst, clock
        )
        self._read: Read | None = None
        self._report: Report | None = None
        self._closed = False
        # The loaders of recently sampled fills, so a sampled invalidation of their key can be checked (LRU).
        self._tracked: OrderedDict[str, tuple[str, Reload]] = OrderedDict()
        self._checks: dict[str, asyncio.Task[None]] = {}  # one pending check per key
        self._counts = dict.fromkeys(
            (
                "sampled",
                "checks_run",
                "checks_skipped",
                "checks_coalesced",
                "checks_failed",
                "entries_absent",
                "entries_changed",
                "agreements",
                "disagreements_unconfirmed",
                "violations",
            ),
            0,
        )

    def attach(self, read: Read, report: Report) -> None:
        """Called by the Cache once. ``read(key)``: the serialized payload (the JSON/msgpack bytes, not the frame)
        of the FRESH stored entry under key, or None (absent, stale, undecodable, store down). ``report(function,
        key, detail)``: the cache counts it and tells its hooks."""
        if self._read is not None:
            raise RuntimeError("a ConsistencyMonitor watches one cache: give each Cache its own")
        self._read = read
        self._report = report

    def after_fill(self, key: str, function: str, reload: Reload) -> None:
        """A fill landed. Sampled: after ``delay``, compare what is stored with a fresh load. ``reload()`` runs
        the function's loader again and returns its serialized payload (without storing it)."""
        if self._rand() >= self.sample_rate or self._closed or self._read is None or function in self.ignore:
            return
        self._counts["sampled"] += 1
        self._tracked[key] = (function, reload)
        self._tracked.move_to_end(key)
        if len(self._tracked) > self.max_tracked:
            self._tracked.popitem(last=False)
        self._schedule(key, function, reload)

    def after_invalidate(self, keys: Sequence[str]) -> None:
        """An invalidation landed. Sampled (one draw per invalidation): for each key whose loader a recent sampled
        fill left here, check after ``delay`` that the store no longer answers a value the loader would not."""
        if self._rand() >= self.sample_rate or self._closed or self._read is None:
            return
        self._counts["sampled"] += 1
        for key in keys:
            known = self._tracked.get(key)
            if known is not None:
                self._schedule(key, *known)

    def stats(self) -> dict[str, int]:
        """Counters: ``sampled`` events; ``checks_run`` (each ends as one of ``entries_absent``, ``entries_changed``,
        ``agreements``, ``disagreements_unconfirmed``, ``violations``); ``checks_skipped`` (rate bound or
        ``max_pending``), ``checks_coalesced`` (a check of the key was already pending), ``checks_failed`` (a read
        or load raised or timed out); ``checks_pending`` and ``keys_tracked`` now."""
        return {**self._counts, "checks_pending": len(self._checks), "keys_tracked": len(self._tracked)}

    async def drain(self) -> None:
        """Wait until no check of this event loop is pending (tests; a shutdown that wants the verdicts)."""
        running = asyncio.get_running_loop()
        while pending := [task for task in self._checks.values() if task.get_loop() is running]:
            await asyncio.wait(pending)

    async def aclose(self) -> None:
        """Cancel the scheduled checks and forget the remembered loaders. Later events are ignored."""
        self._closed = True
        self._tracked.clear()
        checks = list(self._checks.values())
        self._checks.clear()
        running = asyncio.get_running_loop()
        own: list[asyncio.Task[None]] = []
        for task in checks:
            loop = task.get_loop()
            if loop is running:
                task.cancel()
                own.append(task)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)  # a task of another loop is cancelled by that loop
        await asyncio.gather(*own, return_exceptions=True)

    # -- checks -----------------------------------------------------------------------------------------------

    def _schedule(self, key: str, function: str, reload: Reload) -> None:
        if key in self._checks:
            self._counts["checks_coalesced"] += 1
            return
        if len(self._checks) >= self.max_pending or not self._bucket.take():
            self._counts["checks_skipped"] += 1
            return
        try:
            task = asyncio.get_running_loop().create_task(self._check(key, function, reload))
        except RuntimeError:  # no running loop: nowhere to check from, and never an error for the caller
            self._counts["checks_skipped"] += 1
            return
        self._checks[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))

    def _forget(self, key: str, task: asyncio.Task[None]) -> None:
        if self._checks.get(key) is task:
            del self._checks[key]

    async def _within(self, awaitable: Awaitable[_T]) -> _T:
        async with asyncio.timeout(self.timeout):
            return await awaitable

    async def _check(self, key: str, function: str, reload: Reload) -> None:
        try:
            verdict = await self._judge(key, reload)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._counts["checks_failed"] += 1
            log.debug("cachelayer: consistency check of %s for %s failed", key, function, exc_info=True)
            return
        self._counts["checks_run"] += 1
        if isinstance(verdict, str):
            self._counts[verdict] += 1
            return
        self._counts["violations"] += 1
        stored, first, second = verdict
        detail = (
            f"stored {_digest(stored)} unchanged for at least {self.confirm_delay:g} s after the loader answered "
            f"{_digest(first)}; it now answers {_digest(second)}"
        )
        log.warning("cachelayer: consistency violation in %s: key %s %s", function, key, detail)
        assert self._report is not None  # attach() came before any check was scheduled
        try:
            self._report(function, key, detail)
        except Exception:
            log.exception("cachelayer: reporting a consistency violation of %s failed", key)

    async def _judge(self, key: str, reload: Reload) -> str | tuple[bytes, bytes, bytes]:
        """A counter's name when consistent or undecided, else (stored, first load, second load)."""
        read = self._read
        assert read is not None
        await asyncio.sleep(self.delay)
        stored = await self._within(read(key))
        if stored is None:
            return "entries_absent"
        first = await self._within(reload())
        if await self._within(read(key)) != stored:
            return "entries_changed"
        if first == stored:
            return "agreements"
        # A suspicion: maybe a write committed just before our load and its invalidation is still in flight.
        await asyncio.sleep(self.confirm_delay)
        self._bucket.take(force=True)  # counted against the bound, never refused: a violation must be confirmable
        second = await self._within(reload())
        if second == stored or await self._within(read(key)) != stored:
            return "disagreements_unconfirmed"  # the race resolved itself: the invalidation landed, or data went back
        return stored, first, second
