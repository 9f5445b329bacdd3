"""What a cache hit costs: microseconds per hit of a 20-item page (~7 KB of JSON).

``python -m benchmarks.hit_path [--quick] [--json PATH] [--before TREE] [--rounds N] [--otel-rounds N] [--only-otel]``

The floor is a raw ``GET`` of the same page stored as plain orjson bytes plus ``orjson.loads``, on the same Redis
and the same kind of client (redis.asyncio over a bounded pool). Contenders: ``@cached`` of cachelayer, aiocache
and cashews on Redis and on each library's in-memory store, cachelayer's ``Cache.get``, the floor's GET through
the pool the cache builds (its direct path, docs/operations.md), and ``@cached`` returning the page's items as
``list[Item]`` (a dataclass, a pydantic model). ``--before TREE`` adds the plain ``@cached`` of another checkout
of cachelayer (``git archive <commit> | tar -x -C TREE``), imported beside this one.

With opentelemetry installed (the ``otel`` extra), three more Redis ``@cached`` rows, each compared (paired) with
the plain one: ``otel_off`` (opentelemetry imported, nothing configured), ``otel_unsampled`` (instrumented, a
tracer whose sampler is ALWAYS_OFF) and ``otel_sampled`` (ALWAYS_ON, a batch processor feeding an exporter that
drops the spans); both instrumented rows also have an SDK meter provider with a reader, as a service would.
Their ``_vs_cachelayer`` figures come from pairs of their own, after the rounds (``--otel-rounds`` pairs per row, 3x
the rounds by default), the median of those direct ratios with its quartiles: a difference of a few percent needs
more samples than the floor rounds give. Off and unsampled are timed call by call in turn with the plain hit (a
slow spell lands on both); sampled, which makes its hits' spans after the fact in batches, in blocks back to back
with the plain hit, its spans made inside its own block (:func:`_otel_pairs`), beside a batch of spans made alone as
the subscriber makes a hit's (``otel_sdk_span_vs_cachelayer``: the spans' share of that row; with the SDK's batch
processor that is ``cachelayer/_otel_direct.py``'s path, else ``start_span`` + ``end``). ``--only-otel`` builds
only those rows and the plain one (a quick check; it writes only ``--json``, not the results files).

Every round times each contender right after a fresh floor measurement, in an order that rotates from round to
round, so every ratio is taken under the load of its own moment (the machine is shared); figures are medians over
rounds of those per-round values. Sequential calls on one event loop: the figure is CPU per hit, not throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio

from benchmarks import _contenders, _items
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
from cachelayer._redis_clients import QueueAwarePool
from service.demo_data import medium_page

REDIS_URL = BENCH_REDIS_URL
PACKAGES = ["redis", "orjson", "zstandard", "msgspec", "pydantic", "aiocache", "cashews", "opentelemetry-sdk"]
TYPED_LIMITS = {"dataclass": 1.05, "pydantic": 1.4}  # pydantic's validate_json is a fixed ~50 us on this page
BEFORE_LIMIT = 1.05
RAW_LIMIT = 1.10
PEER_LIMIT = 0.85  # a Redis hit at most this fraction of aiocache's (paired per-round ratios)
OTEL_LIMITS = {"off": 1.01, "unsampled": 1.03, "sampled": 1.15}
SDK_SPANS = 256  # spans per sample of the spans alone: one batch of the sampled subscriber


@dataclass(frozen=True, slots=True)
class Contender:
    field: str  # the JSON key's stem: ``<field>_us``
    label: str
    call: Callable[[], Awaitable[Any]]
    number_scale: int = 1  # in-memory hits are ~10x cheaper: more calls per sample for the same sample length
    # Work a call leaves for later (the sampled row's spans, made in batches after the fetch): done inside the
    # sample that caused it, so that no other row's sample pays for it.
    settle: Callable[[], None] | None = None
    sdk_span_us: Callable[[int], float] | None = None  # the sampled row: its spans alone (Instrumented)


async def _per_call_us(
    fn: Callable[[], Awaitable[Any]], number: int, settle: Callable[[], None] | None = None
) -> float:
    started = time.perf_counter()
    for _ in range(number):
        await fn()
    if settle is not None:
        settle()
    return (time.perf_counter() - started) / number * 1e6


async def _build(
    before: Path | None, only_otel: bool = False
) -> tuple[list[Contender], list[Callable[[], Awaitable[None]]]]:
    page = medium_page(0)
    typed_values = {"dataclass": _items.page_items("dataclass")}
    if _items.PItem is not None:
        typed_values["pydantic"] = _items.page_items("pydantic")

    async def loader(item: int) -> Any:
        return page

    contenders: list[Contender] = []
    closers: list[Callable[[], Awaitable[None]]] = []

    async def add(
        field: str,
        label: str,
        built: tuple[Any, Any],
        expected: Any,
        scale: int = 1,
        instrumented: Instrumented | None = None,
    ) -> None:
        fetch, close = built
        closers.append(close)
        await fetch(1)  # the miss that stores the value
        got = await fetch(1)
        first = got[0] if isinstance(got, list) else got
        assert got == expected, f"{label} returned another value on a hit"
        assert type(first) is type(expected[0] if isinstance(expected, list) else expected), f"{label}: wrong type"
        settle, sdk_span_us = (None, None) if instrumented is None else (instrumented.flush, instrumented.sdk_span_us)
        contenders.append(Contender(field, label, lambda: fetch(1), scale, settle, sdk_span_us))

    names = {"cachelayer": "cachelayer", "aiocache.cached": "aiocache", "cashews.cache": "cashews"}
    if only_otel:
        names = {"cachelayer": "cachelayer"}
        typed_values = {}
    for name in _contenders.available():
        if name in names:
            await add(
                names[name],
                f"{name.split('.')[0]} @cached (Redis)",
                _contenders.build(name, REDIS_URL, f"hit-{name}", 3600, loader),
                page,
            )
    for name in [] if only_otel else _contenders.available("memory"):
        field = name.replace(".", "_")
        built = _contenders.build(name, _contenders.MEMORY_URL, f"hit-{name}", 3600, loader)
        # cachelayer's memory hit hands every caller a value of its own (parsed per hit); the peers return the
        # stored object itself.
        own = ", own value per hit" if name == "cachelayer.memory" else ", the stored object"
        await add(field, f"{name.split('.')[0]} @cached (memory{own})", built, page, scale=5)
    for kind, values in typed_values.items():
        item_type = _items.Item if kind == "dataclass" else _items.PItem

        async def typed_loader(item: int, values: Any = values) -> Any:
            return values

        built = _contenders.typed_cachelayer(REDIS_URL, f"hit-typed-{kind}", 3600, typed_loader, list[item_type])  # type: ignore[valid-type]
        await add(f"cachelayer_typed_{kind}", f"cachelayer -> list[Item] ({kind}, Redis)", built, values)
    if before is not None:
        package = _contenders.load_package(before)
        built = _contenders.package_cachelayer(package)(REDIS_URL, "hit-before", 3600, loader)
        await add("cachelayer_before", f"cachelayer @cached at {before.name} (Redis)", built, page)

    for mode, setup in _otel_setups().items():
        fetch, close = _contenders.build("cachelayer", REDIS_URL, f"hit-otel-{mode}", 3600, loader)
        instrumented = setup(fetch.cache)  # type: ignore[attr-defined]  # a CachedFunction
        closers.append(instrumented.close)
        label = f"cachelayer @cached, OpenTelemetry {mode} (Redis)"
        await add(f"cachelayer_otel_{mode}", label, (fetch, close), page, instrumented=instrumented)
    if only_otel:
        return contenders, closers

    # The floor's GET through the pool the cache builds (QueueAwarePool: an idle connection without redis-py's
    # condition and lock, docs/operations.md "Pool settings"): what that pool alone is worth.
    direct = redis.asyncio.Redis(connection_pool=QueueAwarePool.from_url(REDIS_URL, max_connections=64))
    await direct.set("raw-direct:page", orjson.dumps(page))
    closers.append(direct.aclose)

    async def raw_direct() -> Any:
        return orjson.loads(await direct.get("raw-direct:page"))  # type: ignore[arg-type]

    assert await raw_direct() == page
    contenders.append(Contender("raw_direct_pool", "raw GET + orjson.loads, the cache's pool", raw_direct))

    manager = Cache.from_url(REDIS_URL, namespace="hit-get", max_connections=64)
    await manager.set("page", page, ttl=3600)
    closers.append(manager.aclose)
    contenders.append(Contender("cachelayer_get", "cachelayer Cache.get (Redis)", lambda: manager.get("page")))
    assert await manager.get("page") == page
    return contenders, closers


@dataclass(frozen=True)
class Instrumented:
    """One OpenTelemetry row's set-up: what closes it, what makes the spans it still owes (None: it owes none),
    and, for a recording tracer, ``sdk_span_us(n)``: ``n`` spans made as its subscriber makes a hit's (the same
    parent, attributes and times, by the path its flush takes), in microseconds per span."""

    close: Callable[[], Awaitable[None]]
    flush: Callable[[], None] | None = None
    sdk_span_us: Callable[[int], float] | None = None


def _otel_setups() -> dict[str, Callable[[Cache], Instrumented]]:
    """How each OpenTelemetry row sets up its cache; none without opentelemetry."""
    try:
        from opentelemetry import context as otel_context
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
        from opentelemetry.trace import SpanKind

        from cachelayer._otel import OpenTelemetryHooks, instrument_opentelemetry
        from cachelayer._otel_direct import DirectHitSpans
    except ImportError:
        return {}

    class Dropped(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    def sdk_spans(hooks: OpenTelemetryHooks) -> Callable[[int], float]:
        def make(n: int) -> float:
            tracer, parent = hooks.tracer, otel_context.get_current()
            attributes = hooks.end_attributes("hit", "store")
            direct = DirectHitSpans.of(tracer)
            started = time.perf_counter()
            if direct is not None and direct.ready():  # the path the subscriber's flush takes for a hit
                for _ in range(n):
                    at = time.time_ns()
                    direct.end_hit("f", parent, attributes, at, at + 100_000)
            else:
                for _ in range(n):
                    at = time.time_ns()
                    span = tracer.start_span(
                        "f", context=parent, kind=SpanKind.INTERNAL, attributes=attributes, start_time=at
                    )
                    span.end(end_time=at + 100_000)
            return (time.perf_counter() - started) / n * 1e6

        return make

    def instrumented(sampler: Sampler) -> Callable[[Cache], Instrumented]:
        def setup(cache: Cache) -> Instrumented:
            tracer_provider = TracerProvider(sampler=sampler)
            tracer_provider.add_span_processor(BatchSpanProcessor(Dropped()))
            meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
            hooks = instrument_opentelemetry(cache, tracer_provider, meter_provider)

            async def close() -> None:
                hooks.uninstrument()
                tracer_provider.shutdown()
                meter_provider.shutdown()

            if sampler is ALWAYS_OFF:  # nothing recorded, nothing owed
                return Instrumented(close)
            return Instrumented(close, hooks.flush, sdk_spans(hooks))

        return setup

    def off(cache: Cache) -> Instrumented:
        async def close() -> None:
            return None

        return Instrumented(close)

    return {"off": off, "unsampled": instrumented(ALWAYS_OFF), "sampled": instrumented(ALWAYS_ON)}


def _median(values: list[float], digits: int = 1) -> float:
    return round(statistics.median(values), digits)


async def _interleaved_ratio(plain: Contender, row: Contender, number: int, row_first: bool) -> float:
    """``row``'s cost over ``plain``'s from ``number`` calls of each, one of each in turn: both see the same moments
    of the machine, to within a call. Only for a row that leaves no work for later (see :func:`_otel_pairs`)."""
    clock = time.perf_counter
    spent_plain = spent_row = 0.0
    first, second = (row.call, plain.call) if row_first else (plain.call, row.call)
    for _ in range(number):
        t0 = clock()
        await first()
        t1 = clock()
        await second()
        t2 = clock()
        if row_first:
            spent_row += t1 - t0
            spent_plain += t2 - t1
        else:
            spent_plain += t1 - t0
            spent_row += t2 - t1
    return spent_row / spent_plain


async def _otel_pairs(contenders: list[Contender], pairs: int, number: int) -> dict[str, list[float]]:
    """Per OpenTelemetry row, ``pairs`` direct ratios to the plain Redis ``@cached`` hit, the rows taking turns
    within each round and the order within a pair alternating (what runs first pays for a colder cache).

    A row that leaves no work for later (off, unsampled) is timed call by call against the plain hit
    (:func:`_interleaved_ratio`): a slow spell of the shared machine lands on both. The sampled row makes its hits'
    spans in batches after the fact (up to 50 ms later, from a timer), work that call-by-call timing would charge
    to whichever call runs then: it is timed in blocks of ``number`` calls, its spans made inside its own block
    (``Contender.settle``), back to back with a block of the plain hit. Beside each sampled pair, ``SDK_SPANS``
    spans made alone as the subscriber makes a hit's give ``otel_sdk_span``: that part of the sampled row's cost
    is the spans' own."""
    by_field = {c.field: c for c in contenders}
    plain = by_field.get("cachelayer")
    rows = [by_field[f"cachelayer_otel_{mode}"] for mode in OTEL_LIMITS if f"cachelayer_otel_{mode}" in by_field]
    ratios: dict[str, list[float]] = {row.field: [] for row in rows}
    if plain is None:
        return {}
    for pair_no in range(pairs):
        shift = pair_no % len(rows) if rows else 0
        row_first = pair_no % 2 == 1
        for row in rows[shift:] + rows[:shift]:
            if row.settle is None:
                ratios[row.field].append(await _interleaved_ratio(plain, row, number, row_first))
                continue
            if row_first:
                cost = await _per_call_us(row.call, number, row.settle)
                base = await _per_call_us(plain.call, number)
            else:
                base = await _per_call_us(plain.call, number)
                cost = await _per_call_us(row.call, number, row.settle)
            ratios[row.field].append(cost / base)
            if row.sdk_span_us is not None:
                ratios.setdefault("otel_sdk_span", []).append(row.sdk_span_us(SDK_SPANS) / base)
    return ratios


