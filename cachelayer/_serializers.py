"""Serializers: turning a Python value into bytes and back.

This table is the **untyped** path: a function without a return annotation (or annotated ``Any``/``object``), or
``cache.get``/``set`` without ``value_type``, gets JSON values back. A function annotated ``-> T`` gets a ``T``
back, equal to what the loader returned (``_typed.py``; docs/value-format.md, "Typed values").

Both serializers share one mapping of the types JSON lacks, so switching serializer never changes what a reader
gets back:

=====================  =====================================================================
Python value            what a reader gets back
=====================  =====================================================================
``datetime``            ISO 8601 string, as ``datetime.isoformat()`` (offset kept when aware)
``date``                ``"YYYY-MM-DD"``
``UUID``                canonical hyphenated lowercase string
``Decimal``             its exact decimal string, e.g. ``"12.50"``
dataclass instance      dict of its fields
``set``/``frozenset``   list, sorted when the elements are sortable
``tuple``               list
``bson.ObjectId``       24-hex-digit string
``bson.Decimal128``     its decimal string
``Enum`` member         its ``value``
=====================  =====================================================================

Dict keys must be strings for orjson; msgpack also takes integer keys and gives them back as integers. A type
outside this table raises :class:`SerializationError` on write.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any, Final, Protocol

import orjson

from ._errors import CodecError, SerializationError

__all__ = ["MsgpackSerializer", "OrjsonSerializer", "Serializer", "serializer_by_id", "serializer_by_name"]


class Serializer(Protocol):
    """Turns values into bytes and back. ``id`` is written into every frame, so it must never be reused."""

    id: int
    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes | memoryview) -> Any: ...


def _bson_types() -> tuple[type, ...]:
    try:
        from bson import Decimal128, ObjectId
    except ImportError:  # bson ships with pymongo, which the library does not require
        return ()
    return (ObjectId, Decimal128)


_BSON_TYPES: Final = _bson_types()


def _sorted_if_possible(items: set[Any] | frozenset[Any]) -> list[Any]:
    try:
        return sorted(items)
    except TypeError:
        return list(items)


def to_plain(value: Any) -> Any:
    """The ``default`` hook both serializers call for types they do not handle natively."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return _sorted_if_possible(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, enum.Enum):
        return value.value
    if _BSON_TYPES and isinstance(value, _BSON_TYPES):
        return str(value)
    raise SerializationError(f"cannot serialize a value of type {type(value).__qualname__}")


# orjson's own dataclass and datetime output differs from the documented mapping (it drops "_"-prefixed
# fields, keeps non-field attributes, rounds second-level UTC offsets): route both through to_plain.
_ORJSON_OPTIONS: Final = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


class OrjsonSerializer:
    """JSON through orjson: the default. Its bytes are the HTTP response body as they stand."""

    id: int = 1
    name: str = "orjson"

    def dumps(self, value: Any) -> bytes:
        try:
            return orjson.dumps(value, default=to_plain, option=_ORJSON_OPTIONS)
        except orjson.JSONEncodeError as exc:
            raise SerializationError(str(exc)) from exc

    def loads(self, data: bytes | memoryview) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CodecError(f"payload is not valid JSON: {exc}") from exc


class MsgpackSerializer:
    """MessagePack: smaller and faster for numbers-heavy values; needs the ``msgpack`` extra."""

    id: int = 2
    name: str = "msgpack"

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ImportError("the msgpack serializer needs 'pip install cachelayer[msgpack]'") from exc
        self._msgpack = msgpack

    def dumps(self, value: Any) -> bytes:
        try:
            packed: bytes = self._msgpack.packb(value, default=to_plain, use_bin_type=True, datetime=False)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(str(exc)) from exc
        return packed

    def loads(self, data: bytes | memoryview) -> Any:
        # Extension types are refused: nothing we write uses them, so one in a payload is foreign or corrupt.
        try:
            return self._msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_refuse_ext)
        except Exception as exc:  # msgpack raises a zoo of types; all mean "not a value we wrote"
            raise CodecError(f"payload is not valid msgpack: {type(exc).__name__}: {exc}") from exc


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not accepted")


_ORJSON: Final = OrjsonSerializer()
_by_id: dict[int, Serializer] = {_ORJSON.id: _ORJSON}


def serializer_by_name(name: str) -> Serializer:
    if name == "orjson":
        return _ORJSON
    if name == "msgpack":
        serializer = _by_id.get(MsgpackSerializer.id)
        if serializer is None:
            serializer = _by_id[MsgpackSerializer.id] = MsgpackSerializer()
        return serializer
    raise ValueError(f"unknown serializer {name!r}: expected 'orjson' or 'msgpack'")


def serializer_by_id(serializer_id: int) -> Serializer:
    serializer = _by_id.get(serializer_id)
    if serializer is not None:
        return serializer
    if serializer_id == MsgpackSerializer.id:
        try:
            return serializer_by_name("msgpack")
        except ImportError as exc:
            raise CodecError("value was written with msgpack, which is not installed here") from exc
    raise CodecError(f"unknown serializer id {serializer_id}")
