"""Hostile input from a client with no token, on both WebSocket endpoints: each input that once
stalled or bloated the whole process, sent as an attacker would, over a raw TCP socket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

import pytest

from server.config import Settings
from tests.clients import Live, make_token, recv
from tests.conftest import StartServer
from tests.support import eventually
from tests.test_websocket_frames import (
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    RawWebSocket,
    client_frame,
    raw_connect,
)

SIO_PATH = "/socket.io/?EIO=4&transport=websocket"


@pytest.fixture
def backplane() -> str:
    """Framing does not depend on the backplane: the memory one only."""
    return "memory"


async def sio_raw(live: Live) -> RawWebSocket:
    """A raw Engine.IO WebSocket, after the OPEN packet (no Socket.IO CONNECT: no token needed)."""
    ws = await raw_connect(live, SIO_PATH)
    _, opcode, payload = await ws.frame()
    assert opcode == TEXT and payload.startswith(b"0{"), payload
    return ws


async def answer_to_fragmented_flood(ws: RawWebSocket, message: bytes, empties: int) -> tuple[int, bytes]:
    """Send ``message`` split around ``empties`` empty continuation frames; the server's next frame."""
    ws.send(client_frame(TEXT, message[:5], fin=False))
    empty = client_frame(CONTINUATION, b"", fin=False)
    for _ in range(empties // 1000):
        ws.send(empty * 1000)
        await ws.writer.drain()
    ws.send(client_frame(CONTINUATION, message[5:]))
    _, opcode, payload = await ws.frame(timeout=10)
    return opcode, payload


async def test_empty_continuation_frames_cost_linear_time_on_the_plain_websocket(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """200,000 empty continuations (1.2 MB): each once re-summed the whole fragment list, so
    180 KB of them stalled the process for 8.6 s; now the message is answered at once."""
    live = await start_server(settings_for())
    other, _ = await live.ws_ready(token=make_token("u2"))
    ws = await raw_connect(live, f"/api/ws?token={make_token('u1')}")
    assert (await ws.message())["type"] == "connected"
    opcode, payload = await answer_to_fragmented_flood(ws, b'{"type":"ping"}', 200_000)
    assert (opcode, payload) == (TEXT, b'{"type":"pong"}')
    # Another client was served meanwhile and still is.
    await other.send_str('{"type":"ping"}')
    assert await recv(other) == {"type": "pong"}
    ws.close()
    await other.close()


async def test_empty_continuation_frames_cost_linear_time_on_engine_io(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for())
    ws = await sio_raw(live)  # no token: an anonymous Engine.IO socket is enough
    opcode, payload = await answer_to_fragmented_flood(ws, b"40/nowhere,", 200_000)
    assert opcode == TEXT and payload.startswith(b"44/nowhere,"), payload  # CONNECT_ERROR
    ws.close()


async def test_a_message_arriving_one_byte_per_read_is_answered(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """64 KiB, one byte per TCP segment: the unparsed bytes are never re-copied on each read."""
    live = await start_server(settings_for())
    ws = await raw_connect(live, f"/api/ws?token={make_token('u1')}")
    assert (await ws.message())["type"] == "connected"
    sock = ws.writer.get_extra_info("socket")
    sock.setsockopt(6, 1, 1)  # TCP_NODELAY: each write leaves as its own segment
    pad = "x" * (65536 - 40)
    data = client_frame(TEXT, b'{"type":"ping","pad":"' + pad.encode() + b'"}')
    assert len(data) > 65000
    for i in range(len(data)):
        ws.send(data[i : i + 1])
        if i % 64 == 0:
            await ws.writer.drain()
            await asyncio.sleep(0)
    assert await ws.message() == {"type": "pong"}
    ws.close()


def reading(ws: RawWebSocket, on: bool) -> None:
    """Stop (or resume) reading what the server sends: the kernel's buffers fill, then the server's."""
    transport = cast(asyncio.Transport, ws.writer.transport)
    if on:
        transport.resume_reading()
    else:
        transport.pause_reading()


async def flood_pings(ws: RawWebSocket, megabytes: int) -> None:
    """Pings with full 125-byte payloads, never reading what comes back."""
    batch = client_frame(PING, b"p" * 125) * 1000
    for _ in range(megabytes * 1024 * 1024 // len(batch)):
        ws.send(batch)
        try:
            await asyncio.wait_for(ws.writer.drain(), 2)
        except (TimeoutError, ConnectionError):
            return  # the server stopped reading us: closed


async def close_code_after(ws: RawWebSocket) -> int:
    """Read what the server sent (pongs...) up to its close frame; its code."""
    while True:
        _, opcode, payload = await ws.frame(timeout=10)
        if opcode == CLOSE:
            return int.from_bytes(payload[:2], "big")
        assert opcode in (PONG, TEXT), opcode


@pytest.mark.parametrize("path", ["/api/ws", SIO_PATH])
async def test_a_ping_flood_from_a_client_that_never_reads_is_closed_1008(
    start_server: StartServer, settings_for: Callable[..., Settings], path: str
) -> None:
    """Pongs once bypassed the send-buffer limit: 200 MiB of pings gave +302 MiB of RSS."""
    live = await start_server(settings_for(websocket={"send_buffer_bytes": 65536}))
    if path == SIO_PATH:
        ws = await sio_raw(live)
    else:
        ws = await raw_connect(live, f"{path}?token={make_token('u1')}")
        assert (await ws.message())["type"] == "connected"
    reading(ws, False)  # never read: the kernel's buffers fill, then ours
    await flood_pings(ws, 40)
    reading(ws, True)
    assert await close_code_after(ws) == 1008
    ws.close()

    async def all_gone() -> bool:
        return not live.node.hub.connections and not _sio_sockets(live)

    await eventually(all_gone, within=5)


def _sio_sockets(live: Live) -> dict[str, object]:
    from server.app import SIO

    sockets: dict[str, object] = live.app[SIO].server.eio.sockets
    return sockets


async def test_connect_errors_to_a_client_that_never_reads_are_bounded_too(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """CONNECT to unknown namespaces: each gets a CONNECT_ERROR through ``_send_packet``."""
    live = await start_server(settings_for(websocket={"send_buffer_bytes": 65536}))
    ws = await sio_raw(live)
    reading(ws, False)
    batch = client_frame(TEXT, b"40/" + b"n" * 100 + b",") * 500
    for _ in range(400):
        ws.send(batch)
        try:
            await asyncio.wait_for(ws.writer.drain(), 2)
        except (TimeoutError, ConnectionError):
            break
    reading(ws, True)
    assert await close_code_after(ws) == 1008
    ws.close()


async def test_binary_attachments_are_refused_at_once(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """An event announcing 999,999,999 attachments once held everything after it until close."""
    live = await start_server(settings_for())
    ws = await sio_raw(live)
    ws.send(client_frame(TEXT, b'40{"token":"' + make_token("u1").encode() + b'"}'))
    _, _, connected = await ws.frame()
    assert connected.startswith(b"40{"), connected
    ws.send(client_frame(TEXT, b'45999999999-["subscribe",{"_placeholder":true,"num":0}]'))
    assert await close_code_after(ws) == 1002

    async def gone() -> bool:
        return not live.node.hub.connections

    await eventually(gone, within=5)
    ws.close()


@pytest.mark.parametrize("junk", [b"x", b"4" + b"\xff" * 3, b"9", b"2", b"6"])
async def test_a_malformed_engine_io_packet_closes_the_client_with_one_log_line(
    start_server: StartServer,
    settings_for: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
    junk: bytes,
) -> None:
    live = await start_server(settings_for())
    ws = await sio_raw(live)
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    ws.send(client_frame(TEXT if junk.isascii() else 0x2, junk) * 2000)  # 8 KB and more of junk
    assert await close_code_after(ws) in (1002, 1007)

    async def gone() -> bool:
        return not _sio_sockets(live)

    await eventually(gone, within=5)
    # Our own lines (the libraries' per-packet chatter is set to WARNING by configure_logging).
    noisy = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("server")]
    assert len(noisy) <= 3, [r.getMessage() for r in noisy]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    ws.close()


@pytest.mark.parametrize(
    "packet", [b"4{", b'42["subscribe"', b"4" + b"[" * 5000, b'42/unknown,["x"]', b"47", b'40{"token":1}']
)
async def test_a_malformed_socket_io_packet_gets_no_traceback(
    start_server: StartServer,
    settings_for: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
    packet: bytes,
) -> None:
    live = await start_server(settings_for())
    ws = await sio_raw(live)
    caplog.set_level(logging.DEBUG)
    ws.send(client_frame(TEXT, packet))
    ws.send(client_frame(TEXT, b'40{"token":"' + make_token("u1").encode() + b'"}'))
    # Either the packet closed the client (1002), or it was answered and the next one was served.
    _, opcode, payload = await ws.frame(timeout=5)
    if opcode == CLOSE:
        assert int.from_bytes(payload[:2], "big") == 1002
    else:
        assert opcode == TEXT, payload
    await asyncio.sleep(0.2)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text
    ws.close()


@pytest.mark.parametrize("path", ["/api/ws", SIO_PATH])
async def test_control_frame_ping_between_fragments_is_answered_in_place(
    start_server: StartServer, settings_for: Callable[..., Settings], path: str
) -> None:
    live = await start_server(settings_for())
    ws = await (sio_raw(live) if path == SIO_PATH else raw_connect(live, f"{path}?token={make_token('u1')}"))
    if path != SIO_PATH:
        assert (await ws.message())["type"] == "connected"
    ws.send(client_frame(TEXT, b"4", fin=False))
    ws.send(client_frame(PING, b"mid"))
    _, opcode, payload = await ws.frame()
    assert (opcode, payload) == (PONG, b"mid")
    ws.close()
