"""Keys are structural: canonical bytes of the bound arguments, hashed. Never str() of arguments."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachelayer import KeyEncodingError, canonical_bytes
from cachelayer._keys import ArgumentKeyer, KeyLayout, check_method_owner, key_version


class Color(enum.Enum):
    RED = 1


class Size(enum.IntEnum):
    ONE = 1


@dataclasses.dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1, "1"),
        (1, 1.0),
        (1, True),
        (0, False),
        (None, "None"),
        ("", b""),
        ([1, 2], (1, 2)),
        ([1, [2]], [[1], 2]),
        ({"a": 1}, [("a", 1)]),
        ({1, 2}, [1, 2]),
        (Color.RED, 1),
        (Size.ONE, 1),
        (Decimal("1.0"), 1.0),
        (dt.date(2024, 1, 2), "2024-01-02"),
        (uuid.UUID(int=1), str(uuid.UUID(int=1))),
        (Point(1, 2), {"x": 1, "y": 2}),
        ("a,b", ["a", "b"]),
        (["ab", "c"], ["a", "bc"]),
        (0.0, -0.0),
    ],
)
def test_distinct_values_have_distinct_encodings(a: Any, b: Any) -> None:
    assert canonical_bytes(a) != canonical_bytes(b)


def test_equal_values_share_an_encoding() -> None:
    assert canonical_bytes({"b": 2, "a": 1}) == canonical_bytes({"a": 1, "b": 2})
    assert canonical_bytes({3, 1, 2}) == canonical_bytes(frozenset({1, 2, 3}))  # a set is a set, frozen or not
    assert canonical_bytes(dt.datetime(2024, 1, 1, 12)) == canonical_bytes(dt.datetime(2024, 1, 1, 12))


def test_unknown_types_are_refused_with_a_typed_error() -> None:
    with pytest.raises(KeyEncodingError, match="object"):
        canonical_bytes(object())


def test_cache_key_hook() -> None:
    class Query:
        def __init__(self, q: str) -> None:
            self.q = q

        def __cache_key__(self) -> str:
            return self.q

    assert canonical_bytes(Query("a")) == canonical_bytes(Query("a"))
    assert canonical_bytes(Query("a")) != canonical_bytes("a")


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(), st.binary())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner), max_leaves=12)


@given(values, values)
def test_encoding_is_injective_on_plain_values(a: Any, b: Any) -> None:
    # Equal encodings only for values that are equal *and* of the same types all the way down.
    if canonical_bytes(a) == canonical_bytes(b):
        assert repr(a) == repr(b) or (a == b and type(a) is type(b))


async def listing(category: str, page: int = 1, *, sort: str = "hot") -> None:
    return None


def keyer(func: Any = listing, **kw: Any) -> ArgumentKeyer:
    return ArgumentKeyer(func, **kw)


def name(k: ArgumentKeyer, *args: Any, **kwargs: Any) -> str:
    return k.name(k.arguments(args, kwargs))


def test_defaults_and_keyword_order_do_not_change_the_key() -> None:
    k = keyer()
    assert name(k, "art") == name(k, "art", 1) == name(k, category="art", page=1, sort="hot")
    assert name(k, page=1, category="art") == name(k, category="art", page=1)
    assert name(k, "art", 2) != name(k, "art", 1)
    assert name(k, "art", sort="new") != name(k, "art")


def test_int_and_str_arguments_do_not_collide() -> None:
    async def f(x: Any) -> None:
        return None

    k = keyer(f)
    assert len({name(k, 1), name(k, "1"), name(k, 1.0), name(k, True), name(k, None)}) == 5


def test_key_names_module_and_qualname() -> None:
    assert name(keyer(), "art").startswith(f"{__name__}.listing:")


class Repo:
    def __init__(self, db: str) -> None:
        self.db = db

    def __cache_key__(self) -> str:
        return self.db

    async def get(self, wid: int) -> str:
        return f"{self.db}:{wid}"

    @classmethod
    async def build(cls, wid: int) -> None:
        return None


class Keyless:
    async def get(self, wid: int) -> None:
        return None


def test_self_is_keyed_by_its_cache_key() -> None:
    k = keyer(Repo.get)
    assert name(k, Repo("db_a"), 1) == name(k, Repo("db_a"), 1)
    assert name(k, Repo("db_a"), 1) != name(k, Repo("db_b"), 1)
    assert name(k, Repo("db_a"), 1) != name(k, Repo("db_a"), 2)


def test_self_through_the_memo_fast_path() -> None:
    k = keyer(Repo.get)
    first = k.name_and_tags((Repo("db_a"), 1), {})
    assert k.name_and_tags((Repo("db_a"), 1), {}) == first  # a memo hit for an equal instance
    assert k.name_and_tags((Repo("db_b"), 1), {})[0] != first[0]
    assert k.name_and_tags((Repo("db_a"), True), {})[0] != first[0]
    assert first[0] == name(k, Repo("db_a"), 1)


def test_instances_shared_leaves_self_out() -> None:
    k = keyer(Repo.get, instances="shared")
    assert name(k, Repo("db_a"), 1) == name(k, Repo("db_b"), 1)
    assert name(keyer(Keyless.get, instances="shared"), Keyless(), 1) == name(k, Repo("x"), 1).replace(
        "Repo.get", "Keyless.get"
    )
    with pytest.raises(ValueError, match="instances"):
        keyer(Repo.get, instances="nope")


def test_cls_is_keyed_by_the_class_name() -> None:
    k = keyer(Repo.build.__func__)  # type: ignore[attr-defined]

    class Sub(Repo):
        pass

    assert name(k, Repo, 1) == name(k, Repo, 1)
    assert name(k, Repo, 1) != name(k, Sub, 1)
    assert canonical_bytes(Repo) == b"Y" + str(len(f"{__name__}.Repo")).encode() + f":{__name__}.Repo".encode()


def test_a_method_of_a_class_without_cache_key_is_refused_with_both_fixes() -> None:
    with pytest.raises(KeyEncodingError) as info:
        check_method_owner(Keyless, "Keyless.get", "key")
    message = str(info.value)
    assert "Keyless.get" in message
    assert "__cache_key__(self)" in message
    assert 'instances="shared"' in message
    assert isinstance(info.value, TypeError)
    check_method_owner(Keyless, "Keyless.get", "shared")
    check_method_owner(Repo, "Repo.get", "key")
    check_method_owner(Keyless, "Keyless.build", "key", first_parameter="cls")


def test_version_goes_into_the_key_name() -> None:
    plain = name(keyer(), "art")
    typed = name(keyer(version=key_version("0bfa223b")), "art")
    both = name(keyer(version=key_version("0bfa223b", "2")), "art")
    explicit = name(keyer(version=key_version("", "2")), "art")
    assert typed.startswith(f"{__name__}.listing@t0bfa223b:")
    assert both.startswith(f"{__name__}.listing@t0bfa223b/v2:")
    assert explicit.startswith(f"{__name__}.listing@v2:")
    assert len({plain, typed, both, explicit}) == 4
    assert {n.rsplit(":", 1)[1] for n in (plain, typed, both, explicit)} == {plain.rsplit(":", 1)[1]}
    assert key_version() == ""
    for bad in ("a b", "x{y}", "é", "x" * 65):
        with pytest.raises(ValueError, match="version"):
            key_version("", bad)


def test_versioned_keys_keep_scalars_apart() -> None:
    async def f(x: Any) -> None:
        return None

    k = keyer(f, version=key_version("0bfa223b", "7"))
    names = {k.name_and_tags((v,), {})[0] for v in (1, "1", 1.0, True)}
    assert len(names) == 4


def test_excluded_arguments() -> None:
    async def f(wid: int, session: object) -> None:
        return None

    k = keyer(f, exclude=["session"])
    assert name(k, 1, object()) == name(k, 1, object())
    with pytest.raises(ValueError, match="does not have"):
        keyer(f, exclude=["nope"])


def test_template_is_readable_and_still_hashed() -> None:
    k = keyer(template="cat={category}:p={page}")
    key = name(k, "art", 3)
    assert ":cat=art:p=3:" in key
    # A template that renders alike for 1 and "1" must not make them collide.

    async def f(x: Any) -> None:
        return None

    kt = keyer(f, template="x={x}")
    assert name(kt, 1) != name(kt, "1")
    with pytest.raises(ValueError, match="not a parameter"):
        keyer(template="{nope}")


def test_tag_templates() -> None:
    k = keyer(tags=["category:{category}", "listing"])
    assert k.tag_names(k.arguments(("art",), {})) == ["category:art", "listing"]


def test_layout_keeps_value_and_lease_in_one_hash_slot() -> None:
    layout = KeyLayout("wp")
    key = layout.value_key("service.catalog.page:abc")
    assert key == "wp:{service.catalog.page:abc}"
    assert layout.lease_key(key) == "wp:{service.catalog.page:abc}:lease"
    assert layout.tag_key("w:1") == "wp:tag:{w:1}"
    with pytest.raises(ValueError, match="namespace"):
        KeyLayout("a{b}")
