"""Socket.IO at ``/socket.io/`` (contract §5), on python-socketio for the protocol.

python-socketio keeps the handshake, acknowledgements, long-polling and the upgrade. Delivery
bypasses its per-client queue and writer task: once a client is on WebSocket, the hub writes the
event's pre-encoded frame straight into the connection's transport, as ``ws_transport`` does.
Every Socket.IO packet we send (CONNECT, acks, DISCONNECT, events) takes that one ordered path,
so nothing overtakes anything; Engine.IO's queue is used only while a client polls or upgrades.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Sequence
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

import engineio
import socketio
from aiohttp import web
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from handlers.subscriptions import SubscriptionError, base_rooms, store_rooms, valid_id, viewed_stores
from server import eio
from server.auth import Authenticator, AuthError, Credentials, Identity
from server.background import spawn
from server.config import Settings
from server.events import Event
from server.hub import CLOSE_KICKED, CLOSE_RATE_LIMITED, CLOSE_SLOW_CONSUMER, Connection
from server.node import Node, Resume
from server.sio_manager import HubManager
from server.ws_transport import bearer_token

log = logging.getLogger(__name__)

NAMESPACE = "/"

# What python-socketio keeps of a client's handshake request after CONNECT (it keeps the whole
# environ, aiohttp's request included, for the connection's life); what ``_admit`` reads.
KEPT_ENVIRON = ("HTTP_ORIGIN", "HTTP_HOST", "QUERY_STRING", "HTTP_AUTHORIZATION", "HTTP_COOKIE")


class RealtimeEngine(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio with our WebSocket driver and one task for every socket's pings."""

    def __init__(self, compress: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._async: dict[str, Any] = dict(self._async, websocket=eio.driver(compress))
        self.pings = eio.PingScheduler(self.ping_interval)


class RealtimeServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio with one ordered write path per client and connection-state recovery."""

    def __init__(self, send_buffer_bytes: int, compress: bool, **kwargs: Any) -> None:
        self._compress = compress
        super().__init__(**kwargs)
        self.send_buffer_bytes = send_buffer_bytes
        self.pids: dict[str, str] = {}  # sid -> private session id sent in CONNECT
        self.pending: dict[str, tuple[SocketIOConnection, Resume]] = {}

    def _engineio_server_class(self) -> Any:
        return functools.partial(RealtimeEngine, self._compress)

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        socket = self.eio.sockets[eio_sid]
        socket.__class__ = eio.LeanSocket  # made by python-engineio: see LeanSocket
        socket.adopt()
        await super()._handle_eio_connect(eio_sid, {k: environ[k] for k in KEPT_ENVIRON if k in environ})

    def socket(self, eio_sid: str) -> eio.LeanSocket | None:
        return self.eio.sockets.get(eio_sid)  # type: ignore[no-any-return]

    def write(self, eio_sid: str, payload: bytes) -> bool:
        """Send an Engine.IO MESSAGE whose data is ``payload``; False if the client overflowed."""
        socket = self.socket(eio_sid)
        return socket is None or socket.send_message(payload, self.send_buffer_bytes)

    def write_events(self, eio_sid: str, events: Sequence[Event]) -> bool:
        """Send the events, in one write when on WebSocket; False if the client overflowed."""
        socket = self.socket(eio_sid)
        return socket is None or socket.send_events(events, self.send_buffer_bytes)

    async def _send_packet(self, eio_sid: str, pkt: sio_packet.Packet) -> None:
        if pkt.packet_type == sio_packet.CONNECT and isinstance(pkt.data, dict):
            pid = self.pids.get(pkt.data.get("sid", ""))
            if pid is not None:
                pkt.data["pid"] = pid
        encoded = pkt.encode()
        if isinstance(encoded, list):  # binary attachments: never sent by this server
            await super()._send_packet(eio_sid, pkt)
            return
        self.write(eio_sid, encoded.encode())

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        await super()._handle_connect(eio_sid, namespace, data)
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace or NAMESPACE)
        pending = self.pending.pop(sid, None) if sid else None
        if pending is not None:
            conn, resume = pending
            conn.node.resume(conn, resume)

    def close_transport(self, eio_sid: str, code: int, reason: str) -> None:
        """Close the Engine.IO connection without a Socket.IO DISCONNECT (the client reconnects)."""
        socket = self.socket(eio_sid)
        if socket is None or socket.closed:
            return
        if socket.ws is not None and socket.upgraded:
            socket.ws.close(code, reason)
        else:
            # Long-polling: end the session without an Engine.IO CLOSE packet (abort=True). Python's
            # engineio client takes CLOSE as a server disconnect and never reconnects; here the
            # waiting poll gets a NOOP (``on_disconnect``), the next request a 400 for the unknown
            # session, or no answer once the process is gone: a transport error, which every client
            # retries, as it retries the WebSocket's close frame.
            spawn(socket.close(wait=False, abort=True))


class SocketIOConnection(Connection):
    transport = "socketio"
    __slots__ = ("eio_sid", "node", "pid", "server", "sid")

    def __init__(
        self, server: RealtimeServer, node: Node, sid: str, eio_sid: str, identity: Identity
    ) -> None:
        settings = node.settings.websocket
        super().__init__(identity, settings.client_messages_per_second, settings.client_messages_burst)
        self.server = server
        self.node = node
        self.sid = sid
        self.eio_sid = eio_sid
        self.pid = ""

    def send_events(self, events: Sequence[Event]) -> None:
        if not self.server.write_events(self.eio_sid, events):
            log.warning("slow consumer closed", extra={"userId": self.user_id, "transport": self.transport})
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    def send_message(self, message: dict[str, Any]) -> None:
        payload = socketio.packet.Packet(
            sio_packet.EVENT, data=[message["type"], message.get("data")], namespace=NAMESPACE
        ).encode()
        self.server.write(self.eio_sid, payload.encode())

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if code == CLOSE_KICKED:
            # Meant to be final: tell socket.io-client so (``io server disconnect``).
            spawn(self._kick(code, reason))
        else:
            self.server.close_transport(self.eio_sid, code, reason)

    async def _kick(self, code: int, reason: str) -> None:
        await self.server.disconnect(self.sid, namespace=NAMESPACE)
        self.server.close_transport(self.eio_sid, code, reason)


class SocketIOEndpoint:
    """The Socket.IO server's handlers: connect, disconnect, subscribe, unsubscribe."""

    def __init__(self, node: Node, authenticator: Authenticator, settings: Settings) -> None:
        self.node = node
        self.authenticator = authenticator
        self.settings = settings
        self.connections: dict[str, SocketIOConnection] = {}
        ws = settings.websocket
        self.server = RealtimeServer(
            send_buffer_bytes=ws.send_buffer_bytes,
            compress=ws.compression,
            async_mode="aiohttp",
            client_manager=HubManager(),
            # Origins are checked at CONNECT, where the refusal can say "forbidden".
            cors_allowed_origins=lambda origin, environ: True,
            ping_interval=ws.heartbeat_seconds,
            ping_timeout=20,
            max_http_buffer_size=ws.max_message_bytes,
            http_compression=False,
            logger=False,
            engineio_logger=False,
        )
        self.server.on("connect", self.on_connect)
        self.server.on("disconnect", self.on_disconnect)
        self.server.on("subscribe", self.on_subscribe)
        self.server.on("unsubscribe", self.on_unsubscribe)
        self.server.on("*", self.on_other)

    def attach(self, app: web.Application) -> None:
        self.server.attach(app, socketio_path="socket.io")

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        try:
            identity, rooms, after, pid = await self._admit(environ, auth)
        except AuthError as exc:
            log.info("socket.io refused", extra={"reason": exc.message, "kind": exc.kind})
            raise socketio.exceptions.ConnectionRefusedError(exc.kind, {"reason": exc.message}) from None
        eio_sid = self.server.manager.eio_sid_from_sid(sid, NAMESPACE)
        conn = SocketIOConnection(self.server, self.node, sid, eio_sid, identity)
        self.connections[sid] = conn
        resume = await self.node.connect(conn, rooms, after)
        conn.pid = pid if resume.recovered else secrets.token_urlsafe(12)
        self.server.pids[sid] = conn.pid
        self.server.pending[sid] = (conn, resume)
        await self._save_session(conn)

    async def _admit(self, environ: dict[str, Any], auth: Any) -> tuple[Identity, list[str], str | None, str]:
        if auth is None:
            auth = {}
        if not isinstance(auth, dict):
            raise AuthError("bad_request", "auth must be an object")
        self.authenticator.check_origin(environ.get("HTTP_ORIGIN"), environ.get("HTTP_HOST"))
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        token = auth.get("token") or query.get("token") or bearer_token(environ.get("HTTP_AUTHORIZATION"))
        cookie_name = self.authenticator.settings.cookie_name
        if not token and cookie_name:
            cookie = SimpleCookie(environ.get("HTTP_COOKIE", "")).get(cookie_name)
            token = cookie.value if cookie is not None else None
        for name in ("token", "userId", "role", "lastEventId", "pid", "offset"):
            if auth.get(name) is not None and not isinstance(auth[name], str):
                raise AuthError("bad_request", f"auth.{name} must be a string")
        identity = self.authenticator.identify(
            Credentials(
                token=token,
                user_id=auth.get("userId", query.get("userId")),
                role=auth.get("role", query.get("role")),
            )
        )
        stores = auth.get("stores", [])
        if not isinstance(stores, list):
            raise AuthError("bad_request", "auth.stores must be a list of store ids")
        after: str | None = auth.get("lastEventId")
        pid: str = auth.get("pid") or ""
        if pid and auth.get("offset"):
            # socket.io-client's own recovery: restore the session's stores, resume after offset.
            session = await self.node.backplane.load_session(pid)
            if session is not None and session.get("userId") == identity.user_id:
                stores = list(dict.fromkeys([*stores, *session.get("stores", [])]))
                after = auth["offset"]
            else:
                after, pid = after or auth["offset"], ""
        try:
            rooms = base_rooms(identity.user_id, identity.role) + store_rooms(
                stores, self.settings.websocket.max_stores_per_connection
            )
        except SubscriptionError as exc:
            raise AuthError("bad_request", str(exc)) from None
        return identity, rooms, after, pid

    async def _save_session(self, conn: SocketIOConnection) -> None:
        stores = viewed_stores(conn.rooms)
        try:
            await self.node.backplane.save_session(
                conn.pid,
                {"userId": conn.user_id, "stores": stores},
                max(60, self.settings.history.max_age_seconds),
            )
        except Exception:  # recovery is best effort; the connection itself is fine
            log.warning("could not save session for recovery", exc_info=True)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        conn = self.connections.pop(sid, None)
        self.server.pids.pop(sid, None)
        self.server.pending.pop(sid, None)
        if conn is not None:
            conn.closed = True
            self.node.disconnect(conn, str(reason))
            sock = self.server.socket(conn.eio_sid)
            if sock is not None and not sock.upgraded:
                # Answer a long-poll still waiting, or it (and the client) hangs for ping_timeout.
                sock.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))

    async def on_subscribe(self, sid: str, data: Any = None) -> dict[str, Any]:
        return await self._change(sid, data, subscribe=True)

    async def on_unsubscribe(self, sid: str, data: Any = None) -> dict[str, Any]:
        return await self._change(sid, data, subscribe=False)

    async def _change(self, sid: str, data: Any, subscribe: bool) -> dict[str, Any]:
        conn = self.connections.get(sid)
        if conn is None:
            return _refusal("not connected")
        if not conn.allow_message():
            conn.close(CLOSE_RATE_LIMITED, "too many messages")
            return _refusal("too many messages")
        store_id = data.get("storeId") if isinstance(data, dict) else None
        if not valid_id(store_id):
            return _refusal("storeId must be 1-128 letters, digits or _.:@-")
        assert isinstance(store_id, str)
        try:
            room = self.node.subscribe(conn, store_id) if subscribe else self.node.unsubscribe(conn, store_id)
        except SubscriptionError as exc:
            return _refusal(str(exc))
        await self._save_session(conn)
        return {"ok": True, "room": room}

    async def on_other(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        conn = self.connections.get(sid)
        if conn is not None and not conn.allow_message():
            conn.close(CLOSE_RATE_LIMITED, "too many messages")
        return _refusal(f"unknown event {str(event)[:64]!r}")


def _refusal(message: str) -> dict[str, Any]:
    return {"ok": False, "error": "bad_request", "message": message}
