"""Typed values: a function's return annotation decides what a hit gives back.

Without an annotation (or with ``Any``/``object``) a value goes through the serializer's JSON mapping and a hit
returns JSON natives (``_serializers.py``). With one, :func:`resolve_value_type` builds a :class:`ValueType` once, at
decoration, and a hit returns a value of the annotated type equal to what the loader returned.

The bytes stay the serializer's format (JSON text by default, so ``zstd -dc`` and the HTTP byte passthrough keep
working). Encoding and validating decoding use msgspec, or pydantic's ``TypeAdapter`` when the type contains a
pydantic model: measured fastest for each (docs/value-format.md, ``python -m benchmarks.codecs``). Decoding
is strict: stored bytes of the wrong shape raise :class:`CodecError` (a miss), never a coerced or wrong-typed value.

``ValueType.version`` is a digest of the type's *shape* (field names and types, recursively, plus the encoder),
never of ``id()`` or ``hash()``: equal definitions give equal digests in every process, different ones differ, so
two deploys with different definitions of one dataclass never read each other's entries.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import hashlib
import operator
import typing
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final, Generic, TypeVar

import msgspec

from ._errors import CodecError, SerializationError
from ._serializers import Serializer

__all__ = ["DeferredValueType", "ValueType", "describe_unstorable", "resolve_value_type", "value_type_for_function"]

T = TypeVar("T")

# Bumped when the stored encoding of some type changes: every digest changes with it.
_ENCODING_GENERATION: Final = "1"
_SCALARS: Final[dict[Any, str]] = {
    type(None): "None",
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    bytes: "bytes",
    dt.datetime: "datetime",
    dt.date: "date",
    dt.time: "time",
    dt.timedelta: "timedelta",
    Decimal: "Decimal",
    uuid.UUID: "UUID",
}
_UNTYPED: Final = (Any, object)
_FIXES: Final = (
    "make it a dataclass, NamedTuple, TypedDict or pydantic model whose fields are storable types; "
    "return a JSON-native value (str, int, float, bool, None, list, dict with str keys) annotated as such"
)
_FIX_UNTYPED: Final = "; or drop the return annotation to store untyped JSON (a hit then returns JSON natives)"


def _pydantic_base() -> type | None:
    try:
        from pydantic import BaseModel
    except ImportError:  # pydantic is the caller's dependency, not ours
        return None
    return BaseModel


_BASE_MODEL: Final = _pydantic_base()


class _Unstorable(Exception):
    def __init__(self, part: Any, reason: str) -> None:
        super().__init__(reason)
        self.part = part
        self.reason = reason


def type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__qualname__ if tp.__module__ == "builtins" else f"{tp.__module__}.{tp.__qualname__}"
    return repr(tp).replace("typing.", "")


class _Shape:
    """Walks a type once: checks every part is storable and writes its canonical shape description."""

    def __init__(self) -> None:
        self.uses_pydantic = False
        self.has_untyped = False  # Any/object somewhere: those parts follow the untyped JSON mapping
        self.typed_keys = False  # a dict whose keys are not str: building it from JSON natives parses its keys
        self._open: list[Any] = []

    def of(self, tp: Any) -> str:
        if tp in _UNTYPED:
            self.has_untyped = True
            return "Any"
        if tp is None:
            return "None"
        scalar = _SCALARS.get(tp)
        if scalar is not None:
            return scalar
        if isinstance(tp, typing.NewType):
            return self.of(tp.__supertype__)
        origin = typing.get_origin(tp)
        if origin is not None:
            return self._generic(tp, origin, typing.get_args(tp))
        if not isinstance(tp, type):
            raise _Unstorable(tp, "it is not a type cachelayer knows how to store")
        if tp in (list, set, frozenset, tuple, dict):
            self.has_untyped = True
            return f"{tp.__name__}[Any]"
        if tp in self._open:  # a recursive type: name the cycle instead of walking it again
            return f"^{len(self._open) - self._open.index(tp)}"
        self._open.append(tp)
        try:
            return self._class(tp)
        finally:
            self._open.pop()

    def _generic(self, tp: Any, origin: Any, args: tuple[Any, ...]) -> str:
        if origin is typing.Annotated:
            return self.of(args[0])
        if origin is typing.Literal:
            return f"Literal[{','.join(sorted(repr(a) for a in args))}]"
        if origin in (typing.Union, _UNION_TYPE):
            return f"Union[{','.join(sorted(self.of(a) for a in args))}]"
        if origin in (list, set, frozenset):
            return f"{origin.__name__}[{self.of(args[0]) if args else 'Any'}]"
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return f"tuple[{self.of(args[0])},...]"
            return f"tuple[{','.join(self.of(a) for a in args)}]"
        if origin is dict:
            key, value = args if args else (Any, Any)
            if not _is_key_type(key):
                raise _Unstorable(tp, f"its keys ({type_name(key)}) cannot be JSON object keys")
            if key is not str:
                self.typed_keys = True
            return f"dict[{self.of(key)},{self.of(value)}]"
        raise _Unstorable(tp, "it is not a concrete container cachelayer knows how to store")

    def _class(self, tp: type) -> str:
        if issubclass(tp, enum.Enum):
            members = ",".join(f"{m.name}={m.value!r}" for m in tp)
            return f"Enum[{members}]"
        if _BASE_MODEL is not None and issubclass(tp, _BASE_MODEL):
            self.uses_pydantic = True
            fields = tp.model_fields  # type: ignore[attr-defined]
            body = ",".join(f"{f.alias or name}:{self.of(f.annotation)}" for name, f in fields.items())
            return f"Model{{{body}}}"
        if dataclasses.is_dataclass(tp):
            hints = _hints(tp)
            body = ",".join(f"{f.name}:{self.of(hints[f.name])}" for f in dataclasses.fields(tp))
            return f"Dataclass{{{body}}}"
        if issubclass(tp, tuple) and hasattr(tp, "_fields"):
            hints = _hints(tp)
            body = ",".join(f"{name}:{self.of(hints[name])}" for name in tp._fields)
            return f"NamedTuple{{{body}}}"
        if typing.is_typeddict(tp):
            hints = _hints(tp)
            required: frozenset[str] = tp.__required_keys__  # type: ignore[attr-defined]
            body = ",".join(f"{name}{'' if name in required else '?'}:{self.of(hints[name])}" for name in sorted(hints))
            return f"TypedDict{{{body}}}"
        raise _Unstorable(tp, "it is an arbitrary class (not a dataclass, NamedTuple, TypedDict or pydantic model)")


_UNION_TYPE: Final = type(int | str)
_KEY_TYPES: Final = frozenset({str, int, uuid.UUID, Decimal, dt.date, dt.datetime, dt.time, *_UNTYPED})


def _is_key_type(key: Any) -> bool:
    """Keys msgspec writes as JSON object keys and reads back as themselves."""
    if isinstance(key, typing.NewType):
        return _is_key_type(key.__supertype__)
    if typing.get_origin(key) is typing.Literal:
        return True
    return key in _KEY_TYPES or (isinstance(key, type) and issubclass(key, enum.Enum))


def _hints(tp: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(tp)
    except Exception as exc:  # NameError for an unresolvable forward reference, and its cousins
        raise _Unstorable(tp, f"its field annotations cannot be resolved ({type(exc).__name__}: {exc})") from exc


class ValueType(Generic[T]):
    """How one annotated type is stored: ``dumps`` gives the serializer's bytes, ``loads`` validates them back.

    ``loads`` raises :class:`CodecError` for bytes that do not validate; ``dumps`` raises
    :class:`SerializationError` for a value it cannot store so that ``loads`` gives back an equal value.
    """

    def __init__(self, annotation: Any, serializer: Serializer, *, owner: str) -> None:
        self.annotation = annotation
        self.owner = owner
        shape = _Shape()
        try:
            self.shape = shape.of(annotation)
        except _Unstorable as exc:
            raise SerializationError(_unstorable_type_message(owner, annotation, exc.part, exc.reason)) from None
        self.engine = "pydantic" if shape.uses_pydantic else "msgspec"
        self._check_equal = not shape.has_untyped
        serializer_name = _serializer_format(serializer)
        description = f"{_ENCODING_GENERATION}:{self.engine}:{serializer_name}:{self.shape}"
        self.version: str = hashlib.blake2b(description.encode(), digest_size=4).hexdigest()
        try:
            build = _pydantic_codec if shape.uses_pydantic else _msgspec_codec
            self._encode, self._decode, self._decode_errors = build(annotation, serializer_name)
        except (TypeError, ValueError) as exc:  # msgspec's TypeError, pydantic's schema errors
            raise SerializationError(_unstorable_type_message(owner, annotation, annotation, str(exc))) from None
        # Whether a hit may build the value from JSON natives parsed once (template, from_template), not decoding.
        # Not when a part is untyped (Any, a bare list or dict): msgspec.convert hands such a part over as it is,
        # so every hit would share the template's containers, and a caller's mutation would reach the next hit.
        self.converts = self.engine == "msgspec" and serializer_name == "json" and not shape.has_untyped
        self._str_keys = shape.typed_keys  # msgspec.convert parses JSON's str keys into int, UUID... keys
        # Dataclasses are built faster from Structs than from dicts (see "shadows" below).
        self._shadow = _shadow_annotation(annotation) if self.converts else None

    def template(self, natives: Any) -> Any:
        """What a reader keeps to build this type's value from on every hit (:meth:`from_template`), given JSON
        natives it parsed once and never mutates: those natives, or their shadow (Structs in place of
        dataclasses) for a type with dataclasses in it. For ``converts`` types only; failure is :class:`CodecError`."""
        if self._shadow is None:
            return natives
        try:
            return msgspec.convert(natives, self._shadow, str_keys=self._str_keys)
        except (msgspec.MsgspecError, TypeError, ValueError, RecursionError) as exc:
            raise CodecError(f"stored value does not convert to {type_name(self.annotation)}: {exc}") from exc

    def from_template(self, template: Any) -> T:
        """A new value (new containers and instances, the immutable leaves shared) built from :meth:`template`'s
        result, equal to what ``loads`` gives for the text it came from; failure is :class:`CodecError` (the
        caller then decodes the text)."""
        try:
            if self._shadow is None:
                value: T = msgspec.convert(template, self.annotation, str_keys=self._str_keys)
            else:
                value = msgspec.convert(template, self.annotation, from_attributes=True)
        except (msgspec.MsgspecError, TypeError, ValueError, RecursionError) as exc:
            raise CodecError(f"stored value does not convert to {type_name(self.annotation)}: {exc}") from exc
        return value

    def loads(self, data: bytes | memoryview) -> T:
        try:
            value: T = self._decode(data)
        except self._decode_errors as exc:
            raise CodecError(f"stored value does not validate as {type_name(self.annotation)}: {exc}") from exc
        return value

    def dumps(self, value: T) -> bytes:
        """The stored bytes of ``value``, checked to read back equal (a miss-path cost, never a hit-path one)."""
        try:
            data = self._encode(value)
        except (TypeError, ValueError, OverflowError, NotImplementedError, msgspec.EncodeError) as exc:
            raise SerializationError(describe_unstorable(value, self.owner, self.annotation, str(exc))) from exc
        try:
            back = self.loads(data)
        except CodecError as exc:
            raise SerializationError(describe_unstorable(value, self.owner, self.annotation, str(exc))) from None
        if type(back) is not type(value) or (self._check_equal and back != value):
            raise SerializationError(
                describe_unstorable(
                    value, self.owner, self.annotation, f"it would read back as a different value: {back!r:.200}"
                )
            )
        return data

    def __repr__(self) -> str:
        return f"ValueType({type_name(self.annotation)}, engine={self.engine}, version={self.version})"


def _serializer_format(serializer: Serializer) -> str:
    if serializer.id == 1:
        return "json"
    if serializer.id == 2:
        return "msgpack"
    raise ValueError(f"typed values need the orjson or msgpack serializer, not {serializer.name!r}")


_Codec = tuple[Callable[[Any], bytes], Callable[[bytes | memoryview], Any], tuple[type[Exception], ...]]


def _msgspec_codec(annotation: Any, serializer_format: str) -> _Codec:
    if serializer_format == "json":
        json_decoder = msgspec.json.Decoder(annotation)
        return msgspec.json.Encoder().encode, json_decoder.decode, (msgspec.MsgspecError,)
    pack_decoder = msgspec.msgpack.Decoder(annotation)
    pack = msgspec.msgpack.Encoder().encode

    def encode_msgpack(value: Any) -> bytes:
        # Datetimes as RFC 3339 strings, as in JSON: msgpack's timestamp extension would drop the UTC offset.
        return pack(msgspec.to_builtins(value, builtin_types=(bytes,)))

    return encode_msgpack, pack_decoder.decode, (msgspec.MsgspecError,)


def _pydantic_codec(annotation: Any, serializer_format: str) -> _Codec:
    import pydantic

    adapter = pydantic.TypeAdapter(annotation)
    errors: tuple[type[Exception], ...] = (pydantic.ValidationError, ValueError)
    if serializer_format == "json":

        def decode_json(data: bytes | memoryview) -> Any:
            # Strict: a wrong-shaped payload is a miss, not a coerced value. JSON strict mode still reads
            # datetimes, UUIDs, Decimals, tuples and sets from their JSON forms.
            return adapter.validate_json(data if isinstance(data, bytes) else bytes(data), strict=True)

        return adapter.dump_json, decode_json, errors
    import msgpack

    def encode_msgpack(value: Any) -> bytes:
        packed: bytes = msgpack.packb(adapter.dump_python(value, mode="json"), use_bin_type=True)
        return packed

    def decode_msgpack(data: bytes | memoryview) -> Any:
        # Python mode: strict would refuse datetimes as strings, so lax (the shape still has to match).
        return adapter.validate_python(msgpack.unpackb(data, raw=False, strict_map_key=False))

    return encode_msgpack, decode_msgpack, (*errors, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError)


# -- shadows: a hit on dataclasses built from Structs ----------------------------------------------------------
#
# msgspec builds a dataclass from a dict by matching each key to a field and checking afterwards that every field
# was set; from a Struct's attributes it reads the fields it knows. For the 20 dataclasses of benchmarks/hit_path.py
# the second is ~15% fewer instructions (callgrind: 151k against 176k per list), most of what a typed hit costs
# over an untyped one. A template's shadow is its JSON natives converted once into Struct mirrors of the
# dataclasses (the reader keeps it, ``_reading.py``, and checks once that it builds the value decoding gives);
# every hit converts the shadow into new dataclasses, lists and dicts (never the shadow's own).

class _NoShadow(Exception):
    pass


class _ShadowTypes:
    """An annotation with every dataclass replaced by a msgspec Struct of the same fields, recursively. Covers the
    parts whose conversion always builds new containers (lists, tuples, dicts, unions, scalars, enums); anything
    else (a NamedTuple, a TypedDict, a set of dataclasses, a recursive dataclass) is :class:`_NoShadow`."""

    def __init__(self) -> None:
        self.found = False
        self._structs: dict[type, Any] = {}
        self._open: list[type] = []

    def of(self, tp: Any) -> Any:
        if tp is None or tp in _SCALARS or tp is Ellipsis or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
            return tp
        if isinstance(tp, typing.NewType):
            inner = self.of(tp.__supertype__)
            return tp if inner is tp.__supertype__ else inner
        origin = typing.get_origin(tp)
        if origin is typing.Literal:
            return tp
        if origin is typing.Annotated:
            inner = self.of(tp.__origin__)
            return tp if inner is tp.__origin__ else typing.Annotated[(inner, *tp.__metadata__)]
        if origin in (list, tuple, dict, typing.Union, _UNION_TYPE):
            args = typing.get_args(tp)
            mapped = tuple(self.of(arg) for arg in args)
            if all(m is a for m, a in zip(mapped, args, strict=True)):
                return tp
            if origin is list:
                return list[mapped[0]]  # type: ignore[valid-type]
            if origin is dict:
                return dict[mapped[0], mapped[1]]  # type: ignore[valid-type]
            if origin is tuple:
                return tuple[mapped]  # type: ignore[valid-type]
            return functools.reduce(operator.or_, mapped)  # a Union of the mapped members
        if origin in (set, frozenset) and not self._has_dataclass(tp):
            return tp  # hashable leaves: a new set of the same (immutable) objects
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self._struct(tp)
        raise _NoShadow(tp)

    def _has_dataclass(self, tp: Any) -> bool:
        probe = _ShadowTypes()
        try:
            probe.of(typing.get_args(tp)[0])
        except _NoShadow:
            return True
        return probe.found

    def _struct(self, tp: type) -> Any:
        known = self._structs.get(tp)
        if known is not None:
            return known
        if tp in self._open:
            raise _NoShadow(tp)  # recursive: not worth a forward-referencing Struct
        self._open.append(tp)
        try:
            hints = typing.get_type_hints(tp, include_extras=True)
            fields = [(field.name, self.of(hints[field.name])) for field in dataclasses.fields(tp)]
            struct = msgspec.defstruct(f"{tp.__qualname__}Shadow", fields, module=__name__)
        except _NoShadow:
            raise
        except Exception as exc:  # a name a Struct refuses, an unresolvable hint: no shadow, never an error
            raise _NoShadow(tp) from exc
        finally:
            self._open.pop()
        self.found = True
        self._structs[tp] = struct
        return struct


def _shadow_annotation(annotation: Any) -> Any | None:
    """The annotation a shadow has, or None when it has no dataclass or a part the shadow does not cover."""
    types = _ShadowTypes()
    try:
        mapped = types.of(annotation)
    except _NoShadow:
        return None
    return mapped if types.found else None


def resolve_value_type(annotation: Any, serializer: Serializer, *, owner: str) -> ValueType[Any] | None:
    """The :class:`ValueType` of a return annotation, or None for none/``Any``/``object`` (untyped JSON).

    Raises :class:`SerializationError` naming ``owner``, the type and the fixes when the type cannot be stored.
    """
    if annotation is None or annotation is dataclasses.MISSING or annotation in _UNTYPED:
        return None
    return ValueType(annotation, serializer, owner=owner)


def value_type_for_function(func: Callable[..., Any], serializer: Serializer) -> ValueType[Any] | None:
    """The :class:`ValueType` of ``func``'s return annotation (an ``async def``'s annotation is the result type).

    A forward reference that is not defined yet (a method returning a class defined later in its module) is
    resolved on first use instead; every other problem is raised now.
    """
    owner = f"{func.__module__}.{func.__qualname__}"
    if "return" not in getattr(func, "__annotations__", {}):
        return None
    try:
        annotation = typing.get_type_hints(func)["return"]
    except NameError:
        return DeferredValueType(func, serializer, owner)
    return resolve_value_type(annotation, serializer, owner=owner)


class DeferredValueType(ValueType[Any]):
    """Resolves the annotation at first use, then delegates to the resolved :class:`ValueType`."""

    def __init__(self, func: Callable[..., Any], serializer: Serializer, owner: str) -> None:
        self._func = func
        self._serializer = serializer
        self._real: ValueType[Any] | None = None
        self.owner = owner
        self.annotation = func.__annotations__["return"]

    def resolved(self) -> ValueType[Any]:
        real = self._real
        if real is None:
            try:
                annotation = typing.get_type_hints(self._func)["return"]
            except NameError as exc:
                raise SerializationError(
                    f"cannot resolve the return annotation of {self.owner} ({exc}): define the type before the "
                    "first call, or drop the return annotation"
                ) from None
            real = self._real = ValueType(annotation, self._serializer, owner=self.owner)
        return real

    def __getattr__(self, name: str) -> Any:  # version, shape, engine: attributes only the resolved type has
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.resolved(), name)

    def dumps(self, value: Any) -> bytes:
        return self.resolved().dumps(value)

    def loads(self, data: bytes | memoryview) -> Any:
        return self.resolved().loads(data)

    def template(self, natives: Any) -> Any:
        return self.resolved().template(natives)

    def from_template(self, template: Any) -> Any:
        return self.resolved().from_template(template)


def _unstorable_type_message(owner: str, annotation: Any, part: Any, reason: str) -> str:
    where = "" if part is annotation else f" (in {type_name(annotation)})"
    return (
        f"{owner} is annotated to return {type_name(annotation)}, which cachelayer cannot store: "
        f"{type_name(part)}{where}: {reason}. Fixes: {_FIXES}{_FIX_UNTYPED}"
    )


def describe_unstorable(value: Any, owner: str, annotation: Any = None, reason: str = "") -> str:
    """The message for a value that cannot be stored at store time (same kind as the decoration-time one)."""
    declared = "has no return annotation" if annotation is None else f"is annotated {type_name(annotation)}"
    because = f" ({reason})" if reason else ""
    hint = ""
    if annotation is None and (type(value) in _SCALARS or _is_structured(value)):
        hint = f"annotate the return type (-> {type_name(type(value))}) so it is stored typed; "
    return (
        f"{owner} returned a value of type {type_name(type(value))} that cannot be stored; the function "
        f"{declared}{because}. Fixes: {hint}{_FIXES}{'' if annotation is None else _FIX_UNTYPED}"
    )


def _is_structured(value: Any) -> bool:
    cls = type(value)
    return (
        dataclasses.is_dataclass(cls)
        or (issubclass(cls, tuple) and hasattr(cls, "_fields"))
        or (_BASE_MODEL is not None and isinstance(value, _BASE_MODEL))
    )
