"""The lease-wake benchmark drives two real caches: the waiter waits for the holder's load, never loads itself."""

from __future__ import annotations

import pytest

from benchmarks import lease_wake


@pytest.mark.asyncio
async def test_two_caches_wait_for_each_other(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lease_wake, "REDIS_URL", redis_url)
    monkeypatch.setattr(lease_wake, "LOAD", 0.02)
    # A budget no healthy Redis misses, even on a starved machine: a holder whose store of the value ran out of
    # its 0.1 s would release its lease without a value, and the waiter would load (what the benchmark checks).
    result = await lease_wake.measure(rounds=2, budget=5.0)  # raises if the waiter loaded or missed its wait
    assert set(result) == set(lease_wake.VARIANTS)
    for row in result.values():
        assert row["wake_p50_ms"] >= 0
        assert row["commands_per_wait"] >= 2  # at least its GET miss and its lease attempt
