"""The service's zstd dictionary: trained on the shapes it stores, drawn from data it never serves.

``python -m service train-dictionary --out config/dictionaries/wallpaper-1.zdict`` rebuilds the shipped file
(deterministic: the same bytes on every machine). Its samples are the service's own envelopes (``catalog.py``)
around demo wallpapers drawn with seeds at or above :data:`service.demo_data.TRAINING_SEED_BASE`, while the
seeded stores hold seed 0: the ratios measured on the served data are not measured on what the dictionary saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import orjson

from cachelayer import DictionaryRegistry, train_dictionary

from .catalog import envelope
from .demo_data import TRAINING_SEED_BASE, list_item, wallpapers

__all__ = ["SHIPPED", "training_samples", "write_dictionary"]

SHIPPED: Final = Path(__file__).resolve().parent.parent / "config" / "dictionaries" / "wallpaper-1.zdict"
SIZE: Final = 32 * 1024


def _envelope(data: Any) -> bytes:
    return orjson.dumps(envelope(data))


def training_samples(details: int = 2000, pages: int = 200) -> list[bytes]:
    """Detail answers and 20-item list pages, as the catalog stores them."""
    docs = wallpapers(details, seed=TRAINING_SEED_BASE)
    samples = [_envelope(doc) for doc in docs]
    listed = wallpapers(pages * 20, seed=TRAINING_SEED_BASE + 1)
    for number in range(pages):
        items = [list_item(doc) for doc in listed[number * 20 : number * 20 + 20]]
        page = {"items": items, "page": number + 1, "pageSize": 20, "total": 10_000, "hasMore": True}
        samples.append(_envelope(page))
    return samples


def write_dictionary(out: Path) -> int:
    """Train, write ``out`` (never over an existing file) and return the dictionary's id."""
    data = train_dictionary(training_samples(), size=SIZE)
    with out.open("xb") as handle:
        handle.write(data)
    return DictionaryRegistry.id_of(data)
