"""The tag-invalidation benchmark in its quick form, on the machine's Redis (DB 15) and a real Redis Cluster:
every row is measured, the per-member invalidation reaches every entry, the version prototype invalidates with one
command, and the tag set stays bounded under churn. No speed is asserted here (benchmarks/results holds those)."""

from __future__ import annotations

import pytest

from benchmarks import tag_invalidation
from harness import RedisClusterServer


@pytest.mark.asyncio
async def test_quick_run_measures_every_row(redis_url: str, redis_cluster: RedisClusterServer) -> None:
    settings = tag_invalidation.QUICK
    result = await tag_invalidation.measure(settings, redis_url=redis_url, cluster=redis_cluster)
    assert set(result) == {"redis", "cluster"}
    for measured in result.values():
        assert [row["size"] for row in measured["rows"]] == list(settings.sizes)
        for row in measured["rows"]:
            size = row["size"]
            for mode in ("delete", "mark_stale"):
                # Every member reached, unless a batch missed the 0.1 s budget on a busy machine: then the
                # invalidation was deferred (retried by the library), which the row counts.
                assert row[mode]["reached_min"] == size or row[mode]["deferred"] > 0
            assert row["delete"]["redis_us"] > 0
            assert row["mark_stale"]["redis_us"] > 0
            assert row["version"]["reached_min"] == size  # the INCR made every entry unreadable (checked inside)
            assert row["tag_set_size"] >= size  # deleted members stay until their membership ends
            assert row["fill"]["tagged_us"] > 0
            assert row["fill"]["untagged_us"] > 0
        hits = measured["hits"]
        for name in hits["labels"]:
            assert hits[f"{name}_us"] > 0
        churn = measured["churn"]
        assert churn["bounded"], churn
        assert churn["zcard_end"] < churn["fills"]
    text = tag_invalidation.report(result, settings, "test", ([0.0], [0.0]))
    assert "## Recommendation" in text
    assert "Break-even" in text
