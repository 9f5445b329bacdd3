"""Codec benchmark: stored size and encode/decode time per size class x serializer x compression.

Run ``python -m benchmarks.codecs [--quick] [--json PATH]``. Prints a table and writes
``benchmarks/results/codecs.{md,json,png}``. ``--quick`` uses fewer and shorter repeats (well under a minute on two
cores); without it the repeats are longer and more of them.

* ratio = stored bytes / the value's raw orjson bytes (so every serializer is compared with the same base).
* encode = serialize + compress; decode = decompress + parse; medians over repeats (see ``benchmarks._common``).
* orjson + zstd rows go through the real :class:`cachelayer.Codec` (its 26-byte header counts, its reused
  compressor objects are what is measured); ``Codec()`` is the library default and its rows are marked
  ``"default": true`` with ``passthrough_us`` (decompress without parsing, as a cache serving stored bytes does).
  Every other combination is measured directly with reused compressor objects where the library offers them.
* floor rows: orjson dumps/loads alone (the orjson + none row) and zstd-1 compress/decompress alone.
* typed rows (medium class only): the page's 20 items as ``list[Item]``, ``Item`` a dataclass (msgspec) or a
  pydantic model (pydantic's TypeAdapter), through the library's own ``ValueType`` (what ``@cached`` builds from a
  ``-> list[Item]`` annotation); encode includes its read-back check, decode is validation into the type. Each is
  also timed in alternating rounds against ``orjson.loads`` of the same bytes (the untyped hit's parse).
* corpus rows (``"section": "corpus"``): public JSON corpora no one here wrote (benchmarks/corpora/README.md; the
  records are not in the repository: ``python -m benchmarks.corpora.extract`` writes them to ``var/corpora``, or
  ``--corpora DIR``). Each corpus is split by index, even records train a dictionary, odd ones are measured, one
  at a time and as 20-record pages, through ``cachelayer.Codec`` without a dictionary and with the one dictionary
  in both its forms. ``raw_bytes``/``stored_bytes`` are totals over the held-out set, so ``ratio`` is the total
  ratio; ``ratio_p10``/``ratio_median``/``ratio_p90`` are over the per-value ratios; times are per value.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack
import orjson
import zstandard

from benchmarks import _items
from benchmarks._common import (
    RESULTS_DIR,
    Comparison,
    compare,
    environment,
    format_table,
    markdown_table,
    time_call,
    write_json,
    write_text,
)
from cachelayer import Codec, DictionaryRegistry, OrjsonSerializer, train_dictionary
from cachelayer._dictionaries import RAW_CONTENT_MARK
from cachelayer._typed import ValueType
from service.demo_data import SIZE_CLASSES, TRAINING_SEED_BASE, dictionary_training_samples

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], Any]

#: The seed of the measured values; dictionary training samples come from seeds >= TRAINING_SEED_BASE.
VALUE_SEED: Final = 0
DICTIONARY_SIZE: Final = 32 * 1024
VIA_CODEC: Final = "cachelayer.Codec"
VIA_DIRECT: Final = "direct"
VIA_TYPED: Final = "cachelayer ValueType"
TYPED_SIZE_CLASS: Final = "medium"
ROW_KEYS: Final = (
    "serializer",
    "compression",
    "size_class",
    "raw_bytes",
    "stored_bytes",
    "ratio",
    "encode_us",
    "decode_us",
)

# Targets: (description, measured-value function name, limit). Evaluated in ``evaluate_targets``.
TARGET_MEDIUM_DEFAULT_RATIO: Final = 0.37
TARGET_MEDIUM_DICT_RATIO: Final = 0.28
TARGET_SMALL_DICT_RATIO: Final = 0.32
TARGET_DECODE_VS_LOADS: Final = 1.6
TARGET_DECOMPRESS_VS_LOADS: Final = 0.35


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    repeats: int
    min_time: float
    training_samples: int
    size_classes: tuple[str, ...]
    json_on_large: bool
    plot: bool
    corpora: int | None = None  # how many public corpora (the smallest and largest records first); None: all
    corpus_records: int | None = None  # the first N records of each corpus, before the split; None: all


MODES: Final = {
    "full": Mode("full", 15, 0.02, 2000, tuple(SIZE_CLASSES), True, True),
    "quick": Mode("quick", 5, 0.004, 2000, tuple(SIZE_CLASSES), True, True, corpora=2, corpus_records=200),
    # For the test suite: seconds, not minutes; the numbers mean little.
    "smoke": Mode("smoke", 1, 0.0005, 600, ("small", "medium"), False, False, corpora=2, corpus_records=120),
}


@dataclass(frozen=True, slots=True)
class Combo:
    serializer: str
    compression: str
    via: str
    encode: Encoder
    decode: Decoder
    passthrough: Callable[[bytes], object] | None = None
    default: bool = False
    floor: str | None = None
    takes_serialized: bool = False  # encode takes the orjson bytes rather than the value (the zstd-alone floor)


# -- serializers and compressors ---------------------------------------------------------------------------------


def _json_dumps(value: Any) -> bytes:
    # Compact and UTF-8 like orjson, so sizes compare fairly (the default ensure_ascii=True triples CJK text).
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _msgpack_dumps(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _msgpack_loads(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


SERIALIZERS: Final[dict[str, tuple[Encoder, Decoder]]] = {
    "json": (_json_dumps, json.loads),
    "orjson": (orjson.dumps, orjson.loads),
    "msgpack": (_msgpack_dumps, _msgpack_loads),
}

Compressor = tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]


def _identity(data: bytes) -> bytes:
    return data


def _zlib6(data: bytes) -> bytes:
    return zlib.compress(data, 6)


def compressors(dictionary: Dictionary) -> dict[str, Compressor]:
    """The direct compressors, by name; optional libraries (lz4, brotli) only when importable."""
    registry, dict_id = dictionary.registry, dictionary.dict_id
    plain = zstandard.ZstdDecompressor()
    found: dict[str, Compressor] = {
        "none": (_identity, _identity),
        "zlib-6": (_zlib6, zlib.decompress),
        "zstd-1": (zstandard.ZstdCompressor(level=1, write_checksum=True).compress, plain.decompress),
        "zstd-3": (zstandard.ZstdCompressor(level=3, write_checksum=True).compress, plain.decompress),
        # raw content (what train_dictionary returns and browsers load), and zstd's trained form of the same
        # training for comparison (what cachelayer wrote before 2026-12-05: smaller on small values, not servable)
        "zstd-3-dict": (registry.compressor(dict_id, 3).compress, registry.decompressor(dict_id).decompress),
        "zstd-3-dict-trained": (
            registry.compressor(dictionary.trained_id, 3).compress,
            registry.decompressor(dictionary.trained_id).decompress,
        ),
    }
    try:
        import lz4.frame  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        found["lz4"] = (lz4.frame.compress, lz4.frame.decompress)
    try:
        import brotli  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:

        def brotli1(data: bytes) -> bytes:
            compressed: bytes = brotli.compress(data, quality=1)
            return compressed

        found["brotli-1"] = (brotli1, brotli.decompress)
    return found


def _chain(dumps: Encoder, compress: Callable[[bytes], bytes]) -> Encoder:
    def encode(value: Any) -> bytes:
        return compress(dumps(value))

    return encode


def _unchain(decompress: Callable[[bytes], bytes], loads: Decoder) -> Decoder:
    def decode(data: bytes) -> Any:
        return loads(decompress(data))

    return decode


def _passthrough(codec: Codec) -> Callable[[bytes], object]:
    def passthrough(data: bytes) -> object:
        return codec.serialized(codec.read_frame(data))

    return passthrough


def combos(dictionaries: dict[str, Dictionary]) -> list[Combo]:
    """Every serializer x compression combination, plus the zstd-alone floor."""
    json_dict = dictionaries["json"]
    codecs = {
        "zstd-1": (Codec(), True),
        "zstd-3": (Codec(level=3), False),
        "zstd-3-dict": (Codec(dictionaries=json_dict.registry, dictionary_id=json_dict.dict_id, level=3), False),
    }
    result: list[Combo] = []
    comps = {name: compressors(dictionary) for name, dictionary in dictionaries.items()}
    for ser, (dumps, loads) in SERIALIZERS.items():
        for comp, (compress, decompress) in comps["msgpack" if ser == "msgpack" else "json"].items():
            if ser == "orjson" and comp in codecs:
                codec, is_default = codecs[comp]
                result.append(
                    Combo(ser, comp, VIA_CODEC, codec.encode, codec.decode, _passthrough(codec), default=is_default)
                )
            else:
                floor = "orjson dumps/loads alone" if (ser, comp) == ("orjson", "none") else None
                result.append(
                    Combo(ser, comp, VIA_DIRECT, _chain(dumps, compress), _unchain(decompress, loads), floor=floor)
                )
    compress, decompress = comps["json"]["zstd-1"]
    result.append(
        Combo(
            "none",
            "zstd-1",
            VIA_DIRECT,
            compress,
            decompress,
            floor="zstd-1 compress/decompress alone (on the orjson bytes)",
            takes_serialized=True,
        )
    )
    return result


# -- measuring ---------------------------------------------------------------------------------------------------


def measure(combo: Combo, size_class: str, value: Any, raw: bytes, mode: Mode) -> dict[str, Any]:
    """One result row."""
    subject = raw if combo.takes_serialized else value
    stored = combo.encode(subject)
    if combo.decode(stored) != subject:
        raise AssertionError(f"{combo.serializer}+{combo.compression} does not round-trip the {size_class} value")
    encode = time_call(lambda: combo.encode(subject), repeats=mode.repeats, min_time=mode.min_time)
    decode = time_call(lambda: combo.decode(stored), repeats=mode.repeats, min_time=mode.min_time)
    row: dict[str, Any] = {
        "serializer": combo.serializer,
        "compression": combo.compression,
        "size_class": size_class,
        "raw_bytes": len(raw),
        "stored_bytes": len(stored),
        "ratio": round(len(stored) / len(raw), 4),
        "encode_us": round(encode.median_us, 3),
        "decode_us": round(decode.median_us, 3),
        "via": combo.via,
    }
    if combo.passthrough is not None:
        passthrough = combo.passthrough
        timing = time_call(lambda: passthrough(stored), repeats=mode.repeats, min_time=mode.min_time)
        row["passthrough_us"] = round(timing.median_us, 3)
    if combo.default:
        row["default"] = True
    if combo.floor is not None:
        row["floor"] = combo.floor
    return row


@dataclass(frozen=True, slots=True)
class Dictionary:
    """A trained dictionary in its registry, and how it was trained."""

    registry: DictionaryRegistry
    dict_id: int  # raw content
    trained_id: int  # zstd's trained form of the same training
    samples: int
    sample_bytes: int
    train_seconds: float


def build_dictionary(samples: Sequence[bytes]) -> Dictionary:
    start = time.perf_counter()
    trained = train_dictionary(samples, size=DICTIONARY_SIZE, form="trained")
    elapsed = time.perf_counter() - start
    registry = DictionaryRegistry()
    trained_id = registry.add(trained)
    dict_id = registry.add(RAW_CONTENT_MARK + trained[4:])  # what train_dictionary(samples) returns: one training
    return Dictionary(registry, dict_id, trained_id, len(samples), sum(map(len, samples)), elapsed)


def build_dictionaries(n_samples: int) -> dict[str, Dictionary]:
    """One dictionary per serializer: JSON bytes (orjson and stdlib json share it) and msgpack bytes of the same
    training values, so the msgpack rows are not measured with a dictionary of the wrong format."""
    samples = dictionary_training_samples(n_samples, seed=TRAINING_SEED_BASE)
    return {
        "json": build_dictionary(samples),
        "msgpack": build_dictionary([_msgpack_dumps(orjson.loads(sample)) for sample in samples]),
    }


def run(mode: Mode, *, progress: bool = True) -> tuple[list[dict[str, Any]], dict[str, Dictionary]]:
    dictionaries = build_dictionaries(mode.training_samples)
    all_combos = combos(dictionaries)
    rows: list[dict[str, Any]] = []
    for size_class in mode.size_classes:
        value = SIZE_CLASSES[size_class](VALUE_SEED)
        raw = orjson.dumps(value)
        for combo in all_combos:
            if combo.serializer == "json" and size_class == "large" and not mode.json_on_large:
                continue
            rows.append(measure(combo, size_class, value, raw, mode))
        if progress:
            print(f"  measured {size_class} ({len(raw)} B)", file=sys.stderr, flush=True)
    return rows, dictionaries


# -- typed values ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TypedRow:
    kind: str
    engine: str
    vs_loads: Comparison


def typed_rows(mode: Mode) -> tuple[list[dict[str, Any]], list[TypedRow]]:
    """Rows for decoding the medium page's items into ``list[Item]`` (dataclass; pydantic model when installed)."""
    kinds = ["dataclass"] + (["pydantic"] if _items.PItem is not None else [])
    rows: list[dict[str, Any]] = []
    paired: list[TypedRow] = []
    for kind in kinds:
        item_type = _items.Item if kind == "dataclass" else _items.PItem
        value = _items.page_items(kind, VALUE_SEED)
        raw = orjson.dumps(_items.page_items("dict", VALUE_SEED))
        value_type: ValueType[Any] = ValueType(list[item_type], OrjsonSerializer(), owner=f"benchmarks.codecs.{kind}")  # type: ignore[valid-type]
        stored = value_type.dumps(value)
        if value_type.loads(stored) != value:
            raise AssertionError(f"list[Item] ({kind}) does not round-trip")
        encode = time_call(functools.partial(value_type.dumps, value), repeats=mode.repeats, min_time=mode.min_time)
        decode = time_call(functools.partial(value_type.loads, stored), repeats=mode.repeats, min_time=mode.min_time)
        rows.append(
            {
                "serializer": f"typed:{kind}",
                "compression": "none",
                "size_class": TYPED_SIZE_CLASS,
                "raw_bytes": len(raw),
                "stored_bytes": len(stored),
                "ratio": round(len(stored) / len(raw), 4),
                "encode_us": round(encode.median_us, 3),
                "decode_us": round(decode.median_us, 3),
                "via": VIA_TYPED,
                "floor": f"list[Item], {value_type.engine}",
            }
        )
        typed_decode, plain_decode = (
            functools.partial(value_type.loads, stored),
            functools.partial(orjson.loads, stored),
        )
        comparison = compare(typed_decode, plain_decode, repeats=mode.repeats * 3, min_time=mode.min_time)
        paired.append(TypedRow(kind, value_type.engine, comparison))
    return rows, paired


