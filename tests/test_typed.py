"""ValueType: resolution, errors that name the fix, strict decoding, and shape digests stable across processes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from cachelayer import Cache, cached
from cachelayer._errors import CodecError, SerializationError
from cachelayer._serializers import serializer_by_name
from cachelayer._typed import (
    ValueType,
    _shadow_annotation,
    describe_unstorable,
    resolve_value_type,
    value_type_for_function,
)
from tests._typed_strategies import CASES, Author, Case, Item, PItem, assert_same

JSON = serializer_by_name("orjson")


class Plain:
    pass


@pytest.mark.parametrize("annotation", [None, Any, object])
def test_untyped_annotations_keep_the_json_path(annotation: Any) -> None:
    assert resolve_value_type(annotation, JSON, owner="m.f") is None


async def _untyped():  # type: ignore[no-untyped-def]
    return 1


def test_a_function_without_annotation_is_untyped() -> None:
    assert value_type_for_function(_untyped, JSON) is None


@pytest.mark.parametrize(
    ("annotation", "names"),
    [
        (Plain, "Plain"),
        (list[Plain], "Plain"),
        (dict[tuple[int, int], str], "keys"),
        (Callable[[], int], "Callable"),
    ],
)
def test_unstorable_types_are_refused_at_resolve_naming_owner_type_and_fixes(annotation: Any, names: str) -> None:
    with pytest.raises(SerializationError) as info:
        resolve_value_type(annotation, JSON, owner="app.catalog.get_page")
    message = str(info.value)
    for part in ("app.catalog.get_page", names, "dataclass", "pydantic", "JSON-native", "drop the return annotation"):
        assert part in message
    assert isinstance(info.value, TypeError)


def test_a_wrong_shape_is_a_codec_error_never_a_coerced_value() -> None:
    value_type = resolve_value_type(list[Author], JSON, owner="m.f")
    assert value_type is not None
    for stored in (b'[{"id":"1","name":"x"}]', b'{"id":1}', b"[1]", b"not json", b'[{"id":1}]'):
        with pytest.raises(CodecError):
            value_type.loads(stored)
    pydantic_type = resolve_value_type(PItem, JSON, owner="m.f")
    assert pydantic_type is not None
    with pytest.raises(CodecError):
        pydantic_type.loads(b'{"id":"1"}')


def test_a_value_that_would_read_back_different_is_refused_on_store() -> None:
    value_type = resolve_value_type(list[Author], JSON, owner="m.f")
    assert value_type is not None
    with pytest.raises(SerializationError, match=r"m\.f returned"):
        value_type.dumps([{"id": 1, "name": "x"}])  # a dict where Author was declared
    assert value_type.dumps([Author(1, "x")]) == b'[{"id":1,"name":"x"}]'  # readable JSON


def test_describe_unstorable_names_the_owner_and_the_annotation_fix() -> None:
    message = describe_unstorable(b"\x00", "app.f")
    assert "app.f returned a value of type bytes" in message
    assert "-> bytes" in message


async def _later() -> Later:
    raise NotImplementedError


def test_a_forward_reference_is_resolved_on_first_use() -> None:
    value_type = value_type_for_function(_later, JSON)
    assert value_type is not None
    assert value_type.loads(value_type.dumps(Later(3))) == Later(3)
    assert len(value_type.version) == 8
    assert value_type.converts
    # A hit's template, as the resolved type builds it.
    assert value_type.from_template(value_type.template({"x": 3})) == Later(3)


@dataclasses.dataclass
class Later:
    x: int


_SHAPE_SCRIPT = """
import dataclasses, sys
from cachelayer._serializers import serializer_by_name
from cachelayer._typed import resolve_value_type

@dataclasses.dataclass
class Item:
    id: int
    {extra}

