"""The caches the benchmarks compare, each built the way its documentation shows, on the same Redis.

Every builder returns ``(fetch, close)``: ``fetch(item)`` is an async function cached by that library around
``loader(item)``; ``close()`` releases what the builder opened. Peers are optional (the ``bench`` extra);
:func:`available` lists the ones importable here. ``kind="memory"`` lists each library's in-process store (the
URL is then ignored); ``max_connections`` bounds the per-process Redis pool where the library lets us say so.
:func:`typed_cachelayer` builds the decorator with a typed return annotation, and :func:`load_package` imports
another checkout of cachelayer (an older commit) under its own name, so both can be timed in one process.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol
from urllib.parse import urlsplit

Loader = Callable[[int], Awaitable[Any]]
Fetch = Callable[[int], Awaitable[Any]]
Close = Callable[[], Awaitable[None]]
MEMORY_URL = "memory://"


class Builder(Protocol):
    def __call__(
        self, url: str, namespace: str, ttl: float, loader: Loader, *, max_connections: int = 64
    ) -> tuple[Fetch, Close]: ...


def _cachelayer_with(
    package: ModuleType | None,
    url: str,
    namespace: str,
    ttl: float,
    loader: Loader,
    *,
    max_connections: int = 64,
    returns: Any = Any,
) -> tuple[Fetch, Close]:
    lib: Any = package if package is not None else importlib.import_module("cachelayer")
    options: dict[str, Any] = {} if url == MEMORY_URL else {"max_connections": max_connections}
    cache = lib.Cache.from_url(url, namespace=namespace, default_ttl=ttl, **options)

    async def fetch(item: int) -> Any:
        return await loader(item)

    # The decorator reads the return annotation (a typed decoder for list[Item]); set as an object, not a string.
    fetch.__annotations__["return"] = returns
    # fetch closes over the loader: its name is its identity (also for an older cachelayer under --before).
    return lib.cached(ttl=ttl, cache=cache, name=f"{namespace}.fetch")(fetch), cache.aclose


def _cachelayer(
    url: str, namespace: str, ttl: float, loader: Loader, *, max_connections: int = 64
) -> tuple[Fetch, Close]:
    return _cachelayer_with(None, url, namespace, ttl, loader, max_connections=max_connections)


def typed_cachelayer(url: str, namespace: str, ttl: float, loader: Loader, returns: Any) -> tuple[Fetch, Close]:
    """``@cached`` on a function annotated ``-> returns`` (for example ``list[Item]``)."""
    return _cachelayer_with(None, url, namespace, ttl, loader, returns=returns)


def load_package(root: Path, name: str = "cachelayer_before") -> ModuleType:
    """The ``cachelayer`` package found under ``root`` (an extracted older commit), imported as ``name``. Its
    modules import each other relatively, so it lives beside the current one without touching it."""
    if name in sys.modules:
        return sys.modules[name]
    init = root / "cachelayer" / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    if spec is None or spec.loader is None:
        raise ImportError(f"no cachelayer package under {root}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def package_cachelayer(package: ModuleType) -> Builder:
    """The plain ``@cached`` contender built from another copy of the library (see :func:`load_package`)."""

    def build(
        url: str, namespace: str, ttl: float, loader: Loader, *, max_connections: int = 64
    ) -> tuple[Fetch, Close]:
        return _cachelayer_with(package, url, namespace, ttl, loader, max_connections=max_connections)

    return build


def _aiocache(stampede: bool, memory: bool = False) -> Builder:
    def build(
        url: str, namespace: str, ttl: float, loader: Loader, *, max_connections: int = 64
    ) -> tuple[Fetch, Close]:
        from aiocache import Cache as AioCache  # type: ignore[import-untyped]
        from aiocache import cached, cached_stampede
        from aiocache.serializers import JsonSerializer  # type: ignore[import-untyped]

        if memory:
            # As documented: SimpleMemoryCache with its default serializer (none: it keeps the object itself).
            options: dict[str, Any] = {"ttl": int(max(1, ttl)), "cache": AioCache.MEMORY, "namespace": namespace}
        else:
            # aiocache 0.12 builds its own redis client and takes no pool size: its default pool is used.
            parts = urlsplit(url)
            options = {
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


def _cashews(mode: str) -> Builder:
    def build(
        url: str, namespace: str, ttl: float, loader: Loader, *, max_connections: int = 64
    ) -> tuple[Fetch, Close]:
        from cashews import Cache as CashewsCache

        cache = CashewsCache()
        if mode == "memory":
            cache.setup("mem://")  # as documented: values kept as objects, no serialization
        else:
            cache.setup(url, client_side=False, max_connections=max_connections)
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


BUILDERS: dict[str, tuple[str, Builder]] = {
    "cachelayer": ("cachelayer", _cachelayer),
    "aiocache.cached": ("aiocache", _aiocache(stampede=False)),
    "aiocache.cached_stampede": ("aiocache", _aiocache(stampede=True)),
    "cashews.cache": ("cashews", _cashews("plain")),
    "cashews.cache(lock=True)": ("cashews", _cashews("lock")),
    "cashews.locked": ("cashews", _cashews("locked")),
}
#: Each library's in-process store (one process only: no cross-process stampede protection is possible).
MEMORY_BUILDERS: dict[str, tuple[str, Builder]] = {
    "cachelayer.memory": ("cachelayer", _cachelayer),
    "aiocache.memory": ("aiocache", _aiocache(stampede=False, memory=True)),
    "cashews.memory": ("cashews", _cashews("memory")),
}


def available(kind: str = "redis") -> list[str]:
    builders = MEMORY_BUILDERS if kind == "memory" else BUILDERS
    return [name for name, (module, _) in builders.items() if importlib.util.find_spec(module) is not None]


def build(
    name: str, url: str, namespace: str, ttl: float, loader: Loader, *, max_connections: int = 64
) -> tuple[Fetch, Close]:
    if name in MEMORY_BUILDERS:
        return MEMORY_BUILDERS[name][1](MEMORY_URL, namespace, ttl, loader, max_connections=max_connections)
    return BUILDERS[name][1](url, namespace, ttl, loader, max_connections=max_connections)
