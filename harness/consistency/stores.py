"""The stores universes share, and what chaos does to them behind the cache's back.

A :class:`Store` hands each universe the backend its processes share (a fresh :class:`MemoryBackend`, or the one
long-lived :class:`RedisBackend` of this worker on a standalone Redis or a Cluster, where each universe has a
namespace of its own and removes its keys at the end), and the raw operations of chaos: the eviction of a value,
of a key's tickets (``key:lease``) or of a tag's stamp as an LRU eviction or an expiry would do it, without any of
the revocation an invalidation does.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from typing import Any, Protocol

import redis.asyncio as aioredis

from cachelayer import Backend, MemoryBackend, StoreOptions, backend_from_url

__all__ = ["MemoryStore", "RedisStore", "Store"]

_TICKETS = ":lease"  # where the backends keep a key's fill tickets (cachelayer._backend)


class Store(Protocol):
    name: str

    def universe(self) -> tuple[Backend, str]:
        """The backend of a new universe, and its namespace."""
        ...

    async def evict_value(self, key: str) -> None: ...

    async def evict_tickets(self, key: str) -> None: ...

    async def evict_tag(self, tag_key: str) -> None:
        """Evict a tag's stamp (stored under ``tag_key``, an ordinary value: ``cachelayer._tags``)."""
        ...

    async def cleanup(self, keys: Iterable[str]) -> None:
        """Remove what a universe left (a shared store only)."""
        ...

    async def aclose(self) -> None: ...


class MemoryStore:
    name = "memory"

    def __init__(self) -> None:
        self._backend = MemoryBackend()

    def universe(self) -> tuple[Backend, str]:
        self._backend = MemoryBackend()
        return self._backend, "u"

    async def evict_value(self, key: str) -> None:
        self._backend.evict(key)

    async def evict_tickets(self, key: str) -> None:
        self._backend.evict(key + _TICKETS)

    async def evict_tag(self, tag_key: str) -> None:
        self._backend.evict(tag_key)

    async def cleanup(self, keys: Iterable[str]) -> None:
        return None

    async def aclose(self) -> None:
        return None


class RedisStore:
    """A standalone Redis (``cluster=False``) or a Redis Cluster, shared by every universe of this worker."""

    def __init__(self, url: str, *, cluster: bool = False) -> None:
        self.name = "cluster" if cluster else "redis"
        self._url = url
        self._cluster = cluster
        # A budget no healthy local store comes near: failures are injected by the harness, never by slowness.
        options = StoreOptions(timeout=5.0, max_connections=8, pool_timeout=5.0)
        self._backend: Backend = backend_from_url(url, options, cluster=cluster)
        self._raw: Any = (
            aioredis.RedisCluster.from_url(url.replace("redis+cluster://", "redis://"))
            if cluster
            else aioredis.Redis.from_url(url)
        )
        self._ids = itertools.count()
        self._run = f"c{os.getpid()}x{os.urandom(2).hex()}"

    async def connect(self) -> None:
        await self._backend.connect()
        await self._raw.ping()

    def universe(self) -> tuple[Backend, str]:
        return self._backend, f"{self._run}u{next(self._ids)}"

    async def evict_value(self, key: str) -> None:
        await self._raw.delete(key)

    async def evict_tickets(self, key: str) -> None:
        await self._raw.delete(key + _TICKETS)

    async def evict_tag(self, tag_key: str) -> None:
        await self._raw.delete(tag_key)  # a DEL is what an eviction of the stamp does: nothing else changes

    async def cleanup(self, keys: Iterable[str]) -> None:
        names = {name for key in keys for name in (key, key + _TICKETS)}
        if not names:
            return
        if self._cluster:  # one slot per key: one command each, pipelined per node by the client
            async with self._raw.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.delete(name)
                await pipe.execute()
        else:
            await self._raw.delete(*names)

    async def aclose(self) -> None:
        await self._backend.aclose()
        await self._raw.aclose()
