"""The 20-item page's items as typed values: a dataclass and a pydantic model with the same fields.

Used by the typed rows of ``benchmarks.hit_path`` and ``benchmarks.codecs``. The fields are those of
``service.demo_data.list_item`` (checked by :func:`page_items`, which builds every value from the demo data).
pydantic is optional (the ``bench`` extra); :data:`PItem` is None without it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from service.demo_data import medium_page

__all__ = ["Author", "Item", "PAuthor", "PItem", "page_items"]


@dataclasses.dataclass(frozen=True, slots=True)
class Author:
    id: int
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    id: int
    title: str
    category: str
    thumb: str
    preview: str
    colors: list[str]
    author: Author
    likes: int
    downloads: int
    is_vip: bool
    is_4d: bool


PAuthor: Any = None
PItem: Any = None
try:
    import pydantic
except ImportError:  # the pydantic rows are then left out
    pass
else:

    class _PAuthor(pydantic.BaseModel):
        id: int
        name: str

    class _PItem(pydantic.BaseModel):
        id: int
        title: str
        category: str
        thumb: str
        preview: str
        colors: list[str]
        author: _PAuthor
        likes: int
        downloads: int
        is_vip: bool
        is_4d: bool

    PAuthor, PItem = _PAuthor, _PItem


def page_items(kind: str, seed: int = 0) -> list[Any]:
    """The medium page's items as ``"dict"``, ``"dataclass"`` or ``"pydantic"`` values."""
    items: list[dict[str, Any]] = medium_page(seed)["items"]
    if kind == "dict":
        return items
    if kind == "dataclass":
        return [Item(**{**item, "author": Author(**item["author"])}) for item in items]
    if kind == "pydantic":
        if PItem is None:
            raise RuntimeError("pydantic is not installed")
        return [PItem.model_validate(item) for item in items]
    raise ValueError(f"unknown kind {kind!r}")
