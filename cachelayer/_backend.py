"""Redis access for the cache: every call under a time budget and the circuit breaker, errors made uniform.

Works with ``redis.asyncio.Redis`` and ``redis.asyncio.RedisCluster`` alike: every multi-key command here touches
keys of one hash slot (a value and its lease), and everything else goes through non-transactional pipelines,
which the Cluster client splits by slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from ._breaker import CircuitBreaker

__all__ = ["BackendUnavailable", "RedisBackend"]

T = TypeVar("T")

# KEYS[1] lease key; ARGV[1] token. Delete only if we still own it, so a lease that expired and was taken by
# another process is never released by us.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] lease key; ARGV[1] token; ARGV[2] new TTL in ms.
_EXTEND: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class BackendUnavailable(Exception):
    """Redis did not answer within the budget, answered with an error, or the breaker is open. Internal: the
    cache turns it into fail-open behaviour and a counted error, never into an exception for its callers."""


class RedisBackend:
    """The only place that talks to Redis."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        timeout: float,
        breaker: CircuitBreaker,
        on_error: Callable[[BaseException], None] = lambda exc: None,
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.breaker = breaker
        self._on_error = on_error
        self._release = client.register_script(_RELEASE)
        self._extend = client.register_script(_EXTEND)

    async def _call(self, make: Callable[[], Awaitable[T]], budget: float | None = None) -> T:
        permit = self.breaker.permit()
        if permit is None:
            refused = BackendUnavailable("circuit breaker is open")
            self._on_error(refused)
            raise refused
        try:
            async with asyncio.timeout(self.timeout if budget is None else budget):
                result = await make()
        except (RedisError, OSError, TimeoutError) as exc:
            self.breaker.record_failure()
            self._on_error(exc)
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            if permit == "probe":  # only the probe's fate decides the half-open state
                self.breaker.record_abandoned()
            raise
        self.breaker.record_success()
        return result

    async def get(self, key: str) -> bytes | None:
        value: Any = await self._call(lambda: self.client.get(key))
        return value  # type: ignore[no-any-return]  # the client is built with decode_responses=False

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        async def run() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                return await pipe.execute()

        return await self._call(run)

    async def set(self, key: str, value: bytes, ttl_ms: int, tag_keys: Sequence[str] = (), tag_ttl_s: int = 0) -> None:
        async def run() -> None:
            if not tag_keys:
                await self.client.set(key, value, px=ttl_ms)
                return
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(key, value, px=ttl_ms)
                for tag_key in tag_keys:
                    pipe.sadd(tag_key, key)
                    # NX gives a new set a TTL; GT only ever lengthens it, so a tag outlives every key it names.
                    pipe.expire(tag_key, tag_ttl_s, nx=True)
                    pipe.expire(tag_key, tag_ttl_s, gt=True)
                await pipe.execute()

        await self._call(run)

    async def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        async def run() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, value, ttl_ms in items:
                    pipe.set(key, value, px=ttl_ms)
                await pipe.execute()

        await self._call(run)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0

        return await self._call(lambda: self._delete_now(list(keys)))

    async def acquire_lease(self, lease_key: str, token: str, ttl_ms: int) -> bool:
        acquired = await self._call(lambda: self.client.set(lease_key, token, nx=True, px=ttl_ms))
        return bool(acquired)

    async def release_lease(self, lease_key: str, token: str) -> None:
        await self._call(lambda: self._release(keys=[lease_key], args=[token]))

    async def extend_lease(self, lease_key: str, token: str, ttl_ms: int) -> bool:
        extended = await self._call(lambda: self._extend(keys=[lease_key], args=[token, ttl_ms]))
        return bool(extended)

    async def poll(self, key: str, lease_key: str) -> tuple[bytes | None, bool]:
        """The value, if any, and whether the lease is still held: one round trip (one slot)."""

        async def run() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.exists(lease_key)
                return await pipe.execute()

        value, lease_held = await self._call(run)
        return value, bool(lease_held)

    async def tag_members(self, tag_key: str) -> list[str]:
        members = await self._call(lambda: self.client.smembers(tag_key))
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def remove_tag_members(self, tag_key: str, members: Sequence[str]) -> None:
        await self._call(lambda: self.client.srem(tag_key, *members))

    async def scan_delete(self, pattern: str, batch: int = 500, budget: float = 60.0) -> int:
        """Delete every key matching ``pattern`` with SCAN (never KEYS), in batches."""

        async def run() -> int:
            deleted = 0
            batch_keys: list[str] = []
            async for key in self.client.scan_iter(match=pattern, count=batch):
                batch_keys.append(key.decode() if isinstance(key, bytes) else key)
                if len(batch_keys) >= batch:
                    deleted += await self._delete_now(batch_keys)
                    batch_keys = []
            if batch_keys:
                deleted += await self._delete_now(batch_keys)
            return deleted

        return await self._call(run, budget=budget)

    async def _delete_now(self, keys: list[str]) -> int:
        # One DEL per key: on a cluster, keys of different slots cannot share a command.
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.delete(key)
            return sum(await pipe.execute())
