"""Redis Cluster failover benchmark (issue 10, item 6): what callers see while one shard fails.

    python -m benchmarks.cluster [--quick] [--json PATH]

Starts its own 3-master + 3-replica cluster on free loopback ports (harness/cluster.py), then two worker processes
run a steady mixed load of ``@cached`` reads (and ``refresh`` writes) through the public cachelayer API, while
the parent goes through three phases: steady, failover (SIGKILL one master), reshard (move 1,000 slots from one
master to another). Each row:

* ``ops``, ``caller_errors`` (exceptions out of the cache), ``wrong_values``, ``over_budget_calls`` (> 2x the
  0.1 s budget), ``extra_loads`` (loader calls above the steady phase's rate), ``loop_lag_p99_ms``;
* ``healthy_shard_hit_ratio``: hits over reads of keys whose master the fault did not touch;
* ``recovery_s``: from the fault to the last miss / error / over-budget read of the touched shard's keys;
  ``promotion_s`` (failover): from the kill until the cluster itself reports the replica promoted (Redis's own
  share: node timeout, agreement on the failure, election), so ``recovery_s - promotion_s`` is the client's;
* ``cluster_slots_calls``, ``command_calls``: topology discoveries the clients made in the phase (served by the
  running nodes): refreshes are throttled, and ``COMMAND`` is loaded once per client, before the phases, so a
  ``command_calls`` above 0 means a client threw its topology away and rediscovered on the request path.

Writes are tagged (``SET`` plus the tag's ``SADD``/``EXPIRE``: a pipeline across shards), so the failover phase also
exercises pipelines that meet the dead master.

Results: benchmarks/results/cluster.{md,json,png} (the plot: hit ratio and loads over time around the faults).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from benchmarks._common import RESULTS_DIR, markdown_table, write_json, write_text
from harness import RedisClusterServer

BUDGET = 0.1
KEYS = 400
TASKS = 16  # callers per worker process
THINK = 0.005  # seconds between one caller's calls: a steady load, not a CPU saturation test
COLUMNS = ["phase", "ops", "caller_errors", "wrong_values", "over_budget_calls", "healthy_shard_hit_ratio",
           "extra_loads", "loop_lag_p99_ms", "recovery_s", "promotion_s", "cluster_slots_calls", "command_calls"]


def make_cache(cluster_url: str, redis_url: str, namespace: str) -> Any:
    """The new ``redis+cluster://`` form, or today's ``cluster=True`` with a ``redis://`` URL."""
    from cachelayer import Cache

    try:
        return Cache.from_url(cluster_url, namespace=namespace, timeout=BUDGET)
    except (ValueError, TypeError):
        return Cache.from_url(redis_url, cluster=True, namespace=namespace, timeout=BUDGET)


def slot_owners(port: int) -> dict[int, int]:
    """slot -> master port, from CLUSTER SLOTS."""
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as conn:
        ranges = conn.execute_command("CLUSTER SLOTS")
    owners: dict[int, int] = {}
    for entry in ranges:  # redis-py parses it to {(low, high): {"primary": (host, port), ...}}
        if isinstance(ranges, dict):
            (low, high), info = entry, ranges[entry]
            master = int(info["primary"][1])
        else:
            low, high, master = int(entry[0]), int(entry[1]), int(entry[2][1])
        for slot in range(low, high + 1):
            owners[slot] = master
    return owners


async def worker_main(cluster_url: str, redis_url: str, start_port: int, ready: Any, go: Any) -> dict[str, Any]:
    from cachelayer import cached

    cache = make_cache(cluster_url, redis_url, "bench-cluster")
    if hasattr(cache, "connect"):
        await cache.connect()
    loads = 0

    @cached(ttl=600, cache=cache, tags=("item:{i}",), exclude=["loads"])  # a counter, not part of the result
    async def item(i: int) -> int:
        nonlocal loads
        loads += 1
        return i * 7

    owners = slot_owners(start_port)
    owner_of = [owners.get(key_slot(item.key(i).encode()), 0) for i in range(KEYS)]
    # Warm-up: every key stored (or found) once, so the steady phase measures a warm cache.
    for i in range(KEYS):
        await item(i)
    ready.put("warm")
    end_at: float = await asyncio.to_thread(go.get, True, 300)
    ops: list[tuple[float, int, int, float, int, int]] = []  # t, owner, hit, elapsed, error, wrong
    lags: list[tuple[float, float]] = []

    async def lag() -> None:
        while time.time() < end_at:
            began = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append((time.time(), (time.perf_counter() - began - 0.01) * 1000))

    async def load(seed: int) -> None:
        n = seed
        while time.time() < end_at:
            n = (n * 1103515245 + 12345) % 2**31
            i = n % KEYS
            write = n % 20 == 0
            began = time.perf_counter()
            error = wrong = hit = 0
            try:
                if write:
                    value = await item.refresh(i)
                else:
                    entry = await item.entry(i)
                    value, hit = entry.value(), int(entry.outcome == "hit")
                wrong = int(value != i * 7)
            except Exception:  # a caller error: what the cache promises never happens
                error = 1
            elapsed = time.perf_counter() - began
            if not write:
                ops.append((time.time(), owner_of[i], hit, elapsed, error, wrong))
            await asyncio.sleep(THINK)

    await asyncio.gather(lag(), *(load(seed) for seed in range(1, TASKS + 1)))
    await cache.aclose()
    return {"ops": ops, "lags": lags, "loads": loads}