def _typed_note(paired: Sequence[TypedRow]) -> list[str]:
    if not paired:
        return []
    lines = [
        "",
        "## Typed decode (the medium page's items as `list[Item]`)",
        "",
        "A hit of a function annotated `-> list[Item]` validates the stored JSON into the type instead of "
        "`orjson.loads`; timed in alternating rounds against `orjson.loads` of the same bytes:",
        "",
    ]
    rows = [
        [f"list[Item], Item a {t.kind}", t.engine, round(t.vs_loads.a.median_us, 2), round(t.vs_loads.b.median_us, 2),
         round(t.vs_loads.ratio, 3)]
        for t in paired
    ]  # fmt: skip
    lines.append(markdown_table(["value", "decoder", "typed decode us", "orjson.loads us", "x orjson.loads"], rows))
    return lines


# -- public corpora ----------------------------------------------------------------------------------------------

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
CORPORA_ENV: Final = "CACHELAYER_CORPORA"
#: Where the corpora are looked for when neither ``--corpora`` nor $CACHELAYER_CORPORA names a directory: what
#: ``python -m benchmarks.corpora.extract`` writes (git-ignored), then the steering repository's shared/ beside
#: the clone (where the project's data files from public repositories may be kept).
CORPUS_DIRS: Final = (REPO_ROOT / "var" / "corpora", REPO_ROOT.parent / "shared" / "corpora")
PAGE_RECORDS: Final = 20
CORPUS_LEVEL: Final = 3  # train_dictionary's default level, and the level the dictionary codecs write with
SECTION_CORPUS: Final = "corpus"
UNITS: Final = ("record", "page")


