"""The caches the benchmarks compare, each built the way its documentation shows, on the same Redis.

Every builder returns ``(fetch, close)``: ``fetch(item)`` is an async function cached by that library around
``loader(item)``; ``close()`` releases what the builder opened. Peers are optional (the ``bench`` extra);
:func:`available` lists the ones importable here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

Loader = Callable[[int], Awaitable[Any]]
Fetch = Callable[[int], Awaitable[Any]]
Close = Callable[[], Awaitable[None]]


def _cachelayer(url: str, namespace: str, ttl: float, loader: Loader) -> tuple[Fetch, Close]:
    from cachelayer import Cache, cached

    cache = Cache.from_url(url, namespace=namespace, default_ttl=ttl, max_connections=64)

    @cached(ttl=ttl, cache=cache)
    async def fetch(item: int) -> Any:
        return await loader(item)

    return fetch, cache.aclose


def _aiocache(stampede: bool) -> Callable[[str, str, float, Loader], tuple[Fetch, Close]]:
    def build(url: str, namespace: str, ttl: float, loader: Loader) -> tuple[Fetch, Close]:
        from aiocache import Cache as AioCache  # type: ignore[import-untyped]
        from aiocache import cached, cached_stampede
        from aiocache.serializers import JsonSerializer  # type: ignore[import-untyped]

        parts = urlsplit(url)
        options: dict[str, Any] = {
            "ttl": int(max(1, ttl)),
            "cache": AioCache.REDIS,
            "endpoint": parts.hostname,
            "port": parts.port or 6379,
            "db": int(parts.path.lstrip("/") or 0),
            "namespace": namespace,
            "serializer": JsonSerializer(),
        }
        decorator = cached_stampede(lease=2, **options) if stampede else cached(**options)

        @decorator  # type: ignore[untyped-decorator]
        async def fetch(item: int) -> Any:
            return await loader(item)

        async def close() -> None:
            await fetch.cache.close()

        return fetch, close

    return build


def _cashews(mode: str) -> Callable[[str, str, float, Loader], tuple[Fetch, Close]]:
    def build(url: str, namespace: str, ttl: float, loader: Loader) -> tuple[Fetch, Close]:
        from cashews import Cache as CashewsCache

        cache = CashewsCache()
        cache.setup(url, client_side=False)
        if mode == "lock":

            @cache(ttl=ttl, prefix=namespace, lock=True)
            async def fetch(item: int) -> Any:
                return await loader(item)
        elif mode == "locked":

            @cache(ttl=ttl, prefix=namespace)
            @cache.locked(ttl=10, prefix=namespace + "-lock")
            async def fetch(item: int) -> Any:
                return await loader(item)
        else:

            @cache(ttl=ttl, prefix=namespace)
            async def fetch(item: int) -> Any:
                return await loader(item)

        async def close() -> None:
            await cache.close()

        return fetch, close

    return build


BUILDERS: dict[str, tuple[str, Callable[[str, str, float, Loader], tuple[Fetch, Close]]]] = {
    "cachelayer": ("cachelayer", _cachelayer),
    "aiocache.cached": ("aiocache", _aiocache(stampede=False)),
    "aiocache.cached_stampede": ("aiocache", _aiocache(stampede=True)),
    "cashews.cache": ("cashews", _cashews("plain")),
    "cashews.cache(lock=True)": ("cashews", _cashews("lock")),
    "cashews.locked": ("cashews", _cashews("locked")),
}


def available() -> list[str]:
    return [name for name, (module, _) in BUILDERS.items() if importlib.util.find_spec(module) is not None]


def build(name: str, url: str, namespace: str, ttl: float, loader: Loader) -> tuple[Fetch, Close]:
    return BUILDERS[name][1](url, namespace, ttl, loader)
