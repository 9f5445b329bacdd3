"""Capacity past one machine, on paper: cores, Redis memory and Cluster shards for a request rate, a key count and
a hit ratio, from figures the benchmarks measured (docs/capacity.md: the model, and where it stops being true).

``python -m benchmarks.capacity [--measure] [--rps N --keys N --hit-ratio H --local-hit-ratio L --ttl S ...]``

Without target options it plans the worked example (100,000 req/s, 50 million entries) from the committed results
and writes ``benchmarks/results/capacity.{md,json}``; with them it prints that target's plan. ``--measure`` first
measures what no other benchmark does, on a private ``redis-server`` (so its ``INFO`` counters are ours alone):
Redis's CPU (``used_cpu_user + used_cpu_sys``: command and I/O), its commands (``INFO commandstats``, those run
inside scripts included) and bytes on the wire per hit, per miss, per local-tier broadcast and per broadcast heard
by one more process; this process's CPU for the same; and what Redis allocates per key beyond ``MEMORY USAGE``
(``MEMORY STATS`` growth over 24,000 entries, standalone and on a cluster-mode node). Its figures are kept in
``capacity.json`` under ``measured``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, environment, markdown_table, write_json, write_text

GB = 1e9
HTTP_SETTING = ("uvloop", 1)  # the production default; with 1 process the server is pinned to its own core


class MissingInput(Exception):
    """A result file or field is missing: the message names it and the command that produces it."""


@dataclass(frozen=True)
class Inputs:
    """The measured figures: CPU in microseconds (per request, operation or message), bytes."""

    local_hit_us: float  # service CPU per request answered from the local tier (HTTP included)
    redis_hit_us: float  # service CPU per request answered through Redis (Cluster); a miss costs it too
    cache_local_hit_us: float  # the cache's own share of a local-tier hit
    cache_redis_hit_us: float  # the cache's own CPU per Redis hit
    load_us: float  # client CPU a load adds to a miss (ticket, encode, fill, "ready")
    local_load_us: float  # client CPU the local tier adds to a load (its broadcast, the L1 copy)
    message_us: float  # client CPU of one broadcast heard by one other process
    redis_hit_cpu_us: float  # Redis CPU per hit, I/O included
    redis_load_cpu_us: float
    redis_local_load_cpu_us: float  # the broadcast's PUBLISH and its delivery to the sender
    redis_message_cpu_us: float  # per further subscriber
    hit_commands: float
    load_commands: float
    local_load_commands: float
    hit_wire_bytes: float  # both directions, beyond the value's stored bytes
    load_wire_bytes: float
    local_load_wire_bytes: float
    message_wire_bytes: float  # per delivered broadcast
    stored_bytes: float  # a detail entry's value, with the dictionary
    stored_bytes_plain: float
    memory_usage: float  # MEMORY USAGE of a detail entry, with the dictionary
    memory_usage_plain: float
    key_overhead: float  # allocated per key on a cluster node beyond standalone MEMORY USAGE
    loads_per_expiry: float
    answer_bytes: float  # a dcz detail answer on the wire to a browser
    sources: dict[str, str] = dataclasses.field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Target:
    rps: float
    keys: float
    hit_ratio: float
    local_hit_ratio: float  # share of hits served from the local tier; 0: no local tier
    ttl: float  # seconds
    loader_ms: float = 0.0  # application CPU per load in the loader (waiting for the database costs no core)
    value_bytes: float | None = None  # stored bytes of one value; None: the measured detail entry
    dictionary: bool = True
    replicas: int = 1
    app_busy: float = 0.7  # each application process kept below this share of its core
    shard_memory_gb: float = 25.0  # data a shard may hold (its maxmemory)
    shard_busy: float = 0.5  # each shard's main thread, and its link, kept below this share
    shard_network_gbps: float = 10.0


WORKED_EXAMPLE = Target(rps=100_000, keys=50_000_000, hit_ratio=0.95, local_hit_ratio=0.5, ttl=10_800)
VARIANTS = {
    "the worked example": WORKED_EXAMPLE,
    "no local tier": dataclasses.replace(WORKED_EXAMPLE, local_hit_ratio=0.0),
    "TTL 1 h": dataclasses.replace(WORKED_EXAMPLE, ttl=3600),
    "TTL 1 h, no local tier": dataclasses.replace(WORKED_EXAMPLE, ttl=3600, local_hit_ratio=0.0),
    "without the dictionary": dataclasses.replace(WORKED_EXAMPLE, dictionary=False),
    "200,000 req/s": dataclasses.replace(WORKED_EXAMPLE, rps=200_000),
    "loader 2 ms of CPU": dataclasses.replace(WORKED_EXAMPLE, loader_ms=2.0),
}


@dataclass(frozen=True)
class Plan:
    target: Target
    local_hits: float  # per second
    redis_hits: float
    misses: float
    loads: float
    app_cores: float  # busy cores
    cache_cores: float  # of which the cache itself
    loader_cores: float
    processes: int
    messages: float  # local-tier broadcasts delivered to other processes per second
    redis_commands: float  # per second
    redis_cores: float
    shard_commands: float  # commands per second one shard carries at shard_busy of its core
    entry_bytes: float
    memory_gb: float  # data, one copy
    memory_gb_other: float  # the same without (with) the dictionary
    network_gbps: float  # application <-> Redis, both directions
    hit_bytes: float  # on the wire per Redis hit
    answer_gbps: float  # service -> clients
    shards_by: dict[str, int]
    shards: int
    use: dict[str, float]  # each resource's share of a shard's allowance at ``shards``
    limit: str


def plan(inputs: Inputs, target: Target) -> Plan:
    """The model of docs/capacity.md: rates per second, then cores, memory and shards."""
    i, t = inputs, target
    local = t.local_hit_ratio > 0  # the local tier is configured: every load is broadcast to every process
    local_hits = t.rps * t.hit_ratio * t.local_hit_ratio
    redis_hits = t.rps * t.hit_ratio * (1 - t.local_hit_ratio)
    misses = t.rps * (1 - t.hit_ratio)
    loads = t.keys / t.ttl * i.loads_per_expiry
    reads = redis_hits + misses  # a miss reads first, as a hit does
    per_load = i.load_us + (i.local_load_us if local else 0.0)
    base = (local_hits * i.local_hit_us + reads * i.redis_hit_us + loads * (per_load + t.loader_ms * 1000)) / 1e6
    hearing = loads * i.message_us / 1e6 if local else 0.0  # cores each process spends on the others' loads
    if hearing >= t.app_busy:
        raise ValueError(f"each process would spend {hearing:.2f} of a core hearing broadcasts: no process count fits")
    processes = max(1, math.ceil((base - hearing) / (t.app_busy - hearing) - 1e-9))  # P x busy >= base + h (P - 1)
    others = processes - 1 if local else 0
    app_cores = base + hearing * others
    cache_us = local_hits * i.cache_local_hit_us + reads * i.cache_redis_hit_us + loads * per_load
    redis_us = reads * i.redis_hit_cpu_us + loads * i.redis_load_cpu_us
    commands = reads * i.hit_commands + loads * i.load_commands
    base_stored = i.stored_bytes if t.dictionary else i.stored_bytes_plain
    stored = base_stored if t.value_bytes is None else t.value_bytes
    wire = redis_hits * (stored + i.hit_wire_bytes) + misses * i.hit_wire_bytes + loads * (stored + i.load_wire_bytes)
    if local:
        redis_us += loads * (i.redis_local_load_cpu_us + others * i.redis_message_cpu_us)
        commands += loads * i.local_load_commands
        wire += loads * (i.local_load_wire_bytes + others * i.message_wire_bytes)
    with_dict, plain = (i.memory_usage, i.stored_bytes), (i.memory_usage_plain, i.stored_bytes_plain)
    (usage, _), (other_usage, other_stored) = (with_dict, plain) if t.dictionary else (plain, with_dict)
    entry = usage - base_stored + stored + i.key_overhead  # a given value size replaces the measured one
    other_entry = other_usage - other_stored + stored * other_stored / base_stored + i.key_overhead
    memory_gb, gbps = t.keys * entry / GB, wire * 8 / GB
    allowance = {"memory": t.shard_memory_gb, "Redis CPU": t.shard_busy, "network": t.shard_network_gbps * t.shard_busy}
    need = {"memory": memory_gb, "Redis CPU": redis_us / 1e6, "network": gbps}
    shards_by = {name: max(1, math.ceil(need[name] / allowance[name] - 1e-9)) for name in need}
    shards = max(shards_by.values())
    use = {name: need[name] / shards / allowance[name] for name in need}
    return Plan(
        t, local_hits, redis_hits, misses, loads, app_cores, cache_us / 1e6 + hearing * others,
        loads * t.loader_ms / 1000, processes, loads * others, commands, redis_us / 1e6,
        t.shard_busy * 1e6 * commands / redis_us, entry, memory_gb, t.keys * other_entry / GB, gbps,
        stored + i.hit_wire_bytes, t.rps * i.answer_bytes * 8 / GB, shards_by, shards, use,
        max(use, key=use.__getitem__),
    )  # fmt: skip


# --------------------------------------------------------------------------- reading the results

MEASURE = "python -m benchmarks.capacity --measure"
DERIVED = {  # input <- fields of capacity.json's ``measured`` ("a - b": a difference of two)
    "cache_redis_hit_us": "client_hit_us", "load_us": "client_miss_us - client_hit_us",
    "local_load_us": "client_local_load_us", "message_us": "client_message_us",
    "redis_hit_cpu_us": "redis_hit_us", "redis_load_cpu_us": "redis_miss_us - redis_hit_us",
    "redis_local_load_cpu_us": "redis_local_load_us", "redis_message_cpu_us": "redis_message_us",
    "hit_commands": "hit_commands", "load_commands": "miss_commands - hit_commands",
    "local_load_commands": "local_load_commands", "hit_wire_bytes": "hit_wire_bytes - stored_bytes",
    "load_wire_bytes": "miss_wire_bytes - hit_wire_bytes", "local_load_wire_bytes": "local_load_wire_bytes",
    "message_wire_bytes": "message_wire_bytes", "key_overhead": "key_overhead_bytes",
}  # fmt: skip


def _read(results: Path, name: str, command: str) -> Any:
    try:
        return json.loads((results / name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingInput(f"{results / name} is missing: run `{command}`") from None


def _get(data: Any, name: str, dotted: str, command: str) -> float:
    node = data
    for part in dotted.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise MissingInput(f"{name} has no field {dotted!r}: run `{command}`")
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise MissingInput(f"{name}: {dotted!r} is not a number ({node!r}): run `{command}`")
    return float(node)


def _http_us(results: Path, variant: str, sources: dict[str, str], field: str) -> float:
    """1e6 / req/s of one process on one core, from the newest http*.json (by its ``date``)."""
    command = "python -m benchmarks.http_load --quick"
    runs = [(p.name, _read(results, p.name, command)) for p in sorted(results.glob("http*.json"))]
    if not runs:
        raise MissingInput(f"no {results}/http*.json: run `{command}`")
    name, data = max(runs, key=lambda run: str(run[1].get("date", "")))
    loop, processes = HTTP_SETTING
    for row in data.get("rows", []):
        if (row.get("variant"), row.get("loop"), row.get("processes"), row.get("tool")) == (
            variant, loop, processes, "wrk"
        ):  # fmt: skip
            sources[field] = f"{name} ({data.get('date')}): 1e6 / {row['rps']} req/s of {variant}, {loop}, 1 process"
            return 1e6 / float(row["rps"])
    raise MissingInput(f"{name} has no wrk row {variant}/{loop}/{processes} process: run `{command}`")


def load_inputs(results: Path = RESULTS_DIR) -> Inputs:
    """The model's inputs from the results in ``results`` (each input's file and field in ``sources``)."""
    sources: dict[str, str] = {}

    def take(field: str, name: str, dotted: str, command: str) -> float:
        sources[field] = f"{name}: {dotted}"
        return _get(_read(results, name, command), name, dotted, command)

    measured = _read(results, "capacity.json", MEASURE)
    values = {}
    for field, how in DERIVED.items():
        terms = [_get(measured, "capacity.json", f"measured/{name}", MEASURE) for name in how.split(" - ")]
        values[field] = terms[0] - sum(terms[1:])
        sources[field] = f"capacity.json: measured/{how}"
    wire, wd, wp = "python -m benchmarks.wire_bytes", "variants/dictionary", "variants/plain"
    local_hit_us = _http_us(results, "cached-l1", sources, "local_hit_us")
    cache_local_hit_us = take("cache_local_hit_us", "hit_path.json", "cachelayer_memory_us",
                              "python -m benchmarks.hit_path")
    # Not 1e6 / req/s of cached-cluster: the HTTP run asks for one page, and concurrent reads of one key share a
    # GET (the read coalescer), so that figure is a hit of a hot key, cheaper than a hit over many keys. Both
    # requests take the same road through the service (the cache lane), so the difference is the cache's, which
    # --measure takes over 200 keys.
    redis_hit_us = local_hit_us + values["cache_redis_hit_us"] - cache_local_hit_us
    sources["redis_hit_us"] = "local_hit_us + cache_redis_hit_us - cache_local_hit_us"
    return Inputs(
        local_hit_us=local_hit_us,
        redis_hit_us=redis_hit_us,
        cache_local_hit_us=cache_local_hit_us,
        stored_bytes=take("stored_bytes", "wire_bytes.json", f"{wd}/redis/detail/stored", wire),
        stored_bytes_plain=take("stored_bytes_plain", "wire_bytes.json", f"{wp}/redis/detail/stored", wire),
        memory_usage=take("memory_usage", "wire_bytes.json", f"{wd}/redis/detail/memory_usage", wire),
        memory_usage_plain=take("memory_usage_plain", "wire_bytes.json", f"{wp}/redis/detail/memory_usage", wire),
        loads_per_expiry=take("loads_per_expiry", "stampede.json", "hot/cachelayer/loads_per_expiry",
                              "python -m benchmarks.stampede --processes 8 --requests 10000 --max-connections 100"),
        answer_bytes=take("answer_bytes", "wire_bytes.json", f"{wd}/wire/detail/dcz", wire),
        sources=sources,
        **values,
    )  # fmt: skip


# --------------------------------------------------------------------------- rendering


def rows(p: Plan) -> list[tuple[str, str]]:
    """The plan as (quantity, value): the worked example's table in docs/capacity.md."""
    t = p.target
    dictionary, other = ("with", "without") if t.dictionary else ("without", "with")
    return [
        ("hits from the local tier / from Redis / misses, per s",
         f"{p.local_hits:,.0f} / {p.redis_hits:,.0f} / {p.misses:,.0f}"),
        ("loads per s (entries / TTL x loads per expiry)", f"{p.loads:,.0f}"),
        ("application CPU, busy cores", f"{p.app_cores:.1f}"),
        ("of which the cache / the loader", f"{p.cache_cores:.1f} / {p.loader_cores:.1f}"),
        (f"application processes (one per core, at most {t.app_busy:.0%} busy)", f"{p.processes}"),
        ("local-tier broadcasts delivered to other processes, per s", f"{p.messages:,.0f}"),
        ("Redis commands per s (inside scripts included)", f"{p.redis_commands:,.0f}"),
        ("Redis CPU, busy cores (I/O included): in all / per shard",
         f"{p.redis_cores:.2f} / {p.redis_cores / p.shards:.2f}"),
        (f"Redis commands per s one shard carries at {t.shard_busy:.0%} of its core", f"{p.shard_commands:,.0f}"),
        (f"bytes per entry in Redis ({dictionary} the dictionary)", f"{p.entry_bytes:,.0f}"),
        (f"Redis memory, data, {dictionary} / {other} the dictionary",
         f"{p.memory_gb:.1f} GB / {p.memory_gb_other:.1f} GB"),
        (f"Redis memory with {t.replicas} replica(s) per shard", f"{p.memory_gb * (1 + t.replicas):.1f} GB"),
        (f"network, application <-> Redis ({p.hit_bytes:,.0f} B per Redis hit)", f"{p.network_gbps:.2f} Gbit/s"),
        ("network, service -> clients (dcz detail answers)", f"{p.answer_gbps:.2f} Gbit/s"),
        (f"shards needed by memory ({t.shard_memory_gb:g} GB) / Redis CPU ({t.shard_busy:.0%} of a core) / "
         f"network ({t.shard_busy:.0%} of {t.shard_network_gbps:g} Gbit/s)",
         " / ".join(map(str, p.shards_by.values()))),
        ("Cluster masters (nodes with replicas)", f"{p.shards} ({p.shards * (1 + t.replicas)})"),
        ("each shard's use of its allowance: memory / CPU / network", " / ".join(f"{u:.0%}" for u in p.use.values())),
        ("limits first", p.limit),
    ]  # fmt: skip


