"""DictionaryRegistry and train_dictionary: ids, files, reuse of zstd objects, refusals.

Most tests here are about dictionaries in zstd's trained format (``dict_a``, ``dict_b``: compression 2 frames,
what cachelayer wrote before raw content, still read and written); the section "raw content" is about the form
``train_dictionary`` returns now (compression 3 frames, named by SHA-256, what a browser decodes as dcz)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from cachelayer import Codec, CodecError, DictionaryRegistry, train_dictionary
from cachelayer._codec import COMPRESSION_ZSTD_DICT, COMPRESSION_ZSTD_RAW_DICT
from cachelayer._dictionaries import RAW_CONTENT_MARK

_WORDS = ("wallpaper", "nature", "city", "壁纸", "高清", "风景", "abstract", "dark", "minimal", "space")


def _samples(seed: int, count: int = 300) -> list[bytes]:
    rng = random.Random(seed)
    return [
        orjson.dumps(
            {
                "id": i,
                "title": " ".join(rng.choice(_WORDS) for _ in range(4)),
                "tags": rng.sample(_WORDS, 3),
                "size": [rng.choice([1920, 2560, 3840]), rng.choice([1080, 1440, 2160])],
                "url": f"https://img.example.com/{rng.randrange(10**9):x}.jpg",
            }
        )
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def dict_a() -> bytes:
    return train_dictionary(_samples(1), size=8192, form="trained")


@pytest.fixture(scope="module")
def dict_b() -> bytes:
    return train_dictionary(_samples(2), size=4096, form="trained")


@pytest.fixture(scope="module")
def raw_a() -> bytes:
    return train_dictionary(_samples(1), size=8192)


def _zstd_id(data: bytes) -> int:
    dict_id: int = zstandard.ZstdCompressionDict(data).dict_id()
    return dict_id


# --------------------------------------------------------------------------- train_dictionary


def test_train_dictionary_returns_a_zstd_dictionary_with_an_id(dict_a: bytes) -> None:
    assert dict_a[:4] == b"\x37\xa4\x30\xec"  # zstd dictionary magic, little-endian 0xEC30A437
    assert 0 < len(dict_a) <= 8192
    assert _zstd_id(dict_a) != 0


def test_train_dictionary_accepts_any_iterable() -> None:
    data = train_dictionary(iter(_samples(3)), size=4096, form="trained")
    assert len(data) <= 4096
    assert _zstd_id(data) != 0


def test_train_dictionary_on_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        train_dictionary([])
    with pytest.raises(ValueError, match="at least one sample"):
        train_dictionary(iter(()))


# --------------------------------------------------------------------------- add / ids


def test_add_returns_the_zstd_dictionary_id(dict_a: bytes, dict_b: bytes) -> None:
    registry = DictionaryRegistry()
    assert registry.add(dict_a) == _zstd_id(dict_a)
    assert registry.add(dict_b) == _zstd_id(dict_b)
    assert registry.ids() == sorted([_zstd_id(dict_a), _zstd_id(dict_b)])
    assert _zstd_id(dict_a) in registry
    assert 12345 not in registry
    assert "x" not in registry


def test_adding_the_same_dictionary_twice_is_harmless(dict_a: bytes) -> None:
    registry = DictionaryRegistry([dict_a, dict_a])
    assert registry.add(dict_a) == _zstd_id(dict_a)
    assert registry.add(bytes(bytearray(dict_a))) == _zstd_id(dict_a)
    assert registry.ids() == [_zstd_id(dict_a)]


def test_a_different_dictionary_with_the_same_id_is_refused(dict_a: bytes) -> None:
    # zstd lets a trainer choose the id: train on other samples, give it dict_a's id.
    impostor = zstandard.train_dictionary(4096, list(_samples(9)), dict_id=_zstd_id(dict_a)).as_bytes()
    assert impostor != dict_a
    assert _zstd_id(impostor) == _zstd_id(dict_a)
    registry = DictionaryRegistry([dict_a])
    with pytest.raises(ValueError, match="different dictionary with id"):
        registry.add(impostor)
    # The first one stays.
    compressed = Codec(dictionaries=registry, dictionary_id=_zstd_id(dict_a)).encode(orjson.loads(_samples(1)[0]))
    assert Codec(dictionaries=DictionaryRegistry([dict_a])).decode(compressed) == orjson.loads(_samples(1)[0])


def test_a_dictionary_differing_in_one_content_byte_is_refused(dict_a: bytes) -> None:
    tampered = bytearray(dict_a)
    tampered[-1] ^= 0xFF  # the content section: the id in the header is unchanged
    assert _zstd_id(bytes(tampered)) == _zstd_id(dict_a)
    with pytest.raises(ValueError, match="different dictionary with id"):
        DictionaryRegistry([dict_a, bytes(tampered)])


@pytest.mark.parametrize(
    "raw",
    [b"just some shared content, not a trained dictionary" * 20, b'{"id": 1, "title": "wallpaper"}' * 50],
    ids=["text", "json"],
)
def test_any_content_is_a_raw_dictionary_named_by_its_sha256(raw: bytes) -> None:
    registry = DictionaryRegistry()
    dict_id = registry.add(raw)
    assert dict_id == int.from_bytes(hashlib.sha256(raw).digest()[:4], "big")
    assert registry.kind(dict_id) == "raw"
    assert registry.sha256(dict_id) == hashlib.sha256(raw).digest()
    with pytest.raises(ValueError, match="too small"):
        registry.add(b"tiny")


def test_a_trained_dictionary_whose_header_says_id_0_is_refused(dict_a: bytes) -> None:
    zeroed = dict_a[:4] + b"\x00\x00\x00\x00" + dict_a[8:]
    assert _zstd_id(zeroed) == 0
    with pytest.raises(ValueError, match="id 0"):
        DictionaryRegistry([zeroed])


# --------------------------------------------------------------------------- files


def test_from_files(tmp_path: Path, dict_a: bytes, dict_b: bytes) -> None:
    (tmp_path / "a.zdict").write_bytes(dict_a)
    (tmp_path / "b.bin").write_bytes(dict_b)
    registry = DictionaryRegistry.from_files([tmp_path / "a.zdict", str(tmp_path / "b.bin")])
    assert registry.ids() == sorted([_zstd_id(dict_a), _zstd_id(dict_b)])


def test_from_directory_loads_zdict_files_only(tmp_path: Path, dict_a: bytes, dict_b: bytes) -> None:
    (tmp_path / f"{_zstd_id(dict_a)}.zdict").write_bytes(dict_a)
    (tmp_path / f"{_zstd_id(dict_b)}.zdict").write_bytes(dict_b)
    (tmp_path / "README.txt").write_text("not a dictionary")
    registry = DictionaryRegistry.from_directory(tmp_path)
    assert registry.ids() == sorted([_zstd_id(dict_a), _zstd_id(dict_b)])


def test_from_directory_with_a_pattern(tmp_path: Path, dict_a: bytes, dict_b: bytes) -> None:
    (tmp_path / "current.dict").write_bytes(dict_a)
    (tmp_path / "old.zdict").write_bytes(dict_b)
    assert DictionaryRegistry.from_directory(tmp_path, pattern="*.dict").ids() == [_zstd_id(dict_a)]


def test_from_directory_of_an_empty_directory(tmp_path: Path) -> None:
    assert DictionaryRegistry.from_directory(tmp_path).ids() == []


def test_from_directory_loads_raw_and_trained_files_alike(tmp_path: Path, dict_a: bytes, raw_a: bytes) -> None:
    (tmp_path / "a.zdict").write_bytes(dict_a)
    (tmp_path / "b.zdict").write_bytes(raw_a)
    registry = DictionaryRegistry.from_directory(tmp_path)
    assert registry.ids() == sorted([_zstd_id(dict_a), DictionaryRegistry.id_of(raw_a)])
    assert {registry.kind(i) for i in registry.ids()} == {"raw", "trained"}
    (tmp_path / "c.zdict").write_bytes(b"too short")  # any bytes are raw content, but a few help nothing
    with pytest.raises(ValueError, match="too small"):
        DictionaryRegistry.from_directory(tmp_path)


# --------------------------------------------------------------------------- compressor / decompressor objects


def test_compressor_objects_are_built_once_and_reused(dict_a: bytes) -> None:
    registry = DictionaryRegistry([dict_a])
    dict_id = _zstd_id(dict_a)
    first = registry.compressor(dict_id, 1)
    assert registry.compressor(dict_id, 1) is first
    assert registry.compressor(dict_id, 3) is not first  # one per level
    assert registry.compressor(dict_id, 3) is registry.compressor(dict_id, 3)


def test_decompressor_objects_are_built_once_and_reused(dict_a: bytes) -> None:
    registry = DictionaryRegistry([dict_a])
    dict_id = _zstd_id(dict_a)
    assert registry.decompressor(dict_id) is registry.decompressor(dict_id)


def test_codecs_sharing_a_registry_share_its_compressor(dict_a: bytes) -> None:
    registry = DictionaryRegistry([dict_a])
    dict_id = _zstd_id(dict_a)
    before = registry.compressor(dict_id, 1)
    one = Codec(dictionaries=registry, dictionary_id=dict_id)
    two = Codec("msgpack", dictionaries=registry, dictionary_id=dict_id)
    value = orjson.loads(_samples(1)[5])
    assert one.decode(one.encode(value)) == value
    assert two.decode(two.encode(value)) == value
    assert registry.compressor(dict_id, 1) is before


def test_compressor_for_an_unknown_id_is_a_key_error(dict_a: bytes) -> None:
    with pytest.raises(KeyError, match="no dictionary with id"):
        DictionaryRegistry([dict_a]).compressor(_zstd_id(dict_a) + 1, 1)


def test_decompressor_for_an_unknown_id_is_a_codec_error(dict_a: bytes) -> None:
    with pytest.raises(CodecError, match="does not hold"):
        DictionaryRegistry([dict_a]).decompressor(_zstd_id(dict_a) + 1)
    with pytest.raises(CodecError, match="does not hold"):
        DictionaryRegistry().decompressor(1)


def test_frames_carry_the_dictionary_id_in_both_headers(dict_a: bytes) -> None:
    registry = DictionaryRegistry([dict_a])
    dict_id = _zstd_id(dict_a)
    codec = Codec(dictionaries=registry, dictionary_id=dict_id)
    value: Any = orjson.loads(_samples(1)[7])
    frame = codec.read_frame(codec.encode(value))
    assert frame.compression == COMPRESSION_ZSTD_DICT
    assert frame.dictionary_id == dict_id
    params = zstandard.get_frame_parameters(bytes(frame.payload))
    assert params.dict_id == dict_id  # so `zstd -D file` can check it is the right dictionary
    assert params.has_checksum


def test_a_dictionary_pays_on_small_values(dict_a: bytes) -> None:
    registry = DictionaryRegistry([dict_a])
    with_dict = Codec(dictionaries=registry, dictionary_id=_zstd_id(dict_a))
    without = Codec(min_size=0)
    values = [orjson.loads(s) for s in _samples(1, 350)[300:]]  # not in the training set
    size_with = sum(len(with_dict.encode(v)) for v in values)
    size_without = sum(len(without.encode(v)) for v in values)
    assert size_with < 0.8 * size_without


def test_codec_refuses_a_dictionary_id_missing_from_its_registry(dict_a: bytes) -> None:
    with pytest.raises(ValueError, match="not in the registry"):
        Codec(dictionaries=DictionaryRegistry([dict_a]), dictionary_id=_zstd_id(dict_a) + 1)
    with pytest.raises(ValueError, match="not in the registry"):
        Codec(dictionary_id=_zstd_id(dict_a))


def test_codec_refuses_a_dictionary_without_compression(dict_a: bytes) -> None:
    with pytest.raises(ValueError, match="needs compression='zstd'"):
        Codec(compression="none", dictionaries=DictionaryRegistry([dict_a]), dictionary_id=_zstd_id(dict_a))


# ------------------------------------------------------------------ raw content (what train_dictionary returns)


def test_train_dictionary_returns_raw_content_no_reader_takes_for_zstds_format(raw_a: bytes, dict_a: bytes) -> None:
    assert raw_a[:4] == RAW_CONTENT_MARK  # zstd's magic replaced: the zstd command's auto-detection loads it raw
    assert raw_a[4:] == dict_a[4:]  # the same training (same samples and size) as the trained form
    registry = DictionaryRegistry([raw_a])
    assert registry.kind(DictionaryRegistry.id_of(raw_a)) == "raw"


def test_raw_frames_name_the_dictionary_in_the_header_only_and_decode_as_a_browser_would(raw_a: bytes) -> None:
    registry = DictionaryRegistry([raw_a])
    dict_id = DictionaryRegistry.id_of(raw_a)
    codec = Codec(dictionaries=registry, dictionary_id=dict_id)
    value: Any = orjson.loads(_samples(1)[7])
    frame = codec.read_frame(codec.encode(value))
    assert frame.compression == COMPRESSION_ZSTD_RAW_DICT
    assert frame.dictionary_id == dict_id
    payload = bytes(frame.payload)
    params = zstandard.get_frame_parameters(payload)
    assert params.dict_id == 0  # a raw-content frame: the cachelayer header names the dictionary
    assert params.has_checksum
    # What a Compression Dictionary Transport client does: load the same bytes as raw content, decompress.
    browser = zstandard.ZstdDecompressor(
        dict_data=zstandard.ZstdCompressionDict(raw_a, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    )
    assert orjson.loads(browser.decompress(payload)) == value
    assert codec.decode(codec.encode(value)) == value


def test_a_raw_frame_without_its_dictionary_or_with_another_is_a_codec_error(raw_a: bytes, dict_a: bytes) -> None:
    registry = DictionaryRegistry([raw_a])
    data = Codec(dictionaries=registry, dictionary_id=registry.ids()[0]).encode(orjson.loads(_samples(1)[9]))
    with pytest.raises(CodecError, match="does not hold"):
        Codec().decode(data)
    other = train_dictionary(_samples(5), size=4096)
    impostor = Codec(dictionaries=DictionaryRegistry([other]))
    with pytest.raises(CodecError, match="does not hold"):
        impostor.decode(data)
    # A trained dictionary registered under the id the frame names is not the raw one it was written with.
    frame = bytearray(data)
    frame[6:10] = _zstd_id(dict_a).to_bytes(4, "big")
    with pytest.raises(CodecError):
        Codec(dictionaries=DictionaryRegistry([dict_a])).decode(bytes(frame))


def test_frames_written_with_a_trained_dictionary_stay_readable_beside_raw_ones(dict_a: bytes, raw_a: bytes) -> None:
    registry = DictionaryRegistry([dict_a, raw_a])
    old = Codec(dictionaries=registry, dictionary_id=_zstd_id(dict_a))
    new = Codec(dictionaries=registry, dictionary_id=DictionaryRegistry.id_of(raw_a))
    value: Any = orjson.loads(_samples(1)[11])
    assert old.read_frame(old.encode(value)).compression == COMPRESSION_ZSTD_DICT
    assert new.decode(old.encode(value)) == value
    assert old.decode(new.encode(value)) == value


def test_a_raw_dictionary_pays_on_small_values(raw_a: bytes) -> None:
    registry = DictionaryRegistry([raw_a])
    with_dict = Codec(dictionaries=registry, dictionary_id=registry.ids()[0])
    without = Codec(min_size=0)
    values = [orjson.loads(s) for s in _samples(1, 350)[300:]]  # not in the training set
    assert sum(len(with_dict.encode(v)) for v in values) < 0.8 * sum(len(without.encode(v)) for v in values)
