"""The library's exceptions: one base class, one subclass per thing a caller may want to catch."""

from __future__ import annotations

__all__ = [
    "CacheClosedError",
    "CacheError",
    "CodecError",
    "ConfigurationError",
    "DeadlineExceededError",
    "KeyEncodingError",
    "LeaseTimeoutError",
    "LoadFailedError",
    "SerializationError",
    "StoreConnectError",
    "ValueTooLargeError",
    "WrongEventLoopError",
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


class DeadlineExceededError(LeaseTimeoutError):
    """The caller's deadline (``Cache.fetch(deadline=...)`` or an enclosing :func:`cachelayer.time_budget`) ran out
    while it waited for another caller's load of the key, and no stale value existed. The load goes on for whoever
    else waits for it."""


class LoadFailedError(CacheError):
    """The load this caller waited for, in another process, failed, and no stale value existed: the caller gets the
    failure at once instead of loading in its turn (``StampedePolicy(share_failures=False)`` loads instead).
    ``error_type`` is the qualified name of the loader's exception there, ``reason`` its message (cut to 300
    characters)."""

    def __init__(self, key: str, error_type: str, reason: str) -> None:
        super().__init__(f"the load of {key} in another process failed: {error_type}: {reason}")
        self.key = key
        self.error_type = error_type
        self.reason = reason


# Mistakes: raised at the call that made them, with the fix in the message. Outages never raise (they fail open),
# except at Cache.connect(), where the application asked to know (StoreConnectError).


class ConfigurationError(CacheError, ValueError):
    """The cache or its store was configured wrongly: a malformed URL, an unknown scheme, a port or database that
    is not a number, an option out of range. Raised when the cache is built, never later."""


class CacheClosedError(CacheError, RuntimeError):
    """The cache (or its backend) was used after ``aclose()``. A closed cache stays closed: build a new one."""


class WrongEventLoopError(CacheError, RuntimeError):
    """A client given to the cache is bound to another event loop than the running one and cannot be copied to
    this loop. Pass a factory (``RedisBackend(lambda: RedisCluster(...))``) or use ``Cache.from_url``."""


class StoreConnectError(CacheError, ConnectionError):
    """``Cache.connect()`` could not use the store: nothing listens there, the password is wrong, the database
    index does not exist. ``store`` names it (``host:port``), ``reason`` is the store's own message. At run time
    the same conditions fail open instead."""

    def __init__(self, store: str, reason: str) -> None:
        super().__init__(f"cannot use the cache store at {store}: {reason}")
        self.store = store
        self.reason = reason
