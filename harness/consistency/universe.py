"""One universe: real :class:`cachelayer.Cache` instances ("processes") over one store, the actors of a
:class:`Spec`, a schedule from a :class:`Chooser`, and the oracle's verdict.

Each process is a Cache of its own (its own single flight and pipeline) over a :class:`GatedBackend` of its own,
over the store the universe shares (through a mutant when one is asked for). The caches are configured so that
only the schedule decides what happens: a lease that never lapses by itself (chaos expires it), waiters that poll
(no pub/sub message in flight that the scheduler cannot see) and time out on the loop's virtual clock, no XFetch, no
jitter, a fixed random source, and the virtual clock. The end check runs with the scheduler stopped, one read at a
time, each one's background work (a refresh) finished before the next: nothing runs beside it in real time.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from cachelayer import Backend, Cache, CacheEntry, EntryPolicy, Outcome, StampedePolicy, cached
from cachelayer._tags import Verdict, judge
from harness.consistency.gated import GatedBackend
from harness.consistency.mutants import MutantState, mutant_backend, mutant_read_coalescer
from harness.consistency.oracle import Counters, Database, Oracle
from harness.consistency.scheduler import ACTOR, Chooser, Scheduler
from harness.consistency.specs import Chaos, Reader, Spec, Writer
from harness.consistency.stores import Store

__all__ = ["STAMPEDE", "LoaderKilled", "run_universe"]

STAMPEDE: Final = StampedePolicy(
    lease_ttl=100_000.0,  # never lapses by itself (its renewer would only run after ~9 virtual hours)
    lease_wait=5.0,  # the default, on the loop's (virtual) clock: a waiter times out when the schedule says so
    wake="poll",
    xfetch=False,
)
_TTL: Final = 3600.0
_SHORT_TTL: Final = 1.0  # universes where time passes
_SETTLE_S: Final = 120.0  # virtual seconds: beyond every backoff of a retry or a lease waiter
_EPOCH: Final = 1_700_000_000.0  # the caches' clock: Unix seconds on the loop's virtual time

PROCESS: contextvars.ContextVar[Cache] = contextvars.ContextVar("consistency_process")
_LOAD: contextvars.ContextVar[Callable[[int], Awaitable[int]]] = contextvars.ContextVar("consistency_load")


class LoaderKilled(RuntimeError):
    """Chaos: the loader died before it returned."""


@cached(cache=lambda: PROCESS.get(), tags=["t{row}", "all"], stampede=STAMPEDE, name="consistency.row")
async def decorated_row(row: int) -> int:
    """The decorated reader: each process's cache is the actor's (``PROCESS``), the database the universe's."""
    return await _LOAD.get()(row)


@dataclass
class _Universe:
    spec: Spec
    scheduler: Scheduler
    store: Store
    shared: Backend  # the store's backend itself, beneath the gates and any mutant
    db: Database
    caches: list[Cache]
    gated: list[GatedBackend]
    oracle: Oracle
    mutant: MutantState | None
    keys: list[str]
    policies: list[EntryPolicy]
    kills_armed: int = 0
    kills: int = 0
    failed_actors: set[str] = field(default_factory=set)
    reader_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    clock: Callable[[], float] = lambda: 0.0

    def name(self, row: int) -> str:
        return f"row{row}"

    def load_row(self, row: int) -> Callable[[], Awaitable[int]]:
        return lambda: self.load(row)

    async def load(self, row: int) -> int:
        await self.scheduler.gate("db-read")
        version = self.db.versions[row]
        await self.scheduler.gate("db-return")
        if self.kills_armed:
            self.kills_armed -= 1
            self.kills += 1
            raise LoaderKilled(f"row {row}")
        return version


def _key_of(cache: Cache, spec: Spec, row: int) -> str:
    if spec.rows[row].style == "decorated":
        token = PROCESS.set(cache)
        try:
            return decorated_row.key(row)
        finally:
            PROCESS.reset(token)
    return cache.key(f"row{row}")


