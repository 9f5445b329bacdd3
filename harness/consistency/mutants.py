"""Wrong rules, as backends, that the harness must catch (some universe shows a stale counter > 0).

Each mutant sits between a process's gated backend and the shared store. The first four change only the fill-ticket
protocol (``begin_fill``, ``renew_fill``, ``end_fill``, ``fill``, ``poll``); values and tag stamps still live in the
real store, and a fill that gets through a mutant's ticket rule is made by the real store's ``fill`` with its tag
keys and stamps (``_store_anyway``), so the stamp check still applies: these mutants are about tickets. What a real
store would keep for the mutant (its ticket table, its generations) is one :class:`MutantState` shared by the
universe's processes.

1. ``naive``: get-load-set. Every load may fill; a fill always stores.
2. ``no-revoke``: a per-attempt token checked on fill, but invalidations remove only the value, not the tokens.
3. ``token-per-process``: the real tickets, but one token per process (per Cache) instead of per attempt.
4. ``generation``: an invalidation bumps the key's generation; a fill stores iff the generation is the one seen
   when its load began, where a missing generation counts as the initial one, and chaos may evict it.
5. ``stamp-missing-is-live``: the tag stamps' version of mutant 4's mistake. "A missing stamp means gone" is a
   reader's rule, which no backend can change; so this store answers a read of a tag key whose stamp is missing
   (evicted, expired) with the stamp this process saw last for it: a store that takes a missing stamp for the
   last-known one. Chaos (``evict_tag``) evicts a stamp after an invalidation changed it, and an entry stamped
   before the invalidation reads as live again.
6. ``read-joins-in-flight``: in the cache, not the store. The read coalescing that shipped until 2026-12-06: a
   caller that arrives while a read of its key is in flight takes that read's answer, which the store may have
   given before an invalidation that ended before the caller began (the gated store's reply steps let the
   schedule put the invalidation there). Caught by the exhaustive ``2r1w warm`` configurations.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cachelayer import Backend

__all__ = ["MUTANTS", "MutantState", "mutant_backend", "mutant_read_coalescer"]

MUTANTS = ("naive", "no-revoke", "token-per-process", "generation", "stamp-missing-is-live", "read-joins-in-flight")

T = TypeVar("T")
A = TypeVar("A")


@dataclass
class MutantState:
    """The store-side state of a mutant, shared by the processes of one universe."""

    tickets: dict[str, set[str]] = field(default_factory=dict)  # key -> tokens holding a ticket
    generations: dict[str, int] = field(default_factory=dict)  # key -> generation (missing: the initial 0)
    seen: dict[str, int] = field(default_factory=dict)  # token -> the generation its load began at

    def tickets_evicted(self, key: str) -> None:
        """Chaos evicted ``key``'s tickets: the ticket table's entry, and (mutant 4) its generation key."""
        self.tickets.pop(key, None)
        self.generations.pop(key, None)


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs[name]


class _Mutant:
    """Delegates everything to ``inner`` except the fill protocol its subclass changes."""

    def __init__(self, inner: Backend, state: MutantState) -> None:
        self.inner = inner
        self.state = state
        self.stores_objects = inner.stores_objects

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _store_anyway(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Store what ``fill(key, token, value, ttl_ms, tag_keys, stamps)`` carries, whatever the store's tickets
        say, through the real store's ``fill`` with a ticket of its own: its tag keys and stamps go with it, so the
        store still refuses a value whose tags were invalidated after its load began (the mutant is the tickets)."""
        key = _arg(args, kwargs, 0, "key")
        value, ttl_ms = _arg(args, kwargs, 2, "value"), _arg(args, kwargs, 3, "ttl_ms")
        tag_keys = args[4] if len(args) > 4 else kwargs.get("tag_keys", ())
        stamps = args[5] if len(args) > 5 else kwargs.get("stamps", ())
        token = "mutant-" + os.urandom(8).hex()
        await self.inner.begin_fill(key, token, 60_000, exclusive=False)
        applied: bool = await self.inner.fill(key, token, value, ttl_ms, tag_keys, stamps)
        return applied


class NaiveBackend(_Mutant):
    async def begin_fill(self, key: str, token: str, ttl_ms: int, **kwargs: Any) -> bool:
        return True

    async def renew_fill(self, key: str, token: str, ttl_ms: int) -> bool:
        return True

    async def end_fill(self, key: str, token: str) -> None:
        return None

    async def fill(self, *args: Any, **kwargs: Any) -> bool:
        return await self._store_anyway(args, kwargs)

    async def poll(self, key: str) -> tuple[bytes | None, bool]:
        return await self.inner.get(key), False


class TicketTableBackend(_Mutant):
    """Tickets kept in the mutant's own table, which invalidations leave alone (mutant 2); ``fill_allowed`` is
    where mutant 4 differs."""

    async def begin_fill(self, key: str, token: str, ttl_ms: int, **kwargs: Any) -> bool:
        held = self.state.tickets.setdefault(key, set())
        if held and kwargs.get("exclusive", True):
            return False
        held.add(token)
        self.began(key, token)
        return True

    def began(self, key: str, token: str) -> None:
        return None

    def fill_allowed(self, key: str, token: str) -> bool:
        return token in self.state.tickets.get(key, ())

    async def renew_fill(self, key: str, token: str, ttl_ms: int) -> bool:
        return token in self.state.tickets.get(key, ())

    async def end_fill(self, key: str, token: str) -> None:
        self.state.tickets.get(key, set()).discard(token)

    async def fill(self, *args: Any, **kwargs: Any) -> bool:
        key, token = _arg(args, kwargs, 0, "key"), _arg(args, kwargs, 1, "token")
        allowed = self.fill_allowed(key, token)
        self.state.tickets.get(key, set()).discard(token)
        if not allowed:
            return False
        return await self._store_anyway(args, kwargs)

    async def poll(self, key: str) -> tuple[bytes | None, bool]:
        return await self.inner.get(key), bool(self.state.tickets.get(key))


