"""A backend that stores nothing: what :meth:`Cache.disabled` runs on (every lookup a miss, every write gone)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ._backend import Message

__all__ = ["NullBackend"]


class NullBackend:
    """Holds nothing and never fails; every fill ticket is granted (there is nothing to protect)."""

    stores_objects = False

    async def connect(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def get(self, key: str) -> bytes | None:
        return None

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [None] * len(keys)

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        return None

    async def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        return None

    async def delete(self, *keys: str) -> int:
        return 0

    async def mark_stale(self, keys: Sequence[str], offset: int, field: bytes) -> int:
        return 0

    async def clear(self, prefix: str) -> int:
        return 0

    async def begin_fill(self, key: str, token: str, ttl_ms: int, *, exclusive: bool = True) -> bool:
        return True

    async def renew_fill(self, key: str, token: str, ttl_ms: int) -> bool:
        return True

    async def end_fill(self, key: str, token: str) -> None:
        return None

    async def fill(
        self,
        key: str,
        token: str,
        value: bytes,
        ttl_ms: int,
        tag_keys: Sequence[str] = (),
        stamps: Sequence[bytes] = (),
    ) -> bool:
        return True

    async def poll(self, key: str) -> tuple[bytes | None, bool]:
        return None, False

    async def tag_stamps(self, tag_keys: Sequence[str], ttl_ms: int) -> list[bytes]:
        return [bytes(16)] * len(tag_keys)

    async def invalidate_tags(self, tag_keys: Sequence[str], *, mark_stale: bool = False) -> int:
        return 0

    async def publish(self, channel: str, data: bytes, *, sharded: bool = False) -> None:
        return None

    def subscription(self, *, sharded: bool = False) -> _NullSubscription:
        return _NullSubscription()

    async def ping(self) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {}


class _NullSubscription:
    alive_at = float("inf")

    async def subscribe(self, *channels: str) -> None:
        return None

    async def unsubscribe(self, *channels: str) -> None:
        return None

    async def next_message(self, timeout: float) -> Message | None:  # noqa: ASYNC109  # the protocol's
        await asyncio.sleep(timeout)  # nothing ever arrives; never a busy loop for a listener
        return None

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
