"""Keys: the canonical encoding of a call's arguments, its hash, and the Redis key layout.

A key is never built with ``str()`` of the arguments: ``f(1)``, ``f("1")``, ``f(1.0)`` and ``f(True)`` are four
different keys. Each argument is encoded into tagged, length-prefixed bytes (type tag, then content), so no two
values of different types or structures share an encoding, and the bytes are hashed with BLAKE2b.

Methods: with ``instances="key"`` (the default) ``self`` is part of the key, encoded through its class's
``__cache_key__()``; a class without one is refused when the method is decorated (:func:`check_method_owner`).
``instances="shared"`` leaves ``self`` out: every instance shares entries. ``cls`` is keyed by the class's
module-qualified name.

Versions: the key name carries the return type's shape digest and an optional explicit version, so deploys with
different definitions never read each other's entries::

    <module>.<qualname>@t<shape digest>/v<explicit version>:<argument hash>     (either part may be absent)

Redis layout (the braces are a Redis Cluster hash tag: a value and its lease always share one slot)::

    {namespace}:{<name>}                 the value frame       (manager keys: <name> is the caller's key)
    {namespace}:{<name>}:lease           the load lease
    {namespace}:tag:{<tag>}              the set of keys carrying a tag
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import inspect
import re
import string
import uuid
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, Final, Literal

from ._errors import KeyEncodingError

__all__ = ["ArgumentKeyer", "KeyLayout", "canonical_bytes", "check_method_owner", "digest", "key_version"]

_LEN_SEP: Final = b":"
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
# Hot keys, not every key: each entry is a few hundred bytes that the local tier's byte bound does not see.
_MEMO_SIZE: Final = 1024
_VERSION_TEXT: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
Instances = Literal["key", "shared"]


def _tagged(tag: bytes, content: bytes) -> bytes:
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
        out.append(_tagged(b"E", f"{cls.__module__}.{cls.__qualname__}".encode()))
        _encode(value.value, out)
    elif isinstance(value, int):
        out.append(_tagged(b"i", str(int(value)).encode()))
    elif isinstance(value, float):
        out.append(_tagged(b"f", float(value).hex().encode()))
    elif isinstance(value, str):
        out.append(_tagged(b"s", value.encode("utf-8", "surrogatepass")))
    elif isinstance(value, bytes | bytearray | memoryview):
        out.append(_tagged(b"b", bytes(value)))
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
        out.append(_tagged(b"D", value.isoformat().encode()))
    elif isinstance(value, dt.date):
        out.append(_tagged(b"a", value.isoformat().encode()))
    elif isinstance(value, dt.time):
        out.append(_tagged(b"h", value.isoformat().encode()))
    elif isinstance(value, dt.timedelta):
        out.append(_tagged(b"e", f"{value.days},{value.seconds},{value.microseconds}".encode()))
    elif isinstance(value, uuid.UUID):
        out.append(_tagged(b"u", value.bytes))
    elif isinstance(value, Decimal):
        out.append(_tagged(b"m", str(value).encode()))
    elif isinstance(value, type):  # cls of a classmethod, or a class passed as an argument: its name
        out.append(_tagged(b"Y", f"{value.__module__}.{value.__qualname__}".encode()))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        dc_type = type(value)
        out.append(_tagged(b"C", f"{dc_type.__module__}.{dc_type.__qualname__}".encode()))
        _encode({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, out)
    else:
        hook = getattr(value, "__cache_key__", None)
        if hook is None:
            raise KeyEncodingError(
                f"no canonical key encoding for {type(value).__qualname__}: exclude the argument "
                "(exclude=[...]), pass a plainer value, or give the type a __cache_key__() method"
            )
        hook_type = type(value)
        out.append(_tagged(b"K", f"{hook_type.__module__}.{hook_type.__qualname__}".encode()))
        _encode(hook(), out)


def canonical_bytes(value: Any) -> bytes:
    """The canonical encoding of ``value``: equal for equal values of one type, different otherwise."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class KeyLayout:
    """Where a cache's keys live in Redis; one instance per namespace."""

    def __init__(self, namespace: str) -> None:
        if not namespace or any(c in namespace for c in "{}*?[] "):
            raise ValueError(f"namespace must be non-empty without braces, glob characters or spaces: {namespace!r}")
        self.namespace = namespace
        self._tag_prefix = f"{namespace}:tag:"

    def value_key(self, name: str) -> str:
        return f"{self.namespace}:{{{name}}}"

    @staticmethod
    def lease_key(value_key: str) -> str:
        return value_key + ":lease"

    def tag_key(self, tag: str) -> str:
        return f"{self._tag_prefix}{{{tag}}}"

    def local_channel(self) -> str:
        """The pub/sub channel on which writers tell every process's local tier what to drop."""
        return f"{self.namespace}:local-invalidations"

    def pattern(self) -> str:
        """A SCAN pattern for every key of this namespace."""
        return f"{self.namespace}:*"


