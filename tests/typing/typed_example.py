"""Checked by mypy --strict in tests/test_typing.py: @cached keeps signatures and return types."""

from __future__ import annotations

import functools
from typing import assert_type

from cachelayer import CachedFunction, cached


@cached(ttl=60)
async def page(category: str, page: int = 1) -> list[dict[str, int]]:
    return [{"page": page}]


class Repo:
    @cached(ttl=30, exclude=["verbose"])
    async def detail(self, wallpaper_id: int, verbose: bool = False) -> dict[str, str] | None:
        return None


async def use() -> None:
    items = await page("nature", page=2)
    assert_type(items, list[dict[str, int]])
    assert_type(page.key("nature"), str)
    assert_type(await page.invalidate("nature", 3), bool)
    repo = Repo()
    found = await repo.detail(7)
    assert_type(found, dict[str, str] | None)
    assert_type(await repo.detail.refresh(7, verbose=True), dict[str, str] | None)


@cached
async def bare(wallpaper_id: int) -> list[str]:
    return []


class Catalog:
    # mypy hands the outer decorator the plain function, so only access through the class is typed exactly.
    @cached(ttl=30)
    @staticmethod
    async def count(category: str) -> int:
        return 0


async def scale(k: int, x: int) -> float:
    return k * x / 2


async def use_forms() -> None:
    same: CachedFunction[[int], list[str]] = bare  # bare @cached infers what @cached() does
    assert_type(await same(1), list[str])
    assert_type(await Catalog.count("art"), int)
    assert_type(Catalog.count.key("art"), str)
    doubled = cached(ttl=5)(functools.partial(scale, 2))
    assert_type(await doubled(3), float)
