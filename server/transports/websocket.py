"""The server side of RFC 6455 for connections taken over from aiohttp after the handshake.

aiohttp keeps, for each WebSocket it serves, the parsed upgrade request, an HTTP parser, a
reader queue, a writer, a heartbeat timer and a handler task with its coroutine frames: about
12 KiB a connection that does nothing but wait. Here aiohttp routes and authenticates the upgrade
request; then the socket's transport is handed to a ``WebSocketProtocol`` (one small object with
slots, no task, no queue), and aiohttp forgets the connection. Frames to clients are written
straight into the transport, whose buffer is the connection's bounded send queue.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import struct
import zlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from aiohttp import web

log = logging.getLogger(__name__)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ABORT_AFTER_SECONDS = 2.0  # a peer that does not answer our close frame is cut off
DEFAULT_SEND_LIMIT = 4 * 1024 * 1024  # websocket.send_buffer_bytes' default

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008  # our use: a slow consumer, whose send buffer overflowed
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

# permessage-deflate as we agree to it: no context kept on either side, so an event's compressed
# frame is the same for every client and is built once (server/events.py), and no connection
# holds zlib state between messages.
DEFLATE_RESPONSE = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
DEFLATE_TAIL = b"\x00\x00\xff\xff"


def frame(opcode: int, payload: bytes, rsv1: bool = False) -> bytes:
    """An unmasked, unfragmented server-to-client frame (RFC 6455 §5.2)."""
    first = 0x80 | opcode | (0x40 if rsv1 else 0)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


def text_frame(payload: bytes) -> bytes:
    return frame(OP_TEXT, payload)


# A position mark outside the heartbeat (``WebSocketProtocol.mark``); heartbeat payloads are digits.
MARK_PAYLOAD = b"m"
MARK_PING = frame(OP_PING, MARK_PAYLOAD)


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:120])


def deflate(payload: bytes) -> bytes:
    """One message compressed with no context (RFC 7692 §7.2.1), for a frame with RSV1 set."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(DEFLATE_TAIL) else data


