"""Pub/sub on a standalone Redis: one connection of the running loop's client, every call within the budget, every
redis-py error a :class:`StoreUnavailable` naming the store (a cluster has ``_redis_cluster.ClusterSubscription``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub

from ._backend import Message, StoreUnavailable
from ._budget import within_budget
from ._errors import CacheClosedError
from ._guard import outage_reason
from ._redis_cluster import CLIENT_ERRORS

__all__ = ["CLOSED_MESSAGE", "RedisSubscription"]

T = TypeVar("T")

CLOSED_MESSAGE: Final = "the cache's Redis backend was closed (aclose()); build a new cache"
# As the backend's: redis-py raises RuntimeError for a connection of a closed loop or an unset pub/sub connection.
_PUBSUB_ERRORS: Final = (*CLIENT_ERRORS, TimeoutError, RuntimeError)


class RedisSubscription:
    """A pub/sub connection of the running loop's standalone client (see :class:`cachelayer.Subscription`; a cluster
    has :class:`ClusterSubscription`). ``sharded`` changes nothing on one node: the backend publishes plainly there.

    ``alive_at`` is a watermark, as on a cluster: when the newest answered PING (each carries a token of its own)
    or the SUBSCRIBE was sent; whatever Redis received before then has been delivered here. A message does not
    move it (it may itself be late)."""

    def __init__(
        self,
        client: Callable[[], Redis | RedisCluster],
        *,
        store: str,
        timeout: float,
        closed: Callable[[], bool],
    ) -> None:
        self._client = client
        self._store = store
        self._timeout = timeout
        self._closed = closed
        self._pubsub: PubSub | None = None
        self.alive_at = float("-inf")
        self._pings: dict[bytes, float] = {}  # token -> when sent, not answered yet
        self._ping_count = 0

    def _connection(self) -> PubSub:
        if self._closed():
            raise CacheClosedError(CLOSED_MESSAGE)
        if self._pubsub is None:
            self._pubsub = self._client().pubsub()
        return self._pubsub

    async def _guarded(self, make: Callable[[], Awaitable[T]], budget: float) -> T:
        try:
            return await within_budget(budget, make)
        except _PUBSUB_ERRORS as exc:
            raise StoreUnavailable(f"Redis {self._store} pub/sub failed: {outage_reason(exc, budget)}") from exc

    async def subscribe(self, *channels: str) -> None:
        pubsub = self._connection()
        sent = time.monotonic()
        await self._guarded(lambda: pubsub.subscribe(*channels), self._timeout)
        self.alive_at = max(self.alive_at, sent)

    async def unsubscribe(self, *channels: str) -> None:
        if self._pubsub is None:
            return
        pubsub = self._pubsub
        await self._guarded(lambda: pubsub.unsubscribe(*channels), self._timeout)

    async def next_message(self, timeout: float) -> Message | None:  # noqa: ASYNC109  # the protocol's
        pubsub = self._connection()
        read = pubsub.get_message
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            message = await self._guarded(lambda: read(timeout=remaining), remaining + self._timeout)
            if message is None:
                continue
            kind = message["type"]
            if kind == "pong":
                self._answered(message["data"])
            elif kind in ("message", "smessage", "pmessage"):
                channel = message["channel"]
                return (channel.decode() if isinstance(channel, bytes) else channel), message["data"]
        return None

    async def ping(self) -> None:
        """Send a PING with a token of its own; its answer, read by :meth:`next_message`, moves ``alive_at``."""
        pubsub = self._connection()
        self._ping_count += 1
        token = f"cachelayer-ping-{self._ping_count}".encode()
        self._pings[token] = time.monotonic()
        await self._guarded(lambda: pubsub.ping(token), self._timeout)

    def _answered(self, data: object) -> None:
        token = data.encode() if isinstance(data, str) else data
        sent = self._pings.get(token) if isinstance(token, bytes) else None
        if sent is None:
            return
        for older in [t for t, at in self._pings.items() if at <= sent]:  # answers come in order
            del self._pings[older]
        self.alive_at = max(self.alive_at, sent)

    async def aclose(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), self._timeout)  # type: ignore[no-untyped-call]
