"""How fast a waiting process learns that another process's load has landed: polling against pub/sub.

``python -m benchmarks.lease_wake [--rounds 40]``

One process (here: one task with its own connections) takes the lease, "loads" for 50 ms and stores the value;
a waiter, holding separate connections as another process would, learns of it either by cachelayer's backoff
poll (GET value + EXISTS lease per round trip, now the fallback: ``StampedePolicy(wake="poll")``) or by a pub/sub
message the loader publishes after the write. The pub/sub side is a minimal stand-in written here, measured before
``cachelayer/_notify.py`` existed (which does the same: SUBSCRIBE, then GET after the message), so the figure is
that mechanism's, not a run of the library's notifier. Reported: the delay between the
write and the waiter having the value, and the Redis commands the waiter sent.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio

from benchmarks._common import BENCH_REDIS_URL, RESULTS_DIR, format_table, markdown_table, write_json, write_text
from cachelayer import StampedePolicy
from cachelayer._stampede import backoff_delays

REDIS_URL = BENCH_REDIS_URL
LOAD = 0.05


async def _poll_waiter(client: redis.asyncio.Redis, key: str, policy: StampedePolicy) -> tuple[float, int]:
    commands = 0
    for delay in backoff_delays(policy.poll_initial, policy.poll_max):
        await asyncio.sleep(delay)
        async with client.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.exists(key + ":lease")
            value, _ = await pipe.execute()
        commands += 1  # noqa: SIM113  # counts round trips, not loop turns
        if value is not None:
            return time.perf_counter(), commands
    raise AssertionError("unreachable")


async def _pubsub_waiter(client: redis.asyncio.Redis, key: str, subscribed: asyncio.Event) -> tuple[float, int]:
    pubsub = client.pubsub()
    await pubsub.subscribe(key + ":ready")
    subscribed.set()
    commands = 2  # SUBSCRIBE, then the GET after the message
    async for message in pubsub.listen():
        if message["type"] == "message":
            break
    await client.get(key)
    done = time.perf_counter()
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    return done, commands


async def one_round(
    mode: str, policy: StampedePolicy, loader_client: Any, waiter_client: Any, tag: str
) -> tuple[float, int]:
    key = f"wake:{mode}:{tag}"
    subscribed = asyncio.Event()
    if mode == "poll":
        subscribed.set()
        waiter = asyncio.create_task(_poll_waiter(waiter_client, key, policy))
    else:
        waiter = asyncio.create_task(_pubsub_waiter(waiter_client, key, subscribed))
    await subscribed.wait()
    await loader_client.set(key + ":lease", "t", px=10_000)
    await asyncio.sleep(LOAD)
    await loader_client.set(key, b"value", px=60_000)
    written = time.perf_counter()
    if mode == "pubsub":
        await loader_client.publish(key + ":ready", b"1")
    await loader_client.delete(key + ":lease")
    done, commands = await waiter
    return (done - written) * 1000, commands


async def measure(rounds: int) -> dict[str, dict[str, float]]:
    loader_client = redis.asyncio.Redis.from_url(REDIS_URL)
    waiter_client = redis.asyncio.Redis.from_url(REDIS_URL)
    variants = {
        "poll (default: 5 ms x1.6 up to 50 ms)": ("poll", StampedePolicy()),
        "poll (2 ms x1.6 up to 20 ms)": ("poll", StampedePolicy(poll_initial=0.002, poll_max=0.02)),
        "pub/sub": ("pubsub", StampedePolicy()),
    }
    result: dict[str, dict[str, float]] = {}
    for v, (name, (mode, policy)) in enumerate(variants.items()):
        delays, commands = [], []
        for i in range(rounds):
            delay, sent = await one_round(mode, policy, loader_client, waiter_client, f"wake:{v}:{i}")
            delays.append(delay)
            commands.append(sent)
        result[name] = {
            "wake_p50_ms": round(statistics.median(delays), 2),
            "wake_max_ms": round(max(delays), 2),
            "commands_per_wait": round(statistics.mean(commands), 1),
        }
    await loader_client.flushdb()
    await loader_client.aclose()
    await waiter_client.aclose()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lease_wake", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.rounds))
    headers = ["waiter", "wake p50 ms", "wake max ms", "commands per wait"]
    rows = [[name, r["wake_p50_ms"], r["wake_max_ms"], r["commands_per_wait"]] for name, r in result.items()]
    print(format_table(headers, rows))
    write_text(
        RESULTS_DIR / "lease_wake.md",
        "\n".join(
            [
                "# Lease waiters: polling against pub/sub",
                "",
                f"Command: `python -m benchmarks.lease_wake --rounds {args.rounds}`; "
                f"loader takes {LOAD * 1000:.0f} ms; wake = time from the value's write to the waiter holding it.",
                "",
                markdown_table(headers, rows),
            ]
        ),
    )
    write_json(RESULTS_DIR / "lease_wake.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
