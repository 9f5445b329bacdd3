"""Small generated wallpaper-like values for codec and dictionary tests (the service's full data set lives in
service/demo_data.py; these are cheaper and shaped to make zstd dictionaries worth training)."""

from __future__ import annotations

import random
from typing import Any

WORDS = ("wallpaper", "nature", "city", "壁纸", "高清", "风景", "abstract", "dark", "minimal", "space")


def sample(rng: random.Random, i: int) -> dict[str, Any]:
    return {
        "id": i,
        "title": " ".join(rng.choice(WORDS) for _ in range(4)),
        "tags": rng.sample(WORDS, 3),
        "size": [rng.choice([1920, 2560, 3840]), rng.choice([1080, 1440, 2160])],
        "likes": rng.randrange(10**5),
        "url": f"https://img.example.com/{rng.randrange(10**9):x}.jpg",
    }
