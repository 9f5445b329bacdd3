"""Waking lease waiters the moment a value lands, through one shared subscription per cache and event loop.

Measured (``python -m benchmarks.lease_wake``, two real caches, benchmarks/results/lease_wake.md): a waiter
polling with backoff learns of another's load 13 ms late at p50 with the default poll schedule; woken by pub/sub,
1.6 ms late. So waiters subscribe to the key's channel and the
loader publishes after its write. Polling stays the safety net: a message can be lost (sent before the
subscription took effect, or while the connection reconnects), and then the next poll, at most ``poll_max``
later, finds the value. Nothing depends on a message arriving.

The channel is sharded (Redis Cluster SSUBSCRIBE / SPUBLISH) and carries the key's hash tag, so it lives on the
key's own shard. Any error of the reader (whatever its type) resets the subscription and wakes every waiter, who
polls at once and subscribes again on its next wait.

A waiter's future resolves to the message: ``b"1"`` (the value is in), a failure (:func:`failure_message`: the
load failed, see ``StampedePolicy.share_failures``), or ``b""`` (the subscription was reset). Any other message
(from a newer release during a rolling deploy) is a plain wake-up: the waiter polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Final

from ._backend import Backend, StoreUnavailable, Subscription

__all__ = ["LoadFailure", "ReadyNotifier", "failure_message", "parse_failure"]

log = logging.getLogger("cachelayer")

READY: Final = b"1"
_FAILED: Final = b"failed\n"
_REASON_LIMIT: Final = 300


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """What a waiter hears of a failed load in another process: the exception's qualified name and message."""

    error_type: str
    reason: str


def failure_message(error: BaseException) -> bytes:
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    reason = str(error).replace("\n", " ")[:_REASON_LIMIT]
    return _FAILED + name.encode() + b"\n" + reason.encode("utf-8", "replace")


def parse_failure(message: bytes) -> LoadFailure | None:
    if not message.startswith(_FAILED):
        return None
    name, _, reason = message[len(_FAILED) :].partition(b"\n")
    return LoadFailure(name.decode("utf-8", "replace"), reason.decode("utf-8", "replace"))


class ReadyNotifier:
    """Subscriptions of this loop's waiters, and the publishing of "the value for this key is in"."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._subscription: Subscription | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[str, set[asyncio.Future[bytes]]] = {}
        self._closed = False
        self.resets = 0

    async def publish(self, channel: str, message: bytes = READY) -> None:
        """Best effort: a failure only means the waiters find out by polling."""
        with contextlib.suppress(StoreUnavailable):
            await self._backend.publish(channel, message, sharded=True)

    async def subscribe(self, channel: str) -> asyncio.Future[bytes] | None:
        """A future resolved when ``channel`` gets a message (or the connection breaks), or None if the
        subscription could not be made: then the caller just polls."""
        if self._closed:
            return None
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.get(channel)
        if waiters is not None:
            waiters.add(future)
            return future
        self._waiters[channel] = {future}  # before the await: a second waiter joins instead of re-subscribing
        if self._subscription is None:
            self._subscription = self._backend.subscription(sharded=True)
        try:
            await self._subscription.subscribe(channel)
        except StoreUnavailable:
            await self._reset()
            return None
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="cachelayer-ready-notifier")
        return future

    async def unsubscribe(self, channel: str, future: asyncio.Future[bytes] | None) -> None:
        waiters = self._waiters.get(channel)
        if future is None or waiters is None:
            return
        waiters.discard(future)
        if waiters:
            return
        del self._waiters[channel]
        if self._subscription is not None:
            with contextlib.suppress(StoreUnavailable):
                await self._subscription.unsubscribe(channel)

    async def _read(self) -> None:
        subscription = self._subscription
        try:
            while self._waiters and not self._closed and subscription is self._subscription:
                assert subscription is not None
                message = await subscription.next_message(1.0)
                if message is None:
                    continue
                for future in self._waiters.get(message[0], ()):
                    if not future.done():
                        future.set_result(message[1])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any reader error: never let the task die silently with waiters parked
            log.debug("cachelayer: wake-up subscription lost (%r); waiters fall back to polling", exc)
            await self._reset()

    async def _reset(self) -> None:
        # Wake everyone so they poll now, and start from a fresh connection on the next subscription.
        self.resets += 1
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_result(b"")
        self._waiters.clear()
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            # Bounded: on Python 3.11 redis-py can swallow a cancellation (asyncio.wait_for inside the client).
            await asyncio.wait({self._reader}, timeout=2.0)
        await self._reset()
