"""Backoff: how long to wait between attempts, as one small strategy object (redis-py's ``Backoff`` is the model).

Used where the cache retries on its own: a lease waiter polling for another process's value, and the local
tier's listener reconnecting to the store. Pass your own to change the schedule (or to make a test fast).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Backoff", "ExponentialBackoff"]


class Backoff(Protocol):
    """A schedule of delays (seconds) between attempts; each call of :meth:`delays` starts it afresh."""

    def delays(self) -> Iterator[float]: ...


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """``initial``, then ``factor`` times the previous delay, never more than ``maximum``. ``jitter`` (0 to 1)
    takes up to that fraction off each delay at random, so processes that failed together do not retry in step."""

    initial: float
    maximum: float
    factor: float = 2.0
    jitter: float = 0.0
    rand: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"need 0 < initial <= maximum, got {self.initial} and {self.maximum}")
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, got {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay * (1 - self.jitter * self.rand()) if self.jitter else delay
            delay = min(delay * self.factor, self.maximum)
