"""Compression Dictionary Transport (RFC 9842) for the cached routes: the dictionary the cache stores with,
served to browsers as a resource, and the ``dcz`` answer built from a stored frame without recompressing it.

A value stored with the dictionary (a raw-content one, compression 3) is a zstd frame a browser holding the same
dictionary decodes: the answer is 8 magic bytes, the dictionary's SHA-256 and that frame (``dcz_body``). Answers
name the dictionary with ``Link: <...>; rel="compression-dictionary"``; the browser fetches it once (cacheable
for a year: its URL names its id, so a new dictionary is a new URL) and sends ``Available-Dictionary:
:<base64 SHA-256>:`` with ``Accept-Encoding: ..., dcz`` from then on. A client that holds another dictionary
(an old one, after a rotation) or none gets the usual encodings. A zstd-only client gets no zstd passthrough of
a dictionary frame (it could not decode it): gzip or identity.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Final

from cachelayer import DictionaryRegistry

__all__ = ["DCZ_MAGIC", "ONE_YEAR", "ServedDictionary", "available_dictionary", "dcz_body"]

DCZ_MAGIC: Final = b"\x5e\x2a\x4d\x18\x20\x00\x00\x00"
ONE_YEAR: Final = 365 * 86_400


@dataclass(frozen=True)
class ServedDictionary:
    """The dictionary the cache writes with, as the service serves it."""

    dict_id: int
    data: bytes
    sha256: bytes
    path: str  # /dictionaries/<id>.zdict
    match: str  # the URL pattern (RFC 9842 ``match``) of the answers it applies to
    link: str = field(init=False)  # the Link header value every cached answer carries: formatted once

    def __post_init__(self) -> None:
        object.__setattr__(self, "link", f'<{self.path}>; rel="compression-dictionary"')

    @classmethod
    def of(cls, registry: DictionaryRegistry, dict_id: int, match: str) -> ServedDictionary:
        return cls(dict_id, registry.data(dict_id), registry.sha256(dict_id), f"/dictionaries/{dict_id}.zdict", match)

    @property
    def use_as_dictionary(self) -> str:
        return f'match="{self.match}", id="{self.dict_id}"'

    @property
    def etag(self) -> str:
        return f'"{self.sha256.hex()}"'


_AVAILABLE: dict[str, bytes | None] = {}


def available_dictionary(header: str | None) -> bytes | None:
    """The SHA-256 an ``Available-Dictionary`` header names (a structured-field byte sequence: ``:base64:``), or
    None when absent or malformed. Memoized per value (bounded): clients hold one or two dictionaries."""
    if header is None:
        return None
    digest = _AVAILABLE.get(header, b"")
    if digest == b"":  # not seen yet (b"" is no digest: those are 32 bytes)
        if len(_AVAILABLE) >= 256:
            _AVAILABLE.clear()
        digest = _AVAILABLE[header] = _parse_available(header)
    return digest


def _parse_available(header: str) -> bytes | None:
    text = header.strip()
    if len(text) < 3 or text[0] != ":" or text[-1] != ":":
        return None
    try:
        digest = base64.b64decode(text[1:-1], validate=True)
    except (binascii.Error, ValueError):
        return None
    return digest if len(digest) == 32 else None


def dcz_body(sha256: bytes, zstd_frame: bytes) -> bytes:
    """A ``Content-Encoding: dcz`` body: magic, the dictionary's SHA-256, the zstd frame."""
    return DCZ_MAGIC + sha256 + zstd_frame
