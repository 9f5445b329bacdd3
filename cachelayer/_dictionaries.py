"""zstd dictionaries, and the registry that finds them by the id a frame names.

A dictionary is **raw content**: any bytes, loaded with ``ZSTD_dct_rawContent``, which is how a browser loads a
Compression Dictionary Transport dictionary (RFC 9842; Chromium loads every dictionary so). A frame compressed
with one is therefore what a browser holding the same dictionary file decodes as ``Content-Encoding: dcz``, and
a zstd frame made so carries no dictionary id: the cachelayer frame header names the dictionary instead, by the
first four bytes of its SHA-256 (:meth:`DictionaryRegistry.id_of`). :func:`train_dictionary` returns such bytes:
zstd's trained dictionary with its first four bytes (zstd's dictionary magic) replaced by ``CLrc``, so that no
reader, the ``zstd`` command's auto-detection included, takes it for zstd's own format.

A dictionary in zstd's trained format (it starts with zstd's magic, as ``train_dictionary`` returned before
2026-12-05) is still registered as such, by the id zstd wrote into it: frames written with it (compression 2)
stay readable, and a codec told to write with it writes them as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import zstandard

from ._errors import CodecError

__all__ = ["DictionaryRegistry", "train_dictionary"]

DEFAULT_DICTIONARY_SIZE: Final = 32 * 1024
ZSTD_DICT_MAGIC: Final = b"\x37\xa4\x30\xec"  # 0xEC30A437, little-endian: zstd's trained dictionary format
RAW_CONTENT_MARK: Final = b"CLrc"  # in its place in the raw content train_dictionary returns
_MIN_RAW_SIZE: Final = 64

Kind = Literal["raw", "trained"]


def train_dictionary(
    samples: Iterable[bytes], *, size: int = DEFAULT_DICTIONARY_SIZE, level: int = 3, form: Kind = "raw"
) -> bytes:
    """Train a zstd dictionary of at most ``size`` bytes on serialized sample values.

    Samples should look like what will be stored (serialized, uncompressed), and there should be many of them:
    zstd wants roughly a hundred times the dictionary size in total. The result is plain bytes, to be written to a
    file and deployed with the code (see "Dictionaries" in the README). ``form="raw"`` (the default): raw content,
    servable to browsers as is (module docstring); ``"trained"``: zstd's own format (compression 2 frames, which
    browsers cannot decode).
    """
    sample_list: list[bytes | bytearray | memoryview] = list(samples)
    if not sample_list:
        raise ValueError("train_dictionary needs at least one sample")
    trained = zstandard.train_dictionary(size, sample_list, level=level).as_bytes()
    if form == "trained":
        return trained
    if form != "raw":
        raise ValueError(f"form must be 'raw' or 'trained', not {form!r}")
    return RAW_CONTENT_MARK + trained[len(ZSTD_DICT_MAGIC) :]


@dataclass(frozen=True)
class _Dictionary:
    kind: Kind
    data: bytes
    sha256: bytes
    zdict: zstandard.ZstdCompressionDict
    decompressor: zstandard.ZstdDecompressor


class DictionaryRegistry:
    """The dictionaries a process can read (and, for the one a :class:`Codec` is told to use, write) with.

    Compressors and decompressors are built once per dictionary and reused, because building one with a
    dictionary costs up to ~60 us (shared/MEASUREMENTS.md), more than compressing a page. Like the zstandard
    objects it holds, a registry is meant for one thread (one event loop).
    """

    def __init__(self, dictionaries: Iterable[bytes] = ()) -> None:
        self._dicts: dict[int, _Dictionary] = {}
        self._compressors: dict[tuple[int, int], zstandard.ZstdCompressor] = {}
        for data in dictionaries:
            self.add(data)

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> DictionaryRegistry:
        return cls(Path(p).read_bytes() for p in paths)

    @classmethod
    def from_directory(cls, directory: str | Path, pattern: str = "*.zdict") -> DictionaryRegistry:
        return cls.from_files(sorted(Path(directory).glob(pattern)))

    @staticmethod
    def id_of(data: bytes) -> int:
        """The id frames name a dictionary by: for raw content, the first four bytes of its SHA-256 (big-endian);
        for a dictionary in zstd's trained format, the id zstd wrote into it."""
        if data[:4] == ZSTD_DICT_MAGIC:
            dict_id: int = zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_FULLDICT).dict_id()
            return dict_id
        return int.from_bytes(hashlib.sha256(data).digest()[:4], "big")

    def add(self, data: bytes) -> int:
        """Register a dictionary and return its id (:meth:`id_of`). Adding the same dictionary twice is harmless;
        two different dictionaries with one id are refused, and so is a dictionary whose id is 0."""
        data = bytes(data)
        trained = data[:4] == ZSTD_DICT_MAGIC
        if not trained and len(data) < _MIN_RAW_SIZE:
            raise ValueError(f"a dictionary of {len(data)} bytes is too small to help (at least {_MIN_RAW_SIZE})")
        dict_id = self.id_of(data)
        if dict_id == 0:
            raise ValueError(
                "dictionary has id 0: a trained dictionary needs an id (train it again), and raw content whose "
                "SHA-256 starts with four zero bytes cannot be named (change a byte)"
            )
        existing = self._dicts.get(dict_id)
        if existing is not None:
            if existing.data != data:
                raise ValueError(f"a different dictionary with id {dict_id} is already registered")
            return dict_id
        kind: Kind = "trained" if trained else "raw"
        zdict = zstandard.ZstdCompressionDict(
            data, dict_type=zstandard.DICT_TYPE_FULLDICT if trained else zstandard.DICT_TYPE_RAWCONTENT
        )
        try:
            # Build the decompressor now: a damaged file must fail here, at start-up, not on every read.
            decompressor = zstandard.ZstdDecompressor(dict_data=zdict)
            decompressor.decompress(zstandard.ZstdCompressor(dict_data=zdict).compress(b"probe"))
        except zstandard.ZstdError as exc:
            raise ValueError(f"dictionary {dict_id} is damaged: {exc}") from exc
        self._dicts[dict_id] = _Dictionary(kind, data, hashlib.sha256(data).digest(), zdict, decompressor)
        return dict_id

    def ids(self) -> list[int]:
        return sorted(self._dicts)

    def __contains__(self, dict_id: object) -> bool:
        return dict_id in self._dicts

    def kind(self, dict_id: int) -> Kind:
        """``"raw"`` (frames of compression 3) or ``"trained"`` (zstd's format: compression 2)."""
        return self._get(dict_id).kind

    def sha256(self, dict_id: int) -> bytes:
        """The dictionary's SHA-256: what a browser names it by (``Available-Dictionary``)."""
        return self._get(dict_id).sha256

    def data(self, dict_id: int) -> bytes:
        return self._get(dict_id).data

    def _get(self, dict_id: int) -> _Dictionary:
        found = self._dicts.get(dict_id)
        if found is None:
            raise KeyError(f"no dictionary with id {dict_id} is registered")
        return found

    def compressor(self, dict_id: int, level: int) -> zstandard.ZstdCompressor:
        compressor = self._compressors.get((dict_id, level))
        if compressor is None:
            found = self._get(dict_id)
            found.zdict.precompute_compress(level=level)
            compressor = zstandard.ZstdCompressor(
                level=level,
                dict_data=found.zdict,
                write_checksum=True,
                # a raw-content frame would carry no useful id (zstd's is 0 there): the header names it
                write_dict_id=found.kind == "trained",
            )
            self._compressors[(dict_id, level)] = compressor
        return compressor

    def decompressor(self, dict_id: int, kind: Kind | None = None) -> zstandard.ZstdDecompressor:
        """The decompressor of dictionary ``dict_id``; ``kind``: the form the frame says it was written with (a
        frame naming a raw dictionary's id as a trained one, or the reverse, was not written by it)."""
        found = self._dicts.get(dict_id)
        if found is None or (kind is not None and found.kind != kind):
            raise CodecError(f"value needs zstd dictionary {dict_id}, which this reader does not hold")
        return found.decompressor
