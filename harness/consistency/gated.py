"""The backend one "process" (one :class:`cachelayer.Cache`) of a universe talks to: every store command first
waits for the scheduler, can be made to fail, and reports what it wrote to the oracle.

It delegates to the store the universe shares (possibly through a mutant, ``mutants.py``). The methods of the
:class:`cachelayer.Backend` protocol are spelled out; any other coroutine method of the store (an older protocol's)
is gated the same way through ``__getattr__``, so the harness drives whichever Cache is on the path.

A read's reply is a step of its own (``get-reply``, ``get_many-reply``): the store answered at the command's step,
and the reader sees the answer only when the schedule says so. Other actors run in between, as they do while a
real reply crosses the network: a caller that starts then must not be handed that answer (it was read before the
caller began).

A written value that carries tags (``cachelayer._tags``) is reported as written only when it is live by its tags'
stamps right after the write; one already outdated is reported as dead (see :meth:`GatedBackend._report`).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cachelayer import Backend, Codec, StoreUnavailable, Subscription
from cachelayer._keys import KeyLayout
from cachelayer._tags import Verdict, judge
from harness.consistency.scheduler import ACTOR, Scheduler

__all__ = ["GatedBackend", "WriteObserver"]

_CODEC = Codec()
# Set in a lease waiter's task when its poll found a tagged value: the waiter's next store command is the read of
# that value's stamps (``fresh`` judges what it polled), part of the same look at the store.
_JUDGING_POLL: contextvars.ContextVar[bool] = contextvars.ContextVar("consistency_judging_poll", default=False)


class WriteObserver(Protocol):
    def written(self, key: str, data: bytes) -> None:
        """A live value was stored under ``key`` (a fill that was applied, or an explicit write)."""
        ...

    def dead_write(self, key: str, data: bytes) -> None:
        """A value was stored under ``key`` whose tag stamps were already outdated: no reader can take it as
        fresh, ever (see :meth:`GatedBackend._report`)."""
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
        keys: KeyLayout,
        truth: Backend | None = None,
        on_failure: Callable[[str], None] = lambda actor: None,
    ) -> None:
        self.inner = inner
        self.keys = keys  # the cache's key layout: where a frame's tags keep their stamps
        # The store itself, beneath any mutant (default: ``inner``): where a written value's liveness is read.
        self.truth = truth if truth is not None else inner
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

    async def _report(self, key: str, data: bytes) -> None:
        """Tell the oracle about ``data``, just stored under ``key``: written when it is live by its tags' stamps
        now, dead otherwise.

        Sound because stamps only move forward: an invalidation gives a tag 16 new random bytes (marking stale: 8
        new random bytes in its second half), and a stamp that went missing (evicted, expired) is made again as 16
        new random bytes, never the old one. So once a tag's stamp differs from the one a frame carries, or is
        missing, it never equals that stamp again: the frame is never live again, and no reader takes it as fresh
        (a missing or first-half change is a miss; a second-half change serves it only as a stale copy when its
        reload fails, which the read checks judge). Such a write cannot undo an invalidation, so it is no stale set.
        The stamps are read from the store itself (``truth``: beneath any mutant), ungated, with the write just done
        and nothing else running (the scheduler releases no actor while a store call is in flight): what they say is
        what the write met.
        """
        tags = _CODEC.read_frame(data).tags
        if not tags:
            self.observer.written(key, data)
            return
        tag_keys = [self.keys.tag_key(tag) for tag in dict(tags)]
        with self.scheduler.in_flight():
            found = await self.truth.get_many(tag_keys)
        stamps = dict(zip(dict(tags), found, strict=True))
        if judge(tags, stamps) is Verdict.LIVE:
            self.observer.written(key, data)
        else:
            self.observer.dead_write(key, data)

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
        await self.scheduler.gate("get-reply")
        return result

    async def get_many(self, *args: Any, **kwargs: Any) -> list[bytes | None]:
        # The stamps of what a lease waiter just polled: no more progress than the poll itself (scheduler.py).
        op = "poll-stamps" if _JUDGING_POLL.get() else "get_many"
        _JUDGING_POLL.set(False)
        result: list[bytes | None] = await self._call(op, self.inner.get_many, args, kwargs)
        if op == "get_many":
            await self.scheduler.gate("get_many-reply")
        return result

    async def set(self, *args: Any, **kwargs: Any) -> None:
        await self._call("set", self.inner.set, args, kwargs)
        await self._report(_arg(args, kwargs, 0, "key"), _arg(args, kwargs, 1, "value"))

    async def set_many(self, *args: Any, **kwargs: Any) -> None:
        await self._call("set_many", self.inner.set_many, args, kwargs)
        for key, data, _ in _arg(args, kwargs, 0, "items"):
            await self._report(key, data)

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
        key, data = _arg(args, kwargs, 0, "key"), _arg(args, kwargs, 2, "value")
        tag_keys = args[4] if len(args) > 4 else kwargs.get("tag_keys", ())
        if not tag_keys:
            applied: bool = await self._call("fill", self.inner.fill, args, kwargs)
            if applied:
                await self._report(key, data)
            return applied

        async def fill_seen(*args: Any, **kwargs: Any) -> tuple[bool, bool]:
            # A refused tagged fill may have written all the same (a cluster checks the stamps beside the write):
            # whether it did is read around it (ungated, in the same step), and what it wrote is judged like any
            # write, so "every reader refuses it" is checked here, not assumed.
            before = await self.truth.get(key)
            applied: bool = await self.inner.fill(*args, **kwargs)
            wrote = applied or (before != data and await self.truth.get(key) == data)
            return applied, wrote

        applied, wrote = await self._call("fill", fill_seen, args, kwargs)
        if wrote:
            await self._report(key, data)
        return applied

    async def poll(self, *args: Any, **kwargs: Any) -> tuple[bytes | None, bool]:
        result: tuple[bytes | None, bool] = await self._call("poll", self.inner.poll, args, kwargs)
        data = result[0]
        _JUDGING_POLL.set(data is not None and bool(_CODEC.read_frame(data).tags))
        return result

    # -- tags -------------------------------------------------------------------------------------------------

    async def tag_stamps(self, *args: Any, **kwargs: Any) -> list[bytes]:
        result: list[bytes] = await self._call("tag_stamps", self.inner.tag_stamps, args, kwargs)
        return result

    async def invalidate_tags(self, *args: Any, **kwargs: Any) -> int:
        result: int = await self._call("invalidate_tags", self.inner.invalidate_tags, args, kwargs)
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