async def idle_loop_lag(end_at: float) -> list[tuple[float, float]]:
    """The lateness of a 10 ms timer on an otherwise idle loop: what the machine alone costs a loop."""
    lags: list[tuple[float, float]] = []
    while time.time() < end_at:
        began = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append((time.time(), (time.perf_counter() - began - 0.01) * 1000))
    return lags


def run_idle(ready: Any, go: Any, out: str) -> None:
    ready.put("idle")
    end_at = go.get(True, 300)
    Path(out).write_text(json.dumps({"lags": asyncio.run(idle_loop_lag(end_at))}))


def run_worker(cluster_url: str, redis_url: str, start_port: int, ready: Any, go: Any, out: str) -> None:
    result = asyncio.run(worker_main(cluster_url, redis_url, start_port, ready, go))
    Path(out).write_text(json.dumps(result))


def summarize(phase: str, ops: list[list[float]], lags: list[list[float]], start: float, end: float,
              fault_at: float | None, touched: set[int], steady_load_rate: float) -> dict[str, Any]:
    window = [op for op in ops if start <= op[0] < end]
    after_fault = [op for op in window if fault_at is None or op[0] >= fault_at]
    healthy = [op for op in after_fault if int(op[1]) not in touched]
    misses = len([op for op in window if not op[2]])
    lag_values = sorted(value for t, value in lags if start <= t < end) or [0.0]
    bad_touched = [op[0] for op in after_fault if int(op[1]) in touched and (not op[2] or op[4] or op[3] > 2 * BUDGET)]
    return {
        "phase": phase,
        "ops": len(window),
        "caller_errors": int(sum(op[4] for op in window)),
        "wrong_values": int(sum(op[5] for op in window)),
        "over_budget_calls": len([op for op in window if op[3] > 2 * BUDGET]),
        "healthy_shard_hit_ratio": round(sum(op[2] for op in healthy) / len(healthy), 4) if healthy else None,
        "extra_loads": max(0, round(misses - steady_load_rate * (end - start))),
        "loop_lag_p99_ms": round(lag_values[int(len(lag_values) * 0.99) - 1 if len(lag_values) > 1 else 0], 1),
        "recovery_s": round(max(bad_touched) - fault_at, 2) if fault_at is not None and bad_touched else 0.0,
    }


