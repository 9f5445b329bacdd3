"""Runs of many universes: exhaustive (depth-first over every schedule of a small configuration, re-running the
universe from scratch for each prefix of choices) and seeded random; in this process or in worker processes.

Every run happens on a :class:`VirtualTimeLoop` of its own (one per worker), with one store for the whole run.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from harness.consistency.loop import VirtualTimeLoop
from harness.consistency.oracle import Counters
from harness.consistency.scheduler import PrefixChooser, RandomChooser, Scheduler
from harness.consistency.specs import Chaos, Reader, Row, Spec, Writer, random_spec
from harness.consistency.stores import MemoryStore, RedisStore, Store
from harness.consistency.universe import run_universe

__all__ = ["SMALL_CONFIGS", "Exhaustive", "run_batch", "universe_seeds"]


@dataclass
class Exhaustive:
    """What an exhaustive run of one configuration found."""

    name: str
    schedules: int = 0
    complete: bool = False  # every schedule (within the preemption bound) was run
    counters: Counters = field(default_factory=Counters)


def _small(name: str, spec: Spec, bound: int | None = None) -> tuple[str, Spec, int | None]:
    return name, spec, bound


PLAIN, TAGGED, DECORATED = Row("plain"), Row("tagged"), Row("decorated")
WARM_PLAIN, WARM_TAGGED = Row("plain", warm=True), Row("tagged", warm=True)

#: Small configurations explored exhaustively: (name, spec, preemption bound or None for every schedule).
SMALL_CONFIGS: tuple[tuple[str, Spec, int | None], ...] = (
    _small("1r1w delete", Spec(1, (PLAIN,), (Reader(0),), (Writer(0),))),
    _small("1r1w delete, 2 processes", Spec(2, (PLAIN,), (Reader(0),), (Writer(1),))),
    _small("1r1w set", Spec(2, (PLAIN,), (Reader(0),), (Writer(1, via="set"),))),
    _small("1r1w tags", Spec(2, (TAGGED,), (Reader(0),), (Writer(1, via="tags"),))),
    _small("1r1w mark_stale", Spec(2, (TAGGED,), (Reader(0),), (Writer(1, via="mark_stale"),))),
    _small("1r1w decorated", Spec(2, (DECORATED,), (Reader(0, via="decorated"),), (Writer(1, via="decorated"),))),
    _small("refresh vs mark_stale", Spec(2, (WARM_TAGGED,), (Reader(0, via="refresh"),),
                                         (Writer(1, via="mark_stale"),))),
    _small("1r1w + lease expiry", Spec(2, (PLAIN,), (Reader(0),), (Writer(1),), (Chaos("evict_tickets"),))),
    _small("1r1w + value eviction", Spec(1, (TAGGED,), (Reader(0),), (Writer(0, via="tags"),),
                                         (Chaos("evict_value"),))),
    _small("1r1w tags + stamp eviction", Spec(1, (WARM_TAGGED,), (Reader(0),), (Writer(0, via="tags"),),
                                              (Chaos("evict_tag"),))),
    # Two readers of a cached row in one process, an invalidation between the first one's read and its reply:
    # the second reader starts after the invalidation and must not be handed the first one's answer.
    _small("2r1w warm, one process", Spec(1, (WARM_PLAIN,), (Reader(0), Reader(0)), (Writer(0),)), 2),
    _small("2r1w warm mark_stale", Spec(2, (WARM_TAGGED,), (Reader(0), Reader(0)), (Writer(1, via="mark_stale"),)), 2),
    _small("2r1w one process", Spec(1, (PLAIN,), (Reader(0), Reader(0)), (Writer(0),)), 2),
    _small("2r1w two processes", Spec(2, (PLAIN,), (Reader(0), Reader(1)), (Writer(0),)), 2),
    _small("2r1w tags", Spec(2, (TAGGED,), (Reader(0), Reader(1)), (Writer(1, via="tags"),)), 2),
)


def universe_seeds(first: int, count: int) -> Iterator[int]:
    return iter(range(first, first + count))


async def _exhaustive(
    store: Store, scheduler: Scheduler, name: str, spec: Spec, bound: int | None, limit: int, mutant: str | None
) -> Exhaustive:
    found = Exhaustive(name)
    prefix: list[int] | None = []
    while prefix is not None and found.schedules < limit:
        chooser = PrefixChooser(prefix)
        found.counters += await run_universe(spec, store, scheduler, chooser, mutant=mutant, preemption_bound=bound)
        found.schedules += 1
        prefix = chooser.next_prefix()
        if mutant is not None and found.counters.stale:
            break  # caught: no need to look further
    found.complete = prefix is None
    return found


async def _random(store: Store, scheduler: Scheduler, first: int, count: int, mutant: str | None) -> Counters:
    counters = Counters()
    for seed in universe_seeds(first, count):
        spec = random_spec(random.Random(seed))
        counters += await run_universe(spec, store, scheduler, RandomChooser(seed ^ 0x5EED), mutant=mutant)
        if mutant is not None and counters.stale:
            break
    return counters


async def _per_seed(store: Store, scheduler: Scheduler, first: int, count: int) -> list[dict[str, int]]:
    """The counters of each random universe (compared across backends: the differential check)."""
    found = []
    for seed in universe_seeds(first, count):
        spec = random_spec(random.Random(seed))
        found.append((await run_universe(spec, store, scheduler, RandomChooser(seed ^ 0x5EED))).as_dict())
    return found


async def _hunt(store: Store, scheduler: Scheduler, mutant: str, count: int) -> dict[str, Any]:
    """Look for a stale universe under ``mutant``: the small configurations exhaustively, then up to ``count``
    random universes; stops at the first."""
    universes = 0
    for name, spec, bound in SMALL_CONFIGS:
        found = await _exhaustive(store, scheduler, name, spec, bound, 20_000, mutant)
        universes += found.schedules
        if found.counters.stale:
            return {"caught": True, "by": f"exhaustive {name!r}", "universes": universes,
                    "counters": found.counters.as_dict()}  # fmt: skip
    counters = await _random(store, scheduler, 0, count, mutant)
    universes += counters.universes
    return {"caught": counters.stale > 0, "by": f"random ({counters.universes} universes)" if counters.stale else "",
            "universes": universes, "counters": counters.as_dict()}  # fmt: skip


def _store(kind: str, url: str | None) -> Store:
    if kind == "memory":
        return MemoryStore()
    assert url is not None
    return RedisStore(url, cluster=kind == "cluster")


def run_batch(job: dict[str, Any]) -> dict[str, Any]:
    """One worker's share: ``job`` = {store, url, mode: "random"|"exhaustive", first, count | configs, limit,
    mutant}; answers plain data (it crosses a process boundary as JSON-able values)."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(_run_job(loop, job))
    finally:
        loop.close()


