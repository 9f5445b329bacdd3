"""The value frame: header fields, compression choices, size limits, and totality of decoding.

Totality: for any byte string, ``Codec.decode`` returns a value or raises :class:`CodecError`, never anything
else; the cache relies on it to treat anything unreadable as a miss.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import struct
import time
import tracemalloc
import zlib
from typing import Any, Literal

import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cachelayer import CacheError, Codec, CodecError, DictionaryRegistry, Frame, ValueTooLargeError, train_dictionary
from cachelayer._codec import (
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    COMPRESSION_ZSTD_DICT,
    DEFAULT_MAX_VALUE_SIZE,
    FORMAT_VERSION,
    HEADER,
    HEADER_SIZE,
    HEADER_V1,
    HEADER_V1_SIZE,
    MAGIC,
)
from tests._samples import sample as _sample

MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1
# Header offsets (see the table in cachelayer/_codec.py and docs/value-format.md).
OFF_VERSION, OFF_SERIALIZER, OFF_COMPRESSION, OFF_FLAGS, OFF_DICT_ID, OFF_EXPIRES, OFF_RECOMPUTE = 2, 3, 4, 5, 6, 10, 18
OFF_CRC = 22  # version 2 only

SerializerName = Literal["orjson", "msgpack"]
SERIALIZERS: tuple[SerializerName, ...] = ("orjson", "msgpack")

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- data and fixtures


def _samples(seed: int, count: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [_sample(rng, i) for i in range(count)]


def _train(seed: int) -> bytes:
    # zstd's trained form (compression 2): these tests hold the frames written before raw content to their
    # contract; raw-content frames (compression 3) are in tests/test_dictionaries.py and test_codec_bitflips.py.
    values = _samples(seed, 300)
    return train_dictionary(
        [orjson.dumps(v) for v in values] + [Codec("msgpack").serializer.dumps(v) for v in values],
        size=8192,
        form="trained",
    )


@pytest.fixture(scope="module")
def dictionary() -> bytes:
    return _train(11)


@pytest.fixture(scope="module")
def other_dictionary() -> bytes:
    return _train(12)


@pytest.fixture(scope="module")
def registry(dictionary: bytes) -> DictionaryRegistry:
    return DictionaryRegistry([dictionary])


@pytest.fixture(scope="module")
def dict_id(registry: DictionaryRegistry) -> int:
    return registry.ids()[0]


@pytest.fixture(scope="module")
def reader(registry: DictionaryRegistry) -> Codec:
    """Reads every frame the writers below produce (the serializer is chosen by the frame's id)."""
    return Codec(dictionaries=registry)


VALUES: list[Any] = [
    None,
    0,
    "壁纸",
    {"small": True},
    _samples(1, 1)[0],  # ~150 bytes: below min_size, above min_size_with_dictionary
    _samples(2, 5),  # ~800 bytes
    {"page": _samples(3, 40), "title": "高清壁纸 " * 30},
]


@pytest.fixture(scope="module")
def frames(registry: DictionaryRegistry, dict_id: int) -> list[tuple[str, bytes, Any]]:
    """(label, frame, value) for every serializer x compression, small and large values."""
    result: list[tuple[str, bytes, Any]] = []
    for ser in SERIALIZERS:
        writers = {
            "none": Codec(ser, compression="none"),
            "zstd": Codec(ser),
            "dict": Codec(ser, dictionaries=registry, dictionary_id=dict_id),
        }
        for name, writer in writers.items():
            for i, value in enumerate(VALUES):
                data = writer.encode(value, expires_at=1_700_000_000.5, recompute_time=0.25)
                result.append((f"{ser}-{name}-{i}", data, value))
    return result


@pytest.fixture(scope="module")
def compressed_frames(frames: list[tuple[str, bytes, Any]]) -> list[tuple[str, bytes, Any]]:
    result = [f for f in frames if f[1][OFF_COMPRESSION] != COMPRESSION_NONE]
    kinds = {(f[1][OFF_SERIALIZER], f[1][OFF_COMPRESSION]) for f in result}
    assert kinds == {(1, 1), (1, 2), (2, 1), (2, 2)}
    return result


def decodes_or_codec_error(codec: Codec, data: bytes) -> tuple[bool, Any]:
    """(True, value) or (False, None) on CodecError; any other exception escapes and fails the test."""
    try:
        return True, codec.decode(data)
    except CodecError:
        return False, None


def header(
    *,
    magic: bytes = MAGIC,
    version: int = 1,
    serializer: int = 1,
    compression: int = COMPRESSION_NONE,
    flags: int = 0,
    dict_id: int = 0,
    expires_ms: int = 0,
    recompute_us: int = 0,
    crc: int | None = None,
) -> bytes:
    """A handmade header: version 1 by default (no CRC to get right); ``crc`` makes it a version 2 header."""
    if crc is not None:
        return HEADER.pack(magic, 2, serializer, compression, flags, dict_id, expires_ms, recompute_us, crc)
    return HEADER_V1.pack(magic, version, serializer, compression, flags, dict_id, expires_ms, recompute_us)


def patched(data: bytes, offset: int, byte: int) -> bytes:
    return data[:offset] + bytes([byte]) + data[offset + 1 :]


# --------------------------------------------------------------------------- the header


def test_header_is_26_bytes_starting_with_cl_and_version_1_was_22() -> None:
    assert HEADER_SIZE == 26 == HEADER.size
    assert HEADER_V1_SIZE == 22 == HEADER_V1.size
    assert FORMAT_VERSION == 2
    assert MAGIC == b"CL"
    data = Codec().encode({"a": 1})
    assert data[:2] == b"CL"
    assert data[26:] == b'{"a":1}'
    assert Codec(format_version=1).encode({"a": 1})[22:] == b'{"a":1}'


@pytest.mark.parametrize("serializer", ["orjson", "msgpack"])
def test_header_fields_match_the_documented_table(
    serializer: SerializerName, registry: DictionaryRegistry, dict_id: int
) -> None:
    value = {"page": _samples(5, 20)}
    codec = Codec(serializer, dictionaries=registry, dictionary_id=dict_id)
    data = codec.encode(value, expires_at=1_700_000_000.123, recompute_time=0.012345)
    assert data[0:2] == b"CL"
    assert data[2] == 2
    assert data[3] == {"orjson": 1, "msgpack": 2}[serializer]
    assert data[4] == COMPRESSION_ZSTD_DICT == 2
    assert data[5] == 0
    assert int.from_bytes(data[6:10], "big") == dict_id
    assert int.from_bytes(data[10:18], "big") == 1_700_000_000_123
    assert int.from_bytes(data[18:22], "big") == 12345
    assert int.from_bytes(data[22:26], "big") == zlib.crc32(data[26:])
    zdict = zstandard.ZstdCompressionDict(registry_bytes(registry, dict_id))
    assert zstandard.ZstdDecompressor(dict_data=zdict).decompress(data[26:]) == codec.serializer.dumps(value)


def registry_bytes(registry: DictionaryRegistry, dict_id: int) -> bytes:
    return registry.data(dict_id)


def test_read_frame_gives_the_header_fields() -> None:
    codec = Codec()
    value = _samples(6, 10)
    frame = codec.read_frame(codec.encode(value, expires_at=1_700_000_000.123, recompute_time=0.012345))
    assert isinstance(frame, Frame)
    assert frame.serializer_id == 1
    assert frame.compression == COMPRESSION_ZSTD
    assert frame.dictionary_id == 0
    assert frame.expires_at == 1_700_000_000.123
    assert frame.recompute_time == 0.012345
    assert isinstance(frame.payload, memoryview)
    assert zstandard.ZstdDecompressor().decompress(bytes(frame.payload)) == orjson.dumps(value)
    assert bytes(codec.serialized(frame)) == orjson.dumps(value)
    assert codec.value(frame) == value


def test_defaults_are_no_expiry_and_no_recompute_time() -> None:
    frame = Codec().read_frame(Codec().encode(1))
    assert frame.expires_at == 0.0
    assert frame.recompute_time == 0.0


@settings(max_examples=200, deadline=None)
@given(
    expires_at=st.floats(min_value=0, max_value=4e9),  # to 2096: milliseconds stay exact in a float
    recompute_time=st.floats(min_value=0, max_value=MAX_U32 / 1e6),
)
def test_expires_at_keeps_milliseconds_and_recompute_time_microseconds(
    expires_at: float, recompute_time: float
) -> None:
    codec = Codec()
    frame = codec.read_frame(codec.encode("v", expires_at=expires_at, recompute_time=recompute_time))
    assert abs(frame.expires_at - expires_at) <= 0.0005 + 1e-9
    assert abs(frame.recompute_time - recompute_time) <= 0.0000005 + 1e-12


@pytest.mark.parametrize(
    ("expires_at", "expected_ms"),
    [
        (-1.0, 0),
        (-1e300, 0),
        (-math.inf, 0),
        (math.nan, 0),
        (-0.0, 0),
        (0.0004, 0),
        (0.0006, 1),
        (math.inf, MAX_U64),
        (1e30, MAX_U64),
        (MAX_U64 / 1000, MAX_U64),
        (1.8e16, 18_000_000_000_000_000_000),
        (2**53, 2**53 * 1000),  # an int
        (2**70, MAX_U64),  # an int, not a float
    ],
)
def test_expires_at_is_clamped_to_the_field(expires_at: float, expected_ms: int) -> None:
    data = Codec().encode(1, expires_at=expires_at)
    assert int.from_bytes(data[OFF_EXPIRES : OFF_EXPIRES + 8], "big") == expected_ms


@pytest.mark.parametrize(
    ("recompute_time", "expected_us"),
    [
        (-0.5, 0),
        (-math.inf, 0),
        (math.nan, 0),
        (0.0000004, 0),
        (0.0000006, 1),
        (MAX_U32 / 1e6, MAX_U32),
        (4295.0, MAX_U32),  # 71.6 minutes: beyond 32 bits of microseconds
        (1e12, MAX_U32),
        (math.inf, MAX_U32),
        (10**6, MAX_U32),
    ],
)
def test_recompute_time_is_clamped_to_the_field(recompute_time: float, expected_us: int) -> None:
    data = Codec().encode(1, recompute_time=recompute_time)
    assert int.from_bytes(data[OFF_RECOMPUTE : OFF_RECOMPUTE + 4], "big") == expected_us


def test_a_huge_integer_expires_at_is_clamped() -> None:
    data = Codec().encode(1, expires_at=10**400, recompute_time=10**400)
    assert int.from_bytes(data[OFF_EXPIRES : OFF_EXPIRES + 8], "big") == MAX_U64
    assert int.from_bytes(data[OFF_RECOMPUTE : OFF_RECOMPUTE + 4], "big") == MAX_U32


def test_clamped_header_still_decodes() -> None:
    codec = Codec()
    data = codec.encode({"v": 1}, expires_at=math.inf, recompute_time=math.nan)
    frame = codec.read_frame(data)
    assert frame.expires_at == MAX_U64 / 1000
    assert frame.recompute_time == 0.0
    assert codec.decode(data) == {"v": 1}


# --------------------------------------------------------------------------- when to compress


def _json_string_of_size(size: int) -> bytes:
    """Serialized JSON (a string) of exactly ``size`` bytes, very compressible."""
    return b'"' + b"a" * (size - 2) + b'"'


@pytest.mark.parametrize(("size", "compression"), [(255, COMPRESSION_NONE), (256, COMPRESSION_ZSTD), (4096, 1)])
def test_compression_starts_at_min_size_256(size: int, compression: int) -> None:
    codec = Codec()
    data = codec.encode_serialized(_json_string_of_size(size))
    assert data[OFF_COMPRESSION] == compression
    assert codec.decode(data) == "a" * (size - 2)


@pytest.mark.parametrize(("size", "compression"), [(63, COMPRESSION_NONE), (64, COMPRESSION_ZSTD_DICT)])
def test_compression_with_a_dictionary_starts_at_64(
    registry: DictionaryRegistry, dict_id: int, size: int, compression: int
) -> None:
    codec = Codec(dictionaries=registry, dictionary_id=dict_id)
    data = codec.encode_serialized(_json_string_of_size(size))
    assert data[OFF_COMPRESSION] == compression
    assert int.from_bytes(data[OFF_DICT_ID : OFF_DICT_ID + 4], "big") == (dict_id if compression else 0)
    assert codec.decode(data) == "a" * (size - 2)


def test_min_size_is_configurable(registry: DictionaryRegistry, dict_id: int) -> None:
    assert Codec(min_size=1000).encode_serialized(_json_string_of_size(999))[OFF_COMPRESSION] == 0
    assert Codec(min_size=1000).encode_serialized(_json_string_of_size(1000))[OFF_COMPRESSION] == 1
    with_dict = Codec(dictionaries=registry, dictionary_id=dict_id, min_size=1, min_size_with_dictionary=200)
    assert with_dict.encode_serialized(_json_string_of_size(199))[OFF_COMPRESSION] == 0
    assert with_dict.encode_serialized(_json_string_of_size(200))[OFF_COMPRESSION] == 2


@pytest.mark.parametrize("size", [300, 5000])
def test_incompressible_values_are_stored_uncompressed(size: int, registry: DictionaryRegistry, dict_id: int) -> None:
    value = random.Random(size).randbytes(size)  # msgpack keeps bytes as bytes: nothing to compress
    for codec in (Codec("msgpack"), Codec("msgpack", dictionaries=registry, dictionary_id=dict_id)):
        data = codec.encode(value)
        assert data[OFF_COMPRESSION] == COMPRESSION_NONE
        assert data[OFF_DICT_ID : OFF_DICT_ID + 4] == b"\0\0\0\0"
        assert codec.decode(data) == value


def test_compression_is_skipped_when_it_does_not_shrink() -> None:
    # Just above min_size but too small for a zstd frame's overhead to pay.
    codec = Codec(min_size=10)
    data = codec.encode_serialized(b'"abcdefghijk"')
    assert data[OFF_COMPRESSION] == COMPRESSION_NONE
    assert codec.decode(data) == "abcdefghijk"


def test_compression_none_never_compresses() -> None:
    codec = Codec(compression="none")
    data = codec.encode("a" * 10_000)
    assert data[OFF_COMPRESSION] == COMPRESSION_NONE
    assert codec.decode(data) == "a" * 10_000


def test_is_plain_zstd(registry: DictionaryRegistry, dict_id: int) -> None:
    big = _samples(7, 20)
    assert Codec().read_frame(Codec().encode(big)).is_plain_zstd
    assert not Codec().read_frame(Codec().encode(1)).is_plain_zstd
    assert not Codec().read_frame(Codec(compression="none").encode(big)).is_plain_zstd
    with_dict = Codec(dictionaries=registry, dictionary_id=dict_id)
    assert not with_dict.read_frame(with_dict.encode(big)).is_plain_zstd


def test_zstd_payloads_carry_a_checksum_and_their_size(registry: DictionaryRegistry, dict_id: int) -> None:
    value = _samples(8, 20)
    for codec in (Codec(), Codec("msgpack"), Codec(dictionaries=registry, dictionary_id=dict_id)):
        frame = codec.read_frame(codec.encode(value))
        assert frame.compression != COMPRESSION_NONE
        params = zstandard.get_frame_parameters(bytes(frame.payload))
        assert params.has_checksum
        assert params.content_size == len(codec.serializer.dumps(value))


@pytest.mark.parametrize(("format_version", "caught_by"), [(1, "does not decompress"), (2, "CRC-32")])
def test_a_corrupted_zstd_payload_is_caught_by_the_checksum(format_version: Literal[1, 2], caught_by: str) -> None:
    """Version 1 has only zstd's own content checksum; version 2 checks its CRC-32 before decompressing."""
    codec = Codec(format_version=format_version)
    data = bytearray(codec.encode({"text": "".join(random.Random(3).choices("abcdef ", k=3000))}))
    assert data[OFF_COMPRESSION] == COMPRESSION_ZSTD
    data[-5] ^= 0x01  # last byte of compressed content, just before the 4-byte checksum
    with pytest.raises(CodecError, match=caught_by):
        codec.decode(bytes(data))


def test_codec_refuses_an_unknown_compression() -> None:
    with pytest.raises(ValueError, match="compression must be"):
        Codec(compression="gzip")  # type: ignore[arg-type]


@pytest.mark.parametrize("level", [-5, 1, 3, 19])
def test_levels_round_trip(level: int) -> None:
    codec = Codec(level=level)
    value = _samples(9, 20)
    data = codec.encode(value)
    assert data[OFF_COMPRESSION] == COMPRESSION_ZSTD
    assert Codec().decode(data) == value


# --------------------------------------------------------------------------- max_value_size


def test_default_max_value_size_is_16_mib() -> None:
    assert DEFAULT_MAX_VALUE_SIZE == 16 * 1024 * 1024
    assert Codec().max_value_size == DEFAULT_MAX_VALUE_SIZE


def test_value_too_large_on_write() -> None:
    codec = Codec(max_value_size=1000)
    codec.encode_serialized(_json_string_of_size(1000))  # exactly the limit is fine
    with pytest.raises(ValueTooLargeError) as info:
        codec.encode_serialized(_json_string_of_size(1001))
    assert info.value.size == 1001
    assert info.value.limit == 1000
    assert isinstance(info.value, CacheError)
    assert isinstance(info.value, ValueError)


def test_the_write_limit_is_on_the_serialized_size_not_the_compressed_size() -> None:
    codec = Codec(max_value_size=1000)
    with pytest.raises(ValueTooLargeError) as info:
        codec.encode("a" * 5000)  # compresses to a few dozen bytes, still refused
    assert info.value.size == 5002


@pytest.mark.parametrize("writer", ["none", "zstd", "dict"])
def test_a_frame_larger_than_the_readers_max_is_a_codec_error(
    writer: str, registry: DictionaryRegistry, dict_id: int
) -> None:
    codec = {
        "none": Codec(compression="none"),
        "zstd": Codec(),
        "dict": Codec(dictionaries=registry, dictionary_id=dict_id),
    }[writer]
    serialized = _json_string_of_size(3000)
    data = codec.encode_serialized(serialized)
    assert len(data) < 3000 or writer == "none"
    exact = Codec(dictionaries=registry, max_value_size=3000)
    assert exact.decode(data) == "a" * 2998
    small = Codec(dictionaries=registry, max_value_size=2999)
    with pytest.raises(CodecError, match="max_value_size=2999"):
        small.decode(data)


def test_a_frame_declaring_more_than_the_readers_max_is_refused_before_decompressing() -> None:
    data = Codec().encode_serialized(_json_string_of_size(100_000))
    reader = Codec(max_value_size=1024)
    with pytest.raises(CodecError, match="declares 100000 bytes"):
        reader.decode(data)


# --------------------------------------------------------------------------- totality: round trips first


def test_every_fixture_frame_round_trips(reader: Codec, frames: list[tuple[str, bytes, Any]]) -> None:
    for label, data, value in frames:
        assert reader.decode(data) == value, label
        frame = reader.read_frame(data)
        assert frame.expires_at == 1_700_000_000.5, label
        assert frame.recompute_time == 0.25, label


# --------------------------------------------------------------------------- totality: arbitrary bytes


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes(reader: Codec, data: bytes) -> None:
    decodes_or_codec_error(reader, data)


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_starting_with_the_magic(reader: Codec, data: bytes) -> None:
    decodes_or_codec_error(reader, MAGIC + data)
    decodes_or_codec_error(reader, MAGIC + bytes([FORMAT_VERSION]) + data)


@FUZZ
@given(
    serializer=st.sampled_from([1, 2]),
    compression=st.sampled_from([COMPRESSION_NONE, COMPRESSION_ZSTD, COMPRESSION_ZSTD_DICT]),
    expires_ms=st.integers(0, MAX_U64),
    recompute_us=st.integers(0, MAX_U32),
    payload=st.binary(max_size=600),
)
def test_random_payload_after_a_valid_header(
    reader: Codec, dict_id: int, serializer: int, compression: int, expires_ms: int, recompute_us: int, payload: bytes
) -> None:
    head = header(
        serializer=serializer,
        compression=compression,
        dict_id=dict_id if compression == COMPRESSION_ZSTD_DICT else 0,
        expires_ms=expires_ms,
        recompute_us=recompute_us,
    )
    decodes_or_codec_error(reader, head + payload)


@FUZZ
@given(
    serializer=st.sampled_from([1, 2]),
    compression=st.sampled_from([COMPRESSION_ZSTD, COMPRESSION_ZSTD_DICT]),
    tail=st.binary(max_size=300),
)
def test_random_zstd_looking_payloads(
    reader: Codec, dict_id: int, serializer: int, compression: int, tail: bytes
) -> None:
    """Payloads that start like a zstd frame get further into the decompressor than random bytes do."""
    head = header(
        serializer=serializer, compression=compression, dict_id=dict_id if compression == COMPRESSION_ZSTD_DICT else 0
    )
    decodes_or_codec_error(reader, head + b"\x28\xb5\x2f\xfd" + tail)


# --------------------------------------------------------------------------- totality: damaged valid frames


def test_every_truncation_of_every_valid_frame(reader: Codec, frames: list[tuple[str, bytes, Any]]) -> None:
    for label, data, _ in frames:
        compressed = data[OFF_COMPRESSION] != COMPRESSION_NONE
        for length in range(len(data)):
            ok, _ = decodes_or_codec_error(reader, data[:length])
            if length < HEADER_SIZE or compressed:
                # A header cut short, or a zstd frame cut short (its declared size and checksum no longer match).
                assert not ok, f"{label} truncated to {length} bytes decoded"


@FUZZ
@given(data=st.data())
def test_a_single_bit_flip_in_a_compressed_frame_is_detected_or_harmless(
    reader: Codec, compressed_frames: list[tuple[str, bytes, Any]], data: st.DataObject
) -> None:
    """The zstd content checksum: a flipped bit gives CodecError, or (in a header field such as expires_at, or
    a zstd flag that does not change the content) the original value, never a different value."""
    label, frame, value = data.draw(st.sampled_from(compressed_frames))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    damaged = bytearray(frame)
    damaged[bit // 8] ^= 1 << (bit % 8)
    ok, result = decodes_or_codec_error(reader, bytes(damaged))
    if ok:
        assert result == value, f"{label}: bit {bit} flipped decoded to a different value"


@FUZZ
@given(data=st.data())
def test_single_bit_flips_in_any_frame(
    reader: Codec, frames: list[tuple[str, bytes, Any]], data: st.DataObject
) -> None:
    _, frame, _ = data.draw(st.sampled_from(frames))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    damaged = bytearray(frame)
    damaged[bit // 8] ^= 1 << (bit % 8)
    decodes_or_codec_error(reader, bytes(damaged))


@FUZZ
@given(data=st.data())
def test_multiple_bit_flips_in_any_frame(
    reader: Codec, frames: list[tuple[str, bytes, Any]], data: st.DataObject
) -> None:
    _, frame, _ = data.draw(st.sampled_from(frames))
    bits = data.draw(st.lists(st.integers(0, len(frame) * 8 - 1), min_size=2, max_size=16))
    damaged = bytearray(frame)
    for bit in bits:
        damaged[bit // 8] ^= 1 << (bit % 8)
    decodes_or_codec_error(reader, bytes(damaged))


@FUZZ
@given(data=st.data())
def test_overwritten_bytes_in_any_frame(
    reader: Codec, frames: list[tuple[str, bytes, Any]], data: st.DataObject
) -> None:
    _, frame, _ = data.draw(st.sampled_from(frames))
    start = data.draw(st.integers(HEADER_SIZE, len(frame)))
    junk = data.draw(st.binary(max_size=40))
    decodes_or_codec_error(reader, frame[:start] + junk + frame[start + len(junk) :])
    decodes_or_codec_error(reader, frame[:start] + junk + frame[start:])  # inserted
    decodes_or_codec_error(reader, frame + junk)  # appended


def test_bytes_appended_to_a_compressed_frame_give_the_value_or_codec_error(
    reader: Codec, compressed_frames: list[tuple[str, bytes, Any]]
) -> None:
    # Today zstandard ignores data after the first zstd frame, so these decode to the original value.
    for label, data, value in compressed_frames:
        for tail in (b"\n", b"garbage", data[HEADER_SIZE:]):
            ok, result = decodes_or_codec_error(reader, data + tail)
            assert not ok or result == value, label


# --------------------------------------------------------------------------- dictionaries on the reading side


def test_a_reader_without_the_dictionary_gets_codec_error(compressed_frames: list[tuple[str, bytes, Any]]) -> None:
    dict_frames = [f for f in compressed_frames if f[1][OFF_COMPRESSION] == COMPRESSION_ZSTD_DICT]
    assert dict_frames
    for _, data, _ in dict_frames:
        with pytest.raises(CodecError, match="does not hold"):
            Codec().decode(data)
        with pytest.raises(CodecError, match="does not hold"):
            Codec(dictionaries=DictionaryRegistry()).decode(data)
        # ... while plain zstd frames still decode with no dictionary at all.
    for label, data, value in compressed_frames:
        if data[OFF_COMPRESSION] == COMPRESSION_ZSTD:
            assert Codec().decode(data) == value, label


def test_a_reader_with_another_dictionary_gets_codec_error(
    other_dictionary: bytes, dict_id: int, compressed_frames: list[tuple[str, bytes, Any]]
) -> None:
    other = DictionaryRegistry([other_dictionary])
    assert other.ids() != [dict_id]
    for _, data, _ in compressed_frames:
        if data[OFF_COMPRESSION] == COMPRESSION_ZSTD_DICT:
            with pytest.raises(CodecError, match="does not hold"):
                Codec(dictionaries=other).decode(data)


def test_a_reader_with_a_different_dictionary_under_the_same_id(
    dict_id: int, compressed_frames: list[tuple[str, bytes, Any]]
) -> None:
    """E.g. a dictionary file replaced by one retrained with a fixed id: the content checksum catches it."""
    values = _samples(13, 300)
    impostor = zstandard.train_dictionary(8192, [orjson.dumps(v) for v in values], dict_id=dict_id).as_bytes()
    registry = DictionaryRegistry([impostor])
    assert registry.ids() == [dict_id]
    reader = Codec(dictionaries=registry)
    errors = 0
    for label, data, value in compressed_frames:
        if data[OFF_COMPRESSION] == COMPRESSION_ZSTD_DICT:
            ok, result = decodes_or_codec_error(reader, data)
            assert not ok or result == value, label  # never a wrong value
            errors += not ok
    assert errors > 0


def test_a_frame_whose_zstd_payload_names_another_dictionary(
    registry: DictionaryRegistry, dict_id: int, other_dictionary: bytes
) -> None:
    both = DictionaryRegistry([registry_bytes(registry, dict_id), other_dictionary])
    other_id = next(i for i in both.ids() if i != dict_id)
    data = Codec(dictionaries=both, dictionary_id=other_id).encode(_samples(14, 3))
    assert data[OFF_COMPRESSION] == COMPRESSION_ZSTD_DICT
    relabelled = data[:OFF_DICT_ID] + dict_id.to_bytes(4, "big") + data[OFF_DICT_ID + 4 :]
    with pytest.raises(CodecError):
        Codec(dictionaries=both).decode(relabelled)
    # And a dictionary payload labelled as plain zstd.
    as_plain = patched(data[:OFF_DICT_ID] + b"\0\0\0\0" + data[OFF_DICT_ID + 4 :], OFF_COMPRESSION, COMPRESSION_ZSTD)
    with pytest.raises(CodecError, match="does not decompress"):
        Codec(dictionaries=both).decode(as_plain)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param("half", id="second-half-cut"),
        pytest.param("header-only", id="header-only"),
        pytest.param("first-40", id="first-40-bytes"),
        pytest.param("zeroed", id="tables-zeroed"),
        pytest.param("flipped", id="one-table-byte-flipped"),
    ],
)
def test_a_corrupt_dictionary_file_on_the_reader_is_a_codec_error(
    registry: DictionaryRegistry, dict_id: int, damage: str
) -> None:
    """A dictionary file damaged in deployment (same id, broken content) is refused when registered, or else
    costs a miss on read, never a crash."""
    good = registry_bytes(registry, dict_id)
    broken = {
        "half": good[: len(good) // 2],
        "header-only": good[:8],
        "first-40": good[:40],
        "zeroed": good[:8] + bytes(len(good) - 8),
        "flipped": good[:100] + bytes([good[100] ^ 0xFF]) + good[101:],
    }[damage]
    assert broken != good
    try:
        damaged_registry = DictionaryRegistry([broken])
    except ValueError as exc:
        refusal = str(exc)
    else:
        refusal = ""
    if refusal:
        # Refused when registered, at start-up: the best outcome, and it names the dictionary.
        assert str(dict_id) in refusal or "id 0" in refusal
        return
    data = Codec(dictionaries=registry, dictionary_id=dict_id).encode(_samples(15, 3))
    assert data[OFF_COMPRESSION] == COMPRESSION_ZSTD_DICT
    ok, result = decodes_or_codec_error(Codec(dictionaries=damaged_registry), data)
    assert not ok or result == _samples(15, 3)


# --------------------------------------------------------------------------- totality: header fields


def _valid_frames_for_header_tests(registry: DictionaryRegistry, dict_id: int) -> list[bytes]:
    big = _samples(16, 20)
    return [
        Codec().encode({"a": 1}),
        Codec().encode(big),
        Codec("msgpack").encode(big),
        Codec(dictionaries=registry, dictionary_id=dict_id).encode(big),
    ]


@pytest.mark.parametrize("version", [0, 3, 127, 255])
def test_a_future_or_unknown_format_version_is_refused(
    reader: Codec, registry: DictionaryRegistry, dict_id: int, version: int
) -> None:
    for data in _valid_frames_for_header_tests(registry, dict_id):
        with pytest.raises(CodecError, match=f"version {version} is not readable"):
            reader.decode(patched(data, OFF_VERSION, version))


def test_unknown_serializer_ids_are_refused(reader: Codec, registry: DictionaryRegistry, dict_id: int) -> None:
    for data in _valid_frames_for_header_tests(registry, dict_id):
        for serializer_id in set(range(256)) - {1, 2}:
            with pytest.raises(CodecError, match=f"unknown serializer id {serializer_id}"):
                reader.decode(patched(data, OFF_SERIALIZER, serializer_id))


def test_unknown_compression_ids_are_refused(reader: Codec, registry: DictionaryRegistry, dict_id: int) -> None:
    for data in _valid_frames_for_header_tests(registry, dict_id):
        for compression in range(4, 256):
            with pytest.raises(CodecError, match=f"unknown compression id {compression}"):
                reader.decode(patched(data, OFF_COMPRESSION, compression))


def test_any_flag_is_refused(reader: Codec, registry: DictionaryRegistry, dict_id: int) -> None:
    for data in _valid_frames_for_header_tests(registry, dict_id):
        for flags in range(2, 256):
            with pytest.raises(CodecError, match="unknown flags"):
                reader.decode(patched(data, OFF_FLAGS, flags))
        # 0x01 (tagged) on a frame without a tag section: its payload read as one, then the CRC refuses it.
        with pytest.raises(CodecError):
            reader.decode(patched(data, OFF_FLAGS, 1))


def test_a_tagged_frame_carries_its_tags_and_stamps_under_the_crc(reader: Codec) -> None:
    tags = [("wallpaper:7", bytes(range(16))), ("list:é", b"\xff" * 16)]
    for writer in (Codec(), Codec(compression="none"), Codec(format_version=1)):
        data = writer.encode({"n": 1}, expires_at=1.7e9, tags=tags)
        frame = reader.read_frame(data)
        assert (frame.version, frame.tags) == (2, tuple(tags))  # tagged frames are always version 2
        assert reader.decode(data) == {"n": 1}
        assert reader.read_frame(writer.encode({"n": 1})).tags == ()
    with pytest.raises(CodecError, match="unknown flags"):  # a version 1 header cannot carry the flag
        reader.decode(patched(Codec(format_version=1).encode({"n": 1}), OFF_FLAGS, 1))
    with pytest.raises(CodecError, match="truncated"):
        reader.read_frame(Codec().encode({"n": 1}, tags=tags)[:30])
    with pytest.raises(ValueError, match="16 bytes"):
        Codec().encode(1, tags=[("t", b"short")])
    with pytest.raises(ValueError, match="at most 255"):
        Codec().encode(1, tags=[("t" * 256, bytes(16))])


def test_every_other_magic_is_refused(reader: Codec) -> None:
    data = Codec().encode({"a": 1})
    for first in range(256):
        for second in (0x4C, 0x00, 0xFF):
            if bytes([first, second]) != b"CL":
                with pytest.raises(CodecError, match="not a cachelayer frame"):
                    reader.decode(bytes([first, second]) + data[2:])
    with pytest.raises(CodecError, match="not a cachelayer frame"):
        reader.decode(b"cl" + data[2:])


def test_dictionary_id_must_match_the_compression(reader: Codec, dict_id: int) -> None:
    with pytest.raises(CodecError, match="without a dictionary id"):
        reader.decode(header(compression=COMPRESSION_ZSTD_DICT, dict_id=0) + b"whatever")
    for compression in (COMPRESSION_NONE, COMPRESSION_ZSTD):
        with pytest.raises(CodecError, match="names a dictionary"):
            reader.decode(header(compression=compression, dict_id=dict_id) + b"1")


def test_compression_byte_lying_about_the_payload(reader: Codec) -> None:
    json_frame = Codec(compression="none").encode(_samples(17, 5))
    with pytest.raises(CodecError, match="not a zstd frame"):
        reader.decode(patched(json_frame, OFF_COMPRESSION, COMPRESSION_ZSTD))
    zstd_frame = Codec().encode(_samples(17, 5))
    as_none = patched(zstd_frame, OFF_COMPRESSION, COMPRESSION_NONE)
    for serializer_id in (1, 2):
        with pytest.raises(CodecError):
            reader.decode(patched(as_none, OFF_SERIALIZER, serializer_id))


def test_serializer_byte_lying_about_the_payload(reader: Codec) -> None:
    value = {"list": list(range(50))}
    json_frame = Codec().encode(value)
    packed_frame = Codec("msgpack").encode(value)
    for data, wrong in ((json_frame, 2), (packed_frame, 1)):
        with pytest.raises(CodecError):
            reader.decode(patched(data, OFF_SERIALIZER, wrong))


@pytest.mark.parametrize("length", range(HEADER_SIZE))
def test_anything_shorter_than_a_header_is_refused(reader: Codec, length: int) -> None:
    data = Codec().encode(None)
    with pytest.raises(CodecError, match=r"shorter than a (version 2 )?frame header"):
        reader.decode(data[:length])
    if length < HEADER_V1_SIZE:
        with pytest.raises(CodecError, match="shorter than a frame header"):
            reader.decode(Codec(format_version=1).encode(None)[:length])


def test_a_header_with_an_empty_payload(reader: Codec, dict_id: int) -> None:
    for compression, did in ((0, 0), (1, 0), (2, dict_id)):
        for serializer in (1, 2):
            with pytest.raises(CodecError):
                reader.decode(header(serializer=serializer, compression=compression, dict_id=did))


# --------------------------------------------------------------------------- totality: foreign values


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize(
    "value",
    [{"id": 1, "title": "壁纸", "tags": ["a", "b"]}, {}, [1, 2, 3], "a string", None, {"big": "x" * 1000}],
    ids=["dict", "empty-dict", "list", "str", "none", "big-dict"],
)
def test_a_pickled_value_is_refused(reader: Codec, protocol: int, value: Any) -> None:
    data = pickle.dumps(value, protocol=protocol)
    assert data[0] == 0x80
    with pytest.raises(CodecError):
        reader.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"OK",
        b"hello world",
        b"null",
        b"true",
        b"42",
        b'"just a string that is long enough to be a header"',
        b'{"id": 1, "title": "wallpaper", "tags": ["a", "b", "c"]}',
        "高清壁纸，风景，城市，抽象，黑暗，极简，太空".encode(),
        b"CL",
        b"CL" + b"\x00" * 40,
        b"\x00" * 100,
        b"\xff" * 100,
    ],
)
def test_plain_text_and_json_without_a_header_are_refused(reader: Codec, data: bytes) -> None:
    with pytest.raises(CodecError):
        reader.decode(data)


@FUZZ
@given(text=st.text(max_size=300))
def test_any_text_without_a_header_is_refused(reader: Codec, text: str) -> None:
    data = text.encode()
    assume(not data.startswith(MAGIC))
    with pytest.raises(CodecError):
        reader.decode(data)


json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@FUZZ
@given(value=json_values)
def test_any_json_document_without_a_header_is_refused(reader: Codec, value: Any) -> None:
    with pytest.raises(CodecError, match=r"not a cachelayer frame|shorter than a frame header"):
        reader.decode(orjson.dumps(value))
    with pytest.raises(CodecError):
        reader.decode(Codec("msgpack").serializer.dumps(value))


def test_a_bare_zstd_frame_is_refused(reader: Codec, registry: DictionaryRegistry, dict_id: int) -> None:
    serialized = orjson.dumps(_samples(18, 10))
    for compressor in (
        zstandard.ZstdCompressor(),
        zstandard.ZstdCompressor(write_checksum=True, level=19),
        registry.compressor(dict_id, 1),
    ):
        bare = compressor.compress(serialized)
        assert bare[:4] == b"\x28\xb5\x2f\xfd"
        with pytest.raises(CodecError, match="not a cachelayer frame"):
            reader.decode(bare)
    with pytest.raises(CodecError):
        reader.decode(zstandard.ZstdCompressor().compress(b"{}"))


def test_a_zstd_frame_that_does_not_declare_its_size_is_refused(reader: Codec) -> None:
    serialized = orjson.dumps(_samples(19, 10))
    payload = zstandard.ZstdCompressor(write_content_size=False).compress(serialized)
    assert zstandard.get_frame_parameters(payload).content_size == zstandard.CONTENTSIZE_UNKNOWN
    with pytest.raises(CodecError, match="does not declare its size"):
        reader.decode(header(compression=COMPRESSION_ZSTD) + payload)


# --------------------------------------------------------------------------- zstd bombs

RLE_BLOCK = 128 * 1024  # the largest block zstd allows


def zstd_rle_frame(declared: int | None, blocks: int, fill: bytes = b"a") -> bytes:
    """A hand-built zstd frame of ``blocks`` RLE blocks of 128 KiB (4 bytes each), declaring ``declared`` bytes
    of content (or no size at all). Tiny, and decompresses to ``blocks * 128 KiB`` bytes."""
    descriptor = 0xC0 if declared is not None else 0x00  # 8-byte content size; not single-segment; no checksum
    out = bytearray(b"\x28\xb5\x2f\xfd") + bytes([descriptor, 0x38])  # window descriptor: 2**17 bytes
    if declared is not None:
        out += declared.to_bytes(8, "little")
    for i in range(blocks):
        last = i == blocks - 1
        out += (int(last) | (1 << 1) | (RLE_BLOCK << 3)).to_bytes(3, "little") + fill
    return bytes(out)


def test_the_handmade_zstd_frames_are_real_zstd() -> None:
    frame = zstd_rle_frame(3 * RLE_BLOCK, 3)
    assert zstandard.ZstdDecompressor().decompress(frame) == b"a" * 3 * RLE_BLOCK
    assert zstandard.frame_content_size(frame) == 3 * RLE_BLOCK
    unsized = zstd_rle_frame(None, 2)
    assert zstandard.frame_content_size(unsized) == -1
    assert zstandard.ZstdDecompressor().decompressobj().decompress(unsized) == b"a" * 2 * RLE_BLOCK


def _decode_measured(codec: Codec, data: bytes) -> tuple[float, int]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(CodecError):
            codec.decode(data)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return elapsed, peak


@pytest.mark.parametrize(
    ("declared", "blocks"),
    [
        (2**62, 8),  # declares 4 EiB
        (2**40, 8192),  # declares 1 TiB, really holds 1 GiB in 32 KiB
        (DEFAULT_MAX_VALUE_SIZE + 1, 129),  # just over the limit, and really that big
        (1000, 8192),  # declares 1000 bytes, really holds 1 GiB: zstd stops at the declared size
        (None, 8192),  # declares nothing, really holds 1 GiB
    ],
    ids=["4EiB", "1TiB", "limit+1", "lies-small", "undeclared"],
)
def test_a_zstd_bomb_is_refused_quickly_without_allocating(reader: Codec, declared: int | None, blocks: int) -> None:
    bomb = zstd_rle_frame(declared, blocks)
    assert len(bomb) < 40_000
    for serializer in (1, 2):
        data = header(serializer=serializer, compression=COMPRESSION_ZSTD) + bomb
        elapsed, peak = _decode_measured(reader, data)
        assert elapsed < 0.5
        assert peak < 1024 * 1024, f"decoding allocated {peak} bytes"


def test_a_zstd_bomb_under_a_dictionary_header_is_refused(reader: Codec, dict_id: int) -> None:
    data = header(compression=COMPRESSION_ZSTD_DICT, dict_id=dict_id) + zstd_rle_frame(2**40, 8192)
    elapsed, peak = _decode_measured(reader, data)
    assert elapsed < 0.5
    assert peak < 1024 * 1024


def test_a_small_reader_limit_bounds_what_a_bomb_can_allocate() -> None:
    data = header(compression=COMPRESSION_ZSTD) + zstd_rle_frame(8 * RLE_BLOCK, 8)
    elapsed, peak = _decode_measured(Codec(max_value_size=64 * 1024), data)
    assert elapsed < 0.5
    assert peak < 256 * 1024


def test_a_legitimate_value_at_the_limit_decodes() -> None:
    codec = Codec(max_value_size=2 * 1024 * 1024)
    value = "b" * (2 * 1024 * 1024 - 2)
    data = codec.encode(value)
    assert len(data) < 10_000
    assert codec.decode(data) == value


def test_random_frames_are_not_slow(reader: Codec) -> None:
    started = time.perf_counter()
    rng = random.Random(5)
    for _ in range(2000):
        decodes_or_codec_error(reader, header(compression=rng.choice([0, 1])) + os.urandom(rng.randrange(200)))
    assert time.perf_counter() - started < 2.0


def test_codec_error_is_a_cache_error() -> None:
    assert issubclass(CodecError, CacheError)
    with pytest.raises(CacheError):
        Codec().decode(b"nope")


def test_encoded_header_round_trips_through_struct() -> None:
    data = Codec("msgpack").encode([1, 2], expires_at=12.345, recompute_time=0.5)
    fields = struct.unpack(">2sBBBBIQII", data[:26])
    assert fields == (b"CL", 2, 2, 0, 0, 0, 12345, 500000, zlib.crc32(data[26:]))
    v1 = Codec("msgpack", format_version=1).encode([1, 2], expires_at=12.345, recompute_time=0.5)
    assert struct.unpack(">2sBBBBIQI", v1[:22]) == (b"CL", 1, 2, 0, 0, 0, 12345, 500000)


# --------------------------------------------------------------------------- serving stored bytes unparsed

AUDIT_PAYLOADS: dict[str, tuple[int, int, bytes]] = {
    # name: (serializer id, compression, payload), each under a header that says "JSON" where it can
    "random-bytes": (1, COMPRESSION_NONE, random.Random(9).randbytes(300)),
    "truncated-json": (1, COMPRESSION_NONE, orjson.dumps(_samples(21, 5))[:-40]),
    "zstd-of-html": (
        1,
        COMPRESSION_ZSTD,
        zstandard.ZstdCompressor(write_checksum=True).compress(b"<html><body>502 Bad Gateway</body></html>" * 9),
    ),
    "msgpack-under-json": (1, COMPRESSION_NONE, Codec("msgpack").serializer.dumps(_samples(22, 5))),
    "serializer-9": (9, COMPRESSION_NONE, orjson.dumps(_samples(23, 2))),
}


def _audit_frames(name: str) -> list[bytes]:
    """The bad payload under a version 1 header and under version 2 headers whose CRC is some other payload's."""
    serializer, compression, payload = AUDIT_PAYLOADS[name]
    legit = Codec(compression="none").encode(_samples(24, 5))
    return [
        header(serializer=serializer, compression=compression) + payload,
        header(serializer=serializer, compression=compression, crc=int.from_bytes(legit[22:26], "big")) + payload,
        header(serializer=serializer, compression=compression, crc=0) + payload,
    ]


@pytest.mark.parametrize("name", sorted(AUDIT_PAYLOADS))
def test_every_audit_case_is_refused_by_the_unparsed_paths(reader: Codec, name: str) -> None:
    for data in _audit_frames(name):
        try:
            frame = reader.read_frame(data)
        except CodecError:
            continue  # refused at the header: serializer 9
        with pytest.raises(CodecError):
            reader.verified_body(frame)
        assert reader.verified_zstd_frame(frame) is None


def test_serializer_9_is_refused_at_the_header(reader: Codec) -> None:
    for data in _audit_frames("serializer-9"):
        with pytest.raises(CodecError, match="unknown serializer id 9"):
            reader.read_frame(data)


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize("format_version", [1, 2])
def test_verified_body_is_the_json_text(compression: Literal["none", "zstd"], format_version: Literal[1, 2]) -> None:
    codec = Codec(compression=compression, format_version=format_version)
    for value in VALUES:
        frame = codec.read_frame(codec.encode(value))
        assert bytes(codec.verified_body(frame)) == orjson.dumps(value)


def test_verified_zstd_frame_only_for_version_2_plain_zstd_json() -> None:
    value = {"page": _samples(25, 20)}
    data = Codec().encode(value)
    frame = Codec().read_frame(data)
    zframe = Codec().verified_zstd_frame(frame)
    assert zframe is not None
    assert zframe == data[HEADER_SIZE:]
    assert zstandard.ZstdDecompressor().decompress(zframe) == orjson.dumps(value)
    for other in (Codec(format_version=1), Codec("msgpack"), Codec(compression="none")):
        assert other.verified_zstd_frame(other.read_frame(other.encode(value))) is None


def test_a_damaged_crc_or_payload_is_refused_by_the_unparsed_paths() -> None:
    codec = Codec()
    for value in ({"page": _samples(26, 20)}, {"small": 1}):
        data = codec.encode(value)
        for offset in (OFF_CRC, OFF_CRC + 3, HEADER_SIZE, len(data) - 1):
            damaged = patched(data, offset, data[offset] ^ 0x01)
            frame = codec.read_frame(damaged)
            with pytest.raises(CodecError):
                codec.verified_body(frame)
            assert codec.verified_zstd_frame(frame) is None
            with pytest.raises(CodecError, match="CRC-32"):
                codec.verify(frame)


def test_a_msgpack_frame_has_no_http_body() -> None:
    codec = Codec("msgpack")
    with pytest.raises(CodecError, match="not JSON"):
        codec.verified_body(codec.read_frame(codec.encode({"a": 1})))


def test_version_1_frames_stay_readable(registry: DictionaryRegistry, dict_id: int) -> None:
    for ser in SERIALIZERS:
        for writer in (Codec(ser, format_version=1), Codec(ser, format_version=1, compression="none")):
            for value in VALUES:
                data = writer.encode(value, expires_at=5.5)
                assert data[OFF_VERSION] == 1
                frame = Codec(dictionaries=registry).read_frame(data)
                assert (frame.version, frame.checksum, frame.expires_at) == (1, None, 5.5)
                assert Codec(dictionaries=registry).decode(data) == value


def test_format_version_must_be_1_or_2() -> None:
    with pytest.raises(ValueError, match="format_version"):
        Codec(format_version=3)  # type: ignore[arg-type]
