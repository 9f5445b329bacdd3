"""The synthetic wallpaper data set: deterministic, seed-dependent, the intended sizes and shapes."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import orjson
import pytest

from harness import REPO_ROOT
from service.demo_data import (
    CATEGORIES,
    SIZE_CLASSES,
    TRAINING_SEED_BASE,
    category_list,
    dictionary_training_samples,
    large_page,
    medium_page,
    page,
    small_detail,
    wallpaper,
    wallpapers,
)

CJK = re.compile(r"[\u4e00-\u9fff]")

# orjson byte sizes each class should land in (the benchmark's size classes).
SIZE_RANGES = {
    "small": (850, 1150),
    "category_list": (2600, 3400),
    "medium": (6800, 7800),
    "large": (170_000, 195_000),
}


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


@pytest.mark.parametrize("name", list(SIZE_CLASSES))
def test_size_classes_are_deterministic(name: str) -> None:
    make = SIZE_CLASSES[name]
    assert _dumps(make(7)) == _dumps(make(7))


@pytest.mark.parametrize("name", list(SIZE_CLASSES))
def test_different_seeds_give_different_values(name: str) -> None:
    make = SIZE_CLASSES[name]
    assert _dumps(make(1)) != _dumps(make(2))


@pytest.mark.parametrize("name", list(SIZE_CLASSES))
def test_size_classes_land_in_their_ranges(name: str) -> None:
    low, high = SIZE_RANGES[name]
    for seed in range(5) if name != "large" else range(2):
        size = len(_dumps(SIZE_CLASSES[name](seed)))
        assert low <= size <= high, f"{name} seed {seed}: {size} B"


def test_wallpaper_is_about_900_bytes_and_has_the_documented_fields() -> None:
    sizes = [len(_dumps(wallpaper(i, seed=3))) for i in range(1, 51)]
    assert 800 <= sum(sizes) / len(sizes) <= 1000
    doc = wallpaper(1)
    assert isinstance(doc["id"], int)
    assert 3 <= len(doc["tags"]) <= 8
    assert set(doc["images"]) == {"thumb", "preview", "full", "4k"}
    for url in doc["images"].values():
        assert re.search(r"/[0-9a-f]{32}\.jpg$", url)
    assert set(doc["author"]) == {"id", "name", "avatar"}
    assert set(doc["counts"]) == {"downloads", "likes", "views"}
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in doc["colors"])
    assert doc["category"] in {c["slug"] for c in CATEGORIES}
    assert doc["resolution"] == f"{doc['width']}x{doc['height']}"
    assert doc["created_at"] <= doc["updated_at"]
    assert {"is_4d", "is_vip"} <= set(doc["flags"])


def test_wallpaper_is_a_function_of_index_and_seed() -> None:
    assert wallpaper(5, seed=9) == wallpaper(5, seed=9)
    assert wallpaper(5, seed=9) != wallpaper(6, seed=9)
    assert wallpaper(5, seed=9) != wallpaper(5, seed=10)
    assert wallpapers(3, seed=9, start=5)[0] == wallpaper(5, seed=9)


def test_ids_are_unique_and_consecutive() -> None:
    docs = wallpapers(200, seed=4, start=10)
    ids = [d["id"] for d in docs]
    assert ids == list(range(10, 210))
    items = large_page(0)["items"]
    assert len({item["id"] for item in items}) == len(items) == 500


def test_chinese_and_english_text_present() -> None:
    doc = small_detail(0)
    assert CJK.search(doc["title"])
    assert re.search(r"[A-Za-z]{3,}", doc["title"])
    assert CJK.search(doc["description"])
    all_tags = {t for d in wallpapers(50) for t in d["tags"]}
    assert any(CJK.search(t) for t in all_tags)
    assert all(CJK.search(c["name"]) for c in CATEGORIES)
    # orjson writes UTF-8, not \\u escapes: the stored bytes carry the CJK text as is.
    assert "风景".encode() in _dumps(category_list(0))


def test_categories() -> None:
    assert 12 <= len(CATEGORIES) <= 16
    assert len({c["slug"] for c in CATEGORIES}) == len(CATEGORIES)
    assert [c["sort"] for c in CATEGORIES] == sorted(c["sort"] for c in CATEGORIES)
    listed = category_list(0)
    assert [c["slug"] for c in listed] == [c["slug"] for c in CATEGORIES]
    assert all(isinstance(c["count"], int) and c["count"] > 0 for c in listed)


def test_page_shape() -> None:
    first = medium_page(0)
    assert set(first) == {"items", "page", "pageSize", "total", "hasMore"}
    assert (first["page"], first["pageSize"], len(first["items"])) == (1, 20, 20)
    assert first["hasMore"] is True
    second = page(20, 0, page=2)
    assert [i["id"] for i in second["items"]] == list(range(21, 41))
    last_page = -(-first["total"] // 20)
    last = page(20, 0, page=last_page)
    assert last["hasMore"] is False
    assert 1 <= len(last["items"]) <= 20
    assert page(20, 0, page=last_page + 1)["items"] == []


def test_training_samples_are_deterministic_varied_and_disjoint_from_measured_values() -> None:
    samples = dictionary_training_samples(300)
    assert samples == dictionary_training_samples(300)
    assert len(samples) == 300
    assert all(isinstance(s, bytes) for s in samples)
    sizes = sorted(len(s) for s in samples)
    assert sizes[0] < 1000 < sizes[-1]  # list items and details, and pages
    assert len(set(samples)) == len(samples)
    measured = {_dumps(SIZE_CLASSES[name](seed)) for name in ("small", "category_list", "medium") for seed in range(3)}
    assert measured.isdisjoint(samples)
    assert TRAINING_SEED_BASE >= 100


def test_same_bytes_in_another_process_with_another_hash_seed() -> None:
    code = "import orjson; from service.demo_data import medium_page; print(orjson.dumps(medium_page(3)).hex())"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": str(hash_seed)},
            cwd=REPO_ROOT,  # service/ is importable from the repository root (it is not installed)
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in (1, 2)
    }
    assert len(outputs) == 1
    assert outputs.pop().strip() == _dumps(medium_page(3)).hex()
