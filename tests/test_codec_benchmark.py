"""The codec benchmark runs end to end (in its tiny smoke mode) and writes rows of the documented shape."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks import codecs
from benchmarks._common import format_table, markdown_table, time_call

WORDS = ["cache", "page", "value", "entry", "dictionary", "frame", "header", "record", "tweet", "plugin", "event"]


def _records(kind: str, count: int, seed: int) -> list[dict[str, Any]]:
    """Record-shaped values for the corpus section (the real corpora are not in the repository)."""
    rng = random.Random(seed)
    if kind == "small":  # ~100 B, like a CI server's job list
        return [
            {"name": f"job-{rng.choice(WORDS)}-{i}", "url": f"https://ci.example.org/job/{i}/",
             "color": rng.choice(["blue", "red", "disabled"])}
            for i in range(count)
        ]  # fmt: skip
    words = {"medium": 40, "large": 300}[kind]
    return [
        {"id": 10_000 + i, "title": " ".join(rng.choices(WORDS, k=5)), "tags": rng.sample(WORDS, 3),
         "body": " ".join(rng.choices(WORDS, k=words)), "user": {"id": rng.randrange(50), "lang": "en"}}
        for i in range(count)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("corpora")
    for kind in ("small", "medium", "large"):
        lines = [orjson.dumps(r) for r in _records(kind, 150, seed=len(kind))]
        (directory / f"{kind}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return directory


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, corpora: Path) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("codecs")
    json_path = out / "rows.json"
    assert codecs.main(["--smoke", "--out-dir", str(out), "--json", str(json_path), "--corpora", str(corpora)]) == 0
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


def test_corpus_split_keeps_training_records_out_of_the_measured_half() -> None:
    records = [b'{"a":%d}' % i for i in range(40)]
    records[1], records[7] = records[0], records[2]  # two odd records equal to training ones
    split = codecs.split_records(records)
    assert split.training == records[0::2]
    assert not set(split.training) & set(split.held_out)
    assert split.held_out
    assert split.dropped == 2
    assert len(split.held_out) == 18
    assert all(r in records[1::2] for r in split.held_out)


def test_corpus_measured_on_the_held_out_half(corpora: Path) -> None:
    mode = codecs.MODES["smoke"]
    corpus = next(c for c in codecs.load_corpora(corpora) if c.name == "medium")
    rows, run = codecs.measure_corpus(corpus, mode)
    assert run.records == mode.corpus_records
    assert run.split.training == list(corpus.records[: run.records : 2])
    assert not set(run.split.training) & set(run.split.held_out)
    assert set(run.split.held_out) <= set(corpus.records[1 : run.records : 2])
    records = [r for r in rows if r["unit"] == "record"]
    pages = [r for r in rows if r["unit"] == "page"]
    assert {r["count"] for r in records} == {len(run.split.held_out)}
    assert {r["count"] for r in pages} == {len(run.split.held_out) // codecs.PAGE_RECORDS}
    assert {r["raw_bytes"] for r in records} == {sum(map(len, run.split.held_out))}
    assert {r["training_records"] for r in rows} == {len(run.split.training)}


def test_corpus_rows_present(smoke_run: tuple[Path, list[dict[str, Any]]], corpora: Path) -> None:
    out, rows = smoke_run
    corpus_rows = [r for r in rows if r.get("section") == codecs.SECTION_CORPUS]
    # smoke mode: the corpora with the smallest and the largest records, not the one between
    assert {r["corpus"] for r in corpus_rows} == {"small", "large"}
    compressions = {"none", "zstd-1", "zstd-3", "zstd-3-dict", "zstd-3-dict-trained"}
    for corpus in ("small", "large"):
        for unit in codecs.UNITS:
            found = {r["compression"]: r for r in corpus_rows if (r["corpus"], r["unit"]) == (corpus, unit)}
            assert set(found) == compressions, (corpus, unit)
            for row in found.values():
                assert row["size_class"] == f"{corpus}/{unit}"
                assert row["ratio_p10"] <= row["ratio_median"] <= row["ratio_p90"]
                assert row["count"] >= 1
                assert row["training_records"] == (codecs.MODES["smoke"].corpus_records or 0) // 2
            assert found["none"]["ratio"] == 1.0
            assert found["zstd-3-dict"]["dictionary_id"] != found["zstd-3-dict-trained"]["dictionary_id"]
    by = {(r["corpus"], r["unit"], r["compression"]): r for r in corpus_rows}
    # ~100 B records: the default codec stores them uncompressed behind its header; the dictionary compresses them
    assert by[("small", "record", "zstd-1")]["ratio"] > 1
    assert by[("small", "record", "zstd-3-dict")]["ratio"] < 1
    md = (out / "codecs.md").read_text()
    assert "## Public JSON corpora" in md
    assert "zstd-3 + dict (raw)" in md


def test_corpus_section_without_corpora(tmp_path: Path) -> None:
    rows, runs = codecs.run_corpora(None, codecs.MODES["smoke"], progress=False)
    assert (rows, runs) == ([], [])
    lines = codecs.corpus_markdown([], [], codecs.MODES["smoke"], tmp_path)
    assert any("Not measured" in line for line in lines)
