"""The local tier's byte count covers what its entries really allocate, so ``max_bytes`` bounds memory.

tracemalloc counts allocations, not time: this is a measurement of the structure, not a benchmark (the RSS of a
worker under load is measured by ``python -m benchmarks.local_memory``, whose reading of the service's admin port is
checked below on a captured scrape).
"""

from __future__ import annotations

import gc
import time
import tracemalloc

import pytest

from benchmarks import _scrape, local_memory
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


# -- what benchmarks/local_memory.py reads: one scrape of the service's admin port, gauges per worker -------------

SCRAPE = """cachelayer_loads_total{cache="wallpaper"} 30.0
cachelayer_local_bytes{cache="wallpaper",worker="0"} 1048576.0
cachelayer_local_bytes{cache="wallpaper",worker="1"} 2097152.0
cachelayer_local_entries{cache="wallpaper",worker="0"} 16.0
cachelayer_local_entries{cache="wallpaper",worker="1"} 15.0
cachelayer_local_evictions{cache="wallpaper",worker="1"} 3.0
process_resident_memory_bytes{worker="0"} 6.291456e+07
process_resident_memory_bytes{worker="1"} 6.2914560e+07
process_start_time_seconds{worker="0"} 1.79650254275e+09
process_start_time_seconds{worker="1"} 1.79650254275e+09
wallpaper_workers 2.0
"""


def test_each_workers_figures_come_from_one_scrape() -> None:
    found = local_memory.per_worker(_scrape.parse(SCRAPE))
    assert found == {
        "0": {"rss_mib": 60.0, "started": 1796502542.75, "local_entries": 16.0, "local_bytes": 2**20,
              "local_evictions": 0.0},
        "1": {"rss_mib": 60.0, "started": 1796502542.75, "local_entries": 15.0, "local_bytes": 2**21,
              "local_evictions": 3.0},
    }  # fmt: skip


def test_rows_hold_growth_to_the_bound_and_fail_a_restarted_worker() -> None:
    baseline = local_memory.per_worker(_scrape.parse(SCRAPE))
    after = {worker: {**figures, "rss_mib": figures["rss_mib"] + 9.5} for worker, figures in baseline.items()}
    after["1"]["started"] += 30  # the same task id, another process: its growth says nothing
    rows = local_memory.worker_rows(baseline, after, max_bytes=8 * 2**20)
    assert [(r["worker"], r["growth_mib"], r["bound_mib"], r["restarted"], r["pass"]) for r in rows] == [
        ("0", 9.5, 10.0, False, True),
        ("1", 9.5, 10.0, True, False),
    ]
    assert rows[1]["local_bytes_mib"] == 2.0
    over = local_memory.worker_rows(baseline, {"0": {**after["0"], "rss_mib": 71.0}}, max_bytes=8 * 2**20)
    assert [(r["worker"], r["pass"]) for r in over] == [("0", False), ("1", False)]  # 11 MiB; worker 1 gone