def table(p: Plan) -> str:
    return markdown_table(["quantity", "value"], rows(p))


def variants_table(inputs: Inputs) -> str:
    headers = ["target", "processes", "app cores", "broadcasts/s", "Redis cores", "memory GB", "shards (mem/CPU/net)",
               "limits first"]  # fmt: skip
    body = []
    for name, target in VARIANTS.items():
        p = plan(inputs, target)
        by = "/".join(map(str, p.shards_by.values()))
        body.append([name, str(p.processes), f"{p.app_cores:.1f}", f"{p.messages:,.0f}", f"{p.redis_cores:.2f}",
                     f"{p.memory_gb:.1f}", f"{p.shards} ({by})", p.limit])  # fmt: skip
    return markdown_table(headers, body)


def describe(t: Target) -> str:
    value = "the measured detail entry" if t.value_bytes is None else f"{t.value_bytes:g} B values"
    return (
        f"{t.rps:,.0f} req/s, {t.keys:,.0f} entries, hit ratio {t.hit_ratio:g} ({t.local_hit_ratio:g} of the hits "
        f"from the local tier), TTL {t.ttl:,.0f} s, loader CPU {t.loader_ms:g} ms per load, {value} "
        f"{'with' if t.dictionary else 'without'} the dictionary, {t.replicas} replica(s) per shard"
    )