@dataclass(frozen=True, slots=True)
class Corpus:
    """One public corpus: its records as stored in its JSON Lines file (compact JSON, one per line)."""

    name: str
    records: tuple[bytes, ...]
    sha256: str  # of the file

    @property
    def mean_bytes(self) -> float:
        return sum(map(len, self.records)) / max(len(self.records), 1)


def corpora_dir(explicit: Path | None) -> Path | None:
    """The directory to read corpora from: ``explicit``, else $CACHELAYER_CORPORA, else the first of
    :data:`CORPUS_DIRS` holding a ``*.jsonl`` file; None when there is none."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(CORPORA_ENV)
    if from_env:
        return Path(from_env)
    return next((d for d in CORPUS_DIRS if any(d.glob("*.jsonl"))), None)


def load_corpora(directory: Path) -> list[Corpus]:
    """Every ``*.jsonl`` file of ``directory``, ordered by mean record size (smallest first)."""
    found: list[Corpus] = []
    for path in sorted(directory.glob("*.jsonl")):
        data = path.read_bytes()
        records = tuple(line for line in data.splitlines() if line.strip())
        if records:
            found.append(Corpus(path.stem, records, hashlib.sha256(data).hexdigest()))
    return sorted(found, key=lambda c: c.mean_bytes)


def select_corpora(corpora: Sequence[Corpus], mode: Mode) -> list[Corpus]:
    """All of them, or (quick and smoke modes) the ones with the smallest and the largest records."""
    if mode.corpora is None or len(corpora) <= mode.corpora:
        return list(corpora)
    half = mode.corpora // 2
    return [*corpora[: mode.corpora - half], *corpora[len(corpora) - half :]]


@dataclass(frozen=True, slots=True)
class Split:
    training: list[bytes]
    held_out: list[bytes]
    dropped: int  # odd-index records equal to a training record, left out of the held-out half


def split_records(records: Sequence[bytes]) -> Split:
    """Even indexes train, odd indexes are measured (as ``cachelayer dictionary train`` splits); an odd record
    whose bytes equal a training record's is dropped, so that no measured value was ever seen in training."""
    training = list(records[0::2])
    seen = set(training)
    held_out = [r for r in records[1::2] if r not in seen]
    return Split(training, held_out, len(records[1::2]) - len(held_out))


