"""What a cache lookup hands back: the value, its stored bytes, and how it was obtained."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

from ._codec import INVALIDATED_AT, Codec, Frame

__all__ = ["MISSING", "CacheEntry", "Missing", "Outcome"]

T = TypeVar("T")


class Outcome(enum.StrEnum):
    """How an entry was obtained. A ``str``: ``entry.outcome == "hit"`` works."""

    HIT = "hit"
    """Fresh in the store (or the local tier)."""
    STALE = "stale"
    """Past its TTL: served while a refresh runs, because the loader failed, or a lease wait ran out."""
    MISS = "miss"
    """Loaded now (or waited for another process's load), and stored."""
    FAIL_OPEN = "fail_open"
    """Loaded now because the store was unavailable; not stored."""
    BYPASS = "bypass"
    """The cache is disabled (:meth:`Cache.disabled`): loaded now, never stored."""


class Missing(enum.Enum):
    """The type of :data:`MISSING`."""

    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = Missing.MISSING
"""Pass as ``default`` to :meth:`Cache.get` to tell a cached ``None`` from a miss."""

_UNSET: Final[Any] = object()


class CacheEntry(Generic[T]):
    """A value as the cache holds it.

    ``outcome`` says how it was obtained (:class:`Outcome`). ``body()`` gives the serializer's bytes without
    parsing them (JSON text with the default codec), ``zstd_frame()`` the stored zstd frame when any zstd reader
    can open it, ``value()`` the value (typed when the cache was given a value type). Values are shared between
    the callers of one load: treat them as read-only.
    """

    __slots__ = ("_body", "_codec", "_dumps", "_loads", "_value", "frame", "outcome")

    def __init__(
        self,
        codec: Codec,
        frame: Frame | None,
        outcome: Outcome,
        *,
        value: Any = _UNSET,
        body: bytes | memoryview | None = None,
        loads: Callable[[bytes | memoryview], T] | None = None,
        dumps: Callable[[T], bytes] | None = None,
    ) -> None:
        self._codec = codec
        self.frame = frame
        self.outcome = outcome
        self._value = value
        self._body = body
        self._loads = loads
        self._dumps = dumps

    @property
    def expires_at(self) -> float:
        """Logical expiry, Unix seconds (0.0 when nothing was stored; for an :attr:`invalidated` entry, a moment
        in 1970 that says so, not a time to count from)."""
        return 0.0 if self.frame is None else self.frame.expires_at

    @property
    def invalidated(self) -> bool:
        """A write marked this entry stale (``invalidate_tags(..., mark_stale=True)``): served only while its reload
        runs or fails; it has no remaining or past freshness to tell (its :attr:`expires_at` means nothing)."""
        return self.frame is not None and self.frame.expires_at == INVALIDATED_AT

    def value(self) -> T:
        if self._value is _UNSET:
            frame = self.frame
            assert frame is not None  # an entry without a frame is always built with its value
            if self._loads is None:
                self._value = self._codec.value(frame)
            else:
                self._value = self._loads(self._codec.serialized(frame))
        return self._value  # type: ignore[no-any-return]

    def body(self) -> bytes:
        """The serialized value (decompressed): with the orjson serializer, the JSON text itself."""
        if self._body is None:
            if self.frame is None:  # nothing was stored (bypass, unstorable): serialize the value now
                dumps = self._dumps if self._dumps is not None else self._codec.serializer.dumps
                self._body = dumps(self._value)
            else:
                self._body = self._codec.serialized(self.frame)
        return bytes(self._body)

    def zstd_frame(self) -> bytes | None:
        """The stored zstd frame of a JSON value, when it needs no dictionary and its checksum holds: send it as
        ``Content-Encoding: zstd`` (None: send :meth:`body`)."""
        return None if self.frame is None else self._codec.verified_zstd_frame(self.frame)

    def dictionary_frame(self) -> tuple[bytes, bytes] | None:
        """(the dictionary's SHA-256, the stored zstd frame) of a JSON value stored with a raw-content dictionary,
        when its checksum holds: what a ``Content-Encoding: dcz`` answer carries (None: send something else)."""
        return None if self.frame is None else self._codec.verified_dictionary_frame(self.frame)

    def __repr__(self) -> str:
        return f"<CacheEntry {self.outcome.value} expires_at={self.expires_at:.3f}>"
