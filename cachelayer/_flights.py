"""Single flight across processes: the load lease, waiting for another process's load, and the lease timeout.

In one process concurrent callers of a key already share one flight (``SingleFlight``, in the pipeline). Across
processes the flight's leader takes the key's lease (an exclusive fill ticket) before it loads; a process that
finds the lease held waits (woken by pub/sub, polling as a safety net) for the value, and takes over if the holder
goes silent. Every load holds a ticket, the lease or a shared one (``lease=False``, a lease wait that ran out), so
an invalidation revokes it; a load that could not get one (the store is unavailable) stores nothing.

A value a flight finds in the store (re-read under its lease, or polled while it waits) is a
:class:`FoundEntry` that says when its read was sent: a caller that joined the flight after that reads again (the
store may have answered before an invalidation that ended before the caller began, while the reply travelled).

A waiter's wait ends at ``lease_wait`` or at the caller's deadline (``_deadline.py``), whichever comes first; a
deadline that runs out gives the stale value or :class:`DeadlineExceededError`, never a load of its own (no time
is left for one). A holder whose load failed tells its waiters (``share_failures``): they answer the stale value
or :class:`LoadFailedError` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._backend import Backend, StoreUnavailable
from ._deadline import effective_deadline
from ._entry import CacheEntry, Outcome
from ._errors import DeadlineExceededError, LeaseTimeoutError, LoadFailedError
from ._fetch import Fetch, moment
from ._filling import Filler, stamp_ttl_ms
from ._keys import KeyLayout
from ._lease import Lease, LeaseCoordinator
from ._metrics import CacheMetrics
from ._notify import LoadFailure, ReadyNotifier
from ._reading import Reader

__all__ = ["Flights", "FoundEntry"]

T = TypeVar("T")


class FoundEntry(CacheEntry[T]):
    """A value a flight found in the store rather than loaded, read by a command sent at ``read_sent`` (a
    :func:`moment`). Its flight's callers that joined after that cannot tell it from a value older than their own
    start: they read again (``Pipeline._join``)."""

    __slots__ = ("read_sent",)

    read_sent: int


class Flights:
    """Loads under the cross-process lease, for one cache in one event loop."""

    def __init__(
        self,
        backend: Backend,
        reader: Reader,
        filler: Filler,
        keys: KeyLayout,
        metrics: CacheMetrics,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.backend = backend
        self.keys = keys
        self.reader = reader
        self.filler = filler
        self.metrics = metrics
        self._clock = clock
        self.notifier = ReadyNotifier(backend)
        self.leases: LeaseCoordinator[CacheEntry[Any]] = LeaseCoordinator(backend, self.notifier)

    async def aclose(self) -> None:
        await self.notifier.aclose()

    async def load(self, fetch: Fetch[Any], stale: CacheEntry[Any] | None) -> CacheEntry[Any]:
        """Load ``fetch`` once across processes: under the lease, or by waiting for the holder's value."""
        # The lease is tried even when the read just failed: one slow read must not open the way to the
        # database for every process. When the store is really gone, the open breaker makes this attempt free.
        stampede = fetch.policy.stampede
        if not stampede.lease:
            return await self.load_with_ticket(fetch, stale)
        # The loop's clock (time.monotonic() on asyncio's loops): a loop that keeps virtual time runs it too.
        deadline = asyncio.get_running_loop().time() + stampede.lease_wait
        callers = effective_deadline(fetch.deadline)
        by_caller = callers is not None and callers < deadline
        if by_caller:
            assert callers is not None
            deadline = callers
        waited_since: float | None = None
        hooks = fetch.hooks

        async def fresh(data: bytes, sent: int) -> CacheEntry[Any] | None:
            found = await self.reader.decode(fetch.key, data, fetch.parse, fetch.value_type)
            if found is None or self._clock() >= found[0].expires_at:
                return None
            entry = self.reader.entry(found[0], Outcome.MISS, found[1], fetch, FoundEntry)
            assert isinstance(entry, FoundEntry)
            entry.read_sent = sent
            return entry

        try:
            while True:
                try:
                    lease = await self.ticket(fetch, exclusive=True)
                except StoreUnavailable as exc:
                    if hooks is not None:
                        hooks.failed_open("lease", str(exc))
                    return await self.filler.load_and_store(fetch, stale, None)
                if lease is not None:
                    self._end_wait(waited_since, fetch)
                    waited_since = None
                    return await self.load_under_lease(lease, fetch, stale, fresh)
                if waited_since is None:
                    waited_since = time.monotonic()
                    self.metrics.lease_waits += 1
                # Another process is loading: wait for its value until it lands, the lease goes, or time runs out.
                result = await self.leases.wait(fetch.key, stampede, deadline, fresh)
                if isinstance(result, CacheEntry):
                    return result
                if isinstance(result, LoadFailure):
                    return self._failed_elsewhere(fetch, stale, result)
                if result == "unavailable":
                    if hooks is not None:
                        hooks.failed_open("lease", "the store stopped answering while waiting for another load")
                    return await self.filler.load_and_store(fetch, stale, None)
                if result == "timeout":
                    if by_caller:
                        return self._deadline_passed(fetch, stale, waited_since)
                    return await self._lease_timeout(fetch, stale)
                # "released": the holder gave up, crashed or went silent; try to take the lease ourselves
        finally:
            self._end_wait(waited_since, fetch)

    def _failed_elsewhere(
        self, fetch: Fetch[Any], stale: CacheEntry[Any] | None, failure: LoadFailure
    ) -> CacheEntry[Any]:
        if stale is not None and fetch.policy.stampede.stale_if_error:
            self.metrics.stale_served += 1
            return stale
        raise LoadFailedError(fetch.key, failure.error_type, failure.reason)

    def _deadline_passed(
        self, fetch: Fetch[Any], stale: CacheEntry[Any] | None, waited_since: float | None
    ) -> CacheEntry[Any]:
        self.metrics.lease_timeouts += 1
        if stale is not None:
            self.metrics.stale_served += 1
            return stale
        waited = 0.0 if waited_since is None else time.monotonic() - waited_since
        raise DeadlineExceededError(
            f"the caller's deadline ran out after {waited:.3f}s of waiting for another process's load of "
            f"{fetch.key} (its time_budget, or fetch(deadline=))"
        )

    async def _lease_timeout(self, fetch: Fetch[Any], stale: CacheEntry[Any] | None) -> CacheEntry[Any]:
        self.metrics.lease_timeouts += 1
        if stale is not None:
            self.metrics.stale_served += 1
            return stale
        stampede = fetch.policy.stampede
        if stampede.on_lease_timeout == "raise":
            raise LeaseTimeoutError(f"waited {stampede.lease_wait}s for the load of {fetch.key}")
        return await self.load_with_ticket(fetch, stale)

    async def ticket(self, fetch: Fetch[Any], *, exclusive: bool) -> Lease | None:
        policy = fetch.policy
        tag_keys = [self.keys.tag_key(tag) for tag in policy.tags]
        tag_ttl_ms = stamp_ttl_ms(policy) if tag_keys else 0
        return await self.leases.acquire(
            fetch.key, policy.stampede, exclusive=exclusive, tag_keys=tag_keys, tag_ttl_ms=tag_ttl_ms
        )

    async def load_with_ticket(self, fetch: Fetch[Any], stale: CacheEntry[Any] | None) -> CacheEntry[Any]:
        """Load beside any other load of the key (a shared ticket: no waiting), storing only if no invalidation
        came in between."""
        try:
            ticket = await self.ticket(fetch, exclusive=False)
        except StoreUnavailable as exc:
            if fetch.hooks is not None:
                fetch.hooks.failed_open("lease", str(exc))
            ticket = None
        try:
            return await self.filler.load_and_store(fetch, stale, ticket)
        finally:
            if ticket is not None:
                await ticket.release()

    def _end_wait(self, waited_since: float | None, fetch: Fetch[Any]) -> None:
        if waited_since is not None:
            waited = time.monotonic() - waited_since
            self.metrics.lease_wait_seconds += waited
            if fetch.hooks is not None:
                fetch.hooks.lease_waited(waited)

    async def load_under_lease(
        self,
        lease: Lease,
        fetch: Fetch[Any],
        stale: CacheEntry[Any] | None,
        fresh: Callable[[bytes, int], Awaitable[CacheEntry[Any] | None]] | None,
    ) -> CacheEntry[Any]:
        self.metrics.lease_acquired += 1
        try:
            if fresh is not None:
                # The value may have landed between our miss and our lease (another process just released it).
                with contextlib.suppress(StoreUnavailable):
                    sent = moment()
                    data = await self.backend.get(fetch.key)
                    if data is not None and (entry := await fresh(data, sent)) is not None:
                        if fetch.settled is not None:
                            fetch.settled()  # decided: no new joiner while the lease is released
                        return entry
            entry = await self.filler.load_and_store(fetch, stale, lease)
            if fetch.policy.stampede.wake == "pubsub" and entry.outcome is Outcome.MISS:
                await lease.ready()  # a refused fill too: the waiters find the lease gone and load themselves
            return entry
        finally:
            await lease.release()
