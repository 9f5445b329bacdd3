"""An in-process store with the semantics of :class:`cachelayer.RedisBackend`: the tests' twin of Redis, and a
store for a single process that needs no server.

What mirrors Redis: a tag's stamp is an ordinary value (16 bytes, evicted and expired like any value);
``set`` deletes the key's tickets and SETs PX; ``mark_stale`` is SETRANGE of each existing key (zero-padded when it
writes past the end) plus the deletion of its tickets; tickets are the ``key:lease`` hash of tokens the Redis scripts
keep (``begin_fill``: HSET, exclusive only when the hash does not exist; ``fill``: SET only while the token is in
the hash and every tag key holds the stamp given); ``delete`` and ``clear`` remove values and tickets alike
(``delete`` counts the values that existed). What differs: memory is
bounded (see :class:`MemoryBackend`), and arguments Redis would answer with an error (a TTL that is not positive, a
negative offset) raise ``ValueError`` here, as the programming errors they are.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import heapq
import os
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from ._backend import Message, StoreUnavailable
from ._codec import STAMP_SIZE
from ._errors import CacheClosedError

__all__ = ["ENTRY_OVERHEAD", "MemoryBackend", "MemorySubscription"]

ENTRY_OVERHEAD: Final = 384
"""Bytes counted for each value besides its key and data: the entry object, its dictionary slot, its expiry record
and the headers of its key and bytes objects. Measured with tracemalloc on CPython 3.11: 365 bytes for a new
entry (100,000 sets of 14-character keys); rounded up for the stale expiry records that rewrites leave behind."""

_SWEEP_BATCH: Final = 16  # expiry records examined per call: bounds the extra work any one call does
_VALUE, _LEASE = 0, 1  # kinds of expiry records
_LEASE_SUFFIX: Final = ":lease"  # the tickets of a value key live under key + this (as on Redis)


class _Value:
    __slots__ = ("data", "expires_at", "size")

    def __init__(self, data: bytes, expires_at: float, size: int) -> None:
        self.data = data
        self.expires_at = expires_at
        self.size = size


class MemoryBackend:
    """The :class:`cachelayer.Backend` protocol, in process memory.

    **Atomicity.** Every method is ``async def`` for the protocol but never awaits (except
    :meth:`MemorySubscription.next_message`, which waits for a message), so each call runs to completion without
    letting another task in: it is atomic with respect to the other tasks of the loop, as a Redis command is.
    The backend holds no asyncio object of its own; it can be used from several event loops of one process in
    turn (two ``asyncio.run()`` calls in a row), though from one thread at a time.

    **Expiry.** TTLs are in milliseconds on ``clock`` (default :func:`time.monotonic`; tests pass a fake one). An
    expired value or lease is removed when it is next touched, and each call also removes at most
    16 expired things in expiry order (a heap of expiry records), so memory is reclaimed without a timer
    and no call does more than a bounded amount of sweeping.

    **Bounds and eviction.** Values are bounded by ``max_entries`` and by ``max_bytes``, which counts, per value,
    its key (in characters: the cache's keys are ASCII), its data and :data:`ENTRY_OVERHEAD` bytes. When a write
    goes over a bound, expired values go first, then the least recently used ones (``get``, ``get_many``, ``poll``,
    ``set``, ``fill`` and ``mark_stale`` count as uses), until the store fits; a value that alone exceeds
    ``max_bytes`` is not stored (and the old value under its key goes), counted as an eviction. A tag's stamp is
    a value like any other (one per tag). Ticket hashes are bounded by ``max_leases``: when the table is full even
    after dropping expired ones, ``begin_fill`` raises :class:`StoreUnavailable` (the cache then loads without
    storing) rather than break a ticket someone holds.

    **Pub/sub.** ``publish`` delivers to every :class:`MemorySubscription` of this instance subscribed to the
    channel (``sharded`` changes nothing here), the same bytes object to each. Each subscription queues at most
    ``max_queued_messages``; when full, the oldest message is dropped and counted (``dropped`` on the
    subscription, ``pubsub_dropped`` in :meth:`stats`), and the reader is told by one :class:`StoreUnavailable`
    from its next ``next_message`` (see :class:`MemorySubscription`).

    **Failure injection (a test aid).** :meth:`fail_with` makes calls raise a given exception (by default a
    :class:`StoreUnavailable`) until :meth:`recover`, so an application can test its fail-open paths without
    Redis. After :meth:`aclose` every call raises :class:`CacheClosedError`: a mistake, not an outage.
    """

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        max_bytes: int = 256 * 1024 * 1024,
        max_leases: int = 10_000,
        max_queued_messages: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, bound in (
            ("max_entries", max_entries),
            ("max_bytes", max_bytes),
            ("max_leases", max_leases),
            ("max_queued_messages", max_queued_messages),
        ):
            if bound < 1:
                raise ValueError(f"{name} must be at least 1, got {bound}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_leases = max_leases
        self.max_queued_messages = max_queued_messages
        self.stores_objects = True  # get() returns the stored bytes object itself: the cache reuses its decoding
        self._clock = clock
        self._values: OrderedDict[str, _Value] = OrderedDict()  # least recently used first
        self._leases: dict[str, tuple[builtins.set[str], float]] = {}  # ticket key -> (tokens, expires_at)
        self._expiries: list[tuple[float, int, str]] = []  # heap of (expires_at, kind, key); stale ones skipped
        self._bytes = 0
        self._channels: dict[str, set[MemorySubscription]] = {}
        self._subscriptions: weakref.WeakSet[MemorySubscription] = weakref.WeakSet()
        self._closed = False
        self._failure: BaseException | None = None
        self._failing_methods: frozenset[str] | None = None
        self._counters = {"store_errors": 0, "store_evictions": 0, "store_expired": 0, "pubsub_dropped": 0}

    # -- test aid ---------------------------------------------------------------------------------------------

    def fail_with(self, exc: BaseException | None = None, *, methods: Iterable[str] | None = None) -> None:
        """Make calls raise ``exc`` (default: a :class:`StoreUnavailable`) until :meth:`recover`; only the
        methods named in ``methods`` (e.g. ``{"get", "publish", "next_message"}``) when given. A test aid."""
        self._failure = exc if exc is not None else StoreUnavailable("MemoryBackend.fail_with: simulated failure")
        self._failing_methods = None if methods is None else frozenset(methods)

    def evict(self, key: str) -> bool:
        """Remove what is stored under ``key`` (a value, a ticket hash ``key:lease``, a tag's stamp) as Redis's
        eviction would: nothing else changes, no ticket is revoked. Counted in ``store_evictions``. A test aid
        (consistency tests evict a value, a lease or a tag's stamp at a chosen moment)."""
        entry = self._values.get(key)
        found = entry is not None or key in self._leases
        if entry is not None:
            self._remove_value(key, entry)
        self._leases.pop(key, None)
        if found:
            self._counters["store_evictions"] += 1
        return found

    def recover(self) -> None:
        """Undo :meth:`fail_with`."""
        self._failure = None
        self._failing_methods = None

    def _enter(self, method: str) -> float:
        """Refuse the call when closed or failing; otherwise sweep a little and return the time."""
        if self._closed:
            raise CacheClosedError(f"MemoryBackend.{method}: the backend was closed with aclose(); build a new one")
        failure = self._failure
        if failure is not None and (self._failing_methods is None or method in self._failing_methods):
            self._counters["store_errors"] += 1
            raise failure.with_traceback(None)  # the same instance each time: do not let tracebacks pile up
        now = self._clock()
        self._sweep(now, _SWEEP_BATCH)
        return now

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        self._enter("connect")

    async def aclose(self) -> None:
        """Drop everything and close every subscription; later calls raise :class:`CacheClosedError`."""
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            subscription._close()
        self._values.clear()
        self._leases.clear()
        self._expiries.clear()
        self._channels.clear()
        self._bytes = 0

    async def ping(self) -> None:
        self._enter("ping")

    def stats(self) -> dict[str, Any]:
        """Counters and sizes. ``store_entries`` and ``store_bytes`` include expired values not yet removed."""
        return {
            "store_entries": len(self._values),
            "store_bytes": self._bytes,
            "store_leases": len(self._leases),
            "pubsub_subscriptions": len(self._subscriptions),
            **self._counters,
        }

    # -- values -----------------------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        now = self._enter("get")
        return self._read(key, now)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = self._enter("get_many")
        return [self._read(key, now) for key in keys]

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        _check_value(value, ttl_ms)
        now = self._enter("set")
        self._leases.pop(key + _LEASE_SUFFIX, None)  # an explicit write beats every load that began before it
        self._store(key, value, ttl_ms, now)
        self._drop_if_oversized(key)
        self._evict(now)

    async def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        for _, value, ttl_ms in items:  # all or nothing for bad arguments
            _check_value(value, ttl_ms)
        now = self._enter("set_many")
        for key, value, ttl_ms in items:
            self._leases.pop(key + _LEASE_SUFFIX, None)
            self._store(key, value, ttl_ms, now)
            self._drop_if_oversized(key)
        self._evict(now)

    async def delete(self, *keys: str) -> int:
        now = self._enter("delete")
        existed = sum(self._live_value(key, now) is not None for key in keys)
        self._delete_keys(frozenset(keys) | {key + _LEASE_SUFFIX for key in keys}, now)
        return existed

    async def mark_stale(self, keys: Sequence[str], offset: int, field: bytes) -> int:
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        now = self._enter("mark_stale")
        marked = 0
        for key in keys:
            self._leases.pop(key + _LEASE_SUFFIX, None)
            marked += self._overwrite(key, offset, field, now)
        return marked

    def _overwrite(self, key: str, offset: int, data: bytes, now: float) -> bool:
        entry = self._live_value(key, now)
        if entry is None:
            return False
        self._values.move_to_end(key)
        if not data:  # SETRANGE with an empty value changes nothing, not even the length
            return True
        old = entry.data
        padding = b"\0" * (offset - len(old)) if offset > len(old) else b""
        entry.data = old[:offset] + padding + data + old[offset + len(data) :]
        grown = len(entry.data) - len(old)
        entry.size += grown
        self._bytes += grown
        self._drop_if_oversized(key)
        self._evict(now)
        return True

    async def clear(self, prefix: str) -> int:
        """Delete every value and lease whose key starts with ``prefix``; how many (unexpired) went.
        One pass over all keys, without yielding to the loop: ~30 ms per 100,000 keys looked at, plus ~5 ms per
        10,000 deleted (CPython 3.11 on the project's 2-core test machine)."""
        now = self._enter("clear")
        lease_keys = [key for key in self._leases if key.startswith(prefix)]
        value_keys = [key for key in self._values if key.startswith(prefix)]
        cleared = sum(self._leases.pop(key)[1] > now for key in lease_keys)
        values = self._values
        for key in value_keys:
            entry = values[key]
            cleared += entry.expires_at > now
            self._remove_value(key, entry)
        return cleared

    def _read(self, key: str, now: float) -> bytes | None:
        entry = self._live_value(key, now)
        if entry is None:
            return None
        self._values.move_to_end(key)
        return entry.data

    def _live_value(self, key: str, now: float) -> _Value | None:
        entry = self._values.get(key)
        if entry is not None and entry.expires_at <= now:
            self._remove_value(key, entry)
            self._counters["store_expired"] += 1
            return None
        return entry

    def _store(self, key: str, value: bytes, ttl_ms: int, now: float) -> None:
        expires_at = now + ttl_ms / 1000
        entry = self._live_value(key, now)
        if entry is None:
            entry = self._values[key] = _Value(value, expires_at, ENTRY_OVERHEAD + len(key) + len(value))
            self._bytes += entry.size
        else:
            grown = len(value) - len(entry.data)
            entry.data, entry.expires_at, entry.size = value, expires_at, entry.size + grown
            self._bytes += grown
            self._values.move_to_end(key)
        self._push_expiry(expires_at, _VALUE, key)

    def _remove_value(self, key: str, entry: _Value) -> None:
        del self._values[key]
        self._bytes -= entry.size

    def _delete_keys(self, keys: frozenset[str], now: float) -> int:
        """Remove ``keys`` from every kind of store; how many existed unexpired in any, counted before any
        goes."""
        existed = sum(self._exists(key, now) for key in keys)
        for key in keys:
            entry = self._values.get(key)
            if entry is not None:
                self._remove_value(key, entry)
            self._leases.pop(key, None)
        return existed

    def _exists(self, key: str, now: float) -> bool:
        entry, lease = self._values.get(key), self._leases.get(key)
        return (entry is not None and entry.expires_at > now) or (lease is not None and lease[1] > now)

    def _drop_if_oversized(self, key: str) -> None:
        # Evicting everything else would not make room for it: it goes (and the value it replaced with it).
        entry = self._values.get(key)
        if entry is not None and entry.size > self.max_bytes:
            self._remove_value(key, entry)
            self._counters["store_evictions"] += 1

    def _evict(self, now: float) -> None:
        values = self._values
        while len(values) > self.max_entries or self._bytes > self.max_bytes:
            if self._expiries and self._expiries[0][0] <= now:
                self._sweep(now, 1)  # expired things first (values or leases alike)
                continue
            key, entry = next(iter(values.items()))
            self._remove_value(key, entry)
            self._counters["store_evictions"] += 1

    # -- fills: tickets and the compare-and-set write --------------------------------------------------------

    async def begin_fill(self, key: str, token: str, ttl_ms: int, *, exclusive: bool = True) -> bool:
        _check_ttl(ttl_ms)
        now = self._enter("begin_fill")
        lease_key = key + _LEASE_SUFFIX
        held = self._live_lease(lease_key, now)
        if held is not None and exclusive:
            return False
        if held is None and len(self._leases) >= self.max_leases:
            self._sweep(now, None)
            if len(self._leases) >= self.max_leases:
                self._counters["store_errors"] += 1
                raise StoreUnavailable(f"MemoryBackend: the ticket table is full (max_leases={self.max_leases})")
        tokens: builtins.set[str] = held[0] if held is not None else builtins.set()
        tokens.add(token)
        expires_at = now + ttl_ms / 1000
        if held is not None and held[1] >= expires_at:  # PEXPIRE only ever lengthens a shared hash
            return True
        self._leases[lease_key] = (tokens, expires_at)
        self._push_expiry(expires_at, _LEASE, lease_key)
        return True

    async def renew_fill(self, key: str, token: str, ttl_ms: int) -> bool:
        _check_ttl(ttl_ms)
        now = self._enter("renew_fill")
        lease_key = key + _LEASE_SUFFIX
        held = self._live_lease(lease_key, now)
        if held is None or token not in held[0]:
            return False
        expires_at = now + ttl_ms / 1000
        if expires_at > held[1]:
            self._leases[lease_key] = (held[0], expires_at)
            self._push_expiry(expires_at, _LEASE, lease_key)
        return True

    async def end_fill(self, key: str, token: str) -> None:
        now = self._enter("end_fill")
        self._drop_token(key + _LEASE_SUFFIX, token, now)

    async def fill(
        self,
        key: str,
        token: str,
        value: bytes,
        ttl_ms: int,
        tag_keys: Sequence[str] = (),
        stamps: Sequence[bytes] = (),
    ) -> bool:
        _check_value(value, ttl_ms)
        if len(tag_keys) != len(stamps):
            raise ValueError(f"{len(tag_keys)} tag keys but {len(stamps)} stamps")
        now = self._enter("fill")
        lease_key = key + _LEASE_SUFFIX
        held = self._live_lease(lease_key, now)
        if held is None or token not in held[0]:
            return False  # revoked by an invalidation, or lapsed: whatever this load read may be older
        self._drop_token(lease_key, token, now)
        if any(self._read(tag_key, now) != stamp for tag_key, stamp in zip(tag_keys, stamps, strict=True)):
            return False  # a tag was invalidated after the load began
        self._store(key, value, ttl_ms, now)
        self._drop_if_oversized(key)
        self._evict(now)
        return True

    async def poll(self, key: str) -> tuple[bytes | None, bool]:
        now = self._enter("poll")
        return self._read(key, now), self._live_lease(key + _LEASE_SUFFIX, now) is not None

    def _live_lease(self, lease_key: str, now: float) -> tuple[builtins.set[str], float] | None:
        lease = self._leases.get(lease_key)
        if lease is not None and lease[1] <= now:
            del self._leases[lease_key]
            return None
        return lease

    def _drop_token(self, lease_key: str, token: str, now: float) -> None:
        held = self._live_lease(lease_key, now)
        if held is not None:
            held[0].discard(token)
            if not held[0]:  # an empty hash does not exist
                del self._leases[lease_key]

    # -- tags -------------------------------------------------------------------------------------------------

    async def tag_stamps(self, tag_keys: Sequence[str], ttl_ms: int) -> list[bytes]:
        _check_ttl(ttl_ms)
        now = self._enter("tag_stamps")
        stamps = []
        for tag_key in tag_keys:
            entry = self._live_value(tag_key, now)
            if entry is None or len(entry.data) != STAMP_SIZE:
                self._store(tag_key, os.urandom(STAMP_SIZE), ttl_ms, now)
                entry = self._values[tag_key]
            else:
                self._values.move_to_end(tag_key)
                expires_at = now + ttl_ms / 1000
                if entry.expires_at < expires_at:  # its life only lengthens
                    entry.expires_at = expires_at
                    self._push_expiry(expires_at, _VALUE, tag_key)
            stamps.append(entry.data)
        self._evict(now)
        return stamps

    async def invalidate_tags(self, tag_keys: Sequence[str], *, mark_stale: bool = False) -> int:
        now = self._enter("invalidate_tags")
        existed = 0
        for tag_key in tag_keys:
            entry = self._live_value(tag_key, now)
            if entry is None:
                continue  # what it stamped is refused already; never create it (as on Redis)
            existed += 1
            fresh = os.urandom(STAMP_SIZE)
            stamp = entry.data[:8] + fresh[8:] if mark_stale and len(entry.data) == STAMP_SIZE else fresh
            self._bytes += len(stamp) - len(entry.data)
            entry.size += len(stamp) - len(entry.data)
            entry.data = stamp
            self._values.move_to_end(tag_key)
        return existed

    # -- expiry records ---------------------------------------------------------------------------------------

    def _push_expiry(self, expires_at: float, kind: int, key: str) -> None:
        expiries = self._expiries
        heapq.heappush(expiries, (expires_at, kind, key))
        # Every write pushes a record and the old one stays until popped: rebuild once stale ones dominate.
        if len(expiries) > 2 * (len(self._values) + len(self._leases)) + 1024:
            self._expiries = [(entry.expires_at, _VALUE, key) for key, entry in self._values.items()]
            self._expiries += [(lease[1], _LEASE, key) for key, lease in self._leases.items()]
            heapq.heapify(self._expiries)

    def _sweep(self, now: float, limit: int | None) -> None:
        """Remove expired things in expiry order: up to ``limit`` records (None: every expired one)."""
        expiries = self._expiries
        examined = 0
        while expiries and expiries[0][0] <= now and (limit is None or examined < limit):
            expires_at, kind, key = heapq.heappop(expiries)
            examined += 1
            if kind == _VALUE:
                entry = self._values.get(key)
                if entry is not None and entry.expires_at == expires_at:
                    self._remove_value(key, entry)
                    self._counters["store_expired"] += 1
            else:
                lease = self._leases.get(key)
                if lease is not None and lease[1] == expires_at:
                    del self._leases[key]

    # -- publish / subscribe ----------------------------------------------------------------------------------

    async def publish(self, channel: str, data: bytes, *, sharded: bool = False) -> None:
        self._enter("publish")
        message = (channel, data)
        for subscription in list(self._channels.get(channel, ())):
            subscription._deliver(message)

    def subscription(self, *, sharded: bool = False) -> MemorySubscription:
        subscription = MemorySubscription(self)
        self._subscriptions.add(subscription)
        return subscription


class MemorySubscription:
    """One subscriber of a :class:`MemoryBackend` (the :class:`cachelayer.Subscription` protocol).

    Messages wait in a queue of at most ``max_queued_messages`` (the backend's); when it is full the oldest is
    dropped and counted in ``dropped``, and the next :meth:`next_message` raises :class:`StoreUnavailable` once
    (then reads on): a reader that keeps state from the messages (the local tier) learns that it missed some,
    as Redis tells it by disconnecting a subscriber whose output buffer overflows.

    ``alive_at`` (:func:`time.monotonic`) moves on ``subscribe``, ``ping`` and each message read; it is ``-inf``
    before the first, as on :class:`cachelayer.RedisBackend`. Several tasks may wait in :meth:`next_message` at
    once, each on a future of its own loop, made when it waits.
    """

    def __init__(self, backend: MemoryBackend) -> None:
        self.alive_at = float("-inf")
        self.dropped = 0
        self._unreported_drops = 0
        self._backend = backend
        self._channels: set[str] = set()
        self._queue: deque[Message] = deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False

    async def subscribe(self, *channels: str) -> None:
        self._enter("subscribe")
        registry = self._backend._channels
        for channel in channels:
            registry.setdefault(channel, set()).add(self)
            self._channels.add(channel)
        self.alive_at = time.monotonic()

    async def unsubscribe(self, *channels: str) -> None:
        """Leave ``channels``; every channel when none is named (as UNSUBSCRIBE does). Nothing to do once
        closed."""
        if self._closed:
            return
        self._enter("unsubscribe")
        self._leave(channels or tuple(self._channels))

    async def next_message(self, timeout: float) -> Message | None:  # noqa: ASYNC109 (the protocol's signature)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._enter("next_message")  # again after a wait: closed or failing meanwhile
            if self._unreported_drops:
                dropped, self._unreported_drops = self._unreported_drops, 0
                self._backend._counters["store_errors"] += 1
                raise StoreUnavailable(
                    f"MemorySubscription: {dropped} message(s) dropped, the queue of "
                    f"{self._backend.max_queued_messages} was full"
                )
            if self._queue:
                self.alive_at = time.monotonic()
                return self._queue.popleft()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(remaining):
                    await waiter
            except TimeoutError:
                return None
            finally:
                self._waiters.remove(waiter)

    async def ping(self) -> None:
        self._enter("ping")
        self.alive_at = time.monotonic()

    async def aclose(self) -> None:
        self._close()

    def _enter(self, method: str) -> None:
        if self._closed:
            self._backend._counters["store_errors"] += 1
            raise StoreUnavailable(f"MemorySubscription.{method}: the subscription is closed")
        self._backend._enter(method)

    def _deliver(self, message: Message) -> None:
        if len(self._queue) >= self._backend.max_queued_messages:
            self._queue.popleft()
            self.dropped += 1
            self._unreported_drops += 1
            self._backend._counters["pubsub_dropped"] += 1
        self._queue.append(message)
        self._wake()

    def _leave(self, channels: Iterable[str]) -> None:
        registry = self._backend._channels
        for channel in channels:
            self._channels.discard(channel)
            subscribers = registry.get(channel)
            if subscribers is not None:
                subscribers.discard(self)
                if not subscribers:
                    del registry[channel]

    def _close(self) -> None:
        if self._closed:
            return
        self._leave(tuple(self._channels))
        self._backend._subscriptions.discard(self)
        self._closed = True
        self._queue.clear()
        self._wake()  # waiters find the subscription closed and raise

    def _wake(self) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for waiter in self._waiters:
            loop = waiter.get_loop()
            if loop is running:
                _resolve(waiter)
            else:  # a waiter of another loop (another thread): hand it over safely
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                    loop.call_soon_threadsafe(_resolve, waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _check_ttl(ttl_ms: int) -> None:
    if ttl_ms <= 0:
        raise ValueError(f"ttl_ms must be positive, got {ttl_ms}")


def _check_value(value: bytes, ttl_ms: int) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"values are bytes, got {type(value).__name__}")
    _check_ttl(ttl_ms)
