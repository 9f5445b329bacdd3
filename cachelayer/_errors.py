"""The library's exceptions: one base class, one subclass per thing a caller may want to catch."""

from __future__ import annotations

__all__ = [
    "CacheError",
    "CodecError",
    "KeyEncodingError",
    "LeaseTimeoutError",
    "SerializationError",
    "ValueTooLargeError",
]


class CacheError(Exception):
    """Base class of every exception raised by cachelayer."""


class CodecError(CacheError):
    """Stored bytes could not be decoded: corrupt, truncated, foreign, from a future format, or needing a
    dictionary this reader lacks. The cache treats it as a miss."""


class SerializationError(CacheError, TypeError):
    """A value could not be serialized (an unsupported type, or a dict with non-string keys)."""


class ValueTooLargeError(CacheError, ValueError):
    """A value is larger than the codec's ``max_value_size``; it is refused on write, never truncated."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"value of {size} bytes exceeds max_value_size={limit}")
        self.size = size
        self.limit = limit


class KeyEncodingError(CacheError, TypeError):
    """An argument of a cached function has no canonical encoding, so no key can be built from it."""


class LeaseTimeoutError(CacheError, TimeoutError):
    """Another process held the load lease for longer than this caller was willing to wait, no stale value
    existed, and the lease-timeout policy is ``"raise"``."""
