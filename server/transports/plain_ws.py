"""Plain WebSocket at ``GET /api/ws`` (contract §4): the frames the existing React hook expects."""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any

import orjson
from aiohttp import web

from handlers.subscriptions import SubscriptionError, base_rooms, parse_store_list, store_rooms, valid_id
from server.background import spawn
from server.config import WebSocketSettings
from server.events import WS_FRAME, WS_FRAME_DEFLATED, Event, joined
from server.hub import CLOSE_RATE_LIMITED, CLOSE_SLOW_CONSUMER, Connection
from server.identity.auth import Authenticator, AuthError, Credentials, Identity
from server.node import Node
from server.transports.gate import ConnectGate
from server.transports.websocket import (
    CLOSE_ABNORMAL,
    CLOSE_INTERNAL_ERROR,
    AiohttpUpgrade,
    Heartbeat,
    TakenOver,
    Upgrade,
    WebSocketProtocol,
    handshake,
    take_over,
    text_frame,
)

log = logging.getLogger(__name__)


def bearer_token(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


class _Socket(WebSocketProtocol):
    """The WebSocket under a ``WebSocketConnection``, passing it what the client sends."""

    __slots__ = ("connection",)

    def __init__(self, connection: WebSocketConnection, settings: WebSocketSettings, deflate: bool) -> None:
        super().__init__(settings.max_message_bytes, deflate, settings.send_buffer_bytes)
        self.connection: WebSocketConnection | None = connection  # None once closed

    def on_overflow(self) -> None:
        if self.connection is not None:
            self.connection.overflowed()

    def on_message(self, data: str | bytes) -> None:
        if self.connection is not None:
            self.connection.received(data)

    def on_closed(self, code: int) -> None:
        # The last call (``connection_lost``): dropping the connection breaks the cycle between
        # the two, so both are freed at once by their reference counts, not by the collector's
        # next full pass (thousands of closed connections held meanwhile, after a deploy).
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.gone(code)


# A client that sent no id (the hook) is resumed from its last confirmed position (contract §7):
# events written to it carry a ping at most this often, so that position trails by seconds, not
# by a heartbeat (25 s of events replayed again after every drop).
MARK_SECONDS = 5.0


class WebSocketConnection(Connection):
    transport = "websocket"
    __slots__ = ("_endpoint", "_next_mark", "socket")

    def __init__(self, endpoint: WebSocketEndpoint, identity: Identity, deflate: bool) -> None:
        settings = endpoint.settings
        super().__init__(identity, settings.client_messages_per_second, settings.client_messages_burst)
        self._endpoint = endpoint
        self.socket = _Socket(self, settings, deflate)
        self._next_mark: float | None = None  # when events may carry a position mark (None: never)

    def mark_positions(self) -> None:
        """From now on, events written carry a ping at most every ``MARK_SECONDS``."""
        self._next_mark = time.monotonic() + MARK_SECONDS

    def confirm_position(self) -> None:
        self.socket.mark(self._endpoint.node.hub.position)

    def send_events(self, events: Sequence[Event]) -> None:
        frames = joined(events, WS_FRAME_DEFLATED if self.socket.deflate else WS_FRAME)
        if self._next_mark is not None and not self.closed and (now := time.monotonic()) >= self._next_mark:
            self._next_mark = now + MARK_SECONDS
            self.socket.mark(events[-1].id, frames, bounded=True)  # every event before is written
        else:
            self._write(frames)

    def send_replay(self, events: Sequence[Event]) -> None:
        if not self.closed:
            frames = joined(events, WS_FRAME_DEFLATED if self.socket.deflate else WS_FRAME)
            self.socket.write(frames, bounded=False)

    def send_message(self, message: dict[str, Any]) -> None:
        self._write(text_frame(orjson.dumps(message)))

    def _write(self, frames: bytes) -> None:
        if not self.closed:
            self.socket.write(frames)  # a client that stops reading is closed there (1008)

    def close(self, code: int, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.socket.close(code, reason)

    def overflowed(self) -> None:
        """The client stopped reading: its unsent bytes passed ``websocket.send_buffer_bytes``."""
        log.warning("slow consumer closed", extra={"userId": self.user_id, "transport": self.transport})
        self._endpoint.node.metrics.slow_consumer(self.transport)
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    def acked_position(self) -> str | None:
        return self.socket.acked

    def received(self, data: str | bytes) -> None:
        if self.closed:
            return
        if not self.allow_message():
            self.close(CLOSE_RATE_LIMITED, "too many messages")
            return
        if isinstance(data, str):
            answer = self._endpoint.answer(self, data)
            if answer is not None:
                self.send_message(answer)
        else:
            self.send_message(_error("binary frames are not accepted: send JSON text"))

    def gone(self, code: int) -> None:
        self.closed = True
        self._endpoint.gone(self, code)


class WebSocketEndpoint:
    def __init__(self, node: Node, authenticator: Authenticator, settings: WebSocketSettings) -> None:
        self.node = node
        self.authenticator = authenticator
        self.settings = settings
        self.gate = ConnectGate(settings.max_connecting)  # upgrades the front door takes
        self.heartbeat = Heartbeat(
            settings.heartbeat_seconds, settings.heartbeat_timeout_seconds, lambda: node.hub.position
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/ws`` as an aiohttp route: the requests the front door left to aiohttp."""
        response, deflate = handshake(request.headers, self.settings.compression)  # or 400
        opening = await self.upgrade(AiohttpUpgrade(request), response, deflate)
        if opening is not None:
            # The socket is ours now, no longer the request's: aiohttp may cancel this handler
            # once it believes the connection gone (its test server does), so the greeting runs apart.
            spawn(opening)
        return TakenOver()

    async def upgrade(
        self, request: Upgrade, response: bytes, deflate: bool
    ) -> Coroutine[Any, Any, None] | None:
        """An upgrade whose handshake is good (``response`` is its ``101``): admit the client, or
        refuse it with a close frame after the ``101``, and take the socket. Returns the greeting
        still to run (``None`` if refused), for the caller to await or to run apart."""
        try:
            # Awaits only for a session lookup (a token is verified without yielding); the
            # upgrade waits for it, and a refusal is still a close frame after the upgrade.
            identity, rooms = await self._admit(request)
        except AuthError as exc:
            log.info("websocket refused", extra={"reason": exc.message, "code": exc.close_code})
            self.node.metrics.refused(WebSocketConnection.transport, exc.kind)
            if _gone(request):
                return None
            socket = WebSocketProtocol(self.settings.max_message_bytes)
            take_over(request, response, socket, hold=True)
            socket.close(exc.close_code, exc.message)  # the 101 and the close frame: one write
            return None
        if _gone(request):
            return None  # the client left during its session lookup: nothing to upgrade
        conn = WebSocketConnection(self, identity, deflate)
        socket = conn.socket
        early = take_over(request, response, socket, hold=True)  # sent with the ``connected`` frame
        assert socket.transport is not None
        # Nothing the client sends is answered before its ``connected`` frame.
        socket.transport.pause_reading()
        return self._open(conn, rooms, request.query.get("lastEventId"), early)

    async def _open(
        self, conn: WebSocketConnection, rooms: list[str], last_event_id: str | None, early: bytes
    ) -> None:
        socket = conn.socket
        try:
            await self._greet(conn, rooms, last_event_id)
        except Exception:
            log.exception("websocket connect failed")
            conn.close(CLOSE_INTERNAL_ERROR, "internal error")
        socket.flush_head()  # written already, unless the client left meanwhile
        if early and socket.transport is not None and not conn.closed:
            socket.data_received(early)  # frames sent right behind the request, answered now
        if socket.transport is not None and not conn.closed:
            socket.transport.resume_reading()
            self.heartbeat.add(socket)
            self.authenticator.watch(conn)

    def gone(self, conn: WebSocketConnection, code: int) -> None:
        self.heartbeat.discard(conn.socket)
        self.node.disconnect(conn, f"closed {code}", None if code == CLOSE_ABNORMAL else code)

    async def _greet(self, conn: WebSocketConnection, rooms: list[str], last_event_id: str | None) -> None:
        """Join the rooms, send ``connected``, then what was missed; the replay is not kept after."""
        resume = await self.node.connect(conn, rooms, last_event_id, resume_without_id=last_event_id is None)
        conn.send_message(
            {
                "type": "connected",
                "data": {
                    "userId": conn.identity.user_id,
                    "role": conn.identity.role,
                    "rooms": sorted(conn.rooms),
                    "lastEventId": resume.after_id if resume.recovered else resume.position,
                    "resumed": resume.recovered,
                },
            }
        )
        self.node.resume(conn, resume)
        if last_event_id is None and self.node.resume_book.enabled:
            conn.mark_positions()

    async def _admit(self, request: Upgrade) -> tuple[Identity, list[str]]:
        query = request.query
        headers = request.headers
        self.node.check_capacity()
        self.authenticator.check_origin(headers.get("Origin"), request.host)
        token = query.get("token") or bearer_token(headers.get("Authorization"))
        cookie_name = self.authenticator.settings.cookie_name
        if not token and cookie_name:
            token = request.cookie(cookie_name)
        identity = await self.authenticator.authenticate(
            Credentials(
                token=token,
                user_id=query.get("userId"),
                role=query.get("role"),
                cookie=headers.get("Cookie"),
                authorization=headers.get("Authorization"),
            )
        )
        store_ids = parse_store_list(query.get("stores"))
        if "storeId" in query:
            store_ids.insert(0, query["storeId"])
        last_event_id = query.get("lastEventId")
        if last_event_id is not None and len(last_event_id) > 64:
            raise AuthError("bad_request", "lastEventId is too long")
        try:
            stores = store_rooms(store_ids, self.settings.max_stores_per_connection)
        except SubscriptionError as exc:
            raise AuthError("bad_request", str(exc)) from None
        return identity, base_rooms(identity.user_id, identity.role) + self.node.staff_rooms(
            identity
        ) + stores

    def answer(self, conn: WebSocketConnection, text: str) -> dict[str, Any] | None:
        """The reply to a client frame; None when there is none (the connection was closed)."""
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            return _error("malformed JSON")
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            return _error('expected {"type": string, "data": ...}')
        kind = message["type"]
        if kind == "ping":
            return {"type": "pong"}
        if kind == "refresh":
            return self._refresh(conn, message.get("data"))
        if kind in ("subscribe", "unsubscribe"):
            data = message.get("data")
            store_id = data.get("storeId") if isinstance(data, dict) else None
            if not valid_id(store_id):
                return _error("data.storeId must be 1-128 letters, digits or _.:@-")
            assert isinstance(store_id, str)
            try:
                if kind == "subscribe":
                    return {"type": "subscribed", "data": {"room": self.node.subscribe(conn, store_id)}}
                return {"type": "unsubscribed", "data": {"room": self.node.unsubscribe(conn, store_id)}}
            except SubscriptionError as exc:
                return _error(str(exc))
        return _error(f"unknown message type {kind[:64]!r}")

    def _refresh(self, conn: WebSocketConnection, data: Any) -> dict[str, Any] | None:
        """A fresh token in band (contract §8): the same user and role, or the connection closes 4403."""
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            return _error("data.token must be a token string")
        identity = self.node.refresh(conn, token, self.authenticator)
        if isinstance(identity, AuthError):
            return None  # closed
        return {"type": "refreshed", "data": {"exp": identity.exp}}


def _gone(request: Upgrade) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _error(message: str) -> dict[str, Any]:
    return {"type": "error", "data": {"code": "bad_request", "message": message}}
