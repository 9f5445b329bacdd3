"""What tag invalidation by stamps costs (``cachelayer/_tags.py``), through the real :class:`cachelayer.Cache`.

``python -m benchmarks.tag_invalidation [--quick] [--no-cluster] [--json PATH]``

On the machine's Redis (``TAG_BENCH_REDIS_URL``, default DB 15, a namespace of its own, cleared afterwards) and on a
private Redis Cluster (3 masters + 3 replicas, ``harness.RedisClusterServer``), with entries carrying one tag:

1. **Invalidation**: ``invalidate_tags(tag)`` (delete) and ``invalidate_tags(tag, mark_stale=True)`` with N entries
   carrying the tag: wall time and Redis CPU (the ``usec`` deltas of ``INFO commandstats`` over EVAL / EVALSHA,
   summed over every master, from the calls during which no other client's script ran on the shared Redis). The
   entries are filled fresh before each mode; the first timed call of a mode meets live entries, the next ones the
   same entries again (the script never looks at them). Then a sample of the entries (50 at most) is read through
   ``Cache.get`` and ``Cache.fetch`` of another cache (5 s budget) with a loader that fails: after a delete every
   one must be a ``get`` miss and a ``fetch`` with nothing to serve (the loader's error); after ``mark_stale`` a
   ``get`` miss and a ``fetch`` that serves the old value as ``stale``. Before each mode the same sample must hit.
   A window during which another client flushed the database (the test suite does, on DB 15) is measured again.
2. **A tagged hit against an untagged one**: the same 7.3 KB page under two names, one stored with the tag,
   ``Cache.fetch`` hits in paired rounds (alternating order): us per hit, the per-round difference and ratio, Redis
   CPU per hit (GET / MGET). On the cluster the tagged page's slot is on another master than the tag's stamp (the
   usual case), and the untagged page on the same master as the tagged one.
3. **A tagged miss against an untagged one**: ``Cache.fetch`` of new names (read, ticket, loader, compare-and-set
   fill; tagged: the stamps read beside the ticket and checked by the fill), alternating rounds.
4. **Bookkeeping under churn**: fills of ever-new names with the tag, paced, for several stamp lifetimes. The keys
   under the namespace are sampled (SCAN) and sorted into values, fill tickets, stamps (``:tag:``) and anything
   else; then, with no fills, how long until the stamp expires. The stamp slack (the library's 60 s) is scaled down
   for the run so that several lifetimes fit in seconds.

Results: benchmarks/results/tag_invalidation.{md,json}, with the last committed per-member figures quoted for
reference and a conclusion computed from the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import redis.asyncio

from benchmarks._common import RESULTS_DIR, environment, format_table, markdown_table, write_json, write_text
from cachelayer import MISSING, Cache, EntryPolicy
from harness import RedisClusterServer
from harness.cluster import CACHE_CLUSTER_ARGS
from service.demo_data import medium_page

REDIS_URL: Final = os.environ.get("TAG_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
TAG: Final = "list:all"
SIZES: Final = (10, 300, 3_000, 30_000)
QUICK_SIZES: Final = (10, 300)
SMALL_VALUE: Final = {"id": 1, "title": "a wallpaper", "downloads": 12, "tags": ["sea", "blue"], "pad": "x" * 120}
PACKAGES: Final = ["redis", "orjson"]
SCRIPTS: Final = ("eval", "evalsha")  # an invalidation is one script per tag
READS: Final = ("get", "mget")  # a hit: GET (untagged), MGET (tagged, standalone) or GETs (tagged, cluster)
MISS_COMMANDS: Final = ("get", "mget", "eval", "evalsha", "publish", "spublish")
ATTEMPTS: Final = 3  # per size and mode, when another client flushed the database meanwhile
WRITER_BUDGET: Final = 5.0  # the populating cache's: 64 writes at once on a shared machine can miss 0.1 s
# "Flat in N": no N's median above the smallest N's times FLAT_FACTOR or plus the noise floor, whichever is larger (a
# ~15 us script on a shared 2-core machine is at the mercy of preemption: tens of us either way).
FLAT_FACTOR: Final = 3.0
FLAT_FLOOR: Final = {"ms": 1.0, "redis_us": 50.0}


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...]
    repeats: int  # invalidations timed per size and mode
    sample: int  # entries read back after each mode (all of them below this)
    miss_rounds: int
    misses_per_round: int
    hit_rounds: int
    hits_per_round: int
    churn_ttl: float  # the value TTL of the churn run (stale_ttl 0)
    churn_slack: float  # the stamp slack for the churn run (the library's is 60 s)
    churn_rate: float  # fills per second
    churn_lifetimes: int  # how many stamp lifetimes the churn lasts


FULL: Final = Settings(SIZES, 15, 50, 9, 60, 15, 400, 0.5, 0.5, 400.0, 10)
QUICK: Final = Settings(QUICK_SIZES, 3, 50, 3, 20, 4, 100, 0.1, 0.2, 200.0, 5)


# -- Redis CPU ------------------------------------------------------------------------------------------------------


class RedisCpu:
    """``INFO commandstats`` of every master of a store: calls and usec deltas of chosen commands."""

    def __init__(self, nodes: Sequence[redis.asyncio.Redis]) -> None:
        self.nodes = list(nodes)

    async def snapshot(self) -> dict[str, tuple[int, int]]:
        totals: dict[str, tuple[int, int]] = {}
        for node in self.nodes:
            stats: dict[str, Any] = await node.info("commandstats")
            for name, row in stats.items():
                calls, usec = totals.get(name, (0, 0))
                totals[name] = (calls + int(row["calls"]), usec + int(row["usec"]))
        return totals

    @staticmethod
    def delta(
        before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], commands: Sequence[str]
    ) -> tuple[int, int]:
        """(calls, usec) of ``commands`` between two snapshots."""
        calls = usec = 0
        for command in commands:
            name = f"cmdstat_{command}"
            calls += after.get(name, (0, 0))[0] - before.get(name, (0, 0))[0]
            usec += after.get(name, (0, 0))[1] - before.get(name, (0, 0))[1]
        return calls, usec

    async def flushes(self) -> int:
        """FLUSHDB / FLUSHALL calls so far: the test suite flushes DB 15 before each test, and other workers run it
        on the shared Redis; a window that saw one is measured again (or flagged)."""
        stats = await self.snapshot()
        return sum(stats.get(f"cmdstat_{command}", (0, 0))[0] for command in ("flushdb", "flushall"))

    async def aclose(self) -> None:
        for node in self.nodes:
            await node.aclose()


@dataclass
class Store:
    """A store under test: how to build a cache on it, a raw client, and its masters' statistics."""

    label: str
    url: str
    cluster: bool
    raw: Any  # redis.asyncio.Redis or RedisCluster (decode_responses=False)
    cpu: RedisCpu
    namespace: str = field(default_factory=lambda: f"tagbench-{uuid.uuid4().hex[:10]}")

    def cache(self, suffix: str = "", **options: Any) -> Cache:
        return Cache.from_url(self.url, cluster=self.cluster, namespace=self.namespace + suffix, **options)

    def node_of(self, key: str) -> str:
        """The master that holds ``key`` ("" on a standalone Redis)."""
        return str(self.raw.get_node_from_key(key).name) if self.cluster else ""


