"""The local tier's byte count covers what its entries really allocate, so ``max_bytes`` bounds memory.

tracemalloc counts allocations, not time: this is a measurement of the structure, not a benchmark (the RSS of a
worker under load is measured by ``python -m benchmarks.local_memory``).
"""

from __future__ import annotations

import gc
import time
import tracemalloc

import pytest

from cachelayer import Codec, LocalCache

ENTRIES = 5_000


@pytest.mark.parametrize("value", [None, {"items": [{"id": i, "title": f"w{i}" * 8} for i in range(30)]}],
                         ids=["not-found", "page"])  # fmt: skip
def test_counted_bytes_cover_what_entries_allocate(value: object) -> None:
    codec = Codec()
    expires_at = time.time() + 60
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        local = LocalCache(max_entries=10 * ENTRIES, max_bytes=10**10)
        for i in range(ENTRIES):
            data = codec.encode(value, expires_at=expires_at)
            local.put(f"wp:{{wp.detail@t0123abcd:{i:032x}}}", data, codec.read_frame(data))
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(local) == ENTRIES
    # Counted at least what was allocated, and not wildly more (the bound would waste memory).
    assert allocated <= local.size_bytes <= 1.5 * allocated, (allocated / ENTRIES, local.size_bytes / ENTRIES)
