"""The cache-aside manager: one public entry point, :meth:`Cache.fetch`, and the plain operations around it.

``fetch`` builds one :class:`Fetch` (key, loader, resolved policy, value type, parse mode, hooks) and hands it to
the pipeline of the running event loop (``_pipeline.py``), which reads straight down and never calls back up. Every
store problem becomes fail-open behaviour; only the loader's own errors and mistakes (a :class:`CacheError` with
the fix: a closed cache, a bad URL, an unstorable ``set``) reach a caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar, Unpack

from ._backend import Backend, StoreUnavailable
from ._breaker import CircuitBreaker
from ._codec import Codec, Frame
from ._entry import CacheEntry, Outcome
from ._errors import CacheClosedError, ConfigurationError
from ._fetch import Fetch
from ._guard import Guard
from ._hooks import GLOBAL as GLOBAL_HOOKS
from ._hooks import CacheHooks, FetchHooks, start_fetch
from ._keys import KeyLayout
from ._local import LocalCache
from ._metrics import CacheMetrics
from ._monitor import ConsistencyMonitor
from ._null_backend import NullBackend
from ._options import StoreOptions
from ._pending import PendingInvalidations
from ._pipeline import Pipeline
from ._policy import (
    DEFAULT_POLICY,
    EntryPolicy,
    PolicyDefaults,
    PolicyFields,
    ResolvedPolicy,
    policy_of,
    resolve_policy,
)
from ._redis_backend import RedisBackend
from ._stampede import StampedePolicy
from ._typed import ValueType
from ._urls import backend_from_url

if TYPE_CHECKING:
    from ._redis_clients import RedisClient

__all__ = ["Cache"]

log = logging.getLogger("cachelayer")

T = TypeVar("T")

_UNNAMED_FETCH: Final = "cachelayer.fetch"
# Keys deleted per store call by a retried invalidation (measured: 10,000 in one pipeline took 0.19 s on a quiet
# machine, over the default 0.1 s budget; 500 take ~10 ms).
_INVALIDATION_BATCH: Final = 500



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

    Every hit hands its caller a value of its own, decoded from the stored bytes, on every backend: mutating it
    never changes what another caller gets. ``shared_values=True`` lets an in-process store
    (:class:`MemoryBackend`) decode an entry once and hand every hit the same object: a promise that no caller
    mutates what it gets, for values read far more often than written.

    :meth:`aclose` closes the cache for good: any later call raises :class:`CacheClosedError`.

    Consistency (docs/consistency.md): an invalidation (:meth:`delete`, :meth:`invalidate_tags`, :meth:`clear`,
    and the writes :meth:`set`/:meth:`set_many`) beats every load that began before it: such a load's write is
    refused on the store (counted as ``revoked_fills``), and a caller that starts after the invalidation returned
    never gets its value. An invalidation the store could not take is retried until it lands (meanwhile this
    process does not serve what it covers). ``monitor`` (:class:`ConsistencyMonitor`) samples fills and
    invalidations and reports a stored value the loader no longer answers.
    """

    def __init__(
        self,
        store: Backend | RedisClient,
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
        shared_values: bool = False,
        monitor: ConsistencyMonitor | None = None,
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
        self.shared_values = shared_values
        self._closed = False
        self.metrics = CacheMetrics()
        self._pending = PendingInvalidations()
        self._longest_life = self.default_ttl * (1 + jitter) + self.stale_ttl
        self.monitor = monitor
        if monitor is not None:
            monitor.attach(self._monitor_read, self._monitor_report)
        self.local = local
        if local is not None:
            local.attach(self.backend, self.keys.local_channel())
        self._clock = clock
        self._rand = rand
        self._defaults = PolicyDefaults(default_ttl, self.stale_ttl, none_ttl, self.stampede)
        self._resolved: dict[int, tuple[EntryPolicy, ResolvedPolicy]] = {}
        self._pipeline: Pipeline | None = None
        self._hooks: tuple[CacheHooks, ...] = ()
        self._subscribers: tuple[CacheHooks, ...] = ()
        self._fetch_started: Callable[[str, str], FetchHooks | None] | None = None
        self._hooks_generation = -1
        guard = getattr(self.backend, "guard", None)
        if isinstance(guard, Guard):
            guard.listeners.append(self._store_state_changed)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        store_options: StoreOptions | None = None,
        max_connections: int | None = None,
        pool_timeout: float | None = None,
        socket_timeout: float | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        breaker: CircuitBreaker | None = None,
        **options: Any,
    ) -> Cache:
        """A cache with a store of its own, closed by :meth:`aclose`, built from the URL scheme table
        (:func:`register_scheme`): ``memory://`` (in-process), ``redis://``, ``rediss://``, ``unix://`` (a bounded,
        blocking pool: a caller waits up to ``pool_timeout`` for a free connection instead of opening more), or
        ``redis+cluster://host:port`` (``rediss+cluster://``; also ``cluster=True`` with a ``redis://`` URL): a
        Redis Cluster, found from that node.

        Pool limits and timeouts are one :class:`StoreOptions` (``store_options=``), or its fields as keywords
        (which override it). A malformed URL, an unknown scheme, a port or database that is not a number raise
        :class:`ConfigurationError` here, never at the first call. ``options`` go to :class:`Cache`."""
        given: dict[str, Any] = {
            name: value
            for name, value in (
                ("max_connections", max_connections),
                ("pool_timeout", pool_timeout),
                ("socket_timeout", socket_timeout),
                ("timeout", timeout),
                ("connect_timeout", connect_timeout),
                ("breaker", breaker),
            )
            if value is not None
        }
        store = dataclasses.replace(store_options or StoreOptions(), **given)
        return cls(backend_from_url(url, store, cluster=cluster), owns_client=True, **options)

    @classmethod
    def disabled(cls, **options: Any) -> Cache:
        """A cache that stores nothing: every fetch calls the loader (outcome ``"bypass"``). For measuring the
        uncached path, and for an application's tests that must not depend on caching."""
        return cls(NullBackend(), enabled=False, **options)

    async def connect(self) -> None:
        """Open the store's connections and learn its topology now, so the first request pays nothing for it.

        Raises :class:`StoreConnectError` (naming the store and its own message) when the store refuses: nothing
        listens there, a wrong password, a database index that does not exist. An application that would rather
        start degraded catches it: every later call fails open until the store answers."""
        self._check_open()
        with contextlib.suppress(StoreUnavailable):
            await self.backend.connect()

    async def ping(self) -> bool:
        """True when the store answers one round trip within its budget (health checks); never raises for a
        store problem."""
        self._check_open()
        try:
            await self.backend.ping()
        except StoreUnavailable:
            return False
        return True

    async def aclose(self, grace: float = 5.0) -> None:
        """Close the cache: new calls raise :class:`CacheClosedError` from now on (a closed cache silently loading
        every call would hide the bug); the loads and refreshes already running finish, for up to ``grace`` seconds
        (their callers get their values, their leases are released), then what this cache built is closed. A
        closed cache stays closed. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._pipeline is not None and self._pipeline.loop is asyncio.get_running_loop():
            await self._pipeline.aclose(grace)
        await self._pending.aclose()
        if self.monitor is not None:
            await self.monitor.aclose()
        guard = getattr(self.backend, "guard", None)
        if isinstance(guard, Guard) and self._store_state_changed in guard.listeners:
            guard.listeners.remove(self._store_state_changed)  # a backend shared with other caches lives on
        if self.local is not None:
            await self.local.aclose()
        if self._owns_backend:
            await self.backend.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError(
                f"cache {self.namespace!r} was closed with aclose(): build a new Cache (a closed cache stays closed)"
            )

    def _state(self) -> Pipeline:
        """The pipeline of the running loop (futures and tasks belong to one loop)."""
        if self._closed:
            self._check_open()
        pipeline = self._pipeline
        loop = asyncio.get_running_loop()
        if pipeline is None or pipeline.loop is not loop:
            pipeline = self._pipeline = Pipeline(
                loop,
                codec=self.codec,
                backend=self.backend,
                keys=self.keys,
                local=self.local,
                metrics=self.metrics,
                clock=self._clock,
                rand=self._rand,
                jitter=self.jitter,
                shared_values=self.shared_values,
                monitor=self.monitor,
            )
        return pipeline

    # -- hooks ------------------------------------------------------------------------------------------------

    def add_hooks(self, hooks: CacheHooks) -> None:
        """Subscribe ``hooks`` to this cache's fetches (:mod:`cachelayer` hooks: tracing, metrics)."""
        if hooks not in self._hooks:
            self._hooks = (*self._hooks, hooks)
            self._hooks_generation = -1

    def remove_hooks(self, hooks: CacheHooks) -> None:
        self._hooks = tuple(h for h in self._hooks if h is not hooks)
        self._hooks_generation = -1

    def _store_state_changed(self, store: str, state: str, reason: str | None) -> None:
        for hooks in (*GLOBAL_HOOKS.subscribers, *self._hooks):
            hooks.store_state_changed(store, state, reason)

    def _start_hooks(self, function: str, key: str) -> FetchHooks | None:
        if self._hooks_generation != GLOBAL_HOOKS.generation:
            self._subscribe()
        started = self._fetch_started
        return None if started is None else started(function, key)

    def _subscribe(self) -> None:
        """Who hears this cache's fetches now: the global subscribers and its own, and the one call that starts
        a fetch's hooks (a lone subscriber's own ``fetch_started``: no fan-out on the hit path)."""
        subscribers = self._subscribers = (*GLOBAL_HOOKS.subscribers, *self._hooks)
        self._hooks_generation = GLOBAL_HOOKS.generation
        if not subscribers:
            self._fetch_started = None
        elif len(subscribers) == 1:
            self._fetch_started = subscribers[0].fetch_started
        else:
            self._fetch_started = functools.partial(start_fetch, subscribers)

    # -- the entry point --------------------------------------------------------------------------------------

    def key(self, name: str) -> str:
        """The store key that holds ``name``."""
        return self.keys.value_key(name)

    def resolve(self, policy: EntryPolicy) -> ResolvedPolicy:
        """``policy`` with this cache's defaults filled in."""
        known = self._resolved.get(id(policy))
        if known is not None and known[0] is policy:  # by identity: hashing a policy costs more than resolving
            return known[1]
        resolved = resolve_policy(policy, self._defaults)
        life = max(resolved.ttl, resolved.none_ttl) * (1 + self.jitter) + resolved.stale_ttl
        self._longest_life = max(self._longest_life, life)  # how long a pending invalidation must be honoured
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
        function: str | None = None,
        deadline: float | None = None,
    ) -> CacheEntry[T]:
        """The entry under ``name``; on a miss, ``await loader()`` once (across processes) and store it.

        ``parse=False`` checks the stored bytes without building the value (``entry.body()`` is then free).
        ``value_type`` decodes hits to the type the loader returns (the decorator passes it from the return
        annotation). ``function`` names the fetch for hooks and traces (the decorator passes the function's
        qualified name; default ``"cachelayer.fetch"``: a name, unlike a key, must not carry user data or grow
        without bound). ``deadline`` (the running loop's ``time()``; :func:`cachelayer.time_budget` sets one for a
        block) bounds how long this caller waits for another's load: then the stale value, or
        :class:`DeadlineExceededError`. Never raises for a store problem; the loader's exceptions propagate, and a
        failed load in another process that this caller waited for raises :class:`LoadFailedError`."""
        return await self._start_fetch(name, loader, policy, value_type, parse, function, deadline)

    def _start_fetch(
        self,
        name: str,
        loader: Callable[[], Awaitable[T]],
        policy: EntryPolicy,
        value_type: ValueType[T] | None,
        parse: bool,
        function: str | None,
        deadline: float | None = None,
    ) -> Coroutine[Any, Any, CacheEntry[T]]:
        """:meth:`fetch` without a coroutine frame of its own, for the decorator: every resumption of a waiting
        caller passes through each frame of its chain of coroutines. Awaited at once, it is ``fetch``."""
        pipeline = self._state()
        key = self.keys.value_key(name)
        fetch = Fetch(key, loader, self.resolve(policy), value_type, parse, function or _UNNAMED_FETCH)
        if deadline is not None:
            fetch.deadline = deadline
        if self._hooks or GLOBAL_HOOKS.subscribers:  # inline: every hit of an instrumented cache comes here
            if self._hooks_generation != GLOBAL_HOOKS.generation:
                self._subscribe()
            started = self._fetch_started
            if started is not None:
                fetch.hooks = started(fetch.function, key)
        if not self.enabled:
            return pipeline.bypass(fetch)
        if self._pending.active and self._pending.covers(key, fetch.policy.tags):
            return pipeline.unstored(fetch)  # an invalidation of it has not landed: the stored value may be old
        return pipeline.fetch(fetch)

    def _local_entry(
        self,
        name: str,
        loader: Callable[[], Awaitable[T]],
        policy: EntryPolicy,
        value_type: ValueType[T] | None,
        function: str | None,
    ) -> CacheEntry[T] | None:
        """The fresh local-tier entry under ``name``, its stored bytes checked but not parsed (as ``parse=False``),
        without awaiting (None: none; nothing counted). ``loader`` is what an early refresh (XFetch) of the hit
        runs. Everything :meth:`_start_fetch` checks first holds here too: a closed cache raises, a disabled one
        or a pending invalidation of the key gives None."""
        if self.local is None:
            return None
        pipeline = self._state()
        key = self.keys.value_key(name)
        fetch = Fetch(key, loader, self.resolve(policy), value_type, False, function or _UNNAMED_FETCH)
        if not self.enabled or (self._pending.active and self._pending.covers(key, fetch.policy.tags)):
            return None
        started = None
        if self._hooks or GLOBAL_HOOKS.subscribers:
            if self._hooks_generation != GLOBAL_HOOKS.generation:
                self._subscribe()
            started = self._fetch_started
        return pipeline.local_entry(fetch, started)

    async def refresh(
        self,
        name: str,
        loader: Callable[[], Awaitable[T]],
        policy: EntryPolicy = DEFAULT_POLICY,
        *,
        value_type: ValueType[T] | None = None,
        function: str | None = None,
    ) -> CacheEntry[T]:
        """Run ``loader`` now and store its value, whatever is stored (heard by the hooks as a fetch)."""
        pipeline = self._state()
        key = self.key(name)
        fetch = Fetch(key, loader, self.resolve(policy), value_type, True, function or _UNNAMED_FETCH)
        if self._hooks or GLOBAL_HOOKS.subscribers:
            fetch.hooks = self._start_hooks(fetch.function, key)
        if not self.enabled:
            return await pipeline.bypass(fetch)
        return await pipeline.refresh(fetch)

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
        self._check_open()
        key = self.key(name)
        try:
            data = await self.backend.get(key)
        except StoreUnavailable:
            data = None
        return await self._fresh_value(key, data, default, value_type)

    async def get_many(
        self, names: Sequence[str], default: Any = None, *, value_type: ValueType[Any] | None = None
    ) -> list[Any]:
        self._check_open()
        keys = [self.key(n) for n in names]
        try:
            stored = await self.backend.get_many(keys)
        except StoreUnavailable:
            stored = [None] * len(keys)
        return [await self._fresh_value(key, data, default, value_type) for key, data in zip(keys, stored, strict=True)]

    async def _fresh_value(self, key: str, data: bytes | None, default: Any, value_type: ValueType[Any] | None) -> Any:
        if self._pending.active and self._pending.covers(key, ()):
            data = None
        found = await self._state().reader.decode(key, data, True, value_type) if data is not None else None
        if (
            found is None
            or self._clock() >= found[0].expires_at
            # A tag invalidation of this process that has not reached the store yet covers the entry's tags.
            or (found[0].tags and self._pending.active and self._pending.covers(key, [t for t, _ in found[0].tags]))
        ):
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
    ) -> bool:
        """Store ``value``; True when the store took it, False when it was unavailable (failed open, counted; the
        key is then invalidated in the background until that lands, and not served from the store meanwhile). A
        value that cannot be stored raises :class:`SerializationError` (or :class:`ValueTooLargeError`)."""
        policy = self.resolve(EntryPolicy(ttl=ttl, stale_ttl=stale_ttl, tags=tuple(tags)))
        pipeline, key = self._state(), self.key(name)
        entry = await pipeline.filler.store(key, value, policy, value_type, 0.0, strict=True)
        stored = entry.outcome is not Outcome.FAIL_OPEN
        if not stored:
            # A write is an invalidation too: the old value must not outlive it, nor a load that began before it.
            self._pending.add_keys([key], self._longest_life)
            self._defer("set", key, StoreUnavailable("the write did not reach the store"))
        else:
            self._pending.settled([key])
        pipeline.invalidated([key])  # a caller from now on must not join a load that began before the write
        return stored

    async def set_many(self, values: Mapping[str, Any], ttl: float | None = None) -> bool:
        """Store several values at once; True when the store took them, False when it was unavailable."""
        policy = self.resolve(EntryPolicy(ttl=ttl))
        filler = self._state().filler
        items = [(self.key(name), *filler.encode(value, policy, 0.0, None)) for name, value in values.items()]
        stored = True
        try:
            await self.backend.set_many([(key, data, ttl_ms) for key, data, ttl_ms, _ in items])
        except StoreUnavailable as exc:
            stored = False
            self._pending.add_keys([key for key, *_ in items], self._longest_life)
            self._defer("set_many", f"{len(items)} keys", exc)
        else:
            self._pending.settled([key for key, *_ in items])
        for _, data, _, raw in items:
            self.metrics.count_write(raw, len(data))
        written = [key for key, *_ in items]
        self._state().invalidated(written)
        await self.forget_locally(written)
        return stored

    async def delete(self, name: str) -> bool:
        """Delete the entry under ``name``; False if absent or the store is unavailable."""
        self._check_open()
        key = self.key(name)
        try:
            deleted = await self.backend.delete(key) > 0
        except StoreUnavailable as exc:
            deleted = False
            self._pending.add_keys([key], self._longest_life)
            self._defer("delete", key, exc)
        else:
            self._pending.settled([key])
        self._invalidated([key])
        await self.forget_locally([key])
        return deleted

    async def ttl(self, name: str) -> float | None:
        """Seconds until the value under ``name`` goes stale (negative once it is stale), or None if absent."""
        self._check_open()
        frame = await self._stored_frame(self.key(name))
        return None if frame is None else frame.expires_at - self._clock()

    async def _stored_frame(self, key: str) -> Frame | None:
        """The checked frame stored under ``key``, fresh or not; None when absent, undecodable or unreachable."""
        try:
            data = await self.backend.get(key)
        except StoreUnavailable:
            return None
        found = await self._state().reader.decode(key, data, False, None) if data is not None else None
        return None if found is None else found[0]

    async def invalidate_tags(self, *tags: str, mark_stale: bool = False) -> int:
        """Invalidate every entry stored with any of ``tags``: each tag gets a new stamp (one store write per tag,
        whatever the number of entries that carry it; ``_tags.py``), so every entry loaded before is refused from
        now on (``mark_stale``: served as stale instead, so the next read reloads and, if the loader fails, serves
        the old copy). Loads of those entries that are running now store nothing (they read their tags' stamps
        before their source). A tag the store cannot reach now is retried until it lands. Returns how many of
        ``tags`` had entries that could carry them (a stamp in the store)."""
        self._check_open()
        try:
            tag_keys = [self.keys.tag_key(tag) for tag in tags]
            reached = await self.backend.invalidate_tags(tag_keys, mark_stale=mark_stale)
        except StoreUnavailable as exc:
            for tag in tags:
                self._pending.add_tag(tag, mark_stale, self._longest_life)
            self._defer("invalidate tags", ", ".join(repr(tag) for tag in tags), exc)
            self._invalidated([], tags)
            return 0
        self._invalidated([], tags)
        # After the store changed: a process told earlier could reload the old value into its local tier.
        await self.forget_locally([], tags)
        self.metrics.invalidations += reached
        return reached

    async def clear(self) -> int:
        """Delete every key of this cache's namespace (SCAN, never KEYS); 0 when the store is unavailable (the
        clear is then retried until it lands)."""
        self._check_open()
        try:
            deleted = await self.backend.clear(self.namespace + ":")
        except StoreUnavailable as exc:
            self._pending.add_everything(self._longest_life)
            self._defer("clear", repr(self.namespace), exc)
            deleted = 0
        self._invalidated(None)
        await self.forget_locally(None)
        return deleted

    def _invalidated(self, keys: Sequence[str] | None, tags: Sequence[str] = ()) -> None:
        """An invalidation returned (or is pending): no caller from now on joins a load that began before it."""
        self._state().invalidated(keys, tags)
        if self.monitor is not None and keys:
            self.monitor.after_invalidate(keys)

    def _defer(self, operation: str, what: str, exc: StoreUnavailable) -> None:
        """The invalidation was recorded as pending: count it, say so, and retry it in the background."""
        self.metrics.invalidations_deferred += 1
        log.warning(
            "cachelayer: %s %s did not reach the store (%s); retrying in the background, and not serving what it "
            "covers from the store meanwhile",
            operation,
            what,
            exc,
        )
        self._pending.start_retrying(self._retry_delete, self._retry_tag, self._retry_clear)

    # A retry that lands detaches again the flights it covers: one that began before the invalidation (its caller
    # passed the pending check first) may have decided its value from the store before the retry landed.

    async def _retry_delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), _INVALIDATION_BATCH):
            await self.backend.delete(*keys[start : start + _INVALIDATION_BATCH])
        self._state().invalidated(keys)
        await self.forget_locally(list(keys))

    async def _retry_tag(self, tag: str, mark_stale: bool) -> None:
        await self.backend.invalidate_tags([self.keys.tag_key(tag)], mark_stale=mark_stale)
        self._state().invalidated([], [tag])
        await self.forget_locally([], [tag])

    async def _retry_clear(self) -> None:
        await self.backend.clear(self.namespace + ":")
        self._state().invalidated(None)
        await self.forget_locally(None)

    # -- the consistency monitor's view ---------------------------------------------------------------------------

    async def _monitor_read(self, key: str) -> bytes | None:
        if self._closed or (self._pending.active and self._pending.covers(key, ())):
            return None
        frame = await self._stored_frame(key)
        if frame is None or self._clock() >= frame.expires_at:
            return None
        return bytes(self.codec.serialized(frame))

    def _monitor_report(self, function: str, key: str, detail: str) -> None:
        self.metrics.consistency_violations += 1
        for hooks in (*GLOBAL_HOOKS.subscribers, *self._hooks):
            hooks.inconsistency(function, key, detail)

    async def forget_locally(self, keys: Sequence[str] | None, tags: Sequence[str] = ()) -> None:
        """Drop ``keys`` (None: all) and the entries carrying ``tags`` from this process's local tier and tell the
        other processes to."""
        if self.local is not None:
            await self.local.forget(keys, tags)

    def stats(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = self.metrics.snapshot()
        snapshot.update(self.backend.stats())
        pipeline = self._pipeline
        snapshot["loads_in_flight"] = 0 if pipeline is None else pipeline.in_flight()
        snapshot["background_tasks"] = 0 if pipeline is None else pipeline.background_tasks()
        if self.local is not None:
            snapshot.update(self.local.stats())
        snapshot.update(self._pending.stats())
        if self.monitor is not None:
            snapshot.update({f"monitor_{name}": value for name, value in self.monitor.stats().items()})
        return snapshot



def _as_backend(
    store: Backend | RedisClient, timeout: float | None, breaker: CircuitBreaker | None, owns: bool
) -> Backend:
    if isinstance(store, Backend):
        if timeout is not None or breaker is not None:
            raise ConfigurationError(
                "timeout= and breaker= belong to the backend: RedisBackend(client, timeout=, breaker=), or "
                "GuardedBackend(backend, Guard(timeout=, breaker=))"
            )
        return store
    # A redis-py client: wrapped by the one module that knows redis.
    return RedisBackend(store, timeout=0.1 if timeout is None else timeout, breaker=breaker, owns_client=owns)