@contextlib.asynccontextmanager
async def open_store(label: str, url: str, master_ports: Sequence[int] | None) -> AsyncIterator[Store]:
    """``master_ports`` None: a standalone Redis at ``url``; else the cluster found from ``url``."""
    if master_ports is None:
        raw: Any = redis.asyncio.Redis.from_url(url)
        nodes = [redis.asyncio.Redis.from_url(url)]
    else:
        raw = redis.asyncio.RedisCluster.from_url(url)
        await raw.initialize()  # the slot map, for ``Store.node_of`` before any command
        nodes = [redis.asyncio.Redis(host="127.0.0.1", port=port) for port in master_ports]
    store = Store(label, url.replace("redis://", "redis+cluster://") if master_ports else url, bool(master_ports),
                  raw, RedisCpu(nodes))
    try:
        yield store
    finally:
        cleaner = store.cache()
        await cleaner.clear()  # every key of the namespace, suffixed ones included (SCAN of its prefix)
        await cleaner.aclose()
        await store.cpu.aclose()
        await raw.aclose()


async def value() -> dict[str, Any]:
    return SMALL_VALUE


class LoaderRefused(Exception):
    """The failing loader's error: a fetch raises it when it has nothing to serve (no fresh, no stale copy)."""


async def refuse() -> dict[str, Any]:
    raise LoaderRefused


@contextlib.contextmanager
def quiet_library() -> Iterator[None]:
    """The library logs a WARNING for each stale copy it serves after a loader failed: expected in the checks."""
    logger = logging.getLogger("cachelayer")
    saved = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(saved)


# -- 1. invalidation -------------------------------------------------------------------------------------------------


async def populate(cache: Cache, names: Sequence[str]) -> None:
    """``names`` tagged ``TAG`` through ``Cache.set`` (64 at a time: the pool's size)."""
    for start in range(0, len(names), 64):
        stored = await asyncio.gather(
            *(cache.set(name, SMALL_VALUE, ttl=3600, tags=(TAG,)) for name in names[start : start + 64])
        )
        if not all(stored):
            raise RuntimeError("the store refused a write while populating")


async def read_back(cache: Cache, names: Sequence[str]) -> Counter[str]:
    """How each of ``names`` reads now: ``Cache.get`` (hit / miss) and ``Cache.fetch`` with a failing loader (hit,
    stale with the old value, or gone: the loader's error), e.g. ``{"get miss, fetch stale": 50}``. ``cache``: not
    the one that invalidated (no shortcut of its own process can help), with a generous budget (a read over the
    default 0.1 s on a busy machine would fail open, a miss that says nothing of the stamps); a store error is
    counted as ``store errors``."""
    policy = EntryPolicy(ttl=3600, tags=(TAG,))
    seen: Counter[str] = Counter()
    errors = _store_errors(cache)
    with quiet_library():
        for name in names:
            got = "get hit" if await cache.get(name, MISSING) == SMALL_VALUE else "get miss"
            try:
                entry = await cache.fetch(name, refuse, policy)
            except LoaderRefused:
                fetched = "gone"
            else:
                fetched = str(entry.outcome) if entry.value() == SMALL_VALUE else f"{entry.outcome} (other value)"
            seen[f"{got}, fetch {fetched}"] += 1
    if _store_errors(cache) > errors:
        seen["store errors"] = _store_errors(cache) - errors
    return seen


def _store_errors(cache: Cache) -> int:
    stats = cache.stats()
    return int(stats["store_errors"] + stats["breaker_rejections"])


EXPECTED: Final = {
    "before": "get hit, fetch hit", "delete": "get miss, fetch gone", "mark_stale": "get miss, fetch stale",
}


