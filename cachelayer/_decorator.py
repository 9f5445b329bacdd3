"""``@cached``: cache-aside for async functions and methods, typed with ParamSpec."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from ._cache import Cache
from ._entry import CacheEntry
from ._errors import CacheError
from ._keys import ArgumentKeyer
from ._stampede import StampedePolicy

__all__ = ["BoundCachedFunction", "CachedFunction", "cached", "get_default_cache", "set_default_cache"]

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
S = TypeVar("S")

_default_cache: Cache | None = None


def set_default_cache(cache: Cache | None) -> None:
    """Make ``cache`` the one ``@cached`` functions use when given no ``cache=``. Call once at start-up."""
    global _default_cache
    _default_cache = cache


def get_default_cache() -> Cache:
    if _default_cache is None:
        raise CacheError("no cache given and no default set: call cachelayer.set_default_cache(cache) at start-up")
    return _default_cache


class CachedFunction(Generic[P, R]):
    """An async function whose results live in the cache. Call it as the function itself; also:

    - ``await f.invalidate(*args, **kw)`` deletes the entry for those arguments;
    - ``await f.refresh(*args, **kw)`` runs the function now and stores the result;
    - ``f.key(*args, **kw)`` is the Redis key for those arguments;
    - ``await f.entry(*args, **kw)`` is the :class:`CacheEntry` (stored bytes, no JSON parse) for them.
    """

    def __init__(
        self,
        func: Callable[P, Awaitable[R]],
        *,
        ttl: float | None,
        cache: Cache | Callable[[], Cache] | None,
        key: str | None,
        exclude: Iterable[str],
        tags: Iterable[str],
        stale_ttl: float | None,
        none_ttl: float | None,
        stampede: StampedePolicy | None,
        name: str | None,
        local: bool = False,
    ) -> None:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"@cached needs an async function; {func.__qualname__} is not one")
        self.__wrapped__ = func  # update_wrapper sets it too; declared here for the type checker
        functools.update_wrapper(self, func)
        self._func = func
        self._cache = cache
        self._keyer = ArgumentKeyer(func, exclude=exclude, template=key, tags=tags, prefix=name)
        self._ttl = ttl
        self._stale_ttl = stale_ttl
        self._none_ttl = none_ttl
        self._stampede = stampede
        self._local = local
        self._options: dict[tuple[Cache, tuple[str, ...]], Any] = {}

    @property
    def cache(self) -> Cache:
        if self._cache is None:
            return get_default_cache()
        return self._cache if isinstance(self._cache, Cache) else self._cache()

    def _plan(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Cache, str, Any]:
        cache = self.cache
        name, tags = self._keyer.name_and_tags(args, kwargs)
        # Options depend only on the cache and the tags: build them once, not on every hit.
        opts = self._options.get((cache, tags))
        if opts is None:
            if len(self._options) >= 1024:
                self._options.clear()
            opts = self._options[(cache, tags)] = cache._options(
                self._ttl, self._stale_ttl, self._none_ttl, tags, self._stampede, self._local
            )
        return cache, cache.key(name), opts

    async def _entry(self, args: tuple[Any, ...], kwargs: dict[str, Any], want_value: bool) -> CacheEntry:
        cache, key, opts = self._plan(args, kwargs)
        return await cache._fetch(key, lambda: self._func(*args, **kwargs), opts, want_value=want_value)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        entry = await self._entry(args, kwargs, want_value=True)
        return entry.value()  # type: ignore[no-any-return]

    async def entry(self, *args: P.args, **kwargs: P.kwargs) -> CacheEntry:
        return await self._entry(args, kwargs, want_value=False)

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return self.cache.key(self._keyer.name_and_tags(args, kwargs)[0])

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        return await self.cache.delete_key(self.key(*args, **kwargs))

    async def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R:
        cache, key, opts = self._plan(args, kwargs)
        entry = await cache._load_and_store(key, lambda: self._func(*args, **kwargs), opts, None)
        return entry.value()  # type: ignore[no-any-return]

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> CachedFunction[P, R]: ...

    @overload
    def __get__(
        self: CachedFunction[Concatenate[S, P2], R], instance: S, owner: type[Any] | None = None
    ) -> BoundCachedFunction[P2, R]: ...

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        if instance is None:
            return self
        return BoundCachedFunction(self, instance)


class BoundCachedFunction(Generic[P, R]):
    """A cached method bound to an instance: the same operations, ``self`` supplied."""

    def __init__(self, function: CachedFunction[Any, R], instance: Any) -> None:
        self._function = function
        self._instance = instance
        self.__wrapped__ = function.__wrapped__

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._function(self._instance, *args, **kwargs)

    async def entry(self, *args: P.args, **kwargs: P.kwargs) -> CacheEntry:
        return await self._function.entry(self._instance, *args, **kwargs)

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return self._function.key(self._instance, *args, **kwargs)

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        return await self._function.invalidate(self._instance, *args, **kwargs)

    async def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._function.refresh(self._instance, *args, **kwargs)


def cached(
    ttl: float | None = None,
    *,
    cache: Cache | Callable[[], Cache] | None = None,
    key: str | None = None,
    exclude: Iterable[str] = (),
    tags: Iterable[str] = (),
    stale_ttl: float | None = None,
    none_ttl: float | None = None,
    stampede: StampedePolicy | None = None,
    name: str | None = None,
    local: bool = False,
) -> Callable[[Callable[P, Awaitable[R]]], CachedFunction[P, R]]:
    """Cache an async function's results for ``ttl`` seconds (default: the cache's ``default_ttl``).

    ``key`` is an optional readable template over the arguments (``"page:{category}:{page}"``) put in front of
    the argument hash; ``exclude`` names arguments that do not change the result (a DB session, a logger);
    ``tags`` are templates too (``"wallpaper:{wallpaper_id}"``), for :meth:`Cache.invalidate_tags`. ``name``
    replaces ``module.qualname`` in the key (keep keys stable across a refactor). ``local=True`` serves hits
    from the cache's local tier (:class:`LocalCache`) when it has one.
    """

    def decorate(func: Callable[P, Awaitable[R]]) -> CachedFunction[P, R]:
        return CachedFunction(
            func,
            ttl=ttl,
            cache=cache,
            key=key,
            exclude=exclude,
            tags=tags,
            stale_ttl=stale_ttl,
            none_ttl=none_ttl,
            stampede=stampede,
            name=name,
            local=local,
        )

    return decorate
