"""ValueType: resolution, errors that name the fix, strict decoding, and shape digests stable across processes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from collections.abc import Callable
from typing import Any

import pytest

from cachelayer._errors import CodecError, SerializationError
from cachelayer._serializers import serializer_by_name
from cachelayer._typed import describe_unstorable, resolve_value_type, value_type_for_function
from tests._typed_strategies import Author, Item, PItem

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
