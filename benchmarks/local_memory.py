"""Local tier memory under load: does ``local_max_bytes`` bound a worker's memory? (issue 12, item 7)

``python -m benchmarks.local_memory [--requests 100000] [--ids 20000] [--max-bytes 8388608] [--json PATH]``

The wallpaper service with ``[cache] local = true``, ``local_max_bytes`` 8 MiB and an entry bound far above it
(so bytes are what binds), 2 workers (uvloop), the http_load data set (40 wallpapers: most of the 20,000 ids are
cached "not found" entries, the smallest entry there is and so the one whose overhead matters most). h2load sends
``--requests`` requests over ``--ids`` detail URIs in random order (20 connections). Each worker's RSS
(``/proc/PID/status``) is read after a warm-up (the baseline) and after the load; the local tier's own figures
come from each worker's ``/metrics``.

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


def detail_path(wallpaper_id: int) -> str:
    return f"/client/v3/wallpaper_4d/wallpaper/{wallpaper_id}.json"


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


def h2load(base: str, uris: Path, requests: int) -> dict[str, Any]:
    cmd = ["h2load", "--h1", "-n", str(requests), "-c", "20", "-i", str(uris), "-B", base]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out.stdout)
    seconds = re.search(r"finished in ([0-9.]+)s", out.stdout)
    return {
        "requests": int(done.group(1)) if done else 0,
        "succeeded": int(done.group(3)) if done else 0,
        "failed": int(done.group(4)) if done else requests,
        "seconds": float(seconds.group(1)) if seconds else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.local_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--ids", type=int, default=20_000)
    parser.add_argument("--max-bytes", type=int, default=8 * 2**20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        print("local_memory: h2load is not installed (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    rng = random.Random(20261202)
    with tempfile.TemporaryDirectory(prefix="local_memory-") as tmp:
        workdir = Path(tmp)
        database = ensure_seeded(DEFAULT_WALLPAPERS, workdir)
        config = workdir / "local.toml"
        text = config_text(database, local=True).replace(
            "local = true", f"local = true\nlocal_max_bytes = {args.max_bytes}\nlocal_max_entries = 1000000"
        )
        config.write_text(text.replace("access_log = true", "access_log = false"))
        ids = list(range(1, args.ids + 1))
        rng.shuffle(ids)
        uris = workdir / "uris.txt"
        uris.write_text("\n".join(detail_path(i) for i in ids) + "\n")
        warm = workdir / "warm.txt"
        warm.write_text("\n".join(detail_path(i) for i in ids[:200]) + "\n")
        _flush_redis()
        with running(config, workdir / "service.log", "uvloop", WORKERS) as server:
            pids = worker_pids(server.proc.pid)
            h2load(server.base, warm, 2_000)  # code paths loaded, pools open: the baseline is a working process
            baseline = {pid: rss_mib(pid) for pid in pids}
            load = h2load(server.base, uris, args.requests)
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
    print(f"h2load: {load}")
    data = {
        "rows": rows,
        "load": load,
        "requests": args.requests,
        "ids": args.ids,
        "local_max_bytes": args.max_bytes,
        "pass": bool(rows) and all(r["pass"] for r in rows) and load["failed"] == 0,
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
            f"`python -m benchmarks.local_memory` on {data['date']}: {args.requests:,} requests over {args.ids:,} "
            f"detail ids (h2load, 20 connections), `local_max_bytes` {args.max_bytes / 2**20:.0f} MiB, {WORKERS} "
            "workers. Target: RSS growth per worker <= 1.25 x local_max_bytes.",
            "",
            markdown_table(HEADERS, table),
            "",
            f"h2load: {load['succeeded']:,} succeeded, {load['failed']} failed in {load['seconds']} s.",
            "",
        ]),
    )  # fmt: skip
    return 0 if data["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