def report(inputs: Inputs, p: Plan, measured: dict[str, Any]) -> str:
    values = dataclasses.asdict(inputs)
    input_rows = [(k, round(v, 2), inputs.sources.get(k, "")) for k, v in values.items() if k != "sources"]
    return "\n".join([
        "# Capacity: the worked example",
        "",
        f"Command: `python -m benchmarks.capacity` (the model and its limits: docs/capacity.md). {describe(p.target)}.",
        "",
        table(p),
        "",
        "## What moves it",
        "",
        variants_table(inputs),
        "",
        "## Inputs",
        "",
        "CPU in microseconds per request, operation or message; bytes per entry, operation or message.",
        "",
        markdown_table(["input", "value", "from"], input_rows),
        "",
        f"`measured` in capacity.json: `{MEASURE}`, {measured.get('date')}, a private redis-server "
        f"{measured.get('redis_version')}, {measured.get('concurrency')} concurrent callers, medians of "
        f"{measured.get('rounds')} rounds: `{json.dumps(measured.get('environment'))}`",
    ])  # fmt: skip


# --------------------------------------------------------------------------- measuring (--measure)

ROUNDS, CONCURRENCY, HITS, MISSES, LISTENERS, MEMORY_KEYS = 7, 16, 6000, 1200, 8, 24_000
IGNORED = ("cmdstat_info", "cmdstat_ping", "cmdstat_pubsub|numsub")  # ours, and the listeners' (one per 5 s)


