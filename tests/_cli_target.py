"""Cached functions for tests/test_cli.py's ``cachelayer key module:function`` (imported by name)."""

from __future__ import annotations

from cachelayer import Cache, cached

NAMESPACE = "cli-target"
_cache = Cache.from_url("memory://", namespace=NAMESPACE)


@cached(ttl=60, cache=_cache, tags=["pages"])
async def page(number: int, size: int = 20) -> dict[str, int]:
    return {"number": number, "size": size}


@cached(ttl=60)  # the default cache: not set up in the CLI's process
async def detail(identifier: str) -> dict[str, str]:
    return {"id": identifier}


class Shelf:
    @cached(ttl=60, cache=_cache)
    async def books(self, genre: str) -> list[str]:
        return [genre]

    def __cache_key__(self) -> str:
        return "shelf"
