"""The admin API (contract §6): services POST events; operators read stats and presence.

Errors always have one shape: ``{"error": CODE, "message": "...", "details": {...}}``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from marshmallow import ValidationError

from handlers.catalogue import AudienceError, Catalogue
from handlers.subscriptions import valid_id
from handlers.versions import NoEntity, version_key
from server.api.fastcheck import compile_check
from server.api.limits import KeyedRateLimit, retry_after
from server.api.schemas import BatchSchema, EventSchema
from server.backplane.base import BackplaneUnavailable
from server.config import Settings
from server.events import OutgoingEvent, idempotency_key
from server.node import Node

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers: dict[str, str] = {}

    def body(self) -> bytes:
        # The contract's one shape: ``details`` is always there, empty when there is nothing to add.
        return orjson.dumps({"error": self.code, "message": self.message, "details": self.details or {}})

    def response(self) -> web.Response:
        return web.Response(body=self.body(), status=self.status, content_type=JSON, headers=self.headers)


JSON = "application/json"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON, headers=headers)


def check_json_media_type(content_type: str) -> None:
    """415 unless the body is declared JSON (``application/json``, parameters allowed). The exact
    value is compared first: parsing it is needed only when it has parameters."""
    if content_type != JSON and content_type.partition(";")[0].strip().lower() != JSON:
        raise ApiError(415, "unsupported_media_type", "send the body as Content-Type: application/json")


EVENTS_ROUTE = "/api/v1/events"


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error under /api/v1/ in the contract's JSON shape."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if not request.path.startswith("/api/v1/") or exc.status < 400:
            raise
        return http_error(exc)


def http_error(exc: web.HTTPException) -> web.Response:
    """aiohttp's own error (404, 405, 413...) in the contract's shape."""
    return ApiError(exc.status, _HTTP_CODES.get(exc.status, "http_error"), exc.reason).response()


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested errors → ``{"data.order": ["..."]}``."""
    if isinstance(messages, dict):
        flat: dict[str, list[str]] = {}
        for key, value in messages.items():
            path = prefix if key == "_schema" else f"{prefix}.{key}" if prefix else str(key)
            flat.update(_flatten(value, path))
        return flat
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return {prefix or "body": list(messages)}
    return {prefix or "body": [str(messages)]}