async def run_universe(
    spec: Spec,
    store: Store,
    scheduler: Scheduler,
    chooser: Chooser,
    *,
    mutant: str | None = None,
    preemption_bound: int | None = None,
    log: bool = False,
) -> Counters:
    """Run ``spec`` under ``chooser``'s schedule; the oracle's counters (``universes`` = 1)."""
    shared, namespace = store.universe()
    state = MutantState() if mutant is not None else None
    ttl = _SHORT_TTL if spec.time_passes else _TTL
    loop = scheduler.loop
    began = loop.now
    # Whatever the library draws from the global random source (a backoff's jitter) is the same in every run of
    # this universe, on every backend.
    random.seed(0)

    def clock() -> float:
        return _EPOCH + (loop.now - began)  # each universe starts at the same time

    probe = Cache(shared, namespace=namespace)
    keys = [_key_of(probe, spec, row) for row in range(len(spec.rows))]
    oracle = Oracle({key: row for row, key in enumerate(keys)}, namespace + ":")
    gated: list[GatedBackend] = []
    failed_actors: set[str] = set()
    caches: list[Cache] = []
    for _ in range(spec.processes):
        below: Backend = shared if state is None or mutant is None else mutant_backend(mutant, shared, state)
        backend = GatedBackend(below, scheduler, oracle, keys=probe.keys, truth=shared, on_failure=failed_actors.add)
        gated.append(backend)
        caches.append(
            # stale_ttl: the physical TTL (real time, in the store) stays far beyond any universe's real duration.
            Cache(backend, namespace=namespace, default_ttl=ttl, stale_ttl=_TTL, jitter=0.0, rand=lambda: 0.5,
                  clock=clock, stampede=STAMPEDE)
        )
        coalescer = mutant_read_coalescer(mutant)
        if coalescer is not None:
            caches[-1]._state().reader.reads = coalescer  # type: ignore[assignment]  # a cache-side mutant
    policies = [
        EntryPolicy(ttl=ttl, stale_ttl=_TTL, stampede=STAMPEDE, tags=(f"t{row}", "all") if r.style == "tagged" else ())
        for row, r in enumerate(spec.rows)
    ]
    universe = _Universe(spec, scheduler, store, shared, Database(len(spec.rows)), caches, gated, oracle, state,
                         keys, policies, failed_actors=failed_actors, clock=clock)  # fmt: skip
    load_token = _LOAD.set(universe.load)
    try:
        for row, r in enumerate(spec.rows):
            if r.warm:
                await _read(universe, caches[0], Reader(0, row, "decorated" if r.style == "decorated" else "fetch"))
        scheduler.on_starved = lambda: _lapse_leases(universe)
        scheduler.start(chooser, preemption_bound=preemption_bound, log=log)
        await _play(universe)
        scheduler.stop()
        await _cancel_the_rest()
        universe.kills_armed = 0  # chaos ends with the actors
        for backend in gated:
            backend.failing_calls = 0
        await _evict_tickets(universe)  # time passes: leases left by loaders that died lapse
        await _check_the_end(universe)
    finally:
        scheduler.stop()
        scheduler.on_starved = None
        await _cancel_the_rest()  # background work the end reads started (a refresh) must not reach the next
        _LOAD.reset(load_token)
        with scheduler.in_flight():
            await store.cleanup(oracle.seen)
    counters = oracle.counters
    counters.errors += len(universe.errors)
    if universe.errors and log:
        print("\n".join(universe.errors))
    return counters


