"""The canonical encoding of a value: tagged, length-prefixed bytes, equal for equal values of one type and
different otherwise (``f(1)``, ``f("1")``, ``f(1.0)`` and ``f(True)`` are four encodings), hashed with BLAKE2b.
Never ``str()`` of a value."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final

from ._errors import KeyEncodingError

__all__ = ["canonical_bytes", "digest", "instance_key", "tagged"]

_LEN_SEP: Final = b":"


def tagged(tag: bytes, content: bytes) -> bytes:
    return tag + str(len(content)).encode() + _LEN_SEP + content


def _encode(value: Any, out: list[bytes]) -> None:
    # Order matters: bool before int (bool is an int), datetime before date, Enum before its mixed-in base.
    if value is None:
        out.append(b"N")
    elif value is True:
        out.append(b"T")
    elif value is False:
        out.append(b"F")
    elif isinstance(value, enum.Enum):
        cls = type(value)
        out.append(tagged(b"E", f"{cls.__module__}.{cls.__qualname__}".encode()))
        _encode(value.value, out)
    elif isinstance(value, int):
        out.append(tagged(b"i", str(int(value)).encode()))
    elif isinstance(value, float):
        out.append(tagged(b"f", float(value).hex().encode()))
    elif isinstance(value, str):
        out.append(tagged(b"s", value.encode("utf-8", "surrogatepass")))
    elif isinstance(value, bytes | bytearray | memoryview):
        out.append(tagged(b"b", bytes(value)))
    elif isinstance(value, tuple | list):
        out.append((b"t" if isinstance(value, tuple) else b"l") + str(len(value)).encode() + _LEN_SEP)
        for item in value:
            _encode(item, out)
    elif isinstance(value, Mapping):
        pairs = sorted((canonical_bytes(k), canonical_bytes(v)) for k, v in value.items())
        out.append(b"d" + str(len(pairs)).encode() + _LEN_SEP)
        for k, v in pairs:
            out.append(k)
            out.append(v)
    elif isinstance(value, set | frozenset):
        items = sorted(canonical_bytes(item) for item in value)
        out.append(b"S" + str(len(items)).encode() + _LEN_SEP)
        out.extend(items)
    elif isinstance(value, dt.datetime):
        out.append(tagged(b"D", value.isoformat().encode()))
    elif isinstance(value, dt.date):
        out.append(tagged(b"a", value.isoformat().encode()))
    elif isinstance(value, dt.time):
        out.append(tagged(b"h", value.isoformat().encode()))
    elif isinstance(value, dt.timedelta):
        out.append(tagged(b"e", f"{value.days},{value.seconds},{value.microseconds}".encode()))
    elif isinstance(value, uuid.UUID):
        out.append(tagged(b"u", value.bytes))
    elif isinstance(value, Decimal):
        out.append(tagged(b"m", str(value).encode()))
    elif isinstance(value, type):  # cls of a classmethod, or a class passed as an argument: its name
        out.append(tagged(b"Y", f"{value.__module__}.{value.__qualname__}".encode()))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        dc_type = type(value)
        out.append(tagged(b"C", f"{dc_type.__module__}.{dc_type.__qualname__}".encode()))
        _encode({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, out)
    else:
        hook = getattr(value, "__cache_key__", None)
        if hook is None:
            raise KeyEncodingError(
                f"no canonical key encoding for {type(value).__qualname__}: exclude the argument "
                "(exclude=[...]), pass a plainer value, or give the type a __cache_key__() method"
            )
        hook_type = type(value)
        out.append(tagged(b"K", f"{hook_type.__module__}.{hook_type.__qualname__}".encode()))
        _encode(instance_key(value, hook), out)


def instance_key(value: Any, hook: Callable[[], Any]) -> Any:
    """``value.__cache_key__()``, refusing None: a hook that forgot its ``return`` would make instances share."""
    found = hook()
    if found is None:
        cls = type(value)
        raise KeyEncodingError(
            f"{cls.__module__}.{cls.__qualname__}.__cache_key__() returned None (a forgotten `return`?), so every "
            f"instance would share entries: return the value that identifies the instance, e.g. "
            f"`return self.db_name`"
        )
    return found


def canonical_bytes(value: Any) -> bytes:
    """The canonical encoding of ``value``: equal for equal values of one type, different otherwise."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()
