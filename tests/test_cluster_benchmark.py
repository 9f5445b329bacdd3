"""benchmarks/cluster.py: a --quick run end to end (its files, the issue's JSON keys and targets), and its figures
computed from records made up here (no cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import _cluster_phases as phases
from benchmarks import cluster as bench
from benchmarks._cluster_phases import FETCH, MANY, WRITE, Keyspace, Op, Window
from harness import cluster_supported
from harness.services import skip_or_fail


@pytest.mark.slow
def test_quick_run_writes_rows_with_the_issue_keys(tmp_path: Path) -> None:
    reason = cluster_supported()
    if reason is not None:
        skip_or_fail(reason)
    out = tmp_path / "cluster.json"
    assert bench.main(["--quick", "--runs", "1", "--json", str(out), "--results", str(tmp_path)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [row["phase"] for row in rows] == list(bench.PHASES)
    for row in rows:
        assert list(row) == bench.COLUMNS
        assert row["ops"] > 0
        # no client threw its topology away (a tagged write to the dead master once closed the whole client)
        assert row["command_calls"] == 0, rows
        assert row["caller_errors"] == 0, rows
        assert row["wrong_values"] == 0, rows
    by_phase = {row["phase"]: row for row in rows}
    for phase in ("failover", "freeze"):
        assert by_phase[phase]["promotion_s"] is not None, rows
        assert by_phase[phase]["client_recovery_s"] is not None, rows  # every worker hit the shard again
    assert [(run["phase"], run["run"]) for run in result["runs"]] == [("failover", 0), ("freeze", 0)]
    assert [check["name"] for check in result["targets"]] == [
        "caller_errors", "wrong_values", "healthy_breaker_openings", "healthy_shard_hit_ratio",
        "healthy_get_many_item_hit_ratio", "loop_lag_p99_ms", "client_recovery_s"]
    markdown = (tmp_path / "cluster.md").read_text()
    assert markdown.count("|") > 10
    assert "PASS" in markdown or "FAIL" in markdown
    assert (tmp_path / "cluster.png").stat().st_size > 1000


# -- the figures, from made-up records ----------------------------------------------------------------------------

# Three shards; item i's value on shard i % 3 and its stamp on shard (i + 1) % 3; get_many name j on shard j % 3.
KEYS = Keyspace(
    [frozenset({i % 3, (i + 1) % 3}) for i in range(phases.KEYS)],
    [j % 3 for j in range(phases.MANY_KEYS)],
)
ALL_HIT = (1 << phases.MANY_SIZE) - 1


def fetch(t: float, i: int, hit: bool, elapsed: float = 0.001) -> Op:
    return (t, FETCH, i, int(hit), elapsed, 0, 0)


def test_client_recovery_is_the_slower_workers_first_hit_on_the_failed_shard_after_the_promotion() -> None:
    window = Window("failover", 0, start=0.0, touched=frozenset({0}), fault_at=1.0, promoted_at=4.0, end=10.0)
    # item 0 touches shard 0 (value) and 1 (stamp); item 1 touches shards 1 and 2 only
    first = [fetch(3.0, 0, False), fetch(4.05, 1, True), fetch(4.1, 0, True), fetch(5.0, 0, True)]
    second = [fetch(4.2, 0, False), (4.3, MANY, 1, 0b10, 0.001, 0, 0), (4.35, MANY, 0, 0b10, 0.001, 0, 0),
              (4.4, MANY, 0, 0b1, 0.001, 0, 0)]  # name 0 (shard 0) first hits at 4.4
    assert phases.client_recovery(window, [first, second], KEYS) == pytest.approx(0.4)
    assert phases.client_recovery(window, [first, [fetch(4.2, 0, False)]], KEYS) is None  # one never hit again
    unpromoted = Window("freeze", 0, start=0.0, touched=frozenset({0}), fault_at=1.0, healed_at=8.0, end=10.0)
    assert phases.client_recovery(unpromoted, [first], KEYS) is None
    # a freeze: hits after SIGCONT (the old master may answer then) do not count
    frozen = Window("freeze", 0, start=0.0, touched=frozenset({0}), fault_at=1.0, promoted_at=4.0, healed_at=4.08,
                    end=10.0)
    assert phases.client_recovery(frozen, [first], KEYS) is None


def test_a_phase_row_judges_healthy_reads_and_breakers_by_the_shards_the_fault_left_alone() -> None:
    window = Window("failover", 0, start=0.0, touched=frozenset({0}), fault_at=1.0, promoted_at=2.0, end=4.0)
    ops = sorted([
        fetch(0.5, 0, False),  # before the fault: not judged for the healthy ratios, but a miss all the same
        fetch(1.5, 0, False),  # touched (value on shard 0): not held against the healthy ratio
        fetch(1.6, 1, True),  # shards 1 and 2: healthy, a hit
        fetch(1.7, 4, False),  # shards 1 and 2: healthy, a miss
        (1.8, MANY, 0, ALL_HIT & ~0b1, 0.25, 0, 0),  # names 0 (shard 0, touched: missed) .. 7: 5 healthy hits
        (1.9, WRITE, 3, 0, 0.001, 1, 0),  # a caller error
        fetch(2.5, 0, True, elapsed=0.3),  # over 2x budget
    ])
    lags = [(1.0, 10.0), (2.0, 70.0)]
    events = [(1.2, "Redis Cluster node 127.0.0.1:1000", "open"),  # shard 0: touched
              (1.3, "Redis Cluster node 127.0.0.1:2000", "open"),  # shard 1: healthy
              (1.4, "Redis Cluster 127.0.0.1:1000", "open"),  # the key-less breaker: shared, so counted
              (1.5, "Redis Cluster node 127.0.0.1:2000", "half_open")]
    shards = {1000: 0, 2000: 1}

    def shard_of_store(store: str) -> int | None:
        return shards[int(store.rsplit(":", 1)[1])] if store.startswith("Redis Cluster node ") else None

    row = phases.summarize("failover", [window], ops, [ops], lags, events, shard_of_store, KEYS, 0.0)
    assert row["runs"] == 1
    assert row["ops"] == 7
    assert row["caller_errors"] == 1
    assert row["over_budget_calls"] == 2
    assert row["healthy_shard_hit_ratio"] == 0.5
    assert row["healthy_get_many_item_hit_ratio"] == 1.0  # names 1, 2, 4, 5, 7 (shards 1 and 2) all hit
    assert row["healthy_breaker_openings"] == 2
    assert row["extra_loads"] == 3
    assert row["loop_lag_p99_ms"] == 70.0
    assert row["promotion_s"] == 1.0
    assert row["client_recovery_s"] == 0.5  # item 0 hit at 2.5
    assert row["recovery_s"] == 1.5  # the call over budget at 2.5 touched shard 0


def test_percentile_is_nearest_rank() -> None:
    assert phases.percentile([], 0.99) is None
    assert phases.percentile([0.1 * n for n in range(1, 11)], 0.99) == pytest.approx(1.0)  # p99 of 10: the worst
    assert phases.percentile([3.0, 1.0, 2.0], 0.5) == 2.0


def test_targets_fail_on_a_missing_figure_and_on_a_figure_past_its_bound() -> None:
    good = {"caller_errors": 0, "wrong_values": 0, "healthy_breaker_openings": 0, "healthy_shard_hit_ratio": 1.0,
            "healthy_get_many_item_hit_ratio": 0.995, "loop_lag_p99_ms": 20.0, "client_recovery_s": None}
    rows = [{**good, "phase": phase} for phase in bench.PHASES]
    for row in rows:
        if row["phase"] in ("failover", "freeze"):
            row["client_recovery_s"] = 0.2
    assert all(check["pass"] for check in bench.targets(rows))
    rows[2]["client_recovery_s"] = None  # a run without a hit after the promotion
    rows[3]["healthy_get_many_item_hit_ratio"] = 0.98
    failed = {check["name"] for check in bench.targets(rows) if not check["pass"]}
    assert failed == {"client_recovery_s", "healthy_get_many_item_hit_ratio"}