class GenerationBackend(TicketTableBackend):
    def began(self, key: str, token: str) -> None:
        self.state.seen[token] = self.state.generations.get(key, 0)

    def fill_allowed(self, key: str, token: str) -> bool:
        # The generation alone decides (the ticket table is only the lease here): once chaos evicted the bumped
        # generation, a load that began before the invalidation looks as current as one that began after it.
        began_at = self.state.seen.pop(token, None)
        return began_at == self.state.generations.get(key, 0)

    def _bump(self, keys: list[str]) -> None:
        for key in keys:
            self.state.generations[key] = self.state.generations.get(key, 0) + 1

    async def delete(self, *keys: str) -> int:
        self._bump(list(keys))
        deleted: int = await self.inner.delete(*keys)
        return deleted

    async def mark_stale(self, *args: Any, **kwargs: Any) -> int:
        self._bump(list(_arg(args, kwargs, 0, "keys")))
        marked: int = await self.inner.mark_stale(*args, **kwargs)
        return marked

    async def set(self, *args: Any, **kwargs: Any) -> None:
        self._bump([_arg(args, kwargs, 0, "key")])
        await self.inner.set(*args, **kwargs)

    async def set_many(self, *args: Any, **kwargs: Any) -> None:
        self._bump([key for key, _, _ in _arg(args, kwargs, 0, "items")])
        await self.inner.set_many(*args, **kwargs)


class TokenPerProcessBackend(_Mutant):
    """The real tickets, with the process's one token in place of each attempt's."""

    def __init__(self, inner: Backend, state: MutantState) -> None:
        super().__init__(inner, state)
        self.token = "process-" + os.urandom(8).hex()

    async def begin_fill(self, key: str, token: str, *args: Any, **kwargs: Any) -> bool:
        began: bool = await self.inner.begin_fill(key, self.token, *args, **kwargs)
        return began

    async def renew_fill(self, key: str, token: str, ttl_ms: int) -> bool:
        renewed: bool = await self.inner.renew_fill(key, self.token, ttl_ms)
        return renewed

    async def end_fill(self, key: str, token: str) -> None:
        await self.inner.end_fill(key, self.token)

    async def fill(self, key: str, token: str, *args: Any, **kwargs: Any) -> bool:
        applied: bool = await self.inner.fill(key, self.token, *args, **kwargs)
        return applied


class LastKnownStampBackend(_Mutant):
    """Mutant 5: a tag key whose stamp is missing reads as the stamp this process saw last for it. Everything else
    is the real store's (fills, tickets and the stamp check of a fill included)."""

    def __init__(self, inner: Backend, state: MutantState) -> None:
        super().__init__(inner, state)
        self.last_seen: dict[str, bytes] = {}  # tag key -> the stamp this process last read or was given

    async def tag_stamps(self, tag_keys: Sequence[str], ttl_ms: int) -> list[bytes]:
        stamps: list[bytes] = await self.inner.tag_stamps(tag_keys, ttl_ms)
        self.last_seen.update(zip(tag_keys, stamps, strict=True))
        return stamps

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found: list[bytes | None] = await self.inner.get_many(keys)
        answered: list[bytes | None] = []
        # A tag key is ``{namespace}:tag:{<tag>}``, a value key ``{namespace}:{<name>}`` (cachelayer._keys).
        for key, data in zip(keys, found, strict=True):
            if not key.partition("{")[0].endswith(":tag:"):
                answered.append(data)
            elif data is None:
                answered.append(self.last_seen.get(key))  # the mistake: missing taken for the last-known stamp
            else:
                self.last_seen[key] = data
                answered.append(data)
        return answered


class JoiningReadCoalescer:
    """Mutant 6: concurrent reads of a key share the one in flight, whenever the joining caller began."""

    def __init__(self) -> None:
        self._pending: dict[str, list[asyncio.Future[Any]]] = {}

    async def read(self, key: str, read: Callable[[A], Awaitable[T]], arg: A, caller: object = None) -> T:
        # Never hands a caller off: the mistake below is all this mutant adds.
        followers = self._pending.get(key)
        if followers is not None:
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            followers.append(future)
            try:
                return await future  # the mistake: an answer the store may have given before this caller began
            except _LeaderGone:
                return await read(arg)
        followers = self._pending[key] = []
        try:
            value = await read(arg)
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else _LeaderGone()
            for follower in self._pending.pop(key):
                if not follower.done():
                    follower.set_exception(error)
            raise
        for follower in self._pending.pop(key):
            if not follower.done():
                follower.set_result(value)
        return value


class _LeaderGone(Exception):
    """The caller doing a mutant's coalesced read was cancelled: its followers read for themselves."""


_KINDS: dict[str, Callable[[Backend, MutantState], Any]] = {
    "naive": NaiveBackend,
    "no-revoke": TicketTableBackend,
    "token-per-process": TokenPerProcessBackend,
    "generation": GenerationBackend,
    "stamp-missing-is-live": LastKnownStampBackend,
    "read-joins-in-flight": lambda inner, state: inner,  # the store is the real one: the mistake is the cache's
}


def mutant_backend(kind: str, inner: Backend, state: MutantState) -> Backend:
    """One process's view of the shared store under mutant ``kind``."""
    backend: Backend = _KINDS[kind](inner, state)
    return backend


def mutant_read_coalescer(kind: str | None) -> JoiningReadCoalescer | None:
    """The read coalescer a process's cache uses under mutant ``kind`` (None: the cache's own)."""
    return JoiningReadCoalescer() if kind == "read-joins-in-flight" else None
