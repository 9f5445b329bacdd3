"""Local tier memory under load: does ``local_max_bytes`` bound a worker's memory? (issue 12, item 7)

``python -m benchmarks.local_memory [--requests 100000] [--ids 20000] [--max-bytes 8388608] [--json PATH]
[--results DIR]``

The wallpaper service with ``[cache] local = true``, ``local_max_bytes`` 8 MiB and an entry bound far above it
(so bytes are what binds), 2 workers (uvloop), ``--ids`` wallpapers seeded (every id a real detail entry: ids
above the highest one are answered without any entry since the service bounds what unknown ids cost, so the
"not found" entries this benchmark once filled the tier with no longer exist). About
``--requests`` requests over ``--ids`` detail ids, each drawn at random (wrk, 20 connections). Every figure comes
from one scrape of the service's admin port (``/metrics`` on a free port of its own, ``WALLPAPER_ADMIN__PORT``),
after a warm-up (the baseline) and after the load, each with the load off: whichever worker answers reports every
live worker, gauges one series per worker (``worker`` label, the task id; ``benchmarks/_scrape.py``). Per worker:
its RSS (``process_resident_memory_bytes``, what ``/proc/PID/status`` calls VmRSS) and the local tier's gauges
(``cachelayer_local_entries`` / ``_bytes`` / ``_evictions``). A worker whose ``process_start_time_seconds`` changed
between the two scrapes was restarted: its growth means nothing, and it fails. The load is wrk drawing a random id
per request; ``/readyz`` on the admin port must say ``ok`` first.

Target: every worker's RSS <= its baseline + 1.25 x local_max_bytes.
Writes ``local_memory.{md,json}`` to ``--results`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, environment, format_table, markdown_table, write_json, write_text
from benchmarks._scrape import PUBLISH_S, Sample, by_worker, live_workers, readiness, scrape
from benchmarks.http_load import DEFAULT_WALLPAPERS, _flush_redis, config_text, ensure_seeded, running

WORKERS = 2
GAUGES = ("local_entries", "local_bytes", "local_evictions")  # cachelayer_<name>{cache="wallpaper",worker=...}
RSS = "process_resident_memory_bytes"
STARTED = "process_start_time_seconds"
HEADERS = ["worker", "baseline RSS MiB", "after RSS MiB", "growth MiB", "bound MiB", "entries", "counted MiB",
           "evictions", "verdict"]  # fmt: skip


def per_worker(samples: list[Sample]) -> dict[str, dict[str, float]]:
    """Each worker's figures in one scrape (``worker`` label -> name -> value): ``rss_mib``, ``started`` and the
    local tier's gauges (0 when a worker has none)."""
    rss = by_worker(samples, RSS)
    started = by_worker(samples, STARTED)
    gauges = {name: by_worker(samples, f"cachelayer_{name}", cache="wallpaper") for name in GAUGES}
    return {
        worker: {
            "rss_mib": rss[worker] / 2**20,
            "started": started.get(worker, 0.0),
            **{name: gauges[name].get(worker, 0.0) for name in GAUGES},
        }
        for worker in sorted(rss)
    }


def snapshot(admin: str, workers: int) -> dict[str, dict[str, float]]:
    """:func:`per_worker` of one scrape of the admin port ``admin``, with the load off: after ``PUBLISH_S`` every
    worker's copy of its figures is current. RuntimeError unless it holds ``workers`` live workers."""
    time.sleep(PUBLISH_S + 0.5)
    samples = scrape(admin)
    found = per_worker(samples)
    if live_workers(samples) != workers or len(found) != workers:
        raise RuntimeError(f"the scrape of {admin} holds workers {sorted(found)}, not {workers}")
    return found


def worker_rows(
    baseline: dict[str, dict[str, float]], after: dict[str, dict[str, float]], max_bytes: int
) -> list[dict[str, Any]]:
    """One row per worker of the baseline: its RSS growth against the bound, and its local tier after the load. A
    worker missing after the load, or started again since the baseline, fails."""
    bound_mib = 1.25 * max_bytes / 2**20
    rows = []
    for worker, before in sorted(baseline.items()):
        now = after.get(worker)
        restarted = now is None or now["started"] != before["started"]
        growth = None if now is None else now["rss_mib"] - before["rss_mib"]
        g = now or dict.fromkeys(GAUGES, 0.0)
        rows.append({
            "worker": worker, "baseline_rss_mib": round(before["rss_mib"], 1),
            "after_rss_mib": None if now is None else round(now["rss_mib"], 1),
            "growth_mib": None if growth is None else round(growth, 1), "bound_mib": round(bound_mib, 1),
            "local_entries": int(g["local_entries"]), "local_bytes_mib": round(g["local_bytes"] / 2**20, 2),
            "local_evictions": int(g["local_evictions"]), "restarted": restarted,
            "pass": growth is not None and not restarted and growth <= bound_mib,
        })  # fmt: skip
    return rows


_RANDOM_IDS = """
math.randomseed(%d)
request = function()
  return wrk.format("GET", "/client/v3/wallpaper_4d/wallpaper/" .. math.random(1, %d) .. ".json")
end
"""


