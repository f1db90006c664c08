"""RFC 6455 as the server speaks it (server/transports/websocket.py), with frames written byte by byte.

aiohttp's client cannot send what a broken or unusual client sends (unmasked frames, reserved
bits, fragments, bad UTF-8), so these tests speak WebSocket over a raw TCP socket.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import orjson
import pytest

from server.config import Settings
from tests.clients import Live, make_token, recv
from tests.conftest import StartServer
from tests.support import eventually

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


@pytest.fixture
def backplane() -> str:
    """Framing does not depend on the backplane: the memory one only."""
    return "memory"


def client_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, masked: bool = True) -> bytes:
    first = (0x80 if fin else 0) | rsv | opcode
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawWebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader, self.writer, self.head = reader, writer, head

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self, timeout: float = 3.0) -> tuple[int, int, bytes]:
        """(first byte, opcode, payload) of the next server frame."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        assert not second & 0x80, "server frames are never masked"
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return first, first & 0x0F, await asyncio.wait_for(self.reader.readexactly(length), timeout)

    async def message(self) -> dict[str, object]:
        _, opcode, payload = await self.frame()
        assert opcode == TEXT
        message: dict[str, object] = orjson.loads(payload)
        return message

    async def close_code(self) -> int:
        """Read up to the server's close frame; its code."""
        while True:
            _, opcode, payload = await self.frame()
            if opcode == CLOSE:
                return int.from_bytes(payload[:2], "big")

    async def closed_by_server(self) -> bool:
        """The server closed the TCP connection (EOF) after its close frame."""
        rest = await asyncio.wait_for(self.reader.read(), 5)
        return rest == b""

    def close(self) -> None:
        self.writer.close()


def inflate(payload: bytes) -> bytes:
    """A permessage-deflate message without context (RFC 7692: the sender dropped the tail)."""
    return zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")


