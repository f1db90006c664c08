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
from server.background import FixedDelay, spawn
from server.backplane.base import BackplaneUnavailable
from server.config import Settings
from server.events import Event
from server.hub import (
    CLOSE_KICKED,
    CLOSE_RATE_LIMITED,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_MANY_FOR_USER,
    Connection,
)
from server.identity.auth import Authenticator, AuthError, Credentials, Identity
from server.identity.errors import CLOSE_CODES
from server.node import Node, Resume
from server.transports import eio, packet_json
from server.transports.gate import ConnectGate
from server.transports.plain_ws import bearer_token
from server.transports.sio_manager import HubManager
from server.transports.websocket import CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR

log = logging.getLogger(__name__)

NAMESPACE = "/"
BINARY_EVENT, BINARY_ACK = str(sio_packet.BINARY_EVENT), str(sio_packet.BINARY_ACK)
# What a client may send (protocol v5); binary packets are refused before parsing.
CLIENT_PACKETS = (sio_packet.CONNECT, sio_packet.DISCONNECT, sio_packet.EVENT, sio_packet.ACK)
# Event names a client may not send (Node's socket.io-parser refuses them): python-socketio would
# call our own connect and disconnect handlers with what the client sent. And "*", python-socketio's
# catch-all, which would call ours with the client's arguments in place of the event name and sid.
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener", "*"}
)

QUERY_NAMES = ("token", "userId", "role")  # what ``_admit`` reads from the query
# What python-socketio keeps of a client's handshake request after CONNECT (it keeps the whole
# environ, aiohttp's request included, for the connection's life); what ``_admit`` reads.
KEPT_ENVIRON = ("HTTP_ORIGIN", "HTTP_HOST", "QUERY_STRING", "HTTP_AUTHORIZATION", "HTTP_COOKIE")
# Closes meant to be final, which socket.io-client must not retry by itself (it stops on
# ``io server disconnect``): kicked by the admin API, token expired or session ended, refresh refused.
# Closes that socket.io-client must not answer by reconnecting (a DISCONNECT packet is sent):
# a kick, a credential that is no longer good, and the per-user cap (a reconnect would only
# close the next oldest tab, round and round).
FINAL_CLOSES = frozenset(
    {CLOSE_KICKED, CLOSE_CODES["unauthorized"], CLOSE_CODES["forbidden"], CLOSE_TOO_MANY_FOR_USER}
)