def _pages(values: Sequence[Any]) -> list[list[Any]]:
    """Consecutive held-out records, PAGE_RECORDS at a time; a short last page is left out."""
    return [list(values[i : i + PAGE_RECORDS]) for i in range(0, len(values) - PAGE_RECORDS + 1, PAGE_RECORDS)]


@dataclass(frozen=True, slots=True)
class CorpusVariant:
    compression: str
    via: str
    note: str
    encode: Encoder
    decode: Decoder


def corpus_variants(dictionary: Dictionary) -> list[CorpusVariant]:
    """The stores compared on a corpus: JSON alone, cachelayer's codec without a dictionary (its default, and at
    the dictionary's level), and with the corpus's dictionary as raw content and in zstd's trained form."""
    registry = dictionary.registry
    codecs = [
        ("zstd-1", Codec(), "Codec() default: level 1, no dictionary, values under 256 B uncompressed"),
        ("zstd-3", Codec(level=CORPUS_LEVEL), "level 3, no dictionary"),
        ("zstd-3-dict", Codec(dictionaries=registry, dictionary_id=dictionary.dict_id, level=CORPUS_LEVEL),
         "level 3, dictionary as raw content (what train_dictionary returns; dcz-servable)"),
        ("zstd-3-dict-trained",
         Codec(dictionaries=registry, dictionary_id=dictionary.trained_id, level=CORPUS_LEVEL),
         "level 3, zstd's trained form of the same training (not servable to browsers)"),
    ]  # fmt: skip
    variants = [CorpusVariant("none", VIA_DIRECT, "orjson dumps/loads alone", orjson.dumps, orjson.loads)]
    variants += [CorpusVariant(name, VIA_CODEC, note, codec.encode, codec.decode) for name, codec, note in codecs]
    return variants


def _per_value_us(fn: Callable[[Any], object], subjects: Sequence[Any], mode: Mode) -> float:
    def each() -> None:
        for subject in subjects:
            fn(subject)

    return time_call(each, repeats=mode.repeats, min_time=mode.min_time).median_us / len(subjects)


def _spread(ratios: Sequence[float]) -> tuple[float, float, float]:
    """p10, median, p90 (inclusive quantiles) of per-value ratios."""
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    deciles = statistics.quantiles(ratios, n=10, method="inclusive")
    return deciles[0], statistics.median(ratios), deciles[-1]


@dataclass(frozen=True, slots=True)
class CorpusRun:
    corpus: Corpus
    records: int  # used (after the mode's cap)
    split: Split
    dictionary: Dictionary
    dictionary_bytes: int


