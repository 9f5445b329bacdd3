"""cachelayer: an asyncio cache over Redis with compressed values, tags and stampede protection."""

from ._breaker import CircuitBreaker
from ._cache import MISSING, Cache
from ._codec import Codec, Frame
from ._decorator import BoundCachedFunction, CachedFunction, cached, get_default_cache, set_default_cache
from ._dictionaries import DictionaryRegistry, train_dictionary
from ._entry import CacheEntry, Outcome
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
from ._metrics import CacheMetrics, register_prometheus
from ._serializers import MsgpackSerializer, OrjsonSerializer, Serializer
from ._stampede import StampedePolicy

__version__ = "0.1.0"

__all__ = [
    "MISSING",
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
    "Frame",
    "KeyEncodingError",
    "LeaseTimeoutError",
    "LocalCache",
    "MsgpackSerializer",
    "OrjsonSerializer",
    "Outcome",
    "SerializationError",
    "Serializer",
    "StampedePolicy",
    "ValueTooLargeError",
    "__version__",
    "cached",
    "canonical_bytes",
    "get_default_cache",
    "register_prometheus",
    "set_default_cache",
    "train_dictionary",
]
