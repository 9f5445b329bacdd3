"""How one entry is kept: the per-entry policy, and the cache's defaults applied to it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TypedDict

from ._stampede import StampedePolicy

__all__ = ["EntryPolicy", "PolicyDefaults", "PolicyFields", "ResolvedPolicy", "policy_of", "resolve_policy"]


class PolicyFields(TypedDict, total=False):
    """:class:`EntryPolicy`'s fields as keyword arguments (``cache.get_or_set("k", load, ttl=30)``)."""

    ttl: float | None
    stale_ttl: float | None
    none_ttl: float | None
    tags: Iterable[str]
    local: bool
    stampede: StampedePolicy | None


@dataclass(frozen=True, slots=True)
class EntryPolicy:
    """How an entry is kept. ``None`` fields take the cache's defaults.

    ``ttl``: seconds the value is fresh. ``stale_ttl``: how long it outlives that to be served stale while one
    refresh runs, or when the loader fails (default: the cache's, scaled to this TTL). ``none_ttl``: the TTL of a
    cached ``None`` (a "not found"). ``tags``: names for :meth:`Cache.invalidate_tags`. ``local``: serve hits from
    the cache's local tier (:class:`LocalCache`) when it has one. ``stampede``: the stampede defences.
    """

    ttl: float | None = None
    stale_ttl: float | None = None
    none_ttl: float | None = None
    tags: tuple[str, ...] = field(default=())
    local: bool = False
    stampede: StampedePolicy | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tags, str) or not isinstance(self.tags, tuple):
            tags: Iterable[str] = (self.tags,) if isinstance(self.tags, str) else self.tags
            object.__setattr__(self, "tags", tuple(tags))
        for name in ("ttl", "none_ttl"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"EntryPolicy.{name} must be positive, not {value!r}")
        if self.stale_ttl is not None and not self.stale_ttl >= 0:
            raise ValueError(f"EntryPolicy.stale_ttl must be non-negative, not {self.stale_ttl!r}")


DEFAULT_POLICY = EntryPolicy()


def policy_of(policy: EntryPolicy | None, fields: PolicyFields) -> EntryPolicy:
    """``policy`` (default: all defaults) with ``fields`` replaced."""
    base = DEFAULT_POLICY if policy is None else policy
    if not fields:
        return base
    if "tags" in fields:
        fields = {**fields, "tags": tuple(fields["tags"])}
    return replace(base, **fields)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ResolvedPolicy:
    """An :class:`EntryPolicy` with every default filled in by the cache that uses it."""

    ttl: float
    stale_ttl: float
    none_ttl: float
    tags: tuple[str, ...]
    local: bool
    stampede: StampedePolicy


@dataclass(frozen=True, slots=True)
class PolicyDefaults:
    """A cache's defaults for what an :class:`EntryPolicy` leaves unset."""

    ttl: float
    stale_ttl: float
    none_ttl: float | None
    stampede: StampedePolicy


def resolve_policy(policy: EntryPolicy, defaults: PolicyDefaults) -> ResolvedPolicy:
    """``policy`` with ``defaults`` filled in: a pure function (the cache memoizes it per policy object)."""
    ttl = defaults.ttl if policy.ttl is None else policy.ttl
    stale_ttl = policy.stale_ttl
    if stale_ttl is None:
        # The stale window scales with a per-entry TTL, so a short-lived value is not served stale for the long
        # window meant for the default TTL.
        stale_ttl = defaults.stale_ttl if ttl == defaults.ttl else ttl * (defaults.stale_ttl / defaults.ttl)
    none_ttl = policy.none_ttl if policy.none_ttl is not None else (defaults.none_ttl or ttl)
    return ResolvedPolicy(ttl, stale_ttl, none_ttl, policy.tags, policy.local, policy.stampede or defaults.stampede)
