"""Downloads counted exactly once (design: docs/service.md, "Downloads").

The MySQL event row is the source of truth: one row per download, under a UNIQUE idempotency key (the client's
``Idempotency-Key`` or one made here). The MongoDB counter is derived from the rows: ``counts.downloads`` =
``downloads_base`` + the wallpaper's events, raised with ``$max`` (idempotent, concurrent-safe, never down). The
request raises it right after its insert; when that step fails the row is still committed (answer 202) and the
:class:`Reconciler` of every process raises it later from the events past a watermark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from .config import DownloadSettings
from .repositories import MongoWallpaperRepository, MySQLRepository
from .repositories.mysql import DuplicateKey

__all__ = ["IDEMPOTENCY_KEY_RE", "DownloadOutcome", "Downloads", "NotRecorded", "Reconciler", "new_key"]

log = logging.getLogger("wallpaper.downloads")
IDEMPOTENCY_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BASE_ATTEMPTS: Final = 3


def new_key() -> str:
    """A server-made idempotency key (``s-`` + 128 random bits): a client may retry with it after a 503."""
    return "s-" + secrets.token_hex(16)


class NotRecorded(Exception):
    """The event row was not (known to be) committed: the client may retry with ``key``, which is safe."""

    def __init__(self, key: str, cause: BaseException) -> None:
        super().__init__(f"download not recorded: {cause!r}")
        self.key = key


class KeyConflict(Exception):
    """The idempotency key was used for another wallpaper."""


@dataclass(frozen=True, slots=True)
class DownloadOutcome:
    """``counted``: the counter shows the event (200); False: committed, counted later (202)."""

    wallpaper_id: int
    downloads: int | None
    counted: bool
    replayed: bool
    key: str


class Downloads:
    def __init__(
        self,
        wallpapers: MongoWallpaperRepository,
        mysql: MySQLRepository,
        invalidate: Callable[[int, str], Awaitable[Any]],
    ) -> None:
        self.wallpapers = wallpapers
        self.mysql = mysql
        self.invalidate = invalidate  # (wallpaper_id, category): drop what shows the counter; never raises
        self.pending: set[int] = set()  # wallpapers whose counter step failed here: the reconciler's first job

    async def record(self, wallpaper_id: int, client_ip: str | None, key: str | None) -> DownloadOutcome | None:
        """Count one download; None for an unknown wallpaper (nothing written).

        Raises the store's error when nothing was written (-> 503), :class:`NotRecorded` when the insert failed
        (-> 503 naming the key to retry with), :class:`KeyConflict` (-> 409)."""
        key = key or new_key()
        state = await self.wallpapers.counter_state(wallpaper_id)
        if state is None:
            return None
        base = await self._base(wallpaper_id, state)
        replayed = False
        try:
            event_id = await self.mysql.insert_download(wallpaper_id, client_ip, key)
        except DuplicateKey as dup:
            if dup.wallpaper_id != wallpaper_id:
                raise KeyConflict(f"Idempotency-Key already used for wallpaper {dup.wallpaper_id}") from None
            event_id, replayed = dup.event_id, True
        except Exception as exc:
            raise NotRecorded(key, exc) from exc
        # Committed: from here on the answer is 2xx.
        try:
            total, upto = await self.mysql.download_counts(wallpaper_id, event_id)
            await self.wallpapers.raise_downloads(wallpaper_id, base + total)
        except Exception as exc:
            log.warning("download %d recorded, counter step failed (reconciler catches up): %r", event_id, exc)
            self.pending.add(wallpaper_id)
            return DownloadOutcome(wallpaper_id, None, False, replayed, key)
        await self.invalidate(wallpaper_id, state["category"])
        return DownloadOutcome(wallpaper_id, base + upto, True, replayed, key)

    async def _base(self, wallpaper_id: int, state: dict[str, Any]) -> int:
        """The wallpaper's ``downloads_base``, set first if missing: the counter as it is minus the events so far
        (a seeded or pre-v3 document already shows those). Set before this request inserts its own row."""
        for _ in range(_BASE_ATTEMPTS):
            if "downloads_base" in state:
                return int(state["downloads_base"])
            seen = int(state.get("counts", {}).get("downloads", 0))
            events = await self.mysql.download_events(wallpaper_id)
            if await self.wallpapers.set_downloads_base(wallpaper_id, seen, seen - events):
                return seen - events
            fresh = await self.wallpapers.counter_state(wallpaper_id)
            if fresh is None:
                break
            state = fresh
        raise ConnectionError(f"wallpaper {wallpaper_id}: its download counter is moving; try again")

    async def sync_counter(self, wallpaper_id: int) -> None:
        """Raise one wallpaper's counter to ``base + events`` (idempotent)."""
        state = await self.wallpapers.counter_state(wallpaper_id)
        if state is None:
            return
        base = await self._base(wallpaper_id, state)
        total, _ = await self.mysql.download_counts(wallpaper_id)
        if int(state.get("counts", {}).get("downloads", 0)) < base + total:
            await self.wallpapers.raise_downloads(wallpaper_id, base + total)
            await self.invalidate(wallpaper_id, state["category"])


class Reconciler:
    """Catches up counters that lag their events: once at start-up, then every ``reconcile_interval``.

    One pass: the wallpapers this process failed to count (``pending``), then up to ``reconcile_batch`` events past
    the watermark; the watermark then moves to the last of those older than ``reconcile_settle`` (a younger one
    may sit behind a lower id still committing). Every process runs it; each step is idempotent, so they do not
    need to agree. Bounded: one batch per pass, one count and at most one update per wallpaper."""

    def __init__(self, downloads: Downloads, settings: DownloadSettings) -> None:
        self.downloads = downloads
        self.settings = settings
        self.passes = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def run_once(self) -> int:
        """One pass; returns how many wallpapers were checked."""
        d, s = self.downloads, self.settings
        checked: set[int] = set()
        for wallpaper_id in list(d.pending):
            await d.sync_counter(wallpaper_id)
            d.pending.discard(wallpaper_id)
            checked.add(wallpaper_id)
        mark = await d.mysql.watermark()
        events = await d.mysql.events_after(mark, s.reconcile_batch)
        for _, wallpaper_id, _ in events:
            if wallpaper_id not in checked:
                await d.sync_counter(wallpaper_id)
                checked.add(wallpaper_id)
        settled = mark
        for event_id, _, age in events:  # the settled prefix only
            if age < s.reconcile_settle:
                break
            settled = event_id
        if settled > mark:
            await d.mysql.advance_watermark(settled)
        self.passes += 1
        return len(checked)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        # Stops on the event, not only on cancel(): PyMongo's async driver can swallow a cancellation that
        # lands inside one of its calls (seen with 4.20), and the loop would then go on sleeping.
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # a store is down: try again next interval
                log.warning("download reconciler: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.reconcile_interval)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            self._task = None

