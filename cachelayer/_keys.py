"""Keys: a call's key name and tags from its bound arguments, and the Redis key layout.

A key is never built with ``str()`` of the arguments: ``f(1)``, ``f("1")``, ``f(1.0)`` and ``f(True)`` are four
different keys. The arguments are encoded canonically (``_canonical.py``: tagged, length-prefixed bytes, so no two
values of different types or structures share an encoding) and the bytes are hashed with BLAKE2b.

Methods: with ``instances="key"`` (the default) ``self`` is part of the key, encoded through its class's
``__cache_key__()``; a class without one is refused when the method is decorated (:func:`check_method_owner`).
``instances="shared"`` leaves ``self`` out: every instance shares entries. ``cls`` is keyed by the class's
module-qualified name.

What a callable carries (a closure's free variables, a partial's bound arguments, a bound method's instance) is
part of its key too: ``_identity.py`` says how, and what it refuses at decoration.

Versions: the key name carries the return type's shape digest and an optional explicit version, so deploys with
different definitions never read each other's entries::

    <module>.<qualname>@t<shape digest>/v<explicit version>:<argument hash>     (either part may be absent)

Redis layout (the braces are a Redis Cluster hash tag: a value and its lease always share one slot)::

    {namespace}:{<name>}                 the value frame       (manager keys: <name> is the caller's key)
    {namespace}:{<name>}:lease           the fill tickets (a hash of tokens; one token: the load lease)
    {namespace}:tag:{<tag>}              the tag's stamp (16 bytes; see _tags.py)
"""

from __future__ import annotations

import functools
import inspect
import re
import string
import types
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal

from ._canonical import canonical_bytes, digest, instance_key
from ._errors import KeyEncodingError
from ._identity import CallableIdentity, free_variables, name_of, needs_identity, underlying_function

__all__ = ["ArgumentKeyer", "KeyLayout", "check_method_owner", "key_version"]

_LEN_SEP: Final = b":"
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
# Hot keys, not every key: each entry is a few hundred bytes that the local tier's byte bound does not see.
_MEMO_SIZE: Final = 1024
_VERSION_TEXT: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
Instances = Literal["key", "shared"]


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
        static: bool = False,
    ) -> None:
        if instances not in ("key", "shared"):
            raise ValueError(f"instances must be 'key' or 'shared', not {instances!r}")
        self.signature = inspect.signature(func)
        params = list(self.signature.parameters)
        plain = underlying_function(func)
        self.exclude = frozenset(exclude)
        unknown = self.exclude - set(params) - free_variables(func)
        if unknown:
            raise ValueError(
                f"exclude names {sorted(unknown)}, which {plain.__qualname__} does not have as parameters or free "
                "variables"
            )
        # What the callable carries (closure cells, a partial's arguments, a bound instance) is part of the key,
        # unless an explicit name states its identity. None when it carries nothing: no cost on a call.
        self._identity = CallableIdentity(func, self.exclude) if prefix is None and needs_identity(func) else None
        is_method = (
            not static and bool(params) and params[0] in ("self", "cls") and "." in plain.__qualname__
            and not isinstance(func, functools.partial | types.MethodType)
        )  # fmt: skip
        # self is keyed (through __cache_key__) unless the decoration says instances share entries.
        self.skip_first = is_method and instances == "shared"
        self.keyed_instance = is_method and instances == "key" and params[0] == "self"
        base = prefix or name_of(plain)
        self.prefix = f"{base}@{version}" if version else base
        self.template = template
        self.tags = tuple(tags)
        for text in (template, *self.tags):
            if text is not None:
                self._check_fields(text, params)
        self._memo: dict[tuple[Any, ...], tuple[str, tuple[str, ...]]] = {}
        self._plain = self._identity is None and not self.keyed_instance
        self._memo_identity = b""  # the identity the memo's names were built with

    def name_and_tags(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
        """Key name and tags of a call. Calls whose arguments are all plain scalars are memoized (binding and
        hashing cost more than the rest of the decorator's work on a hit); the memo key carries each argument's type, so
        ``f(1)``, ``f(1.0)`` and ``f(True)``, which Python counts as equal, stay apart."""
        if self._plain and not kwargs:  # the usual call: positional arguments only, nothing carried
            arg_types = tuple(map(type, args))
            if _SCALARS.issuperset(arg_types):
                found = self._memo.get((args, arg_types))  # the general path's memo key for such a call
                if found is not None:
                    return found
        identity = b""
        if self._identity is not None:
            identity = self._identity.current()
            if identity != self._memo_identity:  # the closure changed: every memoized name is stale
                self._memo.clear()
                self._memo_identity = identity
        memo_key: tuple[Any, ...] | None = None
        scalar_args: tuple[Any, ...] = args
        head: tuple[Any, ...] = ()
        if self.keyed_instance and args:
            # An instance is memoized by its class and scalar cache key (an id() is reused after collection).
            hook = getattr(args[0], "__cache_key__", None)
            ident = instance_key(args[0], hook) if hook is not None else None
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
        result = (self.name(arguments, identity), tuple(self.tag_names(arguments)))
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

    def name(self, arguments: dict[str, Any], identity: bytes | None = None) -> str:
        """The key name; ``identity`` is what the callable carries (:class:`CallableIdentity`), read now if None."""
        if identity is None:
            identity = self._identity.current() if self._identity is not None else b""
        keyed = {k: v for k, v in arguments.items() if k not in self.exclude}
        hashed = digest(canonical_bytes(keyed) + identity)  # canonical bytes are self-delimiting: no ambiguity
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