async def _play(universe: _Universe) -> None:
    spec = universe.spec
    scheduler = universe.scheduler
    loop = scheduler.loop
    tasks: list[asyncio.Task[Any]] = []

    def start(name: str, process: int, coro: Any) -> asyncio.Task[Any]:
        context = contextvars.copy_context()
        context.run(ACTOR.set, name)
        context.run(PROCESS.set, universe.caches[process])
        task = loop.create_task(coro, context=context)
        tasks.append(task)
        return task

    for index, reader in enumerate(spec.readers):
        universe.reader_tasks.append(start(f"R{index}", reader.process, _reader(universe, reader, f"R{index}")))
    for index, writer in enumerate(spec.writers):
        start(f"W{index}", writer.process, _writer(universe, writer, f"W{index}"))
    for index, chaos in enumerate(spec.chaos):
        start(f"C{index}", chaos.process, _chaos(universe, chaos))
    if spec.time_passes:
        start("T", 0, asyncio.sleep(_SHORT_TTL * 1.5))
    actors: asyncio.Future[Any] = asyncio.gather(*tasks, return_exceptions=True)
    quiet: asyncio.Future[Any] = scheduler.quiet()
    await asyncio.wait({actors, quiet}, return_when=asyncio.FIRST_COMPLETED)
    if actors.done() and not scheduler.overrun:
        await scheduler.quiet()  # the background work the actors left (refreshes, retries) settles
    if not actors.done() or scheduler.overrun:
        universe.oracle.counters.stuck += 1
        if scheduler.log:
            universe.errors.append("stuck: " + " | ".join(scheduler.log[-30:]))
    actors.cancel()


async def _settle() -> None:
    """Wait (the scheduler stopped: nothing parks) until every other task is done, or the virtual clock moved
    ``_SETTLE_S`` (a task that never ends by itself is cancelled at the universe's end)."""
    me = asyncio.current_task()
    rest = [task for task in asyncio.all_tasks() if task is not me and not task.done()]
    if rest:
        await asyncio.wait(rest, timeout=_SETTLE_S)


async def _cancel_the_rest() -> None:
    me = asyncio.current_task()
    rest = [task for task in asyncio.all_tasks() if task is not me and not task.done()]
    for task in rest:
        task.cancel()
    if rest:
        await asyncio.wait(rest)


async def _read(universe: _Universe, cache: Cache, reader: Reader) -> tuple[int, Outcome | None]:
    row = reader.row
    if reader.via == "fetch":
        entry: CacheEntry[Any] = await cache.fetch(universe.name(row), universe.load_row(row), universe.policies[row])
        return entry.value(), entry.outcome
    if reader.via == "refresh":
        entry = await cache.refresh(universe.name(row), universe.load_row(row), universe.policies[row])
        return entry.value(), entry.outcome
    token = PROCESS.set(cache)
    try:
        if reader.via == "decorated":
            entry = await decorated_row.entry(row)
            return entry.value(), entry.outcome
        return await decorated_row.refresh(row), None
    finally:
        PROCESS.reset(token)


async def _reader(universe: _Universe, reader: Reader, actor: str) -> None:
    key = universe.keys[reader.row]
    await universe.scheduler.gate("start")  # when the read begins is the schedule's choice too
    started_after = universe.oracle.read_started(key, reader.process)
    try:
        version, outcome = await _read(universe, universe.caches[reader.process], reader)
    except (LoaderKilled, asyncio.CancelledError):
        return
    except Exception as exc:  # a store problem must never reach a caller
        universe.errors.append(f"{actor}: {exc!r}")
        return
    universe.oracle.read_answered(
        key, started_after, version, stale_by_design=outcome is Outcome.STALE and universe.kills > 0
    )


async def _writer(universe: _Universe, writer: Writer, actor: str) -> None:
    await universe.scheduler.gate("commit")
    row = writer.row
    version = universe.db.commit(row)
    cache = universe.caches[writer.process]
    name = universe.name(row)
    try:
        if writer.via == "delete":
            await cache.delete(name)
        elif writer.via == "set":
            await cache.set(name, version, tags=universe.policies[row].tags)
        elif writer.via == "tags":
            await cache.invalidate_tags(f"t{row}")
        elif writer.via == "mark_stale":
            await cache.invalidate_tags(f"t{row}", mark_stale=True)
        else:
            token = PROCESS.set(cache)
            try:
                await decorated_row.invalidate(row)
            finally:
                PROCESS.reset(token)
    except Exception as exc:
        universe.errors.append(f"{actor}: {exc!r}")
        return
    # An invalidation some of whose store calls failed has not reached the store: it promises only its own
    # process (which must not serve the entry while it retries), not the others.
    only_in = writer.process if actor in universe.failed_actors else None
    universe.oracle.invalidation_done(universe.keys[row], version, only_in=only_in)


