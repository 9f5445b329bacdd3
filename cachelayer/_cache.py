"""The cache-aside manager: get / set / get_or_set / tags, composed from the codec, backend and stampede parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

from ._backend import BackendUnavailable, RedisBackend
from ._breaker import CircuitBreaker
from ._codec import Codec, Frame
from ._entry import CacheEntry
from ._errors import CodecError, LeaseTimeoutError
from ._keys import KeyLayout
from ._local import LocalCache, LocalEntry
from ._metrics import CacheMetrics
from ._notify import ReadyNotifier
from ._stampede import ReadCoalescer, SingleFlight, StampedePolicy, backoff_delays, jittered, xfetch_due

__all__ = ["MISSING", "Cache"]

log = logging.getLogger("cachelayer")

MISSING: Final[Any] = type("Missing", (), {"__repr__": lambda self: "MISSING"})()
"""Pass as ``default`` to :meth:`Cache.get` to tell a cached ``None`` from a miss."""

Loader = Callable[[], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class _Options:
    ttl: float
    stale_ttl: float
    none_ttl: float
    tags: tuple[str, ...]
    policy: StampedePolicy
    local: bool = False


class Cache:
    """A cache in one Redis namespace.

    Build one per application at start-up and pass it where it is needed (or make it the decorator's default
    with :func:`set_default_cache`)::

        cache = Cache(redis.asyncio.Redis(connection_pool=pool), namespace="wallpapers", default_ttl=60)

    ``stale_ttl`` (default: equal to the TTL) is how long a value outlives its TTL to be served stale while one
    refresh runs, or when the loader fails. ``none_ttl`` is the TTL of a cached ``None`` (default: the TTL).
    ``jitter`` spreads each TTL over ``ttl * (1 +- jitter)``. ``timeout`` is the budget of every Redis call
    (seconds); past it, or on any Redis error, the cache fails open: the loader runs and the caller never sees
    the Redis error. ``breaker`` stops calling Redis for a cool-down after consecutive failures.
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        namespace: str = "cache",
        codec: Codec | None = None,
        default_ttl: float = 60.0,
        stale_ttl: float | None = None,
        none_ttl: float | None = None,
        jitter: float = 0.1,
        stampede: StampedePolicy | None = None,
        timeout: float = 0.1,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        local: LocalCache | None = None,
        owns_client: bool = False,
    ) -> None:
        if redis.get_encoder().decode_responses:
            raise ValueError("the Redis client must be built with decode_responses=False: values are bytes")
        pool_options = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", {})
        if sys.version_info < (3, 12) and pool_options.get("socket_timeout") is not None:
            log.warning(
                "cachelayer: the Redis pool has socket_timeout=%s; on Python 3.11 it can stretch the cache's "
                "%.3f s budget to the socket timeout: build the pool with socket_timeout=None "
                "(docs/operations.md)",
                pool_options["socket_timeout"],
                timeout,
            )
        if default_ttl <= 0:
            raise ValueError("default_ttl must be positive")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.redis = redis
        self.keys = KeyLayout(namespace)
        self.namespace = namespace
        self.codec = codec if codec is not None else Codec()
        self.default_ttl = default_ttl
        self.stale_ttl = default_ttl if stale_ttl is None else stale_ttl
        self.none_ttl = none_ttl
        self.jitter = jitter
        self.stampede = stampede if stampede is not None else StampedePolicy()
        self.metrics = CacheMetrics()
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.backend = RedisBackend(redis, timeout=timeout, breaker=self.breaker, on_error=self._redis_error)
        self._clock = clock
        self._rand = rand
        self.local = local
        if local is not None:
            local.attach(redis, self.keys.local_channel())
        self._owns_client = owns_client
        self._notifier = ReadyNotifier(redis, timeout=timeout)
        self._reads = ReadCoalescer()
        self._loads: SingleFlight[CacheEntry] = SingleFlight()
        self._refreshes: SingleFlight[None] = SingleFlight()
        self._background: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        max_connections: int = 64,
        pool_timeout: float = 1.0,
        socket_timeout: float | None = None,
        **options: Any,
    ) -> Cache:
        """A cache with its own client: a bounded, blocking connection pool (a caller waits up to
        ``pool_timeout`` for a free connection instead of opening more), closed by :meth:`aclose`.

        ``socket_timeout`` is None on purpose: the cache's ``timeout`` already bounds every call, and on Python
        3.11 redis-py's socket timeout runs sends under ``asyncio.wait_for``, which can swallow the budget's
        cancellation and stretch a 0.1 s budget to the socket timeout (docs/operations.md)."""
        client: Redis | RedisCluster
        if cluster:
            client = RedisCluster.from_url(url, max_connections=max_connections, socket_timeout=socket_timeout)
        else:
            pool = BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=pool_timeout, socket_timeout=socket_timeout
            )
            client = Redis(connection_pool=pool)
        return cls(client, owns_client=True, **options)

    async def aclose(self) -> None:
        """Wait for background refreshes, then close the client if this cache built it."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._notifier.aclose()
        if self.local is not None:
            await self.local.aclose()
        if self._owns_client:
            await self.redis.aclose()

    # -- the plain operations ---------------------------------------------------------------------------------

    def key(self, name: str) -> str:
        """The Redis key that holds ``name``."""
        return self.keys.value_key(name)

    async def get(self, name: str, default: Any = None) -> Any:
        """The fresh value stored under ``name``, or ``default`` (pass :data:`MISSING` to tell a cached
        ``None`` from a miss). A stale, undecodable or unreachable value is a miss."""
        found = await self._lookup(self.key(name), want_value=True)
        if found is None or not self._fresh(found[0]):
            self.metrics.misses += 1
            return default
        self.metrics.hits += 1
        return found[1]

    async def get_many(self, names: Sequence[str], default: Any = None) -> list[Any]:
        keys = [self.key(n) for n in names]
        try:
            stored = await self.backend.get_many(keys)
        except BackendUnavailable:
            self.metrics.misses += len(keys)
            return [default] * len(keys)
        values: list[Any] = []
        for key, data in zip(keys, stored, strict=True):
            decoded = await self._decode(key, data, want_value=True) if data is not None else None
            if decoded is None or not self._fresh(decoded[0]):
                self.metrics.misses += 1
                values.append(default)
            else:
                self.metrics.hits += 1
                values.append(decoded[1])
        return values

    async def set(
        self,
        name: str,
        value: Any,
        ttl: float | None = None,
        *,
        stale_ttl: float | None = None,
        tags: Iterable[str] = (),
    ) -> None:
        await self._store(self.key(name), value, self._options(ttl, stale_ttl, None, tags), recompute_time=0.0)

    async def set_many(self, values: Mapping[str, Any], ttl: float | None = None) -> None:
        opts = self._options(ttl, None, None, ())
        items = []
        for name, value in values.items():
            data, serialized_size, ttl_ms = self._encode(value, opts, recompute_time=0.0)
            items.append((self.key(name), data, ttl_ms))
            self._count_write(serialized_size, len(data))
        with contextlib.suppress(BackendUnavailable):
            await self.backend.set_many(items)
        await self._forget_locally([key for key, _, _ in items])

    async def delete(self, name: str) -> bool:
        return await self.delete_key(self.key(name))

    async def delete_key(self, key: str) -> bool:
        """Delete by full Redis key (as :meth:`key` or ``f.key(...)`` give it); False if absent or unreachable."""
        await self._forget_locally([key])
        try:
            return await self.backend.delete(key) > 0
        except BackendUnavailable:
            return False

    async def ttl(self, name: str) -> float | None:
        """Seconds until the value under ``name`` goes stale (negative once it is stale), or None if absent."""
        found = await self._lookup(self.key(name), want_value=False)
        return None if found is None else found[0].expires_at - self._clock()

    async def get_or_set(
        self,
        name: str,
        loader: Loader,
        ttl: float | None = None,
        *,
        stale_ttl: float | None = None,
        none_ttl: float | None = None,
        tags: Iterable[str] = (),
        stampede: StampedePolicy | None = None,
        local: bool = False,
    ) -> Any:
        """The value under ``name``; on a miss, ``await loader()`` once (across processes) and store it.
        ``local=True`` serves it from this process's local tier when the cache has one."""
        entry = await self._fetch(
            self.key(name), loader, self._options(ttl, stale_ttl, none_ttl, tags, stampede, local), want_value=True
        )
        return entry.value()

    async def get_or_set_entry(
        self,
        name: str,
        loader: Loader,
        ttl: float | None = None,
        *,
        stale_ttl: float | None = None,
        none_ttl: float | None = None,
        tags: Iterable[str] = (),
        stampede: StampedePolicy | None = None,
        local: bool = False,
    ) -> CacheEntry:
        """Like :meth:`get_or_set`, but hands back the stored bytes without parsing them."""
        return await self._fetch(
            self.key(name), loader, self._options(ttl, stale_ttl, none_ttl, tags, stampede, local), want_value=False
        )

    async def invalidate_tags(self, *tags: str) -> int:
        """Delete every key stored with any of ``tags``; returns how many keys went."""
        deleted = 0
        for tag in tags:
            tag_key = self.keys.tag_key(tag)
            try:
                members = await self.backend.tag_members(tag_key)
                if not members:
                    continue
                # SREM what we saw rather than DEL the set: a key tagged meanwhile keeps its membership.
                await self.backend.remove_tag_members(tag_key, members)
                await self._forget_locally(members)
                deleted += await self.backend.delete(*members)
            except BackendUnavailable:
                log.warning("cachelayer: could not invalidate tag %r: Redis unavailable", tag)
        self.metrics.invalidations += deleted
        return deleted

    async def clear(self, namespace: str | None = None) -> int:
        """Delete every key of this cache's namespace (or of ``namespace``) with SCAN, never KEYS."""
        if namespace is None or namespace == self.namespace:
            await self._forget_locally(None)
        pattern = self.keys.pattern() if namespace is None else KeyLayout(namespace).pattern()
        return await self.backend.scan_delete(pattern)

    def stats(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = self.metrics.snapshot()
        snapshot["breaker_state"] = self.breaker.state
        snapshot["breaker_opened"] = self.breaker.opened_count
        snapshot["loads_in_flight"] = len(self._loads)
        snapshot["background_tasks"] = len(self._background)
        if self.local is not None:
            snapshot.update(self.local.stats())
        return snapshot

    async def _forget_locally(self, keys: Sequence[str] | None) -> None:
        """Drop ``keys`` (None: all) from this process's local tier and tell the other processes to."""
        if self.local is None:
            return
        if keys is None:
            self.local.clear()
        else:
            self.local.discard(keys)
        await self.local.broadcast(keys, budget=self.backend.timeout)

    # -- the cache-aside path ---------------------------------------------------------------------------------

    def _options(
        self,
        ttl: float | None,
        stale_ttl: float | None,
        none_ttl: float | None,
        tags: Iterable[str],
        stampede: StampedePolicy | None = None,
        local: bool = False,
    ) -> _Options:
        ttl = self.default_ttl if ttl is None else ttl
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if stale_ttl is None:
            # The cache's stale window scales with a per-call TTL, so a short-lived value is not served stale
            # for the long window meant for the default TTL.
            stale_ttl = self.stale_ttl if ttl == self.default_ttl else ttl * (self.stale_ttl / self.default_ttl)
        none_ttl = none_ttl if none_ttl is not None else (self.none_ttl if self.none_ttl is not None else ttl)
        return _Options(ttl, stale_ttl, none_ttl, tuple(tags), stampede or self.stampede, local)

    def _fresh(self, frame: Frame) -> bool:
        return self._clock() < frame.expires_at

    async def _fetch(self, key: str, loader: Loader, opts: _Options, *, want_value: bool) -> CacheEntry:
        local = self.local if opts.local else None
        if local is not None:
            local.ensure_listening()
            held = local.get(key)
            now = self._clock()
            if held is not None and now < held.frame.expires_at:
                hit = self._local_hit(key, held, loader, opts, want_value, now)
                if hit is not None:
                    return hit
        try:
            data = await self._reads.read(key, lambda: self.backend.get(key))
        except BackendUnavailable:
            data = None
        found = await self._decode(key, data, want_value) if data is not None else None
        stale: Frame | None = None
        if found is not None:
            frame, decoded = found
            now = self._clock()
            if now < frame.expires_at:
                if local is not None and data is not None:
                    local.put(key, data, frame, None if want_value else decoded)
                return self._hit(key, frame, decoded, loader, opts, want_value, now)
            if opts.policy.stale_while_revalidate:
                self.metrics.stale_served += 1
                self._refresh_in_background(key, loader, opts, early=False)
                return self._entry(frame, "stale", decoded, want_value)
            stale = frame
        self.metrics.misses += 1
        if not opts.policy.single_flight:
            return await self._load(key, loader, opts, stale)
        return await self._loads.run(key, lambda: self._load(key, loader, opts, stale))

    def _local_hit(
        self, key: str, held: LocalEntry, loader: Loader, opts: _Options, want_value: bool, now: float
    ) -> CacheEntry | None:
        frame = held.frame
        try:
            if want_value:
                decoded: Any = self.codec.value(frame)
            else:
                if held.body is None:
                    self.local.keep_body(held, self.codec.serialized(frame))  # type: ignore[union-attr]
                decoded = held.body
        except CodecError:
            self.local.discard([key])  # type: ignore[union-attr]
            return None
        return self._hit(key, frame, decoded, loader, opts, want_value, now)

    def _hit(
        self, key: str, frame: Frame, decoded: Any, loader: Loader, opts: _Options, want_value: bool, now: float
    ) -> CacheEntry:
        """A fresh value, from Redis or the local tier: count it, and start an early refresh when XFetch says so."""
        self.metrics.hits += 1
        policy = opts.policy
        if policy.xfetch and xfetch_due(now, frame.expires_at, frame.recompute_time, policy.xfetch_beta, self._rand()):
            self._refresh_in_background(key, loader, opts, early=True)
        return self._entry(frame, "hit", decoded, want_value)

    def _entry(self, frame: Frame, outcome: Any, decoded: Any, want_value: bool) -> CacheEntry:
        if want_value:
            return CacheEntry(self.codec, frame, outcome, value=decoded)
        return CacheEntry(self.codec, frame, outcome, body=decoded)

    async def _lookup(self, key: str, *, want_value: bool) -> tuple[Frame, Any] | None:
        try:
            data = await self.backend.get(key)
        except BackendUnavailable:
            return None
        return None if data is None else await self._decode(key, data, want_value)

    async def _decode(self, key: str, data: bytes, want_value: bool) -> tuple[Frame, Any] | None:
        """Header and value (or body); a value that does not decode is deleted and treated as a miss."""
        codec = self.codec
        try:
            frame = codec.read_frame(data)
            return frame, (codec.value(frame) if want_value else codec.serialized(frame))
        except CodecError as exc:
            self.metrics.decode_errors += 1
            log.warning("cachelayer: dropping undecodable value at %s: %s", key, exc)
            with contextlib.suppress(BackendUnavailable):
                await self.backend.delete(key)
            return None

    async def _load(self, key: str, loader: Loader, opts: _Options, stale: Frame | None) -> CacheEntry:
        # The lease is tried even when the read just failed: one slow read must not open the way to the
        # database for every process. When Redis is really gone, the open breaker makes this attempt free.
        policy = opts.policy
        if not policy.lease:
            return await self._load_and_store(key, loader, opts, stale)
        lease_key = self.keys.lease_key(key)
        token = os.urandom(16).hex()
        lease_ms = math.ceil(policy.lease_ttl * 1000)
        deadline = time.monotonic() + policy.lease_wait
        wait_started: float | None = None
        delays = backoff_delays(policy.poll_initial, policy.poll_max)
        while True:
            try:
                acquired = await self.backend.acquire_lease(lease_key, token, lease_ms)
            except BackendUnavailable:
                return await self._load_and_store(key, loader, opts, stale)
            if acquired:
                self._end_wait(wait_started)
                return await self._load_under_lease(key, loader, opts, stale, lease_key, token)
            if wait_started is None:
                wait_started = time.monotonic()
                self.metrics.lease_waits += 1
            # Another process is loading: wait for its value until it lands, the lease goes, or time runs out.
            outcome = await self._wait_for_value(key, lease_key, deadline, delays, policy)
            if isinstance(outcome, CacheEntry):
                self._end_wait(wait_started)
                return outcome
            if outcome == "unavailable":
                self._end_wait(wait_started)
                return await self._load_and_store(key, loader, opts, stale)
            if outcome == "timeout":
                self._end_wait(wait_started)
                self.metrics.lease_timeouts += 1
                if stale is not None:
                    self.metrics.stale_served += 1
                    return CacheEntry(self.codec, stale, "stale")
                if policy.on_lease_timeout == "raise":
                    raise LeaseTimeoutError(f"waited {policy.lease_wait}s for the load of {key}")
                return await self._load_and_store(key, loader, opts, stale)
            # "released": the loader gave up or crashed; try to take the lease ourselves

    async def _wait_for_value(
        self, key: str, lease_key: str, deadline: float, delays: Iterator[float], policy: StampedePolicy
    ) -> CacheEntry | str:
        """Poll (woken early by pub/sub) until the value is fresh, the lease is gone, or the deadline passes."""
        channel = lease_key + ":ready"
        wake = await self._notifier.subscribe(channel) if policy.wake == "pubsub" else None
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                delay = min(next(delays), remaining)
                if wake is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(wake), delay)
                try:
                    data, lease_held = await self.backend.poll(key, lease_key)
                except BackendUnavailable:
                    return "unavailable"
                found = await self._decode(key, data, want_value=True) if data is not None else None
                if found is not None and self._fresh(found[0]):
                    return CacheEntry(self.codec, found[0], "miss", value=found[1])
                if not lease_held:
                    return "released"
                if wake is not None and wake.done():  # woken, but not for a fresh value: wait for the next one
                    await self._notifier.unsubscribe(channel, wake)
                    wake = await self._notifier.subscribe(channel)
            return "timeout"
        finally:
            await self._notifier.unsubscribe(channel, wake)

    def _end_wait(self, wait_started: float | None) -> None:
        if wait_started is not None:
            self.metrics.lease_wait_seconds += time.monotonic() - wait_started

    async def _load_under_lease(
        self,
        key: str,
        loader: Loader,
        opts: _Options,
        stale: Frame | None,
        lease_key: str,
        token: str,
        *,
        recheck: bool = True,
    ) -> CacheEntry:
        self.metrics.lease_acquired += 1
        try:
            if recheck:
                # The value may have landed between our miss and our lease (another process just released it).
                found = await self._lookup(key, want_value=True)
                if found is not None and self._fresh(found[0]):
                    return CacheEntry(self.codec, found[0], "miss", value=found[1])
            extender = asyncio.create_task(self._keep_lease(lease_key, token, opts.policy.lease_ttl))
            try:
                entry = await self._load_and_store(key, loader, opts, stale)
            finally:
                extender.cancel()
            if opts.policy.wake == "pubsub" and entry.outcome == "miss":
                await self._notifier.publish(lease_key + ":ready")
            return entry
        finally:
            with contextlib.suppress(BackendUnavailable):
                await self.backend.release_lease(lease_key, token)

    async def _keep_lease(self, lease_key: str, token: str, lease_ttl: float) -> None:
        lease_ms = math.ceil(lease_ttl * 1000)
        while True:
            await asyncio.sleep(lease_ttl / 3)
            try:
                if not await self.backend.extend_lease(lease_key, token, lease_ms):
                    return  # lost it (expired and taken): the new holder will store too; nothing to defend
            except BackendUnavailable:
                continue

    async def _load_and_store(self, key: str, loader: Loader, opts: _Options, stale: Frame | None) -> CacheEntry:
        self.metrics.loads += 1
        started = time.perf_counter()
        try:
            value = await loader()
        except Exception:
            self.metrics.load_errors += 1
            if stale is not None and opts.policy.stale_if_error:
                self.metrics.stale_served += 1
                log.warning("cachelayer: loader for %s failed; serving the stale value", key, exc_info=True)
                return CacheEntry(self.codec, stale, "stale")
            raise
        finally:
            self.metrics.load_seconds += time.perf_counter() - started
        return await self._store(key, value, opts, recompute_time=time.perf_counter() - started)

    def _encode(self, value: Any, opts: _Options, recompute_time: float) -> tuple[bytes, int, int]:
        ttl = jittered(opts.none_ttl if value is None else opts.ttl, self.jitter, self._rand())
        serialized = self.codec.serializer.dumps(value)
        data = self.codec.encode_serialized(serialized, expires_at=self._clock() + ttl, recompute_time=recompute_time)
        return data, len(serialized), max(1, math.ceil((ttl + opts.stale_ttl) * 1000))

    async def _store(self, key: str, value: Any, opts: _Options, recompute_time: float) -> CacheEntry:
        data, serialized_size, ttl_ms = self._encode(value, opts, recompute_time)
        tag_keys = [self.keys.tag_key(tag) for tag in opts.tags]
        with contextlib.suppress(BackendUnavailable):
            await self.backend.set(key, data, ttl_ms, tag_keys, math.ceil(ttl_ms / 1000) + 1)
        self._count_write(serialized_size, len(data))
        frame = self.codec.read_frame(data)
        await self._forget_locally([key])  # this process's copy too: the broadcast skips its sender
        if opts.local and self.local is not None:
            self.local.put(key, data, frame)
        return CacheEntry(self.codec, frame, "miss", value=value)

    def _count_write(self, raw: int, stored: int) -> None:
        self.metrics.writes += 1
        self.metrics.bytes_raw += raw
        self.metrics.bytes_stored += stored

    # -- background refresh (XFetch and stale-while-revalidate) ----------------------------------------------

    def _refresh_in_background(self, key: str, loader: Loader, opts: _Options, *, early: bool) -> None:
        if self._refreshes.running(key) or self._loads.running(key):
            return
        if early:
            self.metrics.early_recomputes += 1
        task = self._refreshes.start(key, lambda: self._refresh(key, loader, opts))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh(self, key: str, loader: Loader, opts: _Options) -> None:
        """Reload ``key`` if no other process is already doing it; never blocks, never raises."""
        lease_key = self.keys.lease_key(key)
        token = os.urandom(16).hex()
        try:
            if opts.policy.lease and not await self.backend.acquire_lease(
                lease_key, token, math.ceil(opts.policy.lease_ttl * 1000)
            ):
                return
        except BackendUnavailable:
            return
        self.metrics.background_refreshes += 1
        try:
            # stale=None: a background refresh whose loader fails leaves the stored value as it is.
            if opts.policy.lease:
                await self._load_under_lease(key, loader, opts, None, lease_key, token, recheck=False)
            else:
                await self._load_and_store(key, loader, opts, None)
        except Exception:
            log.warning("cachelayer: background refresh of %s failed", key, exc_info=True)

    def _redis_error(self, exc: BaseException) -> None:
        if isinstance(exc, BackendUnavailable):
            self.metrics.breaker_rejections += 1
        else:
            self.metrics.redis_errors += 1
            log.debug("cachelayer: Redis call failed: %r", exc)
