"""The codec benchmark runs end to end (in its tiny smoke mode) and writes rows of the documented shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import codecs
from benchmarks._common import format_table, markdown_table, time_call


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("codecs")
    json_path = out / "rows.json"
    assert codecs.main(["--smoke", "--out-dir", str(out), "--json", str(json_path)]) == 0
    rows = json.loads(json_path.read_text())
    return out, rows


def test_rows_have_the_documented_schema(smoke_run: tuple[Path, list[dict[str, Any]]]) -> None:
    _, rows = smoke_run
    assert rows
    for row in rows:
        assert set(codecs.ROW_KEYS) <= set(row), row
        assert isinstance(row["raw_bytes"], int)
        assert isinstance(row["stored_bytes"], int)
        assert row["ratio"] == pytest.approx(row["stored_bytes"] / row["raw_bytes"], abs=1e-4)
        assert isinstance(row["encode_us"], float)
        assert row["encode_us"] > 0
        assert isinstance(row["decode_us"], float)
        assert row["decode_us"] > 0
    combos = {(r["serializer"], r["compression"]) for r in rows}
    for serializer in ("json", "orjson", "msgpack"):
        for compression in ("none", "zlib-6", "zstd-1", "zstd-3", "zstd-3-dict"):
            assert (serializer, compression) in combos


def test_default_codec_rows(smoke_run: tuple[Path, list[dict[str, Any]]]) -> None:
    _, rows = smoke_run
    defaults = [r for r in rows if r.get("default")]
    assert {r["size_class"] for r in defaults} == set(codecs.MODES["smoke"].size_classes)
    for row in defaults:
        assert (row["serializer"], row["compression"]) == ("orjson", "zstd-1")
        assert isinstance(row["passthrough_us"], float)
        assert row["passthrough_us"] > 0
        assert row["stored_bytes"] < row["raw_bytes"]
    # Only the default codec's rows carry the flag.
    assert all(r.get("default") is None for r in rows if r not in defaults)


def test_results_files_written(smoke_run: tuple[Path, list[dict[str, Any]]]) -> None:
    out, rows = smoke_run
    assert json.loads((out / "codecs.json").read_text()) == rows
    md = (out / "codecs.md").read_text()
    assert "python -m benchmarks.codecs" in md
    for verdict_line in ("stored / raw orjson", "orjson.loads alone"):
        assert verdict_line in md
    assert ("PASS" in md) or ("FAIL" in md)


def test_dictionary_helps_the_small_class(smoke_run: tuple[Path, list[dict[str, Any]]]) -> None:
    _, rows = smoke_run
    by = {(r["size_class"], r["serializer"], r["compression"]): r for r in rows}
    with_dict = by[("small", "orjson", "zstd-3-dict")]["stored_bytes"]
    without = by[("small", "orjson", "zstd-3")]["stored_bytes"]
    assert isinstance(with_dict, int)
    assert isinstance(without, int)
    assert with_dict < without


def test_common_helpers() -> None:
    timing = time_call(lambda: sum(range(10)), repeats=3, min_time=0.0005)
    assert timing.repeats == 3
    assert timing.number >= 1
    assert timing.median_us > 0
    text = format_table(["name", "n"], [["a", 1], ["bb", 2.5]])
    assert text.splitlines()[0].startswith("name")
    assert markdown_table(["name", "n"], [["a", 1]]).splitlines()[1] == "|---|---:|"


def test_typed_decode_rows(smoke_run: tuple[Path, list[dict[str, Any]]]) -> None:
    out, rows = smoke_run
    typed = {r["serializer"]: r for r in rows if r["via"] == codecs.VIA_TYPED}
    assert "typed:dataclass" in typed
    for row in typed.values():
        assert row["size_class"] == codecs.TYPED_SIZE_CLASS
        assert row["decode_us"] > 0
        assert row["encode_us"] > 0
    assert "## Typed decode" in (out / "codecs.md").read_text()
