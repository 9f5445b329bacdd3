"""Redis Cluster faults benchmark (issue 10, item 6; issue 19, parts 3 and 4): what callers see while one shard fails.

    python -m benchmarks.cluster [--quick] [--runs N] [--stress-ng N] [--json PATH] [--results DIR] [--strict]

Starts its own 3-master + 3-replica cluster on free loopback ports (harness/cluster.py; node timeout 2 s,
``cluster-require-full-coverage no``) with a proxy (harness ProxyProcess) in front of one master, reached through
the cluster client's address remapping (``RedisBackend.cluster_from_url(address_remap=...)``). Two worker processes
run the same mixed load in every phase, through the public cachelayer API: 16 callers each, a call every 5 ms per
caller, of which 80 % single-key fetches of ``@cached`` items (each tagged: its value and its tag's stamp live on
two shards, read together), 15 % ``get_many`` of 8 plain values spread over every shard, 5 % tagged writes
(``refresh``: the value and its tag's stamp). The parent goes through the phases:

* ``steady``: nothing happens;
* ``failover`` (``--runs`` times): SIGKILL shard 0's master, wait for its replica's promotion, then start the dead
  node again (it comes back as the new master's replica) and wait until the cluster is settled;
* ``freeze`` (``--runs`` times): SIGSTOP shard 1's master until its replica is promoted, then SIGCONT (it wakes up a
  replica), and wait until settled;
* ``latency``: +300 ms each way to shard 2's master (through its proxy), then back to none;
* ``reshard``: 1,000 slots moved from shard 0's master to shard 1's.

Each phase's row (every run of it together):

* ``ops`` (calls), ``caller_errors`` (exceptions out of the cache), ``wrong_values``, ``over_budget_calls`` (> 2x
  the 0.1 s budget; a miss is several store calls in a row, so not a target), ``extra_loads`` (fetch misses above
  the steady phase's rate), ``loop_lag_p99_ms`` (the workers' own loops; their start-up heap is frozen out of the
  garbage collector after warm-up, as a service does after start-up: else each full collection walks ~50k objects
  of imported modules, 40-90 ms on a loaded 2-core machine);
* ``healthy_shard_hit_ratio``, ``healthy_get_many_item_hit_ratio``: from the fault on, hits over reads (single-key
  fetches; get_many items) of keys that depend on no touched shard (a tagged item depends on its value's shard
  and its stamp's: a stamp that cannot be read is a miss, by design);
* ``healthy_breaker_openings``: breaker openings of the masters the fault does not touch (and of the key-less one);
* ``recovery_s``: from the fault (the latency: its end) to the last miss, error or call over 2x budget on a
  touched key (p99 over the runs);
* ``promotion_s``: from the fault to the replica's promotion (its "Failover election won" log line: Redis's own
  share: node timeout, agreement on the failure, election), median over the runs;
* ``client_recovery_s``: from that promotion to the first hit on the failed shard's keys, in the slower worker
  (the client's share), p99 over the runs (``client_recovery_p50_s``: median); each run's figures are in a table
  of their own;
* ``cluster_slots_calls``, ``command_calls``: topology discoveries the clients made in the phase (served by the
  running nodes): refreshes are throttled, and ``COMMAND`` is loaded once per client, before the phases, so a
  ``command_calls`` above 0 means a client threw its topology away and rediscovered on the request path.

Targets (issue 19), printed as PASS/FAIL lines and kept in the JSON: 0 caller errors, 0 wrong values, 0 healthy
breaker openings, healthy hit ratios >= 0.99, loop lag p99 <= 50 ms in every phase; client recovery <= 0.5 s (p99)
after a failover and after a freeze. ``--strict``: exit 1 when one is missed. ``--stress-ng N`` runs the whole
benchmark beside ``stress-ng --cpu N`` (stopped by its PID), written as ``cluster-stress-ng``.

Results: benchmarks/results/cluster.{md,json,png} (the plot: hit ratio and loads over time, the faults marked).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from benchmarks import _cluster_phases as phases
from benchmarks._cluster_phases import BUDGET, KEYS, LATENCY_S, MANY_KEYS, MANY_SIZE, TASKS, THINK, Op
from benchmarks._common import RESULTS_DIR, cpu_hog, markdown_table, write_json, write_text
from harness import CACHE_CLUSTER_ARGS, ProxyProcess, RedisClusterServer

COLUMNS: Final = ["phase", "runs", "ops", "caller_errors", "wrong_values", "over_budget_calls",
                  "healthy_shard_hit_ratio", "healthy_get_many_item_hit_ratio", "healthy_breaker_openings",
                  "extra_loads", "loop_lag_p99_ms", "recovery_s", "promotion_s", "client_recovery_s",
                  "client_recovery_p50_s", "cluster_slots_calls", "command_calls"]
RUN_COLUMNS: Final = ["phase", "run", "promotion_s", "client_recovery_s", "recovery_s", "loop_lag_p99_ms",
                      "healthy_shard_hit_ratio", "healthy_get_many_item_hit_ratio"]
PHASES: Final = ("steady", "failover", "freeze", "latency", "reshard")
NODE_TIMEOUT_MS: Final = 2000
WORKERS: Final = 2
MAX_LOOP_LAG_MS: Final = 50.0
MIN_HIT_RATIO: Final = 0.99
MAX_CLIENT_RECOVERY_S: Final = 0.5


def targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with the figure it was judged on and whether it holds."""

    def worst(column: str, *, lowest: bool = False, among: Sequence[str] = PHASES) -> Any:
        values = [row[column] for row in rows if row["phase"] in among]
        if any(value is None for value in values):
            return None
        return (min if lowest else max)(values) if values else None

    checks: list[tuple[str, str, Any, Callable[[Any], bool]]] = [
        ("caller_errors", "== 0 in every phase", worst("caller_errors"), lambda v: v == 0),
        ("wrong_values", "== 0 in every phase", worst("wrong_values"), lambda v: v == 0),
        ("healthy_breaker_openings", "== 0 in every phase", worst("healthy_breaker_openings"), lambda v: v == 0),
        ("healthy_shard_hit_ratio", f">= {MIN_HIT_RATIO} in every phase",
         worst("healthy_shard_hit_ratio", lowest=True), lambda v: v >= MIN_HIT_RATIO),
        ("healthy_get_many_item_hit_ratio", f">= {MIN_HIT_RATIO} in every phase",
         worst("healthy_get_many_item_hit_ratio", lowest=True), lambda v: v >= MIN_HIT_RATIO),
        ("loop_lag_p99_ms", f"<= {MAX_LOOP_LAG_MS:g} in every phase", worst("loop_lag_p99_ms"),
         lambda v: v <= MAX_LOOP_LAG_MS),
        ("client_recovery_s", f"<= {MAX_CLIENT_RECOVERY_S} (p99 over the runs) after a failover and a freeze",
         worst("client_recovery_s", among=("failover", "freeze")), lambda v: v <= MAX_CLIENT_RECOVERY_S),
    ]
    return [{"name": name, "target": target, "value": value, "pass": value is not None and bool(holds(value))}
            for name, target, value, holds in checks]


