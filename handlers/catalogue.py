"""The event catalogue (contract §6): each type's data schema and the audience it goes to by default.

Adding an event type is one entry here, or one in config.yaml's ``event_types``. Schemas only
*check* ``data``: the data delivered is exactly what the service sent, every other field included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields

from handlers.subscriptions import GLOBAL_ROOM, role_room, staff_room, store_room, user_room, valid_id

# Where an event may be sent: the keys of the admin API's ``to``.
TARGETS = ("users", "stores", "staff", "roles", "global")


class AudienceError(ValueError):
    """The event has nobody to go to, or names recipients it may not have."""


class StrictBoolean(fields.Boolean):
    """``true``/``false`` only: ``"yes"`` or ``1`` would reach clients as they are, so refuse them."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class StrictNumber(fields.Float):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid", input=value)
        return float(value)


class StrictInteger(fields.Integer):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid", input=value)
        return value


def _id_field() -> fields.String:
    return fields.String(
        required=True,
        validate=lambda value: valid_id(value) or _fail("must be 1-128 letters, digits or _.:@-"),
    )


def _fail(message: str) -> bool:
    raise ValidationError(message)


class EventData(Schema):
    class Meta:
        unknown = INCLUDE  # other fields pass through untouched


class OrderUpdated(EventData):
    orderId = fields.String(required=True, validate=lambda v: bool(v) or _fail("must not be empty"))
    order = fields.Dict(required=True)


class StoreUpdated(EventData):
    storeId = _id_field()
    store = fields.Dict(required=True)


class ProductUpdated(EventData):
    storeId = _id_field()
    product = fields.Dict(required=True)


class StoreAvailabilityChanged(EventData):
    storeId = _id_field()
    isActive = StrictBoolean(required=True)


class ProductAvailabilityChanged(EventData):
    storeId = _id_field()
    productId = fields.String(required=True, validate=lambda v: bool(v) or _fail("must not be empty"))
    available = StrictBoolean(required=True)


Audience = Callable[[Mapping[str, Any]], list[str]]


def to_global(_: Mapping[str, Any]) -> list[str]:
    return [GLOBAL_ROOM]


def to_store(data: Mapping[str, Any]) -> list[str]:
    return [store_room(data["storeId"])]


def to_user(data: Mapping[str, Any]) -> list[str]:
    return [user_room(data["userId"])]


def to_explicit(_: Mapping[str, Any]) -> list[str]:
    raise AudienceError("this event type has no default audience: give 'to'")


def _order_id(order: Mapping[str, Any], key: str) -> str | None:
    """``data.order[key]`` as an id (strings and integers), None when absent; an id that is present
    but invalid is refused, never skipped: an order must not go to a fallback recipient."""
    value = order.get(key)
    if value is None:
        return None
    if isinstance(value, str | int) and not isinstance(value, bool) and valid_id(str(value)):
        return str(value)
    raise AudienceError(f"data.order.{key} must be 1-128 letters, digits or _.:@-")


def to_order_parties(data: Mapping[str, Any]) -> list[str]:
    """The customer (``userId``, else ``customerId``), the store's staff and the driver."""
    order = data["order"]
    rooms: list[str] = []
    customer = _order_id(order, "userId")
    if customer is None:
        customer = _order_id(order, "customerId")
    if customer is not None:
        rooms.append(user_room(customer))
    store = _order_id(order, "storeId")
    if store is not None:
        rooms.append(staff_room(store))
    driver = _order_id(order, "driverId")
    if driver is not None:
        rooms.append(user_room(driver))
    if not rooms:
        raise AudienceError(
            "order_updated needs to.users, to.staff, or one of data.order.userId, customerId, "
            "storeId, driverId"
        )
    return list(dict.fromkeys(rooms))


@dataclass(frozen=True)
class EventType:
    name: str
    schema: Schema
    default_audience: Audience
    targets: tuple[str, ...] = TARGETS  # which keys of ``to`` this type may use

    def audience(self, data: Mapping[str, Any], to: Mapping[str, Any] | None) -> tuple[str, ...]:
        """The rooms this event goes to: ``to`` when given (it replaces the default)."""
        if to is None:
            return tuple(self.default_audience(data))
        forbidden = [key for key in TARGETS if to.get(key) and key not in self.targets]
        if forbidden:
            raise AudienceError(f"{self.name} may only be sent to {', '.join(self.targets)}")
        rooms = [user_room(u) for u in to.get("users", ())]
        rooms += [store_room(s) for s in to.get("stores", ())]
        rooms += [staff_room(s) for s in to.get("staff", ())]
        rooms += [role_room(r) for r in to.get("roles", ())]
        if to.get("global"):
            rooms.append(GLOBAL_ROOM)
        if not rooms:
            raise AudienceError("'to' names nobody")
        return tuple(dict.fromkeys(rooms))


BUILT_IN: tuple[EventType, ...] = (
    # Orders reach their parties only: never a store's viewers, a role or everyone.
    EventType("order_updated", OrderUpdated(), to_order_parties, targets=("users", "staff")),
    EventType("store_updated", StoreUpdated(), to_global),
    EventType("product_updated", ProductUpdated(), to_store),
    EventType("store_availability_changed", StoreAvailabilityChanged(), to_global),
    EventType("product_availability_changed", ProductAvailabilityChanged(), to_store),
)

_FIELD_KINDS: dict[str, Callable[[], fields.Field[Any]]] = {
    "string": lambda: fields.String(required=True),
    "number": lambda: StrictNumber(required=True),
    "integer": lambda: StrictInteger(required=True),
    "boolean": lambda: StrictBoolean(required=True),
    "object": lambda: fields.Dict(required=True),
    "array": lambda: fields.List(fields.Raw(), required=True),
}
_AUDIENCES: dict[str, tuple[Audience, str | None]] = {
    "global": (to_global, None),
    "store": (to_store, "storeId"),
    "user": (to_user, "userId"),
    "explicit": (to_explicit, None),
}


def declared_type(name: str, required: Mapping[str, str], audience: str) -> EventType:
    """An event type declared in config.yaml: required fields by kind, and a default audience."""
    default_audience, key_field = _AUDIENCES[audience]
    declared: dict[str, fields.Field[Any]] = {field: _FIELD_KINDS[kind]() for field, kind in required.items()}
    if key_field is not None:
        declared[key_field] = _id_field()
    schema_class = EventData.from_dict(declared, name=f"{name}_data")
    return EventType(name, schema_class(), default_audience)


class Catalogue:
    """The event types this server accepts, by name."""

    def __init__(self, types: Iterable[EventType]) -> None:
        self.types = {event_type.name: event_type for event_type in types}

    @classmethod
    def from_config(cls, declared: Mapping[str, Any]) -> Catalogue:
        """Built-in types plus those in config.yaml (which may not redefine a built-in)."""
        extra = [declared_type(name, spec.fields, spec.audience) for name, spec in declared.items()]
        return cls([*BUILT_IN, *extra])

    def get(self, name: str) -> EventType | None:
        return self.types.get(name)
