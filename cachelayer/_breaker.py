"""A circuit breaker for the Redis connection: stop paying a timeout per request while Redis is down."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

__all__ = ["CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Closed: calls pass. After ``failure_threshold`` consecutive failures it opens and every call is refused
    at once for ``cooldown`` seconds. Then it lets one probe through (half-open): a success closes it, a failure
    opens it for another cool-down.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown: float = 2.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() - self._opened_at >= self.cooldown:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a call go to Redis now? In half-open state only the first caller gets through, as the probe."""
        return self.permit() is not None

    def permit(self) -> Literal["call", "probe"] | None:
        """Like :meth:`allow`, but says whether the caller is the half-open probe (None: refused)."""
        if self._opened_at is None:
            return "call"
        if self._probing or self._clock() - self._opened_at < self.cooldown:
            return None
        self._probing = True
        return "probe"

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing or (self._opened_at is None and self._failures >= self.failure_threshold):
            self._opened_at = self._clock()
            self._probing = False
            self.opened_count += 1

    def record_abandoned(self) -> None:
        """A call ended with neither answer (cancelled): let the next caller probe instead of waiting forever."""
        self._probing = False