def measure_corpus(corpus: Corpus, mode: Mode) -> tuple[list[dict[str, Any]], CorpusRun]:
    """Train on the corpus's even records, measure its odd ones; one row per unit x variant."""
    records = corpus.records if mode.corpus_records is None else corpus.records[: mode.corpus_records]
    split = split_records(records)
    if set(split.training) & set(split.held_out):
        raise AssertionError(f"{corpus.name}: a held-out record is in the training set")
    dictionary = build_dictionary(split.training)
    held_values = [orjson.loads(r) for r in split.held_out]
    units: dict[str, list[Any]] = {"record": held_values, "page": _pages(held_values)}
    rows: list[dict[str, Any]] = []
    for unit, values in units.items():
        if not values:
            continue
        raw = [orjson.dumps(v) for v in values]
        for variant in corpus_variants(dictionary):
            stored = [variant.encode(v) for v in values]
            for value, data in zip(values, stored, strict=True):
                if variant.decode(data) != value:
                    raise AssertionError(f"{corpus.name}: {variant.compression} does not round-trip a {unit}")
            p10, median, p90 = _spread([len(s) / len(r) for s, r in zip(stored, raw, strict=True)])
            row: dict[str, Any] = {
                "serializer": "orjson",
                "compression": variant.compression,
                "size_class": f"{corpus.name}/{unit}",
                "raw_bytes": sum(map(len, raw)),
                "stored_bytes": sum(map(len, stored)),
                "ratio": round(sum(map(len, stored)) / sum(map(len, raw)), 4),
                "encode_us": round(_per_value_us(variant.encode, values, mode), 3),
                "decode_us": round(_per_value_us(variant.decode, stored, mode), 3),
                "via": variant.via,
                "section": SECTION_CORPUS,
                "corpus": corpus.name,
                "unit": unit,
                "count": len(values),
                "json_bytes_median": round(statistics.median(map(len, raw))),
                "ratio_p10": round(p10, 4),
                "ratio_median": round(median, 4),
                "ratio_p90": round(p90, 4),
                "training_records": len(split.training),
                "note": variant.note,
            }
            if variant.compression.startswith("zstd-3-dict"):
                trained = variant.compression.endswith("trained")
                row["dictionary_id"] = dictionary.trained_id if trained else dictionary.dict_id
                row["dictionary_bytes"] = len(dictionary.registry.data(row["dictionary_id"]))
            rows.append(row)
    size = len(dictionary.registry.data(dictionary.dict_id))
    return rows, CorpusRun(corpus, len(records), split, dictionary, size)


def run_corpora(
    directory: Path | None, mode: Mode, *, progress: bool = True
) -> tuple[list[dict[str, Any]], list[CorpusRun]]:
    if directory is None:
        return [], []
    rows: list[dict[str, Any]] = []
    runs: list[CorpusRun] = []
    for corpus in select_corpora(load_corpora(directory), mode):
        corpus_rows, corpus_run = measure_corpus(corpus, mode)
        rows += corpus_rows
        runs.append(corpus_run)
        if progress:
            print(f"  measured corpus {corpus.name} ({corpus_run.records} records, "
                  f"{corpus.mean_bytes:.0f} B mean)", file=sys.stderr, flush=True)  # fmt: skip
    return rows, runs


CORPUS_SUMMARY_HEADERS: Final = (
    "corpus",
    "unit",
    "held-out",
    "JSON B p50",
    "Codec() zstd-1",
    "zstd-3",
    "zstd-3 + dict (raw)",
    "zstd-3 + dict (trained form)",
)
CORPUS_TIME_HEADERS: Final = (
    "corpus",
    "unit",
    "compression",
    "ratio",
    "p10",
    "p50",
    "p90",
    "encode us",
    "decode us",
)


def corpus_summary(rows: Sequence[dict[str, Any]]) -> list[list[object]]:
    """One line per corpus x unit: the total ratio of each store (and the p10-p90 of per-value ratios)."""
    lines: list[list[object]] = []
    keys = list(dict.fromkeys((r["corpus"], r["unit"]) for r in rows if r.get("section") == SECTION_CORPUS))
    for corpus, unit in keys:
        by = {r["compression"]: r for r in rows if r.get("corpus") == corpus and r["unit"] == unit}
        first = next(iter(by.values()))
        cells: list[object] = [corpus, unit, first["count"], first["json_bytes_median"]]
        for compression in ("zstd-1", "zstd-3", "zstd-3-dict", "zstd-3-dict-trained"):
            r = by[compression]
            cells.append(f"{r['ratio']:.3f} ({r['ratio_p10']:.2f}-{r['ratio_p90']:.2f})")
        lines.append(cells)
    return lines


def corpus_rows_table(rows: Sequence[dict[str, Any]]) -> list[list[object]]:
    return [
        [r["corpus"], r["unit"], r["compression"], r["ratio"], r["ratio_p10"], r["ratio_median"], r["ratio_p90"],
         r["encode_us"], r["decode_us"]]
        for r in rows
        if r.get("section") == SECTION_CORPUS
    ]  # fmt: skip


def _corpus_ranges(rows: Sequence[dict[str, Any]], unit: str, compression: str) -> str:
    ratios = [float(r["ratio"]) for r in rows if r.get("unit") == unit and r["compression"] == compression]
    return f"{min(ratios):.2f}-{max(ratios):.2f} x" if ratios else "-"


