"""The stampede benchmark's cold rounds: one row per contender that hides no bad round behind good ones."""

from __future__ import annotations

from typing import Any

from benchmarks.stampede import _median_round


def _round(cpu: float, p99: float, loads: int = 1, errors: int = 0) -> dict[str, Any]:
    return {
        "loader_calls": loads,
        "loader_ms": 50.0,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "max_ms": p99 + 1,
        "requests": 100,
        "errors": errors,
        "first_error": "MaxConnectionsError: Too many connections" if errors else None,
        "wake_max_ms": None,
        "cpu_per_request_us": cpu,
        "gc_collections": [int(cpu), 0, 0],
    }


def test_timings_are_medians_and_counts_are_the_worst_round() -> None:
    rounds = [_round(30.0, 110.0), _round(20.0, 150.0, loads=2), _round(25.0, 100.0, errors=3)]
    row = _median_round(rounds)
    assert row["cpu_per_request_us"] == 25.0
    assert row["p99_ms"] == 110.0
    assert row["loader_calls"] == 2  # one round with two loads fails "exactly 1 loader call"
    assert row["errors"] == 3
    assert row["requests"] == 300
    assert row["first_error"] == "MaxConnectionsError: Too many connections"
    assert row["gc_collections"] == [25, 0, 0]  # the round whose CPU is the median
    assert row["wake_max_ms"] is None  # no round measured it
    assert row["rounds"] == rounds
