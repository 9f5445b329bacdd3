"""Issue 16, part 3, last step: the invalidation rule free-running over 4 processes against a real Redis.

Four worker processes, each with its own cache on a private Redis (small ``maxmemory``, ``allkeys-lru``), read
rows whose versions live in MariaDB and commit + invalidate them, while this test kills workers with SIGKILL
mid-load, pauses Redis (``CLIENT PAUSE 300 WRITE`` / ``ALL``) and fills it with ballast. Every process logs what
it saw; the checker (``harness/freerun.py``) finds a violation when a read that started after an invalidation of
version v took effect answered a version below v, or an entry left at the end differs from the database. The
naive get-load-set (``CACHELAYER_FREERUN_MUTANT=naive-fill``) must be caught.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import RedisServer
from harness.freerun import FreeRunConfig, run
from harness.services import MySQLSettings

pytestmark = pytest.mark.slow


@pytest.fixture
def lru_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis that evicts any key under memory pressure (the run tightens ``maxmemory`` once its workers
    are connected)."""
    server = RedisServer(tmp_path / "redis", extra_args=("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"))
    server.start()
    try:
        yield server
    finally:
        server.close()


def config_for(redis: RedisServer, mysql: MySQLSettings, log_dir: Path, **overrides: object) -> FreeRunConfig:
    run_id = uuid.uuid4().hex[:10]
    return FreeRunConfig(
        redis_url=redis.url,
        mysql=mysql.aiomysql_kwargs(),
        table=f"freerun_{run_id}",
        namespace=f"freerun-{run_id}",
        log_dir=str(log_dir),
        **overrides,  # type: ignore[arg-type]  # FreeRunConfig's own fields
    )


CHAOS = {
    # Eviction of any key (values, tickets, tag stamps) with every kind of invalidation: an evicted stamp means its
    # entries are gone (tests/test_consistency_race.py pins it).
    "kill-pause-evict": {},
    # Every kind of invalidation, by key and by tag, marked stale or deleted, while nothing is evicted.
    "kill-pause-tags": {"eviction": False},
}


@pytest.mark.parametrize("chaos", list(CHAOS))
async def test_no_read_after_an_invalidation_sees_an_older_version(
    lru_redis: RedisServer, mysql_settings: MySQLSettings, tmp_path: Path, chaos: str
) -> None:
    """The whole chaos: SIGKILL mid-load, CLIENT PAUSE WRITE / ALL, and eviction of any key or tag invalidations."""
    report = await run(config_for(lru_redis, mysql_settings, tmp_path / "logs", duration=8.0, kills=2, **CHAOS[chaos]))
    print(report.summary())
    # Floors that tell "it ran" from "it hung", with room for a loaded machine (an idle one does ~3,000 reads).
    assert report.reads_constrained > 300, report.summary()
    assert report.commits > 50, report.summary()
    assert report.kills >= 1, report.summary()
    assert report.pauses >= 1, report.summary()
    assert report.evicted_keys > 0 or chaos != "kill-pause-evict", report.summary()
    assert report.stats["revoked_fills"] > 0, report.summary()  # the race happened, and the rule won it
    assert report.violations == 0, report.summary()
    assert report.final_mismatches == 0, report.summary()


@pytest.mark.parametrize("mutant", [None, "naive-fill"], ids=["rule", "naive-get-load-set"])
async def test_the_checker_catches_the_naive_get_load_set(
    lru_redis: RedisServer, mysql_settings: MySQLSettings, tmp_path: Path, mutant: str | None
) -> None:
    """Loaders killed mid-load, the store healthy and roomy: the rule gives 0 violations, the naive fill many."""
    config = config_for(lru_redis, mysql_settings, tmp_path / "logs", duration=4.0, kills=1, pauses=0,
                        eviction=False, mutant=mutant)  # fmt: skip
    report = await run(config)
    print(report.summary())
    assert report.reads_constrained > 50, report.summary()
    if mutant is None:
        assert report.stats["revoked_fills"] > 0, report.summary()
        assert report.violations == 0, report.summary()
        assert report.final_mismatches == 0, report.summary()
    else:
        assert report.stats["revoked_fills"] == 0, report.summary()  # a naive fill is never refused
        assert report.violations > 0, report.summary()
