"""Stampede benchmark: how many loader calls a cold or expiring key costs, and what the callers wait.

``python -m benchmarks.stampede [--requests 1000] [--processes 2] [--max-connections 64] [--rounds 5] [--quick]
[--json PATH]``

Cold: N concurrent requests for one cold key, split across P processes that start at the same instant; the
loader sleeps 50 ms and counts itself in Redis (so calls from every process add up). Every contender runs it
``--rounds`` times, interleaved, and the table shows the medians (the CPU of one run moves by 20-40 % with
whatever else the machine does). Each process's Redis pool
holds at most ``--max-connections`` (cachelayer, cashews; aiocache 0.12 takes no pool size). For cachelayer a
second cold run samples each process's pool's in-use connections every millisecond until its first caller has the
value: what its waiters hold while the loader runs elsewhere (the one pub/sub connection the process shares for
"value ready" notices is counted apart). A second run, because the sampler's wake-ups (a turn of the event loop
each ms) cost CPU beyond its own code (~1 us a call over the burst): the CPU, latency and load figures come from
the run without it. Hot: each process keeps a steady stream of requests on one key whose TTL runs out every
few seconds; we count loads per expiry and compare the p99 latency of the whole run with the p99 of pure hits.
Every contender runs on the same Redis, DB 14.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from benchmarks import _contenders
from benchmarks._common import (
    BENCH_REDIS_URL,
    RESULTS_DIR,
    environment,
    format_table,
    markdown_table,
    write_json,
    write_text,
)

REDIS_URL = BENCH_REDIS_URL
LOADER_SLEEP = 0.05
WAIT_SLACK_MS = 50.0
COUNTER = "bench:loader-calls"
PAYLOAD = {"items": [{"id": i, "title": f"wallpaper {i} 壁纸", "downloads": i * 7} for i in range(20)]}


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# -- the worker: one process's share of the load --------------------------------------------------------------


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    import redis.asyncio as aredis

    counter = aredis.Redis.from_url(REDIS_URL)

    loader_ms: list[float] = []
    loader_span: list[float] = []  # perf_counter (system-wide CLOCK_MONOTONIC) at the load's start and end
    load_starts: list[float] = []  # perf_counter at the start of each load of the measured key

    def make_loader(counter_key: str) -> Any:
        async def loader(item: int) -> Any:
            started = time.perf_counter()
            if counter_key == COUNTER:
                load_starts.append(started)
            await counter.incr(counter_key)
            await asyncio.sleep(LOADER_SLEEP)
            loader_ms.append((time.perf_counter() - started) * 1000)
            loader_span[:] = [started, time.perf_counter()]
            return PAYLOAD

        return loader

    loader = make_loader(COUNTER)

    fetch, close = _contenders.build(
        args.contender, REDIS_URL, args.namespace, args.ttl, loader, max_connections=args.max_connections
    )
    latencies: list[float] = []
    errors: list[str] = []
    first_done = asyncio.Event()
    first_done_at: list[float] = []

    async def one() -> None:
        started = time.perf_counter()
        try:
            await fetch(1)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        latencies.append((time.perf_counter() - started) * 1000)
        if not first_done.is_set():
            first_done_at.append(time.perf_counter())
            first_done.set()

    hit_latencies: list[float] = []
    # Every contender's burst starts from a collected heap: otherwise whether a full collection (10-90 ms on these
    # heaps, the whole difference between contenders) falls inside the burst depends on what the process did before
    # it (imports, connecting), not on the contender. Collections during the burst are counted and charged.
    gc.collect()
    gc_before = [generation["collections"] for generation in gc.get_stats()]
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    pool_samples: list[tuple[float, int, int]] = []
    sampler_cpu = [0.0]  # the pool sampler's own CPU, not charged to the contender
    cpu_started = time.process_time()
    if args.scenario == "cold":
        sampler = None
        if args.sample_pool:
            sampler = asyncio.create_task(_sample_pool(fetch, first_done, pool_samples, sampler_cpu))
        await asyncio.gather(*(one() for _ in range(args.requests)))
        first_done.set()
        if sampler is not None:
            await sampler
    else:

        async def steady(call: Any, seconds: float, into: list[float]) -> None:
            deadline = time.perf_counter() + seconds

            async def stream() -> None:
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    try:
                        await call(1)
                    except Exception as exc:
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    else:
                        into.append((time.perf_counter() - started) * 1000)
                    await asyncio.sleep(args.interval)

            await asyncio.gather(*(stream() for _ in range(args.streams)))

        await steady(fetch, args.duration, latencies)
        # The baseline: the same streams on a key that never expires, so every call is a hit under the same load.
        never, close_never = _contenders.build(
            args.contender, REDIS_URL, args.namespace + "-steady", 3600, make_loader(COUNTER + ":baseline")
        )
        await never(1)
        await steady(never, args.duration / 2, hit_latencies)
        await close_never()
    burst_cpu_ms = (time.process_time() - cpu_started - sampler_cpu[0]) * 1000
    gc_after = [generation["collections"] for generation in gc.get_stats()]
    gc_collections = [after - before for after, before in zip(gc_after, gc_before, strict=True)]
    stats = getattr(getattr(fetch, "cache", None), "stats", None)  # cachelayer's counters; peers have none
    revoked_fills = stats()["revoked_fills"] if stats is not None else None
    await close()
    await counter.aclose()
    return {
        "latencies": latencies,
        "hit_latencies": hit_latencies,
        "errors": errors,
        "loader_ms": loader_ms,
        "loader_span": loader_span,
        "load_starts": load_starts,
        "first_done_at": first_done_at[0] if first_done_at else None,
        "pool_samples": pool_samples,
        "burst_cpu_ms": burst_cpu_ms,
        "gc_collections": gc_collections,
        "revoked_fills": revoked_fills,
    }


async def _sample_pool(fetch: Any, done: asyncio.Event, into: list[tuple[float, int, int]], cpu: list[float]) -> None:
    """(when, in-use connections, of which the shared pub/sub one) of cachelayer's pool, every ms until ``done``;
    the CPU time the sampling took is added to ``cpu[0]``.

    Reads redis-py's and cachelayer's private attributes: a measurement, not an API (absent ones: no samples)."""
    backend = getattr(getattr(fetch, "cache", None), "backend", None)
    if backend is None or not hasattr(backend, "client"):
        return
    cache = fetch.cache
    for _ in range(30_000):  # bounded: 30 s of 1 ms samples at most
        if done.is_set():
            return
        started = time.process_time()
        pool = backend.client.connection_pool
        in_use = set(getattr(pool, "_in_use_connections", ()))
        subscription = getattr(getattr(getattr(cache, "_pipeline", None), "flights", None), "notifier", None)
        pubsub = getattr(getattr(subscription, "_subscription", None), "_pubsub", None)
        held = getattr(pubsub, "connection", None)
        into.append((time.perf_counter(), len(in_use), 1 if held is not None and held in in_use else 0))
        cpu[0] += time.process_time() - started
        await asyncio.sleep(0.001)


# -- the driver ------------------------------------------------------------------------------------------------


def _run_scenario(contender: str, scenario: str, processes: int, per_process: dict[str, Any]) -> dict[str, Any]:
    namespace = f"bench-{scenario}-{contender.replace('(', '-').replace(')', '').replace('=', '-')}"
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    start_at = time.time() + 2.0 + 0.3 * processes
    argv = [
        sys.executable,
        "-m",
        "benchmarks.stampede",
        "--worker",
        "--contender",
        contender,
        "--namespace",
        namespace,
        "--scenario",
        scenario,
        "--start-at",
        str(start_at),
    ]
    for name, value in per_process.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(processes)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{contender} worker failed:\n{err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    loader_calls = int(client.get(COUNTER) or 0)
    client.flushdb()
    client.close()
    latencies = [x for r in results for x in r["latencies"]]
    hits = [x for r in results for x in r["hit_latencies"]]
    errors = [e for r in results for e in r["errors"]]
    loader_ms = [x for r in results for x in r["loader_ms"]]
    spans = [r["loader_span"] for r in results if r["loader_span"]]
    waiting: list[list[list[float]]] = []
    wakes: list[float] = []
    if len(spans) == 1:
        # While the load runs elsewhere (after its first 5 ms, so every process has reached its wait), a waiting
        # process's pool shows what its waiters hold; the loader's own process holds a connection for the load.
        load_start, load_end = spans[0]
        for r in results:
            if not r["loader_ms"]:
                waiting.append([s for s in r["pool_samples"] if load_start + 0.005 <= s[0] <= load_end])
                if r["first_done_at"] is not None and r["first_done_at"] > load_end:
                    wakes.append((r["first_done_at"] - load_end) * 1000)
    return {
        "loader_calls": loader_calls,
        "latencies": latencies,
        "hits": hits,
        "errors": errors,
        "loader_ms": loader_ms,
        "waiting_pool_samples": [w for w in waiting if w],
        "wake_ms": wakes,
        "burst_cpu_ms": [r["burst_cpu_ms"] for r in results],
        "gc_collections": [sum(r["gc_collections"][g] for r in results) for g in range(3)],
        "load_starts": sorted(x for r in results for x in r["load_starts"]),
        "revoked_fills": None
        if any(r.get("revoked_fills") is None for r in results)
        else sum(r["revoked_fills"] for r in results),
    }


def refreshes(load_starts: Sequence[float], ttl: float) -> int:
    """How many times the value was renewed: loads (from every process, sorted) that start within ``ttl / 2`` of
    the one before are one renewal. An early refresh (XFetch) renews a value before its TTL runs out, so a run
    sees more renewals than ``duration / ttl``; more than one load per renewal is a stampede."""
    return sum(1 for i, start in enumerate(load_starts) if i == 0 or start - load_starts[i - 1] > ttl / 2)


#: The contenders whose pool the cold run samples (the sampler reads cachelayer's and redis-py's attributes).
POOL_SAMPLED = ("cachelayer",)


def _sampled_pool(contender: str, processes: int, per_process: dict[str, Any]) -> list[list[list[float]]]:
    """The waiting processes' pool samples, from a cold run of their own (see the module docstring)."""
    if contender not in POOL_SAMPLED:
        return []
    return list(_run_scenario(contender, "cold", processes, {**per_process, "sample_pool": 1})["waiting_pool_samples"])


