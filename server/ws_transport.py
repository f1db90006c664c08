"""Plain WebSocket at ``GET /api/ws`` (contract §4): the frames the existing React hook expects."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from handlers.subscriptions import SubscriptionError, base_rooms, parse_store_list, store_rooms, valid_id
from server.auth import Authenticator, AuthError, Credentials
from server.config import WebSocketSettings
from server.events import Event, websocket_close_frame, websocket_text_frame
from server.hub import CLOSE_RATE_LIMITED, CLOSE_SLOW_CONSUMER, Connection
from server.node import Node

log = logging.getLogger(__name__)

ABORT_AFTER_SECONDS = 2.0


def close_websocket(transport: asyncio.Transport, code: int, reason: str) -> None:
    """Close a WebSocket by writing the close frame after what is queued; abort if not read soon.

    For connections we write to directly (both transports): the frame follows every event already
    in the buffer, and a client that stopped reading cannot hold the socket open.
    """
    transport.write(websocket_close_frame(code, reason))
    transport.close()
    asyncio.get_running_loop().call_later(ABORT_AFTER_SECONDS, transport.abort)


def bearer_token(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


class WebSocketConnection(Connection):
    transport = "websocket"
    __slots__ = ("_closing", "_limit", "_transport", "ws")

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, node: Node, identity: Any) -> None:
        settings = node.settings.websocket
        super().__init__(identity, settings.client_messages_per_second, settings.client_messages_burst)
        self.ws = ws
        self._transport = request.transport
        self._limit = settings.send_buffer_bytes
        self._closing: asyncio.Future[bool] | None = None

    def send_events(self, events: Sequence[Event]) -> None:
        self._write(events[0].ws_frame if len(events) == 1 else b"".join([e.ws_frame for e in events]))

    def send_message(self, message: dict[str, Any]) -> None:
        self._write(websocket_text_frame(orjson.dumps(message)))

    def _write(self, frame: bytes) -> None:
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            return
        # Frames are written whole and synchronously, so they never interleave with aiohttp's own
        # (pings, close); the transport's buffer is this connection's bounded send queue.
        transport.write(frame)
        if transport.get_write_buffer_size() > self._limit:
            log.warning("slow consumer closed", extra={"userId": self.user_id, "transport": self.transport})
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if code == CLOSE_SLOW_CONSUMER or transport.get_write_buffer_size() > self._limit:
            close_websocket(transport, code, reason)  # its buffer is full: aiohttp's close would wait
        else:
            self._closing = asyncio.ensure_future(self.ws.close(code=code, message=reason.encode()))

    async def wait_closed(self) -> None:
        """Let a close begun by ``close`` finish: were the handler to return first, aiohttp would
        close the socket itself with 1000 and the client would never see our code (e.g. 4429)."""
        if self._closing is not None:
            await self._closing


class WebSocketEndpoint:
    def __init__(self, node: Node, authenticator: Authenticator, settings: WebSocketSettings) -> None:
        self.node = node
        self.authenticator = authenticator
        self.settings = settings

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(
            heartbeat=self.settings.heartbeat_seconds,
            compress=self.settings.compression,
            # aiohttp refuses a frame of exactly max_msg_size bytes; the setting is the largest allowed.
            max_msg_size=self.settings.max_message_bytes + 1,
            timeout=2.0,
        )
        await ws.prepare(request)
        try:
            identity, rooms = self._admit(request)
        except AuthError as exc:
            log.info("websocket refused", extra={"reason": exc.message, "code": exc.close_code})
            await ws.close(code=exc.close_code, message=exc.message.encode()[:120])
            return ws
        conn = WebSocketConnection(ws, request, self.node, identity)
        reason = "client closed"
        try:
            await self._greet(conn, rooms, request.query.get("lastEventId"))
            reason = await self._read(ws, conn)
        finally:
            conn.closed = True
            self.node.disconnect(conn, reason)
        await conn.wait_closed()
        return ws

    async def _greet(self, conn: WebSocketConnection, rooms: list[str], last_event_id: str | None) -> None:
        """Join the rooms, send ``connected``, then what was missed; the replay is not kept after."""
        resume = await self.node.connect(conn, rooms, last_event_id)
        conn.send_message(
            {
                "type": "connected",
                "data": {
                    "userId": conn.identity.user_id,
                    "role": conn.identity.role,
                    "rooms": sorted(conn.rooms),
                    "lastEventId": last_event_id if resume.recovered else resume.position,
                },
            }
        )
        self.node.resume(conn, resume)

    def _admit(self, request: web.Request) -> tuple[Any, list[str]]:
        query = request.query
        self.authenticator.check_origin(request.headers.get("Origin"), request.host)
        token = query.get("token") or bearer_token(request.headers.get("Authorization"))
        cookie_name = self.authenticator.settings.cookie_name
        if not token and cookie_name:
            token = request.cookies.get(cookie_name)
        identity = self.authenticator.identify(
            Credentials(token=token, user_id=query.get("userId"), role=query.get("role"))
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
        return identity, base_rooms(identity.user_id, identity.role) + stores

    async def _read(self, ws: web.WebSocketResponse, conn: WebSocketConnection) -> str:
        async for msg in ws:
            if not conn.allow_message():
                conn.close(CLOSE_RATE_LIMITED, "too many messages")
                return "rate limited"
            if msg.type == WSMsgType.TEXT:
                reply = self._answer(conn, msg.data)
            elif msg.type == WSMsgType.BINARY:
                reply = _error("binary frames are not accepted: send JSON text")
            else:
                break
            conn.send_message(reply)
        return f"closed {ws.close_code}" if ws.close_code else "client closed"

    def _answer(self, conn: WebSocketConnection, text: str) -> dict[str, Any]:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            return _error("malformed JSON")
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            return _error('expected {"type": string, "data": ...}')
        kind = message["type"]
        if kind == "ping":
            return {"type": "pong"}
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


def _error(message: str) -> dict[str, Any]:
    return {"type": "error", "data": {"code": "bad_request", "message": message}}