Fetches = Callable[[int], Awaitable[object]]


async def _drive(n: int, call: Fetches) -> None:
    items = iter(range(n))

    async def worker() -> None:
        for i in items:
            await call(i)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def _counters(admin: Any) -> dict[str, float]:
    cpu, stats, commands = await admin.info("cpu"), await admin.info("stats"), await admin.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in commands.items() if k not in IGNORED}
    return {
        "redis_us": (cpu["used_cpu_user"] + cpu["used_cpu_sys"]) * 1e6, "commands": sum(calls.values()),
        "wire_bytes": stats["total_net_input_bytes"] + stats["total_net_output_bytes"], **calls,
    }  # fmt: skip


async def _window(admin: Any, n: int, call: Fetches,
                  settle: Callable[[], Awaitable[None]]) -> dict[str, float]:  # fmt: skip
    """Per call, over n calls: this process's CPU, Redis's CPU, commands (each by name) and bytes on the wire."""
    before, started = await _counters(admin), time.process_time()
    await _drive(n, call)
    await settle()
    client = time.process_time() - started
    after = await _counters(admin)
    return {"client_us": client * 1e6 / n, **{k: (after[k] - before.get(k, 0)) / n for k in after}}


async def _value(value: Any) -> Any:
    return value


async def _memory(url: str, entries: list[tuple[bytes, bytes, int]] | None) -> tuple[dict[str, float], Any]:
    """Bytes per key: N detail entries written through a Cache (or ``entries`` copied as they are)."""
    import redis.asyncio

    from cachelayer import Cache
    from service.demo_data import wallpaper

    admin: Any = redis.asyncio.Redis.from_url(url)
    await admin.flushall()
    before = await admin.memory_stats()
    pipe = admin.pipeline(transaction=False)
    if entries is None:
        cache = Cache.from_url(url, namespace="capmem", default_ttl=3600, max_connections=CONCURRENCY)
        await _drive(MEMORY_KEYS, lambda i: cache.get_or_set(f"w{i}", lambda: _value(wallpaper(i + 1))))
        await cache.aclose()
        names = [name async for name in admin.scan_iter(count=1000)]
        for name in names:
            pipe.get(name).pttl(name)
        got = await pipe.execute()
        entries = [(name, got[2 * j], got[2 * j + 1]) for j, name in enumerate(names)]
    else:
        for name, value, ttl in entries:
            pipe.set(name, value, px=ttl)
        await pipe.execute()
    await asyncio.sleep(0.5)
    after = await admin.memory_stats()
    for name, _, _ in entries:
        pipe.memory_usage(name, samples=0)
    usage = statistics.fmean(await pipe.execute())
    grown = after["total.allocated"] - before["total.allocated"]
    grown -= after["clients.normal"] - before["clients.normal"]  # connections' buffers are not the keys' cost
    count = after["keys.count"] - before["keys.count"]
    await admin.aclose()
    return {"keys": count, "memory_usage": usage, "allocated_per_key": grown / count}, entries


