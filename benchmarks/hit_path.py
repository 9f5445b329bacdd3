"""What a cache hit costs: microseconds per hit of a 20-item page (~7 KB of JSON).

``python -m benchmarks.hit_path [--quick] [--json PATH]``

The floor is a raw ``GET`` of the same page stored as plain orjson bytes plus ``orjson.loads``, on the same Redis
and the same kind of client (redis.asyncio over a bounded pool). Every contender is timed in alternating rounds
against that floor (see ``benchmarks._common.compare``'s reasoning), sequential calls on one event loop, so the
figure is CPU per hit, not throughput under concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio

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
from cachelayer import Cache
from service.demo_data import medium_page

REDIS_URL = BENCH_REDIS_URL
PACKAGES = ["redis", "orjson", "zstandard", "aiocache", "cashews"]


async def _per_call_us(fn: Callable[[], Awaitable[Any]], number: int) -> float:
    started = time.perf_counter()
    for _ in range(number):
        await fn()
    return (time.perf_counter() - started) / number * 1e6


async def measure(rounds: int, number: int) -> dict[str, float]:
    page = medium_page(0)
    raw_client = redis.asyncio.Redis(
        connection_pool=redis.asyncio.BlockingConnectionPool.from_url(REDIS_URL, max_connections=64)
    )
    await raw_client.flushdb()
    await raw_client.set("raw:page", orjson.dumps(page))

    async def raw() -> Any:
        return orjson.loads(await raw_client.get("raw:page"))  # type: ignore[arg-type]

    async def loader(item: int) -> Any:
        return page

    contenders: dict[str, Callable[[], Awaitable[Any]]] = {}
    closers = []
    for name in _contenders.available():
        fetch, close = _contenders.build(name, REDIS_URL, f"hit-{name}", 3600, loader)
        if name in ("aiocache.cached_stampede", "cashews.cache(lock=True)", "cashews.locked"):
            await close()
            continue  # same hit path as their plain decorators
        await fetch(1)
        contenders[name] = lambda fetch=fetch: fetch(1)  # type: ignore[misc]
        closers.append(close)
    manager = Cache.from_url(REDIS_URL, namespace="hit-get", max_connections=64)
    await manager.set("page", page, ttl=3600)
    contenders["cachelayer.get"] = lambda: manager.get("page")
    for fn in contenders.values():
        assert await fn() == page

    samples: dict[str, list[float]] = {name: [] for name in ["raw", *contenders]}
    ratios: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            base = await _per_call_us(raw, number)
            cost = await _per_call_us(fn, number)
            samples["raw"].append(base)
            samples[name].append(cost)
            ratios[name].append(cost / base)
    for close in closers:
        await close()
    await manager.aclose()
    await raw_client.flushdb()
    await raw_client.aclose()
    result = {"raw_us": round(statistics.median(samples["raw"]), 1)}
    names = {
        "cachelayer": "cachelayer_us",
        "cachelayer.get": "cachelayer_get_us",
        "aiocache.cached": "aiocache_us",
        "cashews.cache": "cashews_us",
    }
    for name, field in names.items():
        if name in samples:
            result[field] = round(statistics.median(samples[name]), 1)
            result[field.replace("_us", "_ratio")] = round(statistics.median(ratios[name]), 3)
    return result


def report(result: dict[str, float], args: argparse.Namespace) -> str:
    rows = [["raw GET + orjson.loads", result["raw_us"], 1.0]]
    for label, field in [
        ("cachelayer @cached", "cachelayer"),
        ("cachelayer Cache.get", "cachelayer_get"),
        ("aiocache @cached", "aiocache"),
        ("cashews @cache", "cashews"),
    ]:
        if f"{field}_us" in result:
            rows.append([label, result[f"{field}_us"], result[f"{field}_ratio"]])
    headers = ["path", "us per hit", "x raw"]
    print(format_table(headers, rows))
    cl = result.get("cachelayer_ratio", float("inf"))
    checks = [(f"@cached hit <= 1.25 x raw GET + orjson.loads ({cl:.2f})", cl <= 1.25)]
    for peer in ("aiocache", "cashews"):
        if f"{peer}_us" in result:
            checks.append((f"@cached hit cheaper than a {peer} hit", result["cachelayer_us"] < result[f"{peer}_us"]))
    return "\n".join(
        [
            "# Hit path benchmark",
            "",
            f"Command: `python -m benchmarks.hit_path{' --quick' if args.quick else ''}`. A 20-item page "
            f"(`service.demo_data.medium_page`, {len(orjson.dumps(medium_page(0)))} bytes of JSON), sequential hits "
            "on one asyncio loop, Redis on loopback; ratios are medians of per-round ratios against the raw floor.",
            f"Measured {time.strftime('%Y-%m-%d')}: `{orjson.dumps(environment(PACKAGES)).decode()}`",
            "",
            markdown_table(headers, rows),
            "",
            "## Targets",
            "",
            *[f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks],
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hit_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, metavar="PATH")
    args = parser.parse_args(argv)
    rounds, number = (5, 300) if args.quick else (15, 1000)
    result = asyncio.run(measure(rounds, number))
    write_text(RESULTS_DIR / "hit_path.md", report(result, args))
    write_json(RESULTS_DIR / "hit_path.json", result)
    if args.json:
        write_json(args.json, result)
    print(result, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
