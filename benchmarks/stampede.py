"""Stampede benchmark: how many loader calls a cold or expiring key costs, and what the callers wait.

``python -m benchmarks.stampede [--requests 1000] [--processes 2] [--quick] [--json PATH]``

Cold: N concurrent requests for one cold key, split across P processes that start at the same instant; the
loader sleeps 50 ms and counts itself in Redis (so calls from every process add up). Hot: each process keeps a
steady stream of requests on one key whose TTL runs out every few seconds; we count loads per expiry and compare
the p99 latency of the whole run with the p99 of pure hits. Every contender runs on the same Redis, DB 14.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

    def make_loader(counter_key: str) -> Any:
        async def loader(item: int) -> Any:
            await counter.incr(counter_key)
            await asyncio.sleep(LOADER_SLEEP)
            return PAYLOAD

        return loader

    loader = make_loader(COUNTER)

    fetch, close = _contenders.build(args.contender, REDIS_URL, args.namespace, args.ttl, loader)
    latencies: list[float] = []
    errors: list[str] = []

    async def one() -> None:
        started = time.perf_counter()
        try:
            await fetch(1)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        latencies.append((time.perf_counter() - started) * 1000)

    hit_latencies: list[float] = []
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    if args.scenario == "cold":
        await asyncio.gather(*(one() for _ in range(args.requests)))
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
    await close()
    await counter.aclose()
    return {"latencies": latencies, "hit_latencies": hit_latencies, "errors": errors}


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
    return {"loader_calls": loader_calls, "latencies": latencies, "hits": hits, "errors": errors}


def cold(contenders: list[str], requests: int, processes: int) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for contender in contenders:
        run = _run_scenario(contender, "cold", processes, {"requests": requests // processes, "ttl": 60})
        lat = run["latencies"]
        table[contender] = {
            "loader_calls": run["loader_calls"],
            "p50_ms": round(percentile(lat, 50), 1),
            "p99_ms": round(percentile(lat, 99), 1),
            "max_ms": round(max(lat), 1) if lat else None,
            "errors": len(run["errors"]),
            "first_error": run["errors"][0] if run["errors"] else None,
        }
        print(f"  cold {contender}: {table[contender]}", file=sys.stderr)
    return table


def hot(contenders: list[str], processes: int, duration: float, ttl: float) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for contender in contenders:
        per_process = {"ttl": ttl, "duration": duration, "streams": 20, "interval": 0.01}
        run = _run_scenario(contender, "hot", processes, per_process)
        expiries = duration / ttl
        lat, hits = run["latencies"], run["hits"]
        table[contender] = {
            "loads_per_expiry": round(max(0, run["loader_calls"] - 1) / expiries, 2),  # the first load is the cold one
            "p99_ms": round(percentile(lat, 99), 2),
            "hit_p99_ms": round(percentile(hits, 99), 2),
            "max_ms": round(max(lat), 1) if lat else None,
            "requests": len(lat),
            "errors": len(run["errors"]),
        }
        print(f"  hot {contender}: {table[contender]}", file=sys.stderr)
    return table


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    cold_rows = [[name, r["loader_calls"], r["p50_ms"], r["p99_ms"], r["errors"]] for name, r in result["cold"].items()]
    hot_rows = [
        [name, r["loads_per_expiry"], r["p99_ms"], r["hit_p99_ms"], r["requests"], r["errors"]]
        for name, r in result["hot"].items()
    ]
    cold_headers = ["contender", "loader calls", "p50 ms", "p99 ms", "errors"]
    hot_headers = ["contender", "loads/expiry", "p99 ms", "hit p99 ms", "requests", "errors"]
    print(
        f"\nCold key: {args.requests} concurrent requests over {args.processes} processes, "
        f"loader {LOADER_SLEEP * 1000:.0f} ms"
    )
    print(format_table(cold_headers, cold_rows))
    print(f"\nHot key: TTL {args.ttl} s, {args.duration} s of steady load over {args.processes} processes")
    print(format_table(hot_headers, hot_rows))
    cl_cold, cl_hot = result["cold"].get("cachelayer"), result["hot"].get("cachelayer")
    checks = []
    if cl_cold:
        checks.append(("1,000 cold requests over 2 processes: exactly 1 loader call", cl_cold["loader_calls"] == 1))
    if cl_hot:
        checks.append(("hot key: <= 1.1 loads per expiry", cl_hot["loads_per_expiry"] <= 1.1))
        checks.append(("hot key: p99 <= 2 x hit p99", cl_hot["p99_ms"] <= 2 * cl_hot["hit_p99_ms"]))
    lines = [
        "# Stampede benchmark",
        "",
        f"Command: `python -m benchmarks.stampede --requests {args.requests} --processes {args.processes}"
        f"{' --quick' if args.quick else ''}`; Redis {REDIS_URL}; loader sleeps {LOADER_SLEEP * 1000:.0f} ms.",
        f"Measured {time.strftime('%Y-%m-%d')}: {json.dumps(environment(['redis', 'aiocache', 'cashews']))}",
        "",
        f"## Cold key ({args.requests} concurrent requests, {args.processes} processes)",
        "",
        markdown_table(cold_headers, cold_rows),
        "",
        f"## Hot key (TTL {args.ttl} s, {args.duration} s of steady load, 20 streams per process)",
        "",
        markdown_table(hot_headers, hot_rows),
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
    parser.add_argument("--only", nargs="*", help="contenders to run (default: every one installed)")
    parser.add_argument("--skip-hot", action="store_true")
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
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(asyncio.run(_worker(args))))
        return 0
    args.duration = args.duration or (6.0 if args.quick else 12.0)
    contenders = args.only or _contenders.available()
    result: dict[str, Any] = {"cold": cold(contenders, args.requests, args.processes)}
    result["hot"] = {} if args.skip_hot else hot(contenders, args.processes, args.duration, args.ttl)
    write_text(RESULTS_DIR / "stampede.md", report(result, args))
    write_json(RESULTS_DIR / "stampede.json", result)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
