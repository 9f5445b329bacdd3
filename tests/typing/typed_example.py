"""Checked by mypy --strict in tests/test_typing.py: @cached keeps signatures and return types."""

from __future__ import annotations

from typing import assert_type

from cachelayer import cached


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
