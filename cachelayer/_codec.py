"""The value frame: every byte string cachelayer stores in Redis.

A frame is a fixed header followed by the payload: 26 bytes in format version 2 (written by default), 22 in
version 1 (still read). All integers are big-endian.

======  ====  ===============  ==========================================================================
offset  size  field            meaning
======  ====  ===============  ==========================================================================
0       2     magic            ``b"CL"`` (0x43 0x4C): not a pickle (0x80), not a bare zstd frame (0x28 ...)
2       1     version          format version, 2 (or 1). A reader refuses versions it does not know
3       1     serializer       1 = orjson (JSON), 2 = msgpack; a reader refuses any other id
4       1     compression      0 = none, 1 = zstd, 2 = zstd with a trained dictionary
5       1     flags            reserved, 0; a frame with any flag set is refused
6       4     dictionary id    the zstd dictionary's id when compression = 2, else 0
10      8     expires at       logical expiry, Unix time in milliseconds; 0 = none
18      4     recompute time   how long the value took to compute, in microseconds (XFetch's delta)
22      4     payload CRC-32   version 2 only: ``zlib.crc32`` of the payload as stored (after compression)
22/26   ...   payload          serialized value; with compression 1 or 2, one standard zstd frame of it
======  ====  ===============  ==========================================================================

Flag 0x01 (version 2 only), **tagged**: between the header and the payload sits the entry's tag section, the
stamps of its tags when its load began (``_tags.py``): a count (1 byte), then per tag its name's length (1 byte),
its name (UTF-8) and its 16-byte stamp. The CRC then covers the flag byte, the section and the payload (clearing
the flag, which would read the section as payload, does not pass). A reader that knows no flags (before this
section existed) refuses such a frame: a miss, never a wrong value.

Decoding is total: any byte string decodes to a value or raises :class:`CodecError`, nothing else.

Every read path checks a version 2 frame's CRC before it uses the payload, once per frame: in
:meth:`Codec.serialized` (which ``value``, ``decode``, ``verified_body`` and typed ``loads`` go through) and in
:meth:`Codec.verified_zstd_frame`. A frame remembers that it passed, so a second path on the same frame (the
local tier, ``body()`` after ``value()``) does not pay again. The CRC covers the payload, not the header. A
single flipped header bit is refused by ``read_frame`` (magic, version, serializer, flags, an id out of range, a
dictionary id where none belongs), by the dictionary lookup or zstd (a dictionary id changed), or by a 4-byte
compare: compression 1 <-> 0 passes both the header checks and the CRC, and an uncompressed payload never starts
with the zstd magic number while a compression-1 payload always does. Expiry and recompute time are outside the
CRC on purpose (marking stale rewrites the expiry in place): a flip there changes freshness, never the value.
docs/value-format.md has the table. Version 1 frames carry no CRC and are not protected.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
import zstandard

from ._dictionaries import DictionaryRegistry
from ._errors import CodecError, ValueTooLargeError
from ._serializers import OrjsonSerializer, Serializer, serializer_by_id, serializer_by_name

_JSON_ID: Final = 1
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"  # 0xFD2FB528, little-endian: how every standard zstd frame starts
_KNOWN_SERIALIZERS: Final = frozenset({1, 2})

__all__ = [
    "COMPRESSION_NONE",
    "COMPRESSION_ZSTD",
    "COMPRESSION_ZSTD_DICT",
    "COMPRESSION_ZSTD_RAW_DICT",
    "EXPIRES_OFFSET",
    "FLAG_TAGGED",
    "FORMAT_VERSION",
    "INVALIDATED_AT",
    "INVALIDATED_FIELD",
    "STAMP_SIZE",
    "Codec",
    "Frame",
]

MAGIC: Final = b"CL"
FORMAT_VERSION: Final = 2
HEADER_V1: Final = struct.Struct(">2sBBBBIQI")
HEADER_V1_SIZE: Final = HEADER_V1.size  # 22
HEADER: Final = struct.Struct(">2sBBBBIQII")  # version 2: version 1's fields, then the payload's CRC-32
HEADER_SIZE: Final = HEADER.size  # 26
EXPIRES_OFFSET: Final = 10  # where the logical expiry sits, in every version: marking stale rewrites it
INVALIDATED_AT: Final = 0.001
"""The logical expiry (Unix seconds) of an entry marked stale by invalidation: reloaded, never revalidated in
the background, served only when the reload fails."""
INVALIDATED_FIELD: Final = round(INVALIDATED_AT * 1000).to_bytes(8, "big")
"""The expiry field's bytes that mark an entry stale, written in place at :data:`EXPIRES_OFFSET`."""

