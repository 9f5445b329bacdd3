"""@cached on functions and methods against the real Redis (DB 15)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio

import cachelayer
from cachelayer import Cache, CacheError, KeyEncodingError, cached, set_default_cache

TYPING_DIR = Path(__file__).parent / "typing"


@pytest_asyncio.fixture
async def cache(redis_client: redis.asyncio.Redis) -> AsyncIterator[Cache]:
    # A namespace of this test's own: the exact load counts below must not see another session's entries.
    c = Cache(redis_client, namespace=f"dec-{uuid.uuid4().hex[:10]}")
    set_default_cache(c)
    yield c
    set_default_cache(None)
    await c.aclose()


class Counter:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []


async def test_function_results_are_cached_per_arguments(cache: Cache) -> None:
    seen = Counter()

    @cached(ttl=60, exclude=["seen"])  # a call log: state the function writes, not what it computes from
    async def double(x: Any) -> Any:
        seen.calls.append((x,))
        return [x, x]

    assert await double(1) == [1, 1]
    assert await double(1) == [1, 1]
    assert await double("1") == ["1", "1"]  # f(1) and f("1") are different entries
    assert seen.calls == [(1,), ("1",)]


async def test_key_invalidate_refresh(cache: Cache, redis_client: redis.asyncio.Redis) -> None:
    version = 0

    # A closure is keyed by its free variables; excluding `version` lets this test see the stale entry.
    @cached(ttl=60, exclude=["version"])
    async def current(name: str) -> dict[str, Any]:
        return {"name": name, "version": version}

    key = current.key("a")
    assert key.startswith(f"{cache.namespace}:{{")
    assert f"{__name__}." in key
    assert await current("a") == {"name": "a", "version": 0}
    assert await redis_client.exists(key) == 1
    version = 1
    assert await current("a") == {"name": "a", "version": 0}
    assert await current.invalidate("a") is True
    assert await current("a") == {"name": "a", "version": 1}
    version = 2
    assert await current.refresh("a") == {"name": "a", "version": 2}
    assert await current("a") == {"name": "a", "version": 2}


async def test_methods_are_keyed_by_their_instance(cache: Cache) -> None:
    class Repo:
        loads = 0

        def __init__(self, db: str) -> None:
            self.db = db

        def __cache_key__(self) -> str:
            return self.db

        @cached(ttl=60, exclude=["trace"])
        async def get(self, wid: int, trace: str = "") -> str:
            Repo.loads += 1
            return f"{self.db}:{wid}"

    a, b = Repo("db_a"), Repo("db_b")
    assert await a.get(1) == "db_a:1"
    assert await b.get(1, trace="x") == "db_b:1"  # another instance: its own entry
    assert await Repo("db_a").get(1) == "db_a:1"  # an equal instance: the same entry
    assert Repo.loads == 2
    assert a.get.key(1) != b.get.key(1)
    assert a.get.key(1) == Repo("db_a").get.key(1, trace="y")
    assert await b.get.invalidate(1)
    assert await b.get.refresh(1) == "db_b:1"
    entry = await a.get.entry(1)
    assert entry.outcome == "hit"
    assert entry.body() == b'"db_a:1"'


def test_a_method_without_cache_key_is_refused_with_both_fixes() -> None:
    with pytest.raises(RuntimeError) as raised:  # Python wraps errors raised in __set_name__

        class Repo:
            @cached(ttl=60)
            async def get(self, wid: int) -> str:
                return str(wid)

    cause = raised.value.__cause__
    assert isinstance(cause, KeyEncodingError)
    assert "__cache_key__" in str(cause)
    assert 'instances="shared"' in str(cause)


async def test_instances_may_share_entries_when_the_decoration_says_so(cache: Cache) -> None:
    class Repo:
        def __init__(self, prefix: str) -> None:
            self.prefix = prefix

        @cached(ttl=60, instances="shared")
        async def get(self, wid: int) -> str:
            return f"{self.prefix}{wid}"

    assert await Repo("a").get(1) == "a1"
    assert await Repo("b").get(1) == "a1"  # stated: instances share entries


async def test_tag_templates_drive_invalidation(cache: Cache) -> None:
    loads: list[int] = []

    @cached(ttl=60, tags=["wallpaper:{wid}", "details"], exclude=["loads"])
    async def detail(wid: int) -> int:
        loads.append(wid)
        return wid * 10

    await detail(1)
    await detail(2)
    assert await cache.invalidate_tags("wallpaper:1") == 1
    await detail(1)
    await detail(2)
    assert loads == [1, 2, 1]


async def test_template_key_is_readable(cache: Cache) -> None:
    @cached(ttl=60, key="cat={category}:page={page}", name="listing")
    async def listing(category: str, page: int = 1) -> list[int]:
        return [page]

    key = listing.key("art", 2)
    # name, the return type's shape version (list[int]), the readable part, the argument hash
    assert key.startswith(f"{cache.namespace}:{{listing@t"), key
    assert ":cat=art:page=2:" in key, key
    assert await listing("art", 2) == [2]


async def test_explicit_cache_and_factory(redis_client: redis.asyncio.Redis) -> None:
    mine = Cache(redis_client, namespace=f"explicit-{uuid.uuid4().hex[:10]}")

    @cached(ttl=5, cache=mine)
    async def one() -> int:
        return 1

    @cached(ttl=5, cache=lambda: mine)
    async def two() -> int:
        return 2

    assert (await one(), await two()) == (1, 2)
    assert one.key().startswith(f"{mine.namespace}:")


async def test_no_default_cache_is_a_clear_error() -> None:
    set_default_cache(None)

    @cached(ttl=5)
    async def f() -> int:
        return 1

    with pytest.raises(CacheError, match="set_default_cache"):
        await f()


def test_sync_functions_are_refused() -> None:
    def sync() -> int:
        return 1

    with pytest.raises(TypeError, match="async"):
        cached(ttl=5)(sync)  # type: ignore[arg-type]


def test_wrapper_keeps_the_function_metadata() -> None:
    @cached(ttl=5)
    async def documented(x: int) -> int:
        """Docs."""
        return x

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Docs."
    assert documented.__wrapped__ is not None


def test_mypy_sees_the_original_signature() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(TYPING_DIR / "typed_example.py")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(TYPING_DIR / "typed_errors.py")],
        capture_output=True,
        text=True,
    )
    expected = {
        line_no
        for line_no, line in enumerate((TYPING_DIR / "typed_errors.py").read_text().splitlines(), 1)
        if "# E:" in line
    }
    reported = {int(line.split(":")[1]) for line in bad.stdout.splitlines() if ": error:" in line}
    assert reported == expected, bad.stdout


def test_public_api_is_pinned() -> None:
    assert sorted(cachelayer.__all__) == sorted(
        [
            "Backend",
            "Backoff",
            "BoundCachedFunction",
            "Cache",
            "CacheClosedError",
            "CacheEntry",
            "CacheError",
            "CacheHooks",
            "CacheMetrics",
            "CachedFunction",
            "CircuitBreaker",
            "Codec",
            "CodecError",
            "ConfigurationError",
            "ConsistencyMonitor",
            "DeadlineExceededError",
            "DictionaryRegistry",
            "EntryPolicy",
            "ExponentialBackoff",
            "FetchHooks",
            "FetchOutcome",
            "Guard",
            "GuardedBackend",
            "Frame",
            "KeyEncodingError",
            "LeaseTimeoutError",
            "LoadFailedError",
            "LocalCache",
            "MISSING",
            "MemoryBackend",
            "Message",
            "Missing",
            "MsgpackSerializer",
            "NullBackend",
            "OrjsonSerializer",
            "Outcome",
            "RedisBackend",
            "SerializationError",
            "Serializer",
            "StampedePolicy",
            "StoreConnectError",
            "StoreOptions",
            "StoreUnavailable",
            "Subscription",
            "Tier",
            "ValueTooLargeError",
            "WrongEventLoopError",
            "__version__",
            "add_global_hooks",
            "backend_from_url",
            "cached",
            "canonical_bytes",
            "current_deadline",
            "get_default_cache",
            "instrument_opentelemetry",
            "register_prometheus",
            "register_scheme",
            "registered_schemes",
            "remove_global_hooks",
            "set_default_cache",
            "time_budget",
            "train_dictionary",
        ]
    )
    for name in cachelayer.__all__:
        assert hasattr(cachelayer, name), name
    assert (Path(cachelayer.__file__).parent / "py.typed").exists()