def plot(path: Path, ops: list[list[float]], t0: float, marks: list[tuple[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bucket = 0.5
    times: dict[int, list[list[float]]] = {}
    for op in ops:
        times.setdefault(int((op[0] - t0) / bucket), []).append(op)
    xs = sorted(times)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 5))
    top.plot([x * bucket for x in xs], [sum(o[2] for o in times[x]) / len(times[x]) for x in xs])
    top.set_ylabel("hit ratio")
    top.set_ylim(0, 1.05)
    bottom.plot([x * bucket for x in xs], [len([o for o in times[x] if not o[2]]) / bucket for x in xs])
    bottom.set_ylabel("loads / s")
    bottom.set_xlabel("s since start")
    for label, at in marks:
        for axis in (top, bottom):
            axis.axvline(at - t0, color="red", linestyle="--")
        top.annotate(label, (at - t0, 0.05))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def p99(values: list[float]) -> float:
    ordered = sorted(values) or [0.0]
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke run)")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "cluster.json")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where cluster.md / cluster.png go")
    args = parser.parse_args(argv)
    steady, fault_phase = (3.0, 8.0) if args.quick else (10.0, 15.0)
    node_timeout_ms = 2000
    with RedisClusterServer(node_timeout_ms=node_timeout_ms,
                            extra_args=("--cluster-require-full-coverage", "no")) as cluster:
        tmp = cluster.workdir / "ops"
        tmp.mkdir()
        context = multiprocessing.get_context("spawn")
        ready = context.Queue()
        gos = [context.Queue() for _ in range(3)]
        workers = [context.Process(target=run_worker, args=(cluster.url, cluster.redis_url, cluster.ports[0],
                                                              ready, gos[n], str(tmp / f"w{n}.json")))
                   for n in range(2)]
        workers.append(context.Process(target=run_idle, args=(ready, gos[2], str(tmp / "idle.json"))))
        for proc in workers:
            proc.start()
        for _ in workers:  # both workers warm (every key stored once), the idle loop started
            ready.get(True, 300)
        t0 = time.time()
        phases = {"steady": t0 + 1.0, "failover": t0 + 1.0 + steady, "reshard": t0 + 1.0 + steady + fault_phase}
        end_at = phases["reshard"] + fault_phase
        for go in gos:
            go.put(end_at)
        victim, source, target = cluster.masters()[0], cluster.masters()[1], cluster.masters()[2]
        time.sleep(max(0.0, phases["steady"] - time.time()))
        cluster.topology_calls(reset=True)  # from zero
        time.sleep(max(0.0, phases["failover"] - time.time()))
        topology = {"steady": cluster.topology_calls(reset=True)}
        killed_at = time.time()
        cluster.kill(victim)
        promoted = cluster.wait_until(lambda: victim not in cluster.masters() and len(cluster.masters()) == 3,
                                      max(0.0, phases["reshard"] - time.time()))
        promotion_s = round(time.time() - killed_at, 2) if promoted else None
        time.sleep(max(0.0, phases["reshard"] - time.time()))
        cluster.wait_until_ok(10)
        topology["failover"] = cluster.topology_calls(reset=True)
        reshard_at = time.time()
        cluster.reshard(source, target, 1000)
        for proc in workers:
            proc.join(timeout=end_at - time.time() + 60)
            if proc.is_alive():
                proc.kill()
        topology["reshard"] = cluster.topology_calls(reset=True)
        ops: list[list[float]] = []
        lags: list[list[float]] = []
        for part in tmp.glob("w*.json"):
            data = json.loads(part.read_text())
            ops += data["ops"]
            lags += data["lags"]
        idle = json.loads((tmp / "idle.json").read_text())["lags"]
    ops.sort()
    steady_ops = [op for op in ops if phases["steady"] <= op[0] < phases["failover"]]
    steady_rate = len([op for op in steady_ops if not op[2]]) / steady
    rows = [
        summarize("steady", ops, lags, phases["steady"], phases["failover"], None, set(), steady_rate),
        summarize("failover", ops, lags, phases["failover"], phases["reshard"], killed_at, {victim}, steady_rate),
        summarize("reshard", ops, lags, phases["reshard"], end_at, reshard_at, {source, target}, steady_rate),
    ]
    for row in rows:
        row["promotion_s"] = promotion_s if row["phase"] == "failover" else None
        row["cluster_slots_calls"] = topology[row["phase"]]["cluster|slots"]
        row["command_calls"] = topology[row["phase"]]["command"]
    bounds = [(phases["steady"], phases["failover"]), (phases["failover"], phases["reshard"]),
              (phases["reshard"], end_at)]
    idle_p99 = {row["phase"]: p99([lag for t, lag in idle if start <= t < end])
                for row, (start, end) in zip(rows, bounds, strict=True)}
    table = markdown_table(COLUMNS, [[row[c] for c in COLUMNS] for row in rows])
    context_line = (f"{TASKS} callers x 2 processes, {THINK * 1000:.0f} ms think time, {KEYS} keys, budget "
                    f"{BUDGET * 1000:.0f} ms, node timeout {node_timeout_ms} ms, cluster-require-full-coverage no. "
                    "Loop lag of an idle asyncio loop in a third process, same run (p99 ms): "
                    + ", ".join(f"{phase} {value}" for phase, value in idle_p99.items()) + ".")
    print(table)
    print(context_line)
    write_json(args.json, {"rows": rows, "idle_loop_lag_p99_ms": idle_p99})
    write_text(args.results / "cluster.md", "# Redis Cluster failover (python -m benchmarks.cluster"
               + (" --quick" if args.quick else "") + ")\n\n" + table + "\n\n" + context_line + "\n")
    plot(args.results / "cluster.png", ops, t0, [("kill", killed_at), ("reshard", reshard_at)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
