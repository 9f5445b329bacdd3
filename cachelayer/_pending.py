"""Invalidations that could not reach the store yet: retried until they land, and honoured meanwhile.

An invalidation that fails (the store is down, a breaker is open) is not dropped with a log line: it is kept here
and retried in the background with backoff until it lands or until every entry it covers has expired on its own
(``until``: the longest life an entry of the cache can have). Meanwhile this process does not serve those
entries from the store: a fetch of a covered key loads and stores nothing, as if the store were unavailable.
Other processes cannot know: that is the limit docs/consistency.md describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from ._backend import StoreUnavailable
from ._backoff import ExponentialBackoff

__all__ = ["PendingInvalidations"]

log = logging.getLogger("cachelayer")


class PendingInvalidations:
    """The invalidations of one cache that have not landed, and the task that retries them."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.keys: dict[str, float] = {}  # key -> until
        self.tags: dict[str, tuple[bool, float]] = {}  # tag -> (mark_stale, until)
        self.everything: float | None = None  # a clear() that did not land: until
        # Bumped by every invalidation recorded: a retry that lands drops only what was recorded before it was sent
        # (one recorded again while it was in flight may be of a newer write).
        self._recorded: dict[str, int] = {}
        self._sequence = 0
        self.active = False  # one attribute read on the hit path while nothing is pending
        self.retried = 0
        self.landed = 0
        self.expired = 0
        self._task: asyncio.Task[None] | None = None

    def covers(self, key: str, tags: Sequence[str]) -> bool:
        if self.everything is not None or key in self.keys:
            return True
        return bool(tags) and any(tag in self.tags for tag in tags)

    def _record(self, name: str) -> None:
        self._sequence += 1
        self._recorded[name] = self._sequence

    def add_keys(self, keys: Iterable[str], lifetime: float) -> None:
        until = self._clock() + lifetime
        for key in keys:
            self.keys[key] = max(until, self.keys.get(key, until))
            self._record("k:" + key)
        self.active = True

    def settled(self, keys: Iterable[str]) -> None:
        """A later invalidation of ``keys`` (a delete, a write) reached the store: it supersedes theirs."""
        if not self.active:
            return
        for key in keys:
            if self.keys.pop(key, None) is not None:
                self._record("k:" + key)  # a retry in flight must not count as this one
        self.active = self.size() > 0

    def add_tag(self, tag: str, mark_stale: bool, lifetime: float) -> None:
        until = self._clock() + lifetime
        known = self.tags.get(tag)
        # A deletion pending beside a mark_stale of the same tag: the deletion covers both.
        self.tags[tag] = (mark_stale and (known is None or known[0]), max(until, known[1] if known else until))
        self._record("t:" + tag)
        self.active = True

    def add_everything(self, lifetime: float) -> None:
        self.everything = max(self._clock() + lifetime, self.everything or 0.0)
        self._record("*")
        self.active = True

    def _landed(self, name: str, sent_at: int) -> bool:
        """Whether the retry sent at sequence ``sent_at`` covers ``name`` (not recorded again since)."""
        return self._recorded.get(name, 0) <= sent_at

    def size(self) -> int:
        return len(self.keys) + len(self.tags) + (self.everything is not None)

    def _forget_records(self) -> None:
        if not self.keys and not self.tags and self.everything is None:
            self._recorded.clear()

    def start_retrying(
        self,
        delete: Callable[[Sequence[str]], Awaitable[Any]],
        invalidate_tag: Callable[[str, bool], Awaitable[Any]],
        clear: Callable[[], Awaitable[Any]],
    ) -> None:
        """Start the retry task in the running loop, unless it runs there."""
        task = self._task
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            return
        self._task = asyncio.create_task(
            self._retry(delete, invalidate_tag, clear), name="cachelayer-pending-invalidations"
        )

    async def _retry(
        self,
        delete: Callable[[Sequence[str]], Awaitable[Any]],
        invalidate_tag: Callable[[str, bool], Awaitable[Any]],
        clear: Callable[[], Awaitable[Any]],
    ) -> None:
        delays = ExponentialBackoff(0.05, 2.0, factor=2.0).delays()
        while self.active:
            await asyncio.sleep(next(delays))
            self._drop_expired()
            self.retried += 1
            try:
                if self.everything is not None:
                    sent_at = self._sequence
                    await clear()
                    if self._landed("*", sent_at):
                        self.everything = None
                        self.landed += 1
                for tag, (mark_stale, _) in list(self.tags.items()):
                    sent_at = self._sequence
                    await invalidate_tag(tag, mark_stale)
                    if self._landed("t:" + tag, sent_at):
                        self.tags.pop(tag, None)
                        self.landed += 1
                if self.keys:
                    keys = list(self.keys)
                    sent_at = self._sequence
                    await delete(keys)
                    for key in keys:
                        if self._landed("k:" + key, sent_at):
                            self.keys.pop(key, None)
                            self.landed += 1
            except StoreUnavailable:
                continue
            self.active = self.size() > 0
            if not self.active:
                self._forget_records()
                log.info("cachelayer: the pending invalidations landed")

    def _drop_expired(self) -> None:
        now = self._clock()
        for key in [key for key, until in self.keys.items() if until <= now]:
            del self.keys[key]
            self.expired += 1
        for tag in [tag for tag, (_, until) in self.tags.items() if until <= now]:
            del self.tags[tag]
            self.expired += 1
        if self.everything is not None and self.everything <= now:
            self.everything = None
            self.expired += 1
        self.active = self.size() > 0

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def stats(self) -> dict[str, int]:
        return {
            "invalidations_pending": self.size(),
            "invalidations_retried": self.retried,
            "invalidations_landed_late": self.landed,
            "invalidations_expired_pending": self.expired,
        }
