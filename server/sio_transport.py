"""Socket.IO at ``/socket.io/`` (contract §5), on python-socketio for the protocol.

python-socketio keeps the handshake, acknowledgements, long-polling and the upgrade. Delivery
bypasses its per-client queue and writer task: once a client is on WebSocket, the hub writes the
event's pre-encoded frame straight into the connection's transport, as ``ws_transport`` does.
Every Socket.IO packet we send (CONNECT, acks, DISCONNECT, events) takes that one ordered path,
so nothing overtakes anything; Engine.IO's queue is used only while a client polls or upgrades.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import weakref
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import parse_qs

import socketio
from aiohttp import web
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket
from engineio.exceptions import QueueEmpty
from engineio.payload import Payload
from socketio import packet as sio_packet

from handlers.subscriptions import SubscriptionError, base_rooms, store_rooms, valid_id, viewed_stores
from server.auth import Authenticator, AuthError, Credentials, Identity
from server.background import spawn
from server.config import Settings
from server.events import Event
from server.hub import CLOSE_KICKED, CLOSE_RATE_LIMITED, CLOSE_SLOW_CONSUMER, Connection
from server.node import Node, Resume
from server.sio_manager import HubManager
from server.websocket import close_frame, text_frame
from server.ws_transport import bearer_token

log = logging.getLogger(__name__)

NAMESPACE = "/"
MAX_QUEUED_PACKETS = 10_000  # while polling: Engine.IO's queue has no bound of its own

# The network transport under each Engine.IO socket that is on the WebSocket transport.
_transports: weakref.WeakKeyDictionary[AsyncSocket, asyncio.Transport] = weakref.WeakKeyDictionary()


def _websocket_driver(compress: bool) -> type:
    """Engine.IO's aiohttp WebSocket wrapper, with compression decided here, not per browser."""
    from engineio.async_drivers.aiohttp import WebSocket

    class RawWebSocket(WebSocket):  # type: ignore[misc]
        async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
            request = environ["aiohttp.request"]
            # aiohttp refuses a frame of exactly max_msg_size bytes; the setting is the largest allowed
            # (as Engine.IO's own check of polling bodies has it).
            self._sock = web.WebSocketResponse(
                max_msg_size=self.server.max_http_buffer_size + 1, compress=compress, timeout=2.0
            )
            await self._sock.prepare(request)
            self.environ = environ
            if request.transport is not None:
                _transports[self.handler.__self__] = cast(asyncio.Transport, request.transport)
            await self.handler(self)
            return self._sock

    return RawWebSocket


async def _bounded_poll(self: AsyncSocket) -> list[eio_packet.Packet]:
    """Engine.IO's ``poll`` with at most ``Payload.max_decode_packets`` packets per response.

    python-engineio's own client refuses a long-polling payload of more packets than that (16)
    and drops the connection; the rest stay queued for the next poll.
    """
    try:
        first = await asyncio.wait_for(self.queue.get(), self.server.ping_interval + self.server.ping_timeout)
        self.queue.task_done()
    except (TimeoutError, asyncio.CancelledError):
        raise QueueEmpty() from None
    if first is None:
        return []
    packets = [first]
    while len(packets) < Payload.max_decode_packets:
        try:
            pkt = self.queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        self.queue.task_done()
        if pkt is None:
            self.queue.put_nowait(None)
            break
        packets.append(pkt)
    return packets


def close_websocket(transport: asyncio.Transport, code: int, reason: str) -> None:
    transport.write(close_frame(code, reason))
    transport.close()
    asyncio.get_running_loop().call_later(2.0, transport.abort)


class _CountedPacket(eio_packet.Packet):  # type: ignore[misc]
    """An Engine.IO MESSAGE queued for a socket; counts as pending until it is encoded (written)."""

    def __init__(self, server: RealtimeServer, eio_sid: str, data: str, size: int) -> None:
        super().__init__(eio_packet.MESSAGE, data=data)
        self._server = server
        self._eio_sid = eio_sid
        self._size = size
        self._pending = True

    def encode(self, b64: bool = False) -> Any:
        if self._pending:
            self._pending = False
            self._server.dequeued(self._eio_sid, self._size)
        return super().encode(b64=b64)


class RealtimeServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio with one ordered write path per client and connection-state recovery."""

    def __init__(self, send_buffer_bytes: int, compress: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        AsyncSocket.poll = _bounded_poll  # process-wide and idempotent: see _bounded_poll
        self.eio._async = dict(self.eio._async, websocket=_websocket_driver(compress))
        self.send_buffer_bytes = send_buffer_bytes
        # eio sid -> [packets, bytes] waiting in Engine.IO's queue (a polling client's send buffer)
        self.queued: dict[str, list[int]] = {}
        self.pids: dict[str, str] = {}  # sid -> private session id sent in CONNECT
        self.pending: dict[str, tuple[SocketIOConnection, Resume]] = {}

    def dequeued(self, eio_sid: str, size: int) -> None:
        pending = self.queued.get(eio_sid)
        if pending is None:
            return
        pending[0] -= 1
        pending[1] -= size
        if pending[0] <= 0:
            del self.queued[eio_sid]

    def write(self, eio_sid: str, payload: bytes) -> bool:
        """Send an Engine.IO MESSAGE whose data is ``payload``; False if the client overflowed."""
        sock, transport = self._route(eio_sid)
        if transport is not None:
            return self._write_frames(transport, text_frame(b"4" + payload))
        return sock is None or self._enqueue(sock, eio_sid, (payload,))

    def write_events(self, eio_sid: str, events: Sequence[Event]) -> bool:
        """Send the events, in one write when on WebSocket; False if the client overflowed."""
        sock, transport = self._route(eio_sid)
        if transport is not None:
            frames = events[0].sio_frame if len(events) == 1 else b"".join([e.sio_frame for e in events])
            return self._write_frames(transport, frames)
        return sock is None or self._enqueue(sock, eio_sid, [e.sio_payload for e in events])

    def _route(self, eio_sid: str) -> tuple[AsyncSocket | None, asyncio.Transport | None]:
        """The socket (None: gone, drop the packet) and its transport if we may write to it directly:
        on WebSocket with nothing left in Engine.IO's queue to overtake."""
        sock = self.eio.sockets.get(eio_sid)
        if sock is None or sock.closed or sock.closing:
            return None, None
        transport = _transports.get(sock)
        if transport is not None and sock.upgraded and eio_sid not in self.queued and sock.queue.empty():
            return sock, transport
        return sock, None

    def _write_frames(self, transport: asyncio.Transport, frames: bytes) -> bool:
        if transport.is_closing():
            return True
        transport.write(frames)
        return transport.get_write_buffer_size() <= self.send_buffer_bytes

    def _enqueue(self, sock: AsyncSocket, eio_sid: str, payloads: Sequence[bytes]) -> bool:
        pending = self.queued.setdefault(eio_sid, [0, 0])
        for payload in payloads:
            pending[0] += 1
            pending[1] += len(payload)
            sock.queue.put_nowait(_CountedPacket(self, eio_sid, payload.decode(), len(payload)))
        # Bounded in bytes like a WebSocket client's buffer (and in packets: each has a cost of its own).
        return pending[1] <= self.send_buffer_bytes and pending[0] <= MAX_QUEUED_PACKETS

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
        sock = self.eio.sockets.get(eio_sid)
        if sock is None or sock.closed:
            return
        transport = _transports.get(sock)
        if transport is not None and sock.upgraded and not transport.is_closing():
            close_websocket(transport, code, reason)
        else:
            spawn(sock.close(wait=False, abort=False))


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
            request: web.Request = environ["aiohttp.request"]
            token = request.cookies.get(cookie_name)
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
            self.server.queued.pop(conn.eio_sid, None)
            self.node.disconnect(conn, str(reason))
            sock = self.server.eio.sockets.get(conn.eio_sid)
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
