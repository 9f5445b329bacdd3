"""How late a waiting cache learns that another cache's load has landed: pub/sub against polling.

``python -m benchmarks.lease_wake [--rounds 40] [--json PATH]``

Two :class:`cachelayer.Cache` objects, each with its own Redis backend (its own connection pool and its own
load state, as two processes have), share one namespace on one Redis. In each round the holder's ``fetch`` takes
the lease and runs a 50 ms loader; once the loader has started, the waiter's ``fetch`` of the same name misses,
finds the lease held and waits, as the library does: woken by the holder's "value ready" message
(``StampedePolicy(wake="pubsub")``, the default) or by its backoff poll (``wake="poll"``). Wake = the time from
the holder's store of the value (the end of its backend ``fill``, the write through its ticket) to the waiter's
``fetch`` returning it. Commands = the waiter's store round trips in that fetch (GET, the ticket attempt
``begin_fill``, polls; pub/sub's SUBSCRIBE/UNSUBSCRIBE on the shared pub/sub connection are not counted). The
variants are interleaved round by round, so each sees the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import BENCH_REDIS_URL, RESULTS_DIR, format_table, markdown_table, write_json, write_text
from cachelayer import Cache, EntryPolicy, StampedePolicy

REDIS_URL = BENCH_REDIS_URL
LOAD = 0.05
#: Each round's load lasts LOAD x a factor drawn from this range (the same for every variant of the round): with a
#: fixed duration a poll schedule can happen to poll just after the store every time, which flatters it.
LOAD_SPREAD = (0.6, 1.8)
NAMESPACE = "lease-wake"
VALUE = {"items": list(range(20))}
VARIANTS: dict[str, StampedePolicy] = {
    "pub/sub (default)": StampedePolicy(),
    "poll (default: 5 ms x1.6 up to 50 ms)": StampedePolicy(wake="poll"),
    "poll (2 ms x1.6 up to 20 ms)": StampedePolicy(wake="poll", poll_initial=0.002, poll_max=0.02),
}


class _Probe:
    """Wraps backend methods of one cache instance: when the holder's value was stored, how many round trips
    the waiter made. Instance attributes shadow the methods; the library calls them through the instance."""

    def __init__(self, holder: Cache, waiter: Cache) -> None:
        self.stored_at = 0.0
        self.waiter_calls = 0
        fill = holder.backend.fill  # a loaded value is stored through the load's ticket

        async def timed_fill(*args: Any, **kwargs: Any) -> bool:
            taken = await fill(*args, **kwargs)
            self.stored_at = time.perf_counter()
            return taken

        setattr(holder.backend, "fill", timed_fill)  # noqa: B010  # shadowing a method on purpose
        for name in ("get", "poll", "begin_fill"):
            setattr(waiter.backend, name, self._counted(getattr(waiter.backend, name)))

    def _counted(self, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.waiter_calls += 1
            return await method(*args, **kwargs)

        return counted


async def one_round(
    holder: Cache, waiter: Cache, probe: _Probe, policy: EntryPolicy, name: str, load_s: float = LOAD
) -> tuple[float, int]:
    started = asyncio.Event()

    async def load() -> Any:
        started.set()  # the holder has the lease by now: the loader runs under it
        await asyncio.sleep(load_s)
        return VALUE

    async def must_not_load() -> Any:
        raise AssertionError("the waiter loaded: it should have waited for the holder")

    holding = asyncio.create_task(holder.fetch(name, load, policy))
    await started.wait()
    probe.waiter_calls = 0
    entry = await waiter.fetch(name, must_not_load, policy)
    done = time.perf_counter()
    await holding
    if entry.value() != VALUE:
        raise AssertionError("the waiter got another value")
    return (done - probe.stored_at) * 1000, probe.waiter_calls


async def measure(rounds: int, budget: float = 0.1) -> dict[str, dict[str, float]]:
    """``budget``: the caches' budget per Redis call (the library's default)."""
    holder = Cache.from_url(REDIS_URL, namespace=NAMESPACE, timeout=budget)
    waiter = Cache.from_url(REDIS_URL, namespace=NAMESPACE, timeout=budget)
    probe = _Probe(holder, waiter)
    await holder.clear()
    policies = {name: EntryPolicy(ttl=60, stampede=stampede) for name, stampede in VARIANTS.items()}
    delays: dict[str, list[float]] = {name: [] for name in VARIANTS}
    commands: dict[str, list[int]] = {name: [] for name in VARIANTS}
    draw = random.Random(0)
    for i in range(rounds):
        load_s = LOAD * draw.uniform(*LOAD_SPREAD)
        for v, (name, policy) in enumerate(policies.items()):
            delay, sent = await one_round(holder, waiter, probe, policy, f"round-{i}-variant-{v}", load_s)
            delays[name].append(delay)
            commands[name].append(sent)
    lease_waits = waiter.stats().get("lease_waits")
    await holder.clear()
    await holder.aclose()
    await waiter.aclose()
    result: dict[str, dict[str, float]] = {}
    for name in VARIANTS:
        ordered = sorted(delays[name])
        result[name] = {
            "wake_p50_ms": round(statistics.median(ordered), 2),
            "wake_p90_ms": round(ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))], 2),
            "wake_max_ms": round(ordered[-1], 2),
            "commands_per_wait": round(statistics.mean(commands[name]), 1),
        }
    if lease_waits != rounds * len(VARIANTS):
        raise AssertionError(f"expected {rounds * len(VARIANTS)} lease waits, the waiter counted {lease_waits}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lease_wake", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json", type=Path, metavar="PATH")
    args = parser.parse_args(argv)
    load_start = [round(x, 2) for x in os.getloadavg()]
    result = asyncio.run(measure(args.rounds))
    load_end = [round(x, 2) for x in os.getloadavg()]
    headers = ["waiter", "wake p50 ms", "wake p90 ms", "wake max ms", "round trips per wait"]
    rows = [
        [name, r["wake_p50_ms"], r["wake_p90_ms"], r["wake_max_ms"], r["commands_per_wait"]]
        for name, r in result.items()
    ]
    print(format_table(headers, rows))
    write_text(
        RESULTS_DIR / "lease_wake.md",
        "\n".join(
            [
                "# Lease waiters: pub/sub against polling, two real caches",
                "",
                f"Command: `python -m benchmarks.lease_wake --rounds {args.rounds}`; two `Cache` objects with their "
                f"own Redis backends on {REDIS_URL}; the holder's loader takes {LOAD * LOAD_SPREAD[0] * 1000:.0f}-"
                f"{LOAD * LOAD_SPREAD[1] * 1000:.0f} ms (drawn per round, seeded); wake = time from "
                "the holder's store of the value to the waiter's `fetch` returning it; variants interleaved round by "
                f"round. Load average {load_start} at start, {load_end} at end ({time.strftime('%Y-%m-%d %H:%M')}).",
                "",
                markdown_table(headers, rows),
            ]
        ),
    )
    write_json(RESULTS_DIR / "lease_wake.json", result)
    if args.json:
        write_json(args.json, {**result, "loadavg_start": load_start, "loadavg_end": load_end})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
