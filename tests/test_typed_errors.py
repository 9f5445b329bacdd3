"""Errors that help (issue 11, item 3): a value that cannot be stored is reported where it can be fixed.

- An annotation the cache cannot store is an error at decoration, naming the function, the type and the fixes.
- A function without an annotation that returns an unstorable value (bytes, a dict with tuple keys) still gives
  its caller the loader's value on every call: the cache fails open, logs once at WARNING (function, type, fix)
  and counts ``unstorable``.
- An explicit ``cache.set`` of an unstorable value raises :class:`SerializationError`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

import cachelayer._filling
from cachelayer import Cache, MemoryBackend, RedisBackend, SerializationError, cached
from tests._doubles import CountingLoader


class Connection:
    """An arbitrary class: neither a dataclass, NamedTuple, TypedDict nor pydantic model."""


@pytest_asyncio.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    """A cache on each backend (what is unstorable does not depend on the store), in a namespace of its own."""
    if request.param == "memory":
        backend: Any = MemoryBackend()
    else:
        backend = RedisBackend.from_url(request.getfixturevalue("redis_url"), max_connections=4, timeout=1.0)
    c = Cache(backend, namespace=f"t-typed-errors-{uuid.uuid4().hex[:10]}", owns_client=True)
    yield c
    await c.aclose()


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The "logged once" memory lives for the process: start each test with it empty, so that a test elsewhere
    that stored an unstorable value of the same type first cannot take this test's WARNING away."""
    monkeypatch.setattr(cachelayer._filling, "_WARNED_UNSTORABLE", set())


# --------------------------------------------------------------------------- at decoration


async def returns_tuple_keyed() -> dict[tuple[int, int], str]:
    return {}


async def returns_connection() -> Connection:
    return Connection()


async def returns_connections() -> list[Connection]:
    return []


@pytest.mark.parametrize(
    ("func", "type_text"),
    [
        pytest.param(returns_tuple_keyed, "dict[tuple[int, int], str]", id="tuple-keys"),
        pytest.param(returns_connection, "Connection", id="arbitrary-class"),
        pytest.param(returns_connections, "list[", id="arbitrary-class-in-a-list"),
    ],
)
def test_an_unstorable_annotation_is_an_error_at_decoration(func: Any, type_text: str) -> None:
    # No cache exists here: the annotation alone decides, before any call.
    with pytest.raises(SerializationError) as raised:
        cached(ttl=60)(func)
    message = str(raised.value)
    assert f"{__name__}.{func.__qualname__}" in message  # the function
    assert type_text in message  # the type
    assert "Connection" in message or "keys" in message  # what exactly is wrong
    assert "Fixes:" in message
    assert "dataclass" in message
    assert "drop the return annotation" in message


# --------------------------------------------------------------------------- at the first store


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        pytest.param(b"\x89PNG raw bytes", "bytes", id="bytes"),
        pytest.param({(1, 2): "tuple-keyed"}, "dict", id="dict-with-tuple-keys"),
    ],
)
async def test_an_unannotated_unstorable_value_fails_open_and_warns_once(
    cache: Cache, value: Any, type_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    loader = CountingLoader(value)

    @cached(ttl=60, cache=cache, exclude=["loader"])  # the loader counts calls: not part of the result
    async def thumbnail(wallpaper_id):  # type: ignore[no-untyped-def]  # no annotation: untyped JSON
        return await loader()

    with caplog.at_level(logging.WARNING, logger="cachelayer"):
        results = [await thumbnail(7) for _ in range(3)]

    assert results == [value] * 3  # the caller always gets the loader's value...
    assert loader.calls == 3  # ...loaded every time, since nothing could be stored
    assert cache.stats()["unstorable"] == 3
    assert await cache.backend.get(thumbnail.key(7)) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "not caching" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    message = warnings[0].getMessage()
    assert "thumbnail" in message  # the function
    assert f"value of type {type_name}" in message  # the type
    assert "Fixes:" in message  # and what to do


async def annotated_but_wrong() -> dict[str, int]:
    return {"count": "not an int"}  # type: ignore[dict-item]  # the bug this test is about


async def test_an_annotated_function_returning_a_value_of_another_type_fails_open(
    cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = cached(ttl=60, cache=cache)(annotated_but_wrong)  # the annotation itself is storable
    with caplog.at_level(logging.WARNING, logger="cachelayer"):
        for _ in range(2):
            value: Any = await wrong()
            assert value == {"count": "not an int"}
    assert cache.stats()["unstorable"] == 2
    warnings = [r.getMessage() for r in caplog.records if "not caching" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"{__name__}.annotated_but_wrong" in warnings[0]
    assert "dict[str, int]" in warnings[0]
    assert "Fixes:" in warnings[0]


# --------------------------------------------------------------------------- explicit writes


@pytest.mark.parametrize(
    "value",
    [pytest.param(b"raw bytes", id="bytes"), pytest.param({(1, 2): "x"}, id="dict-with-tuple-keys")],
)
async def test_an_explicit_set_of_an_unstorable_value_raises(cache: Cache, value: Any) -> None:
    with pytest.raises(SerializationError):
        await cache.set("k", value)
    assert await cache.backend.get(cache.key("k")) is None
    assert await cache.get("k", "absent") == "absent"