class ArgumentKeyer:
    """Builds the key name and tags of one decorated function's calls from its bound arguments."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        exclude: Iterable[str] = (),
        template: str | None = None,
        tags: Iterable[str] = (),
        prefix: str | None = None,
        instances: Instances = "key",
        version: str = "",
    ) -> None:
        if instances not in ("key", "shared"):
            raise ValueError(f"instances must be 'key' or 'shared', not {instances!r}")
        self.signature = inspect.signature(func)
        params = list(self.signature.parameters)
        self.exclude = frozenset(exclude)
        unknown = self.exclude - set(params)
        if unknown:
            raise ValueError(f"exclude names parameters {sorted(unknown)} that {func.__qualname__} does not have")
        is_method = bool(params) and params[0] in ("self", "cls") and "." in func.__qualname__
        # self is keyed (through __cache_key__) unless the decoration says instances share entries.
        self.skip_first = is_method and instances == "shared"
        self.keyed_instance = is_method and instances == "key" and params[0] == "self"
        base = prefix or f"{func.__module__}.{func.__qualname__}"
        self.prefix = f"{base}@{version}" if version else base
        self.template = template
        self.tags = tuple(tags)
        for text in (template, *self.tags):
            if text is not None:
                self._check_fields(text, params)
        self._memo: dict[tuple[Any, ...], tuple[str, tuple[str, ...]]] = {}

    def name_and_tags(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
        """Key name and tags of a call. Calls whose arguments are all plain scalars are memoized (binding and
        hashing cost more than the rest of the decorator's work on a hit); the memo key carries each argument's type, so
        ``f(1)``, ``f(1.0)`` and ``f(True)``, which Python counts as equal, stay apart."""
        memo_key: tuple[Any, ...] | None = None
        scalar_args: tuple[Any, ...] = args
        head: tuple[Any, ...] = ()
        if self.keyed_instance and args:
            # An instance is memoized by its class and scalar cache key (an id() is reused after collection).
            hook = getattr(args[0], "__cache_key__", None)
            ident = hook() if hook is not None else None
            if hook is not None and type(ident) in _SCALARS:
                scalar_args, head = args[1:], (type(args[0]), ident)
            else:
                scalar_args = (args[0],)  # not a scalar: no memo
        arg_types = tuple(map(type, scalar_args))
        kwarg_types = tuple(map(type, kwargs.values()))
        if _SCALARS.issuperset(arg_types) and _SCALARS.issuperset(kwarg_types):
            memo_key = (*head, scalar_args, arg_types, *kwargs.items(), *kwarg_types)
            found = self._memo.get(memo_key)
            if found is not None:
                return found
        arguments = self.arguments(args, kwargs)
        result = (self.name(arguments), tuple(self.tag_names(arguments)))
        if memo_key is not None:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[memo_key] = result
        return result

    def _check_fields(self, text: str, params: list[str]) -> None:
        for _, field, _, _ in string.Formatter().parse(text):
            if field is not None and field.split(".")[0].split("[")[0] not in params:
                raise ValueError(f"template {text!r} names {field!r}, which is not a parameter")

    def arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        if self.skip_first:
            arguments.pop(next(iter(self.signature.parameters)), None)
        return arguments

    def name(self, arguments: dict[str, Any]) -> str:
        keyed = {k: v for k, v in arguments.items() if k not in self.exclude}
        hashed = digest(canonical_bytes(keyed))
        if self.template is None:
            return f"{self.prefix}:{hashed}"
        return f"{self.prefix}:{self.template.format(**arguments)}:{hashed}"

    def tag_names(self, arguments: dict[str, Any]) -> list[str]:
        return [tag.format(**arguments) for tag in self.tags]


def key_version(shape_digest: str = "", explicit: str | None = None) -> str:
    """The version part of a key name: ``t<shape digest>``, ``v<explicit>``, or both joined by ``/``."""
    parts = []
    if shape_digest:
        parts.append(f"t{shape_digest}")
    if explicit:
        if not _VERSION_TEXT.fullmatch(explicit):
            raise ValueError(f"version must be 1-64 characters of A-Z a-z 0-9 . _ -, not {explicit!r}")
        parts.append(f"v{explicit}")
    return "/".join(parts)


def check_method_owner(
    owner_cls: type, func_qualname: str, instances: Instances, *, first_parameter: str = "self"
) -> None:
    """Refuse a method whose instances would share entries without saying so (call from ``__set_name__``)."""
    if instances == "shared" or first_parameter != "self" or callable(getattr(owner_cls, "__cache_key__", None)):
        return
    raise KeyEncodingError(
        f"{owner_cls.__module__}.{func_qualname} is a cached method, but {owner_cls.__qualname__} has no "
        f"__cache_key__(), so two instances would share entries. Either define "
        f"`def __cache_key__(self): return <the value that identifies the instance, e.g. self.db_name>` on "
        f"{owner_cls.__qualname__}, or decorate with @cached(..., instances=\"shared\") to state that every "
        f"instance shares the entries"
    )
