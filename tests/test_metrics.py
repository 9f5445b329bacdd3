"""stats() counts what happened; Prometheus reads the same counters at scrape time."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio
from prometheus_client import CollectorRegistry, generate_latest

from cachelayer import Cache, CircuitBreaker, Guard, GuardedBackend, MemoryBackend, cached, register_prometheus
from tests._doubles import eventually


async def load_page() -> dict[str, list[int]]:
    return {"items": list(range(300))}


def unique() -> str:
    """A namespace of this test's own: the exact counts must not see another session's entries."""
    return f"m-{uuid.uuid4().hex[:10]}"


async def test_stats_count_hits_misses_loads_and_bytes(redis_client: redis.asyncio.Redis) -> None:
    cache = Cache(redis_client, namespace=unique())
    await cache.get_or_set("p", load_page)
    await cache.get_or_set("p", load_page)
    await cache.get("absent")
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["loads"], stats["writes"]) == (1, 2, 1, 1)
    assert stats["lease_acquired"] == 1
    assert 0 < stats["bytes_stored"] < stats["bytes_raw"]
    assert stats["breaker_state"] == "closed"
    assert stats["store_errors"] == stats["decode_errors"] == 0


async def test_prometheus_collector_exposes_the_counters(redis_client: redis.asyncio.Redis) -> None:
    cache = Cache(redis_client, namespace=unique())
    registry = CollectorRegistry()
    register_prometheus("pages", cache.stats, registry)
    await cache.get_or_set("p", load_page)
    await cache.get_or_set("p", load_page)
    text = generate_latest(registry).decode()
    assert 'cachelayer_hits_total{cache="pages"} 1.0' in text
    assert 'cachelayer_loads_total{cache="pages"} 1.0' in text
    assert 'cachelayer_breaker_open{cache="pages"} 0.0' in text
    assert "cachelayer_bytes_stored_total" in text


async def test_prometheus_per_function_series_come_from_the_hooks() -> None:
    backend = MemoryBackend()
    cache = Cache(GuardedBackend(backend, Guard(breaker=CircuitBreaker(failure_threshold=1))), namespace=unique())
    registry = CollectorRegistry()
    register_prometheus("pages", cache.stats, registry, cache=cache)

    @cached(cache=cache)
    async def page(n: int) -> dict[str, int]:
        return {"n": n}

    await page(1)
    await page(1)
    await page(2)
    backend.fail_with()
    await page(3)
    text = generate_latest(registry).decode()
    function = "test_metrics.test_prometheus_per_function_series_come_from_the_hooks.<locals>.page"
    labels = f'cache="pages",function="{function}"'
    assert f'cachelayer_function_gets_total{{{labels},result="hit",tier="store"}} 1.0' in text
    assert f'cachelayer_function_gets_total{{{labels},result="miss",tier=""}} 2.0' in text
    assert f'cachelayer_function_gets_total{{{labels},result="fail_open",tier=""}} 1.0' in text
    assert f'cachelayer_function_loads_total{{{labels},result="success"}} 3.0' in text
    assert f'cachelayer_function_load_duration_seconds_count{{{labels}}} 3.0' in text
    assert f'cachelayer_function_fail_open_total{{{labels},operation="read"}} 1.0' in text
    assert 'cachelayer_store_state_changes_total{cache="pages",state="open",store="store"} 1.0' in text
    assert "m-" not in text.split("cachelayer_function_gets_total", 1)[1]  # no key, no namespace-derived value
    await cache.aclose()


async def test_two_caches_register_per_function_series_on_one_registry() -> None:
    registry = CollectorRegistry()
    caches = [Cache(MemoryBackend(), namespace=unique()) for _ in range(2)]
    for n, cache in enumerate(caches):
        register_prometheus(f"c{n}", cache.stats, registry, cache=cache)
        await cache.get_or_set("k", load_page)
    text = generate_latest(registry).decode()
    for n in range(2):
        labels = f'cache="c{n}",function="cachelayer.fetch",result="miss",tier=""'
        assert f"cachelayer_function_gets_total{{{labels}}} 1.0" in text
    for cache in caches:
        await cache.aclose()


async def test_a_wait_for_another_processs_load_is_observed_per_function() -> None:
    shared = MemoryBackend()  # two caches on one store: two processes
    holder, waiter = Cache(shared, namespace="lease-metric"), Cache(shared, namespace="lease-metric")
    registry = CollectorRegistry()
    register_prometheus("pages", waiter.stats, registry, cache=waiter)
    release, started = asyncio.Event(), asyncio.Event()

    async def slow() -> int:
        started.set()
        await release.wait()
        return 1

    async def never() -> int:
        raise AssertionError("the waiter must get the holder's value")

    loading = asyncio.create_task(holder.fetch("k", slow, function="app.page"))
    await started.wait()
    waiting = asyncio.create_task(waiter.fetch("k", never, function="app.page"))
    await eventually(lambda: waiter.stats()["lease_waits"] == 1, what="the waiter waits on the lease")
    release.set()
    assert (await loading).value() == 1
    assert (await waiting).value() == 1
    text = generate_latest(registry).decode()
    assert 'cachelayer_function_lease_wait_duration_seconds_count{cache="pages",function="app.page"} 1.0' in text
    await holder.aclose()
    await waiter.aclose()
