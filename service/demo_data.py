"""The deterministic synthetic wallpaper data set.

Shared by the tests, the benchmarks and the service's seed command. Everything here is a pure function of its
arguments: randomness comes from :class:`random.Random` instances seeded from ``(seed, index)`` (never the global
generator, never the hash seed) and timestamps count from the fixed :data:`EPOCH`, so the same call gives the same
value, and the same orjson bytes, on every machine and every run.

Shapes:

* :func:`wallpaper` is one stored wallpaper document (~0.9 KB of orjson, Chinese and English text, hex hashes in
  the image urls).
* :func:`small_detail` is one wallpaper as the detail endpoint returns it (~1 KB).
* :func:`category_list` is the category list with counts (~3 KB).
* :func:`page` is a list response: ``{"items", "page", "pageSize", "total", "hasMore"}`` whose items are the list
  view of a wallpaper (:func:`list_item`, ~350 B), so :func:`medium_page` (20 items) is ~7.3 KB and
  :func:`large_page` (500 items) ~180 KB.

Benchmarks measure seeds below :data:`TRAINING_SEED_BASE`; :func:`dictionary_training_samples` draws from seeds at
or above it, so a dictionary is never trained on the values it is measured on.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypedDict

import orjson

__all__ = [
    "CATEGORIES",
    "EPOCH",
    "SIZE_CLASSES",
    "TRAINING_SEED_BASE",
    "Category",
    "category_list",
    "dictionary_training_samples",
    "large_page",
    "list_item",
    "medium_page",
    "page",
    "small_detail",
    "wallpaper",
    "wallpapers",
]

#: Every timestamp in the data set is this instant plus a seeded offset.
EPOCH: Final = datetime(2023, 1, 1, tzinfo=UTC)
#: Seeds at or above this are for dictionary training; benchmarks measure seeds below it.
TRAINING_SEED_BASE: Final = 1000

_CDN: Final = "https://img.wallhub.cn"
_AVATAR_CDN: Final = "https://u.wallhub.cn"
_TOTAL_WALLPAPERS: Final = 48_620


class Category(TypedDict):
    slug: str
    name: str
    sort: int
    cover: str


def _stable_hex(text: str, length: int = 32) -> str:
    """A hex digest of ``text``: the same on every run (unlike ``hash()``)."""
    return hashlib.blake2b(text.encode(), digest_size=32).hexdigest()[:length]


def _category(slug: str, name: str, sort: int) -> Category:
    digest = _stable_hex("category:" + slug)
    return {
        "slug": slug,
        "name": name,
        "sort": sort,
        "cover": f"{_CDN}/covers/{digest[:2]}/{digest}.jpg",
    }


CATEGORIES: Final[tuple[Category, ...]] = tuple(
    _category(slug, name, sort)
    for sort, (slug, name) in enumerate(
        [
            ("landscape", "风景 Landscape"),
            ("anime", "动漫 Anime"),
            ("city", "城市 City"),
            ("space", "星空 Space"),
            ("animals", "动物 Animals"),
            ("abstract", "抽象 Abstract"),
            ("minimal", "极简 Minimal"),
            ("games", "游戏 Games"),
            ("cars", "汽车 Cars"),
            ("flowers", "花卉 Flowers"),
            ("ink-wash", "水墨 Ink Wash"),
            ("cyberpunk", "赛博朋克 Cyberpunk"),
            ("sports", "运动 Sports"),
            ("festival", "节日 Festival"),
        ],
        start=1,
    )
)
_CATEGORY_SLUGS: Final = tuple(c["slug"] for c in CATEGORIES)

# (Chinese, English) title subjects.
_SUBJECTS: Final = (
    ("山间晨雾", "Misty Mountain Morning"),
    ("星空银河", "Milky Way Over the Ridge"),
    ("海边日落", "Sunset by the Sea"),
    ("城市夜景", "City Lights at Night"),
    ("森林小径", "Forest Trail"),
    ("雪山之巅", "Snowy Summit"),
    ("樱花飘落", "Falling Cherry Blossoms"),
    ("极光之夜", "Aurora Night"),
    ("沙漠孤烟", "Lonely Desert Smoke"),
    ("湖光山色", "Lake and Mountains"),
    ("赛博朋克街道", "Cyberpunk Street"),
    ("水墨江南", "Ink Wash Jiangnan"),
    ("古风少女", "Girl in Hanfu"),
    ("萌宠猫咪", "Sleepy Kitten"),
    ("抽象几何", "Abstract Geometry"),
    ("极简线条", "Minimal Lines"),
    ("秋日枫叶", "Autumn Maple Leaves"),
    ("雨后彩虹", "Rainbow After Rain"),
    ("深海鲸鱼", "Whale in the Deep"),
    ("复古跑车", "Vintage Sports Car"),
    ("烟花盛宴", "Fireworks Festival"),
    ("竹林清风", "Breeze in the Bamboo"),
    ("宇宙飞船", "Starship Drift"),
    ("草原骏马", "Horses on the Steppe"),
)
_STYLES: Final = ("", " 4K", " 高清", " HD", " 8K", " 竖屏", " AMOLED", " 治愈系", " Wallpaper")
_TAGS: Final = (
    "4K", "高清", "风景", "nature", "壁纸", "dark", "minimal", "夜景", "anime", "二次元", "星空", "sunset",
    "城市", "cute", "cyberpunk", "水墨", "gradient", "护眼", "手机壁纸", "desktop", "AMOLED", "治愈", "ins风",
    "vintage", "国风", "landscape", "blue", "紫色", "猫", "mountains", "ocean", "科幻", "宁静", "neon",
)  # fmt: skip
_ZH_SENTENCES: Final = (
    "清晨的薄雾笼罩着群山，光线柔和。",
    "适合作为桌面和手机壁纸使用。",
    "色彩柔和，细节丰富，放大也清晰。",
    "原创作品，仅供个人欣赏，禁止商用。",
    "夜色中的灯光让人感到宁静。",
    "作者在旅行途中拍摄并后期调色。",
    "暗色调设计，夜间使用更护眼。",
    "高分辨率原图，支持4K显示器。",
)
_EN_SENTENCES: Final = (
    "A calm scene in soft light.",
    "Shot at golden hour.",
    "Works well on dark-mode desktops.",
    "Colour graded by the author.",
    "Original artwork, personal use only.",
    "Sharp enough for 4K displays.",
)
_AUTHOR_FIRST: Final = ("小", "阿", "大", "老", "Mr.", "Miss ", "")
_AUTHOR_LAST: Final = (
    "鱼", "木", "白", "Lin", "Chen", "Studio", "猫", "Pixel", "墨", "Yun", "光影", "Zhang", "Nova", "风",
)  # fmt: skip
_RESOLUTIONS: Final = ((3840, 2160), (2560, 1440), (1920, 1080), (1080, 2340), (1440, 3200), (5120, 2880))
_N_AUTHORS: Final = 400


def _rng(seed: int, index: int, stream: str = "") -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random: stable across runs and independent of PYTHONHASHSEED.
    return random.Random(f"cachelayer-demo:{stream}:{seed}:{index}")


def _author(author_id: int) -> dict[str, Any]:
    name = _AUTHOR_FIRST[author_id % len(_AUTHOR_FIRST)] + _AUTHOR_LAST[(author_id // 7) % len(_AUTHOR_LAST)]
    digest = _stable_hex(f"author:{author_id}", 16)
    return {"id": author_id, "name": f"{name}{author_id % 97}", "avatar": f"{_AVATAR_CDN}/{digest}.webp"}


def _timestamp(seconds: int) -> str:
    return (EPOCH + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def _image_url(rng: random.Random, variant: str) -> str:
    # Every rendition is its own file with its own content hash (as in content-addressed storage).
    return f"{_CDN}/{variant}/{rng.getrandbits(128):032x}.jpg"


def wallpaper(i: int, seed: int = 0) -> dict[str, Any]:
    """Wallpaper ``i`` of the data set drawn with ``seed``: one stored document, ~0.9 KB as orjson."""
    rng = _rng(seed, i)
    zh, en = rng.choice(_SUBJECTS)
    width, height = rng.choice(_RESOLUTIONS)
    created = rng.randrange(0, 2 * 365 * 86_400)
    views = rng.randrange(200, 2_000_000)
    likes = views * rng.randrange(1, 30) // 100
    downloads = views * rng.randrange(5, 60) // 100
    category = rng.choice(_CATEGORY_SLUGS)
    description = rng.choice(_ZH_SENTENCES) + " " + rng.choice(_EN_SENTENCES)
    return {
        "id": i,
        "title": f"{zh} {en}{rng.choice(_STYLES)}",
        "description": description,
        "category": category,
        "tags": rng.sample(_TAGS, rng.randint(3, 8)),
        "author": _author(rng.randrange(1, _N_AUTHORS + 1)),
        "images": {variant: _image_url(rng, variant) for variant in ("thumb", "preview", "full", "4k")},
        "width": width,
        "height": height,
        "colors": [f"#{rng.getrandbits(24):06x}" for _ in range(rng.randint(2, 4))],
        "resolution": f"{width}x{height}",
        "file_size": rng.randrange(300_000, 12_000_000),
        "counts": {"downloads": downloads, "likes": likes, "views": views},
        "created_at": _timestamp(created),
        "updated_at": _timestamp(created + rng.randrange(0, 90 * 86_400)),
        "flags": {
            "is_4d": rng.random() < 0.1,
            "is_vip": rng.random() < 0.2,
            "is_live": rng.random() < 0.05,
        },
    }


def wallpapers(n: int, seed: int = 0, start: int = 1) -> list[dict[str, Any]]:
    """``n`` wallpapers with consecutive ids from ``start``."""
    return [wallpaper(i, seed) for i in range(start, start + n)]


def list_item(doc: dict[str, Any]) -> dict[str, Any]:
    """The list view of a wallpaper document, as list pages return it (~350 B as orjson)."""
    return {
        "id": doc["id"],
        "title": doc["title"],
        "category": doc["category"],
        "thumb": doc["images"]["thumb"],
        "preview": doc["images"]["preview"],
        "colors": doc["colors"][:2],
        "author": {"id": doc["author"]["id"], "name": doc["author"]["name"]},
        "likes": doc["counts"]["likes"],
        "downloads": doc["counts"]["downloads"],
        "is_vip": doc["flags"]["is_vip"],
        "is_4d": doc["flags"]["is_4d"],
    }


def small_detail(seed: int = 0) -> dict[str, Any]:
    """One wallpaper as the detail endpoint returns it (~1 KB as orjson)."""
    rng = _rng(seed, 0, "detail")
    doc = wallpaper(rng.randrange(1, _TOTAL_WALLPAPERS + 1), seed)
    category = next(c for c in CATEGORIES if c["slug"] == doc["category"])
    doc["category_name"] = category["name"]
    doc["related_ids"] = [rng.randrange(1, _TOTAL_WALLPAPERS + 1) for _ in range(4)]
    return doc


def category_list(seed: int = 0) -> list[dict[str, Any]]:
    """The categories with their counts, in sort order (~3 KB as orjson)."""
    rng = _rng(seed, 0, "categories")
    return [
        {
            "slug": c["slug"],
            "name": c["name"],
            "sort": c["sort"],
            "cover": c["cover"],
            "count": rng.randrange(800, 9_000),
            "new_this_week": rng.randrange(0, 250),
            "updated_at": _timestamp(rng.randrange(0, 2 * 365 * 86_400)),
        }
        for c in CATEGORIES
    ]


def page(n_items: int, seed: int = 0, page: int = 1) -> dict[str, Any]:
    """Page ``page`` of a list response with ``n_items`` items per page."""
    total = _TOTAL_WALLPAPERS - _rng(seed, 0, "total").randrange(0, 500)  # the same on every page
    start = (page - 1) * n_items + 1
    count = max(0, min(n_items, total - start + 1))
    return {
        "items": [list_item(doc) for doc in wallpapers(count, seed, start)],
        "page": page,
        "pageSize": n_items,
        "total": total,
        "hasMore": start + count <= total,
    }


def medium_page(seed: int = 0) -> dict[str, Any]:
    """A 20-item page (~7.3 KB as orjson)."""
    return page(20, seed)


def large_page(seed: int = 0) -> dict[str, Any]:
    """A 500-item page (~180 KB as orjson)."""
    return page(500, seed)


#: The benchmark size classes: name -> value as a function of the seed.
SIZE_CLASSES: Final[dict[str, Callable[[int], Any]]] = {
    "small": small_detail,
    "category_list": category_list,
    "medium": medium_page,
    "large": large_page,
}


def dictionary_training_samples(n: int = 2000, seed: int = TRAINING_SEED_BASE) -> list[bytes]:
    """``n`` orjson-serialized values to train a zstd dictionary on: details, category lists and pages of varied
    sizes, drawn from seeds ``seed .. seed + n - 1`` (keep ``seed`` at or above :data:`TRAINING_SEED_BASE` so the
    samples never overlap what the benchmarks measure)."""
    samples: list[bytes] = []
    for k in range(n):
        s = seed + k
        rng = _rng(s, k, "training")
        roll = rng.random()
        value: Any
        if roll < 0.5:
            value = small_detail(s)
        elif roll < 0.55:
            value = category_list(s)
        elif roll < 0.7:
            value = list_item(wallpaper(rng.randrange(1, _TOTAL_WALLPAPERS + 1), s))
        else:
            value = page(rng.choice((5, 10, 12, 20, 24, 30)), s, page=rng.randint(1, 50))
        samples.append(orjson.dumps(value))
    return samples
