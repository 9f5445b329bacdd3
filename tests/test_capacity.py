"""The capacity model (benchmarks/capacity.py, docs/capacity.md): plan() on fixed inputs against numbers worked out
by hand, the command on the committed results (it reproduces the committed capacity.md), its message when an input
is missing, and docs/capacity.md's tables against what the command computes (so the page cannot drift)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from benchmarks import capacity
from benchmarks._common import RESULTS_DIR as RESULTS
from benchmarks.capacity import WORKED_EXAMPLE, Inputs, Target, load_inputs, plan

DOC = Path(__file__).resolve().parent.parent / "docs" / "capacity.md"

INPUTS = Inputs(
    local_hit_us=100, redis_hit_us=200, cache_local_hit_us=10, cache_redis_hit_us=50, load_us=300, local_load_us=100,
    message_us=20, redis_hit_cpu_us=10, redis_load_cpu_us=50, redis_local_load_cpu_us=20, redis_message_cpu_us=5,
    hit_commands=1, load_commands=10, local_load_commands=1, hit_wire_bytes=40, load_wire_bytes=400,
    local_load_wire_bytes=200, message_wire_bytes=100, stored_bytes=300, stored_bytes_plain=700, memory_usage=500,
    memory_usage_plain=900, key_overhead=100, loads_per_expiry=1.0, answer_bytes=250,
)  # fmt: skip
TARGET = Target(
    rps=10_000, keys=1_000_000, hit_ratio=0.9, local_hit_ratio=0.5, ttl=1000, app_busy=0.5, shard_memory_gb=0.5,
    shard_busy=0.5, shard_network_gbps=1.0,
)  # fmt: skip


def test_plan_with_a_local_tier_by_hand() -> None:
    p = plan(INPUTS, TARGET)
    # 4,500 local hits, 4,500 Redis hits, 1,000 misses; loads 1e6 / 1000 s x 1.0 = 1,000/s; reads 5,500.
    assert (p.local_hits, p.redis_hits, p.misses, p.loads) == pytest.approx((4500, 4500, 1000, 1000))
    # base = 4,500 x 100 + 5,500 x 200 + 1,000 x (300 + 100) us = 1.95 cores; each process hears 1,000 x 20 us =
    # 0.02 core; P >= (1.95 - 0.02) / (0.5 - 0.02) = 4.02 -> 5 processes; cores = 1.95 + 0.02 x 4 = 2.03.
    assert p.processes == 5
    assert p.app_cores == pytest.approx(2.03)
    assert p.messages == pytest.approx(4000)
    # cache: 4,500 x 10 + 5,500 x 50 + 1,000 x 400 us = 0.72 core, + 0.08 hearing.
    assert p.cache_cores == pytest.approx(0.80)
    assert p.loader_cores == 0
    # Redis: 5,500 x 10 + 1,000 x 50 + 1,000 x (20 + 4 x 5) us = 0.145 core; commands 5,500 + 10,000 + 1,000.
    assert p.redis_cores == pytest.approx(0.145)
    assert p.redis_commands == pytest.approx(16_500)
    assert p.shard_commands == pytest.approx(0.5e6 * 16_500 / 145_000)
    # Entry: 500 - 300 + 300 + 100 = 600 B -> 0.6 GB; without the dictionary 900 - 700 + 700 + 100 = 1,000 B.
    assert p.entry_bytes == pytest.approx(600)
    assert (p.memory_gb, p.memory_gb_other) == pytest.approx((0.6, 1.0))
    # Wire: 4,500 x 340 + 1,000 x 40 + 1,000 x 700 + 1,000 x (200 + 4 x 100) = 2,870,000 B/s.
    assert p.network_gbps == pytest.approx(2_870_000 * 8 / 1e9)
    assert p.hit_bytes == pytest.approx(340)
    assert p.answer_gbps == pytest.approx(10_000 * 250 * 8 / 1e9)
    # Shards: memory ceil(0.6 / 0.5) = 2, CPU ceil(0.145 / 0.5) = 1, network ceil(0.02296 / 0.5) = 1.
    assert p.shards_by == {"memory": 2, "Redis CPU": 1, "network": 1}
    assert p.shards == 2
    assert p.use == pytest.approx({"memory": 0.6, "Redis CPU": 0.145, "network": 0.02296})
    assert p.limit == "memory"


def test_plan_without_a_local_tier_by_hand() -> None:
    p = plan(INPUTS, dataclasses.replace(TARGET, local_hit_ratio=0.0))
    # 9,000 Redis hits + 1,000 misses: 10,000 x 200 + 1,000 x 300 us = 2.3 cores -> ceil(2.3 / 0.5) = 5; no
    # broadcast, nobody hears one.
    assert (p.local_hits, p.redis_hits) == pytest.approx((0, 9000))
    assert p.app_cores == pytest.approx(2.3)
    assert p.processes == 5
    assert p.messages == 0
    assert p.redis_cores == pytest.approx(0.15)  # 10,000 x 10 + 1,000 x 50 us
    assert p.redis_commands == pytest.approx(20_000)
    assert p.network_gbps == pytest.approx((9000 * 340 + 1000 * 40 + 1000 * 700) * 8 / 1e9)


def test_plan_with_a_given_value_size_loader_and_replicas() -> None:
    target = dataclasses.replace(TARGET, value_bytes=1000, dictionary=False, loader_ms=1.0, local_hit_ratio=0.0)
    p = plan(INPUTS, target)
    # The plain entry with its 700 B value replaced by 1,000 B: 900 - 700 + 1,000 + 100; the other (dictionary)
    # entry's value scaled as measured (300 / 700): 500 - 300 + 1,000 x 300 / 700 + 100.
    assert p.entry_bytes == pytest.approx(1300)
    assert p.memory_gb_other == pytest.approx(1e6 * (300 + 1000 * 300 / 700) / 1e9)
    assert p.loader_cores == pytest.approx(1.0)  # 1,000 loads x 1 ms
    assert p.app_cores == pytest.approx(2.3 + 1.0)
    assert p.shards_by["memory"] == 3  # 1.3 GB over 0.5 GB


def test_a_process_that_would_only_hear_broadcasts_is_refused() -> None:
    with pytest.raises(ValueError, match="hearing broadcasts"):
        plan(dataclasses.replace(INPUTS, message_us=600), TARGET)  # 1,000 x 600 us = 0.6 of a core > 0.5


def test_the_command_reproduces_the_committed_worked_example(tmp_path: Path) -> None:
    assert capacity.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "capacity.md").read_text() == (RESULTS / "capacity.md").read_text()
    written = json.loads((tmp_path / "capacity.json").read_text())
    committed = json.loads((RESULTS / "capacity.json").read_text())
    assert written["plan"] == committed["plan"]
    assert written["inputs"] == committed["inputs"]
    assert written["target"] == dataclasses.asdict(WORKED_EXAMPLE)


def test_another_target_is_printed_not_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert capacity.main(["--out", str(tmp_path), "--rps", "50000", "--local-hit-ratio", "0", "--ttl", "3600"]) == 0
    assert "50,000 req/s" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("drop", "named", "command"),
    [
        ("stampede.json", "stampede.json", "python -m benchmarks.stampede"),
        ("hit_path.json", "hit_path.json", "python -m benchmarks.hit_path"),
        ("wire_bytes.json", "wire_bytes.json", "python -m benchmarks.wire_bytes"),
        ("http*.json", "http*.json", "python -m benchmarks.http_load"),
        ("measured", "measured/client_hit_us", "python -m benchmarks.capacity --measure"),
    ],
)
def test_a_missing_input_names_itself_and_its_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], drop: str, named: str, command: str
) -> None:
    for path in RESULTS.glob("*.json"):
        if not path.match(drop):
            shutil.copy(path, tmp_path / path.name)
    if drop == "measured":
        document = json.loads((tmp_path / "capacity.json").read_text())
        del document["measured"]
        (tmp_path / "capacity.json").write_text(json.dumps(document))
    assert capacity.main(["--results", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert named in error
    assert command in error


def test_the_doc_tables_are_what_the_command_computes() -> None:
    inputs = load_inputs()
    doc = DOC.read_text()
    assert capacity.table(plan(inputs, WORKED_EXAMPLE)) in doc
    assert capacity.variants_table(inputs) in doc


def test_a_redis_hit_costs_a_local_one_plus_what_the_cache_adds() -> None:
    """Not the HTTP run's Redis row: that run asks for one hot page, whose concurrent reads share a GET."""
    inputs = load_inputs()
    extra = inputs.cache_redis_hit_us - inputs.cache_local_hit_us
    assert inputs.redis_hit_us == pytest.approx(inputs.local_hit_us + extra)
    assert "cache_redis_hit_us" in inputs.sources["redis_hit_us"]
