"""The backend one "process" (one :class:`cachelayer.Cache`) of a universe talks to: every store command first
waits for the scheduler, can be made to fail, and reports what it wrote to the oracle.

It delegates to the store the universe shares (possibly through a mutant, ``mutants.py``). The methods of the
:class:`cachelayer.Backend` protocol are spelled out; any other coroutine method of the store (an older protocol's)
is gated the same way through ``__getattr__``, so the harness drives whichever Cache is on the path.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cachelayer import Backend, StoreUnavailable, Subscription
from harness.consistency.scheduler import ACTOR, Scheduler

__all__ = ["GatedBackend", "WriteObserver"]


class WriteObserver(Protocol):
    def written(self, key: str, data: bytes) -> None:
        """A value was stored under ``key`` (a fill that was applied, or an explicit write)."""
        ...

    def touched(self, keys: Sequence[str]) -> None:
        """Keys a command named (for the cleanup of a shared store)."""
        ...


class GatedBackend:
    def __init__(
        self,
        inner: Backend,
        scheduler: Scheduler,
        observer: WriteObserver,
        *,
        on_failure: Callable[[str], None] = lambda actor: None,
    ) -> None:
        self.inner = inner
        self.on_failure = on_failure  # told which actor an injected failure hit
        self.scheduler = scheduler
        self.observer = observer
        # Every store looks remote to the cache (it then coalesces concurrent reads on memory too): the cache takes
        # the same path on every backend, so the same schedule means the same universe (the differential check).
        self.stores_objects = False
        self.failing_calls = 0  # the next this many store commands raise StoreUnavailable (chaos)
        self.calls = 0

    async def _call(self, op: str, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scheduler = self.scheduler
        await scheduler.gate(op)
        self.calls += 1
        if self.failing_calls > 0:
            self.failing_calls -= 1
            self.on_failure(ACTOR.get())
            raise StoreUnavailable(f"consistency harness: injected failure of {op}")
        self.observer.touched(_keys_named(args))
        scheduler.io_in_flight += 1
        try:
            return await method(*args, **kwargs)
        finally:
            scheduler.io_in_flight -= 1

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        @functools.wraps(attribute)
        async def gated(*args: Any, **kwargs: Any) -> Any:
            result = await self._call(name, attribute, args, kwargs)
            if name == "set":  # an older protocol's fill
                self.observer.written(args[0], args[1])
            return result

        return gated

    # -- lifecycle and introspection (not gated) --------------------------------------------------------------

    async def connect(self) -> None:
        await self.inner.connect()

    async def aclose(self) -> None:
        return None  # the store is the universe's, not this process's

    async def ping(self) -> None:
        await self._call("ping", self.inner.ping, (), {})

    def stats(self) -> dict[str, Any]:
        return self.inner.stats()

    def subscription(self, *, sharded: bool = False) -> Subscription:
        return self.inner.subscription(sharded=sharded)

    async def publish(self, channel: str, data: bytes, *, sharded: bool = False) -> None:
        await self._call("publish", self.inner.publish, (channel, data), {"sharded": sharded})

    # -- values -----------------------------------------------------------------------------------------------

    async def get(self, *args: Any, **kwargs: Any) -> bytes | None:
        result: bytes | None = await self._call("get", self.inner.get, args, kwargs)
        return result

    async def get_many(self, *args: Any, **kwargs: Any) -> list[bytes | None]:
        result: list[bytes | None] = await self._call("get_many", self.inner.get_many, args, kwargs)
        return result

    async def set(self, *args: Any, **kwargs: Any) -> None:
        await self._call("set", self.inner.set, args, kwargs)
        self.observer.written(_arg(args, kwargs, 0, "key"), _arg(args, kwargs, 1, "value"))

    async def set_many(self, *args: Any, **kwargs: Any) -> None:
        await self._call("set_many", self.inner.set_many, args, kwargs)
        for key, data, _ in _arg(args, kwargs, 0, "items"):
            self.observer.written(key, data)

    async def delete(self, *keys: str) -> int:
        result: int = await self._call("delete", self.inner.delete, keys, {})
        return result

    async def mark_stale(self, *args: Any, **kwargs: Any) -> int:
        result: int = await self._call("mark_stale", self.inner.mark_stale, args, kwargs)
        return result

    async def clear(self, *args: Any, **kwargs: Any) -> int:
        result: int = await self._call("clear", self.inner.clear, args, kwargs)
        return result

    # -- fills --------------------------------------------------------------------------------------------------

    async def begin_fill(self, *args: Any, **kwargs: Any) -> bool:
        result: bool = await self._call("begin_fill", self.inner.begin_fill, args, kwargs)
        return result

    async def renew_fill(self, *args: Any, **kwargs: Any) -> bool:
        result: bool = await self._call("renew_fill", self.inner.renew_fill, args, kwargs)
        return result

    async def end_fill(self, *args: Any, **kwargs: Any) -> None:
        await self._call("end_fill", self.inner.end_fill, args, kwargs)

    async def fill(self, *args: Any, **kwargs: Any) -> bool:
        applied: bool = await self._call("fill", self.inner.fill, args, kwargs)
        if applied:
            self.observer.written(_arg(args, kwargs, 0, "key"), _arg(args, kwargs, 2, "value"))
        return applied

    async def poll(self, *args: Any, **kwargs: Any) -> tuple[bytes | None, bool]:
        result: tuple[bytes | None, bool] = await self._call("poll", self.inner.poll, args, kwargs)
        return result

    # -- tags -------------------------------------------------------------------------------------------------

    async def tag_members(self, *args: Any, **kwargs: Any) -> list[str]:
        result: list[str] = await self._call("tag_members", self.inner.tag_members, args, kwargs)
        return result


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs[name]


def _keys_named(args: tuple[Any, ...]) -> list[str]:
    keys: list[str] = []
    for arg in args:
        if isinstance(arg, str):
            keys.append(arg)
        elif isinstance(arg, list | tuple):
            keys.extend(item for item in arg if isinstance(item, str))
    return keys