def corpus_markdown(
    rows: Sequence[dict[str, Any]], runs: Sequence[CorpusRun], mode: Mode, directory: Path | None
) -> list[str]:
    lines = ["", "## Public JSON corpora: dictionary trained on one half, measured on the other", ""]
    if not runs:
        where = directory if directory is not None else " or ".join(str(d) for d in CORPUS_DIRS)
        return [*lines, f"Not measured: no `*.jsonl` corpora in {where} (see benchmarks/corpora/README.md)."]
    corpus_rows = [r for r in rows if r.get("section") == SECTION_CORPUS]
    files = [
        [r.corpus.name, r.records, len(r.split.training), len(r.split.held_out), round(r.corpus.mean_bytes),
         r.dictionary_bytes, r.corpus.sha256[:16]]
        for r in runs
    ]  # fmt: skip
    limit = "" if mode.corpus_records is None else f"; in `{mode.name}` mode the first {mode.corpus_records} records"
    chosen = "" if mode.corpora is None else f" (`{mode.name}` mode: the {mode.corpora} with the smallest and largest)"
    lines += [
        f"Records no one here wrote{chosen}: benchmarks/corpora/README.md names each corpus's source, commit and "
        "licence; `python -m benchmarks.corpora.extract` makes the files (they are not in the repository).",
        "",
        "- Split: even-index records train, odd-index records are measured (an odd record equal to a training "
        f"record would be dropped){limit}. A page is {PAGE_RECORDS} consecutive held-out records as one JSON "
        "array (a short last page is left out).",
        f"- Dictionary: one per corpus, `cachelayer.train_dictionary` (at most {DICTIONARY_SIZE // 1024} KiB, "
        f"level {CORPUS_LEVEL}: the library's defaults) on the training records, each one sample; the same "
        "dictionary serves records and pages. `raw`: the raw content the library writes (compression 3, what a "
        "browser holding the file decodes as dcz); `trained form`: zstd's own format of the same training "
        "(compression 2).",
        "- Stored through `cachelayer.Codec`, 26-byte header included: `Codec()` is the default (level 1, values "
        "under 256 B stored uncompressed); the dictionary codecs compress from 64 B. ratio = total stored bytes / "
        "total JSON (orjson) bytes of the held-out values; (p10-p90) of the per-value ratios; times are per "
        "value, medians over repeats.",
        "",
        f"Over these corpora: single records {_corpus_ranges(corpus_rows, 'record', 'zstd-3-dict')} of their JSON "
        f"with the raw dictionary, {_corpus_ranges(corpus_rows, 'record', 'zstd-1')} with `Codec()`; "
        f"{PAGE_RECORDS}-record pages {_corpus_ranges(corpus_rows, 'page', 'zstd-3-dict')} with it, "
        f"{_corpus_ranges(corpus_rows, 'page', 'zstd-1')} with `Codec()`.",
        "",
        markdown_table(
            ["corpus", "records used", "training", "held-out", "mean B", "dictionary B", "file SHA-256"], files
        ),
        "",
        "Total ratio stored / JSON (p10-p90 of the per-value ratios):",
        "",
        markdown_table(CORPUS_SUMMARY_HEADERS, corpus_summary(corpus_rows)),
        "",
        markdown_table(CORPUS_TIME_HEADERS, corpus_rows_table(corpus_rows)),
    ]
    return lines


# -- targets -----------------------------------------------------------------------------------------------------


def find_row(
    rows: Sequence[dict[str, Any]], size_class: str, serializer: str, compression: str
) -> dict[str, Any] | None:
    for row in rows:
        if (row["size_class"], row["serializer"], row["compression"]) == (size_class, serializer, compression):
            return row
    return None


@dataclass(frozen=True, slots=True)
class Target:
    description: str
    measured: float | None
    limit: float
    how: str = ""

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "NOT MEASURED"
        return "PASS" if self.measured <= self.limit else "FAIL"


@dataclass(frozen=True, slots=True)
class PairedTimings:
    """The medium class's read costs relative to orjson.loads, timed in alternating rounds (steadier than
    dividing two medians of the table, which were taken seconds apart on a possibly busy machine)."""

    decode_vs_loads: Comparison
    decompress_vs_loads: Comparison
    passthrough_vs_loads: Comparison


def paired_timings(mode: Mode, size_class: str = "medium") -> PairedTimings:
    value = SIZE_CLASSES[size_class](VALUE_SEED)
    raw = orjson.dumps(value)
    codec = Codec()
    stored = codec.encode(value)
    zframe = zstandard.ZstdCompressor(level=1, write_checksum=True).compress(raw)
    decompressor = zstandard.ZstdDecompressor()
    repeats, min_time = mode.repeats * 3, mode.min_time

    def loads() -> object:
        return orjson.loads(raw)

    return PairedTimings(
        compare(lambda: codec.decode(stored), loads, repeats=repeats, min_time=min_time),
        compare(lambda: decompressor.decompress(zframe), loads, repeats=repeats, min_time=min_time),
        compare(lambda: codec.serialized(codec.read_frame(stored)), loads, repeats=repeats, min_time=min_time),
    )


