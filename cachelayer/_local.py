"""The local tier (L1): stored frames of chosen keys kept in process memory, coherent through Redis.

Every write and invalidation a process makes is broadcast on one Redis pub/sub channel per namespace; each
process's listener drops the entries named. That keeps L1s coherent within the message's delivery time. When the
channel is down, or has not proved alive (a message or a PING answer) within ``max_staleness``, an entry is served
only while it is younger than ``max_staleness``; when the listener notices a break it drops everything, since it
may have missed invalidations meanwhile. So an L1 never serves a value that another process replaced or deleted
more than ``max_staleness`` ago (plus delivery time), whatever happens to Redis.

Every process that writes to a namespace whose readers use an L1 must itself have the local tier configured:
the broadcast is sent by the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from ._codec import Frame

__all__ = ["LocalCache", "LocalEntry"]

log = logging.getLogger("cachelayer")

_EVERYTHING: Final = b"*"


def _size(data: bytes, body: bytes | memoryview | None) -> int:
    """Bytes an entry holds: the stored frame, plus the body unless it is a view into the frame (an
    uncompressed payload is served straight out of ``data``)."""
    if body is None or (isinstance(body, memoryview) and body.obj is data):
        return len(data)
    return len(data) + len(body)


@dataclass(slots=True)
class LocalEntry:
    data: bytes  # the frame as stored in Redis
    frame: Frame
    body: bytes | memoryview | None  # the decompressed payload, kept once someone needed it
    stored_at: float


class LocalCache:
    """A bounded LRU of stored frames (``max_entries`` and ``max_bytes``), see the module docstring."""

    def __init__(
        self,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_staleness: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_bytes < 1 or max_staleness <= 0:
            raise ValueError("max_entries, max_bytes and max_staleness must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_staleness = max_staleness
        self._clock = clock
        self._entries: OrderedDict[str, LocalEntry] = OrderedDict()
        self._bytes = 0
        self._origin = os.urandom(8).hex().encode()
        self._connected_since: float | None = None
        self._last_heard = float("-inf")
        self._client: Redis | RedisCluster | None = None
        self._channel = ""
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self.hits = 0
        self.evictions = 0
        self.remote_invalidations = 0
        self.channel_breaks = 0

    # -- the store -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def channel_alive(self) -> bool:
        return self._connected_since is not None and self._clock() - self._last_heard <= self.max_staleness

    def get(self, key: str) -> LocalEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        if now - entry.stored_at > self.max_staleness and not (
            self._connected_since is not None
            and entry.stored_at >= self._connected_since
            and now - self._last_heard <= self.max_staleness
        ):
            self._drop(key)  # may have missed an invalidation: not served past max_staleness
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: str, data: bytes, frame: Frame, body: bytes | memoryview | None = None) -> None:
        size = _size(data, body)
        if size > self.max_bytes:
            return
        self._drop(key)
        self._entries[key] = LocalEntry(data, frame, body, self._clock())
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1

    def keep_body(self, entry: LocalEntry, body: bytes | memoryview) -> None:
        if entry.body is None:
            entry.body = body
            self._bytes += _size(entry.data, body) - len(entry.data)

    def discard(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._drop(key)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= _size(entry.data, entry.body)

    # -- the invalidation channel ----------------------------------------------------------------------------

    def attach(self, client: Redis | RedisCluster, channel: str) -> None:
        """Called by :class:`Cache`: where to broadcast and listen. The listener starts on first use."""
        if self._client is not None and (self._client is not client or self._channel != channel):
            raise ValueError("a LocalCache serves one Cache: give each Cache its own")
        self._client, self._channel = client, channel

    def ensure_listening(self) -> None:
        if self._listener is None and self._client is not None and not self._closed:
            self._listener = asyncio.create_task(self._listen(), name="cachelayer-local-invalidation")

    async def broadcast(self, keys: Iterable[str] | None, *, budget: float) -> None:
        """Tell the other processes to drop ``keys`` (None: everything). Best effort: a lost message is bounded
        by the readers' ``max_staleness`` rule only if their channel noticed; see the module docstring."""
        if self._client is None:
            return
        payload = self._origin + b"\n" + (_EVERYTHING if keys is None else "\n".join(keys).encode())
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(budget):
                await self._client.publish(self._channel, payload)

    def _apply(self, payload: bytes) -> None:
        origin, _, names = payload.partition(b"\n")
        if origin == self._origin:
            return  # our own write: our L1 already holds the new value
        self.remote_invalidations += 1
        if names == _EVERYTHING:
            self.clear()
        else:
            self.discard(names.decode().split("\n"))

    async def _listen(self) -> None:
        assert self._client is not None
        backoff = 0.1
        while not self._closed:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while not self._closed:
                    message = await pubsub.get_message(timeout=self.max_staleness / 3)
                    if message is None:
                        await pubsub.ping()  # answered by a "pong" message: the channel is alive
                        continue
                    self._last_heard = self._clock()
                    kind = message["type"]
                    if kind == "subscribe":
                        self._connected_since = self._last_heard
                        backoff = 0.1
                    elif kind == "message":
                        self._apply(message["data"])
            except (RedisError, OSError) as exc:
                log.warning("cachelayer: local-tier invalidation channel lost (%r); dropping the local tier", exc)
            finally:
                if self._connected_since is not None:
                    self.channel_breaks += 1
                self._connected_since = None
                self.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def aclose(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            # Bounded: on Python 3.11 redis-py can swallow a cancellation (asyncio.wait_for inside the client);
            # the loop then sees _closed and ends on its own, but we never wait on it for long.
            await asyncio.wait({self._listener}, timeout=2.0)
            self._listener = None

    def stats(self) -> dict[str, Any]:
        return {
            "local_hits": self.hits,
            "local_entries": len(self._entries),
            "local_bytes": self._bytes,
            "local_evictions": self.evictions,
            "local_remote_invalidations": self.remote_invalidations,
            "local_channel_alive": self.channel_alive(),
            "local_channel_breaks": self.channel_breaks,
        }
