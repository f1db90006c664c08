"""Shapes that cross the admin API boundary: they validate requests and generate the OpenAPI doc."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from handlers.catalogue import StrictBoolean, StrictInteger
from handlers.subscriptions import valid_id


def _id_list(description: str | None = None) -> fields.List[Any]:
    def check(value: Any) -> None:
        if not valid_id(value):
            raise ValidationError("must be 1-128 letters, digits or _.:@-")

    metadata = {"description": description} if description else {}
    return fields.List(fields.String(validate=check), validate=validate.Length(max=1000), metadata=metadata)


class Strict(Schema):
    class Meta:
        unknown = RAISE


class AudienceSchema(Strict):
    users = _id_list()
    stores = _id_list()
    staff = _id_list("store ids: staff:{storeId} rooms, the verified staff of each store")
    roles = _id_list()
    global_ = StrictBoolean(data_key="global")


class EventSchema(Strict):
    type = fields.String(required=True, validate=validate.Length(min=1, max=128))
    data = fields.Dict(required=True)
    to = fields.Nested(AudienceSchema)
    idempotencyKey = fields.String(validate=validate.Length(min=1, max=255))
    # The entity's version at the publisher: an event not above the last accepted one is stale.
    version = StrictInteger(validate=validate.Range(min=0))


class BatchSchema(Strict):
    events = fields.List(fields.Dict(), required=True)


class AcceptedSchema(Schema):
    accepted = fields.Integer(required=True)
    ids = fields.List(fields.String(allow_none=True), required=True)  # null: dropped as stale
    stale = fields.List(fields.Integer())  # indexes of the events dropped as stale, when any


class ErrorSchema(Schema):
    error = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict()


class NodeStatsSchema(Schema):
    node = fields.String()
    connections = fields.Integer()
    byTransport = fields.Dict(keys=fields.String(), values=fields.Integer())
    eventsAccepted = fields.Integer()
    eventsDelivered = fields.Integer()


class StatsSchema(Schema):
    connections = fields.Integer()
    byTransport = fields.Dict(keys=fields.String(), values=fields.Integer())
    byNode = fields.Dict(keys=fields.String(), values=fields.Integer())
    events = fields.Dict(keys=fields.String(), values=fields.Integer())
    nodes = fields.List(fields.Nested(NodeStatsSchema))


class PresenceSchema(Schema):
    userId = fields.String()
    online = fields.Boolean()
    connections = fields.Integer()


class DisconnectedSchema(Schema):
    disconnected = fields.Integer()
