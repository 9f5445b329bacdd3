"""The key contract of ``@cached``: two calls share an entry only when they would compute the same value.

Closures, a ``__cache_key__`` that forgot its ``return``, bare ``@cached``, ``functools.partial`` and
``@staticmethod``/``@classmethod``: each either keys correctly or is refused with the fix, never a silent share.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
import pytest_asyncio

from cachelayer import Backend, Cache, CachedFunction, KeyEncodingError, cached
from cachelayer._keys import ArgumentKeyer


@pytest_asyncio.fixture
async def cache() -> AsyncIterator[Cache]:
    made = Cache.from_url("memory://", namespace="contract")
    yield made
    await made.aclose()


class Client:  # a thing with no canonical encoding: a DB client, a session
    pass


# --------------------------------------------------------------------------- closures


def make_times(k: int) -> CachedFunction[[int], int]:
    @cached(cache=lambda: _current_cache)
    async def times(x: int) -> int:
        return x * k

    return times


_current_cache: Any = None


async def test_two_closures_of_one_factory_do_not_share_entries(store: Backend) -> None:
    global _current_cache
    _current_cache = Cache(store, namespace="closures")
    try:
        double, triple = make_times(2), make_times(3)
        assert await double(5) == 10
        assert await triple(5) == 15
        assert double.key(5) != triple.key(5)
        assert make_times(2).key(5) == double.key(5)  # the same closed-over value: the same entry
        assert await make_times(2)(5) == 10
    finally:
        await _current_cache.aclose()
        _current_cache = None


async def test_a_closure_over_a_rebound_variable_is_keyed_by_its_current_value(cache: Cache) -> None:
    factor = 2

    @cached(cache=cache)
    async def times(x: int) -> int:
        return x * factor

    assert await times(5) == 10
    factor = 3  # the enclosing scope rebinds it after decoration: the key must follow
    assert await times(5) == 15
    factor = 2
    assert await times(5) == 10


async def test_a_rebound_variable_inside_a_closed_over_function_changes_the_key(cache: Cache) -> None:
    factor = 2

    def multiply(x: int) -> int:
        return x * factor

    @cached(cache=cache)
    async def times(x: int) -> int:
        return multiply(x)

    assert await times(5) == 10
    factor = 3  # `times` itself still holds the same `multiply`: the watched cells reach into it
    assert await times(5) == 15


def test_a_closure_over_an_unencodable_value_is_refused_at_decoration() -> None:
    db = Client()

    with pytest.raises(KeyEncodingError) as raised:

        @cached()
        async def load(x: int) -> int:
            return x if db else 0

    message = str(raised.value)
    assert "`db`" in message
    assert "Client" in message
    assert "name=" in message
    assert "exclude=" in message


async def test_a_closure_may_exclude_a_free_variable_or_state_its_identity_by_name(cache: Cache) -> None:
    db = Client()
    loads: list[int] = []

    @cached(cache=cache, exclude=["db", "loads"])
    async def load(x: int) -> int:
        loads.append(x)
        return x if db else 0

    @cached(cache=cache, name="load-named")
    async def named(x: int) -> int:
        loads.append(x)
        return x if db else 0

    assert [await load(1), await load(1), await named(2), await named(2)] == [1, 1, 2, 2]
    assert loads == [1, 2]


def test_exclude_still_refuses_a_name_that_is_neither_parameter_nor_free_variable() -> None:
    with pytest.raises(ValueError, match="nowhere"):

        @cached(exclude=["nowhere"])
        async def f(x: int) -> int:
            return x


def test_a_closure_over_a_mutable_container_is_refused_with_the_fix() -> None:
    seen: list[int] = []

    with pytest.raises(KeyEncodingError) as raised:

        @cached()
        async def load(x: int) -> int:
            seen.append(x)
            return x

    assert "`seen`" in str(raised.value)
    assert 'exclude=["seen"]' in str(raised.value)


def test_a_closure_that_rebinds_its_own_free_variable_is_refused() -> None:
    loads = 0

    with pytest.raises(KeyEncodingError) as raised:

        @cached()
        async def item(i: int) -> int:
            nonlocal loads
            loads += 1
            return i

    assert "`loads`" in str(raised.value)
    assert 'exclude=["loads"]' in str(raised.value)
    assert loads == 0


async def test_a_closure_over_a_function_is_keyed_by_that_function_and_what_it_closes_over(cache: Cache) -> None:
    def make(k: int) -> CachedFunction[[int], int]:
        def multiply(x: int) -> int:
            return x * k

        @cached(cache=cache)
        async def scaled(x: int) -> int:
            return multiply(x)

        return scaled

    assert [await make(2)(5), await make(3)(5)] == [10, 15]

    def make_with_client() -> None:
        db = Client()

        def query(x: int) -> int:
            return x if db else 0

        @cached(cache=cache)
        async def scaled(x: int) -> int:
            return query(x)

    with pytest.raises(KeyEncodingError, match=r"`query`.*`db`"):
        make_with_client()


class KindA:
    pass


class KindB:
    pass


async def test_a_closure_over_a_class_is_keyed_and_super_is_not(cache: Cache) -> None:
    class Base:
        def __cache_key__(self) -> str:
            return "base"

        async def value(self, x: int) -> int:
            return x

    class Child(Base):
        @cached(cache=cache)
        async def value(self, x: int) -> int:  # super() makes a __class__ cell holding Child
            return await super().value(x) + 1

    assert await Child().value(1) == 2
    assert await Child().value(1) == 2

    def make(kind: type) -> CachedFunction[[], str]:
        @cached(cache=cache)
        async def kind_name() -> str:
            return kind.__name__

        return kind_name

    assert [await make(KindA)(), await make(KindB)()] == ["KindA", "KindB"]
    # A class defined inside a function is one qualname for every class that function makes: refused.
    with pytest.raises(KeyEncodingError, match="defined inside a function"):
        make(Child)


async def test_two_functions_of_one_qualname_made_by_one_factory_are_two_identities(cache: Cache) -> None:
    def make(op: str) -> CachedFunction[[int], int]:
        step = (lambda x: x + 1) if op == "inc" else (lambda x: x - 1)  # one qualname: make.<locals>.<lambda>

        @cached(cache=cache)
        async def apply(x: int) -> int:
            return step(x)

        return apply

    assert [await make("inc")(5), await make("dec")(5)] == [6, 4]

    def pick(op: str) -> CachedFunction[[int], int]:
        if op == "double":

            @cached(cache=cache)
            async def scale(x: int) -> int:
                return x * 2

        else:

            @cached(cache=cache)
            async def scale(x: int) -> int:
                return x * 3

        return scale

    assert [await pick("double")(5), await pick("triple")(5)] == [10, 15]


async def test_a_recursive_closure_refers_to_itself(cache: Cache) -> None:
    def make(step: int) -> CachedFunction[[int], int]:
        @cached(cache=cache)
        async def total(n: int) -> int:  # `total` is an empty cell while the decorator runs
            return 0 if n <= 0 else n + await total(n - step)

        return total

    assert await make(1)(4) == 10
    assert await make(2)(4) == 6


async def test_a_closure_over_another_cached_function(cache: Cache) -> None:
    def make(k: int) -> CachedFunction[[int], int]:
        @cached(cache=cache)
        async def base(x: int) -> int:
            return x * k

        @cached(cache=cache)
        async def plus_one(x: int) -> int:
            return await base(x) + 1

        return plus_one

    assert [await make(2)(5), await make(3)(5)] == [11, 16]


async def test_a_closure_over_an_instance_with_cache_key_is_keyed_by_it(cache: Cache) -> None:
    class Tenant:
        def __init__(self, name: str) -> None:
            self.name = name

        def __cache_key__(self) -> str:
            return self.name

    def make(tenant: Tenant) -> CachedFunction[[int], str]:
        @cached(cache=cache)
        async def greet(x: int) -> str:
            return f"{tenant.name}{x}"

        return greet

    assert [await make(Tenant("a"))(1), await make(Tenant("b"))(1)] == ["a1", "b1"]


# --------------------------------------------------------------------------- __cache_key__ returning None


class Forgetful:
    def __init__(self, db: str) -> None:
        self.db = db

    def __cache_key__(self) -> Any:
        self.db  # noqa: B018  # the forgotten `return`


def test_a_cache_key_returning_none_is_an_error_naming_the_class() -> None:
    keyer = ArgumentKeyer(_takes_anything)
    with pytest.raises(KeyEncodingError) as raised:
        keyer.name_and_tags((Forgetful("a"),), {})
    assert "Forgetful" in str(raised.value)
    assert "return" in str(raised.value)


async def _takes_anything(x: Any) -> int:
    return 1


async def test_a_method_whose_cache_key_returns_none_is_an_error_on_the_memo_path(cache: Cache) -> None:
    class Repo(Forgetful):
        @cached(cache=cache)
        async def get(self, wid: int) -> str:
            return f"{self.db}:{wid}"

    with pytest.raises(KeyEncodingError, match="Repo"):
        await Repo("a").get(1)
    with pytest.raises(KeyEncodingError, match="Repo"):
        Repo("b").get.key(1)


# --------------------------------------------------------------------------- bare @cached


BARE_LOADS: list[int] = []


async def test_bare_cached_works_like_cached_with_parentheses(cache: Cache) -> None:
    from cachelayer import set_default_cache

    set_default_cache(cache)
    try:

        @cached
        async def bare(x: int) -> int:
            BARE_LOADS.append(x)  # a global: bare @cached has no exclude= for a closure over a list
            return x * 2

        assert isinstance(bare, CachedFunction)
        assert [await bare(2), await bare(2)] == [4, 4]
        assert BARE_LOADS == [2]
        assert bare.key(2).startswith(f"contract:{{{__name__}.")
    finally:
        set_default_cache(None)


# --------------------------------------------------------------------------- functools.partial


async def scale(k: int, x: int, *, offset: int = 0) -> int:
    return k * x + offset


async def test_a_partial_is_keyed_by_its_function_and_bound_arguments(cache: Cache) -> None:
    double = cached(cache=cache)(functools.partial(scale, 2))
    triple = cached(cache=cache)(functools.partial(scale, 3))
    shifted = cached(cache=cache)(functools.partial(scale, 2, offset=1))
    assert [await double(5), await triple(5), await shifted(5)] == [10, 15, 11]
    assert len({double.key(5), triple.key(5), shifted.key(5)}) == 3
    assert cached(cache=cache)(functools.partial(scale, 2)).key(5) == double.key(5)
    assert f"{__name__}.scale" in double.key(5)
    assert await double(5) == 10


def test_a_partial_over_an_unencodable_argument_is_refused_at_decoration() -> None:
    async def query(db: Client, x: int) -> int:
        return x

    with pytest.raises(KeyEncodingError, match="name="):
        cached()(functools.partial(query, Client()))


async def test_a_bound_method_is_keyed_by_its_instance_or_refused(cache: Cache) -> None:
    class Repo:
        def __init__(self, db: str) -> None:
            self.db = db

        def __cache_key__(self) -> str:
            return self.db

        async def load(self, x: int) -> str:
            return f"{self.db}{x}"

    a, b = cached(cache=cache)(Repo("a").load), cached(cache=cache)(Repo("b").load)
    assert [await a(1), await b(1)] == ["a1", "b1"]

    class Keyless:
        async def load(self, x: int) -> int:
            return x

    with pytest.raises(KeyEncodingError, match="name="):
        cached(cache=cache)(Keyless().load)
    assert await cached(cache=cache, name="keyless")(Keyless().load)(3) == 3


# --------------------------------------------------------------------------- staticmethod / classmethod


async def test_cached_over_staticmethod_and_classmethod(cache: Cache) -> None:
    class Catalog:
        loads: ClassVar[list[int]] = []

        @cached(cache=cache)
        @staticmethod
        async def double(x: int) -> int:
            Catalog.loads.append(x)
            return x * 2

        @cached(cache=cache)
        @classmethod
        async def describe(cls, x: int) -> str:
            return f"{cls.__name__}{x}"

    class Sub(Catalog):
        pass

    assert await Catalog.double(2) == 4
    assert await Catalog().double(2) == 4  # no self binding
    assert Catalog.loads == [2]
    assert Catalog.double.key(2) == Catalog().double.key(2)
    assert await Catalog.describe(1) == "Catalog1"
    assert await Catalog().describe(1) == "Catalog1"
    assert await Sub.describe(1) == "Sub1"  # cls is keyed by its name
    assert Sub.describe.key(1) != Catalog.describe.key(1)


def test_a_sync_callable_is_refused_naming_what_it_got() -> None:
    with pytest.raises(TypeError, match="staticmethod"):

        class Catalog:
            @cached()  # type: ignore[arg-type]
            @staticmethod
            def sync(x: int) -> int:
                return x

    with pytest.raises(TypeError, match="int"):
        cached()(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="partial"):
        cached()(functools.partial(lambda x: x, 1))  # type: ignore[arg-type]
