"""What the command line (``_cli.py``) reads from a Redis store: an entry with its TTL, lease and place, and keys
by SCAN. Plain redis-py calls within a budget; a failure is :class:`StoreUnavailable` naming the store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from ._backend import StoreUnavailable
from ._keys import KeyLayout
from ._redis_backend import RedisBackend
from ._redis_cluster import node_name_for_key

__all__ = ["StoredEntry", "read_entry", "read_values", "scan"]

T = TypeVar("T")


@dataclass(frozen=True)
class StoredEntry:
    data: bytes
    pttl_ms: int  # negative: no expiry
    lease_held: bool
    slot: int | None  # on a cluster
    node: str | None  # on a cluster: the master serving the slot


async def _ask(backend: RedisBackend, what: str, call: Awaitable[T], budget: float) -> T:
    try:
        async with asyncio.timeout(budget):
            return await call
    except (RedisError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"{backend.store} {what}: {type(exc).__name__}: {exc}") from exc


async def read_entry(backend: RedisBackend, key: str, budget: float) -> StoredEntry | None:
    """The bytes under ``key`` with the store's TTL and whether a load holds its lease; None when absent. On a
    cluster the client follows MOVED, so any node of the cluster's URL finds the key."""
    client: Any = backend.client
    data = await _ask(backend, "GET", client.get(key), budget)
    if data is None:
        return None
    pttl = int(await _ask(backend, "PTTL", client.pttl(key), budget))
    leased = bool(await _ask(backend, "EXISTS", client.exists(KeyLayout.lease_key(key)), budget))
    if isinstance(client, RedisCluster):
        return StoredEntry(bytes(data), pttl, leased, key_slot(key.encode()), node_name_for_key(client, key))
    return StoredEntry(bytes(data), pttl, leased, None, None)


async def scan(backend: RedisBackend, pattern: str, limit: int, budget: float) -> list[str]:
    """Up to ``limit`` keys matching ``pattern``, by SCAN (on a cluster, redis-py's walks every master)."""
    client: Any = backend.client
    found: list[str] = []

    async def walk() -> None:
        async for key in client.scan_iter(match=pattern, count=500):
            found.append(key.decode(errors="backslashreplace") if isinstance(key, bytes) else key)
            if len(found) >= limit:
                return

    await _ask(backend, "SCAN", walk(), budget)
    return found


async def read_values(backend: RedisBackend, keys: list[str], budget: float) -> list[bytes | None]:
    """The bytes under each of ``keys`` (None where absent), 500 keys a call."""
    found: list[bytes | None] = []
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        try:
            async with asyncio.timeout(budget):
                found.extend(await backend.get_many(chunk))
        except TimeoutError as exc:
            raise StoreUnavailable(f"{backend.store} GET (many): no answer within {budget:g} s") from exc
    return found