async def measure(
    rounds: int, number: int, before: Path | None = None, otel_rounds: int | None = None, only_otel: bool = False
) -> dict[str, Any]:
    raw_client = redis.asyncio.Redis(
        connection_pool=redis.asyncio.BlockingConnectionPool.from_url(REDIS_URL, max_connections=64)
    )
    await raw_client.flushdb()
    await raw_client.set("raw:page", orjson.dumps(medium_page(0)))

    async def raw() -> Any:
        return orjson.loads(await raw_client.get("raw:page"))  # type: ignore[arg-type]

    contenders, closers = await _build(before, only_otel)
    samples: dict[str, list[float]] = {c.field: [] for c in contenders}
    raw_samples: list[float] = []
    ratios: dict[str, list[float]] = {c.field: [] for c in contenders}
    for round_no in range(rounds):
        shift = round_no % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            base = await _per_call_us(raw, number)
            cost = await _per_call_us(contender.call, number * contender.number_scale, contender.settle)
            raw_samples.append(base)
            samples[contender.field].append(cost)
            ratios[contender.field].append(cost / base)
    otel_pairs = 3 * rounds if otel_rounds is None else otel_rounds
    paired = await _otel_pairs(contenders, otel_pairs, number)
    for close in closers:
        await close()
    await raw_client.flushdb()
    await raw_client.aclose()

    result: dict[str, Any] = {"raw_us": _median(raw_samples)}
    for field, values in samples.items():
        result[f"{field}_us"] = _median(values)
        result[f"{field}_ratio"] = _median(ratios[field], 3)

    def relative(a: str, b: str) -> float | None:
        # Both normalised by their own moment's floor, round by round: the load of the moment cancels out.
        if a not in ratios or b not in ratios:
            return None
        return round(statistics.median(x / y for x, y in zip(ratios[a], ratios[b], strict=True)), 3)

    for field in ("cachelayer_typed_dataclass", "cachelayer_typed_pydantic"):
        result[f"{field}_vs_cachelayer"] = relative(field, "cachelayer")
    result["cachelayer_vs_before"] = relative("cachelayer", "cachelayer_before")
    result["cachelayer_vs_aiocache"] = relative("cachelayer", "aiocache")
    for mode in OTEL_LIMITS:
        field = f"cachelayer_otel_{mode}"
        if paired.get(field):
            direct = sorted(paired[field])
            result[f"{field}_vs_cachelayer"] = round(statistics.median(direct), 3)
            quartiles = statistics.quantiles(direct, n=4) if len(direct) > 1 else [direct[0]] * 3
            result[f"{field}_vs_cachelayer_quartiles"] = [round(quartiles[0], 3), round(quartiles[2], 3)]
            # The rounds' own figure (each row against its floor), as this row was reported before the pairs.
            result[f"{field}_vs_cachelayer_rounds"] = relative(field, "cachelayer")
        else:
            result[f"{field}_vs_cachelayer"] = relative(field, "cachelayer")
    if paired.get("otel_sdk_span"):
        # The spans alone (made as the sampled subscriber makes a hit's) over the plain hit: the part of the sampled
        # row's overhead that is the span itself, not the subscriber's bookkeeping around it.
        result["otel_sdk_span_vs_cachelayer"] = round(statistics.median(paired["otel_sdk_span"]), 3)
    if paired:
        result["otel_pairs"] = otel_pairs
    for peer in ("aiocache_memory", "cashews_memory"):
        result[f"cachelayer_memory_vs_{peer}"] = relative("cachelayer_memory", peer)
    result["labels"] = {c.field: c.label for c in contenders}
    result["rounds"], result["number"] = rounds, number
    return {k: v for k, v in result.items() if v is not None}


