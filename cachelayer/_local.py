"""The local tier (L1): stored frames of chosen keys kept in process memory, coherent through the store.

Every write and invalidation a process makes is broadcast on one pub/sub channel per namespace; each
process's listener drops the entries named (by key, or by a tag their frames carry). That keeps L1s coherent
within the message's delivery time.

The channel's health is a watermark, not a feeling: the listener asks its node for a sign of life every
``max_staleness / 6`` (a PING with a token of its own), and ``last heard`` is when the newest answered ping was
sent: everything the node received before then has been delivered. An entry older than ``max_staleness`` is
served only while the channel has been up since before the entry was stored and was heard within
``max_staleness``; so an entry is never served more than ``max_staleness`` after an invalidation that the store's
node received. When a ping stays unanswered for ``max_staleness / 3`` (the node is frozen, gone, or that slow),
or the connection breaks, the listener drops everything, since it may have missed invalidations, and subscribes
again at once, on another node of a cluster (``_redis_cluster.ClusterSubscription``). The sender's side: on a
cluster a broadcast is sent through one master after the other, each within its own budget, until one takes it
(``RedisBackend._publish_on_a_live_master``). So with any single node of a cluster killed, frozen or slow, an L1
entry is served at most ``max_staleness`` after its invalidation was made (measured:
``python -m benchmarks.l1_channel --faults``, benchmarks/results/l1_channel_faults.md; tests/test_local_cluster.py).

A read of the store whose reply arrives after an invalidation reached this process, or after the channel broke or
came back, is not put in L1 (``epoch``): the reply may predate the invalidation, or one missed meanwhile.

Every process that writes to a namespace whose readers use an L1 must itself have the local tier configured:
the broadcast is sent by the writer. A broadcast that no node takes (the writer cut off from every master) is
logged and counted (``local_broadcasts_failed``): the readers then learn nothing and may serve the old value
until the entry leaves their L1.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ._backend import Backend, StoreUnavailable, Subscription
from ._backoff import Backoff, ExponentialBackoff
from ._codec import Frame
from ._errors import CacheClosedError

__all__ = ["LocalCache", "LocalEntry"]

log = logging.getLogger("cachelayer")

_EVERYTHING: Final = b"*"
_TAG_MARK: Final = "\0"  # a name in a broadcast that starts so is a tag (a key never starts with NUL)
# What an entry costs beyond its key's and frame's lengths: the LocalEntry, its Frame and memoryview, the str and
# bytes object headers and the OrderedDict node: ~720 bytes on CPython 3.11, measured with tracemalloc
# (tests/test_local_memory.py pins that the count covers it). Without it a cached "not found" (30 bytes of frame)
# would count 30 and cost ~800, and max_bytes would not bound memory.
ENTRY_OVERHEAD: Final = 768


def _size(key: str, data: bytes, body: bytes | memoryview | None) -> int:
    """Memory an entry holds: overhead, key, the stored frame, plus the body unless it is a view into the frame
    (an uncompressed payload is served straight out of ``data``)."""
    size = ENTRY_OVERHEAD + len(key) + len(data)
    if body is None or (isinstance(body, memoryview) and body.obj is data):
        return size
    return size + len(body)


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
        reconnect_backoff: Backoff | None = None,
    ) -> None:
        if max_entries < 1 or max_bytes < 1 or max_staleness <= 0:
            raise ValueError("max_entries, max_bytes and max_staleness must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_staleness = max_staleness
        self._clock = clock
        self._reconnect_backoff = reconnect_backoff or ExponentialBackoff(0.1, 5.0)
        self._entries: OrderedDict[str, LocalEntry] = OrderedDict()
        self._tagged: dict[str, set[str]] = {}  # tag -> the keys of entries whose frames carry it
        self._bytes = 0
        self._origin = os.urandom(8).hex().encode()
        self._connected_since: float | None = None
        self._last_heard = float("-inf")
        self._backend: Backend | None = None
        self._channel = ""
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self.hits = 0
        self.evictions = 0
        self.remote_invalidations = 0
        # Moves with every invalidation this process makes or hears: a store read or write that began before a
        # move must not put what it got into L1 (the invalidation may have been of a newer value).
        self.epoch = 0
        self.channel_breaks = 0
        self.broadcasts_failed = 0

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
        size = _size(key, data, body)
        if size > self.max_bytes:
            return
        self._drop(key)
        self._entries[key] = LocalEntry(data, frame, body, self._clock())
        self._bytes += size
        for tag, _ in frame.tags:
            self._tagged.setdefault(tag, set()).add(key)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1

    def keep_body(self, key: str, entry: LocalEntry, body: bytes | memoryview) -> None:
        if entry.body is None and self._entries.get(key) is entry:
            entry.body = body
            self._bytes += _size(key, entry.data, body) - _size(key, entry.data, None)

    def discard(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._drop(key)

    def discard_tagged(self, tags: Iterable[str]) -> None:
        for tag in tags:
            for key in self._tagged.pop(tag, ()):
                self._drop(key)

    def clear(self) -> None:
        self.epoch += 1  # the channel was lost or everything was invalidated: a read in flight may be older
        self._entries.clear()
        self._tagged.clear()
        self._bytes = 0

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= _size(key, entry.data, entry.body)
            for tag, _ in entry.frame.tags:
                keys = self._tagged.get(tag)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._tagged[tag]

    # -- the invalidation channel ----------------------------------------------------------------------------

    def attach(self, backend: Backend, channel: str) -> None:
        """Called by :class:`Cache`: where to broadcast and listen. The listener starts on first use."""
        if self._backend is not None and (self._backend is not backend or self._channel != channel):
            raise ValueError("a LocalCache serves one Cache: give each Cache its own")
        self._backend, self._channel = backend, channel

    def ensure_listening(self) -> None:
        """Start the listener in the running loop, unless one runs there (a new loop gets a new one)."""
        listener = self._listener
        if listener is not None and not listener.done() and listener.get_loop() is asyncio.get_running_loop():
            return
        if self._backend is not None and not self._closed:
            if listener is not None:  # it belonged to a loop that is gone: what it heard may be incomplete
                self._connected_since = None
                self.clear()
            self._listener = asyncio.create_task(self._listen(), name="cachelayer-local-invalidation")

    async def forget(self, keys: Sequence[str] | None, tags: Sequence[str] = ()) -> None:
        """Drop ``keys`` (None: all) and the entries carrying ``tags`` here and tell the other processes to (a
        write or an invalidation)."""
        self.epoch += 1
        if keys is None:
            self.clear()
        else:
            self.discard(keys)
            self.discard_tagged(tags)
        await self.broadcast(keys, tags)

    async def broadcast(self, keys: Iterable[str] | None, tags: Iterable[str] = ()) -> None:
        """Tell the other processes to drop ``keys`` (None: everything) and the entries carrying ``tags``. Best
        effort: a lost message is bounded by the readers' ``max_staleness`` rule only if their channel noticed;
        see the module docstring."""
        if self._backend is None:
            return
        names = _EVERYTHING if keys is None else "\n".join([*keys, *(_TAG_MARK + tag for tag in tags)]).encode()
        payload = self._origin + b"\n" + names
        try:
            await self._backend.publish(self._channel, payload)
        except StoreUnavailable as exc:
            self.broadcasts_failed += 1
            log.warning("cachelayer: local-tier invalidation broadcast reached no node (%s)", exc)

    def _apply(self, payload: bytes) -> None:
        origin, _, names = payload.partition(b"\n")
        if origin == self._origin:
            return  # our own write: our L1 already holds the new value
        self.remote_invalidations += 1
        self.epoch += 1
        if names == _EVERYTHING:
            self.clear()
            return
        for name in names.decode().split("\n"):
            if name.startswith(_TAG_MARK):
                self.discard_tagged([name[1:]])
            else:
                self._drop(name)

    async def _listen(self) -> None:
        assert self._backend is not None
        delays = self._reconnect_backoff.delays()
        while not self._closed:
            subscription = self._backend.subscription()
            try:
                await subscription.subscribe(self._channel)
                # A read that began while the channel was down may have missed an invalidation: not into L1.
                self.epoch += 1
                self._connected_since = self._last_heard = self._clock()
                # After a break, try again at once (a cluster subscription tries another node first), then back off.
                delays = itertools.chain([0.0], self._reconnect_backoff.delays())
                await self._follow(subscription)
            except StoreUnavailable as exc:
                log.warning("cachelayer: local-tier invalidation channel lost (%s); dropping the local tier", exc)
            except CacheClosedError:
                return  # the store was closed for good under us (finally: the tier is dropped)
            finally:
                if self._connected_since is not None:
                    self.channel_breaks += 1
                self._connected_since = None
                self.clear()
                await _close_quietly(subscription)
            await asyncio.sleep(next(delays))

    async def _follow(self, subscription: Subscription) -> None:
        """Apply messages; ping every ``max_staleness / 6``; a ping unanswered for ``max_staleness / 3`` ends it."""
        every, silence = self.max_staleness / 6, self.max_staleness / 3
        began = time.monotonic()
        pinged_at = float("-inf")
        while not self._closed:
            now = time.monotonic()
            if now - pinged_at >= every:
                # The newest answered ping was sent at alive_at: the one sent `every` later is overdue.
                if now - max(subscription.alive_at, began) > every + silence:
                    raise StoreUnavailable(f"no answer to a ping within {silence:g} s (node frozen, gone or slow)")
                await subscription.ping()
                pinged_at = now
            message = await subscription.next_message(max(0.0, pinged_at + every - time.monotonic()))
            if message is not None:
                self._apply(message[1])
            self._last_heard = max(self._last_heard, self._heard_at(subscription))

    def _heard_at(self, subscription: Subscription) -> float:
        # alive_at is time.monotonic(); translate to this tier's clock (the same one unless a test drives it).
        return self._clock() - (time.monotonic() - subscription.alive_at)

    async def aclose(self) -> None:
        self._closed = True
        listener, self._listener = self._listener, None
        if listener is not None and listener.get_loop() is asyncio.get_running_loop():
            listener.cancel()
            # Bounded: on Python 3.11 redis-py can swallow a cancellation (asyncio.wait_for inside the client);
            # the loop then sees _closed and ends on its own, but we never wait on it for long.
            await asyncio.wait({listener}, timeout=2.0)

    def stats(self) -> dict[str, Any]:
        return {
            "local_hits": self.hits,
            "local_entries": len(self._entries),
            "local_bytes": self._bytes,
            "local_evictions": self.evictions,
            "local_remote_invalidations": self.remote_invalidations,
            "local_channel_alive": self.channel_alive(),
            "local_channel_breaks": self.channel_breaks,
            "local_broadcasts_failed": self.broadcasts_failed,
        }


async def _close_quietly(subscription: Subscription) -> None:
    try:
        await subscription.aclose()
    except Exception as exc:  # a connection already broken: nothing left to release
        log.debug("cachelayer: closing the local-tier subscription: %r", exc)
