"""cachelayer: an asyncio cache over Redis with compressed values, tags and stampede protection."""

from ._backend import Backend, Message, StoreUnavailable, Subscription
from ._breaker import CircuitBreaker
from ._cache import Cache
from ._codec import Codec, Frame
from ._decorator import BoundCachedFunction, CachedFunction, cached, get_default_cache, set_default_cache
from ._dictionaries import DictionaryRegistry, train_dictionary
from ._entry import MISSING, CacheEntry, Missing, Outcome
from ._errors import (
    CacheError,
    CodecError,
    KeyEncodingError,
    LeaseTimeoutError,
    SerializationError,
    ValueTooLargeError,
)
from ._keys import canonical_bytes
from ._local import LocalCache
from ._memory_backend import MemoryBackend
from ._metrics import CacheMetrics, register_prometheus
from ._null_backend import NullBackend
from ._policy import EntryPolicy
from ._redis_backend import RedisBackend
from ._serializers import MsgpackSerializer, OrjsonSerializer, Serializer
from ._stampede import StampedePolicy

__version__ = "0.1.0"

__all__ = [
    "MISSING",
    "Backend",
    "BoundCachedFunction",
    "Cache",
    "CacheEntry",
    "CacheError",
    "CacheMetrics",
    "CachedFunction",
    "CircuitBreaker",
    "Codec",
    "CodecError",
    "DictionaryRegistry",
    "EntryPolicy",
    "Frame",
    "KeyEncodingError",
    "LeaseTimeoutError",
    "LocalCache",
    "MemoryBackend",
    "Message",
    "Missing",
    "MsgpackSerializer",
    "NullBackend",
    "OrjsonSerializer",
    "Outcome",
    "RedisBackend",
    "SerializationError",
    "Serializer",
    "StampedePolicy",
    "StoreUnavailable",
    "Subscription",
    "ValueTooLargeError",
    "__version__",
    "cached",
    "canonical_bytes",
    "get_default_cache",
    "register_prometheus",
    "set_default_cache",
    "train_dictionary",
]
