"""Engine.IO sockets without a task per client, for python-engineio under python-socketio.

python-engineio gives each client a queue, a writer task, a reader loop with a task per message,
a ping task, and (on aiohttp) the WebSocket objects of ``aiohttp.web``: ~30 KiB a client. Here:

- ``LeanSocket`` is python-engineio's socket, still doing its handshake, long-polling, upgrade
  rules and ping timeouts. On WebSocket it writes every packet straight into the transport
  (its queue is used only while the client polls, or its upgrade is under way).
- ``EngineWebSocket`` is the WebSocket under it (``server.transports.websocket``): messages go to the socket
  as they arrive, with no reader task.
- ``PingScheduler`` sends every socket's pings from one task, instead of a task per socket, and
  closes a socket whose ping goes unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket
from engineio.exceptions import EngineIOError, QueueEmpty
from engineio.payload import Payload

from server.background import FixedDelay, spawn
from server.events import SIO_FRAME, SIO_FRAME_DEFLATED, Event, joined
from server.transports.gate import ConnectGate
from server.transports.websocket import (
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    DEFAULT_SEND_LIMIT,
    DOOR_UPGRADE,
    OP_BINARY,
    AiohttpUpgrade,
    TakenOver,
    Upgrade,
    WebSocketProtocol,
    frame,
    handshake,
    take_over,
    text_frame,
)

log = logging.getLogger(__name__)

MAX_QUEUED_PACKETS = 10_000  # websocket.max_queued_packets' default: Engine.IO's queue has no bound
CLOSE_DRAIN_SECONDS = 1.0  # how long a closing polling socket waits for its queue to be polled


class CountedPacket(eio_packet.Packet):  # type: ignore[misc]
    """A MESSAGE queued for a polling socket; counts in its backlog until it is encoded (sent)."""

    def __init__(self, socket: LeanSocket, data: str, size: int) -> None:
        super().__init__(eio_packet.MESSAGE, data=data)
        self._socket: LeanSocket | None = socket
        self._size = size

    def encode(self, b64: bool = False) -> Any:
        if self._socket is not None:
            self._socket.backlog_packets -= 1
            self._socket.backlog_bytes -= self._size
            self._socket = None
        return super().encode(b64=b64)


class LeanSocket(AsyncSocket):  # type: ignore[misc]
    """python-engineio's socket, writing straight to its WebSocket (see the module docstring).

    Sockets become this class in ``RealtimeServer._handle_eio_connect``, as soon as python-engineio
    has made them, before anything but the OPEN packet is queued.
    """

    ws: EngineWebSocket | None
    # SEAM: engineio.AsyncSocket.state: connected, upgrading, upgraded, closing, closed, last_ping.
    last_ping: float | None  # python-engineio's: when the unanswered ping was sent
    backlog_packets: int
    backlog_bytes: int
    connection: Any  # the Socket.IO connection on this socket, while there is one
    ping_mark: str | None  # the hub's position when the unanswered ping was written
    acked: str | None  # the mark of the last ping the client answered
    peer_close_code: int | None  # the close code of a WebSocket the client closed

    def adopt(self) -> None:
        # SEAM: engineio.AsyncSocket.queue: python-engineio's own, made in its __init__.
        self._queue: asyncio.Queue[Any] | None = self.__dict__.pop("queue")
        self.ws = None
        self.backlog_packets = 0  # MESSAGEs in the queue, not yet sent (a polling client's backlog)
        self.backlog_bytes = 0
        self.connection = None
        self.ping_mark = self.acked = None
        self.peer_close_code = None

    # python-engineio's queue of packets for the client, made when needed: a WebSocket client
    # never needs it once connected, and an asyncio.Queue is ~3 KiB.
    @property
    def queue(self) -> asyncio.Queue[Any]:
        if self._queue is None:
            self._queue = self.server.create_queue()
        return self._queue

    @queue.setter
    def queue(self, queue: asyncio.Queue[Any]) -> None:
        self._queue = queue

    def _queue_empty(self) -> bool:
        return self._queue is None or self._queue.empty()

    def direct(self) -> EngineWebSocket | None:
        """The WebSocket to write to, if nothing queued could be overtaken."""
        ws = self.ws
        if ws is not None and self.upgraded and not self.backlog_packets and self._queue_empty():
            return ws
        return None

    def send_events(self, events: Sequence[Event], limit: int | None) -> bool:
        """Send the events as Engine.IO MESSAGEs, in one write when on WebSocket.

        False if the client is closing: its polling backlog is now over ``limit`` bytes, or, on
        WebSocket, the socket closed it for not reading (``WebSocketProtocol.write``). ``limit``
        ``None``: no bound (a replay, see ``Connection.send_replay``).
        """
        if self.closed or self.closing:
            return True
        ws = self.direct()
        if ws is None:
            return self._enqueue([event.sio_payload for event in events], limit)
        return ws.write(
            joined(events, SIO_FRAME_DEFLATED if ws.deflate else SIO_FRAME), bounded=limit is not None
        )

    def send_message(self, payload: bytes, limit: int) -> bool:
        """Send one Engine.IO MESSAGE whose data is ``payload``; False as for ``send_events``."""
        if self.closed or self.closing:
            return True
        ws = self.direct()
        if ws is None:
            return self._enqueue([payload], limit)
        return ws.write(text_frame(b"4" + payload))

    def _enqueue(self, payloads: list[bytes], limit: int | None) -> bool:
        for payload in payloads:
            self.backlog_packets += 1
            self.backlog_bytes += len(payload)
            self.queue.put_nowait(CountedPacket(self, payload.decode(), len(payload)))
        # Bounded in bytes like a WebSocket client's buffer (and in packets: each has a cost of its own).
        if limit is None:
            return True
        return self.backlog_bytes <= limit and self.backlog_packets <= self.server.max_queued_packets

    async def send(self, pkt: eio_packet.Packet) -> None:
        # SEAM: engineio.AsyncSocket.send: every packet python-engineio sends to this client.
        if not await self.check_ping_timeout():
            return
        ws = self.direct()
        if ws is not None:
            ws.write_packet(pkt)
        elif self.queue.qsize() >= self.server.max_queued_packets:
            # A polling client that sends (pings, emits) but never polls: its answers pile up.
            log.warning("slow consumer closed", extra={"transport": "socketio", "sid": self.sid})
            await self.close(wait=False, abort=True)
        else:
            await self.queue.put(pkt)

    async def poll(self) -> list[eio_packet.Packet]:
        """Engine.IO's ``poll`` with at most ``Payload.max_decode_packets`` packets per response.

        python-engineio's own client refuses a long-polling payload of more packets than that (16)
        and drops the connection; the rest stay queued for the next poll.
        """
        # SEAM: engineio.AsyncSocket.poll
        try:
            first = await asyncio.wait_for(
                self.queue.get(), self.server.ping_interval + self.server.ping_timeout
            )
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

    async def handle_post_request(self, environ: dict[str, Any]) -> None:
        # SEAM: engineio.AsyncSocket.handle_post_request: python-engineio's handler of a polling
        # POST. A payload it cannot parse (not UTF-8, an empty or unknown packet, over 16 packets)
        # raised ValueError or KeyError, which it logged with a traceback and answered 200. Node's
        # engine.io closes the session on a parse error: an EngineIOError makes python-engineio do
        # that (400).
        # Packets behind the client's own CLOSE packet are ignored: python-engineio raised for them
        # (an unknown packet type) once the session was gone, and then answered 500.
        try:
            await super().handle_post_request(environ)
        except EngineIOError:
            if not self.closed:
                raise
        except (ValueError, LookupError) as exc:
            if self.closed:
                return
            log.info("socket.io polling client closed: malformed payload", extra={"sid": self.sid})
            raise EngineIOError(str(exc)) from None

    def schedule_ping(self) -> None:
        """The client answered the ping (or has just connected): schedule the next one."""
        if self.last_ping:  # python-engineio's rule: one ping cycle at a time
            # SEAM: engineio.AsyncSocket.schedule_ping: on long-polling, python-engineio's
            # ``receive()`` calls it for a PONG (``EngineWebSocket.on_message`` does on WebSocket):
            # that is how the ack is seen.
            if self.ping_mark is not None:
                self.acked = self.ping_mark  # the PONG came after everything before the PING
            self.last_ping = None
            self.server.pings.answered(self)

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        # SEAM: engineio.AsyncSocket.close
        self.server.pings.forget(self)
        await super().close(wait=False, abort=abort, reason=reason)
        if self.ws is not None:
            self.ws.close(CLOSE_NORMAL)  # after the CLOSE packet, if one was sent
        elif abort and self._queue is not None:
            # No CLOSE packet is queued (the client sent its own, or stopped answering): a long-poll
            # still waiting would hold its request for ping_interval + ping_timeout. Answer it now.
            self._queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
        elif wait and self._queue is not None:
            # A polling client gets what is queued (the CLOSE packet) at its next poll. One that
            # never polls again must not hold the socket, nor the request closing it, forever.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), CLOSE_DRAIN_SECONDS)
        self.server.sockets.pop(self.sid, None)

    def flush_queue(self) -> None:
        """Once on WebSocket: what waited in the queue goes first, in order; then the queue goes."""
        assert self.ws is not None
        queue, self._queue = self._queue, None
        while queue is not None and not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is not None:
                self.ws.write_packet(pkt)


class EngineWebSocket(WebSocketProtocol):
    """The WebSocket under a ``LeanSocket``: a direct connection, or an upgrade from polling."""

    __slots__ = ("held", "socket", "state")

    def __init__(self, socket: LeanSocket, max_message_bytes: int, deflate: bool, send_limit: int) -> None:
        super().__init__(max_message_bytes, deflate, send_limit)
        self.socket = socket
        # While its Socket.IO CONNECT waits its turn (``ConnectGate``): what the client sent
        # behind it, in order, and its socket's reading paused.
        self.held: list[str | bytes] | None = None
        # "open"; or, upgrading from long-polling: "probe" (waiting for ping "probe"), then
        # "upgrade" (waiting for the UPGRADE packet).
        self.state = "probe" if socket.connected else "open"

    def write_packet(self, pkt: eio_packet.Packet) -> None:
        encoded = pkt.encode()
        if isinstance(encoded, str):
            self.write(text_frame(encoded.encode()))
        else:
            self.write(frame(OP_BINARY, encoded))

    def describe(self) -> dict[str, str]:
        return {"transport": "socketio", "sid": self.socket.sid}

    def on_message(self, data: str | bytes) -> None:
        socket = self.socket
        if self.held is not None:
            self.held.append(data)
            return
        if self.state == "open" and type(data) is str and data[:1] == "4" and data[1:2].isnumeric():
            # A Socket.IO packet (it starts with its type's digit): python-engineio's decoding
            # would keep its text as it is, after raising and catching a ValueError to get there.
            if data[1] == "0" and socket.connection is None:  # a CONNECT: admitted in turn
                self.held = []
                if self.transport is not None:
                    self.transport.pause_reading()
                socket.server.gate.enter(functools.partial(self._connect, data))
                return
            spawn(socket.receive(eio_packet.Packet(eio_packet.MESSAGE, data=data[1:])))
            return
        try:
            pkt = eio_packet.Packet(encoded_packet=data)
        except Exception:  # python-engineio raises whatever its parsing meets (KeyError, ValueError...)
            # Node's engine.io closes the transport on a parse error; one log line, not one per packet.
            self._fail(CLOSE_PROTOCOL_ERROR, "malformed Engine.IO packet")
            return
        if self.state == "open":
            if pkt.packet_type == eio_packet.PONG:
                socket.schedule_ping()  # all that receive() does with it: no task for it
            elif pkt.packet_type in (eio_packet.MESSAGE, eio_packet.CLOSE):
                spawn(socket.receive(pkt))
            else:  # a client PING (Engine.IO 3), a NOOP, a second UPGRADE: not in protocol v4
                self._fail(CLOSE_PROTOCOL_ERROR, "unexpected Engine.IO packet")
        elif self.state == "probe":
            if pkt.packet_type != eio_packet.PING or pkt.data != "probe":
                self._refuse_upgrade()
                return
            self.write_packet(eio_packet.Packet(eio_packet.PONG, data="probe"))
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # ends a waiting poll
            self.state = "upgrade"
        elif pkt.packet_type == eio_packet.UPGRADE:
            socket.upgraded, socket.upgrading = True, False
            self.state = "open"
            socket.flush_queue()
        else:
            self._refuse_upgrade()

    def _connect(self, data: str) -> None:
        """Its CONNECT's turn (``ConnectGate``): run it, then what came behind it."""
        gate = self.socket.server.gate
        held, self.held = self.held or [], None
        if self.transport is None:  # it left while waiting
            gate.leave()
            return
        spawn(_admitted(self.socket.receive(eio_packet.Packet(eio_packet.MESSAGE, data=data[1:])), gate))
        for message in held:
            self.on_message(message)  # another CONNECT among them waits its turn again
        if self.held is None and self.transport is not None:
            self.transport.resume_reading()

    def _refuse_upgrade(self) -> None:
        """The client did not complete the upgrade: it stays on long-polling."""
        self.socket.upgrading = False
        self.socket.ws = None
        self.close(CLOSE_PROTOCOL_ERROR, "bad upgrade")

    def on_closed(self, code: int) -> None:
        socket = self.socket
        if socket.ws is not self:
            return
        if self.peer_closed_with is not None:
            socket.peer_close_code = self.peer_closed_with
        socket.ws = None
        if self.state != "open":  # an upgrade that did not finish: the client stays on polling
            socket.upgrading = False
        elif not socket.closed:
            spawn(socket.close(wait=False, abort=True, reason=socket.server.reason.TRANSPORT_CLOSE))


