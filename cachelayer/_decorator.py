"""``@cached``: cache-aside for async functions and methods, typed with ParamSpec."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import reprlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, overload

from ._cache import Cache
from ._codec import Codec
from ._entry import CacheEntry
from ._errors import CacheError
from ._identity import IdentifiedCallable, underlying_function
from ._keys import ArgumentKeyer, check_method_owner, key_version
from ._policy import EntryPolicy
from ._serializers import serializer_by_name
from ._stampede import StampedePolicy
from ._typed import DeferredValueType, ValueType, value_type_for_function

__all__ = ["BoundCachedFunction", "CachedFunction", "cached", "get_default_cache", "set_default_cache"]

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
S = TypeVar("S")

_default_cache: Cache | None = None
_UNRESOLVED: Any = object()


def set_default_cache(cache: Cache | None) -> None:
    """Make ``cache`` the one ``@cached`` functions use when given no ``cache=``. Call once at start-up."""
    global _default_cache
    _default_cache = cache


def get_default_cache() -> Cache:
    if _default_cache is None:
        raise CacheError("no cache given and no default set: call cachelayer.set_default_cache(cache) at start-up")
    return _default_cache


class CachedFunction(IdentifiedCallable, Generic[P, R]):
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
        version: str | None = None,
        instances: Literal["key", "shared"] = "key",
    ) -> None:
        # @cached over @staticmethod/@classmethod: cache the function inside, and bind as the wrapper said.
        self._binding: Literal["instance", "static", "class"] = "instance"
        if isinstance(func, staticmethod | classmethod):
            self._binding = "static" if isinstance(func, staticmethod) else "class"
            func = func.__func__
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"@cached needs an async function (async def); it got {_describe(func, self._binding)}")
        plain = underlying_function(func)  # under a partial or a bound method: its name and annotations
        functools.update_wrapper(self, plain)
        self.__wrapped__ = func  # what is called (update_wrapper set the plain function under it)
        self._func = func
        self._cache = cache
        self._instances = instances
        self._name = name
        # What hooks and traces call this function: its own name, not the key prefix (which may carry a version).
        self._label = name or f"{plain.__module__}.{plain.__qualname__}"
        # The return annotation, resolved now so an unstorable type is an error at decoration; again for a cache
        # whose serializer is not JSON (the stored bytes differ).
        self._annotated = plain
        json_type = value_type_for_function(plain, serializer_by_name("orjson"))
        self._value_types: dict[int, ValueType[Any] | None] = {1: json_type}
        self._keyer_options: dict[str, Any] = {
            "exclude": exclude, "template": key, "tags": tuple(tags), "prefix": name, "instances": instances,
            "static": self._binding == "static",
        }  # fmt: skip
        self._version = version
        self._built_keyer: ArgumentKeyer | None = None
        if not isinstance(json_type, DeferredValueType):
            self._built_keyer = self._make_keyer()
        else:  # the key's version waits for the annotation, but a closure that cannot be keyed is refused now
            ArgumentKeyer(func, **self._keyer_options)
        self._base = EntryPolicy(ttl=ttl, stale_ttl=stale_ttl, none_ttl=none_ttl, local=local, stampede=stampede)
        # One policy per tag tuple, built once: a hit must not build objects it can reuse.
        self._policies: dict[tuple[str, ...], EntryPolicy] = {}
        self._last_codec: Codec | None = None
        self._last_value_type: ValueType[R] | None = None

    def _make_keyer(self) -> ArgumentKeyer:
        json_type = self._value_types[1]
        # The shape of the return type is part of the key: a deploy that changes it never reads old entries.
        version = key_version(json_type.version if json_type is not None else "", self._version)
        return ArgumentKeyer(self._func, version=version, **self._keyer_options)

    @property
    def _keyer(self) -> ArgumentKeyer:
        keyer = self._built_keyer
        if keyer is None:  # a return type named before it was defined: its shape is known at first use
            keyer = self._built_keyer = self._make_keyer()
        return keyer

    def identity_source(self) -> tuple[str | None, Any]:
        return self._name, self._func

    def __set_name__(self, owner: type, name: str) -> None:
        if self._binding != "instance" or not inspect.isfunction(self._func):
            return  # no self to key
        first = next(iter(inspect.signature(self._func).parameters), "")
        check_method_owner(owner, self._func.__qualname__, self._instances, first_parameter=first)

    @property
    def cache(self) -> Cache:
        if self._cache is None:
            return get_default_cache()
        return self._cache if isinstance(self._cache, Cache) else self._cache()

    def _value_type(self, cache: Cache) -> ValueType[R] | None:
        """The return type's codec for ``cache``'s serializer (JSON unless the cache says otherwise)."""
        serializer = cache.codec.serializer
        found = self._value_types.get(serializer.id, _UNRESOLVED)
        if found is _UNRESOLVED:
            found = self._value_types[serializer.id] = value_type_for_function(self._annotated, serializer)
        # The last codec's answer is reused without the lookup (a codec's serializer is set when it is built).
        self._last_codec, self._last_value_type = cache.codec, found
        return found  # type: ignore[no-any-return]  # resolved from this function's own annotation: R

    def _plan(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, EntryPolicy]:
        name, tags = (self._built_keyer or self._keyer).name_and_tags(args, kwargs)
        policy = self._policies.get(tags)
        if policy is None:
            if len(self._policies) >= 256:
                self._policies.clear()
            policy = self._policies[tags] = dataclasses.replace(self._base, tags=tags)
        return name, policy

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        name, policy = self._plan(args, kwargs)
        cache = self._cache if type(self._cache) is Cache else self.cache
        value_type = self._last_value_type if cache.codec is self._last_codec else self._value_type(cache)
        # A partial, not a closure (a function, a tuple and three cells): fewer objects a call, which a burst of
        # waiting callers keeps alive and the garbage collector walks.
        loader = functools.partial(self._func, *args, **kwargs)
        entry = await cache._start_fetch(name, loader, policy, value_type, True, self._label)
        return entry.value()

    async def entry(self, *args: P.args, **kwargs: P.kwargs) -> CacheEntry[R]:
        """The entry for these arguments with its stored bytes checked but not parsed (``entry.body()``)."""
        name, policy = self._plan(args, kwargs)
        cache = self._cache if type(self._cache) is Cache else self.cache
        value_type = self._last_value_type if cache.codec is self._last_codec else self._value_type(cache)
        loader = functools.partial(self._func, *args, **kwargs)
        return await cache._start_fetch(name, loader, policy, value_type, False, self._label)

    def local_entry(self, *args: P.args, **kwargs: P.kwargs) -> CacheEntry[R] | None:
        """The entry :meth:`entry` would give, when the cache's local tier holds a fresh one: at once, with no
        store read, no load and no await (what a server can answer before any asynchronous work). Counted and
        heard as a local-tier hit; None otherwise, and then nothing is counted (fetch as usual). Needs the
        running event loop, as every fetch does."""
        name, policy = self._plan(args, kwargs)
        cache = self._cache if type(self._cache) is Cache else self.cache
        if cache.local is None:
            return None
        value_type = self._last_value_type if cache.codec is self._last_codec else self._value_type(cache)
        loader = functools.partial(self._func, *args, **kwargs)  # an early refresh of the hit runs it
        return cache._local_entry(name, loader, policy, value_type, self._label)

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return self.cache.key(self._keyer.name_and_tags(args, kwargs)[0])

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        return await self.cache.delete(self._keyer.name_and_tags(args, kwargs)[0])

    async def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R:
        name, policy = self._plan(args, kwargs)
        cache = self.cache
        loader = functools.partial(self._func, *args, **kwargs)
        entry = await cache.refresh(name, loader, policy, value_type=self._value_type(cache), function=self._label)
        return entry.value()

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> CachedFunction[P, R]: ...

    @overload
    def __get__(
        self: CachedFunction[Concatenate[S, P2], R], instance: S, owner: type[Any] | None = None
    ) -> BoundCachedFunction[P2, R]: ...

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        if self._binding == "class":
            return BoundCachedFunction(self, owner if owner is not None else type(instance))
        if instance is None or self._binding == "static":
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

    async def entry(self, *args: P.args, **kwargs: P.kwargs) -> CacheEntry[R]:
        return await self._function.entry(self._instance, *args, **kwargs)

    def local_entry(self, *args: P.args, **kwargs: P.kwargs) -> CacheEntry[R] | None:
        return self._function.local_entry(self._instance, *args, **kwargs)

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return self._function.key(self._instance, *args, **kwargs)

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        return await self._function.invalidate(self._instance, *args, **kwargs)

    async def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._function.refresh(self._instance, *args, **kwargs)


def _describe(func: Any, binding: str) -> str:
    """What was decorated, for the error that says it is not an async function."""
    wrapper = {"static": "a staticmethod of ", "class": "a classmethod of "}.get(binding, "")
    if isinstance(func, functools.partial):
        return f"{wrapper}a functools.partial of {_describe(func.func, 'instance')}"
    if callable(func) and hasattr(func, "__qualname__"):
        return f"{wrapper}{getattr(func, '__module__', '?')}.{func.__qualname__}, which is not async"
    return f"{wrapper}{type(func).__qualname__} {reprlib.repr(func)}"


@overload
def cached(ttl: Callable[P, Awaitable[R]], /) -> CachedFunction[P, R]: ...


@overload
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
    version: str | None = None,
    instances: Literal["key", "shared"] = "key",
) -> Callable[[Callable[P, Awaitable[R]]], CachedFunction[P, R]]: ...


def cached(
    ttl: Any = None,
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
    version: str | None = None,
    instances: Literal["key", "shared"] = "key",
) -> Any:
    """Cache an async function's results for ``ttl`` seconds (default: the cache's ``default_ttl``). Bare
    ``@cached`` is ``@cached()``.

    ``key`` is an optional readable template over the arguments (``"page:{category}:{page}"``) put in front of
    the argument hash; ``exclude`` names arguments that do not change the result (a DB session, a logger), and may
    name free variables of a closure too; ``tags`` are templates too (``"wallpaper:{wallpaper_id}"``), for
    :meth:`Cache.invalidate_tags`. ``name`` replaces ``module.qualname`` in the key (keep keys stable across a
    refactor). ``local=True`` serves hits from the cache's local tier (:class:`LocalCache`) when it has one.

    The return annotation decides what a hit returns: ``-> list[Item]`` gives back ``Item`` objects (dataclasses,
    pydantic models, ``datetime``, ``Decimal``, ...), equal in type and value to what the function returned; the
    type's shape and ``version`` are part of the key, so two deploys with different definitions never read each
    other's entries. Without an annotation values come back as JSON (dicts, lists, strings).

    Methods: ``self`` is part of the key through its class's ``__cache_key__()`` (which must not return None); a
    class without one is an error when the class is created, unless ``instances="shared"`` says every instance
    shares the entries. ``@cached`` may sit above ``@staticmethod`` (no binding) or ``@classmethod`` (``cls`` keyed
    by its name).

    What the callable carries is part of its identity, so two callables of one ``module.qualname`` never share
    entries by accident (see :mod:`cachelayer._keys`): a closure is keyed by its free variables' current values, a
    ``functools.partial`` by its bound arguments, a bound method by its instance's ``__cache_key__()``. A free
    variable holding something with no canonical encoding (a client, a session), a mutable container, or one the
    function assigns (``nonlocal``) is refused at decoration: ``exclude=["that_name"]`` if it does not change the
    result, or ``name=`` to state the identity yourself (then nothing the callable carries is keyed).
    """
    if ttl is not None and not isinstance(ttl, int | float):  # bare @cached: ttl is the function
        if not callable(ttl) and not isinstance(ttl, classmethod):
            raise TypeError(f"ttl must be a number of seconds or None, not {type(ttl).__qualname__}")
        return cached()(ttl)

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
            version=version,
            instances=instances,
        )

    return decorate
