"""The sampled consistency monitor (cachelayer/_monitor.py) on its own, with real asyncio: a dict for the store, a
dict for the database, a delay of 0.01 s, and ``drain()`` to wait for the checks (no fixed sleeps). The end-to-end
test through a real Cache (a stale write it must report) lives with the Cache's tests.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator

import pytest

from cachelayer._monitor import ConsistencyMonitor
from tests._doubles import FakeClock

DELAY = 0.01
ALWAYS = 0.0  # rand() < any positive sample_rate: every event is sampled


class World:
    """The store (fresh payloads by key) and the database the loader reads, plus what the monitor told us."""

    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}
        self.db: dict[str, bytes] = {}
        self.reads = 0
        self.loads = 0
        self.reports: list[tuple[str, str, str]] = []
        # Called after each read with the read's number (1-based): a test moves the world between two reads.
        self.after_read: Callable[[int], None] = lambda n: None

    async def read(self, key: str) -> bytes | None:
        self.reads += 1
        value = self.store.get(key)
        self.after_read(self.reads)
        return value

    def reloader(self, key: str) -> Callable[[], Awaitable[bytes]]:
        async def reload() -> bytes:
            self.loads += 1
            return self.db[key]

        return reload

    def report(self, function: str, key: str, detail: str) -> None:
        self.reports.append((function, key, detail))

    def fill(self, monitor: ConsistencyMonitor, key: str, value: bytes, function: str = "row") -> None:
        """A correct fill: the store and the database agree."""
        self.db[key] = self.store[key] = value
        monitor.after_fill(key, function, self.reloader(key))


def watch(world: World, **options: object) -> ConsistencyMonitor:
    settings: dict[str, object] = {"sample_rate": 1.0, "delay": DELAY, "max_checks_per_second": 1000.0}
    settings.update(options)
    monitor = ConsistencyMonitor(**settings)  # type: ignore[arg-type]
    monitor.attach(world.read, world.report)
    return monitor


def draws(*values: float) -> Callable[[], float]:
    """A ``rand`` answering ``values`` in turn."""
    it: Iterator[float] = iter(values)
    return lambda: next(it)


# --------------------------------------------------------------------------- verdicts


async def test_agreement_is_not_reported() -> None:
    world = World()
    monitor = watch(world)
    world.fill(monitor, "k", b'{"v":1}')
    await monitor.drain()
    assert world.reports == []
    stats = monitor.stats()
    assert (stats["checks_run"], stats["agreements"], stats["violations"]) == (1, 1, 0)
    assert world.loads == 1  # agreement costs one load, no confirmation


async def test_a_stale_entry_is_reported_once_confirmed(caplog: pytest.LogCaptureFixture) -> None:
    world = World()
    monitor = watch(world)
    world.fill(monitor, "k", b'{"v":1}', function="wallpaper_detail")
    world.db["k"] = b'{"v":2}'  # a write whose invalidation never came: the store keeps the old row
    with caplog.at_level(logging.WARNING, logger="cachelayer"):
        await monitor.drain()
    assert [(f, k) for f, k, _ in world.reports] == [("wallpaper_detail", "k")]
    assert "unchanged for at least" in world.reports[0][2]
    assert monitor.stats()["violations"] == 1
    assert world.loads == 2  # the suspicion was confirmed by a second load
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "cachelayer"]
    assert len(warnings) == 1
    assert "wallpaper_detail" in warnings[0]
    assert "key k" in warnings[0]
    assert '{"v":1}' not in warnings[0]  # payloads are fingerprinted, never logged


async def test_absent_entry_has_nothing_to_judge() -> None:
    world = World()
    monitor = watch(world)
    world.fill(monitor, "k", b"1")
    del world.store["k"]  # evicted, expired or invalidated before the check
    world.db["k"] = b"2"
    await monitor.drain()
    assert world.reports == []
    assert monitor.stats()["entries_absent"] == 1
    assert world.loads == 0  # nothing stored: no load spent


async def test_entry_changed_meanwhile_is_not_reported() -> None:
    world = World()
    monitor = watch(world)
    world.fill(monitor, "k", b"1")
    world.db["k"] = b"2"

    def refilled(n: int) -> None:
        if n == 1:  # between the first read and the second, the entry is invalidated and refilled
            world.store["k"] = b"2"

    world.after_read = refilled
    await monitor.drain()
    assert world.reports == []
    assert monitor.stats()["entries_changed"] == 1


async def test_invalidation_in_flight_is_a_suspicion_not_a_violation() -> None:
    """S1 == S2 != L1 (a write committed just before the load, its invalidation not landed yet): the second round
    finds the invalidation landed and reports nothing."""
    world = World()
    monitor = watch(world)
    world.fill(monitor, "k", b"1")
    world.db["k"] = b"2"

    def invalidation_lands(n: int) -> None:
        if n == 2:  # right after the first round's second read
            del world.store["k"]

    world.after_read = invalidation_lands
    await monitor.drain()
    assert world.reports == []
    stats = monitor.stats()
    assert (stats["disagreements_unconfirmed"], stats["violations"]) == (1, 0)


async def test_data_back_to_the_stored_value_is_not_reported() -> None:
    world = World()
    monitor = watch(world)
    world.store["k"] = b"1"
    answers = iter([b"2", b"1"])  # the row changes, then changes back, while the store holds 1 throughout

    async def reload() -> bytes:
        return next(answers)

    monitor.after_fill("k", "row", reload)
    await monitor.drain()
    assert world.reports == []
    assert monitor.stats()["disagreements_unconfirmed"] == 1


async def test_sampled_invalidation_checks_keys_of_sampled_fills() -> None:
    world = World()
    monitor = watch(world, rand=draws(ALWAYS, ALWAYS))
    world.fill(monitor, "k", b"1")
    await monitor.drain()  # the fill's own check: agreement
    # A write and its invalidation, then a buggy fill of the old row lands after the invalidation.
    world.db["k"] = b"2"
    world.store["k"] = b"1"
    monitor.after_invalidate(["k", "never-filled"])
    await monitor.drain()
    assert [(f, k) for f, k, _ in world.reports] == [("row", "k")]
    assert monitor.stats()["checks_run"] == 2  # "never-filled" has no known loader: not checked


async def test_invalidation_that_landed_is_consistent() -> None:
    world = World()
    monitor = watch(world)
    world.fill(monitor, "k", b"1")
    await monitor.drain()
    world.db["k"] = b"2"
    del world.store["k"]
    monitor.after_invalidate(["k"])
    await monitor.drain()
    assert world.reports == []
    assert monitor.stats()["entries_absent"] == 1


# --------------------------------------------------------------------------- cost: sampling, the rate bound, memory


async def test_unsampled_events_cost_one_draw_and_nothing_else() -> None:
    world = World()
    calls = 0

    def rand() -> float:
        nonlocal calls
        calls += 1
        return 0.5

    monitor = watch(world, sample_rate=0.25, rand=rand)
    world.fill(monitor, "k", b"1")
    monitor.after_invalidate(["k"])
    await monitor.drain()
    assert calls == 2
    assert (world.reads, world.loads) == (0, 0)
    assert set(monitor.stats().values()) == {0}  # nothing sampled, tracked or pending


async def test_sampling_follows_the_rate() -> None:
    world = World()
    monitor = watch(world, sample_rate=0.05, rand=random.Random(16).random, delay=3600.0, max_pending=10_000)
    for i in range(10_000):
        world.fill(monitor, f"k{i}", b"1")
    sampled = monitor.stats()["sampled"]
    assert 400 < sampled < 600  # 500 expected; binomial sd ~22
    assert monitor.stats()["checks_pending"] == sampled
    await monitor.aclose()


async def test_the_rate_bound_skips_and_counts() -> None:
    world = World()
    clock = FakeClock()
    monitor = watch(world, max_checks_per_second=2.0, clock=clock, delay=3600.0)
    for i in range(5):
        world.fill(monitor, f"k{i}", b"1")
    stats = monitor.stats()
    assert (stats["sampled"], stats["checks_pending"], stats["checks_skipped"]) == (5, 2, 3)  # burst of 2
    clock.advance(0.5)  # one more token
    world.fill(monitor, "k5", b"1")
    world.fill(monitor, "k6", b"1")
    stats = monitor.stats()
    assert (stats["checks_pending"], stats["checks_skipped"]) == (3, 4)
    await monitor.aclose()


async def test_a_confirmation_counts_against_the_bound_but_is_never_refused() -> None:
    world = World()
    clock = FakeClock()
    monitor = watch(world, max_checks_per_second=1.0, clock=clock)
    world.fill(monitor, "k", b"1")
    world.db["k"] = b"2"
    await monitor.drain()  # two loads on one token: the bucket is in debt
    assert monitor.stats()["violations"] == 1
    clock.advance(1.0)  # repays the debt only
    world.fill(monitor, "other", b"1")
    assert monitor.stats()["checks_skipped"] == 1
    clock.advance(1.0)
    world.fill(monitor, "other", b"1")
    assert monitor.stats()["checks_pending"] == 1
    await monitor.drain()


async def test_one_pending_check_per_key() -> None:
    world = World()
    monitor = watch(world)
    world.fill(monitor, "k", b"1")
    world.fill(monitor, "k", b"1")
    monitor.after_invalidate(["k"])
    assert monitor.stats()["checks_coalesced"] == 2
    await monitor.drain()
    assert monitor.stats()["checks_run"] == 1


async def test_memory_is_bounded() -> None:
    world = World()
    monitor = watch(world, max_pending=3, max_tracked=2, delay=3600.0)
    for i in range(5):
        world.fill(monitor, f"k{i}", b"1")
    stats = monitor.stats()
    assert (stats["checks_pending"], stats["checks_skipped"], stats["keys_tracked"]) == (3, 2, 2)
    await monitor.aclose()


# --------------------------------------------------------------------------- never in the way


async def test_failures_are_counted_never_raised() -> None:
    world = World()

    async def broken_read(key: str) -> bytes | None:
        raise ConnectionError("store down")

    monitor = ConsistencyMonitor(sample_rate=1.0, delay=DELAY)
    monitor.attach(broken_read, world.report)
    monitor.after_fill("k", "row", world.reloader("k"))
    await monitor.drain()
    assert monitor.stats()["checks_failed"] == 1


async def test_a_hanging_loader_times_out() -> None:
    world = World()
    world.store["k"] = b"1"
    never = asyncio.Event()

    async def hangs() -> bytes:
        await never.wait()
        return b"1"

    monitor = watch(world, timeout=DELAY)
    monitor.after_fill("k", "row", hangs)
    await monitor.drain()
    assert monitor.stats()["checks_failed"] == 1


async def test_a_failing_report_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    world = World()

    def broken_report(function: str, key: str, detail: str) -> None:
        raise RuntimeError("hook bug")

    monitor = ConsistencyMonitor(sample_rate=1.0, delay=DELAY, max_checks_per_second=100.0)
    monitor.attach(world.read, broken_report)
    world.fill(monitor, "k", b"1")
    world.db["k"] = b"2"
    with caplog.at_level(logging.WARNING, logger="cachelayer"):
        await monitor.drain()
    assert monitor.stats()["violations"] == 1
    assert "reporting a consistency violation of k failed" in caplog.text


async def test_aclose_cancels_pending_checks_and_ignores_later_events() -> None:
    world = World()
    monitor = watch(world, delay=3600.0)
    world.fill(monitor, "k", b"1")
    assert monitor.stats()["checks_pending"] == 1
    await monitor.aclose()
    assert (monitor.stats()["checks_pending"], monitor.stats()["keys_tracked"]) == (0, 0)
    world.fill(monitor, "k", b"1")
    monitor.after_invalidate(["k"])
    assert monitor.stats()["checks_pending"] == 0
    assert (world.reads, world.loads) == (0, 0)


async def test_nothing_is_checked_before_attach() -> None:
    monitor = ConsistencyMonitor(sample_rate=1.0, delay=DELAY)
    monitor.after_fill("k", "row", World().reloader("k"))
    assert monitor.stats()["checks_pending"] == 0


def test_one_monitor_per_cache() -> None:
    world = World()
    monitor = watch(world)
    with pytest.raises(RuntimeError, match="one cache"):
        monitor.attach(world.read, world.report)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"delay": -1.0}, "delay"),
        ({"max_checks_per_second": 0.0}, "max_checks_per_second"),
        ({"max_pending": 0}, "max_pending"),
    ],
)
def test_options_are_checked(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConsistencyMonitor(**options)  # type: ignore[arg-type]
