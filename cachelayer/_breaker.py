"""A circuit breaker for a store: stop paying a timeout per request while the store is down.

Every transition is logged at WARNING with the store it guards (``store``, e.g. ``Redis 127.0.0.1:6379``, set by
the backend) and its reason (an open breaker means hits are turning into database loads: the operator must be able
to see where and why), at most once per ``log_interval`` for repeated re-openings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["BreakerState", "CircuitBreaker", "describe_error"]

log = logging.getLogger("cachelayer")

BreakerState = Literal["closed", "open", "half_open"]
_UNNAMED = frozenset({"store", "redis"})  # default names, which say nothing next to the store's


def describe_error(exc: BaseException) -> str:
    """``ConnectionError: Error 111 connecting to ...``: the exception's type and its own message."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class CircuitBreaker:
    """Closed: calls pass. After ``failure_threshold`` consecutive failures it opens and every call is refused
    at once for ``cooldown`` seconds. Then it lets one probe through (half-open): a success closes it, a failure
    opens it for another cool-down.

    Timeouts that ran side by side count as one failure: a timed-out call that began before the last failure was
    recorded (``record_failure(..., began=...)``) was in flight with it, and saw the same stall. One hiccup of the
    store or of this machine (100-200 ms without an answer: a CPU hog beside Redis) times out every call in flight
    at once, which used to open the breaker by itself on a healthy store; a store that stays silent times out
    call after call, each begun after the last failure, and opens it after ``failure_threshold`` budgets.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown: float = 2.0,
        *,
        name: str = "store",
        store: str | None = None,
        log_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.clock = clock
        self._failures = 0
        self._failed_at = float("-inf")  # when the last failure was recorded
        self._opened_at: float | None = None
        self._probing = False
        self.opened_count = 0
        self.name = name
        self.store = store
        self.log_interval = log_interval
        self._logged_at = float("-inf")
        self._reopens_unlogged = 0
        # Told of every transition (state, reason): the guard forwards them to the cache's hooks.
        self.on_change: Callable[[BreakerState, str | None], None] | None = None

    @property
    def label(self) -> str:
        """How log lines name this breaker: ``for Redis 127.0.0.1:6379``, ``'sessions' for Redis ...``."""
        if self.store is None:
            return self.name
        if self.name in _UNNAMED:
            return f"for {self.store}"
        return f"{self.name!r} for {self.store}"

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._probing or self.clock() - self._opened_at >= self.cooldown:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a call go to Redis now? In half-open state only the first caller gets through, as the probe."""
        return self.permit() is not None

    def permit(self) -> Literal["call", "probe"] | None:
        """Like :meth:`allow`, but says whether the caller is the half-open probe (None: refused)."""
        if self._opened_at is None:
            return "call"
        if self._probing or self.clock() - self._opened_at < self.cooldown:
            return None
        self._probing = True
        if self.on_change is not None:
            self.on_change("half_open", None)
        return "probe"

    def record_success(self) -> None:
        if self._opened_at is not None:
            log.warning(
                "cachelayer: circuit breaker %s closed: the store answers again after %.1f s",
                self.label,
                self.clock() - self._opened_at,
            )
            self._logged_at = float("-inf")
            if self.on_change is not None:
                self.on_change("closed", None)
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self, reason: BaseException | str | None = None, *, began: float | None = None) -> None:
        """A call failed. ``began`` (this breaker's clock), for a timeout: when the call began; one that began
        before the last failure was recorded counts with it (see the class docstring)."""
        now = self.clock()
        if began is not None and began < self._failed_at and not self._probing:
            return
        self._failed_at = now
        self._failures += 1
        if self._probing or (self._opened_at is None and self._failures >= self.failure_threshold):
            reopening = self._probing
            self._opened_at = now
            self._probing = False
            self.opened_count += 1
            self._log_open(now, reopening, reason)
            if self.on_change is not None:
                self.on_change("open", describe_error(reason) if isinstance(reason, BaseException) else reason)

    def _log_open(self, now: float, reopening: bool, reason: BaseException | str | None) -> None:
        if reopening and now - self._logged_at < self.log_interval:
            self._reopens_unlogged += 1
            return
        self._logged_at = now
        log.warning(
            "cachelayer: circuit breaker %s %s after %d consecutive failures (last: %s); calls fail open "
            "for %.1f s%s",
            self.label,
            "reopened" if reopening else "opened",
            self._failures,
            describe_error(reason) if isinstance(reason, BaseException) else reason,
            self.cooldown,
            f" ({self._reopens_unlogged} reopenings not logged)" if self._reopens_unlogged else "",
        )
        self._reopens_unlogged = 0

    def record_abandoned(self) -> None:
        """A call ended with neither answer (cancelled): let the next caller probe instead of waiting forever."""
        self._probing = False
