"""The fetch and load path of one :class:`Cache` in one event loop.

Everything here holds futures and tasks, which belong to one event loop: the cache builds a new
:class:`Loading` when it finds itself in another loop (a second ``asyncio.run()``, a test's own loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ._backend import StoreUnavailable
from ._codec import Frame
from ._entry import CacheEntry, Outcome
from ._errors import CodecError, LeaseTimeoutError, SerializationError, ValueTooLargeError
from ._lease import Lease, LeaseCoordinator
from ._local import LocalCache, LocalEntry
from ._notify import ReadyNotifier
from ._policy import EntryPolicy, ResolvedPolicy
from ._serializers import OrjsonSerializer
from ._stampede import ReadCoalescer, SingleFlight, jittered, xfetch_due
from ._typed import ValueType, describe_unstorable

if TYPE_CHECKING:
    from ._cache import Cache

__all__ = ["INVALIDATED_AT", "Loading"]

log = logging.getLogger("cachelayer")

T = TypeVar("T")

INVALIDATED_AT: Final = 0.001
"""The logical expiry (Unix seconds) of an entry marked stale by invalidation: reloaded, never revalidated in
the background, served only when the reload fails."""

Decoded = tuple[Frame, Any]  # a frame and its value (or its checked body)

_DECODED_MEMO_SIZE: Final = 4096

# One WARNING per function and type of value that cannot be stored, for the life of the process: enough to be
# seen, never a flood. Bounded by the functions a program has.
_WARNED_UNSTORABLE: set[tuple[str, type]] = set()


class Loading:
    """Reads, loads and stores for one cache in one event loop."""

    def __init__(self, cache: Cache, loop: asyncio.AbstractEventLoop) -> None:
        self.cache = cache
        self.loop = loop
        self.codec = cache.codec
        self.metrics = cache.metrics
        self.backend = cache.backend
        self.reads = ReadCoalescer()
        self.loads: SingleFlight[CacheEntry[Any]] = SingleFlight()
        self.refreshes: SingleFlight[None] = SingleFlight()
        self.background: set[asyncio.Task[Any]] = set()
        self.notifier = ReadyNotifier(cache.backend)
        self.leases: LeaseCoordinator[CacheEntry[Any]] = LeaseCoordinator(cache.backend, self.notifier)
        # Stored bytes handed out unparsed (an HTTP body passthrough) must be JSON whose payload checks out.
        codec = self.codec
        self._body = codec.verified_body if codec.serializer.id == OrjsonSerializer.id else codec.serialized
        # An in-process store hands back the same bytes object until the value changes: decode it once. Values
        # are shared between callers anyway (CacheEntry's rule: treat them as read-only).
        self._decoded: dict[str, tuple[bytes, Any, Decoded]] | None = {} if cache.backend.stores_objects else None
        if cache.local is not None:
            cache.local.ensure_listening()  # once per loop: the listener reconnects by itself until closed

    def in_flight(self) -> int:
        return len(self.loads)

    async def aclose(self) -> None:
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)
        await self.notifier.aclose()

    # -- reading ---------------------------------------------------------------------------------------------

    def local_hit(
        self,
        key: str,
        local: LocalCache,
        policy: EntryPolicy,
        loader: Callable[[], Awaitable[Any]],
        parse: bool,
        value_type: ValueType[Any] | None,
    ) -> CacheEntry[Any] | None:
        held: LocalEntry | None = local.get(key)
        if held is None or not self.cache.is_fresh(held.frame.expires_at):
            return None
        try:
            if parse:
                decoded = self._value(held.frame, value_type)
            else:
                if held.body is None:
                    local.keep_body(key, held, self._body(held.frame))
                decoded = held.body
        except CodecError:
            local.discard([key])
            return None
        return self._hit(key, held.frame, decoded, loader, policy, parse, value_type)

    async def fetch(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        policy: EntryPolicy,
        parse: bool,
        value_type: ValueType[Any] | None,
    ) -> CacheEntry[Any]:
        flight = self.loads.joinable(key)
        if flight is not None:
            # This process is loading the key right now: its value is the freshest there will be. Joining it
            # skips the read (10,000 callers of a cold key pay for one GET, not one wait per caller for it).
            self.metrics.misses += 1
            return await asyncio.shield(flight)
        try:
            data = await self.reads.read(key, lambda: self.backend.get(key))
        except StoreUnavailable:
            data = None
        stale: CacheEntry[Any] | None = None
        if data is not None and (found := await self.decode(key, data, parse, value_type)) is not None:
            frame, decoded = found
            if self.cache.is_fresh(frame.expires_at):
                if policy.local and self.cache.local is not None:
                    self.cache.local.put(key, data, frame, None if parse else decoded)
                return self._hit(key, frame, decoded, loader, policy, parse, value_type)
            stampede = policy.stampede or self.cache.stampede
            if stampede.stale_while_revalidate and frame.expires_at != INVALIDATED_AT:
                self.metrics.stale_served += 1
                self.refresh_in_background(key, loader, self.cache.resolve(policy), value_type, frame, early=False)
                return self._entry(frame, Outcome.STALE, decoded, parse, value_type)
            stale = self._entry(frame, Outcome.STALE, decoded, parse, value_type)
        self.metrics.misses += 1
        resolved = self.cache.resolve(policy)

        def load() -> Awaitable[CacheEntry[Any]]:
            return self._load(key, loader, resolved, stale, parse, value_type)

        if not resolved.stampede.single_flight:
            return await load()
        return await self.loads.run(key, load)

    def _hit(
        self,
        key: str,
        frame: Frame,
        decoded: Any,
        loader: Callable[[], Awaitable[Any]],
        policy: EntryPolicy,
        parse: bool,
        value_type: ValueType[Any] | None,
    ) -> CacheEntry[Any]:
        """A fresh value: count it, and start an early refresh when XFetch says so."""
        self.metrics.hits += 1
        stampede = policy.stampede or self.cache.stampede
        cache = self.cache
        if stampede.xfetch and xfetch_due(
            cache.now(), frame.expires_at, frame.recompute_time, stampede.xfetch_beta, cache.random()
        ):
            self.refresh_in_background(key, loader, cache.resolve(policy), value_type, frame, early=True)
        return self._entry(frame, Outcome.HIT, decoded, parse, value_type)

    def _entry(
        self, frame: Frame, outcome: Outcome, decoded: Any, parse: bool, value_type: ValueType[Any] | None
    ) -> CacheEntry[Any]:
        if parse:
            return CacheEntry(self.codec, frame, outcome, value=decoded)
        loads = None if value_type is None else value_type.loads
        return CacheEntry(self.codec, frame, outcome, body=decoded, loads=loads)

    def _value(self, frame: Frame, value_type: ValueType[Any] | None) -> Any:
        if value_type is None:
            return self.codec.value(frame)
        return value_type.loads(self.codec.serialized(frame))

    async def decode(
        self, key: str, data: bytes, parse: bool, value_type: ValueType[Any] | None
    ) -> Decoded | None:
        """Header and value (or checked body); a value that does not decode is deleted and is a miss."""
        memo = self._decoded
        if memo is not None and parse:
            known = memo.get(key)
            if known is not None and known[0] is data and known[1] is value_type:
                return known[2]
        codec = self.codec
        try:
            frame = codec.read_frame(data)
            decoded = frame, (self._value(frame, value_type) if parse else self._body(frame))
        except CodecError as exc:
            self.metrics.decode_errors += 1
            log.warning("cachelayer: dropping undecodable value at %s: %s", key, exc)
            with contextlib.suppress(StoreUnavailable):
                await self.backend.delete(key)
            return None
        if memo is not None and parse:
            if len(memo) >= _DECODED_MEMO_SIZE:
                memo.clear()
            memo[key] = (data, value_type, decoded)
        return decoded

    # -- loading ---------------------------------------------------------------------------------------------

    async def _load(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        policy: ResolvedPolicy,
        stale: CacheEntry[Any] | None,
        parse: bool,
        value_type: ValueType[Any] | None,
    ) -> CacheEntry[Any]:
        # The lease is tried even when the read just failed: one slow read must not open the way to the
        # database for every process. When the store is really gone, the open breaker makes this attempt free.
        stampede = policy.stampede
        if not stampede.lease:
            return await self.load_and_store(key, loader, policy, stale, value_type)
        deadline = time.monotonic() + stampede.lease_wait
        waited_since: float | None = None

        async def fresh(data: bytes) -> CacheEntry[Any] | None:
            found = await self.decode(key, data, parse, value_type)
            if found is None or not self.cache.is_fresh(found[0].expires_at):
                return None
            return self._entry(found[0], Outcome.MISS, found[1], parse, value_type)

        try:
            while True:
                try:
                    lease = await self.leases.acquire(key, stampede)
                except StoreUnavailable:
                    return await self.load_and_store(key, loader, policy, stale, value_type, fail_open=True)
                if lease is not None:
                    self._end_wait(waited_since)
                    waited_since = None
                    return await self._load_under_lease(lease, key, loader, policy, stale, value_type, fresh)
                if waited_since is None:
                    waited_since = time.monotonic()
                    self.metrics.lease_waits += 1
                # Another process is loading: wait for its value until it lands, the lease goes, or time runs out.
                result = await self.leases.wait(key, stampede, deadline, fresh)
                if isinstance(result, CacheEntry):
                    return result
                if result == "unavailable":
                    return await self.load_and_store(key, loader, policy, stale, value_type, fail_open=True)
                if result == "timeout":
                    return await self._lease_timeout(key, loader, policy, stale, value_type)
                # "released": the holder gave up, crashed or went silent; try to take the lease ourselves
        finally:
            self._end_wait(waited_since)

    async def _lease_timeout(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        policy: ResolvedPolicy,
        stale: CacheEntry[Any] | None,
        value_type: ValueType[Any] | None,
    ) -> CacheEntry[Any]:
        self.metrics.lease_timeouts += 1
        if stale is not None:
            self.metrics.stale_served += 1
            return stale
        if policy.stampede.on_lease_timeout == "raise":
            raise LeaseTimeoutError(f"waited {policy.stampede.lease_wait}s for the load of {key}")
        return await self.load_and_store(key, loader, policy, stale, value_type)

    def _end_wait(self, waited_since: float | None) -> None:
        if waited_since is not None:
            self.metrics.lease_wait_seconds += time.monotonic() - waited_since

    async def _load_under_lease(
        self,
        lease: Lease,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        policy: ResolvedPolicy,
        stale: CacheEntry[Any] | None,
        value_type: ValueType[Any] | None,
        fresh: Callable[[bytes], Awaitable[CacheEntry[Any] | None]] | None,
    ) -> CacheEntry[Any]:
        self.metrics.lease_acquired += 1
        try:
            if fresh is not None:
                # The value may have landed between our miss and our lease (another process just released it).
                with contextlib.suppress(StoreUnavailable):
                    data = await self.backend.get(key)
                    if data is not None and (entry := await fresh(data)) is not None:
                        return entry
            entry = await self.load_and_store(key, loader, policy, stale, value_type)
            if policy.stampede.wake == "pubsub" and entry.outcome is Outcome.MISS:
                await lease.ready()
            return entry
        finally:
            await lease.release()

    async def load_and_store(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        policy: ResolvedPolicy,
        stale: CacheEntry[Any] | None,
        value_type: ValueType[Any] | None,
        *,
        fail_open: bool = False,
    ) -> CacheEntry[Any]:
        self.metrics.loads += 1
        started = time.perf_counter()
        try:
            value = await loader()
        except Exception:
            self.metrics.load_errors += 1
            if stale is not None and policy.stampede.stale_if_error:
                self.metrics.stale_served += 1
                log.warning("cachelayer: loader for %s failed; serving the stale value", key, exc_info=True)
                return stale
            raise
        finally:
            self.metrics.load_seconds += time.perf_counter() - started
        return await self.store(key, value, policy, time.perf_counter() - started, value_type, fail_open=fail_open)

    def encode(
        self, value: Any, policy: ResolvedPolicy, recompute_time: float, value_type: ValueType[Any] | None
    ) -> tuple[bytes, int, int]:
        """The frame, its physical TTL in ms, and the serialized size."""
        cache = self.cache
        ttl = jittered(policy.none_ttl if value is None else policy.ttl, cache.jitter, cache.random())
        serialized = self.codec.serializer.dumps(value) if value_type is None else value_type.dumps(value)
        data = self.codec.encode_serialized(serialized, expires_at=cache.now() + ttl, recompute_time=recompute_time)
        return data, max(1, math.ceil((ttl + policy.stale_ttl) * 1000)), len(serialized)

    async def store(
        self,
        key: str,
        value: Any,
        policy: ResolvedPolicy,
        recompute_time: float,
        value_type: ValueType[Any] | None,
        *,
        strict: bool = False,
        fail_open: bool = False,
    ) -> CacheEntry[Any]:
        try:
            data, ttl_ms, raw_size = self.encode(value, policy, recompute_time, value_type)
        except (SerializationError, ValueTooLargeError) as exc:
            if strict:
                raise
            self._unstorable(key, value, value_type, exc)
            return self._unstored(value, value_type, Outcome.MISS)
        tag_keys = [self.cache.keys.tag_key(tag) for tag in policy.tags]
        try:
            await self.backend.set(key, data, ttl_ms, tag_keys, math.ceil(ttl_ms / 1000) + 1)
        except StoreUnavailable:
            fail_open = True
        self.metrics.count_write(raw_size, len(data))
        frame = self.codec.read_frame(data)
        await self.cache.forget_locally([key])  # this process's copy too: the broadcast skips its sender
        local = self.cache.local
        if policy.local and local is not None and not fail_open:
            local.put(key, data, frame)
        outcome = Outcome.FAIL_OPEN if fail_open else Outcome.MISS
        return CacheEntry(self.codec, frame, outcome, value=value)

    def _unstored(self, value: Any, value_type: ValueType[Any] | None, outcome: Outcome) -> CacheEntry[Any]:
        dumps = self.codec.serializer.dumps if value_type is None else value_type.dumps
        return CacheEntry(self.codec, None, outcome, value=value, dumps=dumps)

    def _unstorable(self, key: str, value: Any, value_type: ValueType[Any] | None, exc: Exception) -> None:
        self.metrics.unstorable += 1
        # The function (for @cached: "namespace:{module.qualname"; the argument hash dropped), then the type.
        owner = key.rsplit(":", 1)[0].replace("{", "", 1) if "{" in key else key
        warned = (owner, type(value))
        if warned in _WARNED_UNSTORABLE:
            return
        _WARNED_UNSTORABLE.add(warned)
        # A typed value's error already names the function, the type and the fixes.
        message = str(exc) if value_type is not None else describe_unstorable(value, owner, reason=str(exc))
        log.warning("cachelayer: not caching %s: %s (the caller gets the value, uncached)", key, message)

    async def bypass(self, loader: Callable[[], Awaitable[T]], value_type: ValueType[T] | None) -> CacheEntry[T]:
        """The disabled cache's fetch: the loader's value, nothing stored."""
        self.metrics.loads += 1
        return self._unstored(await loader(), value_type, Outcome.BYPASS)

    # -- background refresh (XFetch and stale-while-revalidate) ----------------------------------------------

    async def _replaced_since(self, key: str, seen_expires_at: float) -> bool:
        try:
            data = await self.backend.get(key)
            return data is not None and self.codec.read_frame(data).expires_at > seen_expires_at
        except (StoreUnavailable, CodecError):
            return False

    def refresh_in_background(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        policy: ResolvedPolicy,
        value_type: ValueType[Any] | None,
        seen: Frame,
        *,
        early: bool,
    ) -> None:
        if self.refreshes.running(key) or self.loads.running(key):
            return
        if early:
            self.metrics.early_recomputes += 1
        task = self.refreshes.start(key, lambda: self._refresh(key, loader, policy, value_type, seen.expires_at))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _refresh(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        policy: ResolvedPolicy,
        value_type: ValueType[Any] | None,
        seen_expires_at: float,
    ) -> None:
        """Reload ``key`` unless another process already does or did; never blocks a caller, never raises."""
        lease: Lease | None = None
        if policy.stampede.lease:
            try:
                lease = await self.leases.acquire(key, policy.stampede)
            except StoreUnavailable:
                return
            if lease is None:
                return
            if await self._replaced_since(key, seen_expires_at):
                # Another process refreshed it between our read and our lease: one load per expiry, not two.
                await lease.release()
                return
        self.metrics.background_refreshes += 1
        try:
            # stale=None: a background refresh whose loader fails leaves the stored value as it is.
            if lease is not None:
                await self._load_under_lease(lease, key, loader, policy, None, value_type, None)
            else:
                await self.load_and_store(key, loader, policy, None, value_type)
        except Exception:
            log.warning("cachelayer: background refresh of %s failed", key, exc_info=True)