async def raw_connect(live: Live, path: str, extensions: str | None = None) -> RawWebSocket:
    url = urlsplit(live.base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {url.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 101"), head
    return RawWebSocket(reader, writer, head)


@pytest.fixture
async def raw(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> AsyncIterator[tuple[Live, RawWebSocket]]:
    live = await start_server(settings_for(websocket={"max_message_bytes": 1024}))
    ws = await raw_connect(live, f"/api/ws?token={make_token('u1')}")
    assert (await ws.message())["type"] == "connected"
    yield live, ws
    ws.close()


def ping_message(pad: str = "") -> bytes:
    return orjson.dumps({"type": "ping", "pad": pad}) if pad else b'{"type":"ping"}'


async def test_the_handshake_answer_is_exactly_rfc_6455s(start_server: StartServer, settings_for) -> None:
    live = await start_server(settings_for())
    ws = await raw_connect(live, f"/api/ws?token={make_token('u1')}")
    headers = dict(
        line.split(": ", 1) for line in ws.head.decode().split("\r\n")[1:] if line
    )  # the accept key is checked by every real client below; here, what is (not) agreed
    assert headers["Upgrade"].lower() == "websocket" and "Sec-WebSocket-Extensions" not in headers
    ws.close()


@pytest.mark.parametrize(
    "headers",
    [
        {},  # a plain GET
        {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"},  # no key
        {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "AAAAAAAAAAAAAAAAAAAAAA=="},
        {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "not base64 of 16 bytes",
        },
    ],
)
async def test_a_request_that_is_not_a_websocket_handshake_gets_400(
    start_server: StartServer, settings_for: Callable[..., Settings], headers: dict[str, str]
) -> None:
    live = await start_server(settings_for())
    async with live.session.get(f"{live.base}/api/ws?token={make_token('u1')}", headers=headers) as resp:
        assert resp.status == 400
    assert not live.node.hub.connections


async def test_fragmented_message_is_answered_once_whole(raw: tuple[Live, RawWebSocket]) -> None:
    _, ws = raw
    text = b'{"type":"subscribe","data":{"storeId":"s1"}}'
    ws.send(client_frame(TEXT, text[:10], fin=False))
    ws.send(client_frame(PING, b"in between"))  # control frames may come between fragments
    ws.send(client_frame(CONTINUATION, text[10:20], fin=False))
    ws.send(client_frame(CONTINUATION, text[20:]))
    _, opcode, payload = await ws.frame()
    assert (opcode, payload) == (PONG, b"in between")
    assert await ws.message() == {"type": "subscribed", "data": {"room": "store:s1"}}


async def test_frames_split_across_reads_are_reassembled(raw: tuple[Live, RawWebSocket]) -> None:
    _, ws = raw
    data = client_frame(TEXT, ping_message("x" * 300)) + client_frame(TEXT, ping_message())
    for i in range(0, len(data), 7):
        ws.send(data[i : i + 7])
        await ws.writer.drain()
    assert await ws.message() == {"type": "pong"}
    assert await ws.message() == {"type": "pong"}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(TEXT, ping_message(), masked=False), 1002),
        (client_frame(TEXT, ping_message(), rsv=0x40), 1002),  # compression was not agreed
        (client_frame(TEXT, ping_message(), rsv=0x20), 1002),
        (client_frame(0x3, b"x"), 1002),  # reserved opcode
        (client_frame(PING, b"x" * 126), 1002),  # control frames carry at most 125 bytes
        (client_frame(PING, b"x", fin=False), 1002),  # and are never fragmented
        (client_frame(CONTINUATION, b"x"), 1002),  # a continuation of nothing
        (client_frame(TEXT, b"x", fin=False) + client_frame(TEXT, b"y"), 1002),
        (client_frame(TEXT, b'{"type":"\xff"}'), 1007),  # text that is not UTF-8
        (client_frame(TEXT, b"x" * 1025), 1009),
        (client_frame(TEXT, b"x" * 600, fin=False) + client_frame(CONTINUATION, b"x" * 600), 1009),
        (client_frame(TEXT, b"x" * 70_000), 1009),  # a 64-bit length: refused from its header
    ],
    ids=[
        "unmasked",
        "rsv1",
        "rsv2",
        "reserved-opcode",
        "long-control",
        "fragmented-control",
        "lone-continuation",
        "new-message-inside-fragmented",
        "bad-utf8",
        "too-big",
        "too-big-in-fragments",
        "too-big-64bit-length",
    ],
)
async def test_protocol_errors_close_with_their_code(
    raw: tuple[Live, RawWebSocket], frame: bytes, code: int
) -> None:
    live, ws = raw
    ws.send(frame)
    assert await ws.close_code() == code
    # As a browser does: answer the close, and close our side (the server has closed its own).
    ws.send(client_frame(CLOSE, struct.pack("!H", code)))
    ws.writer.write_eof()
    assert await ws.closed_by_server()

    async def gone() -> bool:
        return not live.node.hub.connections

    await eventually(gone)


async def test_ping_is_answered_with_its_payload_and_unsolicited_pong_ignored(
    raw: tuple[Live, RawWebSocket],
) -> None:
    _, ws = raw
    ws.send(client_frame(PONG, b"unasked"))
    ws.send(client_frame(PING, b"hello"))
    _, opcode, payload = await ws.frame()
    assert (opcode, payload) == (PONG, b"hello")


async def test_client_close_is_echoed_then_the_server_closes_tcp(raw: tuple[Live, RawWebSocket]) -> None:
    live, ws = raw
    ws.send(client_frame(CLOSE, struct.pack("!H", 1000) + b"bye"))
    assert await ws.close_code() == 1000
    assert await ws.closed_by_server()

    async def gone() -> bool:
        return not live.node.hub.connections

    await eventually(gone)


async def test_client_that_vanishes_mid_frame_is_removed(raw: tuple[Live, RawWebSocket]) -> None:
    live, ws = raw
    ws.send(client_frame(TEXT, ping_message())[:5])
    await ws.writer.drain()
    ws.writer.transport.abort()

    async def gone() -> bool:
        return not live.node.hub.connections

    await eventually(gone)


# --- permessage-deflate ---------------------------------------------------------------------------


async def test_compression_is_not_agreed_when_it_is_off(start_server: StartServer, settings_for) -> None:
    live = await start_server(settings_for())
    ws = await raw_connect(
        live, f"/api/ws?token={make_token('u1')}", "permessage-deflate; client_max_window_bits"
    )
    assert b"sec-websocket-extensions" not in ws.head.lower()
    ws.close()


async def test_compression_when_on_is_agreed_without_context_and_events_arrive_compressed(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"compression": True}))
    ws = await raw_connect(
        live, f"/api/ws?token={make_token('u1')}", "permessage-deflate; client_max_window_bits"
    )
    agreed = b"permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    assert b"Sec-WebSocket-Extensions: " + agreed in ws.head
    assert (await ws.message())["type"] == "connected"  # control messages are sent as they are
    status, answer = await live.post({"type": "store_updated", "data": {"storeId": "s1", "store": {"n": 1}}})
    assert status == 202
    first, opcode, payload = await ws.frame()
    assert opcode == TEXT and first & 0x40, "RSV1: the message is compressed"
    text = inflate(payload)
    assert orjson.loads(text) == {
        "type": "store_updated",
        "data": {"storeId": "s1", "store": {"n": 1}},
        "id": answer["ids"][0],
    }
    # A compressed message from the client is understood (fresh context per message).
    for _ in range(2):
        compressor = zlib.compressobj(wbits=-15)
        body = compressor.compress(b'{"type":"ping"}') + compressor.flush(zlib.Z_SYNC_FLUSH)
        ws.send(client_frame(TEXT, body[:-4], rsv=0x40))
        assert await ws.message() == {"type": "pong"}
    ws.close()


