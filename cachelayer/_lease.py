"""Fill tickets and the cross-process load lease: one loader per key across every process that shares the store.

Every load holds a ticket on its key (:meth:`Backend.begin_fill`) and stores its value only through it
(:meth:`Backend.fill`), so an invalidation that revokes the key's tickets beats every load that began before it. An
exclusive ticket is the lease: one loader per key across processes. A loader takes a short lease
(``StampedePolicy.lease_ttl``, default 0.9 s) and renews it every third of that while its load runs. A holder that
goes silent (crashed, frozen, or cut off from the store by its breaker) stops renewing, so its lease lapses within
``lease_ttl`` and a waiter in another process takes over: nobody waits out the whole ``lease_wait`` for an orphaned
lease. Waiters are woken by a "value ready" message (:class:`ReadyNotifier`) and poll as a safety net; a loader
whose load failed says so on the same channel before it lets the lease go (``StampedePolicy.share_failures``), so
its waiters do not each take the lease and fail in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Generic, Literal, TypeVar

from ._backend import Backend, StoreUnavailable
from ._fetch import moment
from ._notify import LoadFailure, ReadyNotifier, failure_message, parse_failure
from ._stampede import StampedePolicy

__all__ = ["Lease", "LeaseCoordinator", "WaitEnd"]

T = TypeVar("T")

WaitEnd = Literal["released", "timeout", "unavailable"]
"""Why a wait ended without a value: the lease went (take it), time ran out, or the store went away."""


class Lease:
    """A held ticket (exclusive: the lease): renewed in the background until it is used by a fill or
    :meth:`release`d."""

    def __init__(
        self,
        coordinator: LeaseCoordinator[Any],
        key: str,
        token: str,
        ttl: float,
        exclusive: bool,
        stamps: Sequence[bytes] = (),
    ) -> None:
        self._coordinator = coordinator
        self.key = key
        self.token = token
        self.exclusive = exclusive
        self.stamps = stamps  # the tags' stamps when the load began (``_tags.py``): its fill must still find them
        self._ttl_ms = math.ceil(ttl * 1000)
        self._released = False
        self._renewer = asyncio.create_task(self._renew(ttl / 3), name=f"cachelayer-lease:{key}")

    async def _renew(self, every: float) -> None:
        backend = self._coordinator.backend
        # The flag, not only the cancellation, ends the loop: on Python 3.11 a client call can swallow a
        # cancellation (asyncio.wait_for inside redis-py), and a renewer must never outlive its lease's holder.
        while not self._released:
            await asyncio.sleep(every)
            if self._released:
                return
            try:
                if not await backend.renew_fill(self.key, self.token, self._ttl_ms):
                    return  # revoked or lapsed: the fill will be refused; nothing to defend
            except StoreUnavailable:
                continue  # keep trying: if the store stays away, the lease lapses and a waiter takes over

    async def ready(self) -> None:
        """Tell waiters in every process that the value is stored."""
        await self._coordinator.notifier.publish(_ready_channel(self.key))

    async def failed(self, error: BaseException) -> None:
        """Tell waiters in every process that this load failed (before the lease is released: a waiter woken by
        the release alone would take the lease and load)."""
        await self._coordinator.notifier.publish(_ready_channel(self.key), failure_message(error))

    def used(self) -> None:
        """The fill ran (taken or refused): the ticket is gone from the store, stop renewing it."""
        self._released = True
        self._renewer.cancel()

    async def release(self) -> None:
        if self._released:
            return
        self.used()
        with contextlib.suppress(StoreUnavailable):
            await self._coordinator.backend.end_fill(self.key, self.token)


class LeaseCoordinator(Generic[T]):
    """Acquires leases and waits for other processes' loads. ``fresh(data, sent)`` turns what a poll read into
    the waiter's result (a decoded fresh value) or None; ``sent``: the :func:`moment` the poll was sent at."""

    def __init__(self, backend: Backend, notifier: ReadyNotifier) -> None:
        self.backend = backend
        self.notifier = notifier

    async def acquire(
        self,
        key: str,
        policy: StampedePolicy,
        *,
        exclusive: bool = True,
        tag_keys: Sequence[str] = (),
        tag_ttl_ms: int = 0,
    ) -> Lease | None:
        """A ticket with a token of its own (per attempt: a token shared by two loads would let the later one's
        ticket validate the earlier one's fill); exclusive: the lease, or None when another load holds one. With
        ``tag_keys``, the tags' stamps too (kept ``tag_ttl_ms``), read beside the ticket: both are in hand before
        the loader reads its source, which is all their order must guarantee. Raises :class:`StoreUnavailable`."""
        token = os.urandom(16).hex()
        ttl_ms = math.ceil(policy.lease_ttl * 1000)
        backend = self.backend
        if not tag_keys:
            if await backend.begin_fill(key, token, ttl_ms, exclusive=exclusive):
                return Lease(self, key, token, policy.lease_ttl, exclusive)
            return None
        # A task, not gather(): a gather cancelled under its caller logs an exception nobody retrieves.
        stamping = asyncio.ensure_future(backend.tag_stamps(tag_keys, tag_ttl_ms))
        stamping.add_done_callback(_retrieved)
        try:
            began = await backend.begin_fill(key, token, ttl_ms, exclusive=exclusive)
        except BaseException:
            stamping.cancel()
            raise
        try:
            stamps = await stamping
        except StoreUnavailable:
            if began:
                with contextlib.suppress(StoreUnavailable):
                    await backend.end_fill(key, token)
            raise
        if began:
            return Lease(self, key, token, policy.lease_ttl, exclusive, stamps)
        return None

    async def wait(
        self, key: str, policy: StampedePolicy, deadline: float, fresh: Callable[[bytes, int], Awaitable[T | None]]
    ) -> T | WaitEnd | LoadFailure:
        """Wait (woken early by pub/sub) until the value is fresh, the lease is gone, the holder says its load
        failed (with ``policy.share_failures``), or ``deadline`` (the running loop's ``time()``) passes."""
        channel = _ready_channel(key)
        delays: Iterator[float] = policy.poll_delays()
        wake = await self.notifier.subscribe(channel) if policy.wake == "pubsub" else None
        failures = 0
        try:
            clock = asyncio.get_running_loop().time
            while (remaining := deadline - clock()) > 0:
                delay = min(next(delays), remaining)
                if wake is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(wake), delay)
                    if wake.done() and policy.share_failures and (failure := parse_failure(wake.result())):
                        return failure
                sent = moment()
                try:
                    data, held = await self.backend.poll(key)
                except StoreUnavailable:
                    # One failed poll (a pooled connection that died with a restart) is no reason to load
                    # beside the holder; two in a row are.
                    failures += 1
                    if failures >= 2:
                        return "unavailable"
                    continue
                failures = 0
                found = await fresh(data, sent) if data is not None else None
                if found is not None:
                    return found
                # A failure heard while this poll ran: the holder says so before it releases the lease.
                if (
                    wake is not None
                    and wake.done()
                    and policy.share_failures
                    and (failure := parse_failure(wake.result()))
                ):
                    return failure
                if not held:
                    return "released"
                if wake is not None and wake.done():  # woken, but not for a fresh value: wait for the next one
                    await self.notifier.unsubscribe(channel, wake)
                    wake = await self.notifier.subscribe(channel)
            return "timeout"
        finally:
            await self.notifier.unsubscribe(channel, wake)


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark a side task's outcome as seen: its caller may have gone (cancelled, or failed first)."""
    if not task.cancelled():
        task.exception()


def _ready_channel(key: str) -> str:
    return key + ":lease:ready"
