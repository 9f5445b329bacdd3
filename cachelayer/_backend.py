"""The backend seam: everything the cache asks of a store, as one Protocol.

A backend stores opaque byte strings (frames, built by the codec) under string keys, with an expiry; it knows
nothing of frames, policies or the local tier. Implementations: :class:`cachelayer.RedisBackend` (standalone and
Cluster clients) and :class:`cachelayer.MemoryBackend` (in-process). Both are exercised by one set of tests.

Every method may raise :class:`StoreUnavailable` (a :class:`CacheError`) and nothing else for a store problem:
the store did not answer within its budget, answered with an error, or a circuit breaker refused the call. The
:class:`Cache` turns it into fail-open behaviour; it never reaches a caller of the cache. The budget, the breakers
and that classification are a :class:`cachelayer.Guard` the backend holds or wears (``_guard.py``). Mistakes are
other :class:`CacheError` subclasses and do reach the caller: after :meth:`Backend.aclose` every method raises
:class:`CacheClosedError`; :meth:`Backend.connect` raises :class:`StoreConnectError` when the store refuses.

Keys are the cache's own (see ``_keys.py``): a value key and its lease key share a Redis Cluster hash slot, so
:meth:`Backend.poll` is one round trip on a cluster too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ._errors import CacheError

__all__ = ["Backend", "Message", "StoreUnavailable", "Subscription"]


class StoreUnavailable(CacheError):
    """The store did not answer within the budget, answered with an error, or its breaker is open.

    Raised by backends only; the cache turns it into fail-open behaviour and a counted error.
    """


Message = tuple[str, bytes]
"""A pub/sub message: (channel, data)."""


class Subscription(Protocol):
    """One pub/sub connection of this process, on which channels are subscribed and messages read.

    ``alive_at`` is the monotonic time of the last sign of life from the store on this connection (a
    confirmation, a message, an answer to :meth:`ping`); the local tier uses it to bound staleness.
    Any connection problem raises :class:`StoreUnavailable`; the subscription is then unusable: close it and
    open a new one.
    """

    alive_at: float

    async def subscribe(self, *channels: str) -> None: ...

    async def unsubscribe(self, *channels: str) -> None: ...

    async def next_message(self, timeout: float) -> Message | None:  # noqa: ASYNC109  # the protocol's
        """The next message, or None when ``timeout`` seconds pass without one."""
        ...

    async def ping(self) -> None:
        """Ask the store for a sign of life; its answer moves ``alive_at`` (read by :meth:`next_message`)."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """What :class:`cachelayer.Cache` asks of a store. See the module docstring for the error contract."""

    stores_objects: bool
    """True when :meth:`get` hands back the very ``bytes`` object :meth:`set` stored (an in-process store): the
    cache may then reuse what it decoded from that object instead of decoding it again on every hit."""

    async def connect(self) -> None:
        """Open connections and learn the topology now (the first call does it otherwise)."""
        ...

    async def aclose(self) -> None:
        """Release what the backend owns. Safe to call twice."""
        ...

    # -- values -----------------------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set(self, key: str, value: bytes, ttl_ms: int, tag_keys: Sequence[str] = (), tag_ttl_s: int = 0) -> None:
        """Store ``value`` for ``ttl_ms`` and add ``key`` to each tag set, whose expiry only ever lengthens
        (to at least ``tag_ttl_s``), so a tag set outlives every key it names."""
        ...

    async def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        """Store several (key, value, ttl_ms) at once."""
        ...

    async def delete(self, *keys: str) -> int:
        """Delete ``keys``; how many existed."""
        ...

    async def mark_stale(self, keys: Sequence[str], offset: int, field: bytes) -> int:
        """Mark the values under ``keys`` stale: write ``field`` at ``offset`` of each existing value in place,
        keeping its expiry (the cache passes where its frames keep their logical expiry, and the value that means
        "stale"); a missing key is not created. How many existed."""
        ...

    async def clear(self, prefix: str) -> int:
        """Delete every key that starts with ``prefix`` (on Redis with SCAN, never KEYS); how many went."""
        ...

    # -- leases -----------------------------------------------------------------------------------------------

    async def acquire_lease(self, lease_key: str, token: str, ttl_ms: int) -> bool:
        """Take the lease if nobody holds it."""
        ...

    async def renew_lease(self, lease_key: str, token: str, ttl_ms: int) -> bool:
        """Extend the lease if ``token`` still holds it; False when it was lost."""
        ...

    async def release_lease(self, lease_key: str, token: str) -> None:
        """Give the lease up if ``token`` still holds it (never another holder's)."""
        ...

    async def poll(self, key: str, lease_key: str) -> tuple[bytes | None, bool]:
        """The value under ``key`` (or None) and whether the lease is held: what a waiter checks."""
        ...

    # -- tags -------------------------------------------------------------------------------------------------

    async def tag_members(self, tag_key: str) -> list[str]: ...

    async def remove_tag_members(self, tag_key: str, members: Sequence[str]) -> None: ...

    # -- publish / subscribe ----------------------------------------------------------------------------------

    async def publish(self, channel: str, data: bytes, *, sharded: bool = False) -> None:
        """Send ``data`` to the subscribers of ``channel``. ``sharded``: the channel lives on the shard of the
        key it names (Redis Cluster SPUBLISH); elsewhere it is an ordinary channel."""
        ...

    def subscription(self, *, sharded: bool = False) -> Subscription:
        """A new pub/sub connection (opened lazily by its first ``subscribe``)."""
        ...

    # -- introspection ----------------------------------------------------------------------------------------

    async def ping(self) -> None:
        """One round trip to the store (health checks); raises :class:`StoreUnavailable`."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters and state for ``Cache.stats()``: what the backend has. A guarded backend adds its guard's
        (``store_errors``, ``breaker_state``: the worst of its breakers, ``breaker_opened``, ...)."""
        ...
