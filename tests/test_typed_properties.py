"""Property tests: every storable kind of type round-trips through ValueType and the codec equal in type and value.

The round trip is the one a hit takes: ``ValueType.dumps`` -> ``Codec.encode_serialized`` -> ``Codec.read_frame``
-> ``Codec.serialized`` -> ``ValueType.loads``. The examples per case add up to more than 10,000 values
(checked by the last test); the strategies live in tests/_typed_strategies.py for the backends' own round trips.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachelayer._codec import Codec
from cachelayer._typed import ValueType, resolve_value_type
from tests._typed_strategies import CASES, Case, assert_same

_drawn: dict[str, int] = {}
CODECS = {"orjson": Codec("orjson"), "orjson-v1": Codec("orjson", format_version=1), "msgpack": Codec("msgpack")}


@functools.cache
def value_type_of(case: Case, codec_name: str) -> ValueType[Any]:
    value_type = resolve_value_type(case.annotation, CODECS[codec_name].serializer, owner=f"tests.{case.id}")
    assert value_type is not None
    return value_type


def round_trip(case: Case, codec_name: str, value: Any) -> Any:
    codec, value_type = CODECS[codec_name], value_type_of(case, codec_name)
    frame = codec.read_frame(codec.encode_serialized(value_type.dumps(value)))
    return value_type.loads(codec.serialized(frame))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_round_trip_through_the_codec(case: Case) -> None:
    codecs = list(CODECS)

    @settings(max_examples=case.examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(value=case.values, which=st.integers(0, len(codecs) - 1))
    def check(value: Any, which: int) -> None:
        _drawn[case.id] = _drawn.get(case.id, 0) + 1
        assert_same(round_trip(case, codecs[which], value), value)

    check()


def test_zz_at_least_10000_values_were_generated() -> None:
    if len(_drawn) < len(CASES):
        pytest.skip("run the whole module to count")
    assert sum(_drawn.values()) >= 10_000, _drawn