async def _run_job(loop: VirtualTimeLoop, job: dict[str, Any]) -> dict[str, Any]:
    scheduler = Scheduler(loop)
    store = _store(job["store"], job.get("url"))
    if isinstance(store, RedisStore):
        with scheduler.in_flight():
            await store.connect()
    started = time.perf_counter()
    mutant = job.get("mutant")
    try:
        if job["mode"] == "random":
            counters = await _random(store, scheduler, job["first"], job["count"], mutant)
            result: dict[str, Any] = {"counters": counters.as_dict()}
        elif job["mode"] == "differential":
            result = {"per_seed": await _per_seed(store, scheduler, job["first"], job["count"])}
        elif job["mode"] == "mutant":
            assert mutant is not None
            result = await _hunt(store, scheduler, mutant, job["count"])
        else:
            runs = []
            for name, spec, bound in SMALL_CONFIGS:
                if job.get("configs") is not None and name not in job["configs"]:
                    continue
                found = await _exhaustive(store, scheduler, name, spec, bound, job.get("limit", 100_000), mutant)
                runs.append({"name": name, "schedules": found.schedules, "complete": found.complete,
                             "bound": bound, "counters": found.counters.as_dict()})  # fmt: skip
            result = {"exhaustive": runs}
    finally:
        with scheduler.in_flight():
            await store.aclose()
    result["seconds"] = time.perf_counter() - started
    return result
