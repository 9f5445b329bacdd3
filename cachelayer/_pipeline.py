"""The fetch pipeline of one cache in one event loop: a :class:`Fetch` travels down, nothing calls back up.

    local tier hit? -> join this process's flight? -> read + decode (Reader) -> fresh: hit (maybe an early
    refresh) | stale and revalidating: serve it, refresh in the background (Refresher) | else: miss ->
    single flight (SingleFlight) -> lease across processes (Flights) -> load + store (Filler)

Each part is given what it needs (codec, backend, clock, random source, local tier, counters), never the cache.
Every store problem arrives as :class:`StoreUnavailable` and becomes fail-open behaviour here; only the loader's
own errors and mistakes (``CacheError`` subclasses other than ``StoreUnavailable``) reach a caller.

Everything here holds futures and tasks, which belong to one event loop: the cache builds a new pipeline when it
finds itself in another loop (a second ``asyncio.run()``, a test's own loop).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

from ._backend import Backend, StoreUnavailable
from ._coalescing import NOT_TAKEN, HandedOff
from ._codec import INVALIDATED_AT, Codec, Frame
from ._deadline import effective_deadline
from ._entry import CacheEntry, Outcome
from ._errors import DeadlineExceededError
from ._fetch import Fetch, moment
from ._filling import Filler, UnconfirmedEntry
from ._flights import Flights, FoundEntry
from ._hooks import FetchHooks, FetchOutcome, UntilEnded
from ._keys import KeyLayout
from ._local import LocalCache
from ._metrics import CacheMetrics
from ._monitor import ConsistencyMonitor
from ._reading import Reader
from ._refreshing import Refresher, settle
from ._stampede import XFETCH_HORIZON, SingleFlight, xfetch_due

__all__ = ["Pipeline"]


class Pipeline:
    """Reads, loads and stores for one cache in one event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        codec: Codec,
        backend: Backend,
        keys: KeyLayout,
        local: LocalCache | None,
        metrics: CacheMetrics,
        clock: Callable[[], float],
        rand: Callable[[], float],
        jitter: float,
        shared_values: bool,
        monitor: ConsistencyMonitor | None = None,
    ) -> None:
        self.loop = loop
        self._codec = codec
        self.local = local
        self.metrics = metrics
        self._clock = clock
        self._rand = rand
        self.reader = Reader(
            codec, backend, local, metrics, keys=keys, shared_values=shared_values, hand_off=self._hand_off
        )
        self.filler = Filler(
            codec, backend, keys, local, metrics, clock=clock, rand=rand, jitter=jitter, monitor=monitor
        )
        self.flights = Flights(backend, self.reader, self.filler, keys, metrics, clock=clock)
        self.loads: SingleFlight[CacheEntry[Any]] = SingleFlight()
        self.refresher = Refresher(codec, backend, self.flights, self.loads, metrics, self.filler.failures)
        if local is not None:
            local.ensure_listening()  # once per loop: the listener reconnects by itself until closed

    def in_flight(self) -> int:
        return len(self.loads)

    def background_tasks(self) -> int:
        return len(self.refresher.background)

    async def aclose(self, grace: float) -> None:
        """Let the loads and refreshes that run finish (their callers get their values, their leases are released)
        for up to ``grace`` seconds each, then cancel what still runs."""
        await settle(set(self.loads.tasks()), grace)
        await self.refresher.aclose(grace)
        await self.flights.aclose()

    # -- the fetch -------------------------------------------------------------------------------------------

    async def _with_hooks(
        self,
        fetch: Fetch[Any],
        hooks: FetchHooks,
        run: Callable[[Fetch[Any]], Coroutine[Any, Any, CacheEntry[Any]]],
    ) -> CacheEntry[Any]:
        """``run(fetch)`` told to ``hooks``, for the ways in other than :meth:`fetch` (refresh, unstored, bypass)."""
        try:
            entry = await run(fetch)
        except asyncio.CancelledError as exc:
            hooks.ended("cancelled", None, exc)
            raise
        except BaseException as exc:
            hooks.ended("error", None, exc)
            raise
        hooks.ended(fetch.outcome(entry.outcome), fetch.tier, None)
        return entry

    def invalidated(self, keys: Sequence[str] | None, tags: Sequence[str] = ()) -> None:
        """This process invalidated ``keys`` (None: everything) or ``tags``: a caller that starts from now on must
        not join a load that began before (its fill is revoked on the store; its value may be older)."""
        if keys is None:
            self.loads.detach_all()
            return
        for key in keys:
            self.loads.detach(key)
        if tags:
            self.loads.detach_labelled(set(tags))

    async def fetch(self, fetch: Fetch[Any]) -> CacheEntry[Any]:
        # With hooks, this frame is also the one that tells them how the fetch ended (``_heard``, at every return;
        # the except clauses below): a wrapper coroutine would be one frame more, and every resumption of a
        # waiting caller (each Redis reply) passes through each frame of its chain.
        try:
            policy = fetch.policy
            epoch = 0
            if policy.local and self.local is not None:
                local = self.local_entry(fetch, None)  # this fetch's hooks, if any, were started by its caller
                if local is not None:
                    return local
                epoch = self.local.epoch
            key = fetch.key
            if self.loads.running(key):
                # This process is loading the key right now: its value is the freshest there will be. Joining it
                # skips the read (10,000 callers of a cold key pay for one GET, not one wait per caller for it).
                self.metrics.misses += 1
                return self._heard(fetch, await self._join(fetch))
            try:
                read = await self.reader.read(fetch)
            except StoreUnavailable as exc:
                read = None, None
                if fetch.hooks is not None:
                    fetch.hooks.failed_open("read", str(exc))
            if isinstance(read, HandedOff):  # the read found nothing and this caller already has the load's outcome
                entry = self._handed_off(fetch, read)
                if entry is None:
                    return self._heard(fetch, await self.fetch(fetch))
                return self._heard(fetch, entry)
            data, found = read
            stale: CacheEntry[Any] | None = None
            if found is not None:
                frame, decoded = found
                now = self._clock()
                if now < frame.expires_at:
                    # Not into L1 when an invalidation reached this process since the read began: the reply may
                    # predate it.
                    if policy.local and self.local is not None and self.local.epoch == epoch:
                        assert data is not None
                        self.local.put(key, data, frame, None if fetch.parse else decoded)
                    fetch.tier = "store"
                    return self._hit(fetch, frame, decoded, now)
                if policy.stampede.stale_while_revalidate and frame.expires_at != INVALIDATED_AT:
                    self.metrics.stale_served += 1
                    self.refresher.start(fetch, frame, early=False)
                    return self._heard(fetch, self.reader.entry(frame, Outcome.STALE, decoded, fetch))
                stale = self.reader.entry(frame, Outcome.STALE, decoded, fetch)
            self.metrics.misses += 1
            if not policy.stampede.single_flight:
                return self._heard(fetch, await self.flights.load(fetch, stale))
            if self.loads.running(key):  # another caller's flight started while we read
                return self._heard(fetch, await self._join(fetch))
            hooks = fetch.hooks
            # The flight may outlive this caller (others wait for it, or this caller is cancelled): it carries
            # hooks that go silent once this fetch has ended, so ``ended`` is always its last event.
            carried = fetch.carried = None if hooks is None else UntilEnded(hooks)
            self.loads.start(
                key, lambda: self.flights.load(self._closing_when_loaded(fetch, carried), stale), hooks, policy.tags
            )
            return self._heard(fetch, await self.loads.wait(key))
        except asyncio.CancelledError as exc:
            self._heard_failure(fetch, "cancelled", exc)
            raise
        except BaseException as exc:
            self._heard_failure(fetch, "error", exc)
            raise

    @staticmethod
    def _heard(fetch: Fetch[Any], entry: CacheEntry[Any]) -> CacheEntry[Any]:
        """``entry``, once the fetch's hooks (if any) were told it ended. Once: a caller that fetches again
        (``_join``'s retry) goes through :meth:`fetch` twice."""
        hooks = fetch.hooks
        if hooks is not None:
            fetch.hooks = None
            if fetch.carried is not None:
                fetch.carried.close()
            hooks.ended(fetch.outcome(entry.outcome), fetch.tier, None)
        return entry

    @staticmethod
    def _heard_failure(fetch: Fetch[Any], outcome: FetchOutcome, exc: BaseException) -> None:
        hooks = fetch.hooks
        if hooks is not None:
            fetch.hooks = None
            if fetch.carried is not None:
                fetch.carried.close()
            hooks.ended(outcome, None, exc)

    def _closing_when_loaded(self, fetch: Fetch[Any], hooks: UntilEnded | None) -> Fetch[Any]:
        """``fetch`` whose flight stops taking callers once its value is decided (its loader returned, or the
        value was found in the store under the lease): a caller arriving after that reads the store itself (a value
        decided before an invalidation could otherwise reach a caller that started after it). The flight hears
        ``hooks``."""
        loader, loads, key = fetch.loader, self.loads, fetch.key

        def settled() -> None:
            loads.detach(key, asyncio.current_task())

        async def load() -> Any:
            try:
                return await loader()
            finally:
                settled()

        return dataclasses.replace(fetch, loader=load, settled=settled, hooks=hooks, carried=None)

    async def _join(self, fetch: Fetch[Any]) -> CacheEntry[Any]:
        fetch.joined = True
        joined_at = moment()
        if fetch.hooks is not None:
            leader = self.loads.leader(fetch.key)
            fetch.hooks.joined(leader if isinstance(leader, FetchHooks) else None)
        deadline = effective_deadline(fetch.deadline)
        if deadline is None:
            entry = await self.loads.wait(fetch.key)
        else:
            entry = await self._wait_for_flight(fetch, deadline)
        if self._fetch_again(fetch, entry, joined_at):
            return await self.fetch(fetch)
        return entry

    @staticmethod
    def _fetch_again(fetch: Fetch[Any], entry: CacheEntry[Any], joined_at: int) -> bool:
        """Whether a caller that joined a load at ``joined_at`` and got ``entry`` must fetch again (then marked
        as retrying)."""
        if not fetch.retried and (
            isinstance(entry, UnconfirmedEntry) or (isinstance(entry, FoundEntry) and entry.read_sent < joined_at)
        ):
            # The load we joined may have begun before an invalidation that reached the store while it ran (its
            # fill was refused, or its fate is unknown), or its value was read from the store by a command sent
            # before we joined (answered, perhaps, before an invalidation that ended before we began), and we
            # cannot tell whether we came before that: fetch again, in a flight that begins after us (once: what
            # that one reads or loads comes after we started).
            fetch.retried = True
            fetch.joined = False
            return True
        return False

    def _hand_off(self, key: str, waiters: list[asyncio.Future[Any]]) -> object:
        """The coalescer's ``hand_off``: callers whose shared read of ``key`` found nothing wait for the load of it
        that runs now, as if each had joined it (it began after every one of them: a caller that finds a load
        running joins it instead of reading), instead of waking to join it and waiting again."""
        leader = self.loads.leader(key)
        if not self.loads.adopt(key, waiters):
            return NOT_TAKEN
        self.metrics.misses += len(waiters)  # counted when they join, as callers that join by themselves are
        return leader, moment()

    def _handed_off(self, fetch: Fetch[Any], handed: HandedOff) -> CacheEntry[Any] | None:
        """The outcome of the load a caller was handed to (:meth:`_hand_off`), as :meth:`_join` would give it;
        None: fetch again."""
        leader, joined_at = cast(tuple[object, int], handed.taker)
        fetch.joined = True
        if fetch.hooks is not None:
            fetch.hooks.joined(leader if isinstance(leader, FetchHooks) else None)
        if handed.error is not None:
            raise handed.error
        entry: CacheEntry[Any] = handed.result
        return None if self._fetch_again(fetch, entry, joined_at) else entry

    async def _wait_for_flight(self, fetch: Fetch[Any], deadline: float) -> CacheEntry[Any]:
        # This caller's own future: cancelling it ends only this wait, the flight goes on for the others.
        waiting = self.loads.wait(fetch.key)
        try:
            async with asyncio.timeout_at(deadline):
                return await waiting
        except TimeoutError:
            if not waiting.cancelled():
                raise  # the flight's own TimeoutError (its loader's), not the deadline
            self.metrics.lease_timeouts += 1
            raise DeadlineExceededError(
                f"the caller's deadline ran out waiting for this process's load of {fetch.key} "
                "(its time_budget, or fetch(deadline=))"
            ) from None

    def _hit(self, fetch: Fetch[Any], frame: Frame, decoded: Any, now: float) -> CacheEntry[Any]:
        """A fresh value: count it, and start an early refresh when XFetch says so."""
        self.metrics.hits += 1
        stampede = fetch.policy.stampede
        if (
            stampede.xfetch
            and frame.expires_at - now <= frame.recompute_time * stampede.xfetch_beta * XFETCH_HORIZON
            and xfetch_due(now, frame.expires_at, frame.recompute_time, stampede.xfetch_beta, self._rand())
        ):
            self.refresher.start(fetch, frame, early=True)
        if fetch.parse:  # Reader.entry's first case, without the call
            entry: CacheEntry[Any] = CacheEntry(self._codec, frame, Outcome.HIT, value=decoded)
        else:
            entry = self.reader.entry(frame, Outcome.HIT, decoded, fetch)
        if fetch.hooks is not None:
            return self._heard(fetch, entry)
        return entry

    # -- the other ways in -----------------------------------------------------------------------------------

    def local_entry(
        self, fetch: Fetch[Any], started: Callable[[str, str], FetchHooks | None] | None
    ) -> CacheEntry[Any] | None:
        """:meth:`fetch`'s first step, which a caller may also take alone, without awaiting: the fresh local-tier
        entry, counted and heard as a hit (``started`` makes the fetch's hooks, once there is a hit to tell them
        of; None: keep the fetch's own), or None with nothing counted or told (the caller then fetches as usual)."""
        if not fetch.policy.local or self.local is None:
            return None
        now = self._clock()
        held = self.reader.local_hit(fetch, now)
        if held is None:
            return None
        fetch.tier = "local"
        if started is not None:
            fetch.hooks = started(fetch.function, fetch.key)
        return self._hit(fetch, held[0], held[1], now)

    async def refresh(self, fetch: Fetch[Any]) -> CacheEntry[Any]:
        """Run the loader now and store its value, whatever is stored (unless an invalidation comes meanwhile)."""
        if fetch.hooks is None:
            return await self.flights.load_with_ticket(fetch, None)
        return await self._with_hooks(fetch, fetch.hooks, lambda f: self.flights.load_with_ticket(f, None))

    async def unstored(self, fetch: Fetch[Any]) -> CacheEntry[Any]:
        """Load without reading or writing the store (an invalidation of the key has not landed yet)."""
        if fetch.hooks is None:
            return await self.filler.load_and_store(fetch, None, None)
        return await self._with_hooks(fetch, fetch.hooks, lambda f: self.filler.load_and_store(f, None, None))

    async def bypass(self, fetch: Fetch[Any]) -> CacheEntry[Any]:
        """The disabled cache's fetch: the loader's value, nothing stored."""
        if fetch.hooks is None:
            return await self.filler.bypass(fetch.loader, fetch.value_type)
        return await self._with_hooks(fetch, fetch.hooks, lambda f: self.filler.bypass(f.loader, f.value_type))
