"""The L1 channel benchmark against the real Redis, two rounds: both observers hear what they should."""

from __future__ import annotations

import redis.asyncio

from benchmarks.l1_channel import measure, summarize


async def test_l1_channel_benchmark_hears_what_each_channel_carries(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    # redis_client empties DB 15 first: with few keys carrying a TTL, Redis's active expiry finds ours in time.
    # A budget no healthy Redis misses on a starved machine: a write that failed open would send no notice.
    samples = await measure(2, redis_url, budget=5.0)
    heard = {row[0]: (row[1], row[4]) for row in summarize(samples)}
    assert heard["set"] == ("2/2", "2/2")
    assert heard["cold load"] == ("2/2", "2/2")
    assert heard["invalidate_tags (10 keys)"] == ("2/2", "2/2")
    # A writer outside the library, and Redis expiring a key, reach only client tracking.
    assert heard["foreign write"] == ("0/2", "2/2")
    assert heard["expiry"] == ("0/2", "2/2")
