"""The request that travels through the fetch pipeline: one per logical fetch, built by :class:`Cache`."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from ._entry import Outcome
from ._hooks import FetchHooks, FetchOutcome, Tier, UntilEnded
from ._policy import ResolvedPolicy
from ._typed import ValueType

__all__ = ["Fetch", "moment"]

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class Fetch(Generic[T]):
    """What to fetch and how: the store key, the loader, the resolved policy, the value type (None: plain JSON or
    msgpack), whether the caller wants the value parsed (False: the stored bytes, checked), and the function's name
    (for hooks, traces and the consistency monitor).

    ``hooks`` are this fetch's subscribers (None when nobody listens, and once they were told it ended);
    ``carried``: the same hooks as the flight this caller started carries them, silenced when the fetch ends (the
    flight may outlive it). ``tier`` and ``joined`` are filled in on the way, for the hooks' account of how it
    ended; ``retried`` when this caller loads again because the load it joined was refused its fill. ``settled``:
    called by the flight that runs this fetch once its value is decided (loaded, or found in the store), so no
    caller arriving later joins it. ``deadline``: the caller's own (``Cache.fetch(deadline=)``, the running loop's
    time), combined with an enclosing ``time_budget`` where it waits (``_deadline.py``)."""

    key: str
    loader: Callable[[], Awaitable[T]]
    policy: ResolvedPolicy
    value_type: ValueType[T] | None
    parse: bool
    function: str = "cachelayer.fetch"
    hooks: FetchHooks | None = None
    tier: Tier | None = None
    joined: bool = False
    retried: bool = False
    settled: Callable[[], None] | None = None
    deadline: float | None = None
    carried: UntilEnded | None = None

    def background(self) -> Fetch[T]:
        """The same fetch for a background refresh: nobody waits for it, so nobody hears of it."""
        return Fetch(self.key, self.loader, self.policy, self.value_type, self.parse, self.function)

    def outcome(self, outcome: Outcome) -> FetchOutcome:
        """How this fetch ended for its caller, from its entry's outcome."""
        return "joined" if self.joined else _OUTCOMES[outcome]


_MOMENTS: Final = itertools.count()


def moment() -> int:
    """A number above every one handed out before in this process: orders a caller joining a flight against the
    flight's store reads (a read sent before the caller joined may answer from before the caller began)."""
    return next(_MOMENTS)


_OUTCOMES: Final[dict[Outcome, FetchOutcome]] = {
    Outcome.HIT: "hit",
    Outcome.STALE: "stale",
    Outcome.MISS: "miss",
    Outcome.FAIL_OPEN: "fail_open",
    Outcome.BYPASS: "bypass",
}
