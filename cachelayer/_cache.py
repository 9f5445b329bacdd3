"""The cache-aside manager: one public entry point, :meth:`Cache.fetch`, and the plain operations around it.

A fetch reads straight down: the local tier, then the backend (reads of one key coalesced), the codec; on a miss
the load path (``_loading.py``: single-flight, the lease, the store). Every store problem arrives here as
:class:`StoreUnavailable` and becomes fail-open behaviour; only the loader's own errors and programming errors
reach a caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, Unpack
from urllib.parse import urlsplit

from ._backend import Backend, StoreUnavailable
from ._breaker import CircuitBreaker
from ._codec import EXPIRES_OFFSET, Codec
from ._entry import CacheEntry
from ._keys import KeyLayout
from ._loading import INVALIDATED_AT, Loading
from ._local import LocalCache
from ._memory_backend import MemoryBackend
from ._metrics import CacheMetrics
from ._null_backend import NullBackend
from ._policy import DEFAULT_POLICY, EntryPolicy, PolicyFields, ResolvedPolicy, policy_of
from ._redis_backend import RedisBackend
from ._stampede import StampedePolicy
from ._typed import ValueType

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

__all__ = ["Cache"]

log = logging.getLogger("cachelayer")

T = TypeVar("T")

# Marking an entry stale rewrites its frame's expiry field in place (its TTL and payload stay).
_INVALIDATED_FIELD = round(INVALIDATED_AT * 1000).to_bytes(8, "big")


class Cache:
    """A cache in one namespace of a store.

    Build one per application at start-up and pass it where it is needed (or make it the decorator's default
    with :func:`set_default_cache`)::

        cache = Cache.from_url("redis://127.0.0.1:6379/0", namespace="wallpapers", default_ttl=60)

    ``store`` is a :class:`Backend` (:class:`RedisBackend`, :class:`MemoryBackend`) or a redis-py client, which
    is wrapped in a :class:`RedisBackend` with ``timeout`` (the budget of every call) and ``breaker``.
    ``stale_ttl`` (default: equal to the TTL) is how long a value outlives its TTL to be served stale while one
    refresh runs, or when the loader fails. ``none_ttl`` is the TTL of a cached ``None`` (default: the TTL).
    ``jitter`` spreads each TTL over ``ttl * (1 +- jitter)``.
    """

    def __init__(
        self,
        store: Backend | Redis | RedisCluster,
        *,
        namespace: str = "cache",
        codec: Codec | None = None,
        default_ttl: float = 60.0,
        stale_ttl: float | None = None,
        none_ttl: float | None = None,
        jitter: float = 0.1,
        stampede: StampedePolicy | None = None,
        local: LocalCache | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        timeout: float | None = None,
        breaker: CircuitBreaker | None = None,
        owns_client: bool = False,
        enabled: bool = True,
    ) -> None:
        if default_ttl <= 0:
            raise ValueError("default_ttl must be positive")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.backend: Backend = _as_backend(store, timeout, breaker, owns_client)
        self._owns_backend = owns_client
        self.keys = KeyLayout(namespace)
        self.namespace = namespace
        self.codec = codec if codec is not None else Codec()
        self.default_ttl = default_ttl
        self.stale_ttl = default_ttl if stale_ttl is None else stale_ttl
        self.none_ttl = none_ttl
        self.jitter = jitter
        self.stampede = stampede if stampede is not None else StampedePolicy()
        self.enabled = enabled
        self.metrics = CacheMetrics()
        self.local = local
        if local is not None:
            local.attach(self.backend, self.keys.local_channel())
        self._clock = clock
        self._rand = rand
        self._resolved: dict[int, tuple[EntryPolicy, ResolvedPolicy]] = {}
        self._loading: Loading | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        max_connections: int = 64,
        pool_timeout: float = 1.0,
        socket_timeout: float | None = None,
        timeout: float = 0.1,
        breaker: CircuitBreaker | None = None,
        **options: Any,
    ) -> Cache:
        """A cache with a store of its own, closed by :meth:`aclose`: ``memory://`` (in-process),
        ``redis://``, ``rediss://``, ``unix://`` (a bounded, blocking pool: a caller waits up to
        ``pool_timeout`` for a free connection instead of opening more), or ``redis+cluster://host:port``
        (``rediss+cluster://``; also ``cluster=True`` with a ``redis://`` URL): a Redis Cluster, found from that
        node. One client per event loop; ``socket_timeout`` is None on purpose (docs/operations.md)."""
        scheme = urlsplit(url).scheme
        backend: Backend
        if scheme == "memory":
            backend = MemoryBackend(timeout=timeout)
        elif scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
            build = RedisBackend.cluster_from_url if cluster or scheme.endswith("+cluster") else RedisBackend.from_url
            backend = build(
                url,
                max_connections=max_connections,
                pool_timeout=pool_timeout,
                socket_timeout=socket_timeout,
                timeout=timeout,
                breaker=breaker,
            )
        else:
            raise ValueError(f"unsupported cache URL scheme {scheme!r}: memory, redis, rediss, unix, redis+cluster")
        return cls(backend, owns_client=True, **options)

    @classmethod
    def disabled(cls, **options: Any) -> Cache:
        """A cache that stores nothing: every fetch calls the loader (outcome ``"bypass"``). For measuring the
        uncached path, and for an application's tests that must not depend on caching."""
        return cls(NullBackend(), enabled=False, **options)

    async def connect(self) -> None:
        """Open the store's connections and learn its topology now, so the first request pays nothing for it.
        Never raises for a store problem (the cache fails open until the store answers)."""
        with contextlib.suppress(StoreUnavailable):
            await self.backend.connect()

    async def ping(self) -> bool:
        """True when the store answers one round trip within its budget (health checks); never raises."""
        try:
            await self.backend.ping()
        except StoreUnavailable:
            return False
        return True

    async def aclose(self) -> None:
        """Wait for background refreshes, then close what this cache built."""
        if self._loading is not None and self._loading.loop is asyncio.get_running_loop():
            await self._loading.aclose()
        if self.local is not None:
            await self.local.aclose()
        if self._owns_backend:
            await self.backend.aclose()

    def _state(self) -> Loading:
        """The load machinery of the running loop (futures and tasks belong to one loop)."""
        loading = self._loading
        loop = asyncio.get_running_loop()
        if loading is None or loading.loop is not loop:
            loading = self._loading = Loading(self, loop)
        return loading

    # -- the entry point --------------------------------------------------------------------------------------

    def key(self, name: str) -> str:
        """The store key that holds ``name``."""
        return self.keys.value_key(name)

    def resolve(self, policy: EntryPolicy) -> ResolvedPolicy:
        """``policy`` with this cache's defaults filled in."""
        known = self._resolved.get(id(policy))
        if known is not None and known[0] is policy:  # by identity: hashing a policy costs more than resolving
            return known[1]
        ttl = self.default_ttl if policy.ttl is None else policy.ttl
        stale_ttl = policy.stale_ttl
        if stale_ttl is None:
            # The stale window scales with a per-entry TTL, so a short-lived value is not served stale for the
            # long window meant for the default TTL.
            stale_ttl = self.stale_ttl if ttl == self.default_ttl else ttl * (self.stale_ttl / self.default_ttl)
        none_ttl = policy.none_ttl if policy.none_ttl is not None else (self.none_ttl or ttl)
        resolved = ResolvedPolicy(ttl, stale_ttl, none_ttl, policy.tags, policy.local, policy.stampede or self.stampede)
        if len(self._resolved) >= 256:
            self._resolved.clear()
        self._resolved[id(policy)] = (policy, resolved)  # the policy is kept: its id is not reused meanwhile
        return resolved

    async def fetch(
        self,
        name: str,
        loader: Callable[[], Awaitable[T]],
        policy: EntryPolicy = DEFAULT_POLICY,
        *,
        value_type: ValueType[T] | None = None,
        parse: bool = True,
    ) -> CacheEntry[T]:
        """The entry under ``name``; on a miss, ``await loader()`` once (across processes) and store it.

        ``parse=False`` checks the stored bytes without building the value (``entry.body()`` is then free).
        ``value_type`` decodes hits to the type the loader returns (the decorator passes it from the return
        annotation). Never raises for a store problem; the loader's exceptions propagate."""
        if not self.enabled:
            return await self._state().bypass(loader, value_type)
        key = self.keys.value_key(name)
        state = self._state()
        local = self.local if policy.local else None
        if local is not None:
            hit = state.local_hit(key, local, policy, loader, parse, value_type)
            if hit is not None:
                return hit
        return await state.fetch(key, loader, policy, parse, value_type)

    async def refresh(
        self,
        name: str,
        loader: Callable[[], Awaitable[T]],
        policy: EntryPolicy = DEFAULT_POLICY,
        *,
        value_type: ValueType[T] | None = None,
    ) -> CacheEntry[T]:
        """Run ``loader`` now and store its value, whatever is stored."""
        if not self.enabled:
            return await self._state().bypass(loader, value_type)
        return await self._state().load_and_store(self.key(name), loader, self.resolve(policy), None, value_type)

    async def get_or_set(
        self,
        name: str,
        loader: Callable[[], Awaitable[T]],
        policy: EntryPolicy | None = None,
        **fields: Unpack[PolicyFields],
    ) -> T:
        """The value under ``name``, loaded and stored on a miss: ``(await fetch(...)).value()``. The policy's
        fields may be given as keywords (``ttl=30, tags=["home"]``)."""
        return (await self.fetch(name, loader, policy_of(policy, fields))).value()

    async def get_or_set_entry(
        self,
        name: str,
        loader: Callable[[], Awaitable[T]],
        policy: EntryPolicy | None = None,
        **fields: Unpack[PolicyFields],
    ) -> CacheEntry[T]:
        """Like :meth:`get_or_set`, but the entry with its stored bytes checked, not parsed."""
        return await self.fetch(name, loader, policy_of(policy, fields), parse=False)

    # -- plain operations -------------------------------------------------------------------------------------

    async def get(self, name: str, default: Any = None, *, value_type: ValueType[Any] | None = None) -> Any:
        """The fresh value stored under ``name``, or ``default`` (pass :data:`MISSING` to tell a cached
        ``None`` from a miss). A stale, undecodable or unreachable value is a miss."""
        key = self.key(name)
        try:
            data = await self.backend.get(key)
        except StoreUnavailable:
            data = None
        return await self._fresh_value(key, data, default, value_type)

    async def get_many(
        self, names: Sequence[str], default: Any = None, *, value_type: ValueType[Any] | None = None
    ) -> list[Any]:
        keys = [self.key(n) for n in names]
        try:
            stored = await self.backend.get_many(keys)
        except StoreUnavailable:
            stored = [None] * len(keys)
        return [await self._fresh_value(key, data, default, value_type) for key, data in zip(keys, stored, strict=True)]

    async def _fresh_value(self, key: str, data: bytes | None, default: Any, value_type: ValueType[Any] | None) -> Any:
        found = await self._state().decode(key, data, True, value_type) if data is not None else None
        if found is None or self._clock() >= found[0].expires_at:
            self.metrics.misses += 1
            return default
        self.metrics.hits += 1
        return found[1]

    async def set(
        self,
        name: str,
        value: Any,
        ttl: float | None = None,
        *,
        stale_ttl: float | None = None,
        tags: Iterable[str] = (),
        value_type: ValueType[Any] | None = None,
    ) -> None:
        """Store ``value``. A value that cannot be stored raises :class:`SerializationError` (or
        :class:`ValueTooLargeError`); a store problem does not."""
        policy = self.resolve(EntryPolicy(ttl=ttl, stale_ttl=stale_ttl, tags=tuple(tags)))
        await self._state().store(self.key(name), value, policy, 0.0, value_type, strict=True)

    async def set_many(self, values: Mapping[str, Any], ttl: float | None = None) -> None:
        policy = self.resolve(EntryPolicy(ttl=ttl))
        state = self._state()
        items = [(self.key(name), *state.encode(value, policy, 0.0, None)) for name, value in values.items()]
        with contextlib.suppress(StoreUnavailable):
            await self.backend.set_many([(key, data, ttl_ms) for key, data, ttl_ms, _ in items])
        for _, data, _, raw in items:
            self.metrics.count_write(raw, len(data))
        await self.forget_locally([key for key, *_ in items])

    async def delete(self, name: str) -> bool:
        """Delete the entry under ``name``; False if absent or the store is unavailable."""
        key = self.key(name)
        try:
            deleted = await self.backend.delete(key) > 0
        except StoreUnavailable:
            deleted = False
        await self.forget_locally([key])
        return deleted

    async def ttl(self, name: str) -> float | None:
        """Seconds until the value under ``name`` goes stale (negative once it is stale), or None if absent."""
        key = self.key(name)
        try:
            data = await self.backend.get(key)
        except StoreUnavailable:
            return None
        found = await self._state().decode(key, data, False, None) if data is not None else None
        return None if found is None else found[0].expires_at - self._clock()

    async def invalidate_tags(self, *tags: str, mark_stale: bool = False) -> int:
        """Delete every entry stored with any of ``tags`` (``mark_stale``: mark them stale instead, so the next
        read reloads and, if the loader fails, serves the old copy); returns how many entries it reached."""
        reached = 0
        for tag in tags:
            tag_key = self.keys.tag_key(tag)
            try:
                members = await self.backend.tag_members(tag_key)
                if not members:
                    continue
                if mark_stale:
                    marked = await asyncio.gather(
                        *(self.backend.overwrite(m, EXPIRES_OFFSET, _INVALIDATED_FIELD) for m in members)
                    )
                    reached += sum(marked)
                else:
                    # SREM what we saw rather than DEL the set: a key tagged meanwhile keeps its membership.
                    await self.backend.remove_tag_members(tag_key, members)
                    reached += await self.backend.delete(*members)
            except StoreUnavailable as exc:
                log.warning("cachelayer: could not invalidate tag %r (store unavailable: %s)", tag, exc)
                continue
            # After the store changed: a process told earlier could reload the old value into its local tier.
            await self.forget_locally(members)
        self.metrics.invalidations += reached
        return reached

    async def clear(self) -> int:
        """Delete every key of this cache's namespace (SCAN, never KEYS); 0 when the store is unavailable."""
        try:
            deleted = await self.backend.clear(self.namespace + ":")
        except StoreUnavailable as exc:
            log.warning("cachelayer: could not clear namespace %r (store unavailable: %s)", self.namespace, exc)
            deleted = 0
        await self.forget_locally(None)
        return deleted

    async def forget_locally(self, keys: Sequence[str] | None) -> None:
        """Drop ``keys`` (None: all) from this process's local tier and tell the other processes to."""
        if self.local is None:
            return
        if keys is None:
            self.local.clear()
        else:
            self.local.discard(keys)
        await self.local.broadcast(keys)

    def stats(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = self.metrics.snapshot()
        snapshot.update(self.backend.stats())
        loading = self._loading
        snapshot["loads_in_flight"] = 0 if loading is None else loading.in_flight()
        snapshot["background_tasks"] = 0 if loading is None else len(loading.background)
        if self.local is not None:
            snapshot.update(self.local.stats())
        return snapshot

    # -- used by the load path --------------------------------------------------------------------------------

    def is_fresh(self, expires_at: float) -> bool:
        return self._clock() < expires_at

    def now(self) -> float:
        return self._clock()

    def random(self) -> float:
        return self._rand()


def _as_backend(
    store: Backend | Redis | RedisCluster, timeout: float | None, breaker: CircuitBreaker | None, owns: bool
) -> Backend:
    if isinstance(store, Backend):
        if timeout is not None or breaker is not None:
            raise TypeError("timeout= and breaker= belong to the backend: RedisBackend(client, timeout=, breaker=)")
        return store
    # A redis-py client: wrapped by the one module that knows redis.
    return RedisBackend(store, timeout=0.1 if timeout is None else timeout, breaker=breaker, owns_client=owns)