FLAG_TAGGED: Final = 0x01
STAMP_SIZE: Final = 16
_MAX_TAGS: Final = 255
_MAX_TAG_NAME: Final = 255
_TAGGED_CRC_SEED: Final = zlib.crc32(bytes((FLAG_TAGGED,)))  # a tagged frame's CRC starts from its flag byte

COMPRESSION_NONE: Final = 0
COMPRESSION_ZSTD: Final = 1
COMPRESSION_ZSTD_DICT: Final = 2  # zstd's trained-dictionary form, named by zstd's id (written before 2026-12-05)
COMPRESSION_ZSTD_RAW_DICT: Final = 3  # a raw-content dictionary, named by its SHA-256's first 4 bytes: dcz-ready

_MAX_U32: Final = 2**32 - 1
_MAX_U64: Final = 2**64 - 1
DEFAULT_MAX_VALUE_SIZE: Final = 16 * 1024 * 1024


@dataclass(slots=True)
class Frame:
    """A frame's header fields and its payload as stored (still compressed when ``compression`` says so).

    Not frozen: one is built on every hit, and a frozen dataclass is slower to build; and ``checked`` is set once
    the payload has passed its CRC, so that a frame held in the local tier is not checked on every hit.
    """

    serializer_id: int
    compression: int
    dictionary_id: int
    expires_at: float  # Unix seconds; 0.0 = none
    recompute_time: float  # seconds
    payload: memoryview
    version: int = FORMAT_VERSION
    checksum: int | None = None  # the header's CRC-32 of the payload; None in a version 1 frame
    checked: bool = field(default=False, compare=False, repr=False)
    tags: tuple[tuple[str, bytes], ...] = ()  # (tag, stamp) of a tagged frame, in the order it was written
    section: bytes = field(default=b"", compare=False, repr=False)  # the tag section as stored (under the CRC)

    @property
    def is_plain_zstd(self) -> bool:
        """True when the payload is a zstd frame any zstd reader can open (no dictionary needed)."""
        return self.compression == COMPRESSION_ZSTD


