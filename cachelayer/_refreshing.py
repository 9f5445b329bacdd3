"""Background refresh: XFetch's early recompute and stale-while-revalidate, off every caller's path.

One refresh per key at a time in a process, none while a load of the key runs, and, across processes, only by the
holder of the key's lease (a fill ticket: an invalidation, ``mark_stale`` included, that lands while the refresh
loads refuses its write); a refresh that finds the value already replaced since its caller read it gives up, so an
expiry costs one load, not one per process. A refresh never raises: its loader's failure leaves the stored value
as it is.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ._backend import Backend, StoreUnavailable
from ._codec import Codec, Frame
from ._entry import CacheEntry
from ._errors import CodecError
from ._fetch import Fetch
from ._filling import LoaderFailures
from ._flights import Flights
from ._lease import Lease
from ._metrics import CacheMetrics
from ._stampede import SingleFlight

__all__ = ["Refresher", "settle"]

log = logging.getLogger("cachelayer")


async def settle(tasks: set[asyncio.Task[Any]], grace: float) -> None:
    """Wait up to ``grace`` seconds for ``tasks``, then cancel those still running (bounded: never a wait for ever
    on a loader that hangs)."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)


class Refresher:
    """Background refreshes of one cache in one event loop."""

    def __init__(
        self,
        codec: Codec,
        backend: Backend,
        flights: Flights,
        loads: SingleFlight[CacheEntry[Any]],
        metrics: CacheMetrics,
        failures: LoaderFailures,
    ) -> None:
        self.failures = failures  # the Filler's: one log line per streak of a function's failing loads
        self.codec = codec
        self.backend = backend
        self.flights = flights
        self.loads = loads
        self.metrics = metrics
        self.refreshes: SingleFlight[None] = SingleFlight()
        self.background: set[asyncio.Task[Any]] = set()

    async def aclose(self, grace: float) -> None:
        """Let running refreshes finish for up to ``grace`` seconds, then cancel the rest."""
        await settle(set(self.background), grace)

    def start(self, fetch: Fetch[Any], seen: Frame, *, early: bool) -> None:
        key = fetch.key
        if self.refreshes.running(key) or self.loads.running(key):
            return
        if early:
            self.metrics.early_recomputes += 1
        background = fetch.background()
        task = self.refreshes.start(key, lambda: self._refresh(background, seen.expires_at))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _replaced_since(self, key: str, seen_expires_at: float) -> bool:
        try:
            data = await self.backend.get(key)
            return data is not None and self.codec.read_frame(data).expires_at > seen_expires_at
        except (StoreUnavailable, CodecError):
            return False

    async def _refresh(self, fetch: Fetch[Any], seen_expires_at: float) -> None:
        """Reload unless another process already does or did; never blocks a caller, never raises."""
        lease: Lease | None = None
        stampede = fetch.policy.stampede
        if stampede.lease:
            try:
                lease = await self.flights.ticket(fetch, exclusive=True)
            except StoreUnavailable:
                return
            if lease is None:
                return
            if await self._replaced_since(fetch.key, seen_expires_at):
                # Another process refreshed it between our read and our lease: one load per expiry, not two.
                await lease.release()
                return
        self.metrics.background_refreshes += 1
        try:
            # stale=None: a background refresh whose loader fails leaves the stored value as it is.
            if lease is not None:
                await self.flights.load_under_lease(lease, fetch, None, None)
            else:
                await self.flights.load_with_ticket(fetch, None)
        except Exception as exc:
            self.failures.failed(fetch.function, fetch.key, exc, "a background refresh, the stored value stays")
