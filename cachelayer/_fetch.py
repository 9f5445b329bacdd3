"""The request that travels through the fetch pipeline: one per logical fetch, built by :class:`Cache`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from ._entry import Outcome
from ._hooks import FetchHooks, FetchOutcome, Tier
from ._policy import ResolvedPolicy
from ._typed import ValueType

__all__ = ["Fetch"]

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class Fetch(Generic[T]):
    """What to fetch and how: the store key, the loader, the resolved policy, the value type (None: plain JSON or
    msgpack), and whether the caller wants the value parsed (False: the stored bytes, checked). ``hooks`` are this
    fetch's subscribers (None when nobody listens). ``tier`` and ``joined`` are filled in on the way, for the
    hooks' account of how it ended."""

    key: str
    loader: Callable[[], Awaitable[T]]
    policy: ResolvedPolicy
    value_type: ValueType[T] | None
    parse: bool
    hooks: FetchHooks | None = None
    tier: Tier | None = None
    joined: bool = False

    def background(self) -> Fetch[T]:
        """The same fetch for a background refresh: nobody waits for it, so nobody hears of it."""
        return Fetch(self.key, self.loader, self.policy, self.value_type, self.parse)

    def outcome(self, outcome: Outcome) -> FetchOutcome:
        """How this fetch ended for its caller, from its entry's outcome."""
        return "joined" if self.joined else _OUTCOMES[outcome]


_OUTCOMES: Final[dict[Outcome, FetchOutcome]] = {
    Outcome.HIT: "hit",
    Outcome.STALE: "stale",
    Outcome.MISS: "miss",
    Outcome.FAIL_OPEN: "fail_open",
    Outcome.BYPASS: "bypass",
}
