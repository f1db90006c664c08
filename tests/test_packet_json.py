"""server/transports/packet_json.py decodes every packet text to what python-engineio's own JSON module
gives (or refuses it as that does), and encodes what the server sends to the same JSON values."""

from __future__ import annotations

import json
from typing import Any

import pytest
from engineio import json as engineio_json
from hypothesis import given
from hypothesis import strategies as st

from server.transports import packet_json

TEXTS = [
    '{"token":"a.b.c","stores":["s1","s2"],"lastEventId":"1-0"}',
    '["subscribe",{"storeId":"s1"}]',
    "[1e400, -1e400]",
    "[NaN, Infinity]",
    "[18446744073709551615, -9223372036854775808, 9223372036854775807]",
    '["x", 123456789012345678901234567890]',
    "[" + "9" * 101 + "]",
    '"\\ud800"',
    '["\\u00e9\\u2028 caf\u00e9"]',
    " [1, 2.5e-7, -0.0, 1E5] ",
    '{"a": 1, "a": 2}',
    "[0.1000000000000000055511151231257827]",
    '{"a": [}',
    "",
    "nul",
    '"x"',
]


def outcome(loads: Any, text: str) -> tuple[str, str]:
    try:
        return "value", repr(loads(text))
    except ValueError:
        return "refused", ""


@pytest.mark.parametrize("text", TEXTS)
def test_decodes_as_engineio_json_does(text: str) -> None:
    assert outcome(packet_json.loads, text) == outcome(engineio_json.loads, text)


json_trees = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@given(json_trees)
def test_round_trips_as_the_standard_library_does(value: Any) -> None:
    expected = json.loads(json.dumps(value))
    assert repr(json.loads(packet_json.dumps(value))) == repr(expected)
    text = json.dumps(value)
    assert outcome(packet_json.loads, text) == outcome(engineio_json.loads, text)


def test_encodes_what_orjson_refuses_with_the_standard_library() -> None:
    assert packet_json.dumps({1: [2**70]}) == '{"1":[1180591620717411303424]}'
    assert packet_json.dumps(["caf\u00e9"]) == '["caf\u00e9"]'
