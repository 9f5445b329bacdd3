"""Waking lease waiters the moment a value lands, through one shared pub/sub connection per cache.

Measured (``python -m benchmarks.lease_wake``): a waiter polling with backoff learns of a 50 ms load ~34 ms late
with the default poll schedule, ~9 ms late polling every 2-20 ms; woken by pub/sub, ~0.5 ms late. So waiters
subscribe to the key's channel and the loader publishes after its write. Polling stays as the safety net: a
message can be lost (sent before the subscription took effect, or while the pub/sub connection reconnects), and
then the next poll, at most ``poll_max`` later, finds the value. Nothing depends on a message arriving.

On Redis Cluster the channel is sharded (SSUBSCRIBE / SPUBLISH) and carries the key's hash tag, so it lives on
the key's own shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

__all__ = ["ReadyNotifier"]

log = logging.getLogger("cachelayer")


class ReadyNotifier:
    """Subscriptions of this process's waiters, and the publishing of "the value for this key is in"."""

    def __init__(self, client: Redis | RedisCluster, *, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._sharded = isinstance(client, RedisCluster)
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._closed = False

    async def publish(self, channel: str) -> None:
        """Best effort: a failure only means the waiters find out by polling."""
        try:
            async with asyncio.timeout(self._timeout):
                if self._sharded:
                    await self._client.spublish(channel, b"1")
                else:
                    await self._client.publish(channel, b"1")
        except (RedisError, OSError, TimeoutError):
            return

    async def subscribe(self, channel: str) -> asyncio.Future[None] | None:
        """A future resolved when ``channel`` gets a message (or the connection breaks), or None if the
        subscription could not be made: then the caller just polls."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.get(channel)
        if waiters is not None:
            waiters.add(future)
            return future
        self._waiters[channel] = {future}  # before the await: a second waiter joins instead of re-subscribing
        try:
            async with asyncio.timeout(self._timeout):
                if self._pubsub is None:
                    self._pubsub = self._client.pubsub()
                if self._sharded:
                    await self._pubsub.ssubscribe(channel)
                else:
                    await self._pubsub.subscribe(channel)
        except (RedisError, OSError, TimeoutError):
            await self._reset()
            return None
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="cachelayer-ready-notifier")
        return future

    async def unsubscribe(self, channel: str, future: asyncio.Future[None] | None) -> None:
        waiters = self._waiters.get(channel)
        if future is None or waiters is None:
            return
        waiters.discard(future)
        if waiters:
            return
        del self._waiters[channel]
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self._timeout):
                if self._sharded:
                    await self._pubsub.sunsubscribe(channel)
                else:
                    await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        try:
            while self._waiters and not self._closed:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None or message["type"] not in ("message", "smessage"):
                    continue
                channel = message["channel"]
                channel = channel.decode() if isinstance(channel, bytes) else channel
                for future in self._waiters.get(channel, ()):
                    if not future.done():
                        future.set_result(None)
        except (RedisError, OSError) as exc:
            log.debug("cachelayer: pub/sub connection lost (%r); waiters fall back to polling", exc)
            await self._reset()

    async def _reset(self) -> None:
        # Wake everyone so they poll now, and start from a fresh connection on the next subscription.
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_result(None)
        self._waiters.clear()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            # Bounded, for the same reason as LocalCache.aclose: a swallowed cancellation must not hang us.
            await asyncio.wait({self._reader}, timeout=2.0)
        await self._reset()