async def test_compression_with_a_real_client_and_a_window_we_cannot_honour(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"compression": True}))
    # aiohttp's client offers deflate and inflates what it gets: events read as JSON.
    client = await live.session.ws_connect(
        f"{live.base}/api/ws", params={"token": make_token("u1")}, compress=15
    )
    assert (await recv(client))["type"] == "connected"
    status, answer = await live.post({"type": "store_updated", "data": {"storeId": "s1", "store": {}}})
    assert status == 202
    assert (await recv(client))["id"] == answer["ids"][0]
    await client.send_str('{"type":"ping"}')
    assert await recv(client) == {"type": "pong"}
    await client.close()
    # An offer that limits the server's window is declined: no compression, still connected.
    ws = await raw_connect(
        live, f"/api/ws?token={make_token('u2')}", "permessage-deflate; server_max_window_bits=10"
    )
    assert b"sec-websocket-extensions" not in ws.head.lower()
    assert (await ws.message())["type"] == "connected"
    ws.close()


async def test_compression_for_socket_io_over_websocket(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"compression": True}))
    client = await live.session.ws_connect(
        f"{live.base}/socket.io/", params={"EIO": "4", "transport": "websocket"}, compress=15
    )
    opened = await client.receive_str(timeout=3)
    assert opened.startswith("0{")
    await client.send_str("40" + orjson.dumps({"token": make_token("u1")}).decode())
    assert (await client.receive_str(timeout=3)).startswith("40{")
    status, answer = await live.post({"type": "store_updated", "data": {"storeId": "s1", "store": {}}})
    assert status == 202
    while True:
        message = await client.receive_str(timeout=3)
        if message.startswith("42"):
            break
    assert orjson.loads(message[2:]) == ["store_updated", {"storeId": "s1", "store": {}}, answer["ids"][0]]
    await client.close()


async def test_aiohttp_lets_go_of_a_taken_over_connection(raw: tuple[Live, RawWebSocket]) -> None:
    """No aiohttp request handler is left running for an open WebSocket: it holds nothing."""
    _, ws = raw
    ws.send(client_frame(TEXT, ping_message()))
    assert await ws.message() == {"type": "pong"}
    handlers = [task for task in asyncio.all_tasks() if "_handle_request" in repr(task.get_coro())]
    assert handlers == []


def deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (deflated(b"x" * 5000), 1009),  # small on the wire, over max_message_bytes inflated
        (b"\xff\xff\xff\xff not deflate", 1007),
    ],
    ids=["inflates-too-big", "not-deflate"],
)
async def test_bad_compressed_messages_close_with_their_code(
    start_server: StartServer, settings_for: Callable[..., Settings], payload: bytes, code: int
) -> None:
    live = await start_server(settings_for(websocket={"compression": True, "max_message_bytes": 1024}))
    ws = await raw_connect(live, f"/api/ws?token={make_token('u1')}", "permessage-deflate")
    assert (await ws.message())["type"] == "connected"
    ws.send(client_frame(TEXT, payload, rsv=0x40))
    assert await ws.close_code() == code
    ws.close()


async def test_a_broadcast_batch_reaches_every_transport_and_wire_form_whole_and_in_order(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """A batch to one audience is joined once per wire form and shared by all its connections:
    plain and compressed WebSocket, Socket.IO over WebSocket and over polling each get its own form."""
    live = await start_server(settings_for(websocket={"compression": True}))
    offer = "permessage-deflate; client_max_window_bits"
    plain = await raw_connect(live, f"/api/ws?token={make_token('u1')}")
    compressed = await raw_connect(live, f"/api/ws?token={make_token('u2')}", offer)
    for ws in (plain, compressed):
        assert (await ws.message())["type"] == "connected"
    sio = await live.sio({"token": make_token("u3")})
    polling = await live.sio({"token": make_token("u4")}, transports=["polling"])
    events = [{"type": "store_updated", "data": {"storeId": f"s{n}", "store": {"n": n}}} for n in range(30)]
    status, body = await live.post({"events": events})
    assert status == 202
    for ws, rsv1 in ((plain, 0), (compressed, 0x40)):
        received = []
        for _ in events:
            first, opcode, payload = await ws.frame()
            assert opcode == TEXT and first & 0x40 == rsv1
            text = inflate(payload) if rsv1 else payload
            received.append(orjson.loads(text))
        assert [m["id"] for m in received] == body["ids"]
        assert [m["data"]["store"]["n"] for m in received] == list(range(30))
        ws.close()
    for client in (sio, polling):
        got = await client.wait_for(len(events))
        assert [args[-1] for _, args in got] == body["ids"]
        assert [args[0]["store"]["n"] for _, args in got] == list(range(30))
        await client.close()
