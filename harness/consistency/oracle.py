"""The database the loaders read, with a version per write, and the oracle that judges what the caches did.

Every row's value is its version (an int: 0 at the start, +1 per committed write); a cached value therefore says
which version it carries. The oracle keeps, per store key, the newest version whose invalidation has completed
(the writer's ``delete`` / ``invalidate_tags`` / ``set`` call returned), and counts:

- ``stale_sets``: a value stored (a fill applied, or an explicit write) carrying a version older than one whose
  invalidation had already completed: the race the tickets (and, for tags, the stamps) exist to close. A value
  whose tag stamps were already outdated when it was written is never taken as fresh by any reader: it is counted
  in ``dead_writes`` instead (``gated.py`` says why that is sound);
- ``stale_reads_after_invalidate``: a read that started after the invalidation of version v returned and answered
  a version < v;
- ``stale_at_end``: once every actor is done and the background work settled, a key whose stored fresh value, or
  whose fresh read in some process, is older than the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from cachelayer import Codec

__all__ = ["Counters", "Database", "Oracle"]


@dataclass(slots=True)
class Counters:
    """What a run of universes found (summed with ``+=``)."""

    universes: int = 0
    stale_sets: int = 0
    stale_at_end: int = 0
    stale_reads_after_invalidate: int = 0
    revoked_fills: int = 0
    reads: int = 0
    writes: int = 0  # values stored live
    dead_writes: int = 0  # values stored with tag stamps already outdated (a write racing a tag invalidation)
    stale_by_design: int = 0  # a stale copy served because a loader failed (stale-if-error): documented
    stuck: int = 0  # universes where actors could not finish (deadlock) or ran past the step limit
    errors: int = 0  # unexpected exceptions out of the cache

    def __iadd__(self, other: Counters) -> Counters:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def stale(self) -> int:
        return self.stale_sets + self.stale_at_end + self.stale_reads_after_invalidate

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Database:
    """Rows ``0..rows-1``, each at version 0."""

    def __init__(self, rows: int) -> None:
        self.versions = [0] * rows

    def commit(self, row: int) -> int:
        self.versions[row] += 1
        return self.versions[row]


class Oracle:
    """Judges one universe. ``keys``: store key -> row (every store key a universe reads through)."""

    _codec = Codec()

    def __init__(self, keys: dict[str, int], prefix: str) -> None:
        self.rows = keys
        self.prefix = prefix
        self.invalidated: dict[str, int] = dict.fromkeys(keys, 0)
        # Invalidations that did not reach the store (a store call failed) bind only the writer's process.
        self.invalidated_in: dict[tuple[int, str], int] = {}
        self.counters = Counters(universes=1)
        self.seen: set[str] = set()

    # -- the store side (GatedBackend's observer) ----------------------------------------------------------------

    def written(self, key: str, data: bytes) -> None:
        if key not in self.rows:
            return
        self.counters.writes += 1
        if self.version_of(data) < self.invalidated[key]:
            self.counters.stale_sets += 1

    def dead_write(self, key: str, data: bytes) -> None:
        if key in self.rows:
            self.counters.dead_writes += 1

    def touched(self, keys: Sequence[str]) -> None:
        prefix = self.prefix
        self.seen.update(key for key in keys if key.startswith(prefix))

    @classmethod
    def version_of(cls, data: bytes) -> int:
        version = cls._codec.decode(data)
        assert isinstance(version, int), version
        return version

    # -- the actors' side -------------------------------------------------------------------------------------

    def invalidation_done(self, key: str, version: int, *, only_in: int | None = None) -> None:
        """A writer's invalidation of ``key`` returned; it had committed ``version`` before it started.
        ``only_in``: it did not reach the store (a failed store call), so only that process is bound by it."""
        if only_in is not None:
            if version > self.invalidated_in.get((only_in, key), 0):
                self.invalidated_in[only_in, key] = version
        elif version > self.invalidated[key]:
            self.invalidated[key] = version

    def read_started(self, key: str, process: int) -> int:
        return max(self.invalidated[key], self.invalidated_in.get((process, key), 0))

    def read_answered(self, key: str, started_after: int, version: int, *, stale_by_design: bool) -> None:
        self.counters.reads += 1
        if version < started_after:
            if stale_by_design:
                self.counters.stale_by_design += 1
            else:
                self.counters.stale_reads_after_invalidate += 1