def valid_close_code(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame (RFC 6455 §7.4, IANA registry)."""
    if 3000 <= code <= 4999:
        return True
    return 1000 <= code <= 1014 and code not in (1004, 1005, 1006)


def _unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    length = len(payload)
    if not length:
        return b""
    repeated = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")


def accepts_deflate(offers: str | None) -> bool:
    """Whether one of the client's permessage-deflate offers allows what we answer with.

    We refuse offers that limit our window (server_max_window_bits): our shared frames use 15.
    """
    for offer in (offers or "").split(","):
        params = [p.strip().lower() for p in offer.split(";")]
        if params[0] != "permessage-deflate":
            continue
        names = {p.split("=", 1)[0].strip() for p in params[1:]}
        if names <= {"client_max_window_bits", "server_no_context_takeover", "client_no_context_takeover"}:
            return True
    return False


def handshake(headers: Mapping[str, str], compression: bool) -> tuple[bytes, bool]:
    """Check an upgrade request's headers; the ``101`` response to write, and whether it agreed
    to deflate.

    Raises ``web.HTTPBadRequest`` for what is not a WebSocket handshake (aiohttp's answers).
    """
    if "websocket" not in headers.get("Upgrade", "").lower():
        raise web.HTTPBadRequest(
            text='No WebSocket UPGRADE hdr: {}\n Can "Upgrade" only to "WebSocket".'.format(
                headers.get("Upgrade")
            )
        )
    if "upgrade" not in headers.get("Connection", "").lower():
        raise web.HTTPBadRequest(text="No CONNECTION upgrade hdr: {}".format(headers.get("Connection")))
    if headers.get("Sec-WebSocket-Version") != "13":
        raise web.HTTPBadRequest(text="Unsupported version: {}".format(headers.get("Sec-WebSocket-Version")))
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        raise web.HTTPBadRequest(text=f"Handshake error: {key!r}") from None
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
    deflated = compression and accepts_deflate(headers.get("Sec-WebSocket-Extensions"))
    response = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: upgrade",
        b"Sec-WebSocket-Accept: " + accept,
    ]
    if deflated:
        response.append(b"Sec-WebSocket-Extensions: " + DEFLATE_RESPONSE.encode())
    return b"\r\n".join(response) + b"\r\n\r\n", deflated


class Upgrade(Protocol):
    """An upgrade request whose socket can be taken: aiohttp's (``AiohttpUpgrade``) or the front
    door's (server/transports/front_door.py)."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def query(self) -> Mapping[str, str]: ...

    @property
    def host(self) -> str: ...

    @property
    def transport(self) -> asyncio.Transport | None: ...

    def cookie(self, name: str) -> str | None: ...

    def release(self) -> bytes:
        """Stop the socket's current protocol from using it; what the client sent after its
        request (it may not send before our 101, but nothing it sent is dropped)."""
        ...


# The environ key under which the front door hands python-engineio an Engine.IO upgrade it read:
# (the ``Upgrade``, the ``101`` to send, whether it deflates). See eio.WebSocketDriver.
DOOR_UPGRADE = "realtime.door_upgrade"


class AiohttpUpgrade:
    """An upgrade request that aiohttp parsed, handled by one of its routes."""

    __slots__ = ("request",)

    def __init__(self, request: web.Request) -> None:
        self.request = request

    @property
    def headers(self) -> Mapping[str, str]:
        return self.request.headers

    @property
    def query(self) -> Mapping[str, str]:
        return self.request.query

    @property
    def host(self) -> str:
        return self.request.host

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.request.transport

    def cookie(self, name: str) -> str | None:
        return self.request.cookies.get(name)

    def release(self) -> bytes:
        """aiohttp is told the connection is gone (without closing it): it frees what it held
        for it, and the handler's return value is never written."""
        aiohttp_protocol: Any = self.request.protocol
        early: bytes = getattr(
            aiohttp_protocol, "_message_tail", b""
        )  # SEAM: aiohttp.RequestHandler._message_tail
        aiohttp_protocol.transport = None  # SEAM: aiohttp.RequestHandler.transport (it must not close it)
        aiohttp_protocol.connection_lost(None)  # SEAM: aiohttp.RequestHandler.connection_lost
        return early


def take_over(upgrade: Upgrade, response: bytes, protocol: WebSocketProtocol, hold: bool = False) -> bytes:
    """Write the ``101`` and move the socket to ``protocol``; what the client sent behind its
    request, for the caller to pass on (``protocol.data_received``) once it is ready for it.

    With ``hold``, the ``101`` goes out with the protocol's first write (the greeting that always
    follows): one system call, not two.
    """
    transport = upgrade.transport
    assert transport is not None
    early = upgrade.release()
    if hold:
        protocol.head = response
    else:
        transport.write(response)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    return early


class TakenOver(web.StreamResponse):
    """What a handler returns to aiohttp for a socket given to ``take_over``: nothing to write."""

    def __init__(self) -> None:
        super().__init__(status=101)

    async def prepare(self, request: web.BaseRequest) -> None:
        # SEAM: aiohttp.StreamResponse.prepare: aiohttp writes a response only through these two.
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


class WebSocketProtocol(asyncio.Protocol):
    """Frames in, frames out. Subclasses handle messages (``on_message``) and the end (``on_closed``)."""

    # One of these per client: slots, and no per-connection timer (see ``Heartbeat``).
    __slots__ = (
        "_buffer",
        "_close_code",
        "_close_sent",
        "_discard",
        "_fragment_opcode",
        "_fragment_size",
        "_fragments",
        "_heard",
        "_inflate",
        "_ping_mark",
        "_ping_payload",
        "acked",
        "deflate",
        "head",
        "max_message_bytes",
        "peer_closed_with",
        "send_limit",
        "transport",
    )

    closing_timeout: ClassVar[float] = ABORT_AFTER_SECONDS

    def __init__(
        self, max_message_bytes: int, deflate: bool = False, send_limit: int = DEFAULT_SEND_LIMIT
    ) -> None:
        self.transport: asyncio.Transport | None = None
        self.max_message_bytes = max_message_bytes
        self.deflate = deflate  # permessage-deflate agreed: clients may compress their messages
        # Bytes we may hold for a client that does not read, whatever we write (events, pongs,
        # replies): past it the client is closed (1008), so no client can make us buffer more.
        self.send_limit = send_limit
        # Bytes received but not yet parsed (a frame's beginning). A bytearray grown in place and
        # consumed from the front, so a frame that arrives a byte at a time costs linear time.
        self._buffer = bytearray()
        self._fragments: list[bytes] | None = None  # a fragmented message being received
        self._fragment_size = 0  # its bytes so far: kept as a sum, never recounted per frame
        self._fragment_opcode = OP_TEXT
        self._discard = False  # after a protocol error: the stream can no longer be parsed
        self._inflate = False  # the message being received is compressed
        self._close_sent = False
        self._close_code: int | None = None
        self._heard = True  # anything received since the last heartbeat
        self.head = b""  # the handshake's answer, held for the first write (``take_over``)
        # The last ping's payload and what it marks (see ``Heartbeat``); ``acked``: the mark of
        # the last ping the client answered.
        self._ping_payload: bytes | None = None
        self._ping_mark: str | None = None
        self.acked: str | None = None
        self.peer_closed_with: int | None = None  # the code of a close the client started

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._heard = True
        if self._discard:
            return
        pending = self._buffer
        buffer: bytes | bytearray = data
        if pending:
            pending += data  # in place: amortised O(len(data)), not a copy of all that waits
            buffer = pending
        pos, end = 0, len(buffer)
        while end - pos >= 2 and self.transport is not None:
            first, second = buffer[pos], buffer[pos + 1]
            length = second & 0x7F
            header = 6
            if length == 126:
                header = 8
                if end - pos < header:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
            elif length == 127:
                header = 14
                if end - pos < header:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
            if not second & 0x80:
                self._fail(CLOSE_PROTOCOL_ERROR, "frames from a client must be masked")
                return
            if length > self.max_message_bytes:
                self._fail(CLOSE_TOO_BIG, "message too big")
                return
            if end - pos < header + length:
                break
            mask = buffer[pos + header - 4 : pos + header]
            payload = _unmask(buffer[pos + header : pos + header + length], mask)
            pos += header + length
            if self._close_sent and first & 0x0F != OP_CLOSE:
                continue  # closing: only the peer's close frame matters now
            self._frame(first, payload)
        if self._discard:
            return
        if buffer is pending:
            del pending[:pos]  # from the front of a bytearray: no copy of the rest
        elif pos < end:
            pending[:] = buffer[pos:]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self.on_closed(self._close_code if self._close_code is not None else CLOSE_ABNORMAL)

    # --- frames ------------------------------------------------------------------------------

    def _frame(self, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        fin = first & 0x80
        rsv1 = first & 0x40
        if first & 0x30 or (rsv1 and (not self.deflate or opcode == OP_CONTINUATION or opcode >= OP_CLOSE)):
            self._fail(CLOSE_PROTOCOL_ERROR, "reserved bits set")
            return
        if opcode >= OP_CLOSE:
            if not fin or len(payload) > 125:
                self._fail(CLOSE_PROTOCOL_ERROR, "bad control frame")
            elif opcode == OP_CLOSE:
                self._closed_by_peer(payload)
            elif opcode == OP_PING:
                self.write(frame(OP_PONG, payload))
            elif opcode == OP_PONG:
                if payload == self._ping_payload and self._ping_mark is not None:
                    self.acked = self._ping_mark
            else:
                self._fail(CLOSE_PROTOCOL_ERROR, "unknown opcode")
            return
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                self._fail(CLOSE_PROTOCOL_ERROR, "continuation without a message")
                return
            if payload:
                self._fragments.append(payload)
                self._fragment_size += len(payload)
                if self._fragment_size > self.max_message_bytes:
                    self._fail(CLOSE_TOO_BIG, "message too big")
                    return
            if not fin:
                return
            opcode, payload = self._fragment_opcode, b"".join(self._fragments)
            self._fragments = None
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._fragments is not None:
                self._fail(CLOSE_PROTOCOL_ERROR, "a new message inside a fragmented one")
                return
            self._inflate = bool(rsv1)
            if not fin:
                self._fragment_opcode, self._fragments, self._fragment_size = opcode, [payload], len(payload)
                return
        else:
            self._fail(CLOSE_PROTOCOL_ERROR, "unknown opcode")
            return
        self._message(opcode, payload)

    def _message(self, opcode: int, payload: bytes) -> None:
        if self._inflate:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                payload = inflater.decompress(payload + DEFLATE_TAIL, self.max_message_bytes + 1)
            except zlib.error:
                self._fail(CLOSE_INVALID_DATA, "bad compressed data")
                return
            if len(payload) > self.max_message_bytes:
                self._fail(CLOSE_TOO_BIG, "message too big")
                return
        if opcode == OP_TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_DATA, "text is not UTF-8")
                return
            self.on_message(text)
        else:
            self.on_message(payload)

    def _closed_by_peer(self, payload: bytes) -> None:
        code = CLOSE_NO_STATUS
        if len(payload) == 1:
            self._fail(CLOSE_PROTOCOL_ERROR, "a close frame's code is two bytes")
            return
        if len(payload) >= 2:
            code = int.from_bytes(payload[:2], "big")
            if not valid_close_code(code):
                self._fail(CLOSE_PROTOCOL_ERROR, f"close code {code} may not be sent")
                return
            try:
                payload[2:].decode()
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_DATA, "the close reason is not UTF-8")
                return
        if self._close_code is None:
            self._close_code = code
            self.peer_closed_with = code
        if not self._close_sent:
            # Echo it (RFC 6455 §5.5.1); a 1005 ("no status") is never sent on the wire.
            self.write(frame(OP_CLOSE, payload[:2] if code != CLOSE_NO_STATUS else b""))
            self._close_sent = True
        if self.transport is not None:
            self.transport.close()  # the close handshake is done: the server closes TCP first

    def _fail(self, code: int, reason: str) -> None:
        log.info("websocket protocol error", extra={"code": code, "reason": reason})
        self._fragments = None
        self._buffer = bytearray()
        self._discard = True
        self.close(code, reason)

    def eof_received(self) -> bool:
        return False  # the peer is done sending: close our side too

    # --- to the client -----------------------------------------------------------------------

    def write(self, data: bytes, bounded: bool = True) -> bool:
        """Queue ``data`` for the client; False once it is closing, e.g. because its unsent bytes
        passed ``send_limit`` (``on_overflow``). ``bounded=False``: this write may pass it (a
        replay, see ``Connection.send_replay``)."""
        transport = self.transport
        if transport is None or self._close_sent:
            return False
        if self.head:
            data = self.head + data
            self.head = b""
        transport.write(data)
        if bounded and transport.get_write_buffer_size() > self.send_limit:
            self.on_overflow()
            return False
        return True

    @property
    def closing(self) -> bool:
        """Our close frame is sent: nothing more is written, and only the peer's close is read."""
        return self._close_sent

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel: this client's send backlog."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame after what is queued, then our FIN; the socket closes when the peer
        answers, or ``closing_timeout`` seconds later whatever it does (a client that stopped
        reading). Reading goes on meanwhile: closing with unread data would reset the connection
        and could destroy our close frame before the client reads it."""
        transport = self.transport
        if transport is None or self._close_sent:
            return
        self._close_sent = True
        if self._close_code is None:
            self._close_code = code
        head, self.head = self.head, b""
        transport.write(head + close_frame(code, reason))
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(self.closing_timeout, transport.abort)

    def flush_head(self) -> None:
        """Write a held handshake answer now, when no first write followed it."""
        if self.head and self.transport is not None:
            self.transport.write(self.head)
        self.head = b""

    def ping(self, ping_frame: bytes, payload: bytes, mark: str | None) -> bool:
        """Ping the client; False if it has sent nothing since the last ping (it is then cut off).

        ``ping_frame`` carries ``payload``; a pong with that payload proves the client has read
        everything written before the ping, which ``mark`` names (it becomes ``acked``).
        """
        if not self.answered():
            return False
        self._heard = False
        self._ping_payload, self._ping_mark = payload, mark
        self.write(ping_frame)
        return True

    def mark(self, mark: str | None, frames: bytes = b"", bounded: bool = False) -> None:
        """Write ``frames`` and a ping, between the heartbeat's rounds: once the client answers,
        it has read everything written before, which ``mark`` names. One pending mark at a time:
        the newest ping's (a heartbeat round's, or this one) is the one an answer confirms.
        (Unbounded by default: right after a replay, which is exempt from the send limit too.)"""
        self._ping_payload, self._ping_mark = MARK_PAYLOAD, mark
        self.write(frames + MARK_PING, bounded=bounded)

    def answered(self) -> bool:
        """Whether the client sent anything since the last ping; if not, it is cut off."""
        if self._heard:
            return True
        if self.transport is not None:
            self.transport.abort()
        return False

    # --- for subclasses ----------------------------------------------------------------------

    def on_overflow(self) -> None:
        """The client stopped reading (its unsent bytes passed ``send_limit``): close it, 1008."""
        log.warning("slow consumer closed", extra=self.describe())
        self.close(CLOSE_POLICY, "slow consumer")

    def describe(self) -> dict[str, str]:
        """Who this client is, for log lines."""
        return {}

    def on_message(self, data: str | bytes) -> None:
        """A whole message from the client: ``str`` for text, ``bytes`` for binary."""

    def on_closed(self, code: int) -> None:
        """The socket is gone; ``code`` is the close code either side sent (1006 if none)."""


class Heartbeat:
    """Pings every connection registered with it each ``interval`` seconds, from one task.

    A connection that sent nothing (no pong, no message) within ``timeout`` of a ping is cut off:
    a client that vanished without a close is gone within ``interval + timeout``. Each round's
    ping carries the round's number and marks ``position()`` (the last event written to every
    client): one value and one frame per round, nothing per connection.
    """

    def __init__(
        self, interval: float, timeout: float | None = None, position: Callable[[], str | None] = lambda: None
    ) -> None:
        self.interval = interval
        self.timeout = min(timeout if timeout is not None else interval, interval)
        self.position = position
        self.members: set[WebSocketProtocol] = set()
        self._task: asyncio.Task[None] | None = None
        self._round = 0

    def add(self, protocol: WebSocketProtocol) -> None:
        self.members.add(protocol)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, protocol: WebSocketProtocol) -> None:
        self.members.discard(protocol)

    async def _run(self) -> None:
        while self.members:
            await asyncio.sleep(self.interval - self.timeout)
            self._round += 1
            payload = str(self._round).encode()
            ping_frame, mark = frame(OP_PING, payload), self.position()
            pinged = list(self.members)
            for protocol in pinged:
                if not protocol.ping(ping_frame, payload, mark):
                    self.members.discard(protocol)
            await asyncio.sleep(self.timeout)
            for protocol in pinged:  # pinged ``timeout`` ago and silent since: cut off
                if protocol in self.members and not protocol.answered():
                    self.members.discard(protocol)
        self._task = None

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
