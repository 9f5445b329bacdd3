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

Keys are the cache's own (see ``_keys.py``): a value key and its tickets' key (``key + ":lease"``) share a Redis
Cluster hash slot, so a fill, a revocation and :meth:`Backend.poll` are each one step on one shard. A tag's stamp
is an ordinary 16-byte value under its own key (``_tags.py``): read with :meth:`Backend.get_many`, evicted like any
value, and missing means "every entry stamped with this tag is gone".
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

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        """Revoke every fill ticket of ``key`` and store ``value`` for ``ttl_ms``, in one atomic step: an explicit
        write beats every load that began before it."""
        ...

    async def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        """Store several (key, value, ttl_ms) at once, revoking their fill tickets."""
        ...

    async def delete(self, *keys: str) -> int:
        """Delete ``keys`` and revoke their fill tickets, atomically per key; how many values existed."""
        ...

    async def mark_stale(self, keys: Sequence[str], offset: int, field: bytes) -> int:
        """Mark the values under ``keys`` stale: write ``field`` at ``offset`` of each existing value in place,
        keeping its expiry (the cache passes where its frames keep their logical expiry, and the value that means
        "stale"); a missing key is not created. Revokes each key's fill tickets in the same atomic step. How
        many values existed."""
        ...

    async def clear(self, prefix: str) -> int:
        """Delete every key that starts with ``prefix`` (values, tickets, tag stamps; on Redis with SCAN, never
        KEYS); how many went."""
        ...

    # -- fills: the ticket a load holds, and the write that needs it -------------------------------------------
    #
    # A load takes a ticket on its key before it runs (``begin_fill``) and stores its value with ``fill``, which
    # writes only while the ticket is still valid. Every invalidation of the key (``delete``, ``mark_stale``,
    # ``clear``, and the writes ``set``/``set_many``) revokes every ticket the key has, atomically with its own
    # change, so a load that began before a write was invalidated can never store what it read before it. An
    # exclusive ticket is the cross-process load lease (one loader per key); a shared one lets loads run side by
    # side, each with its own token. A ticket lives ``ttl_ms`` unless renewed: a loader that dies or hangs loses it
    # (its fill is then refused: when in doubt, miss). Tickets live under ``key + ":lease"`` (the same Redis
    # Cluster slot as the value: every check is one script on one shard).

    async def begin_fill(self, key: str, token: str, ttl_ms: int, *, exclusive: bool = True) -> bool:
        """Give ``token`` a ticket on ``key`` for ``ttl_ms``. ``exclusive``: only if no ticket is held (False
        then: another load holds the lease)."""
        ...

    async def renew_fill(self, key: str, token: str, ttl_ms: int) -> bool:
        """Extend ``token``'s ticket; False when it was revoked or lapsed."""
        ...

    async def end_fill(self, key: str, token: str) -> None:
        """Drop ``token``'s ticket without storing (never another load's)."""
        ...

    async def fill(
        self,
        key: str,
        token: str,
        value: bytes,
        ttl_ms: int,
        tag_keys: Sequence[str] = (),
        stamps: Sequence[bytes] = (),
    ) -> bool:
        """Store ``value`` for ``ttl_ms`` only if ``token``'s ticket is still valid and each tag key still holds
        the stamp given for it (the ones :meth:`tag_stamps` gave before the load began), and drop the ticket, in
        one atomic step. False: the ticket was revoked or lapsed, or a tag was invalidated meanwhile. A store that
        cannot check the stamps in the same step (a cluster: they live on other shards) checks them beside the
        write and answers False when one changed; what it stored then carries an old stamp, which every reader
        refuses."""
        ...

    async def poll(self, key: str) -> tuple[bytes | None, bool]:
        """The value under ``key`` (or None) and whether any ticket is held: what a waiter for the lease checks."""
        ...

    # -- tags: one stamp per tag (``_tags.py``) ---------------------------------------------------------------

    async def tag_stamps(self, tag_keys: Sequence[str], ttl_ms: int) -> list[bytes]:
        """The stamp under each tag key, one made (16 random bytes) where none is, each kept for at least
        ``ttl_ms`` from now: what a load (or a write) records before it reads its source."""
        ...

    async def invalidate_tags(self, tag_keys: Sequence[str], *, mark_stale: bool = False) -> int:
        """Give each existing tag key a new stamp (``mark_stale``: a new second half only, keeping its expiry), so
        that every entry stamped before is refused (or served as stale); a missing one is left missing (what it
        stamped is refused already). One write per tag, whatever the number of entries. How many existed."""
        ...

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
