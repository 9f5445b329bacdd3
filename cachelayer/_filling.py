"""Load and store: the part of the fetch pipeline that runs the loader and writes what it returned.

A loaded value is stored only through the load's fill ticket (:class:`Lease`): when an invalidation revoked the
ticket while the loader ran, nothing is stored (the loader may have read the row before the write the
invalidation announced); the caller still gets the value it loaded, and the refusal is counted
(``revoked_fills``) and told to the hooks. A load without a ticket (the store refused one) stores nothing.

A value that cannot be stored (an unsupported type, too large) is returned to the caller uncached, counted and
logged once per function and type; an explicit ``Cache.set`` of one raises instead. A write the store does not
take fails open: the caller gets the value, the entry says ``fail_open``.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

from ._backend import Backend, StoreUnavailable
from ._codec import Codec
from ._entry import CacheEntry, Outcome
from ._errors import SerializationError, ValueTooLargeError
from ._fetch import Fetch
from ._hooks import FetchHooks
from ._keys import KeyLayout
from ._lease import Lease
from ._local import LocalCache
from ._metrics import CacheMetrics
from ._monitor import ConsistencyMonitor
from ._policy import ResolvedPolicy
from ._stampede import jittered
from ._typed import ValueType, describe_unstorable

__all__ = ["Filler", "UnconfirmedEntry", "stamp_ttl_ms"]

log = logging.getLogger("cachelayer")

_MAX_FAILING_FUNCTIONS: Final = 10_000

T = TypeVar("T")

TAG_STAMP_SLACK_MS: Final = 60_000
"""How much longer a tag's stamp is kept than the longest value that can carry it: a load reads its stamps before
its value exists; the slack covers the load's own duration. A stamp that goes early costs misses, never a wrong
answer (a missing stamp means "gone")."""


def stamp_ttl_ms(policy: ResolvedPolicy) -> int:
    """How long a load's tag stamps must stay: the longest its value can live (jitter stays under 2 x the TTL;
    see :meth:`Filler.encode`), from before the value exists."""
    longest = 2 * max(policy.ttl, policy.none_ttl) + policy.stale_ttl
    return math.ceil(longest * 1000) + TAG_STAMP_SLACK_MS


class UnconfirmedEntry(CacheEntry[T]):
    """The entry of a load whose value the store did not take through its ticket: refused (an invalidation revoked
    the ticket, or it lapsed; outcome ``miss``), or not known (no ticket, or the fill failed: the store is
    unavailable; outcome ``fail_open``). Nothing proves that no invalidation came while it loaded: its value goes
    to the caller that started the load, and a caller that joined it loads again."""

    __slots__ = ()


# One WARNING per function and type of value that cannot be stored, for the life of the process: enough to be
# seen, never a flood. Bounded by the functions a program has.
_WARNED_UNSTORABLE: set[tuple[str, type]] = set()


class LoaderFailures:
    """How the loader failures the library swallows (a stale value served instead, a background refresh) are
    logged: one WARNING line when a function's loads start failing (the exception's
    type and message; its traceback at DEBUG), DEBUG lines while they go on, one WARNING line when a load of it
    succeeds again. A database outage under load is two lines, not a traceback per request (an audit counted 462
    of them in two 10-second MySQL faults). Keyed by function (a bounded set; never by key)."""

    __slots__ = ("_streaks",)

    def __init__(self) -> None:
        self._streaks: dict[str, int] = {}

    def failed(self, function: str, key: str, error: BaseException, what: str) -> None:
        if function not in self._streaks and len(self._streaks) >= _MAX_FAILING_FUNCTIONS:
            self._streaks.clear()  # a program naming fetches after their keys: bounded, at worst a line more
        count = self._streaks[function] = self._streaks.get(function, 0) + 1
        if count == 1:
            log.warning(
                "cachelayer: loader of %s failed (%s: %s) for %s; %s. Later failures of it are logged at DEBUG "
                "until a load succeeds",
                function,
                type(error).__name__,
                error,
                key,
                what,
            )
            log.debug("cachelayer: loader of %s failed for %s", function, key, exc_info=error)
        else:
            log.debug("cachelayer: loader of %s failed again (%d) for %s; %s", function, count, key, what,
                      exc_info=error)  # fmt: skip

    def succeeded(self, function: str) -> None:
        if not self._streaks:  # every load of a healthy program: one truth test
            return
        count = self._streaks.pop(function, 0)
        if count:
            log.warning("cachelayer: loader of %s succeeded again after %d failed loads", function, count)


class Filler:
    """Runs loaders and stores their values, for one cache."""

    def __init__(
        self,
        codec: Codec,
        backend: Backend,
        keys: KeyLayout,
        local: LocalCache | None,
        metrics: CacheMetrics,
        *,
        clock: Callable[[], float],
        rand: Callable[[], float],
        jitter: float,
        monitor: ConsistencyMonitor | None = None,
    ) -> None:
        self.codec = codec
        self.backend = backend
        self.keys = keys
        self.local = local
        self.metrics = metrics
        self._clock = clock
        self._rand = rand
        self._jitter = jitter
        self.monitor = monitor
        self.failures = LoaderFailures()

    async def load_and_store(
        self, fetch: Fetch[Any], stale: CacheEntry[Any] | None, ticket: Lease | None
    ) -> CacheEntry[Any]:
        """Run the loader; store its value through ``ticket`` (None: the store is unavailable, store nothing) and
        return it. When the loader raises, a stale copy is served if the policy allows (stale-if-error), else the
        exception propagates."""
        self.metrics.loads += 1
        hooks = fetch.hooks
        if hooks is not None:
            hooks.load_started()
        started = time.perf_counter()
        try:
            value = await fetch.loader()
        except Exception as exc:
            elapsed = time.perf_counter() - started
            self.metrics.load_errors += 1
            self.metrics.load_seconds += elapsed
            if hooks is not None:
                hooks.load_ended(elapsed, exc)
            stampede = fetch.policy.stampede
            if ticket is not None and ticket.exclusive and stampede.share_failures and stampede.wake == "pubsub":
                await ticket.failed(exc)
            if stale is not None and stampede.stale_if_error:
                self.metrics.stale_served += 1
                self.failures.failed(fetch.function, fetch.key, exc, "serving the stale value")
                return stale
            raise  # the caller's to log: the library logs only the failures it swallows
        elapsed = time.perf_counter() - started
        self.failures.succeeded(fetch.function)
        self.metrics.load_seconds += elapsed
        if hooks is not None:
            hooks.load_ended(elapsed, None)
        if ticket is None:
            self.metrics.load_unstored += 1
            dumps = self.codec.serializer.dumps if fetch.value_type is None else fetch.value_type.dumps
            return UnconfirmedEntry(self.codec, None, Outcome.FAIL_OPEN, value=value, dumps=dumps)
        entry = await self.store(fetch.key, value, fetch.policy, fetch.value_type, elapsed, hooks=hooks, ticket=ticket)
        if self.monitor is not None and entry.outcome is Outcome.MISS and not isinstance(entry, UnconfirmedEntry):
            self.monitor.after_fill(fetch.key, fetch.function, functools.partial(_reload, fetch, self.codec))
        return entry

    def encode(
        self,
        value: Any,
        policy: ResolvedPolicy,
        recompute_time: float,
        value_type: ValueType[Any] | None,
        stamps: Sequence[bytes] = (),
    ) -> tuple[bytes, int, int]:
        """The frame (carrying ``policy.tags`` with ``stamps``), its physical TTL in ms, and the serialized size."""
        ttl = jittered(policy.none_ttl if value is None else policy.ttl, self._jitter, self._rand())
        serialized = self.codec.serializer.dumps(value) if value_type is None else value_type.dumps(value)
        data = self.codec.encode_serialized(
            serialized,
            expires_at=self._clock() + ttl,
            recompute_time=recompute_time,
            tags=tuple(zip(policy.tags, stamps, strict=True)) if policy.tags else (),
        )
        return data, max(1, math.ceil((ttl + policy.stale_ttl) * 1000)), len(serialized)

    async def store(
        self,
        key: str,
        value: Any,
        policy: ResolvedPolicy,
        value_type: ValueType[Any] | None,
        recompute_time: float,
        *,
        hooks: FetchHooks | None = None,
        strict: bool = False,
        ticket: Lease | None = None,
    ) -> CacheEntry[Any]:
        """Write ``value``: through ``ticket`` (a load's fill), or unconditionally (an explicit ``Cache.set``,
        which revokes the key's tickets); ``strict``: a value that cannot be stored raises instead of being
        returned uncached."""
        tag_keys = [self.keys.tag_key(tag) for tag in policy.tags]
        stamps: Sequence[bytes] = ()
        if tag_keys:
            if ticket is not None:
                stamps = ticket.stamps
            else:
                try:
                    stamps = await self.backend.tag_stamps(tag_keys, stamp_ttl_ms(policy))
                except StoreUnavailable as exc:
                    if hooks is not None:
                        hooks.failed_open("write", str(exc))
                    return self.unstored(value, value_type, Outcome.FAIL_OPEN)
        try:
            data, ttl_ms, raw_size = self.encode(value, policy, recompute_time, value_type, stamps)
        except (SerializationError, ValueTooLargeError) as exc:
            if ticket is not None:
                await ticket.release()
            if strict:
                raise
            self._unstorable(key, value, value_type, exc)
            return self.unstored(value, value_type, Outcome.MISS)
        local = self.local
        epoch = local.epoch if local is not None else 0
        stored = fail_open = False
        try:
            if ticket is None:
                await self.backend.set(key, data, ttl_ms)
                stored = True
            else:
                ticket.used()
                stored = await self.backend.fill(key, ticket.token, data, ttl_ms, tag_keys, stamps)
        except StoreUnavailable as exc:
            fail_open = True
            if hooks is not None:
                hooks.failed_open("write", str(exc))
        frame = self.codec.read_frame(data)
        if not stored and not fail_open:
            self.metrics.revoked_fills += 1
            if hooks is not None:
                hooks.fill_revoked()
            return UnconfirmedEntry(self.codec, frame, Outcome.MISS, value=value)
        if stored and hooks is not None:
            hooks.stored(len(data))
        self.metrics.count_write(raw_size, len(data))
        if local is not None:
            # Not into L1 when an invalidation reached this process meanwhile: it may have removed our value.
            if policy.local and stored and local.epoch == epoch:
                local.put(key, data, frame)
            else:
                local.discard([key])
            await local.broadcast([key])  # the other processes' copies (the broadcast skips its sender)
        if fail_open and ticket is not None:
            # The fill's fate is unknown (taken, refused, or never arrived): a joiner cannot rely on it either.
            return UnconfirmedEntry(self.codec, frame, Outcome.FAIL_OPEN, value=value)
        outcome = Outcome.FAIL_OPEN if fail_open else Outcome.MISS
        return CacheEntry(self.codec, frame, outcome, value=value)

    def unstored(self, value: Any, value_type: ValueType[Any] | None, outcome: Outcome) -> CacheEntry[Any]:
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
        return self.unstored(await loader(), value_type, Outcome.BYPASS)


async def _reload(fetch: Fetch[Any], codec: Codec) -> bytes:
    """The consistency monitor's second opinion: the loader's value now, serialized as a fill would store it."""
    value = await fetch.loader()
    return codec.serializer.dumps(value) if fetch.value_type is None else fetch.value_type.dumps(value)