class Codec:
    """Encodes values into frames and decodes them back.

    ``level`` 1 is the default: on the wallpaper data set it stores about as small as level 3 and compresses
    faster (``python -m benchmarks.codecs``, results in benchmarks/results/codecs.md). Values smaller than
    ``min_size`` (``min_size_with_dictionary`` when a dictionary is used) are stored uncompressed, and so is any
    value whose compressed form is not smaller. ``max_value_size`` bounds the serialized size on write
    (:class:`ValueTooLargeError`) and the decompressed size on read (:class:`CodecError`). ``format_version`` 2
    (the default) writes the payload's CRC-32 into the header; 1 writes the old header, for rolling upgrades.

    Compressor and decompressor objects are built once and reused; a codec belongs to one thread.
    """

    def __init__(
        self,
        serializer: Literal["orjson", "msgpack"] | Serializer = "orjson",
        *,
        compression: Literal["zstd", "none"] = "zstd",
        level: int = 1,
        dictionaries: DictionaryRegistry | None = None,
        dictionary_id: int | None = None,
        min_size: int = 256,
        min_size_with_dictionary: int = 64,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        format_version: Literal[1, 2] = FORMAT_VERSION,
    ) -> None:
        self.serializer: Serializer = serializer_by_name(serializer) if isinstance(serializer, str) else serializer
        self._plain_json = type(self.serializer) is OrjsonSerializer
        if compression not in ("zstd", "none"):
            raise ValueError(f"compression must be 'zstd' or 'none', not {compression!r}")
        self.dictionaries = dictionaries if dictionaries is not None else DictionaryRegistry()
        if dictionary_id is not None:
            if compression != "zstd":
                raise ValueError("dictionary_id needs compression='zstd'")
            if dictionary_id not in self.dictionaries:
                raise ValueError(f"dictionary_id {dictionary_id} is not in the registry")
        self.compression = compression
        self.level = level
        self.dictionary_id = dictionary_id
        self.min_size = min_size_with_dictionary if dictionary_id is not None else min_size
        self.max_value_size = max_value_size
        if format_version not in (1, 2):
            raise ValueError(f"format_version must be 1 or 2, not {format_version!r}")
        # 1 only while a rolling upgrade still has readers that know no version 2: they treat 2 as a miss.
        self.format_version = format_version
        self._compressor = (
            self.dictionaries.compressor(dictionary_id, level)
            if dictionary_id is not None
            else zstandard.ZstdCompressor(level=level, write_checksum=True)
        )
        self._compression_id = COMPRESSION_ZSTD
        if dictionary_id is not None:
            raw = self.dictionaries.kind(dictionary_id) == "raw"
            self._compression_id = COMPRESSION_ZSTD_RAW_DICT if raw else COMPRESSION_ZSTD_DICT
        self._decompressor = zstandard.ZstdDecompressor()

    # -- writing ---------------------------------------------------------------------------------------------

    def encode(
        self,
        value: Any,
        *,
        expires_at: float = 0.0,
        recompute_time: float = 0.0,
        tags: Sequence[tuple[str, bytes]] = (),
    ) -> bytes:
        """Serialize, compress when it pays, and frame ``value``."""
        return self.encode_serialized(
            self.serializer.dumps(value), expires_at=expires_at, recompute_time=recompute_time, tags=tags
        )

    def encode_serialized(
        self,
        serialized: bytes,
        *,
        expires_at: float = 0.0,
        recompute_time: float = 0.0,
        tags: Sequence[tuple[str, bytes]] = (),
    ) -> bytes:
        """Frame bytes that this codec's serializer already produced; ``tags``: (tag, stamp) pairs for the tag
        section (a tagged frame is always a version 2 frame: version 1 has no room for it)."""
        size = len(serialized)
        if size > self.max_value_size:
            raise ValueTooLargeError(size, self.max_value_size)
        compression, dict_id, payload = COMPRESSION_NONE, 0, serialized
        if self.compression == "zstd" and size >= self.min_size:
            compressed = self._compressor.compress(serialized)
            if len(compressed) < size:
                compression, payload = self._compression_id, compressed
                dict_id = self.dictionary_id or 0
        section = _tag_section(tags) if tags else b""
        fields = (
            MAGIC,
            2 if tags else self.format_version,
            self.serializer.id,
            compression,
            FLAG_TAGGED if tags else 0,
            dict_id,
            _clamp(expires_at * 1000, _MAX_U64),
            _clamp(recompute_time * 1_000_000, _MAX_U32),
        )
        if self.format_version == 1 and not tags:
            return HEADER_V1.pack(*fields) + payload
        checksum = zlib.crc32(payload, zlib.crc32(section, _TAGGED_CRC_SEED)) if tags else zlib.crc32(payload)
        return HEADER.pack(*fields, checksum) + section + payload

    # -- reading ---------------------------------------------------------------------------------------------

    def read_frame(self, data: bytes) -> Frame:
        """Parse and check the header; the payload is left as stored (its CRC is checked by the paths that
        read it: :meth:`serialized`, :meth:`verified_zstd_frame`)."""
        if len(data) < HEADER_V1_SIZE:
            raise CodecError(f"value of {len(data)} bytes is shorter than a frame header")
        version = data[2]
        checksum: int | None
        if version == 2:
            if len(data) < HEADER_SIZE:
                raise CodecError(f"value of {len(data)} bytes is shorter than a version 2 frame header")
            magic, _, serializer_id, compression, flags, dict_id, expires_ms, recompute_us, checksum = (
                HEADER.unpack_from(data)
            )
            header_size = HEADER_SIZE
        elif version == 1:
            magic, _, serializer_id, compression, flags, dict_id, expires_ms, recompute_us = HEADER_V1.unpack_from(data)
            header_size, checksum = HEADER_V1_SIZE, None
        else:
            magic = data[:2]
        if magic != MAGIC:
            raise CodecError(f"not a cachelayer frame (starts with {bytes(data[:4])!r})")
        if version not in (1, 2):
            raise CodecError(f"frame format version {version} is not readable by this reader (reads 1 and 2)")
        if serializer_id not in _KNOWN_SERIALIZERS:
            raise CodecError(f"unknown serializer id {serializer_id}")
        tags: tuple[tuple[str, bytes], ...] = ()
        section = b""
        if flags:
            if flags != FLAG_TAGGED or version != 2:
                raise CodecError(f"frame has unknown flags 0x{flags:02x}")
            tags, section = _read_tag_section(data, header_size)
            header_size += len(section)
        if compression in (COMPRESSION_ZSTD_DICT, COMPRESSION_ZSTD_RAW_DICT):
            if dict_id == 0:
                raise CodecError("dictionary-compressed frame without a dictionary id")
        elif compression in (COMPRESSION_NONE, COMPRESSION_ZSTD):
            if dict_id != 0:
                raise CodecError("frame names a dictionary but is not dictionary-compressed")
        else:
            raise CodecError(f"unknown compression id {compression}")
        return Frame(
            serializer_id,
            compression,
            dict_id,
            expires_ms / 1000,
            recompute_us / 1_000_000,
            memoryview(data)[header_size:],
            version,
            checksum,
            tags=tags,
            section=section,
        )

    @staticmethod
    def verify(frame: Frame) -> None:
        """Check a version 2 frame's payload (and tag section) against its CRC-32 (once per frame); a version 1
        frame has none."""
        if frame.checked or frame.checksum is None:
            return
        section = frame.section
        crc = zlib.crc32(frame.payload, zlib.crc32(section, _TAGGED_CRC_SEED)) if section else zlib.crc32(frame.payload)
        if crc != frame.checksum:
            raise CodecError("payload does not match the header's CRC-32 (corrupt, truncated or foreign)")
        frame.checked = True

    def verified_body(self, frame: Frame) -> bytes | memoryview:
        """The JSON text of a JSON frame whose payload is verified, for serving without parsing.

        Version 2: :meth:`serialized` checks the CRC, then decompresses (zstd checks its own checksum too). The
        text is not parsed: the CRC proves these are the bytes a writer stored, not that the writer stored JSON
        (docs/value-format.md, "What the checksum protects"). Version 1 has no CRC: the text is parsed once to
        prove it is JSON. Anything else is :class:`CodecError`.
        """
        if frame.serializer_id != _JSON_ID:  # refused before any decompression
            raise CodecError(f"serializer id {frame.serializer_id} is not JSON: the bytes are no HTTP body")
        return self.json_body(frame, self.serialized(frame))

    @staticmethod
    def json_body(frame: Frame, serialized: bytes | memoryview) -> bytes | memoryview:
        """:meth:`verified_body`'s checks on what :meth:`serialized` already gave for ``frame``."""
        if frame.serializer_id != _JSON_ID:
            raise CodecError(f"serializer id {frame.serializer_id} is not JSON: the bytes are no HTTP body")
        if frame.checksum is None:
            try:
                orjson.loads(serialized)
            except orjson.JSONDecodeError as exc:
                raise CodecError(f"version 1 payload is not valid JSON: {exc}") from exc
        return serialized

    def verified_zstd_frame(self, frame: Frame) -> bytes | None:
        """The stored zstd frame, for ``Content-Encoding: zstd`` passthrough, when that is safe: a version 2,
        JSON, plain-zstd frame whose CRC checks. None otherwise (the caller serves :meth:`verified_body`)."""
        return self._passthrough(frame, COMPRESSION_ZSTD)

    def verified_dictionary_frame(self, frame: Frame) -> tuple[bytes, bytes] | None:
        """(the dictionary's SHA-256, the stored zstd frame) of a version 2 JSON frame compressed with a
        raw-content dictionary this codec holds, whose CRC checks: what a Compression Dictionary Transport
        answer (``Content-Encoding: dcz``) carries after its 8-byte magic. None otherwise."""
        dict_id = frame.dictionary_id
        if dict_id not in self.dictionaries or self.dictionaries.kind(dict_id) != "raw":
            return None
        payload = self._passthrough(frame, COMPRESSION_ZSTD_RAW_DICT)
        return None if payload is None else (self.dictionaries.sha256(dict_id), payload)

    def _passthrough(self, frame: Frame, compression: int) -> bytes | None:
        """The stored zstd frame of a version 2 JSON frame of ``compression`` whose CRC checks, else None."""
        if (
            frame.checksum is None
            or frame.serializer_id != _JSON_ID
            or frame.compression != compression
            # an uncompressed frame whose compression byte was flipped 0 -> 1: its CRC still holds
            or frame.payload[:4].tobytes() != _ZSTD_MAGIC
        ):
            return None
        try:
            self.verify(frame)
        except CodecError:
            return None
        return bytes(frame.payload)

    def serialized(self, frame: Frame) -> bytes | memoryview:
        """The frame's payload, CRC checked and decompressed: the serializer's bytes (JSON text for orjson)."""
        if frame.compression == COMPRESSION_NONE:
            if len(frame.payload) > self.max_value_size:
                raise CodecError(f"payload exceeds max_value_size={self.max_value_size}")
            # Neither JSON nor a single msgpack object starts so: a compressed frame whose compression byte was
            # flipped 1 -> 0, which its CRC (over the payload as stored) does not see.
            if frame.payload[:4].tobytes() == _ZSTD_MAGIC:
                raise CodecError("uncompressed payload is a zstd frame: the header's compression id is damaged")
            self.verify(frame)
            return frame.payload
        self.verify(frame)
        if frame.compression == COMPRESSION_ZSTD:
            decompressor = self._decompressor
        else:
            kind: Literal["raw", "trained"] = "raw" if frame.compression == COMPRESSION_ZSTD_RAW_DICT else "trained"
            decompressor = self.dictionaries.decompressor(frame.dictionary_id, kind)
        # zstd trusts a frame's declared size and allocates it; check it first so a hostile or corrupt value
        # cannot make us allocate gigabytes. Our writer always declares the size.
        try:
            declared = zstandard.frame_content_size(frame.payload)
        except zstandard.ZstdError as exc:
            raise CodecError(f"payload is not a zstd frame: {exc}") from exc
        if declared < 0:
            raise CodecError("zstd frame does not declare its size")
        if declared > self.max_value_size:
            raise CodecError(f"zstd frame declares {declared} bytes, over max_value_size={self.max_value_size}")
        try:
            return decompressor.decompress(frame.payload)
        except zstandard.ZstdError as exc:
            raise CodecError(f"zstd frame does not decompress: {exc}") from exc

    def value(self, frame: Frame) -> Any:
        """Decompress and deserialize the frame's payload."""
        return self.parse(frame, self.serialized(frame))

    def json_natives(self, frame: Frame) -> bool:
        """Whether :meth:`parse` gives ``frame``'s value as JSON natives only (dict with str keys, list, str, int,
        float, bool, None): a JSON frame read by this library's own orjson serializer."""
        return self._plain_json and frame.serializer_id == _JSON_ID

    def parse(self, frame: Frame, serialized: bytes | memoryview) -> Any:
        """Deserialize what :meth:`serialized` gave for ``frame`` (a new value on every call)."""
        if self._plain_json and frame.serializer_id == _JSON_ID:  # the default, without two frames of calls
            try:
                return orjson.loads(serialized)
            except orjson.JSONDecodeError as exc:
                raise CodecError(f"payload is not valid JSON: {exc}") from exc
        serializer = (
            self.serializer if frame.serializer_id == self.serializer.id else serializer_by_id(frame.serializer_id)
        )
        try:
            return serializer.loads(serialized)
        except CodecError:
            raise
        except Exception as exc:  # a third-party serializer's own error types: still not a crash
            raise CodecError(f"{serializer.name} could not read the payload: {exc}") from exc

    def decode(self, data: bytes) -> Any:
        """The value a frame holds, or :class:`CodecError`."""
        return self.value(self.read_frame(data))


