"""What a callable carries besides its arguments, as bytes for its key: a closure's free variables, a partial's
bound arguments, a bound method's instance (see :class:`CallableIdentity`).

Two callables of one ``module.qualname`` share entries only when they would compute the same values:

- a closure's free variables are keyed by their values at call time. A value :func:`canonical_bytes` encodes is
  keyed (a class too, by its name, unless it was defined inside a function, where names repeat; the ``__class__``
  cell ``super()`` makes is left out: the qualname names it); a function by its ``module.qualname``, its code (two
  lambdas of one factory are one qualname), its defaults and, recursively, its own free variables; a cached
  function by its ``name=`` or what it wraps; a module or builtin by its name. Anything else (a client, a session),
  a mutable container (a list used as a call log) and a variable the function assigns (``nonlocal``: state, not
  identity) are refused when the function is decorated, with the fixes: ``exclude=["that_name"]`` (``exclude``
  names parameters and free variables), or ``name=`` (an explicit name is the identity: then nothing the callable
  carries is keyed). A free variable not assigned yet (the function's own name, for recursion) is read at the
  first call.
- a function defined inside another function carries its code too: two definitions of one qualname in one
  factory (``if op: async def f ... else: async def f ...``) are two identities.
- the enclosing scope may rebind a free variable after decoration: each call compares the ids of the watched
  cells' contents with the last encoding's and encodes again when one changed. No closure, no cost.
- a ``functools.partial`` is keyed by its function and its bound arguments; a bound method by its instance's
  ``__cache_key__()`` (else refused: ``name=``). ``__cache_key__()`` returning None is an error, never a shared key.

Plain module-level functions carry nothing: their identity bytes are empty, their keys unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import dis
import enum
import functools
import hashlib
import operator
import types
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final

from ._canonical import canonical_bytes, tagged
from ._errors import KeyEncodingError

__all__ = [
    "CallableIdentity",
    "IdentifiedCallable",
    "free_variables",
    "name_of",
    "needs_identity",
    "underlying_function",
]

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


@functools.lru_cache(maxsize=1024)
def _code_identity(code: types.CodeType) -> bytes:
    """A digest of what ``code`` does (its bytecode, names and constants, nested code too): stable across processes
    of one Python version, unlike ``marshal`` output or ``id()``."""
    hashed = hashlib.blake2b(code.co_code, digest_size=16)
    hashed.update("\0".join(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            hashed.update(b"c" + _code_identity(const))
        else:
            try:
                hashed.update(canonical_bytes(const))
            except KeyEncodingError:  # Ellipsis, complex: their repr is stable
                hashed.update(f"{type(const).__qualname__}:{const!r}".encode())
    digest: bytes = hashed.digest()
    return digest


def _local_class(value: Any) -> type | None:
    """The class of ``value`` (a class, an enum member, a dataclass instance) when it was defined inside a function,
    where one qualname names every class that function makes."""
    if isinstance(value, type):
        cls = value
    elif isinstance(value, enum.Enum) or dataclasses.is_dataclass(value):
        cls = type(value)
    else:
        return None
    return cls if "<locals>" in cls.__qualname__ else None


def _owning_class(func: Any, cell: types.CellType) -> bool:
    """Whether ``cell`` holds the class ``func`` is a method of (a method of a class defined inside a function that
    names its own class): that class is told apart by its instances (``self`` is keyed), as ``super()``'s is."""
    try:
        contents = cell.cell_contents
    except ValueError:
        return False
    return isinstance(contents, type) and func.__qualname__.startswith(contents.__qualname__ + ".")


def name_of(obj: Any) -> str:
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
        self._owner = name_of(underlying_function(func))
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
        self._bytes = tagged(b"Z", body) if body else b""
        return self._bytes

    # -- the walk ------------------------------------------------------------------------------------------------

    def _function(self, func: Any, out: list[bytes], path: str, top: bool = False) -> None:
        if not top:
            if id(func) in self._seen:
                out.append(tagged(_RECURSION, name_of(func).encode()))
                return
            out.append(tagged(b"F", name_of(func).encode()))
            out.append(tagged(b"c", _code_identity(func.__code__)))  # two lambdas of one factory: one qualname
            for default in (*(func.__defaults__ or ()), *sorted((func.__kwdefaults__ or {}).items())):
                self._value(default, out, f"{path} (a default of {func.__qualname__})")
        elif "<locals>" in func.__qualname__:  # one qualname for every function of that name its factory defines
            out.append(tagged(b"c", _code_identity(func.__code__)))
        self._seen.add(id(func))
        code = func.__code__
        rebound = _rebound_free_variables(code)
        for name, cell in zip(code.co_freevars, func.__closure__ or (), strict=True):
            if name in self._exclude or name == "__class__":  # super()'s cell: the class the qualname names
                continue
            if _owning_class(func, cell):  # a method naming its own class, as super() does: the qualname names it
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
            out.append(tagged(b"V", name.encode()))
            self._value(contents, out, where)

    def _partial(self, partial: functools.partial[Any], out: list[bytes], path: str = "", top: bool = False) -> None:
        where = path or f"the functools.partial of {name_of(partial.func)}"
        for index, arg in enumerate(partial.args):
            self._value(arg, out, f"{where}, bound argument {index}", fixable_by_exclude=False)
        for keyword, arg in sorted(partial.keywords.items()):
            out.append(tagged(b"V", keyword.encode()))
            self._value(arg, out, f"{where}, bound argument {keyword}=", fixable_by_exclude=False)
        self._callable(partial.func, out, where, top=top)

    def _method(self, method: types.MethodType, out: list[bytes], path: str = "", top: bool = False) -> None:
        where = path or f"{name_of(method.__func__)}, bound to its instance"
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
                out.append(tagged(b"n", name.encode()))
            else:
                self._callable(wrapped, out, f"{where} (a cached function)")
        elif isinstance(value, types.FunctionType | functools.partial | types.MethodType):
            self._callable(value, out, f"{where} (a function)")
        elif isinstance(value, staticmethod | classmethod):
            self._callable(value.__func__, out, where)
        elif isinstance(value, types.ModuleType) or (
            isinstance(value, types.BuiltinFunctionType) and isinstance(value.__self__, types.ModuleType | None)
        ):
            out.append(tagged(b"M", name_of(value).encode()))
        elif (local := _local_class(value)) is not None:
            what = "the class" if value is local else "an instance of"
            raise self._refusal(where, f"{what} {local.__qualname__}, defined inside a function: its name does not "
                                "tell apart the classes that function makes", exclude_name)  # fmt: skip
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
    """Whether ``func`` carries anything besides its arguments and its qualname: a closure, a partial, a bound
    instance, or code defined inside another function (where one qualname can name several functions)."""
    if isinstance(func, functools.partial | types.MethodType) or free_variables(func):
        return True
    return "<locals>" in getattr(func, "__qualname__", "")
