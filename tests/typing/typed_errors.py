"""Must FAIL mypy: calls that do not match the decorated signature."""

from __future__ import annotations

from cachelayer import cached


@cached(ttl=60)
async def page(category: str, page: int = 1) -> list[int]:
    return [page]


async def misuse() -> None:
    await page(1)  # E: wrong argument type
    await page("a", pages=2)  # E: unknown keyword
    value: str = await page("a")  # E: wrong return type
    page.key()  # E: missing argument
