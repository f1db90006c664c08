"""Which entity an event's ``version`` counts for (contract §6): one rule per event type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Built-in types: the path in ``data`` to the entity's id.
ENTITY_PATHS: dict[str, tuple[str, ...]] = {
    "order_updated": ("orderId",),
    "store_updated": ("storeId",),
    "store_availability_changed": ("storeId",),
    "product_updated": ("product", "id"),
    "product_availability_changed": ("productId",),
}
# Types declared in config: the first of these present in ``data``.
DECLARED_ENTITY_FIELDS = ("orderId", "productId", "storeId")


class NoEntity(ValueError):
    """The event carries a ``version`` but names no entity; ``field`` is where one was expected."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _usable(value: Any) -> bool:
    return (isinstance(value, str) and value != "") or (
        isinstance(value, int) and not isinstance(value, bool)
    )


def version_key(event_type: str, data: Mapping[str, Any]) -> str:
    """``ver:TYPE:ENTITY``: what the last accepted version is remembered under (``NoEntity`` if none)."""
    path = ENTITY_PATHS.get(event_type)
    if path is not None:
        value: Any = data
        for step in path:
            value = value.get(step) if isinstance(value, Mapping) else None
        if not _usable(value):
            field = "data." + ".".join(path)
            raise NoEntity(field, "a string id is required when the event has a version")
        return f"ver:{event_type}:{value}"
    for name in DECLARED_ENTITY_FIELDS:
        value = data.get(name)
        if _usable(value):
            return f"ver:{event_type}:{value}"
    raise NoEntity("version", "needs data.orderId, data.productId or data.storeId to name the entity")