print(resolve_value_type(list[Item], serializer_by_name("orjson"), owner="m.f").version)
"""


def _version_in_a_new_process(extra: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _SHAPE_SCRIPT.format(extra=extra)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def test_the_shape_digest_is_stable_across_processes_and_changes_with_the_shape() -> None:
    first = _version_in_a_new_process("name: str")
    assert first == _version_in_a_new_process("name: str")
    assert first != _version_in_a_new_process("name: int")
    assert first != _version_in_a_new_process("title: str")


def test_the_digest_differs_by_serializer_and_engine() -> None:
    json_type = resolve_value_type(Item, JSON, owner="m.f")
    packed_type = resolve_value_type(Item, serializer_by_name("msgpack"), owner="m.f")
    assert json_type is not None
    assert packed_type is not None
    assert json_type.version != packed_type.version
    assert typing.get_type_hints(_later)["return"] is Later


# -- hits built from a template: each caller's own value ---------------------------------------------------------


def _mutables(value: Any, found: set[int]) -> set[int]:
    """The ids of every mutable container in ``value`` (lists, dicts, sets, dataclass and Struct instances)."""
    if isinstance(value, list | dict | set) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        found.add(id(value))
    if isinstance(value, dict):
        for part in (*value.keys(), *value.values()):
            _mutables(part, found)
    elif isinstance(value, list | tuple | set | frozenset):
        for part in value:
            _mutables(part, found)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            _mutables(getattr(value, field.name), found)
    elif hasattr(value, "__struct_fields__"):
        found.add(id(value))
        for name in value.__struct_fields__:
            _mutables(getattr(value, name), found)
    return found


def _template_cases() -> list[Case]:
    return [case for case in CASES if _value_type(case).converts]


def _value_type(case: Case) -> ValueType[Any]:
    value_type = resolve_value_type(case.annotation, JSON, owner=f"tests.{case.id}")
    assert value_type is not None
    return value_type


@pytest.mark.parametrize("case", _template_cases(), ids=[case.id for case in _template_cases()])
def test_values_built_from_a_template_equal_decoding_and_share_no_container(case: Case) -> None:
    # What a hit gets from a kept template (its shadow, for types with dataclasses), conversion after conversion.
    value_type = _value_type(case)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(value=case.values)
    def check(value: Any) -> None:
        data = value_type.dumps(value)
        template = orjson.loads(data)
        expected = value_type.loads(data)
        typed = value_type.template(template)
        built = [value_type.from_template(typed) for _ in range(4)]
        kept = _mutables(template, set()) | _mutables(typed, set())
        seen: set[int] = set()
        for value_built in built:
            assert_same(value_built, expected)
            mine = _mutables(value_built, set())
            assert not mine & kept, "a hit shares a container with the template or its shadow"
            assert not mine & seen, "two hits share a container"
            seen |= mine

    check()


def test_a_type_with_untyped_parts_builds_no_hit_from_a_template() -> None:
    # msgspec.convert hands an Any part over as it is: every hit would share the template's containers.
    value_type = resolve_value_type(dict[str, Any], JSON, owner="m.f")
    assert value_type is not None
    assert not value_type.converts


@pytest.mark.parametrize("where", ["memory", "redis"])
async def test_a_mutated_typed_hit_with_untyped_parts_never_changes_the_next_hit(where: str, redis_url: str) -> None:
    cache = Cache.from_url("memory://" if where == "memory" else redis_url, namespace=f"typed-{uuid.uuid4().hex[:8]}")

    @cached(cache=cache)
    async def settings_of(user: int) -> dict[str, Any]:
        return {"tags": ["a"], "limits": {"daily": [1]}}

    try:
        hits = [await settings_of(1) for _ in range(5)]  # a load, a parse, then copies of a kept template
        for hit in hits:
            hit["tags"].append("mutated")
            hit["limits"]["daily"].clear()
        assert await settings_of(1) == {"tags": ["a"], "limits": {"daily": [1]}}
    finally:
        await cache.clear()
        await cache.aclose()


@dataclasses.dataclass
class _Node:
    name: str
    children: list[_Node]


@dataclasses.dataclass(frozen=True)
class _Tag:
    name: str


class _Pair(NamedTuple):
    left: Author
    right: Author


@pytest.mark.parametrize(
    ("annotation", "shadowed"),
    [
        (list[Item], True),
        (dict[int, Author], True),
        (Item | None, True),
        (tuple[Author, ...], True),
        (list[int], False),  # no dataclass: nothing to gain
        (_Node, False),  # recursive
        (frozenset[_Tag], False),  # a set of dataclasses: its shadow would have to be hashable
        (_Pair, False),  # a NamedTuple holding dataclasses: not covered
    ],
)
def test_which_types_get_a_shadow(annotation: Any, shadowed: bool) -> None:
    assert (_shadow_annotation(annotation) is not None) is shadowed


def test_a_shadow_is_made_of_structs_and_builds_dataclasses() -> None:
    value_type = resolve_value_type(list[Author], JSON, owner="m.f")
    assert value_type is not None
    shadow = value_type.template([{"id": 1, "name": "x"}])
    assert not dataclasses.is_dataclass(shadow[0])  # the Struct mirror
    assert value_type.from_template(shadow) == [Author(1, "x")]
    with pytest.raises(CodecError):
        value_type.template([{"id": "not an int", "name": "x"}])