def targets(result: dict[str, Any]) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    cl = result.get("cachelayer_ratio", float("inf"))
    checks.append((f"Redis @cached hit <= {RAW_LIMIT} x raw GET + orjson.loads ({cl:.3f})", cl <= RAW_LIMIT))
    # Peers are compared through their per-round ratios to the floor (medians of absolute times taken at
    # different moments of a shared machine can disagree with the paired figures).
    for peer in ("aiocache", "cashews"):
        if f"{peer}_ratio" in result:
            ours, theirs = result["cachelayer_ratio"], result[f"{peer}_ratio"]
            checks.append((f"Redis hit below {peer}'s ({ours:.3f} vs {theirs:.3f} x raw)", ours < theirs))
            rel = result.get(f"cachelayer_vs_{peer}")
            if peer == "aiocache" and rel is not None:
                checks.append((f"Redis hit <= {PEER_LIMIT} x aiocache's ({rel:.3f}, paired)", rel <= PEER_LIMIT))
        rel = result.get(f"cachelayer_memory_vs_{peer}_memory")
        if rel is not None:
            checks.append((f"memory hit below {peer}'s memory hit ({rel:.3f} x theirs, paired)", rel < 1))
    for kind, limit in TYPED_LIMITS.items():
        rel = result.get(f"cachelayer_typed_{kind}_vs_cachelayer")
        if rel is not None:
            checks.append((f"list[Item] ({kind}) hit <= {limit} x cachelayer_us ({rel:.3f}, paired)", rel <= limit))
    for mode, limit in OTEL_LIMITS.items():
        rel = result.get(f"cachelayer_otel_{mode}_vs_cachelayer")
        if rel is not None:
            text = f"Redis hit with OpenTelemetry {mode} <= {limit} x without ({rel:.3f}, paired)"
            sdk = result.get("otel_sdk_span_vs_cachelayer")
            if mode == "sampled" and sdk is not None:
                # The rest: the subscriber, and what the spans cost after they are made (the batch processor's
                # queue and thread, collecting them, caches they evicted), which the SDK-alone sample does not see.
                text += f"; its spans alone {sdk:.3f} x the hit, the rest {rel - 1 - sdk:+.3f}"
            checks.append((text, rel <= limit))
    rel = result.get("cachelayer_vs_before")
    if rel is not None:
        checks.append((f"Redis hit at most 5% slower than before the rewrite ({rel:.3f} x)", rel <= BEFORE_LIMIT))
    return checks