def evaluate_targets(rows: Sequence[dict[str, Any]], paired: PairedTimings | None) -> list[Target]:
    def ratio(size_class: str, compression: str) -> float | None:
        row = find_row(rows, size_class, "orjson", compression)
        return None if row is None else float(row["ratio"])

    def table_ratio(serializer: str, compression: str, key: str) -> str:
        numerator = find_row(rows, "medium", serializer, compression)
        loads = find_row(rows, "medium", "orjson", "none")
        if numerator is None or loads is None:
            return ""
        return f"; table medians give {float(numerator[key]) / float(loads['decode_us']):.3f}"

    def timed(comparison: Comparison | None, what: str, table: str) -> tuple[float | None, str]:
        if comparison is None:
            return None, ""
        how = (
            f"paired rounds: {what} {comparison.a.median_us:.2f} us vs orjson.loads {comparison.b.median_us:.2f} us"
            + table
        )
        return round(comparison.ratio, 3), how

    decode_ratio, decode_how = timed(
        None if paired is None else paired.decode_vs_loads, "decode", table_ratio("orjson", "zstd-1", "decode_us")
    )
    zstd_ratio, zstd_how = timed(
        None if paired is None else paired.decompress_vs_loads, "decompress", table_ratio("none", "zstd-1", "decode_us")
    )
    return [
        Target("medium: default codec stored / raw orjson", ratio("medium", "zstd-1"), TARGET_MEDIUM_DEFAULT_RATIO,
               "stored bytes incl. the 26-byte header"),
        Target("medium: zstd-3 + dictionary stored / raw orjson", ratio("medium", "zstd-3-dict"),
               TARGET_MEDIUM_DICT_RATIO, "stored bytes incl. the 26-byte header"),
        Target("small: zstd-3 + dictionary stored / raw orjson", ratio("small", "zstd-3-dict"),
               TARGET_SMALL_DICT_RATIO, "stored bytes incl. the 26-byte header"),
        Target("medium: default codec decode (decompress + parse) / orjson.loads alone", decode_ratio,
               TARGET_DECODE_VS_LOADS, decode_how),
        Target("medium: zstd decompress alone / orjson.loads alone", zstd_ratio, TARGET_DECOMPRESS_VS_LOADS,
               zstd_how),
    ]  # fmt: skip


# -- output ------------------------------------------------------------------------------------------------------

TABLE_HEADERS: Final = (
    "size",
    "serializer",
    "compression",
    "via",
    "raw B",
    "stored B",
    "ratio",
    "encode us",
    "decode us",
    "passthrough us",
    "note",
)


def _note(row: dict[str, Any]) -> str:
    if row.get("default"):
        return "default Codec()"
    return str(row.get("floor", ""))


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[object]]:
    return [
        [
            row["size_class"],
            row["serializer"],
            row["compression"],
            {VIA_CODEC: "Codec", VIA_TYPED: "ValueType"}.get(row["via"], "direct"),
            row["raw_bytes"],
            row["stored_bytes"],
            row["ratio"],
            row["encode_us"],
            row["decode_us"],
            row.get("passthrough_us"),
            _note(row),
        ]
        for row in rows
    ]


def _passthrough_note(paired: PairedTimings | None) -> list[str]:
    if paired is None:
        return []
    p = paired.passthrough_vs_loads
    d = paired.decompress_vs_loads
    return [
        "",
        f"For reference (not a target): the default codec's passthrough read of the medium value, "
        f"`codec.serialized(codec.read_frame(data))`, costs {p.a.median_us:.2f} us = {p.ratio:.3f} x orjson.loads "
        f"(zstd decompress alone: {d.a.median_us:.2f} us), timed the same paired way.",
    ]