class AdminApi:
    def __init__(self, node: Node, catalogue: Catalogue, settings: Settings) -> None:
        self.node = node
        self.catalogue = catalogue
        self.settings = settings
        self.keys = [key.encode() for key in settings.admin.api_keys]
        self.event_schema = EventSchema()
        self.event_check = compile_check(self.event_schema)
        self.data_checks = {name: compile_check(t.schema) for name, t in catalogue.types.items()}
        self.batch_schema = BatchSchema()
        self.rate_limit = KeyedRateLimit(settings.admin.requests_per_second, settings.admin.requests_burst)
        self._events_counters: dict[int, Any] = {}  # POST /api/v1/events's counter per status
        if not self.keys:
            log.warning("admin API is open: no ADMIN_API_KEYS (AUTH_INSECURE=1)")

    def add_routes(self, app: web.Application) -> None:
        """Routes of the ``/api/v1`` sub-application (its middlewares: key and error shape).

        ``POST /events`` is answered by ``post_events_direct`` on the main application; the
        route stays here so that its other methods get the sub-application's 401 / 405 answers."""
        app.router.add_post("/events", self.post_events)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/presence/users/{userId}", self.presence)
        app.router.add_post("/users/{userId}/disconnect", self.disconnect)

    @web.middleware
    async def metrics_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count every admin request by route (its pattern, never the raw path) and final status."""
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.node.metrics.admin_requests.labels(route, str(status)).inc()

    @web.middleware
    async def auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/api/v1/"):
            self._admit(request.headers.get("Authorization", ""))
        return await handler(request)

    def _admit(self, authorization: str) -> None:
        """The API key (401) and its rate limit (429)."""
        key = self._check_key(authorization)
        wait = self.rate_limit.wait(key)
        if wait:
            error = ApiError(429, "rate_limited", "too many requests with this API key: slow down")
            error.headers["Retry-After"] = retry_after(wait)
            raise error

    async def post_events_direct(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/v1/events`` as a route of the main application: the three middlewares of
        the sub-application (metrics, error shape, key), inlined in their order. Publishing is
        the hot admin call, and the sub-application's traversal and middleware chain were a
        good part of a single-event POST's CPU (issue 18)."""
        status = 500
        try:
            try:
                self._admit(request.headers.get("Authorization", ""))
                response: web.StreamResponse = await self.post_events(request)
            except ApiError as exc:
                response = exc.response()
            except web.HTTPException as exc:
                if exc.status < 400:
                    status = exc.status
                    raise
                response = http_error(exc)
            status = response.status
            return response
        finally:
            self._count_post(status)

    async def post_events_bytes(
        self, authorization: str, content_type: str, idempotency_key: str | None, raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """``POST /api/v1/events`` for the front door (server/transports/front_door.py), which has read the
        whole body (at most ``admin.max_body_bytes``): the same checks, in the same order, as
        ``post_events_direct``; the answer as (status, extra headers, JSON body)."""
        status = 500
        try:
            try:
                self._admit(authorization)
                check_json_media_type(content_type)
                answer = await self.publish_body(raw, idempotency_key)
                status = 202
                return 202, {}, orjson.dumps(answer)
            except ApiError as exc:
                status = exc.status
                return exc.status, exc.headers, exc.body()
        finally:
            self._count_post(status)

    def _count_post(self, status: int) -> None:
        counter = self._events_counters.get(status)
        if counter is None:
            counter = self._events_counters[status] = self.node.metrics.admin_requests.labels(
                EVENTS_ROUTE, str(status)
            )
        counter.inc()

    def _check_key(self, header: str) -> str:
        """Which key the request carries (its position, for the rate limit), or 401."""
        if not self.keys:
            return "open"
        scheme, _, presented = header.partition(" ")
        # surrogateescape: the bytes as sent, whatever they are (aiohttp decodes headers so)
        bearer = scheme.lower() == "bearer"
        candidate = presented.strip().encode("utf-8", "surrogateescape") if bearer else b""
        # Compare with every key, in constant time, so timing tells nothing about which matched.
        matched = -1
        for index, key in enumerate(self.keys):
            if hmac.compare_digest(candidate, key):
                matched = index
        if matched < 0:
            error = ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <API key>' is required")
            error.headers["WWW-Authenticate"] = "Bearer"
            raise error
        return str(matched)

    # --- POST /api/v1/events -------------------------------------------------------------

    async def post_events(self, request: web.Request) -> web.Response:
        raw = await self._read_body(request)
        answer = await self.publish_body(raw, request.headers.get("Idempotency-Key"))
        return json_response(answer, status=202)

    async def publish_body(self, raw: bytes, header_key: str | None) -> dict[str, Any]:
        """A JSON body (one event, or a batch) validated, all or nothing, and published: the 202
        answer. Anything wrong is an ``ApiError``."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
        if isinstance(body, dict) and "events" in body:
            try:
                items = self.batch_schema.load(body)["events"]
            except ValidationError as exc:
                raise ApiError(
                    422, "validation_failed", "the batch is malformed", {"fields": _flatten(exc.messages)}
                ) from None
            if not items or len(items) > self.settings.admin.max_batch:
                raise ApiError(
                    422,
                    "validation_failed",
                    f"a batch holds 1 to {self.settings.admin.max_batch} events",
                    {"fields": {"events": [f"got {len(items)}"]}},
                )
        elif isinstance(body, dict):
            items = [body]
        else:
            raise ApiError(422, "validation_failed", 'the body must be an event object or {"events": [...]}')
        if header_key is not None and not 0 < len(header_key) <= 255:
            raise ApiError(400, "bad_request", "Idempotency-Key must be 1-255 characters")
        events = self._validate(items, header_key)
        try:
            ids = await self.node.publish(events)
        except BackplaneUnavailable as exc:
            outcome = (
                "the events may still be delivered: retry with the same idempotency keys"
                if exc.maybe_accepted
                else "nothing was accepted"
            )
            error = ApiError(503, "unavailable", f"events cannot be accepted now: {exc}; {outcome}")
            error.headers["Retry-After"] = str(exc.retry_after)
            raise error from None
        answer: dict[str, Any] = {"accepted": sum(1 for i in ids if i is not None), "ids": ids}
        stale = [index for index, event_id in enumerate(ids) if event_id is None]
        if stale:
            answer["stale"] = stale
        return answer

    async def _read_body(self, request: web.Request) -> bytes:
        check_json_media_type(request.headers.get("Content-Type", ""))
        limit = self.settings.admin.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, "payload_too_large", f"the body is over {limit} bytes")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, "payload_too_large", f"the body is over {limit} bytes") from None

    def _validate(self, items: list[Any], header_key: str | None) -> list[OutgoingEvent]:
        """All or nothing: every event's errors are reported, by index and field."""
        events: list[OutgoingEvent] = []
        problems: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                events.append(self._validate_one(item, index, header_key))
            except ValidationError as exc:
                problems.append({"index": index, "fields": _flatten(exc.messages)})
        if problems:
            first = problems[0]
            field = next(iter(first["fields"]))
            raise ApiError(
                422,
                "validation_failed",
                f"event {first['index']}: {field}: {first['fields'][field][0]}",
                {"events": problems},
            )
        return events

    def _validate_one(self, item: Any, index: int, header_key: str | None) -> OutgoingEvent:
        if not isinstance(item, dict):
            raise ValidationError("each event must be an object")
        envelope = item if self.event_check(item) else self.event_schema.load(item)
        event_type = self.catalogue.get(envelope["type"])
        if event_type is None:
            raise ValidationError({"type": [f"unknown event type {envelope['type']!r}"]})
        data = item["data"]  # delivered exactly as sent; the schema only checks it
        if not self.data_checks[event_type.name](data):
            errors = event_type.schema.validate(data)
            if errors:
                raise ValidationError({"data": errors})
        to = item.get("to")
        if to is not None:
            unknown_roles = [r for r in to.get("roles", ()) if r not in self.settings.auth.roles]
            if unknown_roles:
                raise ValidationError({"to": {"roles": [f"unknown role {unknown_roles[0]!r}"]}})
        try:
            rooms = event_type.audience(data, to)
        except AudienceError as exc:
            raise ValidationError({"to": [str(exc)]}) from None
        try:
            data_json = orjson.dumps(data)
        except orjson.JSONEncodeError:  # orjson stops at 255 levels; loads accepts 1,024
            raise ValidationError({"data": ["nested too deep to encode"]}) from None
        limit = self.settings.admin.max_event_bytes
        if len(data_json) > limit:
            raise ValidationError(
                {"data": [f"{len(data_json)} bytes encoded, over admin.max_event_bytes ({limit})"]}
            )
        version = envelope.get("version")
        versioned = None
        if version is not None:
            try:
                versioned = version_key(event_type.name, data)
            except NoEntity as exc:
                raise ValidationError({exc.field: [str(exc)]}) from None
        key = idempotency_key(envelope.get("idempotencyKey"), header_key, index)
        return OutgoingEvent(event_type.name, data_json, rooms, key, version, versioned)

    # --- operators ------------------------------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        reports = await self._call(self.node.backplane.nodes())
        by_transport: dict[str, int] = {}
        for report in reports:
            for transport, count in report.by_transport.items():
                by_transport[transport] = by_transport.get(transport, 0) + count
        return json_response(
            {
                "connections": sum(r.connections for r in reports),
                "byTransport": by_transport,
                "byNode": {r.node: r.connections for r in reports},
                "events": {
                    "accepted": sum(r.events_accepted for r in reports),
                    "delivered": sum(r.events_delivered for r in reports),
                },
                "nodes": [
                    {
                        "node": r.node,
                        "connections": r.connections,
                        "byTransport": r.by_transport,
                        "eventsAccepted": r.events_accepted,
                        "eventsDelivered": r.events_delivered,
                    }
                    for r in reports
                ],
            }
        )

    async def presence(self, request: web.Request) -> web.Response:
        user_id = self._user_id(request)
        count = await self._call(self.node.backplane.presence(user_id))
        return json_response({"userId": user_id, "online": count > 0, "connections": count})

    async def disconnect(self, request: web.Request) -> web.Response:
        user_id = self._user_id(request)
        count = await self._call(self.node.disconnect_user(user_id))
        return json_response({"disconnected": count})

    @staticmethod
    def _user_id(request: web.Request) -> str:
        user_id = request.match_info["userId"]
        if not valid_id(user_id):
            raise ApiError(400, "bad_request", "userId must be 1-128 letters, digits or _.:@-")
        return user_id

    async def _call(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except BackplaneUnavailable as exc:
            error = ApiError(503, "unavailable", str(exc))
            error.headers["Retry-After"] = str(exc.retry_after)
            raise error from None
