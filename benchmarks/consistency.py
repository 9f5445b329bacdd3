"""Consistency of the real Cache under every interleaving we can afford (issue 16, part 3).

    python -m benchmarks.consistency --quick --json FILE   # CI: exhaustive small configs, 10^5 memory universes,
                                                           # 10^4 on Redis and on a Redis Cluster
    python -m benchmarks.consistency                       # 10^6 random universes on each backend

Each universe runs real :class:`cachelayer.Cache` instances ("processes") over one store under the harness's
scheduler (``harness/consistency``): readers, writers and chaos actors, a version per write, and an oracle. Rows:
backend, universes, stale_sets, stale_at_end, stale_reads_after_invalidate, revoked_fills, and how many of the
mutants (wrong fill rules the harness must catch) some universe caught. Target: 0 / 0 / 0 and every mutant caught.
The same seeds on memory and on Redis must give identical counters (the differential check, reported).
Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, environment, format_table, markdown_table, write_json, write_text
from harness import CACHE_CLUSTER_ARGS, RedisClusterServer
from harness.consistency.explore import run_batch
from harness.consistency.mutants import MUTANTS
from harness.consistency.oracle import Counters

REDIS_URL = os.environ.get("CONSISTENCY_REDIS_URL", "redis://127.0.0.1:6379/14")
HEADERS = ("backend", "universes", "stale_sets", "stale_at_end", "stale_reads_after_invalidate", "revoked_fills",
           "mutants_caught/mutants", "stuck", "errors", "seconds")  # fmt: skip


def _batches(first: int, count: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(first, first + count, size):
        yield start, min(size, first + count - start)


def _run_jobs(jobs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    if workers <= 1 or len(jobs) <= 1:
        return [run_batch(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers, initializer=_quiet) as pool:
        return list(pool.map(run_batch, jobs))


def _quiet() -> None:
    logging.getLogger("cachelayer").setLevel(logging.CRITICAL)  # fail-open warnings are the point of chaos


def sources_digest() -> str:
    """What a checkpoint's universes ran: the library's and the harness's sources."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted([*(root / "cachelayer").rglob("*.py"), *(root / "harness").rglob("*.py")]):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class Checkpoint:
    """Finished batches, one JSON line each, so a run of hours survives a stop: ``--checkpoint FILE`` again
    skips what the file holds. Lines from other sources are refused, never mixed in."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._sources = sources_digest()
        self.done: dict[tuple[str, int, int], dict[str, Any]] = {}
        if path is None or not path.exists():
            return
        for number, line in enumerate(path.read_text().splitlines(), 1):
            entry = json.loads(line)
            if entry["sources"] != self._sources:
                raise SystemExit(f"{path}:{number} was written by other sources ({entry['sources']}, these are "
                                 f"{self._sources}): start a new checkpoint file")  # fmt: skip
            self.done[(entry["backend"], entry["first"], entry["count"])] = entry["counters"]

    def record(self, backend: str, first: int, count: int, counters: dict[str, Any]) -> None:
        self.done[(backend, first, count)] = counters
        if self._path is None:
            return
        line = {"sources": self._sources, "backend": backend, "first": first, "count": count, "counters": counters}
        with self._path.open("a") as out:
            out.write(json.dumps(line) + "\n")


def random_universes(store: str, url: str | None, count: int, workers: int,
                     checkpoint: Checkpoint | None = None) -> tuple[Counters, float]:  # fmt: skip
    started = time.perf_counter()
    checkpoint = checkpoint or Checkpoint(None)
    size = max(1, min(5_000, -(-count // max(1, workers))))
    batches = list(_batches(0, count, size))
    todo = [(first, n) for first, n in batches if (store, first, n) not in checkpoint.done]
    jobs: list[dict[str, Any]] = [{"store": store, "url": url, "mode": "random", "first": first, "count": n}
                                  for first, n in todo]  # fmt: skip
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            checkpoint.record(store, job["first"], job["count"], run_batch(job)["counters"])
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_quiet) as pool:
            futures = {pool.submit(run_batch, job): job for job in jobs}
            for future in as_completed(futures):
                job = futures[future]
                checkpoint.record(store, job["first"], job["count"], future.result()["counters"])
                finished = sum(1 for key in checkpoint.done if key[0] == store)
                print(f"{store}: {finished}/{len(batches)} batches", file=sys.stderr, flush=True)
    total = Counters()
    for first, n in batches:
        total += Counters(**checkpoint.done[(store, first, n)])
    return total, time.perf_counter() - started


def exhaustive(store: str, url: str | None) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = run_batch({"store": store, "url": url, "mode": "exhaustive"})["exhaustive"]
    return runs


def hunt_mutants(store: str, url: str | None, count: int, workers: int) -> dict[str, dict[str, Any]]:
    jobs = [{"store": store, "url": url, "mode": "mutant", "mutant": kind, "count": count} for kind in MUTANTS]
    return dict(zip(MUTANTS, _run_jobs(jobs, workers), strict=True))


def differential(url: str, count: int) -> dict[str, Any]:
    """The same seeds on memory and on Redis: how many universes' counters differ."""
    memory = run_batch({"store": "memory", "mode": "differential", "first": 0, "count": count})["per_seed"]
    redis = run_batch({"store": "redis", "url": url, "mode": "differential", "first": 0, "count": count})["per_seed"]
    differing = [seed for seed, (a, b) in enumerate(zip(memory, redis, strict=True)) if a != b]
    return {"universes": count, "differing": len(differing), "first_differing_seeds": differing[:10]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="the CI run: 10^5 memory, 10^4 Redis and Cluster")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "consistency.json")
    parser.add_argument("--markdown", type=Path, default=RESULTS_DIR / "consistency.md")
    parser.add_argument("--memory", type=int, help="random universes on memory (default 10^5 quick, 10^6 full)")
    parser.add_argument("--redis", type=int, help="random universes on Redis (default 10^4 quick, 10^6 full)")
    parser.add_argument("--cluster", type=int, help="random universes on a Cluster (default as --redis)")
    parser.add_argument("--mutant-universes", type=int, default=20_000, help="random universes per mutant hunt")
    parser.add_argument("--differential", type=int, default=2_000, help="seeds run on both memory and Redis")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--checkpoint", type=Path, help="keep finished batches here; run again to resume")
    args = parser.parse_args(argv)
    _quiet()
    checkpoint = Checkpoint(args.checkpoint)
    memory_count = args.memory if args.memory is not None else (10**5 if args.quick else 10**6)
    redis_count = args.redis if args.redis is not None else (10**4 if args.quick else 10**6)
    cluster_count = args.cluster if args.cluster is not None else redis_count
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {"quick": args.quick, "environment": environment(["redis"])}
    small = exhaustive("memory", None)
    report["exhaustive"] = small
    print(format_table(("config", "schedules", "complete", "preemption bound", "stale"),
                       [(r["name"], r["schedules"], r["complete"], r["bound"] or "-",
                         Counters(**r["counters"]).stale) for r in small]))  # fmt: skip
    exhaustive_total = Counters()
    for run in small:
        exhaustive_total += Counters(**run["counters"])
    with ExitStack() as stack:
        backends: list[tuple[str, str | None, int]] = [("memory", None, memory_count)]
        if redis_count:
            backends.append(("redis", args.redis_url, redis_count))
        if cluster_count:
            cluster = stack.enter_context(RedisClusterServer(extra_args=CACHE_CLUSTER_ARGS))
            backends.append(("cluster", cluster.url, cluster_count))
        mutants_report: dict[str, Any] = {}
        for name, url, count in backends:
            counters, seconds = random_universes(name, url, count, args.workers, checkpoint)
            if name == "memory":
                counters += exhaustive_total
            mutants = hunt_mutants(name, url, args.mutant_universes, args.workers)
            mutants_report[name] = mutants
            caught = sum(m["caught"] for m in mutants.values())
            row = {"backend": name, **counters.as_dict(), "mutants_caught": caught, "mutants": len(MUTANTS),
                   "seconds": round(seconds, 1)}  # fmt: skip
            rows.append(row)
            print(f"{name}: {counters.universes} universes in {seconds:.0f} s; stale {counters.stale}; "
                  f"mutants caught {caught}/{len(MUTANTS)}", flush=True)  # fmt: skip
        report["mutants"] = mutants_report
        if redis_count and args.differential:
            report["differential"] = differential(args.redis_url, args.differential)
    table = [(r["backend"], r["universes"], r["stale_sets"], r["stale_at_end"], r["stale_reads_after_invalidate"],
              r["revoked_fills"], f"{r['mutants_caught']}/{r['mutants']}", r["stuck"], r["errors"], r["seconds"])
             for r in rows]  # fmt: skip
    print(format_table(HEADERS, table))
    report["rows"] = rows
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    ok = all(r["stale_sets"] == r["stale_at_end"] == r["stale_reads_after_invalidate"] == 0 for r in rows) and all(
        r["mutants_caught"] == r["mutants"] for r in rows
    )
    report["targets_met"] = ok
    write_json(args.json, report)
    diff = report.get("differential")
    lines = [
        f"# Consistency (python -m benchmarks.consistency{' --quick' if args.quick else ''})",
        "",
        "Random universes per backend (memory includes the exhaustive small configurations), and the mutants each",
        "backend's universes caught. Target: 0 / 0 / 0 and every mutant caught.",
        "",
        markdown_table(HEADERS, table),
        "",
        "Exhaustive small configurations (memory):",
        "",
        markdown_table(("config", "schedules", "complete", "preemption bound", "stale"),
                       [(r["name"], r["schedules"], r["complete"], r["bound"] or "-",
                         Counters(**r["counters"]).stale) for r in small]),
        "",
    ]
    if diff is not None:
        lines.append(f"Differential check: {diff['universes']} seeds on memory and on Redis, "
                     f"{diff['differing']} with different counters.")  # fmt: skip
    lines.append(f"Wall time {report['wall_seconds']} s on {args.workers} workers.")
    write_text(args.markdown, "\n".join(lines))
    print(f"targets {'met' if ok else 'MISSED'}; wall time {report['wall_seconds']} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
