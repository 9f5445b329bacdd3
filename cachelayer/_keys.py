"""Keys: the canonical encoding of a call's arguments, its hash, and the Redis key layout.

A key is never built with ``str()`` of the arguments: ``f(1)``, ``f("1")``, ``f(1.0)`` and ``f(True)`` are four
different keys. Each argument is encoded into tagged, length-prefixed bytes (type tag, then content), so no two
values of different types or structures share an encoding, and the bytes are hashed with BLAKE2b.

Methods: with ``instances="key"`` (the default) ``self`` is part of the key, encoded through its class's
``__cache_key__()``; a class without one is refused when the method is decorated (:func:`check_method_owner`).
``instances="shared"`` leaves ``self`` out: every instance shares entries. ``cls`` is keyed by the class's
module-qualified name.

What a callable carries is part of its identity (:class:`CallableIdentity`), so two callables of one
``module.qualname`` share entries only when they would compute the same values:

- a closure's free variables are keyed by their values at call time. A value :func:`canonical_bytes` encodes is
  keyed (a class too; the ``__class__`` cell ``super()`` makes is left out: the qualname names it); a function by
  its ``module.qualname``, its defaults and, recursively, its own free variables; a cached function by its
  ``name=`` or what it wraps; a module or builtin by its name. Anything else (a client, a session), a mutable
  container (a list used as a call log) and a variable the function assigns (``nonlocal``: state, not identity)
  are refused when the function is decorated, with the fixes: ``exclude=["that_name"]`` (``exclude`` names
  parameters and free variables), or ``name=`` (an explicit name is the identity: then nothing the callable
  carries is keyed). A free variable not assigned yet (the function's own name, for recursion) is read at the
  first call.
- the enclosing scope may rebind a free variable after decoration: each call compares the ids of the watched
  cells' contents with the last encoding's and encodes again when one changed. No closure, no cost.
- a ``functools.partial`` is keyed by its function and its bound arguments; a bound method by its instance's
  ``__cache_key__()`` (else refused: ``name=``). ``__cache_key__()`` returning None is an error, never a shared key.

Plain functions' keys are unchanged by this: the identity bytes are empty for them.

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
import dis
import enum
import functools
import hashlib
import inspect
import operator
import re
import string
import types
import uuid
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, Final, Literal

from ._errors import KeyEncodingError

__all__ = [
    "ArgumentKeyer",
    "CallableIdentity",
    "IdentifiedCallable",
    "KeyLayout",
    "canonical_bytes",
    "check_method_owner",
    "digest",
    "key_version",
    "underlying_function",
]

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
        _encode(_instance_key(value, hook), out)


def _instance_key(value: Any, hook: Callable[[], Any]) -> Any:
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
        base = prefix or _name_of(plain)
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
            ident = _instance_key(args[0], hook) if hook is not None else None
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


# --------------------------------------------------------------------------- what a callable carries

_FROZEN_TYPES: Final = frozenset(
    {str, int, float, bool, type(None), bytes, Decimal, uuid.UUID, dt.datetime, dt.date, dt.time, dt.timedelta}
)
_MUTABLE_TYPES: Final = (list, dict, set, bytearray, memoryview, Mapping)
_EMPTY_CELL: Final = b"0"  # a free variable not assigned yet (the function's own name, while it is decorated)
_RECURSION: Final = b"R"  # a function met again inside its own closure
_CELL_CONTENTS: Final = operator.attrgetter("cell_contents")


class IdentifiedCallable:
    """Base of the cached-function wrappers: a closure over one is keyed by what it wraps, or by its ``name=``."""

    __slots__ = ()

    def identity_source(self) -> tuple[str | None, Any]:
        """``(explicit name or None, the callable it runs)``."""
        raise NotImplementedError


def _frozen(value: Any) -> bool:
    """Whether ``value`` can never change while the same object: then a closure over it may be memoized by id."""
    value_type = type(value)
    if value_type in _FROZEN_TYPES or isinstance(value, type | enum.Enum):
        return True
    if value_type is tuple or value_type is frozenset:
        return all(_frozen(item) for item in value)
    if dataclasses.is_dataclass(value) and value_type.__dataclass_params__.frozen:
        return all(_frozen(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


@functools.lru_cache(maxsize=1024)
def _rebound_free_variables(code: types.CodeType) -> frozenset[str]:
    """Free variables ``code`` (or a function nested in it) assigns with ``nonlocal``: state, not identity."""
    found = {
        op.argval
        for op in dis.get_instructions(code)
        if op.opname in ("STORE_DEREF", "DELETE_DEREF") and op.argval in code.co_freevars
    }
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= _rebound_free_variables(const) & set(code.co_freevars)
    return frozenset(found)


def _name_of(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


class CallableIdentity:
    """What tells apart two callables of one ``module.qualname``: the contents of its closure cells, a partial's
    bound arguments, a bound method's instance. Encoded with :func:`canonical_bytes`, read at call time.

    On a call, :meth:`current` compares the ids of the watched cells' contents with the last encoding's (it keeps
    those objects alive, so an equal id is the same object): unchanged and all frozen, the last bytes are reused.
    A closure over an instance with ``__cache_key__`` is encoded on every call, as ``self`` is.
    """

    def __init__(self, func: Callable[..., Any], exclude: frozenset[str]) -> None:
        self._root = func
        self._exclude = exclude
        self._owner = _name_of(underlying_function(func))
        self._watched: tuple[types.CellType, ...] = ()
        self._held: tuple[Any, ...] = ()  # the watched cells' contents at the last encoding: their ids stay valid
        self._ids: tuple[int, ...] = ()
        self._volatile = True
        self._bytes = b""
        # State of one walk (_encode): the cells met, their contents, the functions entered, whether memoizable.
        self._cells: list[types.CellType] = []
        self._contents: list[Any] = []
        self._seen: set[int] = set()
        self._memoizable = True
        self.current()  # refuses an unencodable closure now, at decoration

    def current(self) -> bytes:
        """The identity bytes for a call made now."""
        if not self._volatile:
            try:
                ids = tuple(map(id, map(_CELL_CONTENTS, self._watched)))
            except ValueError:  # a cell emptied by `del`: encode again, which says so
                ids = ()
            if ids == self._ids:
                return self._bytes
        return self._encode()

    def _encode(self) -> bytes:
        self._cells, self._contents, self._seen, self._memoizable = [], [], set(), True
        out: list[bytes] = []
        root = self._root
        if isinstance(root, functools.partial):
            self._partial(root, out, top=True)
        elif isinstance(root, types.MethodType):
            self._method(root, out, top=True)
        else:
            self._function(root, out, path="", top=True)
        body = b"".join(out)
        self._watched, self._held = tuple(self._cells), tuple(self._contents)
        self._cells, self._contents, self._seen = [], [], set()
        self._ids = tuple(map(id, self._held))
        self._volatile = not self._memoizable
        self._bytes = _tagged(b"Z", body) if body else b""
        return self._bytes

    # -- the walk ------------------------------------------------------------------------------------------------

    def _function(self, func: Any, out: list[bytes], path: str, top: bool = False) -> None:
        if not top:
            if id(func) in self._seen:
                out.append(_tagged(_RECURSION, _name_of(func).encode()))
                return
            out.append(_tagged(b"F", _name_of(func).encode()))
            for default in (*(func.__defaults__ or ()), *sorted((func.__kwdefaults__ or {}).items())):
                self._value(default, out, f"{path} (a default of {func.__qualname__})")
        self._seen.add(id(func))
        code = func.__code__
        rebound = _rebound_free_variables(code)
        for name, cell in zip(code.co_freevars, func.__closure__ or (), strict=True):
            if name in self._exclude or name == "__class__":  # super()'s cell: the class the qualname names
                continue
            where = f"{path}, which closes over `{name}`" if path else f"`{name}`"
            if name in rebound:
                raise self._refusal(where, f"which {func.__qualname__} assigns (nonlocal): state, not identity", name)
            self._cells.append(cell)
            try:
                contents = cell.cell_contents
            except ValueError:
                self._contents.append(None)
                self._memoizable = False  # noticed when it is assigned
                out.append(_EMPTY_CELL)
                continue
            self._contents.append(contents)
            out.append(_tagged(b"V", name.encode()))
            self._value(contents, out, where)

    def _partial(self, partial: functools.partial[Any], out: list[bytes], path: str = "", top: bool = False) -> None:
        where = path or f"the functools.partial of {_name_of(partial.func)}"
        for index, arg in enumerate(partial.args):
            self._value(arg, out, f"{where}, bound argument {index}", fixable_by_exclude=False)
        for keyword, arg in sorted(partial.keywords.items()):
            out.append(_tagged(b"V", keyword.encode()))
            self._value(arg, out, f"{where}, bound argument {keyword}=", fixable_by_exclude=False)
        self._callable(partial.func, out, where, top=top)

    def _method(self, method: types.MethodType, out: list[bytes], path: str = "", top: bool = False) -> None:
        where = path or f"{_name_of(method.__func__)}, bound to its instance"
        self._value(method.__self__, out, where, fixable_by_exclude=False)
        self._callable(method.__func__, out, where, top=top)

    def _callable(self, func: Any, out: list[bytes], path: str, top: bool = False) -> None:
        if isinstance(func, functools.partial):
            self._partial(func, out, path, top)
        elif isinstance(func, types.MethodType):
            self._method(func, out, path, top)
        elif isinstance(func, types.FunctionType):
            self._function(func, out, path, top)
        else:  # a builtin or a class under a partial
            self._value(func, out, path)

    def _value(self, value: Any, out: list[bytes], where: str, fixable_by_exclude: bool = True) -> None:
        exclude_name = where.split("`")[1] if fixable_by_exclude and "`" in where else None
        if isinstance(value, IdentifiedCallable):
            name, wrapped = value.identity_source()
            if name is not None:
                out.append(_tagged(b"n", name.encode()))
            else:
                self._callable(wrapped, out, f"{where} (a cached function)")
        elif isinstance(value, types.FunctionType | functools.partial | types.MethodType):
            self._callable(value, out, f"{where} (a function)")
        elif isinstance(value, staticmethod | classmethod):
            self._callable(value.__func__, out, where)
        elif isinstance(value, types.ModuleType) or (
            isinstance(value, types.BuiltinFunctionType) and isinstance(value.__self__, types.ModuleType | None)
        ):
            out.append(_tagged(b"M", _name_of(value).encode()))
        elif _frozen(value):
            out.append(canonical_bytes(value))
        elif isinstance(value, _MUTABLE_TYPES) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            raise self._refusal(where, f"a {type(value).__qualname__} whose contents may change between calls",
                                exclude_name)  # fmt: skip
        else:
            try:
                out.append(canonical_bytes(value))  # an instance with __cache_key__: called on every call
            except KeyEncodingError as exc:
                raise self._refusal(where, f"a {type(value).__qualname__}, which has no canonical encoding",
                                    exclude_name) from exc  # fmt: skip
            self._memoizable = False

    def _refusal(self, where: str, what: str, exclude_name: str | None) -> KeyEncodingError:
        short = self._owner.rsplit(".", 1)[-1]
        fixes = [f'@cached(name=f"{short}-{{...}}") naming what tells this function apart (an explicit name is '
                 "its identity: nothing it carries is keyed then)"]  # fmt: skip
        if exclude_name is not None:
            fixes.append(f'exclude=["{exclude_name}"] if `{exclude_name}` does not change the result')
        fixes.append("pass the value as an argument, or give its type a __cache_key__()")
        return KeyEncodingError(
            f"{self._owner} carries {where}: {what}, so two functions made by the same code could share entries. "
            f"Fixes: {'; or '.join(fixes)}"
        )


def underlying_function(func: Any) -> Any:
    """The plain function under partials and bound methods: its name, annotations and code."""
    while True:
        if isinstance(func, functools.partial):
            func = func.func
        elif isinstance(func, types.MethodType):
            func = func.__func__
        else:
            return func


def free_variables(func: Callable[..., Any]) -> frozenset[str]:
    """The free variables that may be keyed: ``__class__`` (from ``super()``) is implied by the qualname."""
    code = getattr(underlying_function(func), "__code__", None)
    return frozenset(code.co_freevars) - {"__class__"} if code is not None else frozenset()


def needs_identity(func: Callable[..., Any]) -> bool:
    """Whether ``func`` carries anything besides its arguments (no closure, no partial, no bound instance: no)."""
    return isinstance(func, functools.partial | types.MethodType) or bool(free_variables(func))
