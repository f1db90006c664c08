"""The quick check never says yes to what its marshmallow schema refuses, and says yes to valid input."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import Schema

from handlers.catalogue import BUILT_IN, declared_type
from server.api.fastcheck import compile_check
from server.api.schemas import EventSchema

ODD_VALUES: list[Any] = [
    None,
    0,
    1,
    1.5,
    True,
    False,
    "",
    "s1",
    "bad id!",
    "x" * 200,
    {},
    {"a": 1},
    [],
    ["a"],
]

VALID: dict[str, dict[str, Any]] = {
    "order_updated": {"orderId": "o1", "order": {"userId": "u1"}, "extra": [1]},
    "store_updated": {"storeId": "s1", "store": {"name": "Pizza"}},
    "product_updated": {"storeId": "s1", "product": {"id": "p1"}},
    "store_availability_changed": {"storeId": "s1", "isActive": False},
    "product_availability_changed": {"storeId": "s1", "productId": "p1", "available": True},
    "driver_location": {"orderId": "o1", "lat": 1.5, "lng": 2, "userId": "u1", "stops": 3},
    "envelope": {"type": "store_updated", "data": {"storeId": "s1"}, "idempotencyKey": "k1"},
}
SCHEMAS: dict[str, Schema] = {
    **{t.name: t.schema for t in BUILT_IN},
    "driver_location": declared_type(
        "driver_location", {"orderId": "string", "lat": "number", "lng": "number", "stops": "integer"}, "user"
    ).schema,
    "envelope": EventSchema(),
}


def variants(valid: dict[str, Any]) -> list[Any]:
    """The valid object, each field missing, each field replaced by odd values, an extra key."""
    out: list[Any] = [valid, {**valid, "unexpected": 1}, [], "text", None]
    for key in valid:
        out.append({k: v for k, v in valid.items() if k != key})
        out.extend({**valid, key: odd} for odd in ODD_VALUES)
    return out


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_quick_check_accepts_only_what_the_schema_accepts(name: str) -> None:
    schema, check = SCHEMAS[name], compile_check(SCHEMAS[name])
    assert check(VALID[name]), "valid input must take the quick path"
    for candidate in variants(VALID[name]):
        if check(candidate):
            assert schema.validate(candidate) == {}, candidate


def test_envelope_with_to_goes_to_the_schema() -> None:
    check = compile_check(EventSchema())
    assert not check({"type": "t", "data": {}, "to": {"global": True}})