async def _measure_on(url: str, cluster_url: str) -> dict[str, Any]:
    import redis.asyncio

    from cachelayer import Cache, EntryPolicy, LocalCache
    from service.demo_data import medium_page

    page, local = medium_page(0), EntryPolicy(local=True)
    admin: Any = redis.asyncio.Redis.from_url(url)

    def cache(namespace: str, tier: bool = False) -> Cache:
        tier_ = LocalCache(max_staleness=30.0) if tier else None  # a listener's ping every 5 s: none in a window
        return Cache.from_url(url, namespace=namespace, default_ttl=3600, max_connections=CONCURRENCY, local=tier_)

    def fetches(each: Cache, prefix: str, policy: EntryPolicy | None = None, names: int = 0) -> Fetches:
        """Call i fetches name prefix + i (+ i % names: a few names, hit again and again)."""
        return lambda i: each.get_or_set(f"{prefix}{i % names if names else i}", lambda: _value(page), policy)

    # solo: a local tier alone on its channel (the sender hears itself); fan: the same plus LISTENERS processes'.
    plain, solo, fan = cache("cap"), cache("cap-solo", True), cache("cap-fan", True)
    listeners = [cache("cap-fan", True) for _ in range(LISTENERS)]
    tiers = [each.local for each in listeners if each.local is not None]
    for each in [solo, fan, *listeners]:
        assert each.local is not None
        each.local.ensure_listening()
    await _drive(200, fetches(plain, "h"))
    channel = fan.keys.local_channel()
    for _ in range(100):
        if dict(await admin.pubsub_numsub(channel)).get(channel.encode()) == LISTENERS + 1:
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError(f"{LISTENERS + 1} local tiers did not all subscribe to {channel}")
    heard = [0]

    async def all_heard() -> None:
        for _ in range(400):
            if sum(tier.remote_invalidations for tier in tiers) >= heard[0]:
                return
            await asyncio.sleep(0.005)
        raise RuntimeError(f"{LISTENERS} listeners heard {[t.remote_invalidations for t in tiers]} of {heard[0]}")

    async def pause() -> None:  # the same short wait as all_heard's, for the sender's own copy of its broadcasts
        await asyncio.sleep(0.01)

    phases: dict[str, list[dict[str, float]]] = {"hit": [], "miss": [], "solo": [], "fan": []}
    for r in range(ROUNDS):
        phases["hit"].append(await _window(admin, HITS, fetches(plain, "h", names=200), pause))
        phases["miss"].append(await _window(admin, MISSES, fetches(plain, f"m{r}-"), pause))
        phases["solo"].append(await _window(admin, MISSES, fetches(solo, f"s{r}-", local), pause))
        heard[0] += MISSES * LISTENERS
        phases["fan"].append(await _window(admin, MISSES, fetches(fan, f"f{r}-", local), all_heard))
    stored = float(await admin.strlen(plain.keys.value_key("h0")))
    version = (await admin.info("server"))["redis_version"]
    for each in [plain, solo, fan, *listeners]:
        await each.aclose()
    await admin.aclose()
    med = {name: {k: round(statistics.median(w.get(k, 0.0) for w in runs), 3) for k in sorted(set().union(*runs))}
           for name, runs in phases.items()}  # fmt: skip
    hit, miss, solo_, fan_ = (med[name] for name in ("hit", "miss", "solo", "fan"))
    standalone, entries = await _memory(url, None)
    clustered = (await _memory(cluster_url, entries))[0]
    return {
        "client_hit_us": hit["client_us"], "client_miss_us": miss["client_us"],
        "client_local_load_us": solo_["client_us"] - miss["client_us"],
        "client_message_us": (fan_["client_us"] - solo_["client_us"]) / LISTENERS,
        "redis_hit_us": hit["redis_us"], "redis_miss_us": miss["redis_us"],
        "redis_local_load_us": solo_["redis_us"] - miss["redis_us"],
        "redis_message_us": (fan_["redis_us"] - solo_["redis_us"]) / LISTENERS,
        "hit_commands": hit["commands"], "miss_commands": miss["commands"],
        "local_load_commands": solo_["commands"] - miss["commands"],
        "hit_wire_bytes": hit["wire_bytes"], "miss_wire_bytes": miss["wire_bytes"],
        "local_load_wire_bytes": solo_["wire_bytes"] - miss["wire_bytes"],
        "message_wire_bytes": (fan_["wire_bytes"] - solo_["wire_bytes"]) / LISTENERS,
        "stored_bytes": stored,
        # what a cluster node allocates per key beyond the standalone MEMORY USAGE wire_bytes reports
        "key_overhead_bytes": clustered["allocated_per_key"] - standalone["memory_usage"],
        "memory": {"standalone": standalone, "cluster": clustered},
        "phases": {name: {k: v for k, v in figures.items() if v} for name, figures in med.items()},
        "redis_version": version,
    }  # fmt: skip