def plot(path: Path, ops: Sequence[Op], t0: float, windows: Sequence[phases.Window]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bucket = 0.5
    reads: dict[int, list[int]] = {}  # bucket -> [hits, reads, fetch misses]
    for op in ops:
        if op[1] == phases.WRITE:
            continue
        tally = reads.setdefault(int((op[0] - t0) / bucket), [0, 0, 0])
        if op[1] == phases.FETCH:
            tally[0] += op[3]
            tally[1] += 1
            tally[2] += 1 - op[3]
        else:
            tally[0] += bin(op[3]).count("1")
            tally[1] += MANY_SIZE
    xs = sorted(reads)
    at = [(x + 0.5) * bucket for x in xs]  # a bucket's middle
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(12, 5))
    top.plot(at, [reads[x][0] / reads[x][1] for x in xs], linewidth=0.8)
    top.set_ylabel("read hit ratio")
    top.set_ylim(0, 1.05)
    bottom.plot(at, [reads[x][2] / bucket for x in xs], linewidth=0.8)
    bottom.set_ylabel("fetch misses / s")
    bottom.set_xlabel("s since start")
    colors = {"failover": "red", "freeze": "blue", "latency": "orange", "reshard": "green"}
    labelled: set[str] = set()
    for window in windows:
        if window.fault_at is None:
            continue
        for axis in (top, bottom):
            axis.axvline(window.fault_at - t0, color=colors[window.phase], linestyle="--", linewidth=0.6)
        if window.phase not in labelled:
            labelled.add(window.phase)
            top.annotate(window.phase, (window.fault_at - t0, 0.05), color=colors[window.phase])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[Op], float, list[phases.Window]]:
    """Start the cluster, the proxy and the workers, go through the phases: the figures, and what the plot needs
    (every call, the start, the phases' windows)."""
    steady, settle, latency, reshard = (3.0, 2.0, 4.0, 6.0) if args.quick else (10.0, 4.0, 10.0, 15.0)
    with RedisClusterServer(node_timeout_ms=NODE_TIMEOUT_MS, extra_args=CACHE_CLUSTER_ARGS) as cluster:
        tmp = cluster.workdir / "ops"
        tmp.mkdir()
        owners = phases.slot_owners(cluster.ports[0])
        proxy = ProxyProcess("slow-master", cluster.masters()[2], log=cluster.workdir / "proxy.log")
        try:
            faults = phases.Faults(cluster, proxy, settle)
            shard_of_port = faults.shard_of_port()
            context = multiprocessing.get_context("spawn")
            ready, start, stop = context.Queue(), context.Event(), context.Event()
            remap = {proxy.target_port: proxy.port}
            workers = [context.Process(target=phases.run_worker,
                                       args=(cluster.url, remap, ready, start, stop, str(tmp / f"w{n}.json")))
                       for n in range(WORKERS)]
            workers.append(context.Process(target=phases.run_idle, args=(ready, start, stop, str(tmp / "idle.json"))))
            for proc in workers:
                proc.start()
            try:
                for _ in workers:  # the workers warm (every key stored once), the idle loop started
                    ready.get(True, 300)
                start.set()
                t0 = time.time()
                time.sleep(1.0)  # every caller started (not measured)
                topology: dict[str, dict[str, int]] = {}
                cluster.topology_calls(reset=True)  # from zero
                faults.steady(steady)
                topology["steady"] = cluster.topology_calls(reset=True)
                for n in range(args.runs):
                    faults.failover(n)
                topology["failover"] = cluster.topology_calls(reset=True)
                for n in range(args.runs):
                    faults.freeze(n)
                topology["freeze"] = cluster.topology_calls(reset=True)
                faults.latency(latency)
                topology["latency"] = cluster.topology_calls(reset=True)
                faults.reshard(1000, reshard)
                topology["reshard"] = cluster.topology_calls(reset=True)
            finally:
                stop.set()
                for proc in workers:
                    proc.join(timeout=120)
                    if proc.is_alive():
                        proc.kill()
        finally:
            proxy.stop()
        results = [json.loads((tmp / f"w{n}.json").read_text()) for n in range(WORKERS)]
        idle = json.loads((tmp / "idle.json").read_text())["lags"]
    per_worker: list[list[Op]] = [sorted(tuple(op) for op in result["ops"]) for result in results]
    ops = sorted(op for worker_ops in per_worker for op in worker_ops)
    lags = sorted((t, lag) for result in results for t, lag in result["lags"])
    events = sorted((t, store, state) for result in results for t, store, state in result["events"])
    failures = sorted((t, store, error) for result in results for t, store, error in result["failures"])
    shard_of_slot = {slot: shard_of_port[port] for slot, port in owners.items()}
    keys = phases.Keyspace.of(results[0]["slots"], shard_of_slot)

    def shard_of_store(store: str) -> int | None:
        if not store.startswith("Redis Cluster node "):
            return None
        return shard_of_port.get(int(store.rsplit(":", 1)[1]))

    windows = faults.windows
    steady_window = windows[0]
    steady_misses = len([op for op in phases.ops_between(ops, steady_window.start, steady_window.end)
                         if op[1] == phases.FETCH and not op[3]])
    steady_rate = steady_misses / (steady_window.end - steady_window.start)
    rows = []
    for phase in PHASES:
        row = phases.summarize(phase, windows, ops, per_worker, lags, events, shard_of_store, keys, steady_rate)
        row["cluster_slots_calls"] = topology[phase]["cluster|slots"]
        row["command_calls"] = topology[phase]["command"]
        rows.append({column: row[column] for column in COLUMNS})
    pauses = [pause for result in results for _, pause in result["gc"]]
    idle_p99 = {}
    for phase in PHASES:
        values = [lag for w in windows if w.phase == phase for t, lag in idle if w.start <= t < w.end]
        idle_p99[phase] = round(phases.percentile(values, 0.99) or 0.0, 1)
    result = {
        "rows": rows,
        "runs": phases.run_rows(windows, ops, per_worker, keys, lags),
        "targets": targets(rows),
        "healthy_breaker_openings": phases.healthy_openings(windows, events, shard_of_store),
        # every failed call on a master the fault did not touch (the first 200): what the hit ratios lost
        "healthy_failures": phases.healthy_failures(windows, failures, shard_of_store)[:200],
        "idle_loop_lag_p99_ms": idle_p99,
        # the workers' full garbage collections (their start-up heap frozen after warm-up): how many, the longest
        "full_gc": {"count": len(pauses), "longest_ms": round(max(pauses, default=0.0), 1)},
        "clients": [result["client"] for result in results],
        "settings": {"quick": args.quick, "runs": args.runs, "stress_ng_cpu": args.stress_ng, "budget_s": BUDGET,
                     "node_timeout_ms": NODE_TIMEOUT_MS, "latency_each_way_s": LATENCY_S, "settle_s": settle},
    }
    return result, ops, t0, windows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke run)")
    parser.add_argument("--runs", type=int, default=10, help="failovers and freezes, each (default 10)")
    parser.add_argument("--stress-ng", type=int, default=0, metavar="N",
                        help="run beside stress-ng --cpu N; results named cluster-stress-ng")
    parser.add_argument("--json", type=Path, default=None, help="default: RESULTS/<name>.json")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where <name>.md / <name>.png go")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    name = "cluster-stress-ng" if args.stress_ng else "cluster"
    with cpu_hog(args.stress_ng):
        result, ops, t0, windows = run(args)
    rows, runs, checks = result["rows"], result["runs"], result["targets"]
    table = markdown_table(COLUMNS, [[row[c] for c in COLUMNS] for row in rows])
    run_table = markdown_table(RUN_COLUMNS, [[row[c] for c in RUN_COLUMNS] for row in runs])
    verdicts = [f"{'PASS' if check['pass'] else 'FAIL'} {check['name']} {check['target']}: {check['value']}"
                for check in checks]
    context_line = (
        f"{TASKS} callers x {WORKERS} processes, {THINK * 1000:.0f} ms think time; 80 % fetches of {KEYS} tagged "
        f"items, 15 % get_many of {MANY_SIZE} of {MANY_KEYS} names, 5 % tagged writes; budget {BUDGET * 1000:.0f} "
        f"ms, node timeout {NODE_TIMEOUT_MS} ms, cluster-require-full-coverage no; {args.runs} failover and "
        f"{args.runs} freeze runs; latency +{LATENCY_S * 1000:.0f} ms each way"
        + (f"; beside stress-ng --cpu {args.stress_ng}" if args.stress_ng else "")
        + ". Loop lag of an idle asyncio loop in a third process, same run (p99 ms): "
        + ", ".join(f"{phase} {value}" for phase, value in result["idle_loop_lag_p99_ms"].items())
        + f". The workers' start-up heap is frozen out of the garbage collector after warm-up (gc.freeze()); their "
        f"full collections: {result['full_gc']['count']}, the longest {result['full_gc']['longest_ms']} ms."
    )
    print(table)
    print()
    print(run_table)
    print()
    print(context_line)
    print("\n".join(verdicts))
    write_json(args.json or args.results / f"{name}.json", result)
    command = " ".join(["python -m benchmarks.cluster", *(["--quick"] if args.quick else []),
                        *([f"--runs {args.runs}"] if args.runs != 10 else []),
                        *([f"--stress-ng {args.stress_ng}"] if args.stress_ng else [])])
    write_text(args.results / f"{name}.md",
               f"# Redis Cluster faults ({command})\n\n{table}\n\nPer run:\n\n{run_table}\n\n{context_line}\n\n"
               + "\n".join(f"- {line}" for line in verdicts) + "\n")
    plot(args.results / f"{name}.png", ops, t0, windows)
    return 1 if args.strict and not all(check["pass"] for check in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