def render_markdown(
    rows: Sequence[dict[str, Any]],
    targets: Sequence[Target],
    mode: Mode,
    dictionaries: dict[str, Dictionary],
    png: str | None,
    paired: PairedTimings | None,
    typed: Sequence[TypedRow] = (),
    corpus: Sequence[str] = (),
) -> str:
    dictionary, msgpack_dictionary = dictionaries["json"], dictionaries["msgpack"]
    env = environment(["orjson", "zstandard", "msgpack", "lz4", "brotli"])
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    command = "python -m benchmarks.codecs" + (" --quick" if mode.name == "quick" else "")
    lines = [
        "# Codec benchmark",
        "",
        f"Reproduce: `.venv/bin/python -m benchmarks.codecs{' --quick' if mode.name == 'quick' else ''}` "
        f"(`--quick`: {MODES['quick'].repeats} short repeats; without it: {MODES['full'].repeats} longer ones). "
        f"This file: mode `{mode.name}` ({mode.repeats} repeats of >= {mode.min_time * 1000:g} ms each).",
        "",
        f"Measured on Python {env['python']}, {env['platform']}, {env['cpus']} CPUs; {packages}. "
        "Timings on shared machines are noisy: compare rows of one run, not runs.",
        "",
        "## Targets",
        "",
        markdown_table(
            ["target", "measured", "limit", "verdict", "how"],
            [[t.description, t.measured, t.limit, t.verdict, t.how] for t in targets],
        ),
        *_passthrough_note(paired),
        *_typed_note(typed),
        "",
        "## Method",
        "",
        "- Values: `service.demo_data` size classes at seed 0 (small: one wallpaper detail; category_list; "
        "medium: a 20-item page; large: a 500-item page).",
        "- ratio = stored bytes / raw orjson bytes of the same value, for every serializer.",
        "- encode = serialize + compress; decode = decompress + parse (values checked to round-trip); "
        "times are medians over repeats, in microseconds per call, garbage collector off.",
        "- orjson + zstd rows (`via` Codec) are measured through `cachelayer.Codec`: the 26-byte header is counted "
        "and the compressor/decompressor reuse is the library's own. `Codec()` (orjson, zstd level 1) is the "
        "default; `passthrough us` is `codec.serialized(codec.read_frame(data))`: decompress without parsing.",
        "- Every other row is measured directly (no header), with reused `ZstdCompressor`/`ZstdDecompressor` "
        "objects for zstd and the module-level one-shot functions of zlib (level 6), lz4.frame (default level) "
        "and brotli (quality 1). stdlib json is `json.dumps(ensure_ascii=False, separators=(',', ':'))` + UTF-8; "
        "msgpack is `packb(use_bin_type=True)`.",
        f"- Dictionary: {DICTIONARY_SIZE // 1024} KiB, `cachelayer.train_dictionary` on {dictionary.samples} "
        f"samples ({dictionary.sample_bytes / 1e6:.1f} MB) from "
        f"`dictionary_training_samples(seed={TRAINING_SEED_BASE})`, a seed range disjoint from the measured "
        f"values; id {dictionary.dict_id}, trained in {dictionary.train_seconds:.2f} s. The msgpack rows use a "
        f"dictionary trained the same way on the msgpack bytes of the same values (id {msgpack_dictionary.dict_id}).",
        "- Floor rows: orjson + none is orjson dumps/loads alone; `none` + zstd-1 is compress/decompress alone "
        "on the orjson bytes.",
    ]
    if not mode.json_on_large:
        lines.append(f"- stdlib json is skipped on the large class in `{mode.name}` mode.")
    if png is not None:
        lines += ["", f"![ratio against decode time]({png})"]
    for size_class in mode.size_classes:
        class_rows = [r for r in rows if r["size_class"] == size_class]
        lines += ["", f"## {size_class} ({class_rows[0]['raw_bytes']} B of orjson)", ""]
        lines.append(markdown_table(TABLE_HEADERS[1:], [r[1:] for r in table_rows(class_rows)]))
    lines += [*corpus, "", f"Command: `{command}`"]
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"small": ("o", "tab:blue"), "category_list": ("s", "tab:orange"), "medium": ("^", "tab:green"),
              "large": ("D", "tab:red")}  # fmt: skip
    fig, ax = plt.subplots(figsize=(14, 8.5))
    for size_class, (marker, colour) in styles.items():
        class_rows = [
            r for r in rows if r["size_class"] == size_class and r["serializer"] != "none" and r["via"] != VIA_TYPED
        ]
        if not class_rows:
            continue
        xs = [r["decode_us"] for r in class_rows]
        ys = [r["ratio"] for r in class_rows]
        ax.scatter(xs, ys, marker=marker, color=colour, label=size_class, s=28, alpha=0.8)
        defaults = [r for r in class_rows if r.get("default")]
        ax.scatter([r["decode_us"] for r in defaults], [r["ratio"] for r in defaults], marker=marker, s=110,
                   facecolors="none", edgecolors="black", linewidths=1.2)  # fmt: skip
        for r, x, y in zip(class_rows, xs, ys, strict=True):
            label = f"{r['serializer']}/{r['compression']}" + (" *" if r.get("default") else "")
            ax.annotate(label, (x, y), fontsize=5.5, xytext=(3, 2), textcoords="offset points", color=colour)
    ax.set_xscale("log")
    ax.set_xlabel("decode (decompress + parse), us per call, log scale")
    ax.set_ylabel("stored / raw orjson bytes")
    ax.set_title("cachelayer codec benchmark: size against read cost (* = default Codec())")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="size class")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.codecs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats (well under a minute)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON to PATH")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where codecs.{md,json,png} go")
    parser.add_argument(
        "--corpora",
        type=Path,
        metavar="DIR",
        help=f"the public corpora, NAME.jsonl (default: ${CORPORA_ENV}, else var/corpora/, else ../shared/corpora/; "
        "see benchmarks/corpora/README.md)",
    )
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]

    started = time.perf_counter()
    rows, dictionaries = run(mode)
    paired = paired_timings(mode) if "medium" in mode.size_classes else None
    typed: list[TypedRow] = []
    if TYPED_SIZE_CLASS in mode.size_classes:
        extra, typed = typed_rows(mode)
        rows += extra
    targets = evaluate_targets(rows, paired)
    directory = corpora_dir(args.corpora)
    corpus_rows, corpus_runs = run_corpora(directory, mode)
    rows += corpus_rows

    print(format_table(TABLE_HEADERS, table_rows([r for r in rows if r.get("section") != SECTION_CORPUS])))
    print()
    for target in targets:
        print(f"{target.verdict:5} {target.description}: {target.measured} (limit {target.limit}) {target.how}")
    for t in typed:
        print(f"typed decode list[Item] ({t.kind}, {t.engine}): {t.vs_loads.a.median_us:.2f} us = "
              f"{t.vs_loads.ratio:.3f} x orjson.loads ({t.vs_loads.b.median_us:.2f} us)")  # fmt: skip
    if corpus_runs:
        print("\npublic corpora (held-out values), total ratio stored / JSON:")
        print(format_table(CORPUS_SUMMARY_HEADERS, corpus_summary(corpus_rows)))
    else:
        print(f"\npublic corpora: none found ({directory or 'see benchmarks/corpora/README.md'})", file=sys.stderr)

    out_dir: Path = args.out_dir
    png_name: str | None = None
    if mode.plot:
        plot(rows, out_dir / "codecs.png")
        png_name = "codecs.png"
    write_text(
        out_dir / "codecs.md",
        render_markdown(
            rows,
            targets,
            mode,
            dictionaries,
            png_name,
            paired,
            typed,
            corpus_markdown(rows, corpus_runs, mode, directory),
        ),
    )
    write_json(out_dir / "codecs.json", rows)
    if args.json is not None:
        write_json(args.json, rows)
    print(f"\nwrote {out_dir / 'codecs.md'} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
