"""Which channel keeps the local tiers coherent: pub/sub broadcast or Redis client tracking (issue 5).

``python -m benchmarks.l1_channel [--rounds N]``

One writer, a :class:`cachelayer.Cache` with a :class:`cachelayer.LocalCache` on a fresh namespace in Redis DB 14,
and two observers on their own connections, each timing every message it gets:

* ``pub/sub``: subscribed to the library's invalidation channel (``<ns>:local-invalidations``), as every
  ``LocalCache`` listener is;
* ``tracking``: Redis client tracking in broadcast mode over the namespace's keys, ``CLIENT TRACKING ON BCAST
  PREFIX <ns>: REDIRECT <id>``, its ``invalidate`` messages delivered to a connection subscribed to
  ``__redis__:invalidate`` (a RESP2 connection; over RESP3 the same invalidations come as push frames).

Per kind of operation, ``--rounds`` times: the operation, then how long until each observer heard of the key, and
how many messages each got for it (the observers keep listening 50 ms after the last expected message):

* ``set``: ``Cache.set`` (one value written through the library);
* ``cold load``: ``Cache.get_or_set`` on a missing key (lease, value, tag set, lease release);
* ``invalidate_tags``: one tag over 10 stored keys;
* ``foreign write``: a plain ``SET`` on a key of the namespace by a client that does not use the library;
* ``expiry``: a stored value's Redis TTL running out (no command at all).

Writes ``benchmarks/results/l1_channel.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis

from benchmarks._common import (
    BENCH_REDIS_URL,
    RESULTS_DIR,
    environment,
    format_table,
    markdown_table,
    write_json,
    write_text,
)
from cachelayer import Cache, LocalCache

REDIS_URL = BENCH_REDIS_URL
QUIET_S = 0.05  # after the last expected message, how long an observer keeps counting
WAIT_S = 2.0  # the longest we wait for a message naming the key
EXPIRY_S = 0.5  # how long the expiring value lives in Redis


@dataclass
class Observer:
    """One channel's messages, as (arrival time, keys named; None = everything)."""

    name: str
    heard: list[tuple[float, frozenset[str] | None]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, keys: frozenset[str] | None) -> None:
        self.heard.append((time.perf_counter(), keys))
        self.changed.set()

    def naming(self, key: str, since: float, skip: int) -> float | None:
        """When the message naming ``key`` that follows the first ``skip`` such messages since ``since`` arrived."""
        for at, keys in self.heard:
            if at >= since and (keys is None or key in keys):
                if skip == 0:
                    return at
                skip -= 1
        return None

    def count_since(self, since: float) -> int:
        return sum(1 for at, _ in self.heard if at >= since)


async def _listen(pubsub: Any, observer: Observer, decode: Callable[[Any], frozenset[str] | None]) -> None:
    async for message in pubsub.listen():
        if message["type"] == "message":
            observer.record(decode(message["data"]))


def _pubsub_keys(payload: bytes) -> frozenset[str] | None:
    _origin, _, names = payload.partition(b"\n")
    return None if names == b"*" else frozenset(names.decode().split("\n"))


def _tracking_keys(payload: Any) -> frozenset[str] | None:
    if payload is None:  # FLUSHDB / FLUSHALL
        return None
    return frozenset(k.decode() if isinstance(k, bytes) else str(k) for k in payload)


@dataclass
class Step:
    """What one operation leaves to observe: which key, and from when.

    ``since`` is taken before the operation's first command, so no message it causes can predate it; an operation
    that first writes the key itself (to invalidate or expire it) says how many notices that write gives each
    channel (``skip``): those are told apart by order, not by arrival time, which a loaded machine stretches.
    Latency is timed from ``origin`` (the operation's own start by default).
    """

    key: str
    since: float
    skip: dict[str, int] = field(default_factory=dict)
    origin: float | None = None


@dataclass
class Sample:
    latency_ms: dict[str, float | None]
    messages: dict[str, int]


async def _observe(observers: Sequence[Observer], step: Step, wait: float) -> Sample:
    origin = step.since if step.origin is None else step.origin
    deadline = time.perf_counter() + wait
    latency: dict[str, float | None] = {}
    for observer in observers:
        skip = step.skip.get(observer.name, 0)
        while (at := observer.naming(step.key, step.since, skip)) is None and time.perf_counter() < deadline:
            observer.changed.clear()
            try:
                await asyncio.wait_for(observer.changed.wait(), max(0.001, deadline - time.perf_counter()))
            except TimeoutError:
                break
        latency[observer.name] = None if at is None else (at - origin) * 1000
    await asyncio.sleep(QUIET_S)
    return Sample(latency, {o.name: o.count_since(step.since) for o in observers})


