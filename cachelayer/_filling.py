"""Load and store: the part of the fetch pipeline that runs the loader and writes what it returned.

A value that cannot be stored (an unsupported type, too large) is returned to the caller uncached, counted and
logged once per function and type; an explicit ``Cache.set`` of one raises instead. A write the store does not
take fails open: the caller gets the value, the entry says ``fail_open``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._backend import Backend, StoreUnavailable
from ._codec import Codec
from ._entry import CacheEntry, Outcome
from ._errors import SerializationError, ValueTooLargeError
from ._fetch import Fetch
from ._hooks import FetchHooks
from ._keys import KeyLayout
from ._local import LocalCache
from ._metrics import CacheMetrics
from ._policy import ResolvedPolicy
from ._stampede import jittered
from ._typed import ValueType, describe_unstorable

__all__ = ["Filler"]

log = logging.getLogger("cachelayer")

T = TypeVar("T")

# One WARNING per function and type of value that cannot be stored, for the life of the process: enough to be
# seen, never a flood. Bounded by the functions a program has.
_WARNED_UNSTORABLE: set[tuple[str, type]] = set()


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
    ) -> None:
        self.codec = codec
        self.backend = backend
        self.keys = keys
        self.local = local
        self.metrics = metrics
        self._clock = clock
        self._rand = rand
        self._jitter = jitter

    async def load_and_store(
        self, fetch: Fetch[Any], stale: CacheEntry[Any] | None, *, fail_open: bool = False
    ) -> CacheEntry[Any]:
        """Run the loader; store and return its value. When it raises, a stale copy is served if the policy
        allows (stale-if-error), else the exception propagates."""
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
            if stale is not None and fetch.policy.stampede.stale_if_error:
                self.metrics.stale_served += 1
                log.warning("cachelayer: loader for %s failed; serving the stale value", fetch.key, exc_info=True)
                return stale
            raise
        elapsed = time.perf_counter() - started
        self.metrics.load_seconds += elapsed
        if hooks is not None:
            hooks.load_ended(elapsed, None)
        return await self.store(
            fetch.key, value, fetch.policy, fetch.value_type, elapsed, hooks=hooks, fail_open=fail_open
        )

    def encode(
        self, value: Any, policy: ResolvedPolicy, recompute_time: float, value_type: ValueType[Any] | None
    ) -> tuple[bytes, int, int]:
        """The frame, its physical TTL in ms, and the serialized size."""
        ttl = jittered(policy.none_ttl if value is None else policy.ttl, self._jitter, self._rand())
        serialized = self.codec.serializer.dumps(value) if value_type is None else value_type.dumps(value)
        data = self.codec.encode_serialized(serialized, expires_at=self._clock() + ttl, recompute_time=recompute_time)
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
        fail_open: bool = False,
    ) -> CacheEntry[Any]:
        """Write ``value``; ``strict``: a value that cannot be stored raises instead of being returned uncached."""
        try:
            data, ttl_ms, raw_size = self.encode(value, policy, recompute_time, value_type)
        except (SerializationError, ValueTooLargeError) as exc:
            if strict:
                raise
            self._unstorable(key, value, value_type, exc)
            return self.unstored(value, value_type, Outcome.MISS)
        tag_keys = [self.keys.tag_key(tag) for tag in policy.tags]
        try:
            await self.backend.set(key, data, ttl_ms, tag_keys, math.ceil(ttl_ms / 1000) + 1)
        except StoreUnavailable as exc:
            fail_open = True
            if hooks is not None:
                hooks.failed_open("write", str(exc))
        else:
            if hooks is not None:
                hooks.stored(len(data))
        self.metrics.count_write(raw_size, len(data))
        frame = self.codec.read_frame(data)
        local = self.local
        if local is not None:
            await local.forget([key])  # this process's copy too: the broadcast skips its sender
            if policy.local and not fail_open:
                local.put(key, data, frame)
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
