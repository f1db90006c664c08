"""A lean WebSocket client for load scripts: one asyncio protocol per socket, no task per client.

Thousands of aiohttp or python-socketio clients would cost the load generator more CPU than the
server spends on them; this one parses frames as they arrive and can drop its TCP connection
without a close frame (``drop``), or stop reading (``pause``), which those clients cannot.

``connect_ws(host, port, path)`` gives a ``RawWebSocket`` once the server answered ``101``; set
its callbacks, then ``start()`` it (frames that came with the 101 wait for that);
``EngineIO`` speaks Engine.IO v4 / Socket.IO v5 over it (the namespace ``/`` only).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

import orjson

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class HandshakeError(Exception):
    """The server (or the proxy in front of it) answered the upgrade with something else than 101."""


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client frame: FIN set, masked (RFC 6455 §5.3: every client frame is)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    # Client payloads here are a few bytes (pongs, subscribes): a plain loop is quick enough.
    return head + mask + bytes(byte ^ mask[index & 3] for index, byte in enumerate(payload))


class RawWebSocket(asyncio.Protocol):
    """One client socket. ``on_text`` gets each text message; ``on_close`` the close code once
    the socket is gone (``None``: no close frame came, the connection just ended)."""

    def __init__(self) -> None:
        self.on_text: Callable[[str], None] = lambda _text: None
        self.on_close: Callable[[int | None], None] = lambda _code: None
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self.closed = False
        self._buffer = bytearray()
        self._fragments: list[bytes] | None = None
        self._open = False
        self._started = False  # frames wait in the buffer until the caller has set its callbacks

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of it

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._open:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._buffer[: self._buffer.find(b"\r\n")])
            del self._buffer[: end + 4]
            if b" 101 " not in status + b" ":
                if not self.upgraded.done():
                    self.upgraded.set_exception(HandshakeError(status.decode("latin-1")))
                self.drop()
                return
            self._open = True
            self.upgraded.set_result(None)
        if self._started:
            self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError(f"connection lost before the upgrade: {exc}"))
        if not self.closed:
            self.closed = True
            self.on_close(self.close_code)

    # --- frames -----------------------------------------------------------------------------

    def _parse(self) -> None:
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            length = second & 0x7F
            start = offset + 2
            if length == 126:
                if len(buffer) - offset < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, start)
                start += 2
            elif length == 127:
                if len(buffer) - offset < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, start)
                start += 8
            if len(buffer) < start + length:
                break
            payload = bytes(buffer[start : start + length])
            offset = start + length
            self._frame(first & 0x80 != 0, first & 0x0F, payload)
            if self.transport is None or self.closed:
                break
        del buffer[:offset]

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self._send(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self._send(OP_CLOSE, payload[:2])
            if self.transport is not None:
                self.transport.close()
        elif opcode in (OP_TEXT, OP_BINARY, OP_CONT):
            if not fin:
                self._fragments = [*(self._fragments or []), payload]
                return
            if self._fragments is not None:
                payload, self._fragments = b"".join([*self._fragments, payload]), None
            self.on_text(payload.decode("utf-8", errors="replace"))

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_masked(opcode, payload))

    # --- for the caller ---------------------------------------------------------------------

    def start(self) -> None:
        """Callbacks are set: hand over the frames that came with the 101 and all that follow."""
        self._started = True
        if self._buffer and self.transport is not None:
            self._parse()

    def send_text(self, text: str) -> None:
        self._send(OP_TEXT, text.encode())

    def drop(self) -> None:
        """Vanish: the TCP connection ends now, no close frame (a network drop, a killed tab)."""
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> None:
        """Stop reading: the kernel's buffers fill up, then the server's (a slow consumer)."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()


async def connect_ws(
    host: str,
    port: int,
    path: str,
    within: float = 10.0,
    receive_buffer: int | None = None,
) -> RawWebSocket:
    """Open ``ws://host:port{path}``; raises HandshakeError / OSError / TimeoutError on failure.

    ``receive_buffer`` sets the socket's SO_RCVBUF before connecting (a small one makes a client
    that stops reading back up quickly)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    protocol: RawWebSocket | None = None
    try:
        async with asyncio.timeout(within):
            await loop.sock_connect(sock, (host, port))
            _, protocol = await loop.create_connection(RawWebSocket, sock=sock)
            assert protocol.transport is not None
            key = base64.b64encode(os.urandom(16)).decode()
            protocol.transport.write(
                (
                    f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            await protocol.upgraded
    except BaseException:
        if protocol is not None:
            protocol.drop()
        else:
            sock.close()
        raise
    return protocol


class EngineIO:
    """Socket.IO v5 over Engine.IO v4 on a ``RawWebSocket``, the way socket.io-client speaks it.

    ``on_connect(data)`` gets the CONNECT reply (``sid``, ``pid``), ``on_connect_error(data)`` a
    refusal, ``on_event(name, args)`` every event; Engine.IO pings are answered here.
    """

    def __init__(self, ws: RawWebSocket, auth: dict[str, Any]) -> None:
        self.ws = ws
        self.auth = auth
        self.on_connect: Callable[[dict[str, Any]], None] = lambda _data: None
        self.on_connect_error: Callable[[Any], None] = lambda _data: None
        self.on_event: Callable[[str, list[Any]], None] = lambda _name, _args: None
        self.on_disconnect: Callable[[], None] = lambda: None
        ws.on_text = self._text  # the caller sets the callbacks below, then starts ``ws``

    def _text(self, text: str) -> None:
        kind = text[:1]
        if kind == "4":  # a Socket.IO packet
            packet = text[1:2]
            body = text[2:]
            if packet == "2":  # EVENT
                args = orjson.loads(body)
                self.on_event(args[0], args[1:])
            elif packet == "0":
                self.on_connect(orjson.loads(body) if body else {})
            elif packet == "4":
                self.on_connect_error(orjson.loads(body) if body else None)
            elif packet == "1":
                self.on_disconnect()
        elif kind == "2":  # Engine.IO ping
            self.ws.send_text("3" + text[1:])
        elif kind == "0":  # Engine.IO open: connect the namespace
            self.ws.send_text("40" + orjson.dumps(self.auth).decode())
