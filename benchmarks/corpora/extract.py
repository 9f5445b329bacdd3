"""Extract the public JSON corpora of ``benchmarks.codecs`` from a git copy of simdjson's repository.

Run ``python -m benchmarks.corpora.extract GIT_DIR [--out DIR]``: GIT_DIR is a git directory (bare or not) of
https://github.com/simdjson/simdjson whose history holds commit :data:`COMMIT`. Every source file is read with
``git show COMMIT:PATH`` and checked against its git blob id before use, so the output is the same wherever it is
run. One JSON Lines file per corpus goes to DIR (default ``var/corpora``, which git ignores: these records are not
the project's, see README.md beside this file): one record per line, compact UTF-8 JSON as orjson writes it, keys
in the source's order, records in the source's order.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

#: The last commit of simdjson's repository that holds all of jsonexamples/ (the next one, 714f0ba, moved most
#: data files to simdjson/simdjson-data, which carries the same blobs but states no licence).
COMMIT: Final = "19c3b1315a2a6b8ab0a6b7335bb97269cbd0a448"
DEFAULT_OUT: Final = Path(__file__).resolve().parents[2] / "var" / "corpora"
MAX_RECORDS: Final = 2000

Extractor = Callable[[bytes], list[Any]]


def _key(name: str) -> Extractor:
    def extract(data: bytes) -> list[Any]:
        found: list[Any] = json.loads(data)[name]
        return found

    return extract


def _values_of(name: str | None) -> Extractor:
    def extract(data: bytes) -> list[Any]:
        document = json.loads(data)
        mapping: dict[str, Any] = document if name is None else document[name]
        return list(mapping.values())

    return extract


def _rows_as_objects(data: bytes) -> list[Any]:
    """An NDJSON file whose first line names the columns and every further line is one row (a JSON array)."""
    lines = [json.loads(line) for line in data.splitlines() if line.strip()]
    columns, rows = lines[0], lines[1:]
    return [dict(zip(columns, row, strict=True)) for row in rows]


@dataclass(frozen=True, slots=True)
class Source:
    name: str  # the corpus: NAME.jsonl
    path: str  # in the repository, at COMMIT
    blob: str  # its git blob id, checked
    how: str  # what a record is
    extract: Extractor


SOURCES: Final = (
    Source("apache_builds", "jsonexamples/apache_builds.json", "c4a4cf820e3cfec7ffc43d2245497f59348f1a15",
           "`jobs[]`: one Jenkins job (name, url, colour)", _key("jobs")),
    Source("citm_events", "jsonexamples/citm_catalog.json", "245fdbbedf478e0094ce25ad8f771c2b9031320c",
           "the values of `events{}`: one event of a ticketing catalogue", _values_of("events")),
    Source("amazon_cellphones", "jsonexamples/amazon_cellphones.ndjson", "9cbb6a071eaa2a10c24d9b4d1729dca501f2f72b",
           "one line after the first: a product row as an object keyed by the first line's column names",
           _rows_as_objects),
    Source("update_center", "jsonexamples/update-center.json", "f8cfc08544f912b5f02bb85febdc34d2e673eef4",
           "the values of `plugins{}`: one Jenkins plugin's metadata", _values_of("plugins")),
    Source("gsoc_2018", "jsonexamples/gsoc-2018.json", "fe316970217a39af76a8703c346ef048da1dd5fa",
           "the values of the top-level object: one Google Summer of Code 2018 project", _values_of(None)),
    Source("twitter", "jsonexamples/twitter.json", "fcb3fea12b3521b769bf26831df1c24213ac7151",
           "`statuses[]`: one tweet with its user, as the search API returned it", _key("statuses")),
)  # fmt: skip


def _git(git_dir: Path, *args: str) -> bytes:
    result = subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def extract(git_dir: Path, out: Path, sources: Sequence[Source] = SOURCES) -> list[tuple[Source, int, int]]:
    """Write one JSON Lines file per source; returns (source, records, bytes written) for each."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Source, int, int]] = []
    for source in sources:
        blob = _git(git_dir, "rev-parse", f"{COMMIT}:{source.path}").decode().strip()
        if blob != source.blob:
            raise SystemExit(f"{source.path} at {COMMIT} is blob {blob}, expected {source.blob}")
        records = source.extract(_git(git_dir, "cat-file", "blob", blob))[:MAX_RECORDS]
        lines = [orjson.dumps(record) for record in records]
        for line, record in zip(lines, records, strict=True):
            if orjson.loads(line) != record:  # e.g. an integer orjson cannot hold
                raise SystemExit(f"{source.name}: a record does not round-trip through orjson")
        data = b"".join(line + b"\n" for line in lines)
        (out / f"{source.name}.jsonl").write_bytes(data)
        written.append((source, len(records), len(data)))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.corpora.extract", description=__doc__.split("\n\n")[0])
    parser.add_argument("git_dir", type=Path, help=f"a git directory of simdjson/simdjson holding commit {COMMIT}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where NAME.jsonl go (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    for source, count, size in extract(args.git_dir, args.out):
        print(f"{source.name + '.jsonl':24} {count:5} records {size:9,} B  <- {source.path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
