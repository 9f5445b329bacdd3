"""Tag invalidation by stamps: one store write per tag, whatever the number of entries that carry it.

Each tag has a **stamp** in the store (16 random bytes under ``{namespace}:tag:{<tag>}``). A load of a tagged entry
reads its tags' stamps before it reads its source (``Backend.tag_stamps``, which makes a stamp where none is) and
its frame carries them (the codec's tag section). ``invalidate_tags`` gives each tag a new stamp: the first half
new means "deleted", only the second half new means "marked stale". A reader compares the stamps a frame carries
with the tags' stamps now (read beside the value: one ``MGET`` on a standalone Redis):

- all equal: the entry is live;
- a first half differs, or the tag's stamp is missing (expired, evicted, cleared): the entry is gone (a miss);
- only second halves differ: the entry is stale (reloaded; served only when the reload fails).

A stamp is never reused (random, so even a stamp evicted and made again cannot match an old frame), which is
why a missing stamp can only ever mean "gone": the "missing generation counts as the initial one" mistake cannot
happen. A fill checks the stamps too (in its script on Redis and in memory), so a load that began before a tag
invalidation does not store; on a cluster, where stamps live on other shards, the check runs beside the write and
what such a fill wrote is refused by every reader. A stamp lives as long as the longest entry that can carry it
(renewed by every load), so the bookkeeping is one small key per tag in use.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Final

from ._codec import INVALIDATED_AT, STAMP_SIZE, Frame

__all__ = ["HALF", "Verdict", "judge", "judged_frame"]

HALF: Final = STAMP_SIZE // 2


class Verdict(enum.Enum):
    LIVE = "live"
    STALE = "stale"
    GONE = "gone"


def judge(stamped: Sequence[tuple[str, bytes]], current: Mapping[str, bytes | None]) -> Verdict:
    """What an entry stamped with ``stamped`` is now, given each tag's ``current`` stamp (None: missing)."""
    verdict = Verdict.LIVE
    for tag, stamp in stamped:
        now = current.get(tag)
        if now is None or len(now) != STAMP_SIZE or now[:HALF] != stamp[:HALF]:
            return Verdict.GONE
        if now != stamp:
            verdict = Verdict.STALE
    return verdict


def judged_frame(frame: Frame, current: Mapping[str, bytes | None]) -> Frame | None:
    """``frame`` as its tags' current stamps say: itself (live), a copy marked stale, or None (gone)."""
    verdict = judge(frame.tags, current)
    if verdict is Verdict.LIVE:
        return frame
    if verdict is Verdict.GONE:
        return None
    # A copy: the frame may be shared (the reader's memo, the local tier).
    return dataclasses.replace(frame, expires_at=INVALIDATED_AT)