async def _admitted(connect: Coroutine[Any, Any, Any], gate: ConnectGate) -> None:
    try:
        await connect
    finally:
        gate.leave()


class WebSocketDriver:
    """What python-engineio calls to serve a WebSocket request (its ``_async['websocket']``)."""

    compress = False  # set per server: see ``driver``
    send_limit = DEFAULT_SEND_LIMIT

    def __init__(self, handler: Any, server: Any) -> None:
        # SEAM: engineio.AsyncSocket._websocket_handler: the socket's own handler, which we replace.
        self.socket: LeanSocket = handler.__self__
        self.server = server

    async def __call__(self, environ: dict[str, Any]) -> Any:
        upgrade: Upgrade
        if DOOR_UPGRADE in environ:  # read by the front door, its handshake checked there
            upgrade, response, deflate = environ[DOOR_UPGRADE]
        else:
            request = environ["aiohttp.request"]  # SEAM: engineio.environ.aiohttp.request
            response, deflate = handshake(request.headers, self.compress)
            upgrade = AiohttpUpgrade(request)
        socket = self.socket
        ws = EngineWebSocket(socket, self.server.max_http_buffer_size, deflate, self.send_limit)
        early = take_over(upgrade, response, ws, hold=True)
        socket.ws = ws
        if ws.state == "probe":
            socket.upgrading = True  # hold packet sends during the upgrade
        else:
            socket.connected = socket.upgraded = True
            socket.flush_queue()  # the OPEN packet, and whatever followed it, with the 101
        ws.flush_head()
        if early and ws.transport is not None:
            ws.data_received(early)  # what the client sent right behind its request
        return TakenOver()