def _tag_section(tags: Sequence[tuple[str, bytes]]) -> bytes:
    if len(tags) > _MAX_TAGS:
        raise ValueError(f"an entry carries at most {_MAX_TAGS} tags, not {len(tags)}")
    parts = [bytes((len(tags),))]
    for tag, stamp in tags:
        name = tag.encode()
        if len(name) > _MAX_TAG_NAME:
            raise ValueError(f"a tag is at most {_MAX_TAG_NAME} bytes of UTF-8, not {len(name)}: {tag[:40]!r}...")
        if len(stamp) != STAMP_SIZE:
            raise ValueError(f"a tag stamp is {STAMP_SIZE} bytes, not {len(stamp)}")
        parts += (bytes((len(name),)), name, stamp)
    return b"".join(parts)


def _read_tag_section(data: bytes, start: int) -> tuple[tuple[tuple[str, bytes], ...], bytes]:
    """The (tag, stamp) pairs and the raw section that starts at ``start``, or :class:`CodecError`."""
    end = len(data)
    if start >= end:
        raise CodecError("tagged frame ends before its tag section")
    count, at = data[start], start + 1
    tags = []
    for _ in range(count):
        if at >= end:
            raise CodecError("tag section is truncated")
        size = data[at]
        name_end = at + 1 + size
        if name_end + STAMP_SIZE > end:
            raise CodecError("tag section is truncated")
        try:
            name = bytes(data[at + 1 : name_end]).decode()
        except UnicodeDecodeError as exc:
            raise CodecError(f"tag name is not UTF-8: {exc}") from exc
        tags.append((name, bytes(data[name_end : name_end + STAMP_SIZE])))
        at = name_end + STAMP_SIZE
    return tuple(tags), bytes(data[start:at])


def _clamp(number: float, upper: int) -> int:
    if number != number or number < 0:  # NaN, or before the epoch
        return 0
    return upper if number >= upper else round(number)
