"""The tag-invalidation benchmark in its quick form, on the machine's Redis (DB 15) and a real Redis Cluster: every
row is measured, one script invalidates the tag whatever N, every sampled entry reads as gone / stale afterwards,
tagged hits and misses hit and fill, and the churn keeps one stamp key and no per-member structure. No speed is
asserted here (benchmarks/results holds those)."""

from __future__ import annotations

import pytest

from benchmarks import tag_invalidation
from harness import RedisClusterServer


@pytest.mark.asyncio
async def test_quick_run_measures_every_row(redis_url: str, redis_cluster: RedisClusterServer) -> None:
    settings = tag_invalidation.QUICK
    result = await tag_invalidation.measure(settings, redis_url=redis_url, cluster=redis_cluster)
    assert set(result) == {"redis", "cluster"}
    for label, measured in result.items():
        assert [row["size"] for row in measured["rows"]] == list(settings.sizes)
        for row in measured["rows"]:
            assert row["sampled"] == min(row["size"], settings.sample)
            for mode in ("delete", "mark_stale"):
                measured_mode = row[mode]
                assert measured_mode["samples"] == settings.repeats
                # The tag had a stamp (its entries' loads made it), unless the call missed the 0.1 s budget on a
                # busy machine: then it was deferred (retried by the library), which the row counts.
                assert measured_mode["reached_min"] == 1 or measured_mode["deferred"] > 0
                assert measured_mode["ms"] > 0
                if measured_mode["flushed"]:  # another worker's test emptied DB 15 in every attempt: no evidence
                    continue
                assert measured_mode["hit_before"] == row["sampled"], measured_mode["before"]
                # The library's correctness, not a speed: after the invalidation no sampled entry is served fresh.
                assert measured_mode["as_expected"] == row["sampled"], (label, row["size"], mode, measured_mode)
            if label == "cluster":  # a private cluster: nobody else's scripts, so exactly one per invalidation
                assert row["delete"]["foreign_calls"] == 0
                assert row["mark_stale"]["foreign_calls"] == 0
        hits = measured["hits"]
        assert hits["tagged_us"] > 0
        assert hits["untagged_us"] > 0
        # A read over its budget on a busy machine fails open (a miss, counted): rare, never the rule.
        assert hits["not_hits"] <= settings.hit_rounds * settings.hits_per_round // 10 or hits["flushed"], hits
        assert hits["stamp_on_other_master"] == (label == "cluster")
        misses = measured["misses"]
        assert misses["tagged_us"] > 0
        assert misses["untagged_us"] > 0
        assert misses["tagged_then_hit"] == misses["tagged_checked"] or misses["not_stored"] > 0
        churn = measured["churn"]
        assert churn["fills"] > 0
        assert churn["stamps_max"] == 1, churn  # one key for the one tag, however many entries carried it
        assert churn["other_max"] == 0, churn  # no per-member structure
        assert churn["stamp_gone"], churn
        if not churn["flushed"]:
            assert churn["one_stamp"], churn
            assert (churn["stamp_type"], churn["stamp_bytes"]) == ("string", 16)
            # Renewed by the last fill, after it began: never gone before a lifetime from then (late is load).
            assert churn["stamp_gone_after_s"] >= churn["stamp_lifetime_s"] - 0.02, churn
    text = tag_invalidation.report(result, settings, "test", ([0.0], [0.0]))
    assert "## Conclusion" in text
    assert "flat in N" in text
    assert "For reference: the per-member shape" in text