async def time_invalidation(cache: Cache, cpu: RedisCpu, mark_stale: bool) -> dict[str, float]:
    deferred = cache.stats()["invalidations_deferred"]
    before = await cpu.snapshot()
    started = time.perf_counter()
    reached = await cache.invalidate_tags(TAG, mark_stale=mark_stale)
    wall = time.perf_counter() - started
    after = await cpu.snapshot()
    calls, usec = cpu.delta(before, after, SCRIPTS)
    deferred = cache.stats()["invalidations_deferred"] - deferred
    return {"ms": wall * 1000, "redis_us": usec, "calls": calls, "reached": reached, "deferred": deferred}


async def invalidation(store: Store, cache: Cache, writer: Cache, size: int, settings: Settings) -> dict[str, Any]:
    """Both modes for ``size`` tagged entries (filled fresh before each by ``writer``): timings through ``cache``,
    then the sample read back through ``writer``."""
    names = [f"item-{size}-{i}" for i in range(size)]
    sample = names[:: max(1, size // settings.sample)][: settings.sample]
    row: dict[str, Any] = {"size": size, "sampled": len(sample)}
    for mode in ("mark_stale", "delete"):
        redone = 0
        for attempt in range(ATTEMPTS):
            flushes = await store.cpu.flushes()
            await populate(writer, names)
            before = await read_back(writer, sample)
            samples = [
                await time_invalidation(cache, store.cpu, mode == "mark_stale") for _ in range(settings.repeats)
            ]
            after = await read_back(writer, sample)
            flushed = await store.cpu.flushes() - flushes  # another client emptied the database: entries gone
            if not flushed or attempt == ATTEMPTS - 1:
                break
            redone += 1
        landed = [s for s in samples if not s["deferred"]] or samples
        # Redis CPU from the calls during which no other client's script ran (their usec would be counted too).
        alone = [s for s in landed if s["calls"] == 1] or landed
        row[mode] = {
            "ms": round(statistics.median(s["ms"] for s in landed), 3),
            "redis_us": round(statistics.median(s["redis_us"] for s in alone), 1),
            "first_ms": round(samples[0]["ms"], 3),
            "reached_min": min(s["reached"] for s in samples),
            "foreign_calls": max(s["calls"] for s in landed) - 1,  # one script per tag
            "calls_with_foreign": sum(s["calls"] > 1 for s in landed),
            "deferred": sum(int(s["deferred"]) for s in samples),
            "samples": len(samples),
            "before": dict(before),
            "after": dict(after),
            "hit_before": before[EXPECTED["before"]],
            "as_expected": after[EXPECTED[mode]],
            "redone": redone,  # windows measured again because the database was flushed during them
            "flushed": flushed,  # flushes during the window kept (not 0: its read-backs are not evidence)
        }
    return row


# -- 2. a tagged hit against an untagged one --------------------------------------------------------------------------


async def hit_cost(store: Store, cache: Cache, settings: Settings) -> dict[str, Any]:
    """us per ``Cache.fetch`` hit of the same 7.3 KB page, stored with the tag and without, in paired rounds."""
    page = medium_page(0)
    tagged_policy, untagged_policy = EntryPolicy(ttl=3600, tags=(TAG,)), EntryPolicy(ttl=3600)
    stamp_node = store.node_of(cache.keys.tag_key(TAG))
    # On a cluster: the tagged page on another master than the stamp, the untagged one on the tagged one's master.
    tagged = next(f"page-tagged-{i}" for i in range(1000) if not store.cluster
                  or store.node_of(cache.key(f"page-tagged-{i}")) != stamp_node)
    untagged = next(f"page-{i}" for i in range(1000)
                    if store.node_of(cache.key(f"page-{i}")) == store.node_of(cache.key(tagged)))

    async def loader() -> dict[str, Any]:
        return page

    contenders = {"untagged": (untagged, untagged_policy), "tagged": (tagged, tagged_policy)}
    for name, policy in contenders.values():
        await cache.fetch(name, loader, policy)  # stored
        entry = await cache.fetch(name, loader, policy)
        if entry.outcome != "hit" or entry.value() != page:
            raise AssertionError(f"{name}: {entry.outcome} where a hit of the page was expected")
    times: dict[str, list[float]] = {kind: [] for kind in contenders}
    cpu: dict[str, list[float]] = {kind: [] for kind in contenders}
    not_hits = 0  # a hit that was not (the shared Redis flushed by someone, a call over its budget): counted
    flushes = await store.cpu.flushes()
    number = settings.hits_per_round
    for round_no in range(settings.hit_rounds):
        for kind in list(contenders)[:: 1 if round_no % 2 else -1]:
            name, policy = contenders[kind]
            before = await store.cpu.snapshot()
            started = time.perf_counter()
            for _ in range(number):
                entry = await cache.fetch(name, loader, policy)
                entry.value()
                not_hits += entry.outcome != "hit"
            times[kind].append((time.perf_counter() - started) / number * 1e6)
            after = await store.cpu.snapshot()
            cpu[kind].append(store.cpu.delta(before, after, READS)[1] / number)
    pairs = list(zip(times["tagged"], times["untagged"], strict=True))
    return {
        "tagged_us": round(statistics.median(times["tagged"]), 1),
        "untagged_us": round(statistics.median(times["untagged"]), 1),
        "extra_us": round(statistics.median(t - u for t, u in pairs), 1),
        "ratio": round(statistics.median(t / u for t, u in pairs), 3),
        "tagged_redis_us": round(statistics.median(cpu["tagged"]), 2),
        "untagged_redis_us": round(statistics.median(cpu["untagged"]), 2),
        "not_hits": not_hits,
        "flushed": await store.cpu.flushes() - flushes,
        "stamp_on_other_master": store.cluster and store.node_of(cache.key(tagged)) != stamp_node,
        "rounds": settings.hit_rounds,
        "hits_per_round": number,
    }


# -- 3. a tagged miss against an untagged one ------------------------------------------------------------------------


async def miss_cost(store: Store, cache: Cache, settings: Settings) -> dict[str, Any]:
    """Tagged against untagged ``Cache.fetch`` misses of new names, alternating rounds."""
    tagged, untagged = EntryPolicy(ttl=3600, tags=(TAG,)), EntryPolicy(ttl=3600)
    revoked = cache.stats()["revoked_fills"]
    not_stored = 0  # fills that failed open (a call over its budget on a busy machine): counted, not fatal
    flushes = await store.cpu.flushes()
    times: dict[str, list[float]] = {"tagged": [], "untagged": []}
    cpu: dict[str, list[float]] = {"tagged": [], "untagged": []}
    for round_no in range(settings.miss_rounds):
        for kind, policy in (("tagged", tagged), ("untagged", untagged))[:: 1 if round_no % 2 else -1]:
            names = [f"miss-{kind}-{round_no}-{i}" for i in range(settings.misses_per_round)]
            before = await store.cpu.snapshot()
            started = time.perf_counter()
            for name in names:
                entry = await cache.fetch(name, value, policy)
                not_stored += entry.outcome != "miss"
            times[kind].append((time.perf_counter() - started) / len(names) * 1e6)
            after = await store.cpu.snapshot()
            cpu[kind].append(store.cpu.delta(before, after, MISS_COMMANDS)[1] / len(names))
    # The tagged fills landed: each name now hits (a sample of the last round).
    stored_hits = 0
    for name in [f"miss-tagged-{settings.miss_rounds - 1}-{i}" for i in range(min(10, settings.misses_per_round))]:
        with contextlib.suppress(LoaderRefused):  # not stored: the loader runs, and refuses
            stored_hits += (await cache.fetch(name, refuse, tagged)).outcome == "hit"
    diffs = [t - u for t, u in zip(times["tagged"], times["untagged"], strict=True)]
    return {
        "tagged_us": round(statistics.median(times["tagged"]), 1),
        "untagged_us": round(statistics.median(times["untagged"]), 1),
        "extra_us": round(statistics.median(diffs), 1),
        "tagged_redis_us": round(statistics.median(cpu["tagged"]), 1),
        "untagged_redis_us": round(statistics.median(cpu["untagged"]), 1),
        "extra_redis_us": round(statistics.median(cpu["tagged"]) - statistics.median(cpu["untagged"]), 1),
        "not_stored": not_stored,
        "revoked_fills": cache.stats()["revoked_fills"] - revoked,
        "tagged_then_hit": stored_hits,
        "flushed": await store.cpu.flushes() - flushes,
        "tagged_checked": min(10, settings.misses_per_round),
    }


# -- 4. bookkeeping under churn ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def stamp_slack(seconds: float) -> Iterator[None]:
    """The library's stamp slack (how much longer a stamp lives than the longest value that can carry it), scaled
    for the churn run: read at call time by ``stamp_ttl_ms``, patched for this run only."""
    from cachelayer import _filling

    saved = _filling.TAG_STAMP_SLACK_MS
    setattr(_filling, "TAG_STAMP_SLACK_MS", round(seconds * 1000))  # noqa: B010  (a Final of the library)
    try:
        yield
    finally:
        setattr(_filling, "TAG_STAMP_SLACK_MS", saved)  # noqa: B010


async def census(store: Store, prefix: str) -> Counter[str]:
    """The keys under ``prefix``: values, fill tickets (``:lease``), stamps (``:tag:``), anything else."""
    kinds: Counter[str] = Counter()
    async for raw_key in store.raw.scan_iter(match=prefix + "*", count=1000):
        key = raw_key.decode()
        rest = key[len(prefix) :]
        if rest.startswith("tag:"):
            kinds["stamps"] += 1
        elif rest.endswith(":lease"):
            kinds["tickets"] += 1
        elif rest.startswith("{") and rest.endswith("}"):
            kinds["values"] += 1
        else:
            kinds["other"] += 1
    return kinds


async def churn(store: Store, settings: Settings) -> dict[str, Any]:
    """Fills of ever-new names carrying the tag, paced, for several stamp lifetimes; the keys counted as it runs;
    then how long the stamp outlives the last fill."""
    from cachelayer import _filling

    cache = store.cache(":churn")
    policy = EntryPolicy(ttl=settings.churn_ttl, stale_ttl=0, tags=(TAG,))
    prefix = f"{store.namespace}:churn:"
    stamp_key = cache.keys.tag_key(TAG)
    filled = 0
    not_stored = 0
    last_start = 0.0  # when the last fill began (its ticket renews the stamp for a lifetime from about then)
    samples: list[dict[str, Any]] = []
    flushes = await store.cpu.flushes()
    with stamp_slack(settings.churn_slack):
        lifetime = _filling.stamp_ttl_ms(cache.resolve(policy)) / 1000
        duration = settings.churn_lifetimes * lifetime
        started = time.perf_counter()
        end = started + duration

        async def filler(worker: int, workers: int) -> None:
            nonlocal filled, not_stored, last_start
            n = worker
            while (now := time.perf_counter()) < end:
                due = started + n / settings.churn_rate
                if due > now:
                    await asyncio.sleep(due - now)
                last_start = max(last_start, time.perf_counter())
                entry = await cache.fetch(f"churn-{n}", value, policy)
                filled += 1
                not_stored += entry.outcome != "miss"
                n += workers

        async def sampler() -> None:
            while (now := time.perf_counter()) < end:
                samples.append({"at": round(now - started, 2), **await census(store, prefix)})
                await asyncio.sleep(duration / 40)

        await asyncio.gather(sampler(), *(filler(w, 4) for w in range(4)))
        at_end = await census(store, prefix)
        stamp_type = (await store.raw.type(stamp_key)).decode()
        stamp_size = int(await store.raw.strlen(stamp_key))
        # Idle: the stamp must go once no value can carry it (polled, up to 3 lifetimes).
        deadline = last_start + 3 * lifetime + 1.0
        # Polled: an expiry inside Redis is no event this process can await without keyspace notifications, which
        # would mean reconfiguring the shared server.
        while await store.raw.exists(stamp_key) and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        stamp_gone_after = time.perf_counter() - last_start
        stamp_gone = not await store.raw.exists(stamp_key)
    await cache.aclose()
    kinds = ("stamps", "values", "tickets", "other")
    most = {kind: max((s.get(kind, 0) for s in samples), default=0) for kind in kinds}
    return {
        "value_ttl_s": settings.churn_ttl,
        "stamp_lifetime_s": round(lifetime, 2),
        "duration_s": round(duration, 2),
        "fills": filled,
        "fill_rate": round(filled / duration, 1),
        "not_stored": not_stored,
        "stamps_max": most["stamps"],
        "stamps_end": at_end.get("stamps", 0),
        "values_max": most["values"],
        "tickets_max": most["tickets"],
        "other_max": max(most["other"], at_end.get("other", 0)),
        "stamp_type": stamp_type,
        "stamp_bytes": stamp_size,
        "stamp_gone": stamp_gone,
        "stamp_gone_after_s": round(stamp_gone_after, 2),
        "one_stamp": most["stamps"] == 1 and at_end.get("stamps", 0) == 1,
        "flushed": await store.cpu.flushes() - flushes,
        "samples": samples,
    }


# -- the run --------------------------------------------------------------------------------------------------------


async def measure_store(store: Store, settings: Settings) -> dict[str, Any]:
    cache = store.cache(":cache", default_ttl=3600)  # the library's default budget (0.1 s)
    writer = store.cache(":cache", default_ttl=3600, timeout=WRITER_BUDGET)
    rows: list[dict[str, Any]] = []
    try:
        await cache.invalidate_tags("warm-up")  # connections ready before the first timed call
        for size in settings.sizes:
            rows.append(await invalidation(store, cache, writer, size, settings))
            await writer.clear()
            print(f"  {store.label} N={size}: done", file=sys.stderr, flush=True)
        hits = await hit_cost(store, cache, settings)
        misses = await miss_cost(store, cache, settings)
    finally:
        await cache.aclose()
        await writer.aclose()
    return {"rows": rows, "hits": hits, "misses": misses, "churn": await churn(store, settings)}


async def measure(settings: Settings, *, redis_url: str = REDIS_URL, cluster: RedisClusterServer | None = None,
                  standalone: bool = True) -> dict[str, Any]:
    """Every measurement on the standalone Redis at ``redis_url`` and, given one, on ``cluster``."""
    result: dict[str, Any] = {}
    if standalone:
        async with open_store("redis", redis_url, None) as store:
            result["redis"] = await measure_store(store, settings)
    if cluster is not None:
        async with open_store("cluster", cluster.redis_url, cluster.masters()) as store:
            result["cluster"] = await measure_store(store, settings)
    return result


# -- the per-member shape, for reference ------------------------------------------------------------------------------

# Quoted from benchmarks/results/tag_invalidation.md as committed in 1837d76 (measured 2026-12-05 11:03, load average
# 4.1 rising to 12.9): per-member invalidation (one script per member, pipelined in batches of 500) and the extra
# cost of a tagged miss (the member written into the tag's sorted set). Not re-measured: that shape is gone.
REFERENCE_COMMIT: Final = "1837d76"
REFERENCE_MEASURED: Final = "2026-12-05 11:03"
REFERENCE_COLUMNS: Final = [
    "store", "N", "budget s", "deferred", "delete ms", "delete Redis us", "mark_stale ms", "mark_stale Redis us",
    "tagged miss +us", "tagged miss +Redis us", "tag set",
]
REFERENCE_ROWS: Final[list[list[Any]]] = [
    ["redis", 10, 0.1, 0, 0.56, 43, 0.63, 62, 118.3, 22.2, 550],
    ["redis", 300, 0.1, 0, 5.0, 732, 5.34, 865, 124.0, 23.8, 840],
    ["redis", 3000, 0.1, 0, 49.9, 9693, 55.5, 13310, -155.0, 69.1, 3540],
    ["redis", 30000, 0.1, 2, 1731.7, 255055, 781.9, 180134, 319.7, 29.6, 30540],
    ["redis", 30000, 5.0, 0, 1325.4, 252142, 2102.5, 362913, 894.1, 46.4, 30540],
    ["cluster", 10, 0.1, 0, 4.86, 99, 1.55, 113, 1149.6, 47.2, 550],
    ["cluster", 300, 0.1, 0, 29.4, 1194, 22.8, 1356, 1243.2, 48.7, 840],
    ["cluster", 3000, 0.1, 0, 290.4, 12043, 425.9, 17696, 2774.3, 59.4, 3540],
    ["cluster", 30000, 0.1, 6, 209.9, 82864, 2592.2, 270977, 1234.5, 45.9, 30540],
    ["cluster", 30000, 5.0, 0, 1908.6, 213636, 2742.2, 274810, 1310.3, 45.6, 30540],
]
PER_MEMBER_REFERENCE: Final = {
    "commit": REFERENCE_COMMIT, "measured": REFERENCE_MEASURED, "columns": REFERENCE_COLUMNS, "rows": REFERENCE_ROWS,
}


def reference_rows(label: str) -> list[list[Any]]:
    return [row for row in REFERENCE_ROWS if row[0] == label]


# -- report ------------------------------------------------------------------------------------------------------------

INVALIDATION_HEADERS: Final = [
    "store", "N", "delete ms", "delete Redis us", "mark_stale ms", "mark_stale Redis us", "first ms (del/stale)",
    "stamps reached", "deferred", "calls with foreign scripts", "hit before", "after delete: gone",
    "after mark_stale: stale", "redone (FLUSHDB)",
]
HIT_HEADERS: Final = [
    "store", "untagged us", "tagged us", "+us per tagged hit", "x untagged", "untagged Redis us", "tagged Redis us",
    "not hits", "FLUSHDB seen",
]
MISS_HEADERS: Final = [
    "store", "untagged us", "tagged us", "+us per tagged miss", "untagged Redis us", "tagged Redis us",
    "+Redis us", "not stored", "revoked", "tagged then hit", "FLUSHDB seen",
]
CHURN_HEADERS: Final = [
    "store", "value TTL s", "stamp lifetime s", "churn s", "fills", "fills/s", "stamp keys max", "stamp keys end",
    "value keys max", "ticket keys max", "other keys", "stamp", "stamp gone after s", "FLUSHDB seen",
]
MODES: Final = ("delete", "mark_stale")
METRICS: Final = ("ms", "redis_us")


def _fraction(count: int, total: int) -> str:
    return f"{count}/{total}"


def invalidation_rows(result: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    for label, measured in result.items():
        for row in measured["rows"]:
            delete, stale, n = row["delete"], row["mark_stale"], row["sampled"]
            redone = delete["redone"] + stale["redone"]
            disturbed = delete["flushed"] + stale["flushed"]
            rows.append([
                label, row["size"], delete["ms"], delete["redis_us"], stale["ms"], stale["redis_us"],
                f"{delete['first_ms']:.2f}/{stale['first_ms']:.2f}", min(delete["reached_min"], stale["reached_min"]),
                delete["deferred"] + stale["deferred"],
                f"{delete['calls_with_foreign'] + stale['calls_with_foreign']}/{delete['samples'] + stale['samples']}",
                _fraction(min(delete["hit_before"], stale["hit_before"]), n), _fraction(delete["as_expected"], n),
                _fraction(stale["as_expected"], n), f"{redone}" + (" (still flushed)" if disturbed else ""),
            ])
    return rows


def hit_rows(result: dict[str, Any]) -> list[list[object]]:
    keys = ["untagged_us", "tagged_us", "extra_us", "ratio", "untagged_redis_us", "tagged_redis_us", "not_hits",
            "flushed"]
    return [[label, *(measured["hits"][k] for k in keys)] for label, measured in result.items()]


def miss_rows(result: dict[str, Any]) -> list[list[object]]:
    keys = ["untagged_us", "tagged_us", "extra_us", "untagged_redis_us", "tagged_redis_us", "extra_redis_us",
            "not_stored", "revoked_fills"]
    return [
        [label, *(measured["misses"][k] for k in keys),
         _fraction(measured["misses"]["tagged_then_hit"], measured["misses"]["tagged_checked"]),
         measured["misses"]["flushed"]]
        for label, measured in result.items()
    ]


def churn_rows(result: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    for label, measured in result.items():
        c = measured["churn"]
        rows.append([
            label, c["value_ttl_s"], c["stamp_lifetime_s"], c["duration_s"], c["fills"], c["fill_rate"],
            c["stamps_max"], c["stamps_end"], c["values_max"], c["tickets_max"], c["other_max"],
            f"{c['stamp_type']}, {c['stamp_bytes']} B", c["stamp_gone_after_s"] if c["stamp_gone"] else "not gone",
            c["flushed"],
        ])
    return rows


def _range(values: Sequence[float]) -> str:
    """``1,325-2,742``, ``5.00-5.34``: three significant digits below 1,000, or one figure when they agree."""

    def figure(x: float) -> str:
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:#.3g}" if abs(x) >= 1 else f"{x:#.2g}"

    low, high = figure(min(values)), figure(max(values))
    return low if low == high else f"{low}-{high}"


def _series(measured: dict[str, Any], mode: str, metric: str) -> list[tuple[int, float]]:
    return [(row["size"], float(row[mode][metric])) for row in measured["rows"]]


def flat(measured: dict[str, Any]) -> bool:
    """Wall time and Redis CPU of both modes: no N's median above the smallest N's x ``FLAT_FACTOR`` or + the noise
    floor, whichever is larger."""
    for mode in MODES:
        for metric in METRICS:
            series = _series(measured, mode, metric)
            base = series[0][1]
            if max(cost for _, cost in series) > max(base * FLAT_FACTOR, base + FLAT_FLOOR[metric]):
                return False
    return True


def slope_us(measured: dict[str, Any], mode: str, metric: str) -> float:
    """Least-squares us per entry carrying the tag (wall or Redis CPU) over the N measured."""
    series = _series(measured, mode, metric)
    scale = 1000.0 if metric == "ms" else 1.0
    sizes = [n for n, _ in series]
    costs = [cost * scale for _, cost in series]
    return statistics.linear_regression(sizes, costs).slope if len(set(sizes)) > 1 else 0.0


def evidence(measured: dict[str, Any]) -> tuple[bool, int]:
    """(every sampled entry hit before and read as gone / stale after, in every window no flush disturbed; how many
    windows a flush disturbed even after ``ATTEMPTS``)."""
    clean = [row[mode] | {"sampled": row["sampled"]} for row in measured["rows"] for mode in MODES
             if not row[mode]["flushed"]]
    ok = all(m["hit_before"] == m["sampled"] and m["as_expected"] == m["sampled"] for m in clean)
    return ok, 2 * len(measured["rows"]) - len(clean)


def conclusion(result: dict[str, Any]) -> list[str]:
    lines = []
    for label, measured in result.items():
        rows = {row["size"]: row for row in measured["rows"]}
        small, large = rows[min(rows)], rows[max(rows)]
        hits, misses, churned = measured["hits"], measured["misses"], measured["churn"]
        reference = [row for row in reference_rows(label) if row[1] == large["size"]]
        wall_slope = max(abs(slope_us(measured, mode, "ms")) for mode in MODES)
        cpu_slope = max(abs(slope_us(measured, mode, "redis_us")) for mode in MODES)

        def cost(row: dict[str, Any], mode: str) -> str:
            return f"{row[mode]['ms']:.2f} ms / {row[mode]['redis_us']:.0f} us"

        parts = [
            f"- **{label}**: `invalidate_tags` took {cost(small, 'delete')} of Redis CPU (delete) and "
            f"{cost(small, 'mark_stale')} (mark_stale) at N={small['size']:,}, {cost(large, 'delete')} and "
            f"{cost(large, 'mark_stale')} at N={large['size']:,}: "
            + ("flat in N" if flat(measured) else "NOT flat in N")
            + f" (least-squares slope at most {wall_slope:.5f} us of wall time and {cpu_slope:.5f} us of Redis CPU "
            "per entry carrying the tag"
        ]
        if reference:
            old = max(reference, key=lambda row: row[2])  # the row whose budget let every member be reached
            size = large["size"]
            parts.append(
                f"; per-member: {_range([old[4] * 1000 / size, old[6] * 1000 / size])} us and "
                f"{_range([old[5] / size, old[7] / size])} us per entry, {_range([old[4], old[6]])} ms and "
                f"{_range([old[5] / 1000, old[7] / 1000])} ms of Redis CPU at N={size:,} ({REFERENCE_MEASURED})"
            )
        parts.append(").")
        ok, disturbed = evidence(measured)
        checked = 2 * len(rows) - disturbed
        parts.append(
            (f" In all {checked} read-backs every sampled entry was a hit before and read as gone (delete) / stale "
             "(mark_stale) after." if ok else " NOT every sampled entry read as expected afterwards: see the table.")
            + (f" {disturbed} read-back(s) left out: another client flushed the database during them." if disturbed
               else "")
        )
        parts.append(
            f" A tagged hit costs {hits['extra_us']:+.1f} us ({hits['ratio']:.2f} x the untagged hit of "
            f"{hits['untagged_us']:.0f} us) and {hits['tagged_redis_us'] - hits['untagged_redis_us']:+.2f} us of Redis "
            f"CPU; a tagged miss {misses['extra_us']:+.1f} us and {misses['extra_redis_us']:+.1f} us of Redis CPU"
        )
        old_miss = [row[8] for row in reference_rows(label)]
        if old_miss:
            parts.append(f" (per-member, over the quoted rows: {min(old_miss):+.0f} to {max(old_miss):+.0f} us).")
        else:
            parts.append(".")
        parts.append(
            f" Under churn ({churned['fills']:,} fills of new names over {churned['duration_s']:.0f} s, "
            f"{churned['duration_s'] / churned['stamp_lifetime_s']:.0f} stamp lifetimes) the store held at most "
            f"{churned['stamps_max']} stamp key{'s' if churned['stamps_max'] != 1 else ''} for the one tag "
            f"and {churned['other_max']} other key{'s' if churned['other_max'] != 1 else ''} beside values and "
            "fill tickets"
            + (f"; the stamp expired {churned['stamp_gone_after_s']:.1f} s after the last fill began (lifetime "
               f"{churned['stamp_lifetime_s']:.1f} s)" if churned["stamp_gone"]
               else "; the stamp had NOT expired 3 lifetimes after the last fill")
            + (f" (a FLUSHDB by another client came during the churn: {churned['flushed']})." if churned["flushed"]
               else ".")
        )
        lines.append("".join(parts))
    return lines


def reference_section() -> list[str]:
    return [
        "## For reference: the per-member shape (gone)",
        "",
        f"Quoted, not re-measured, from this file as committed in {REFERENCE_COMMIT} (measured {REFERENCE_MEASURED}, "
        "load average 4.1 at start rising to 12.9; standalone and cluster as here): `invalidate_tags` wrote each "
        "member (one script per member, pipelined in batches of 500, so time grew with N; at N=30,000 with the default "
        "0.1 s budget it was deferred), and each tagged fill wrote its member into the tag's sorted set (`tag set`: "
        "its size). Medians of 5 runs (2 deletes at 30,000).",
        "",
        markdown_table(REFERENCE_COLUMNS, REFERENCE_ROWS),
    ]


def report(result: dict[str, Any], settings: Settings, command: str, load: tuple[list[float], list[float]]) -> str:
    inv, hits, misses, churned = invalidation_rows(result), hit_rows(result), miss_rows(result), churn_rows(result)
    for headers, rows in ((INVALIDATION_HEADERS, inv), (HIT_HEADERS, hits), (MISS_HEADERS, misses),
                          (CHURN_HEADERS, churned)):
        print(format_table(headers, rows))
        print()
    summary = conclusion(result)
    print("\n".join(summary))
    return "\n".join([
        "# Tag invalidation by stamps",
        "",
        f"Command: `{command}`. Standalone: {REDIS_URL} (the machine's Redis, shared with other workers); cluster: a "
        "private 3-master + 3-replica Redis Cluster (harness). Everything through `cachelayer.Cache` "
        "(`Cache.from_url`, the library's default 0.1 s budget; the entries are written by a cache with a 5 s "
        "budget). Entries of ~200 B "
        f"carry one tag. Measured {time.strftime('%Y-%m-%d %H:%M')}; load average {load[0]} at start, {load[1]} at "
        f"end; `{orjson.dumps(environment(PACKAGES)).decode()}`. The test suite empties DB 15 before each test "
        "(`FLUSHDB`), and other workers run it on the same Redis: `FLUSHDB` calls are counted in every window (INFO "
        f"commandstats); an invalidation window that saw one is measured again (up to {ATTEMPTS} times), the others "
        "say how many they saw.",
        "",
        "## Invalidating one tag carried by N entries",
        "",
        f"`Cache.invalidate_tags(tag)` (delete) and `invalidate_tags(tag, mark_stale=True)`: medians of "
        f"{settings.repeats} calls per mode, the N entries filled fresh before each mode (`first ms`: the call that "
        "met them live). Redis us: `INFO commandstats` usec of EVAL/EVALSHA, summed over the masters, median over the "
        "calls during which no other client's script ran (`calls with foreign scripts`: how many calls, of both "
        "modes', had another client's script land during them; when all had, over all). `stamps "
        "reached`: the call's return (tags with a stamp), least over the calls. Read back through `Cache.get` and "
        "`Cache.fetch` with a failing loader, by another `Cache` than the one that invalidated (the writer, 5 s "
        f"budget), on {settings.sample} entries spread over the N (all of them below "
        "that): `hit before` (get and fetch hit), `gone` (get miss, fetch has nothing to serve: the loader's error), "
        "`stale` (get miss, fetch serves the old value as stale). `redone (FLUSHDB)`: windows measured again because "
        "the database was emptied during them. Flat in N: no N's median above the smallest N's x "
        f"{FLAT_FACTOR:g} or + {FLAT_FLOOR['ms']:g} ms / {FLAT_FLOOR['redis_us']:g} us, whichever is larger (one "
        "~15 us script on a loaded 2-core machine swings by tens of us when preempted); the conclusion gives the "
        "least-squares slope per entry as well.",
        "",
        markdown_table(INVALIDATION_HEADERS, inv),
        "",
        "## A tagged hit against an untagged hit",
        "",
        f"The same 7.3 KB page under two names, one stored with the tag; `Cache.fetch` hits, {settings.hit_rounds} "
        f"rounds x {settings.hits_per_round}, alternating order; `+us` and `x` are medians of per-round differences "
        "/ ratios. A tagged hit reads value and stamp in one MGET on the standalone Redis; on the cluster the stamp "
        "is on another master than the value (two GETs in a cluster pipeline). Redis us: GET/MGET usec per hit.",
        "",
        markdown_table(HIT_HEADERS, hits),
        "",
        "## A tagged miss against an untagged miss",
        "",
        f"`Cache.fetch` of new names (read, ticket, loader, compare-and-set fill), {settings.miss_rounds} rounds x "
        f"{settings.misses_per_round}, alternating order; a tagged miss reads the stamp beside its ticket and its "
        "fill checks it. `+us`: median of per-round differences. Redis us: GET, MGET, EVAL, EVALSHA, (S)PUBLISH usec "
        "per miss. `not stored`: misses that failed open; `tagged then hit`: the last round's names fetched again.",
        "",
        markdown_table(MISS_HEADERS, misses),
        "",
        "## Bookkeeping under churn",
        "",
        f"Fills of new names with the tag (4 tasks, paced at {settings.churn_rate:.0f}/s, stale TTL 0) for "
        f"{settings.churn_lifetimes} stamp lifetimes. The stamp slack is scaled from the library's 60 s to "
        f"{settings.churn_slack} s for the run; stamp lifetime = 2 x TTL + stale TTL + slack. The keys under the "
        "namespace (SCAN, sampled 40 times) sorted into stamps (`:tag:`), values, fill tickets (`:lease`) and "
        "`other` (anything else: a per-member structure would land there); `stamp`: the stamp key's type and size "
        "at the end; `stamp gone after`: seconds from the start of the last fill until the stamp expired (polled "
        "every 50 ms; it should be about one lifetime).",
        "",
        markdown_table(CHURN_HEADERS, churned),
        "",
        *reference_section(),
        "",
        "## Conclusion",
        "",
        *summary,
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tag_invalidation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 10 and 300 only, fewer rounds, a short churn")
    parser.add_argument("--no-cluster", action="store_true", help="the standalone Redis only")
    parser.add_argument("--json", type=Path, metavar="PATH")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    load_start = [round(x, 2) for x in os.getloadavg()]
    if args.no_cluster:
        result = asyncio.run(measure(settings))
    else:
        with RedisClusterServer(extra_args=CACHE_CLUSTER_ARGS) as cluster:
            result = asyncio.run(measure(settings, cluster=cluster))
    load_end = [round(x, 2) for x in os.getloadavg()]
    command = "python -m benchmarks.tag_invalidation " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(result, settings, command.strip(), (load_start, load_end))
    data = {
        "settings": settings.__dict__, "loadavg_start": load_start, "loadavg_end": load_end, **result,
        "conclusion": conclusion(result),
    }
    if not args.quick and not args.no_cluster:
        write_text(RESULTS_DIR / "tag_invalidation.md", text)
        write_json(RESULTS_DIR / "tag_invalidation.json", data)
    if args.json:
        write_json(args.json, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