def wrk_random_ids(
    base: str, script: Path, requests: int, rate_hint: float, seconds: int | None = None
) -> dict[str, Any]:
    """wrk over random detail ids (each request draws one: h2load would walk one list per connection, so 20
    connections would only ever reach its first entries), for ``seconds`` (default: as long as ``requests``
    take at ``rate_hint``); reports what was really sent."""
    seconds = seconds or max(5, round(requests / max(rate_hint, 1.0)))
    cmd = ["wrk", "-t2", "-c20", f"-d{seconds}s", "--timeout", "5s", "-s", str(script), base]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    total = re.search(r"(\d+) requests in ([0-9.]+)s", out.stdout)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out.stdout)
    return {
        "requests": int(total.group(1)) if total else 0,
        "seconds": float(total.group(2)) if total else None,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,  # 404s: ids past the seeded wallpapers
        "socket_errors": sum(int(x) for x in socket_errors.groups()) if socket_errors else 0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.local_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--ids", type=int, default=20_000)
    parser.add_argument("--max-bytes", type=int, default=8 * 2**20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where local_memory.{md,json} go")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("local_memory: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    rng = random.Random(20261202)
    with tempfile.TemporaryDirectory(prefix="local_memory-") as tmp:
        workdir = Path(tmp)
        database = ensure_seeded(max(DEFAULT_WALLPAPERS, args.ids), workdir)
        config = workdir / "local.toml"
        text = config_text(database, local=True).replace(
            "local = true",
            # max_staleness long: entries stay until the byte bound evicts them (the bound is what is measured)
            f"local = true\nlocal_max_bytes = {args.max_bytes}\nlocal_max_entries = 1000000\nlocal_max_staleness = 60",
        )
        # not_found_ttl long: the 20,000 "not found" entries (~17 MB of them at ~860 bytes each) outlive the run, so
        # the byte bound, not their expiry, is what limits the tier.
        text = text.replace("[cache]", "[cache]\nnot_found_ttl = 600", 1)
        config.write_text(text.replace("access_log = true", "access_log = false"))
        warm_script = workdir / "warm.lua"
        warm_script.write_text(_RANDOM_IDS % (rng.randrange(1 << 30), 200))
        script = workdir / "ids.lua"
        script.write_text(_RANDOM_IDS % (rng.randrange(1 << 30), args.ids))
        _flush_redis()
        with running(config, workdir / "service.log", "uvloop", WORKERS) as server:
            status, ready = readiness(server.admin)
            if status != 200 or ready.get("status") != "ok":
                raise RuntimeError(f"{server.admin}/readyz: {status} {ready}: not every store answers")
            # Code paths loaded, pools open: the baseline is a working process.
            wrk_random_ids(server.base, warm_script, 5 * 2_000, 2_000)
            baseline = snapshot(server.admin, WORKERS)
            load = {"requests": 0, "seconds": 0.0, "non_2xx": 0, "socket_errors": 0}
            for _ in range(40):  # 15 s rounds until --requests were sent (misses are slower than the warm-up)
                if load["requests"] >= args.requests:
                    break
                step = wrk_random_ids(server.base, script, args.requests - load["requests"], 1e9, seconds=15)
                for name in load:
                    load[name] += step[name] or 0
            after = snapshot(server.admin, WORKERS)
        _flush_redis()
    rows = worker_rows(baseline, after, args.max_bytes)
    table = [[r["worker"], r["baseline_rss_mib"], r["after_rss_mib"], r["growth_mib"], r["bound_mib"],
              r["local_entries"], r["local_bytes_mib"], r["local_evictions"],
              ("PASS" if r["pass"] else "FAIL") + (" (restarted)" if r["restarted"] else "")]
             for r in rows]  # fmt: skip
    print(format_table(HEADERS, table))
    print(f"wrk: {load}")
    data = {
        "rows": rows,
        "load": load,
        "requests": args.requests,
        "ids": args.ids,
        "local_max_bytes": args.max_bytes,
        "pass": bool(rows) and all(r["pass"] for r in rows) and load["socket_errors"] == 0,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average": os.getloadavg(),
        "environment": environment(["tornado", "uvloop", "redis"]),
    }
    write_json(args.results / "local_memory.json", data)
    if args.json is not None:
        write_json(args.json, data)
    write_text(
        args.results / "local_memory.md",
        "\n".join([
            "# Local tier memory under load (issue 12, item 7)",
            "",
            f"`python -m benchmarks.local_memory` on {data['date']}: {load['requests']:,} requests over {args.ids:,} "
            f"random detail ids (wrk, 20 connections), `local_max_bytes` {args.max_bytes / 2**20:.0f} MiB, {WORKERS} "
            "workers. Target: RSS growth per worker <= 1.25 x local_max_bytes. Every figure per worker (`worker`: "
            "its task id) from one scrape of the service's admin port after the warm-up and one after the load: RSS "
            "`process_resident_memory_bytes`, the local tier's `cachelayer_local_*` gauges.",
            "",
            markdown_table(HEADERS, table),
            "",
            f"wrk: {load['requests']:,} requests in {load['seconds']} s ({load['non_2xx']:,} of them not 2xx: every "
            f"id is a seeded wallpaper), {load['socket_errors']} socket errors.",
            "",
        ]),
    )  # fmt: skip
    return 0 if data["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