def measure() -> dict[str, Any]:
    """--measure: on a private redis-server, and a one-node cluster-mode one for the memory figure."""
    import redis as sync_redis

    from harness import RedisServer

    cluster_args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    with RedisServer() as server, RedisServer(extra_args=cluster_args) as node:
        client: Any = sync_redis.Redis(host=node.host, port=node.port)
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # one node holding every slot
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            time.sleep(0.05)
        client.close()
        figures = asyncio.run(_measure_on(server.url, node.url))
    return {
        **figures, "date": time.strftime("%Y-%m-%d %H:%M"), "rounds": ROUNDS, "concurrency": CONCURRENCY,
        "environment": environment(["redis", "orjson", "zstandard"]),
    }  # fmt: skip


# --------------------------------------------------------------------------- the command

OPTIONS = {
    "rps": "requests per second", "keys": "entries in Redis", "hit_ratio": "hits / requests",
    "local_hit_ratio": "share of the hits served from the local tier (0: no local tier)",
    "ttl": "seconds an entry is fresh", "loader_ms": "application CPU per load in the loader, ms",
    "value_bytes": "stored bytes per value (default: the measured detail entry)", "replicas": "replicas per shard",
    "app_busy": "share of its core an application process may use", "shard_memory_gb": "data per shard, GB",
    "shard_busy": "share of its core (and link) a shard may use", "shard_network_gbps": "a shard's link, Gbit/s",
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", action="store_true", help="measure the Redis-side figures first (~1 min)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="the benchmarks' results (input)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the worked example is written")
    for name, text in OPTIONS.items():
        kind = int if name == "replicas" else float
        example = getattr(WORKED_EXAMPLE, name)
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=f"{text} (example: {example})")
    parser.add_argument("--no-dictionary", dest="dictionary", action="store_const", const=False)
    args = parser.parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Target) if getattr(args, f.name) is not None}
    target = dataclasses.replace(WORKED_EXAMPLE, **given)
    if not (0 <= target.hit_ratio <= 1 and 0 <= target.local_hit_ratio <= 1 and target.ttl > 0 < target.keys):
        parser.error("--hit-ratio and --local-hit-ratio are in [0, 1]; --ttl and --keys are positive")
    stored = args.results / "capacity.json"
    document = json.loads(stored.read_text(encoding="utf-8")) if stored.exists() else {}
    if args.measure:
        document["measured"] = measure()
        write_json(stored, document)
    try:
        inputs = load_inputs(args.results)
        result = plan(inputs, target)
    except (MissingInput, ValueError) as exc:
        print(f"python -m benchmarks.capacity: {exc}", file=sys.stderr)
        return 2
    print(f"{describe(target)}.\n\n{table(result)}")
    if target != WORKED_EXAMPLE:
        return 0
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in dataclasses.asdict(result).items()}
    rounded["use"] = {k: round(v, 3) for k, v in result.use.items()}
    document.update(
        target=rounded.pop("target"), plan=rounded, sources=inputs.sources,
        inputs={k: round(v, 3) for k, v in dataclasses.asdict(inputs).items() if k != "sources"},
    )  # fmt: skip
    write_json(args.out / "capacity.json", document)
    write_text(args.out / "capacity.md", report(inputs, result, document["measured"]))
    print(f"\n{variants_table(inputs)}\n\nwrote {args.out / 'capacity.md'} and capacity.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