async def _chaos(universe: _Universe, chaos: Chaos) -> None:
    await universe.scheduler.gate("chaos")
    key = universe.keys[chaos.row]
    if chaos.what == "evict_value":
        with universe.scheduler.in_flight():
            await universe.store.evict_value(key)
    elif chaos.what == "evict_tag":
        with universe.scheduler.in_flight():
            await universe.store.evict_tag(universe.caches[0].keys.tag_key(f"t{chaos.row}"))
    elif chaos.what == "evict_tickets":
        with universe.scheduler.in_flight():
            await universe.store.evict_tickets(key)
        if universe.mutant is not None:
            universe.mutant.tickets_evicted(key)
    elif chaos.what == "kill_loader":
        universe.kills_armed += 1
    elif chaos.what == "cancel_reader":
        if chaos.target < len(universe.reader_tasks):
            universe.reader_tasks[chaos.target].cancel()
    else:
        backend = universe.gated[chaos.process]
        backend.failing_calls += chaos.calls


def _lapse_leases(universe: _Universe) -> None:
    context = contextvars.copy_context()
    context.run(ACTOR.set, "lapse")
    universe.scheduler.loop.create_task(_evict_tickets(universe), context=context)


async def _evict_tickets(universe: _Universe) -> None:
    for key in universe.keys:
        with universe.scheduler.in_flight():
            await universe.store.evict_tickets(key)
        if universe.mutant is not None:
            universe.mutant.tickets_evicted(key)


async def _live_by_stamps(universe: _Universe, tags: tuple[tuple[str, bytes], ...]) -> bool:
    """Whether a frame stamped with ``tags`` is live by its tags' stamps in the store now (``cachelayer._tags``)."""
    if not tags:
        return True
    names = list(dict(tags))
    with universe.scheduler.in_flight():
        found = await universe.shared.get_many([universe.caches[0].keys.tag_key(tag) for tag in names])
    return judge(tags, dict(zip(names, found, strict=True))) is Verdict.LIVE


async def _check_the_end(universe: _Universe) -> None:
    """Every process must now answer the database's version, and the store hold nothing fresh and older (fresh:
    not expired, and live by its tags' stamps: one they refuse or mark stale is no reader's fresh value)."""
    oracle = universe.oracle
    revoked = sum(cache.stats().get("revoked_fills", 0) for cache in universe.caches)
    oracle.counters.revoked_fills += revoked
    for row, key in enumerate(universe.keys):
        current = universe.db.versions[row]
        stale = False
        data = await universe.gated[0].get(key)
        if data is not None:
            frame = universe.caches[0].codec.read_frame(data)
            if (
                universe.clock() < frame.expires_at
                and Oracle.version_of(data) < current
                and await _live_by_stamps(universe, frame.tags)
            ):
                stale = True
        style = universe.spec.rows[row].style
        for process, cache in enumerate(universe.caches):
            via = "decorated" if style == "decorated" else "fetch"
            try:
                version, _ = await _read(universe, cache, Reader(process, row, via))
            except Exception as exc:
                universe.errors.append(f"end read of row {row} in process {process}: {exc!r}")
                continue
            finally:
                # What the read started (a stale-while-revalidate refresh) finishes before the next read: left
                # running beside it, it would get as far as real Redis replies let it before it is cancelled, and
                # the universe would differ from run to run and from memory to Redis.
                await _settle()
            stale = stale or version < current
        oracle.counters.stale_at_end += stale
