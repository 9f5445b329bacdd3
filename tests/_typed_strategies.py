"""Hypothesis strategies for typed values, one per storable kind of type, and an exact equality check.

Reusable: ``CASES`` pairs an annotation with a strategy of values of exactly that type, so a round trip over any
store (the codec alone, the memory backend, Redis) can assert ``assert_same(loaded, original)``. The types are
module-level so their forward references resolve and their shape digest is stable.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any, NamedTuple, TypedDict

import pydantic
from hypothesis import strategies as st

# -- the types -------------------------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Author:
    id: int
    name: str


@dataclasses.dataclass
class Item:
    id: int
    title: str
    price: Decimal
    created: dt.datetime
    tags: tuple[str, ...]
    author: Author
    color: Color
    note: str | None = None


class Point(NamedTuple):
    x: int
    y: float
    label: str


class Movie(TypedDict):
    title: str
    year: int
    ids: list[uuid.UUID]


class PAuthor(pydantic.BaseModel):
    id: int
    name: str


class PItem(pydantic.BaseModel):
    # pydantic writes bytes as UTF-8 text by default, which fails for arbitrary bytes: base64 stores any.
    model_config = pydantic.ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    id: int
    title: str
    price: Decimal
    created: dt.datetime
    day: dt.date
    tags: set[str]
    author: PAuthor
    level: Level
    blob: bytes


# -- the strategies --------------------------------------------------------------------------------------------

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)
texts = st.text(max_size=30)
utf8_texts = st.text(max_size=30)  # hypothesis' default alphabet has no lone surrogates
decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(lambda d: d.is_finite())
# Offsets in whole minutes: JSON's RFC 3339 form has no seconds in an offset.
offsets = st.integers(-(24 * 60) + 1, 24 * 60 - 1).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
naive_datetimes = st.datetimes()
aware_datetimes = st.datetimes(timezones=st.one_of(st.just(dt.UTC), offsets))
datetimes = st.one_of(naive_datetimes, aware_datetimes)
times = st.times()
timedeltas = st.timedeltas(min_value=dt.timedelta(days=-(10**6)), max_value=dt.timedelta(days=10**6))

authors = st.builds(Author, id=ints, name=texts)
items = st.builds(
    Item,
    id=ints,
    title=texts,
    price=decimals,
    created=datetimes,
    tags=st.lists(texts, max_size=4).map(tuple),
    author=authors,
    color=st.sampled_from(Color),
    note=st.none() | texts,
)
points = st.builds(Point, x=ints, y=floats, label=texts)
movies = st.fixed_dictionaries({"title": texts, "year": ints, "ids": st.lists(st.uuids(), max_size=3)})
p_items = st.builds(
    PItem,
    id=ints,
    title=texts,
    price=decimals,
    created=datetimes,
    day=st.dates(),
    tags=st.sets(texts, max_size=4),
    author=st.builds(PAuthor, id=ints, name=texts),
    level=st.sampled_from(Level),
    blob=st.binary(max_size=20),
)
json_natives: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | ints | floats | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=10,
)


@dataclasses.dataclass(frozen=True)
class Case:
    """An annotation, a strategy of values of exactly that type, and how many examples to draw."""

    id: str
    annotation: Any
    values: st.SearchStrategy[Any]
    examples: int


CASES: list[Case] = [
    Case("json-natives", dict[str, Any], st.dictionaries(texts, json_natives, max_size=5), 400),
    Case("int", int, ints, 700),
    Case("float", float, floats, 700),
    Case("datetime-naive", dt.datetime, naive_datetimes, 500),
    Case("datetime-aware", dt.datetime, aware_datetimes, 500),
    Case("date", dt.date, st.dates(), 600),
    Case("time", dt.time, times, 600),
    Case("timedelta", dt.timedelta, timedeltas, 600),
    Case("decimal", Decimal, decimals, 600),
    Case("uuid", uuid.UUID, st.uuids(), 700),
    Case("enums", list[Color | Level], st.lists(st.sampled_from(Color) | st.sampled_from(Level), max_size=6), 300),
    Case("tuple-fixed", tuple[int, str, bool], st.tuples(ints, texts, st.booleans()), 400),
    Case("tuple-variadic", tuple[float, ...], st.lists(floats, max_size=6).map(tuple), 300),
    Case("set", set[int], st.sets(ints, max_size=6), 300),
    Case("frozenset", frozenset[str], st.frozensets(texts, max_size=6), 300),
    Case("bytes", bytes, st.binary(max_size=64), 600),
    Case("dataclass", Item, items, 250),
    Case("list-of-dataclass", list[Item], st.lists(items, max_size=4), 120),
    Case("namedtuple", Point, points, 400),
    Case("typeddict", Movie, movies, 300),
    Case("pydantic", PItem, p_items, 250),
    Case("list-of-pydantic", list[PItem], st.lists(p_items, max_size=3), 100),
    Case("dict-str-decimal", dict[str, Decimal], st.dictionaries(texts, decimals, max_size=5), 300),
    Case("dict-int-dataclass", dict[int, Author], st.dictionaries(ints, authors, max_size=4), 200),
    Case("optional-dataclass", Item | None, st.none() | items, 200),
]


def assert_same(got: Any, expected: Any, path: str = "$") -> None:
    """Equal in value and exactly equal in type, recursively (``1 == 1.0 == True`` does not pass)."""
    assert type(got) is type(expected), f"{path}: {type(got).__qualname__} != {type(expected).__qualname__}"
    if isinstance(expected, pydantic.BaseModel):
        for name in type(expected).model_fields:
            assert_same(getattr(got, name), getattr(expected, name), f"{path}.{name}")
    elif dataclasses.is_dataclass(expected):
        for field in dataclasses.fields(expected):
            assert_same(getattr(got, field.name), getattr(expected, field.name), f"{path}.{field.name}")
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected), f"{path}: length"
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert_same(g, e, f"{path}[{i}]")
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys(), f"{path}: keys"
        for key, value in expected.items():
            assert_same(got[key], value, f"{path}[{key!r}]")
    elif isinstance(expected, set | frozenset):
        assert got == expected, f"{path}: {got!r} != {expected!r}"
        assert {type(x) for x in got} == {type(x) for x in expected}, f"{path}: element types"
    elif isinstance(expected, dt.datetime | dt.time):
        assert got == expected, f"{path}: {got!r} != {expected!r}"
        assert got.utcoffset() == expected.utcoffset(), f"{path}: offset of {got!r} != {expected!r}"
    else:
        assert got == expected, f"{path}: {got!r} != {expected!r}"
