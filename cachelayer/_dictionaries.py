"""Trained zstd dictionaries and the registry that finds them by id.

A dictionary's id is the one zstd wrote into it when it was trained; every frame compressed with it carries that
id, so readers pick the right dictionary without any configuration beyond "which dictionaries do I hold".
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import zstandard

from ._errors import CodecError

__all__ = ["DictionaryRegistry", "train_dictionary"]

DEFAULT_DICTIONARY_SIZE = 32 * 1024


def train_dictionary(samples: Iterable[bytes], *, size: int = DEFAULT_DICTIONARY_SIZE, level: int = 3) -> bytes:
    """Train a zstd dictionary of at most ``size`` bytes on serialized sample values.

    Samples should look like what will be stored (serialized, uncompressed), and there should be many of them:
    zstd wants roughly a hundred times the dictionary size in total. The result is plain bytes, to be written to a
    file and deployed with the code (see "Rolling out a dictionary" in the README).
    """
    sample_list: list[bytes | bytearray | memoryview] = list(samples)
    if not sample_list:
        raise ValueError("train_dictionary needs at least one sample")
    trained = zstandard.train_dictionary(size, sample_list, level=level)
    return trained.as_bytes()


class DictionaryRegistry:
    """The dictionaries a process can read (and, for the one a :class:`Codec` is told to use, write) with.

    Compressors and decompressors are built once per dictionary and reused, because building one with a
    dictionary costs up to ~60 us (shared/MEASUREMENTS.md), more than compressing a page. Like the zstandard
    objects it holds, a registry is meant for one thread (one event loop).
    """

    def __init__(self, dictionaries: Iterable[bytes] = ()) -> None:
        self._dicts: dict[int, zstandard.ZstdCompressionDict] = {}
        self._compressors: dict[tuple[int, int], zstandard.ZstdCompressor] = {}
        self._decompressors: dict[int, zstandard.ZstdDecompressor] = {}
        for data in dictionaries:
            self.add(data)

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> DictionaryRegistry:
        return cls(Path(p).read_bytes() for p in paths)

    @classmethod
    def from_directory(cls, directory: str | Path, pattern: str = "*.zdict") -> DictionaryRegistry:
        return cls.from_files(sorted(Path(directory).glob(pattern)))

    def add(self, data: bytes) -> int:
        """Register a trained dictionary and return its id. Adding the same dictionary twice is harmless;
        two different dictionaries with one id are refused."""
        zdict = zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_FULLDICT)
        dict_id = zdict.dict_id()
        if dict_id == 0:
            raise ValueError("dictionary has id 0: only trained dictionaries (with an id) can be registered")
        try:
            # Build the decompressor now: a damaged file must fail here, at start-up, not on every read.
            decompressor = zstandard.ZstdDecompressor(dict_data=zdict)
            decompressor.decompress(zstandard.ZstdCompressor(dict_data=zdict).compress(b"probe"))
        except zstandard.ZstdError as exc:
            raise ValueError(f"dictionary {dict_id} is damaged: {exc}") from exc
        existing = self._dicts.get(dict_id)
        if existing is not None:
            if existing.as_bytes() != data:
                raise ValueError(f"a different dictionary with id {dict_id} is already registered")
            return dict_id
        self._dicts[dict_id] = zdict
        self._decompressors[dict_id] = decompressor
        return dict_id

    def ids(self) -> list[int]:
        return sorted(self._dicts)

    def __contains__(self, dict_id: object) -> bool:
        return dict_id in self._dicts

    def compressor(self, dict_id: int, level: int) -> zstandard.ZstdCompressor:
        compressor = self._compressors.get((dict_id, level))
        if compressor is None:
            zdict = self._dicts.get(dict_id)
            if zdict is None:
                raise KeyError(f"no dictionary with id {dict_id} is registered")
            zdict.precompute_compress(level=level)
            compressor = zstandard.ZstdCompressor(level=level, dict_data=zdict, write_checksum=True)
            self._compressors[(dict_id, level)] = compressor
        return compressor

    def decompressor(self, dict_id: int) -> zstandard.ZstdDecompressor:
        decompressor = self._decompressors.get(dict_id)  # built by add(), beside the dictionary
        if decompressor is None:
            raise CodecError(f"value needs zstd dictionary {dict_id}, which this reader does not hold")
        return decompressor
