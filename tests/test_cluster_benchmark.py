"""Smoke test of benchmarks/cluster.py: a --quick run end to end, its files and the issue's JSON keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import cluster as bench
from harness import cluster_supported
from harness.services import skip_or_fail

pytestmark = pytest.mark.slow


def test_quick_run_writes_rows_with_the_issue_keys(tmp_path: Path) -> None:
    reason = cluster_supported()
    if reason is not None:
        skip_or_fail(reason)
    out = tmp_path / "cluster.json"
    assert bench.main(["--quick", "--json", str(out), "--results", str(tmp_path)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["phase"] for row in rows] == ["steady", "failover", "reshard"]
    for row in rows:
        assert list(row) == bench.COLUMNS
        assert row["ops"] > 0
        # no client threw its topology away (a tagged write to the dead master once closed the whole client)
        assert row["command_calls"] == 0, rows
    assert (tmp_path / "cluster.md").read_text().count("|") > 10
    assert (tmp_path / "cluster.png").stat().st_size > 1000