def report(result: dict[str, Any], command: str, load: tuple[list[float], list[float]]) -> str:
    rows = [["raw GET + orjson.loads (floor)", result["raw_us"], 1.0]]
    for field, label in result["labels"].items():
        rows.append([label, result[f"{field}_us"], result[f"{field}_ratio"]])
    headers = ["path", "us per hit", "x raw"]
    print(format_table(headers, rows))
    checks = targets(result)
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    return "\n".join(
        [
            "# Hit path benchmark",
            "",
            f"Command: `{command}`. A 20-item page (`service.demo_data.medium_page`, "
            f"{len(orjson.dumps(medium_page(0)))} bytes of JSON; the typed rows return its `items` as `list[Item]`), "
            f"sequential hits on one asyncio loop, Redis on loopback; {result['rounds']} rounds, each timing every "
            "contender (rotating order) right after its own floor sample; figures are medians over rounds, "
            "`x raw` the median of per-round ratios. Memory rows run 5x the calls per sample. "
            f"The OpenTelemetry rows' `_vs_cachelayer` ratios: the median of {result.get('otel_pairs', 0)} direct "
            "ratios per row, with their quartiles: off and unsampled timed call by call in turn with the plain "
            "`@cached` hit, sampled in blocks back to back with it, its deferred spans made inside its own block "
            "(alternating which goes first); `otel_sdk_span_vs_cachelayer`: a batch of spans made alone as the "
            "sampled subscriber makes a hit's, per span, over the plain hit; `_rounds`: the rows' "
            "ratio from the rounds above.",
            f"Measured {time.strftime('%Y-%m-%d %H:%M')}; load average (1/5/15 min) {load[0]} at start, {load[1]} "
            f"at end: `{orjson.dumps(environment(PACKAGES)).decode()}`",
            "",
            markdown_table(headers, rows),
            "",
            "Paired ratios (per-round ratio of the two rows' `x raw`, median; the OpenTelemetry rows': see above): "
            + ", ".join(f"`{k}` {v}" for k, v in result.items() if "_vs_" in k),
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
    parser.add_argument("--before", type=Path, metavar="TREE", help="an extracted older checkout to compare with")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument(
        "--otel-rounds", type=int, metavar="N", help="paired samples per OpenTelemetry row (default: 3x the rounds)"
    )
    parser.add_argument(
        "--only-otel",
        action="store_true",
        help="only the plain and OpenTelemetry Redis rows; writes only --json, not the results files",
    )
    args = parser.parse_args(argv)
    rounds, number = (5, 300) if args.quick else (15, 1000)
    rounds = args.rounds or rounds
    load_start = [round(x, 2) for x in os.getloadavg()]
    result = asyncio.run(measure(rounds, number, args.before, args.otel_rounds, args.only_otel))
    load_end = [round(x, 2) for x in os.getloadavg()]
    result["loadavg_start"], result["loadavg_end"] = load_start, load_end
    command = "python -m benchmarks.hit_path " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = report(result, command.strip(), (load_start, load_end))
    if not args.only_otel:
        write_text(RESULTS_DIR / "hit_path.md", markdown)
        write_json(RESULTS_DIR / "hit_path.json", result)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
