"""cachelayer: an asyncio cache over Redis with compressed values, tags and stampede protection."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._backend import Backend, Message, StoreUnavailable, Subscription
from ._backoff import Backoff, ExponentialBackoff
from ._breaker import CircuitBreaker
from ._cache import Cache
from ._canonical import canonical_bytes
from ._codec import Codec, Frame
from ._deadline import current_deadline, time_budget
from ._decorator import BoundCachedFunction, CachedFunction, cached, get_default_cache, set_default_cache
from ._dictionaries import DictionaryRegistry, train_dictionary
from ._entry import MISSING, CacheEntry, Missing, Outcome
from ._errors import (
    CacheClosedError,
    CacheError,
    CodecError,
    ConfigurationError,
    DeadlineExceededError,
    KeyEncodingError,
    LeaseTimeoutError,
    LoadFailedError,
    SerializationError,
    StoreConnectError,
    ValueTooLargeError,
    WrongEventLoopError,
)
from ._guard import Guard, GuardedBackend
from ._hooks import CacheHooks, FetchHooks, FetchOutcome, Tier, add_global_hooks, remove_global_hooks
from ._local import LocalCache
from ._memory_backend import MemoryBackend
from ._metrics import CacheMetrics, register_prometheus
from ._monitor import ConsistencyMonitor
from ._null_backend import NullBackend
from ._options import StoreOptions
from ._policy import EntryPolicy
from ._redis_backend import RedisBackend
from ._serializers import MsgpackSerializer, OrjsonSerializer, Serializer
from ._stampede import StampedePolicy
from ._urls import backend_from_url, register_scheme, registered_schemes

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from ._otel import OpenTelemetryHooks

__version__ = "0.1.0"


def instrument_opentelemetry(
    cache: Cache | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    *,
    record_keys: bool = False,
    defer_hit_spans: bool = True,
) -> OpenTelemetryHooks:
    """Trace and measure fetches with OpenTelemetry: ``cache``'s, or every cache's when None (the ``otel`` extra;
    docs/observability.md). Imported on call, so cachelayer imports without OpenTelemetry installed. Hit spans are
    made in batches after the fact unless ``defer_hit_spans=False`` (``hooks.flush()`` makes them now)."""
    from ._otel import instrument_opentelemetry as instrument

    return instrument(cache, tracer_provider, meter_provider, record_keys=record_keys, defer_hit_spans=defer_hit_spans)


__all__ = [
    "MISSING",
    "Backend",
    "Backoff",
    "BoundCachedFunction",
    "Cache",
    "CacheClosedError",
    "CacheEntry",
    "CacheError",
    "CacheHooks",
    "CacheMetrics",
    "CachedFunction",
    "CircuitBreaker",
    "Codec",
    "CodecError",
    "ConfigurationError",
    "ConsistencyMonitor",
    "DeadlineExceededError",
    "DictionaryRegistry",
    "EntryPolicy",
    "ExponentialBackoff",
    "FetchHooks",
    "FetchOutcome",
    "Frame",
    "Guard",
    "GuardedBackend",
    "KeyEncodingError",
    "LeaseTimeoutError",
    "LoadFailedError",
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
    "StoreConnectError",
    "StoreOptions",
    "StoreUnavailable",
    "Subscription",
    "Tier",
    "ValueTooLargeError",
    "WrongEventLoopError",
    "__version__",
    "add_global_hooks",
    "backend_from_url",
    "cached",
    "canonical_bytes",
    "current_deadline",
    "get_default_cache",
    "instrument_opentelemetry",
    "register_prometheus",
    "register_scheme",
    "registered_schemes",
    "remove_global_hooks",
    "set_default_cache",
    "time_budget",
    "train_dictionary",
]
