"""Local tier memory under load: does ``local_max_bytes`` bound a worker's memory? (issue 12, item 7)

``python -m benchmarks.local_memory [--requests 100000] [--ids 20000] [--max-bytes 8388608] [--json PATH]``

The wallpaper service with ``[cache] local = true``, ``local_max_bytes`` 8 MiB and an entry bound far above it
(so bytes are what binds), 2 workers (uvloop), the http_load data set (40 wallpapers: most of the 20,000 ids are
cached "not found" entries, the smallest entry there is and so the one whose overhead matters most). About
``--requests`` requests over ``--ids`` detail ids, each drawn at random (wrk, 20 connections). Each worker's RSS
(``/proc/PID/status``) is read after a warm-up (the baseline) and after the load; the local tier's own figures
come from each worker's ``/metrics``. The load is wrk drawing a random id per request.

Target: every worker's RSS <= its baseline + 1.25 x local_max_bytes.
Writes ``benchmarks/results/local_memory.{md,json}``.
"""

from __future__ import annotations

import argparse
import http.client
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
from benchmarks.http_load import DEFAULT_WALLPAPERS, _flush_redis, config_text, ensure_seeded, running

WORKERS = 2
GAUGES = ("local_entries", "local_bytes", "local_evictions")
HEADERS = ["worker", "baseline RSS MiB", "after RSS MiB", "growth MiB", "bound MiB", "entries", "counted MiB",
           "evictions", "verdict"]  # fmt: skip


def worker_pids(parent: int) -> list[int]:
    """The forked workers: the server process's children (tornado.process.fork_processes)."""
    children = Path(f"/proc/{parent}/task/{parent}/children")
    if children.exists():
        return [int(pid) for pid in children.read_text().split()]
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.parent.name))
    return pids


def rss_mib(pid: int) -> float:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else 0.0


def gauges_by_worker(port: int, workers: int) -> dict[int, dict[str, float]]:
    """Each worker's local-tier gauges, one keep-alive connection per worker (told apart by /healthz's pid)."""
    found: dict[int, dict[str, float]] = {}
    for _ in range(80):
        if len(found) >= workers:
            break
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            body = conn.getresponse().read().decode()
            match = re.search(r'"pid":\s*(\d+)', body)
            pid = int(match.group(1)) if match else 0
            if not pid or pid in found:
                continue
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
            found[pid] = {name: _gauge(text, name) for name in GAUGES}
        finally:
            conn.close()
    return found


def _gauge(text: str, name: str) -> float:
    match = re.search(rf"^cachelayer_{name}\{{[^}}]*\}}\s+([0-9.e+]+)", text, re.M)
    return float(match.group(1)) if match else 0.0


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
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("local_memory: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    rng = random.Random(20261202)
    with tempfile.TemporaryDirectory(prefix="local_memory-") as tmp:
        workdir = Path(tmp)
        database = ensure_seeded(DEFAULT_WALLPAPERS, workdir)
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
            pids = worker_pids(server.proc.pid)
            # Code paths loaded, pools open: the baseline is a working process.
            wrk_random_ids(server.base, warm_script, 5 * 2_000, 2_000)
            baseline = {pid: rss_mib(pid) for pid in pids}
            load = {"requests": 0, "seconds": 0.0, "non_2xx": 0, "socket_errors": 0}
            for _ in range(40):  # 15 s rounds until --requests were sent (misses are slower than the warm-up)
                if load["requests"] >= args.requests:
                    break
                step = wrk_random_ids(server.base, script, args.requests - load["requests"], 1e9, seconds=15)
                for name in load:
                    load[name] += step[name] or 0
            after = {pid: rss_mib(pid) for pid in pids}
            gauges = gauges_by_worker(server.port, WORKERS)
        _flush_redis()
    bound_mib = 1.25 * args.max_bytes / 2**20
    rows = []
    for pid in pids:
        g = gauges.get(pid, dict.fromkeys(GAUGES, 0.0))
        growth = after[pid] - baseline[pid]
        rows.append({
            "worker": pid, "baseline_rss_mib": round(baseline[pid], 1), "after_rss_mib": round(after[pid], 1),
            "growth_mib": round(growth, 1), "bound_mib": round(bound_mib, 1), "local_entries": int(g["local_entries"]),
            "local_bytes_mib": round(g["local_bytes"] / 2**20, 2), "local_evictions": int(g["local_evictions"]),
            "pass": growth <= bound_mib,
        })  # fmt: skip
    table = [[r["worker"], r["baseline_rss_mib"], r["after_rss_mib"], r["growth_mib"], r["bound_mib"],
              r["local_entries"], r["local_bytes_mib"], r["local_evictions"], "PASS" if r["pass"] else "FAIL"]
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
    write_json(RESULTS_DIR / "local_memory.json", data)
    if args.json is not None:
        write_json(args.json, data)
    write_text(
        RESULTS_DIR / "local_memory.md",
        "\n".join([
            "# Local tier memory under load (issue 12, item 7)",
            "",
            f"`python -m benchmarks.local_memory` on {data['date']}: {load['requests']:,} requests over {args.ids:,} "
            f"random detail ids (wrk, 20 connections), `local_max_bytes` {args.max_bytes / 2**20:.0f} MiB, {WORKERS} "
            "workers. Target: RSS growth per worker <= 1.25 x local_max_bytes.",
            "",
            markdown_table(HEADERS, table),
            "",
            f"wrk: {load['requests']:,} requests in {load['seconds']} s ({load['non_2xx']:,} of them 404: ids past "
            f"the 40 wallpapers are cached \"not found\" entries), {load['socket_errors']} socket errors.",
            "",
        ]),
    )  # fmt: skip
    return 0 if data["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