async def measure(rounds: int, url: str = REDIS_URL, budget: float = 0.1) -> dict[str, list[Sample]]:
    """``budget``: the writer's budget per Redis call (the library's default)."""
    namespace = f"l1ch-{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(url)
    writer = Cache.from_url(url, namespace=namespace, local=LocalCache(max_staleness=1.0), timeout=budget)
    sub_pubsub = redis.Redis.from_url(url).pubsub()
    tracked = redis.Redis.from_url(url, single_connection_client=True)
    # redis-py 8 opens RESP3 connections (HELLO 3), to which Redis sends invalidations as push frames, not as
    # messages of __redis__:invalidate: the receiving connection speaks RESP2 so that PubSub delivers them.
    track_pubsub = redis.Redis.from_url(url, protocol=2).pubsub()
    observers = [Observer("pub/sub"), Observer("tracking")]
    tasks: list[asyncio.Task[None]] = []
    try:
        await sub_pubsub.subscribe(writer.keys.local_channel())
        # The id of the connection that will receive the invalidations, asked before it enters subscriber mode.
        await track_pubsub.connect()  # type: ignore[no-untyped-call]
        receiver: Any = track_pubsub.connection
        await receiver.send_command("CLIENT", "ID")
        target = await receiver.read_response()
        await track_pubsub.subscribe("__redis__:invalidate")
        await tracked.execute_command(  # type: ignore[no-untyped-call]
            "CLIENT", "TRACKING", "ON", "REDIRECT", target, "BCAST", "PREFIX", f"{namespace}:"
        )
        tasks = [
            asyncio.create_task(_listen(sub_pubsub, observers[0], _pubsub_keys)),
            asyncio.create_task(_listen(track_pubsub, observers[1], _tracking_keys)),
        ]
        await asyncio.sleep(0.1)

        async def load() -> dict[str, int]:
            return {"n": 1}

        samples: dict[str, list[Sample]] = {}

        async def run(kind: str, op: Callable[[int], Awaitable[Step]], wait: float = WAIT_S) -> None:
            for i in range(rounds):
                step = await op(i)
                samples.setdefault(kind, []).append(await _observe(observers, step, wait))

        # A library write of a key is one message naming it on each channel (the broadcast, the tracking notice).
        own_write = {"pub/sub": 1, "tracking": 1}

        async def do_set(i: int) -> Step:
            since = time.perf_counter()
            await writer.set(f"set:{i}", {"i": i}, ttl=60)
            return Step(writer.key(f"set:{i}"), since)

        async def do_cold_load(i: int) -> Step:
            since = time.perf_counter()
            await writer.get_or_set(f"cold:{i}", load, ttl=60, tags=["t"], local=True)
            return Step(writer.key(f"cold:{i}"), since)

        async def do_invalidate(i: int) -> Step:
            since = time.perf_counter()
            for j in range(10):
                await writer.set(f"tagged:{i}:{j}", {"j": j}, ttl=60, tags=[f"tag{i}"])
            await asyncio.sleep(QUIET_S)
            origin = time.perf_counter()
            await writer.invalidate_tags(f"tag{i}")
            return Step(writer.key(f"tagged:{i}:0"), since, own_write, origin)

        async def do_foreign(i: int) -> Step:
            since = time.perf_counter()
            key = writer.key(f"foreign:{i}")
            await admin.set(key, b"written by another program")
            return Step(key, since)

        async def do_expiry(i: int) -> Step:
            # Kept EXPIRY_S in Redis (TTL + stale window), counted from when Redis runs the SET, after ``since``:
            # timed from the earliest moment it can go. Not shorter: Redis sends a tracking client the keys written
            # in one event-loop iteration as one message, so a Redis stalled that long between the SET and its
            # next iteration would report the write and the expiry in one message.
            since = time.perf_counter()
            await writer.set(f"expiring:{i}", {"i": i}, ttl=EXPIRY_S / 2, stale_ttl=EXPIRY_S / 2)
            return Step(writer.key(f"expiring:{i}"), since, own_write, since + EXPIRY_S)

        await run("set", do_set)
        await run("cold load", do_cold_load)
        await run("invalidate_tags (10 keys)", do_invalidate)
        await run("foreign write", do_foreign)
        # Redis's active expiry samples keys with a TTL ~10 times a second: on a shared, busy Redis it can take a
        # while to reach ours (the observers stop at the first message, so a long bound costs nothing).
        await run("expiry", do_expiry, wait=5.0)
        return samples
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await writer.clear()
        await writer.aclose()
        for pubsub in (sub_pubsub, track_pubsub):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        await tracked.aclose()
        await admin.aclose()


def summarize(samples: dict[str, list[Sample]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for kind, runs in samples.items():
        row: list[object] = [kind]
        for name in ("pub/sub", "tracking"):
            heard = [ms for s in runs if (ms := s.latency_ms[name]) is not None]
            row += [
                f"{len(heard)}/{len(runs)}",
                round(statistics.median(heard), 3) if heard else None,
                round(statistics.mean(s.messages[name] for s in runs), 1),
            ]
        rows.append(row)
    return rows


HEADERS = [
    "operation",
    "pub/sub heard",
    "pub/sub ms (median)",
    "pub/sub msgs/op",
    "tracking heard",
    "tracking ms (median)",
    "tracking msgs/op",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.l1_channel", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)
    samples = asyncio.run(measure(args.rounds))
    rows = summarize(samples)
    print(format_table(HEADERS, rows))
    env = environment(["redis", "orjson", "zstandard"])
    write_json(
        RESULTS_DIR / "l1_channel.json",
        {"rounds": args.rounds, "rows": [dict(zip(HEADERS, r, strict=True)) for r in rows], "environment": env},
    )
    write_text(
        RESULTS_DIR / "l1_channel.md",
        "\n".join(
            [
                "# L1 coherence channel: pub/sub broadcast vs Redis client tracking",
                "",
                f"`python -m benchmarks.l1_channel --rounds {args.rounds}` ({time.strftime('%Y-%m-%d %H:%M')}; "
                "Redis 127.0.0.1 DB 14, one writer, both observers on their own connections). `heard`: operations "
                "after which the observer got a message naming the key within the wait; `ms`: from the start of "
                "the operation to that message; `msgs/op`: messages the observer got per operation (for "
                "`invalidate_tags` and `expiry`, the notices of the writes that set the keys up included).",
                "",
                markdown_table(HEADERS, rows),
                "",
                "Decision and reasons: docs/performance.md (L1 coherence channel).",
                "",
                f"Environment: `{env}`",
            ]
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