def driver(compress: bool, send_limit: int) -> type[WebSocketDriver]:
    return type("WebSocketDriver", (WebSocketDriver,), {"compress": compress, "send_limit": send_limit})


class PingScheduler:
    """Every socket's pings from one task, and the check that each is answered in time.

    python-engineio re-arms a socket's ping only when its PONG comes, and checks the timeout only
    when it sends: a client that stops answering, while nothing is sent to it, would be kept
    forever (and counted online). Here the unanswered ping itself closes it ``timeout`` later.
    ``position(socket)`` is what a ping marks: every event written to the socket before it (see
    ``Connection.received_position``), or ``None``.
    """

    def __init__(
        self, interval: float, timeout: float, position: Callable[[LeanSocket], str | None] = lambda _: None
    ) -> None:
        self.position = position
        # Both keyed by socket: a socket's next ping, and the deadline of its unanswered one.
        # ``forget`` drops both when it closes (``LeanSocket.close``).
        self._pings: FixedDelay[LeanSocket] = FixedDelay(interval, self._send_ping)
        self._deadlines: FixedDelay[LeanSocket] = FixedDelay(timeout, self._check)

    def answered(self, socket: LeanSocket) -> None:
        """Its PONG came (or it has just connected): no deadline now, the next ping in ``interval``."""
        self._deadlines.discard(socket)
        self._pings.add(socket)

    def forget(self, socket: LeanSocket) -> None:
        self._pings.discard(socket)
        self._deadlines.discard(socket)

    async def ping_now(self, socket: LeanSocket) -> None:
        """Ping out of turn, when no ping is awaiting its PONG: the cycle goes on from this one
        (the ping already scheduled is dropped), so a client is never pinged twice per cycle."""
        if socket.last_ping is None:
            self._pings.discard(socket)
            await self._send_ping(socket)

    async def _send_ping(self, socket: LeanSocket) -> None:
        if not socket.closing and not socket.closed:
            socket.ping_mark = self.position(socket)
            socket.last_ping = time.time()
            await socket.send(eio_packet.Packet(eio_packet.PING))
            self._deadlines.add(socket)  # the deadline of this ping: one cycle at a time

    async def _check(self, socket: LeanSocket) -> None:
        # Due ``timeout`` after the socket's latest ping: unanswered if ``last_ping`` is still set
        # (a PONG clears it, ``schedule_ping``).
        if socket.last_ping is not None and not socket.closing and not socket.closed:
            log.info("socket.io client did not answer a ping: closed", extra={"sid": socket.sid})
            await socket.close(wait=False, abort=True, reason=socket.server.reason.PING_TIMEOUT)

    def stop(self) -> None:
        self._pings.stop()
        self._deadlines.stop()
