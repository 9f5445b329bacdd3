"""How one entry is kept: the per-entry policy, and the cache's defaults applied to it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TypedDict

from ._stampede import StampedePolicy

__all__ = ["EntryPolicy", "PolicyFields", "ResolvedPolicy", "policy_of"]


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
