"""A single flipped bit anywhere in a stored version 2 frame is refused, or reads back identical (issue 15).

Every read path is tried on every single-bit flip of whole frames (exhaustive, not sampled): ``decode``,
``serialized``, typed ``loads``, ``verified_body``, ``verified_zstd_frame`` and ``CacheEntry.value()/body()``.
The rule they must keep is exact: a flip in the expiry or recompute-time field (outside the CRC on purpose:
marking stale rewrites the expiry in place) leaves every path's result as it was; a flip anywhere else makes
every path refuse (``CodecError``, or ``None`` from ``verified_zstd_frame``: "not safe to pass through").
docs/value-format.md, "What the checksum protects", has the table of what catches each header field.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cachelayer._codec
from cachelayer import Codec, CodecError, DictionaryRegistry, train_dictionary
from cachelayer._codec import (
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    COMPRESSION_ZSTD_DICT,
    COMPRESSION_ZSTD_RAW_DICT,
    EXPIRES_OFFSET,
    HEADER_SIZE,
)
from cachelayer._entry import CacheEntry, Outcome
from cachelayer._serializers import serializer_by_name
from cachelayer._typed import ValueType
from tests._samples import sample

OFF_COMPRESSION: Final = 4
FRESHNESS_BITS: Final = range(EXPIRES_OFFSET * 8, 22 * 8)  # expires at (8 bytes), recompute time (4 bytes)
REFUSED: Final = "refused"


@dataclass
class Item:
    id: int
    title: str
    tags: list[str]
    size: list[int]
    likes: int
    url: str


@dataclass
class Case:
    label: str
    codec: Codec
    data: bytes
    value_type: ValueType[Any] | None = None


def _samples(seed: int, count: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [sample(rng, i) for i in range(count)]


def _items(seed: int, count: int) -> list[Item]:
    return [Item(**value) for value in _samples(seed, count)]


def _cases() -> list[Case]:
    trained = [orjson.dumps(value) for value in _samples(31, 300)]
    raw, legacy = train_dictionary(trained, size=4096), train_dictionary(trained, size=4096, form="trained")
    registry = DictionaryRegistry([raw, legacy])
    with_dictionary = Codec(dictionaries=registry, dictionary_id=DictionaryRegistry.id_of(raw))
    with_trained = Codec(dictionaries=registry, dictionary_id=DictionaryRegistry.id_of(legacy))
    page = {"page": _samples(32, 6)}
    json_items: ValueType[list[Item]] = ValueType(list[Item], serializer_by_name("orjson"), owner="test")
    msgpack_items: ValueType[list[Item]] = ValueType(list[Item], serializer_by_name("msgpack"), owner="test")
    uncompressed, zstd = Codec(compression="none"), Codec(min_size=64)
    msgpack_uncompressed, msgpack_zstd = Codec("msgpack", compression="none"), Codec("msgpack", min_size=64)
    return [
        Case("json, uncompressed", uncompressed, uncompressed.encode({"downloads": 1}, expires_at=1.7e9)),
        Case("json, zstd", zstd, zstd.encode(page, expires_at=1.7e9, recompute_time=0.25)),
        Case("json, zstd dictionary", with_dictionary, with_dictionary.encode(_samples(33, 1)[0], expires_at=1.7e9)),
        Case("json, zstd trained dictionary", with_trained, with_trained.encode(_samples(33, 1)[0], expires_at=1.7e9)),
        Case("msgpack, uncompressed", msgpack_uncompressed, msgpack_uncompressed.encode({"downloads": 1})),
        Case(
            "json, uncompressed, tagged",
            uncompressed,
            uncompressed.encode({"downloads": 1}, expires_at=1.7e9, tags=[("wallpaper:7", bytes(range(16)))]),
        ),
        Case(
            "json, zstd, tagged",
            zstd,
            zstd.encode(page, tags=[("list:_all", b"s" * 16), ("wallpaper:7", bytes(range(16, 32)))]),
        ),
        Case("msgpack, zstd", msgpack_zstd, msgpack_zstd.encode(page, expires_at=1.7e9)),
        Case(
            "typed json, uncompressed",
            uncompressed,
            uncompressed.encode_serialized(json_items.dumps(_items(34, 1))),
            json_items,
        ),
        Case(
            "typed msgpack, zstd",
            msgpack_zstd,
            msgpack_zstd.encode_serialized(msgpack_items.dumps(_items(35, 3))),
            msgpack_items,
        ),
    ]


CASES: Final = _cases()


def _paths(codec: Codec, value_type: ValueType[Any] | None) -> dict[str, Callable[[bytes], Any]]:
    loads = None if value_type is None else value_type.loads
    paths: dict[str, Callable[[bytes], Any]] = {
        "decode": codec.decode,
        "serialized": lambda data: bytes(codec.serialized(codec.read_frame(data))),
        "verified_body": lambda data: bytes(codec.verified_body(codec.read_frame(data))),
        "verified_zstd_frame": lambda data: codec.verified_zstd_frame(codec.read_frame(data)),
        "entry.value": lambda data: CacheEntry(codec, codec.read_frame(data), Outcome.HIT, loads=loads).value(),
        "entry.body": lambda data: CacheEntry(codec, codec.read_frame(data), Outcome.HIT).body(),
    }
    if value_type is not None:
        paths["typed loads"] = lambda data: value_type.loads(codec.serialized(codec.read_frame(data)))
    return paths


def _read(path: Callable[[bytes], Any], data: bytes) -> Any:
    """What a path makes of ``data``: its result, or REFUSED. Any other exception fails the test (totality)."""
    try:
        result = path(data)
    except CodecError:
        return REFUSED
    return REFUSED if result is None else result  # verified_zstd_frame's None: "serve the body instead"


def _flipped(data: bytes, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


def _check_flip(paths: dict[str, Callable[[bytes], Any]], data: bytes, bit: int) -> None:
    for name, path in paths.items():
        expected = _read(path, data) if bit in FRESHNESS_BITS else REFUSED
        got = _read(path, _flipped(data, bit))
        assert got == expected, f"{name}: bit {bit} (byte {bit // 8}) flipped gives {got!r:.120}, not {expected!r:.120}"


# --------------------------------------------------------------------------- exhaustive


@pytest.mark.parametrize("case", CASES, ids=[case.label for case in CASES])
def test_every_single_bit_flip_is_refused_or_harmless(case: Case) -> None:
    paths = _paths(case.codec, case.value_type)
    assert all(_read(path, case.data) is not REFUSED for name, path in paths.items() if "verified" not in name)
    for bit in range(len(case.data) * 8):
        _check_flip(paths, case.data, bit)


def test_the_cases_cover_every_compression_and_both_serializers() -> None:
    kinds = {(case.data[3], case.data[OFF_COMPRESSION], case.value_type is not None) for case in CASES}
    assert {(1, COMPRESSION_NONE, False), (1, COMPRESSION_ZSTD, False), (1, COMPRESSION_ZSTD_DICT, False)} <= kinds
    assert (1, COMPRESSION_ZSTD_RAW_DICT, False) in kinds
    assert {(2, COMPRESSION_NONE, False), (2, COMPRESSION_ZSTD, False), (1, COMPRESSION_NONE, True)} <= kinds
    assert (2, COMPRESSION_ZSTD, True) in kinds
    assert max(len(case.data) for case in CASES) < 1024  # keeps the enumeration fast


def test_the_compression_byte_flipped_1_to_0_is_caught_although_the_crc_holds() -> None:
    """The CRC covers the payload as stored, so it cannot see this; the zstd magic number can."""
    codec = Codec()
    data = codec.encode({"page": _samples(36, 5)})
    assert data[OFF_COMPRESSION] == COMPRESSION_ZSTD
    damaged = _flipped(data, OFF_COMPRESSION * 8)
    frame = codec.read_frame(damaged)
    assert (frame.compression, zlib.crc32(frame.payload)) == (COMPRESSION_NONE, frame.checksum)
    with pytest.raises(CodecError, match="compression id is damaged"):
        codec.verified_body(frame)


def test_the_compression_byte_flipped_0_to_1_is_not_passed_through_as_zstd() -> None:
    codec = Codec(compression="none")
    damaged = _flipped(codec.encode({"downloads": 1}), OFF_COMPRESSION * 8)
    frame = codec.read_frame(damaged)
    assert frame.compression == COMPRESSION_ZSTD
    assert codec.verified_zstd_frame(frame) is None
    with pytest.raises(CodecError):
        codec.verified_body(frame)


# --------------------------------------------------------------------------- properties

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=40,
)
CODECS: Final = [
    Codec(compression="none"),
    Codec(min_size=0),
    Codec("msgpack", compression="none"),
    Codec("msgpack", min_size=0),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON_VALUES, codec=st.sampled_from(CODECS), position=st.floats(0, 1, exclude_max=True), data=st.data())
def test_a_random_flip_of_a_random_value_is_refused_or_harmless(
    value: Any, codec: Codec, position: float, data: st.DataObject
) -> None:
    stored = codec.encode(value, expires_at=data.draw(st.floats(0, 4e9)), recompute_time=0.5)
    _check_flip(_paths(codec, None), stored, int(position * len(stored) * 8))


# --------------------------------------------------------------------------- the CRC, once per frame


class _CountingZlib:
    def __init__(self) -> None:
        self.calls = 0

    def crc32(self, data: Any) -> int:
        self.calls += 1
        return zlib.crc32(data)


def test_the_crc_is_computed_once_per_frame_however_many_paths_read_it(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = Codec()
    data = codec.encode({"page": _samples(37, 5)})
    counting = _CountingZlib()
    monkeypatch.setattr(cachelayer._codec, "zlib", counting)
    frame = codec.read_frame(data)
    codec.value(frame)
    codec.verified_body(frame)
    assert codec.verified_zstd_frame(frame) == data[HEADER_SIZE:]
    codec.serialized(frame)
    assert counting.calls == 1


def test_a_failed_crc_is_not_remembered_as_passed() -> None:
    codec = Codec(compression="none")
    frame = codec.read_frame(_flipped(codec.encode({"downloads": 1}), (HEADER_SIZE + 3) * 8))
    for _ in range(2):
        with pytest.raises(CodecError, match="CRC-32"):
            codec.serialized(frame)


# --------------------------------------------------------------------------- documented limits


def test_version_1_frames_are_not_protected() -> None:
    """docs/value-format.md: a version 1 frame has no CRC; an uncompressed one can read as another value."""
    codec = Codec(compression="none", format_version=1)
    data = codec.encode({"downloads": 1})
    digit = data.index(b"1", 22)
    assert codec.decode(_flipped(data, digit * 8 + 1)) == {"downloads": 3}


def test_a_matching_crc_over_bytes_that_are_not_json_is_served_unparsed() -> None:
    """docs/value-format.md: the CRC proves the bytes are the writer's, not that the writer wrote JSON. Only a
    foreign or broken writer makes such a frame; parsing every body to refuse it would cost more than the GET."""
    payload = b"<html>502</html>"
    header = Codec(compression="none").encode(None)[:22]
    data = header + zlib.crc32(payload).to_bytes(4, "big") + payload
    codec = Codec()
    assert bytes(codec.verified_body(codec.read_frame(data))) == payload
    with pytest.raises(CodecError):
        codec.decode(data)