def _pool_while_waiting(samples_per_process: list[list[list[float]]]) -> dict[str, Any]:
    if not samples_per_process:
        return {}
    flat = [(int(total), int(sub)) for samples in samples_per_process for _, total, sub in samples]
    return {
        "wait_samples": len(flat),
        "wait_processes_sampled": len(samples_per_process),
        "wait_pool_in_use_max": max(total for total, _ in flat),
        "wait_pool_in_use_median": statistics.median(total for total, _ in flat),
        "wait_pool_in_use_max_besides_pubsub": max(total - sub for total, sub in flat),
        "wait_pool_in_use_median_besides_pubsub": statistics.median(total - sub for total, sub in flat),
    }


def _cold_round(run: dict[str, Any], requests: int) -> dict[str, Any]:
    lat = run["latencies"]
    return {
        "loader_calls": run["loader_calls"],
        "loader_ms": round(max(run["loader_ms"]), 1) if run["loader_ms"] else None,
        "p50_ms": round(percentile(lat, 50), 1),
        "p99_ms": round(percentile(lat, 99), 1),
        "max_ms": round(max(lat), 1) if lat else None,
        "requests": len(lat) + len(run["errors"]),
        "errors": len(run["errors"]),
        "first_error": run["errors"][0] if run["errors"] else None,
        # From the load's end to each waiting process's first caller having the value: the library's wake-up.
        "wake_max_ms": round(max(run["wake_ms"]), 1) if run["wake_ms"] else None,
        "cpu_per_request_us": round(sum(run["burst_cpu_ms"]) * 1000 / requests, 1),
        # Garbage collections during the burst, by generation, summed over the processes (the cold scenario).
        "gc_collections": run["gc_collections"],
    }


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for a contender's rounds: the medians of its timings and CPU, the worst of its counts (a round with
    two loads or an error is not hidden by two good ones), each round's CPU and p99 kept beside them."""

    def median(name: str) -> Any:
        values = [r[name] for r in rounds if r[name] is not None]
        return round(statistics.median(values), 1) if values else None

    row = {name: median(name) for name in ("loader_ms", "p50_ms", "p99_ms", "max_ms", "wake_max_ms")}
    row["cpu_per_request_us"] = median("cpu_per_request_us")
    row["loader_calls"] = max(r["loader_calls"] for r in rounds)
    row["requests"] = sum(r["requests"] for r in rounds)
    row["errors"] = sum(r["errors"] for r in rounds)
    row["first_error"] = next((r["first_error"] for r in rounds if r["first_error"]), None)
    middle = sorted(rounds, key=lambda r: r["cpu_per_request_us"])[len(rounds) // 2]
    row["gc_collections"] = middle["gc_collections"]  # the round whose CPU is the median's
    row["rounds"] = rounds
    return row


def cold(
    contenders: list[str], requests: int, processes: int, max_connections: int, rounds: int = 5
) -> dict[str, dict[str, Any]]:
    """Each contender's cold burst ``rounds`` times, interleaved (every contender once, then again): the CPU a
    call costs moves by 20-40 % between runs on this shared 2-core machine, and between two contenders run one
    after the other by as much as they differ; interleaved medians compare them under the same conditions."""
    per_process = {"requests": requests // processes, "ttl": 60, "max_connections": max_connections}
    runs: dict[str, list[dict[str, Any]]] = {contender: [] for contender in contenders}
    for index in range(rounds):
        for contender in contenders:
            runs[contender].append(_cold_round(_run_scenario(contender, "cold", processes, per_process), requests))
            print(f"  cold {contender} (round {index + 1} of {rounds}): {runs[contender][-1]}", file=sys.stderr)
    table: dict[str, dict[str, Any]] = {}
    for contender in contenders:
        table[contender] = {
            **_median_round(runs[contender]),
            **_pool_while_waiting(_sampled_pool(contender, processes, per_process)),
        }
    return table


def hot(
    contenders: list[str], processes: int, duration: float, ttl: float, max_connections: int = 64
) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for contender in contenders:
        per_process = {
            "ttl": ttl,
            "duration": duration,
            "streams": 20,
            "interval": 0.01,
            "max_connections": max_connections,
        }
        run = _run_scenario(contender, "hot", processes, per_process)
        expiries = duration / ttl
        starts = run["load_starts"]
        lat, hits = run["latencies"], run["hits"]
        table[contender] = {
            "loads_per_expiry": round(max(0, run["loader_calls"] - 1) / expiries, 2),  # the first load is the cold one
            "loads_per_refresh": round(len(starts) / max(1, refreshes(starts, ttl)), 2),
            "p99_ms": round(percentile(lat, 99), 2),
            "hit_p99_ms": round(percentile(hits, 99), 2),
            "max_ms": round(max(lat), 1) if lat else None,
            "requests": len(lat),
            "errors": len(run["errors"]),
            "revoked_fills": run["revoked_fills"],
        }
        print(f"  hot {contender}: {table[contender]}", file=sys.stderr)
    return table


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    cold_rows = [
        [
            name,
            r["loader_calls"],
            r["loader_ms"],
            r["p50_ms"],
            r["p99_ms"],
            r["errors"],
            r["cpu_per_request_us"],
            " / ".join(str(x["cpu_per_request_us"]) for x in r.get("rounds", ())),
            "/".join(str(n) for n in r["gc_collections"]) if "gc_collections" in r else "n/a",
            r.get("wait_pool_in_use_max"),
            r.get("wait_pool_in_use_max_besides_pubsub"),
        ]
        for name, r in result["cold"].items()
    ]
    hot_rows = [
        [
            name,
            r["loads_per_refresh"],
            r["loads_per_expiry"],
            r["p99_ms"],
            r["hit_p99_ms"],
            r["requests"],
            r["errors"],
            "n/a" if r.get("revoked_fills") is None else r["revoked_fills"],
        ]
        for name, r in result["hot"].items()
    ]
    cold_headers = [
        "contender",
        "loader calls",
        "loader ms",
        "p50 ms",
        "p99 ms",
        "errors",
        "CPU us per request",
        "each round",
        "GC gen 0/1/2",
        "pool in use while waiting (max)",
        "same, besides pub/sub",
    ]
    hot_headers = [
        "contender",
        "loads/refresh",
        "loads/expiry",
        "p99 ms",
        "hit p99 ms",
        "requests",
        "errors",
        "revoked fills",
    ]
    print(
        f"\nCold key: {args.requests} concurrent requests over {args.processes} processes, "
        f"loader {LOADER_SLEEP * 1000:.0f} ms, pool of {args.max_connections} per process"
    )
    print(format_table(cold_headers, cold_rows))
    print(f"\nHot key: TTL {args.ttl} s, {args.duration} s of steady load over {args.processes} processes")
    print(format_table(hot_headers, hot_rows))
    cl_cold, cl_hot = result["cold"].get("cachelayer"), result["hot"].get("cachelayer")
    checks = []
    if cl_cold:
        where = f"{args.requests} cold requests over {args.processes} processes"
        checks.append((f"{where}: exactly 1 loader call ({cl_cold['loader_calls']})", cl_cold["loader_calls"] == 1))
        checks.append((f"{where}: 0 errors ({cl_cold['errors']})", cl_cold["errors"] == 0))
        limit = (cl_cold["loader_ms"] or LOADER_SLEEP * 1000) + WAIT_SLACK_MS
        checks.append(
            (f"{where}: p99 <= loader time + {WAIT_SLACK_MS:.0f} ms ({cl_cold['p99_ms']} <= {limit:.1f})",
             cl_cold["p99_ms"] <= limit)
        )  # fmt: skip
        plain, locked = result["cold"].get("cashews.cache"), result["cold"].get("cashews.cache(lock=True)")
        if plain:
            ours, theirs = cl_cold["cpu_per_request_us"], plain["cpu_per_request_us"]
            checks.append(
                (f"{where}: CPU per request <= cashews.cache's ({ours} <= {theirs} us)", ours <= theirs)
            )  # fmt: skip
        if locked:
            ours, theirs = cl_cold["p99_ms"], locked["p99_ms"]
            checks.append(
                (f"{where}: p99 below cashews.cache(lock=True)'s, the peer that also loads once ({ours} < {theirs} ms)",
                 ours < theirs)
            )  # fmt: skip
        if "wait_pool_in_use_max_besides_pubsub" in cl_cold:
            held = cl_cold["wait_pool_in_use_max_besides_pubsub"]
            checks.append(
                (f"waiting processes hold no pool connection while they wait, besides the one shared pub/sub "
                 f"connection per process (median {cl_cold['wait_pool_in_use_median_besides_pubsub']}, max {held}: "
                 "a max of 1 is a poll's round trip in flight)",
                 cl_cold["wait_pool_in_use_median_besides_pubsub"] == 0)
            )  # fmt: skip
    if cl_hot:
        checks.append(("hot key: <= 1.1 loads per refresh", cl_hot["loads_per_refresh"] <= 1.1))
        checks.append(("hot key: p99 <= 2 x hit p99", cl_hot["p99_ms"] <= 2 * cl_hot["hit_p99_ms"]))
    lines = [
        "# Stampede benchmark",
        "",
        f"Command: `python -m benchmarks.stampede --requests {args.requests} --processes {args.processes}"
        f" --max-connections {args.max_connections}{' --quick' if args.quick else ''}"
        f"{f' --rounds {args.rounds}' if args.rounds != 5 else ''}`; Redis {REDIS_URL}; "
        f"loader sleeps {LOADER_SLEEP * 1000:.0f} ms (loader ms: the measured load, INCR included).",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')}; load average {result['loadavg_start']} at start, "
        f"{result['loadavg_end']} at end: {json.dumps(environment(['redis', 'aiocache', 'cashews']))}",
        "",
        f"Cold: {args.rounds} rounds, interleaved (every contender once, then again); each row shows the medians "
        "of its rounds' latencies and CPU, the most loader calls of any round and the errors of all of them. "
        "CPU us per request: the CPU time of every process during the burst (`time.process_time()`), summed, over "
        "the requests (`each round`: the rounds' own figures, in order); each process runs `gc.collect()` before "
        "the burst, so that every contender starts from a collected heap, and `GC gen 0/1/2` counts the "
        "collections during the burst (the median-CPU round's, summed over the processes: a full collection, gen "
        "2, cost 12-90 ms of CPU on these heaps in a profile: docs/stampede.md). Pool columns (cachelayer only): "
        "connections of a waiting process's pool in use, sampled every ms until its first caller had the value, "
        "in a second cold run (the sampler's wake-ups cost CPU the first run's figures "
        "do not carry); the shared pub/sub connection is one of them.",
        "",
        f"## Cold key ({args.requests} concurrent requests, {args.processes} processes)",
        "",
        markdown_table(cold_headers, cold_rows),
        "",
        f"## Hot key (TTL {args.ttl} s, {args.duration} s of steady load, 20 streams per process)",
        "",
        markdown_table(hot_headers, hot_rows),
        "",
        "loads/refresh: loads of the key over the times its value was renewed (loads from any process starting within "
        "TTL/2 of each other are one renewal): 1.0 is one load per renewal. loads/expiry divides by duration / TTL "
        "instead: an early refresh (XFetch) renews the value before its TTL runs out, so one load per renewal can "
        "exceed one per nominal expiry. revoked fills: cachelayer's loads whose write an invalidation refused "
        "(docs/consistency.md); nothing invalidates here, so 0 is expected (peers have no such count: n/a).",
        "",
        "## Targets",
        "",
        *[f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks],
    ]
    for name, r in result["cold"].items():
        if r.get("first_error"):
            lines.append(f"- {name} errors, first: `{r['first_error']}`")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stampede", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a shorter hot run")
    parser.add_argument("--json", type=Path, metavar="PATH")
    parser.add_argument("--max-connections", type=int, default=64, help="Redis pool size per process")
    parser.add_argument("--only", nargs="*", help="contenders to run (default: every one installed)")
    parser.add_argument("--skip-hot", action="store_true")
    parser.add_argument(
        "--rounds", type=int, default=5, help="cold bursts per contender, interleaved; the table shows medians"
    )
    # worker mode (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--ttl", type=float, default=2.0, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=0.01, help=argparse.SUPPRESS)
    parser.add_argument("--sample-pool", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(asyncio.run(_worker(args))))
        return 0
    args.duration = args.duration or (6.0 if args.quick else 12.0)
    contenders = args.only or _contenders.available()
    load_start = [round(x, 2) for x in os.getloadavg()]
    result: dict[str, Any] = {
        "cold": cold(contenders, args.requests, args.processes, args.max_connections, args.rounds)
    }
    result["hot"] = (
        {} if args.skip_hot else hot(contenders, args.processes, args.duration, args.ttl, args.max_connections)
    )
    result["loadavg_start"], result["loadavg_end"] = load_start, [round(x, 2) for x in os.getloadavg()]
    write_text(RESULTS_DIR / "stampede.md", report(result, args))
    write_json(RESULTS_DIR / "stampede.json", result)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