class RealtimeEngine(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio with our WebSocket driver and one task for every socket's pings."""

    def __init__(self, compress: bool, send_buffer_bytes: int, max_connecting: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.compress = compress
        # SEAM: engineio.AsyncServer._async: its table names the class that serves a WebSocket
        # request, and the function that makes an environ of a request (given one, it is kept).
        translate = self._async["translate_request"]
        self._async: dict[str, Any] = dict(
            self._async,
            websocket=eio.driver(compress, send_buffer_bytes),
            translate_request=lambda request: request if isinstance(request, dict) else translate(request),
        )
        self.pings = eio.PingScheduler(self.ping_interval, self.ping_timeout)
        self.gate = ConnectGate(max_connecting)  # Socket.IO CONNECTs on WebSocket in progress at once
        self.max_queued_packets = eio.MAX_QUEUED_PACKETS  # per polling client (websocket.max_queued_packets)

    async def handle_request(self, request: web.Request) -> web.StreamResponse:
        # SEAM: engineio.AsyncServer.handle_request: every Engine.IO HTTP request (its aiohttp route).
        if "j" in request.query:
            # JSONP answers are scripts any site may load with the visitor's cookies: never served.
            return web.json_response({"code": 3, "message": "JSONP polling is not served"}, status=400)
        origin = request.headers.get("Origin")
        environ = {"HTTP_HOST": request.host, "HTTP_UPGRADE": request.headers.get("Upgrade", "")}
        if origin and not self.cors_allowed_origins(origin, environ):
            # Refused here, as Node's allowRequest does (403), with one info line: python-engineio
            # would log an ERROR per new origin, which any page can vary at will.
            log.info("engine.io request refused", extra={"reason": "origin not allowed", "origin": origin})
            return web.json_response({"code": 4, "message": "Forbidden"}, status=403)
        response: web.StreamResponse = await super().handle_request(request)
        return response

    async def handle_environ(self, environ: dict[str, Any]) -> web.StreamResponse:
        """A new session's WebSocket upgrade read by the front door: python-engineio's request
        handling on the environ made there (the JSONP and Origin rules above do not apply: it is
        not JSONP, and an upgrade's Origin is checked at CONNECT)."""
        response: web.StreamResponse = await super().handle_request(environ)
        return response

    def _log_error_once(self, message: str, message_key: str) -> None:
        # SEAM: engineio.AsyncServer._log_error_once: how python-engineio reports a client's bad
        # request (unknown sid, protocol version or transport), at ERROR the first time: a client's
        # mistake is no error of the server's, and must not page anyone. Logged as its repeats are.
        self.logger.info(message)


class RealtimeServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio with one ordered write path per client and connection-state recovery."""

    def __init__(
        self,
        send_buffer_bytes: int,
        compress: bool,
        connect_timeout: float,
        max_connecting: int,
        **kwargs: Any,
    ) -> None:
        self._compress = compress
        self.send_buffer_bytes = send_buffer_bytes
        self._max_connecting = max_connecting
        super().__init__(**kwargs)
        self.pids: dict[str, str] = {}  # sid -> private session id sent in CONNECT
        self.pending: dict[str, tuple[SocketIOConnection, Resume]] = {}
        # An Engine.IO session that sends no Socket.IO CONNECT in time is closed (Node's connectTimeout).
        self.connect_deadlines: FixedDelay[str] = FixedDelay(connect_timeout, self._connected_in_time)

    def _engineio_server_class(self) -> Any:
        # SEAM: socketio.AsyncServer._engineio_server_class: its Engine.IO server is built from this.
        return functools.partial(RealtimeEngine, self._compress, self.send_buffer_bytes, self._max_connecting)

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        # SEAM: socketio.AsyncServer._handle_eio_connect: a new Engine.IO session.
        socket = self.eio.sockets[eio_sid]
        socket.__class__ = eio.LeanSocket  # SEAM: engineio.AsyncSocket.__class__ (see LeanSocket)
        socket.adopt()
        self.connect_deadlines.add(eio_sid)
        await super()._handle_eio_connect(eio_sid, {k: environ[k] for k in KEPT_ENVIRON if k in environ})

    def _connected_in_time(self, eio_sid: str) -> None:
        if self.socket(eio_sid) is not None and self.manager.sid_from_eio_sid(eio_sid, NAMESPACE) is None:
            log.info("engine.io session sent no CONNECT in time: closed", extra={"sid": eio_sid})
            self.close_transport(eio_sid, CLOSE_NORMAL, "no CONNECT in time")

    def socket(self, eio_sid: str) -> eio.LeanSocket | None:
        return self.eio.sockets.get(eio_sid)  # type: ignore[no-any-return]

    def write(self, eio_sid: str, payload: bytes) -> bool:
        """Send an Engine.IO MESSAGE whose data is ``payload``: every packet we send (CONNECT,
        acks, refusals, events) takes this path or ``write_events``, so each is bounded.
        False once the client is closed for not reading."""
        socket = self.socket(eio_sid)
        if socket is None:
            return True
        return self._check_overflow(socket, socket.send_message(payload, self.send_buffer_bytes))

    def write_events(self, socket: eio.LeanSocket, events: Sequence[Event], bounded: bool = True) -> bool:
        """Send the events, in one write when on WebSocket; False as for ``write`` (``bounded``:
        a replay is not, see ``Connection.send_replay``). To the socket a connection keeps since
        its connect: no lookup by sid for each delivery."""
        limit = self.send_buffer_bytes if bounded else None
        return self._check_overflow(socket, socket.send_events(events, limit))

    def _check_overflow(self, socket: eio.LeanSocket, ok: bool) -> bool:
        if not ok and socket.ws is None:
            # A polling client whose backlog passed the limit (a WebSocket closes by itself).
            log.warning("slow consumer closed", extra={"transport": "socketio", "sid": socket.sid})
            self.close_transport(socket.sid, CLOSE_SLOW_CONSUMER, "slow consumer")
        return ok

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        # SEAM: socketio.AsyncServer._handle_eio_message: every Engine.IO message of a client.
        socket = self.socket(eio_sid)
        if socket is None or socket.closing or socket.closed:
            # Sent after the session's end (e.g. behind the client's own CLOSE packet): python-socketio
            # has forgotten the session, and a CONNECT would raise inside it. Node drops these too.
            return
        if not isinstance(data, str) or data[:1] in (BINARY_EVENT, BINARY_ACK):
            # No client of this server sends binary, and python-socketio would hold every message
            # after an attachment count (any number) until that many came.
            self._refuse_packet(eio_sid, "binary packets are not accepted")
            return
        try:
            pkt = self.packet_class(encoded_packet=data)
        except Exception:  # python-socketio's parser raises whatever it meets (ValueError, KeyError...)
            pkt = None
        if pkt is None or pkt.packet_type not in CLIENT_PACKETS or not valid_payload(pkt):
            self._refuse_packet(eio_sid, "malformed Socket.IO packet")
            return
        # python-socketio's own dispatch, on the packet decoded above (it would decode it again).
        if pkt.packet_type == sio_packet.CONNECT:
            await self._handle_connect(eio_sid, pkt.namespace, pkt.data)
        elif pkt.packet_type == sio_packet.DISCONNECT:
            # SEAM: socketio.AsyncServer._handle_disconnect: a client's DISCONNECT packet.
            await self._handle_disconnect(eio_sid, pkt.namespace, self.reason.CLIENT_DISCONNECT)
        elif pkt.packet_type == sio_packet.EVENT:
            # SEAM: socketio.AsyncServer._handle_event: a client's EVENT packet.
            await self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)
        # An ACK: we never emit with a callback, so none is awaited: python-socketio would log a
        # warning for each one (a log flood at a client's will); Node ignores them silently.

    def _refuse_packet(self, eio_sid: str, reason: str) -> None:
        """Node's socket.io closes a client on a parse error: so do we, with one log line."""
        socket = self.socket(eio_sid)
        if socket is None or socket.closing or socket.closed or (socket.ws is not None and socket.ws.closing):
            return  # already closing: the rest of what it sent meanwhile is not worth a line each
        log.info("socket.io client closed", extra={"sid": eio_sid, "reason": reason})
        self.close_transport(eio_sid, CLOSE_PROTOCOL_ERROR, reason)

    async def _send_packet(self, eio_sid: str, pkt: sio_packet.Packet) -> None:
        # SEAM: socketio.AsyncServer._send_packet: every packet python-socketio sends.
        if pkt.packet_type == sio_packet.CONNECT and isinstance(pkt.data, dict):
            pid = self.pids.get(pkt.data.get("sid", ""))
            if pid is not None:
                pkt.data["pid"] = pid
        encoded = pkt.encode()
        if isinstance(encoded, list):  # binary attachments: never sent by this server
            await super()._send_packet(eio_sid, pkt)
            return
        self.write(eio_sid, encoded.encode())  # bounded: a client that never reads is closed

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        # SEAM: socketio.AsyncServer._handle_connect: its CONNECT reply is written when it returns.
        await super()._handle_connect(eio_sid, namespace, data)
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace or NAMESPACE)
        if sid is not None:
            self.connect_deadlines.discard(eio_sid)  # connected in time: nothing more to check
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
    __slots__ = ("close_code", "eio_sid", "eio_socket", "node", "pid", "server", "sid")

    def __init__(
        self, server: RealtimeServer, node: Node, sid: str, eio_sid: str, identity: Identity
    ) -> None:
        settings = node.settings.websocket
        super().__init__(identity, settings.client_messages_per_second, settings.client_messages_burst)
        self.server = server
        self.node = node
        self.sid = sid
        self.eio_sid = eio_sid
        self.eio_socket = server.socket(eio_sid)
        self.pid = ""
        self.close_code: int | None = None  # the code we closed it with, if we did

    def send_events(self, events: Sequence[Event]) -> None:
        # A socket that has ended takes nothing (``LeanSocket.send_events``).
        socket = self.eio_socket
        if socket is not None and not self.server.write_events(socket, events):
            self.closed = True  # closed for not reading (logged where that was found)
            self.node.metrics.slow_consumer(self.transport)

    def send_replay(self, events: Sequence[Event]) -> None:
        if self.eio_socket is not None:
            self.server.write_events(self.eio_socket, events, bounded=False)

    def confirm_position(self) -> None:
        if self.eio_socket is not None:
            spawn(self.server.eio.pings.ping_now(self.eio_socket))

    def send_message(self, message: dict[str, Any]) -> None:
        payload = socketio.packet.Packet(
            sio_packet.EVENT, data=[message["type"], message.get("data")], namespace=NAMESPACE
        ).encode()
        self.server.write(self.eio_sid, payload.encode())

    def acked_position(self) -> str | None:
        return self.eio_socket.acked if self.eio_socket is not None else None

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        if code in FINAL_CLOSES:
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
            # Every Engine.IO HTTP request's Origin, and the CORS answer, follow our rule.
            cors_allowed_origins=self._origin_allowed,
            connect_timeout=ws.connect_timeout_seconds,
            max_connecting=ws.max_connecting,
            ping_interval=ws.heartbeat_seconds,
            # A client that stops answering pings is dropped (and resumed when it returns) within
            # heartbeat + timeout, as on plain WS (see eio.PingScheduler).
            ping_timeout=min(ws.heartbeat_timeout_seconds, ws.heartbeat_seconds),
            # No python-engineio service task: the PingScheduler times out silent clients, and a
            # closed socket leaves ``sockets`` as it closes. That task walks a copy of every socket
            # across a ping timeout, holding closed ones (thousands after a reconnect storm).
            monitor_clients=False,
            max_http_buffer_size=ws.max_message_bytes,
            http_compression=False,
            json=packet_json,  # the same values as python-socketio's default JSON, a fifth of its cost
            # Loggers of our own (not False): given False, each library adds a stderr handler of
            # its own, whose lines bypass LOG_FORMAT=json.
            logger=library_logger("socketio.server"),
            engineio_logger=library_logger("engineio.server"),
        )
        self.server.eio.max_queued_packets = ws.max_queued_packets
        self.server.on("connect", self.on_connect)
        self.server.on("disconnect", self.on_disconnect)
        self.server.on("subscribe", self.on_subscribe)
        self.server.on("unsubscribe", self.on_unsubscribe)
        self.server.on("refresh", self.on_refresh)
        self.server.on("*", self.on_other)
        self.server.eio.pings.position = self._ping_position

    def _ping_position(self, socket: eio.LeanSocket) -> str | None:
        """What a ping marks: the hub's position, unless the client's replay is still under way."""
        conn = socket.connection
        if conn is None or conn.replaying:
            return None
        return self.node.hub.position

    def _origin_allowed(self, origin: str | None, environ: dict[str, Any]) -> bool:
        """A WebSocket upgrade is let through: its CONNECT is refused with "forbidden" instead."""
        if environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            return True
        try:
            self.authenticator.check_origin(origin, environ.get("HTTP_HOST"))
        except AuthError:
            return False
        return True

    def attach(self, app: web.Application) -> None:
        self.server.attach(app, socketio_path="socket.io")

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        try:
            identity, rooms, after, pid, sent_position, session_lost = await self._admit(environ, auth)
        except AuthError as exc:
            log.info("socket.io refused", extra={"reason": exc.message, "kind": exc.kind})
            self.node.metrics.refused(SocketIOConnection.transport, exc.kind)
            raise socketio.exceptions.ConnectionRefusedError(exc.kind, {"reason": exc.message}) from None
        eio_sid = self.server.manager.eio_sid_from_sid(sid, NAMESPACE)
        conn = SocketIOConnection(self.server, self.node, sid, eio_sid, identity)
        self.connections[sid] = conn
        if conn.eio_socket is not None:
            conn.eio_socket.connection = conn
        resume = await self.node.connect(conn, rooms, after, resume_without_id=not sent_position)
        if session_lost and resume.resync_reason is None:
            # Its session (the stores it viewed) could not be read while Redis is down, so even a
            # replay from this process's memory would miss its stores' events: it must refetch.
            resume.resync_reason = "history_unavailable"
        # Each session its own pid: the client's own when its session was restored, else a new one.
        conn.pid = pid if pid and resume.recovered else secrets.token_urlsafe(12)
        self.server.pids[sid] = conn.pid
        self.server.pending[sid] = (conn, resume)
        self.authenticator.watch(conn)
        await self._save_session(conn)

    async def _admit(
        self, environ: dict[str, Any], auth: Any
    ) -> tuple[Identity, list[str], str | None, str, bool, bool]:
        """Identity, rooms, the id to resume after, the session's pid, whether the client sent
        any position at all (``lastEventId``, ``pid`` or ``offset``), and whether the session it
        asked to recover could not be read (Redis down)."""
        self.node.check_capacity()
        if auth is None:
            auth = {}
        if not isinstance(auth, dict):
            raise AuthError("bad_request", "auth must be an object")
        self.authenticator.check_origin(environ.get("HTTP_ORIGIN"), environ.get("HTTP_HOST"))
        query = query_values(environ.get("QUERY_STRING", ""))
        token = auth.get("token") or query.get("token") or bearer_token(environ.get("HTTP_AUTHORIZATION"))
        cookie_name = self.authenticator.settings.cookie_name
        if not token and cookie_name:
            cookie = SimpleCookie(environ.get("HTTP_COOKIE", "")).get(cookie_name)
            token = cookie.value if cookie is not None else None
        for name in ("token", "userId", "role", "lastEventId", "pid", "offset"):
            if auth.get(name) is not None and not isinstance(auth[name], str):
                raise AuthError("bad_request", f"auth.{name} must be a string")
        identity = await self.authenticator.authenticate(
            Credentials(
                token=token,
                user_id=auth.get("userId", query.get("userId")),
                role=auth.get("role", query.get("role")),
                cookie=environ.get("HTTP_COOKIE"),
                authorization=environ.get("HTTP_AUTHORIZATION"),
            )
        )
        stores = auth.get("stores", [])
        if not isinstance(stores, list):
            raise AuthError("bad_request", "auth.stores must be a list of store ids")
        after: str | None = auth.get("lastEventId")
        pid: str = auth.get("pid") or ""
        session_lost = False
        sent_position = bool(after or pid or auth.get("offset"))
        if pid and auth.get("offset"):
            # socket.io-client's own recovery: restore the session's stores, resume after offset.
            try:
                session = await self.node.backplane.load_session(pid)
            except BackplaneUnavailable:
                # Redis is down: the client is told to resync (history_unavailable), not left hanging.
                session, session_lost = None, True
            if session is not None and session.get("userId") == identity.user_id:
                stores = list(dict.fromkeys([*stores, *session.get("stores", [])]))
                after = auth["offset"]
            else:
                after, pid = after or auth["offset"], ""
        try:
            rooms = (
                base_rooms(identity.user_id, identity.role)
                + self.node.staff_rooms(identity)
                + store_rooms(stores, self.settings.websocket.max_stores_per_connection)
            )
        except SubscriptionError as exc:
            raise AuthError("bad_request", str(exc)) from None
        return identity, rooms, after, pid, sent_position, session_lost

    async def _save_session(self, conn: SocketIOConnection) -> None:
        stores = viewed_stores(conn.rooms)
        try:
            await self.node.backplane.save_session(
                conn.pid,
                {"userId": conn.user_id, "stores": stores},
                max(60, self.settings.history.max_age_seconds),
            )
        except BackplaneUnavailable as exc:  # Redis is down: its outage is logged where it is seen
            log.warning("could not save session for recovery: %s", exc)
        except Exception:  # recovery is best effort; the connection itself is fine
            log.warning("could not save session for recovery", exc_info=True)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        conn = self.connections.pop(sid, None)
        self.server.pids.pop(sid, None)
        self.server.pending.pop(sid, None)
        if conn is not None:
            conn.closed = True
            if conn.eio_socket is not None:
                conn.eio_socket.connection = None
            self.node.disconnect(conn, str(reason), self._close_code(conn, reason))
            sock = self.server.socket(conn.eio_sid)
            if sock is not None and not sock.upgraded and not sock.closing:
                # Answer a long-poll still waiting, or it (and the client) hangs for ping_timeout.
                # (A closing session answers it itself: ``LeanSocket.close``.)
                sock.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))

    def _close_code(self, conn: SocketIOConnection, reason: Any) -> int | None:
        """How the connection ended, as a WebSocket close code (``None``: dropped, timed out)."""
        if conn.close_code is not None:  # we closed it: restart, slow consumer, kicked...
            return conn.close_code
        if reason == self.server.reason.CLIENT_DISCONNECT:  # a Socket.IO DISCONNECT from the client
            return CLOSE_NORMAL
        return conn.eio_socket.peer_close_code if conn.eio_socket is not None else None

    async def on_subscribe(self, sid: str, data: Any = None) -> dict[str, Any]:
        return await self._change(sid, data, subscribe=True)

    async def on_unsubscribe(self, sid: str, data: Any = None) -> dict[str, Any]:
        return await self._change(sid, data, subscribe=False)

    def _sender(self, sid: str) -> SocketIOConnection | dict[str, Any]:
        """The connection a client message comes from, or the refusal to answer with: unknown
        connection, or one over its message rate (then closed 4429)."""
        conn = self.connections.get(sid)
        if conn is None:
            return _refusal("not connected")
        if not conn.allow_message():
            conn.close(CLOSE_RATE_LIMITED, "too many messages")
            return _refusal("too many messages")
        return conn

    async def _change(self, sid: str, data: Any, subscribe: bool) -> dict[str, Any]:
        conn = self._sender(sid)
        if isinstance(conn, dict):
            return conn
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

    async def on_refresh(self, sid: str, data: Any = None) -> dict[str, Any]:
        """A fresh token in band (contract §8): the same user and role, or the connection closes 4403."""
        conn = self._sender(sid)
        if isinstance(conn, dict):
            return conn
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            return _refusal("token must be a token string")
        identity = self.node.refresh(conn, token, self.authenticator)
        if isinstance(identity, AuthError):  # closed: a DISCONNECT follows this ack
            return {"ok": False, "error": identity.kind, "message": identity.message}
        return {"ok": True, "exp": identity.exp}

    async def on_other(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        self._sender(sid)  # counted against the rate like any message
        return _refusal(f"unknown event {str(event)[:64]!r}")


def valid_payload(pkt: sio_packet.Packet) -> bool:
    """Node's socket.io-parser's rule (``isPayloadValid``) for what a client sends: an EVENT is a
    list that starts with its name (a string that is not reserved, or a number), an ACK a list.

    python-socketio takes any JSON: ``42`` (no data) and ``42[]`` raised inside it (a traceback
    per packet), ``42[[1]]`` too, and ``42["disconnect"]`` ran our disconnect handler while the
    client stayed connected (it left the hub: no more events, shown offline).
    """
    data = pkt.data
    if pkt.packet_type == sio_packet.EVENT:
        if not isinstance(data, list) or not data:
            return False
        name = data[0]
        if isinstance(name, str):
            return name not in RESERVED_EVENTS
        return isinstance(name, int | float) and not isinstance(name, bool)
    if pkt.packet_type == sio_packet.ACK:
        return isinstance(data, list)
    return True


def query_values(query_string: str) -> dict[str, str]:
    """The query's values ``_admit`` reads (the first of each name). Socket.IO clients' queries
    (``EIO=4&transport=...``) carry none of them: parsing those was a percent of a connect's CPU."""
    if "%" not in query_string and not any(name in query_string for name in QUERY_NAMES):
        return {}  # none of them, even percent-encoded
    return {k: v[0] for k, v in parse_qs(query_string).items()}


def library_logger(name: str) -> logging.Logger:
    """A protocol library's logger, never below WARNING: at INFO they log every packet's data,
    tokens in CONNECT packets included."""
    logger = logging.getLogger(name)
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
    return logger


def _refusal(message: str) -> dict[str, Any]:
    return {"ok": False, "error": "bad_request", "message": message}
