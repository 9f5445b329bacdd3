"""What a cache lookup hands back when the caller wants the stored bytes, not only the value."""

from __future__ import annotations

from typing import Any, Final, Literal

from ._codec import Codec, Frame

__all__ = ["CacheEntry", "Outcome"]

Outcome = Literal["hit", "miss", "stale"]

_UNSET: Final[Any] = object()


class CacheEntry:
    """A value as the cache holds it.

    ``outcome`` says how it was obtained: ``"hit"`` (fresh in Redis), ``"miss"`` (loaded now, or waited for
    another process's load) or ``"stale"`` (past its TTL, served while a refresh runs or because the loader
    failed). ``body()`` gives the serializer's bytes without parsing them (JSON text with the default codec),
    ``zstd_frame()`` the stored zstd frame when any zstd reader can open it, ``value()`` the decoded value.
    Values are shared between the callers of one load: treat them as read-only.
    """

    __slots__ = ("_body", "_codec", "_value", "frame", "outcome")

    def __init__(self, codec: Codec, frame: Frame, outcome: Outcome, *, value: Any = _UNSET, body: Any = None):
        self._codec = codec
        self.frame = frame
        self.outcome: Outcome = outcome
        self._value = value
        self._body: bytes | memoryview | None = body

    @property
    def expires_at(self) -> float:
        """Logical expiry, Unix seconds."""
        return self.frame.expires_at

    def value(self) -> Any:
        if self._value is _UNSET:
            self._value = self._codec.value(self.frame)
        return self._value

    def body(self) -> bytes:
        """The serialized value (decompressed): with the orjson serializer, the JSON text itself."""
        if self._body is None:
            self._body = self._codec.serialized(self.frame)
        return bytes(self._body)

    def zstd_frame(self) -> bytes | None:
        """The stored zstd frame, when it needs no dictionary: send it as ``Content-Encoding: zstd``."""
        return bytes(self.frame.payload) if self.frame.is_plain_zstd else None
