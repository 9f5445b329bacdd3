"""The instruction-count benchmark's arithmetic and report (no valgrind here: the counting itself is
``python -m benchmarks.instructions``, whose figures are in docs/performance.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.instructions import VARIANTS, Count, render, report


def test_a_request_is_the_difference_of_the_two_runs_and_rows_compare_within_a_tree() -> None:
    counts = [
        Count("ceiling", "this", (2_000_000 - 1_000_000) / 1000, (1_000_000, 2_000_000)),
        Count("cached", "this", 1200.0, (1_000_000, 2_200_000)),
        Count("ceiling", "baseline", 1100.0, (1_000_000, 2_100_000)),
        Count("cached", "baseline", 1320.0, (1_000_000, 2_320_000)),
    ]
    args = argparse.Namespace(baseline=Path("/tmp/before"), requests=1000, warmup=300)
    data = report(counts, args, 12.0)
    assert data["rows"] == [
        ["ceiling", "this", 1.0, "1.000"],
        ["cached", "this", 1.2, "1.200"],
        ["ceiling", "baseline", 1.1, "1.000"],
        ["cached", "baseline", 1.3, "1.200"],
    ]
    assert data["command"] == "python -m benchmarks.instructions --baseline /tmp/before --requests 1000"
    page = render(data)
    assert "| cached | baseline | 1.300 | 1.200 |" in page
    assert "/tmp/before" in page


def test_every_variant_is_a_configuration_the_benchmark_writes() -> None:
    assert {config for config, _path, _headers in VARIANTS.values()} == {"cache", "local", "dcz"}
