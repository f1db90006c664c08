"""The Autobahn|Testsuite's case groups, from its published case descriptions, against both of our
WebSocket endpoints: ``/api/ws`` and Engine.IO's WebSocket (``/socket.io/``).

The fuzzing client itself is Python 2 and cannot run here. These are its cases written as tests,
judged as Autobahn judges a server that is not an echo endpoint: each case must end OK or
NON-STRICT (the same close code, or an answer instead of an echo), never FAILED. Sections 1-7 and 9
are here; 12-13 (permessage-deflate) are in test_websocket_frames.py.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from server.config import Settings
from tests.clients import Live, make_token
from tests.conftest import StartServer
from tests.support import eventually
from tests.test_websocket_frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    RawWebSocket,
    client_frame,
    raw_connect,
)

MAX_MESSAGE = 16 * 1024  # websocket.max_message_bytes in these tests


@pytest.fixture
def backplane() -> str:
    return "memory"


@dataclass
class Endpoint:
    """A connected client of one endpoint, and how to make a message it answers."""

    live: Live
    ws: RawWebSocket
    kind: str

    def request(self, pad: int = 0) -> bytes:
        """A text message of the endpoint's own protocol, padded by ``pad`` bytes, that gets an answer."""
        if self.kind == "plain":
            return b'{"type":"ping","pad":"' + b"x" * pad + b'"}'
        return b'421["nothing",' + b'"' + b"x" * pad + b'"]'  # an unknown event with an ack id

    async def answered(self) -> None:
        _, opcode, payload = await self.ws.frame()
        assert opcode == TEXT, (opcode, payload[:80])
        if self.kind == "plain":
            assert payload == b'{"type":"pong"}', payload[:80]
        else:
            assert payload.startswith(b"431["), payload[:80]  # the ack of event 1

    async def close_code(self) -> int:
        """Read up to the server's close frame, then answer it and close our side, as a browser
        does (else the server waits ``closing_timeout`` for the answer); its code."""
        while True:
            _, opcode, payload = await self.ws.frame()
            if opcode == CLOSE:
                with contextlib.suppress(OSError):  # the server may have closed TCP already
                    self.ws.send(client_frame(CLOSE, payload[:2]))
                    self.ws.writer.write_eof()
                return int.from_bytes(payload[:2], "big") if payload else 1005
            assert opcode in (TEXT, PONG), opcode

    async def gone(self) -> None:
        async def no_connections() -> bool:
            return not self.live.node.hub.connections

        await eventually(no_connections, within=5)


@pytest.fixture(params=["plain", "socketio"])
async def endpoint(
    request: pytest.FixtureRequest, start_server: StartServer, settings_for: Callable[..., Settings]
) -> AsyncIterator[Endpoint]:
    live = await start_server(settings_for(websocket={"max_message_bytes": MAX_MESSAGE}))
    token = make_token("u1")
    if request.param == "plain":
        ws = await raw_connect(live, f"/api/ws?token={token}")
        assert (await ws.message())["type"] == "connected"
    else:
        ws = await raw_connect(live, "/socket.io/?EIO=4&transport=websocket")
        assert (await ws.frame())[2].startswith(b"0{")
        ws.send(client_frame(TEXT, b'40{"token":"' + token.encode() + b'"}'))
        assert (await ws.frame())[2].startswith(b"40{")
    yield Endpoint(live, ws, request.param)
    ws.close()


# --- 1: framing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pad", [0, 125 - 40, 126 - 20, 127, 128, 65535 // 8, MAX_MESSAGE - 64])
async def test_1_text_messages_of_each_length_encoding(endpoint: Endpoint, pad: int) -> None:
    """7-bit, 16-bit lengths and their edges, up to the configured maximum."""
    endpoint.ws.send(client_frame(TEXT, endpoint.request(pad)))
    await endpoint.answered()


async def test_1_binary_and_empty_messages_are_not_protocol_errors(endpoint: Endpoint) -> None:
    """A binary message is answered (plain: an error frame) or refused by the Socket.IO layer; the
    framing itself never fails: an empty text message, then a normal one, is served."""
    if endpoint.kind == "plain":
        endpoint.ws.send(client_frame(BINARY, b"\x00\xff" * 50))
        _, opcode, payload = await endpoint.ws.frame()
        assert opcode == TEXT and b'"error"' in payload
        endpoint.ws.send(client_frame(TEXT, b""))
        _, opcode, payload = await endpoint.ws.frame()
        assert opcode == TEXT and b'"error"' in payload
    endpoint.ws.send(client_frame(TEXT, endpoint.request()))
    await endpoint.answered()


# --- 2: pings and pongs --------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125)), b"\xff\xfe"])
async def test_2_ping_is_answered_with_a_pong_of_the_same_payload(endpoint: Endpoint, payload: bytes) -> None:
    endpoint.ws.send(client_frame(PONG, b"unsolicited") + client_frame(PING, payload))
    _, opcode, answer = await endpoint.ws.frame()
    assert (opcode, answer) == (PONG, payload)


async def test_2_ten_pings_in_one_read_get_ten_pongs(endpoint: Endpoint) -> None:
    endpoint.ws.send(b"".join(client_frame(PING, b"p%d" % i) for i in range(10)))
    for i in range(10):
        assert (await endpoint.ws.frame())[1:] == (PONG, b"p%d" % i)


@pytest.mark.parametrize(
    "frame",
    [client_frame(PING, b"x" * 126), client_frame(PING, b"x", fin=False), client_frame(PONG, b"x" * 126)],
)
async def test_2_oversized_or_fragmented_control_frames_fail_1002(endpoint: Endpoint, frame: bytes) -> None:
    endpoint.ws.send(frame)
    assert await endpoint.close_code() == 1002
    await endpoint.gone()


# --- 3: reserved bits ----------------------------------------------------------------------------


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x30, 0x70])
@pytest.mark.parametrize("opcode", [TEXT, BINARY, PING])
async def test_3_reserved_bits_fail_1002(endpoint: Endpoint, rsv: int, opcode: int) -> None:
    endpoint.ws.send(client_frame(TEXT, endpoint.request()))
    endpoint.ws.send(client_frame(opcode, b"x", rsv=rsv))
    if endpoint.kind == "plain":
        await endpoint.answered()  # in order; Socket.IO answers from a task, after the close: NON-STRICT
    assert await endpoint.close_code() == 1002


# --- 4: opcodes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
async def test_4_reserved_opcodes_fail_1002(endpoint: Endpoint, opcode: int) -> None:
    endpoint.ws.send(client_frame(opcode, b"x"))
    assert await endpoint.close_code() == 1002
    await endpoint.gone()


# --- 5: fragmentation ----------------------------------------------------------------------------


async def test_5_fragments_with_pings_between_are_one_message(endpoint: Endpoint) -> None:
    message = endpoint.request(40)
    parts = [message[i : i + 7] for i in range(0, len(message), 7)]
    ws = endpoint.ws
    ws.send(client_frame(TEXT, parts[0], fin=False))
    for i, part in enumerate(parts[1:], 1):
        ws.send(client_frame(PING, b"%d" % i))
        ws.send(client_frame(CONTINUATION, part, fin=i == len(parts) - 1))
    for i in range(1, len(parts)):
        assert (await ws.frame())[1:] == (PONG, b"%d" % i)
    await endpoint.answered()


@pytest.mark.parametrize(
    "frames",
    [
        client_frame(CONTINUATION, b"x"),  # 5.3: a continuation of nothing
        client_frame(CONTINUATION, b"x", fin=False),
        client_frame(TEXT, b"x", fin=False) + client_frame(TEXT, b"y"),  # 5.18: a new message inside
        client_frame(TEXT, b"x", fin=False) + client_frame(BINARY, b"y", fin=False),
    ],
)
async def test_5_broken_fragmentation_fails_1002(endpoint: Endpoint, frames: bytes) -> None:
    endpoint.ws.send(frames)
    assert await endpoint.close_code() == 1002


# --- 6: UTF-8 ------------------------------------------------------------------------------------


async def test_6_multibyte_text_split_across_fragments_is_whole(endpoint: Endpoint) -> None:
    if endpoint.kind == "plain":
        text = b'{"type":"ping","pad":"' + "κόσμε€𝄞".encode() + b'"}'
    else:
        text = b'421["nothing","' + "κόσμε€𝄞".encode() + b'"]'
    cut = text.index("ό".encode()) + 1  # inside a two-byte sequence
    endpoint.ws.send(client_frame(TEXT, text[:cut], fin=False) + client_frame(CONTINUATION, text[cut:]))
    await endpoint.answered()


@pytest.mark.parametrize(
    "payload",
    [b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80", b"\xff", b"\xc0\xaf", b"\xf4\x90\x80\x80"],
)
async def test_6_invalid_utf8_fails_1007_whole_or_fragmented(endpoint: Endpoint, payload: bytes) -> None:
    endpoint.ws.send(
        client_frame(TEXT, b"4" + payload[:1], fin=False) + client_frame(CONTINUATION, payload[1:])
    )
    assert await endpoint.close_code() == 1007
    await endpoint.gone()


# --- 7: close handling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]
)
async def test_7_valid_close_codes_are_echoed(endpoint: Endpoint, code: int) -> None:
    endpoint.ws.send(client_frame(CLOSE, struct.pack("!H", code) + b"reason"))
    assert await endpoint.close_code() == code
    assert await endpoint.ws.closed_by_server()
    await endpoint.gone()


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
async def test_7_invalid_close_codes_fail_1002(endpoint: Endpoint, code: int) -> None:
    endpoint.ws.send(client_frame(CLOSE, struct.pack("!H", code)))
    assert await endpoint.close_code() == 1002
    await endpoint.gone()


async def test_7_a_close_frame_of_one_byte_fails_1002(endpoint: Endpoint) -> None:
    endpoint.ws.send(client_frame(CLOSE, b"\x03"))
    assert await endpoint.close_code() == 1002


async def test_7_a_close_reason_that_is_not_utf8_fails_1007(endpoint: Endpoint) -> None:
    endpoint.ws.send(client_frame(CLOSE, struct.pack("!H", 1000) + b"\xce\xba\xe1\xbd\xb9\xcf\x83\xff"))
    assert await endpoint.close_code() == 1007


async def test_7_an_empty_close_and_a_full_reason_are_answered(endpoint: Endpoint) -> None:
    endpoint.ws.send(client_frame(CLOSE, struct.pack("!H", 1000) + b"r" * 123))  # 125 bytes: the maximum
    assert await endpoint.close_code() == 1000


async def test_7_after_the_close_nothing_more_is_answered(endpoint: Endpoint) -> None:
    ws = endpoint.ws
    ws.send(client_frame(CLOSE, struct.pack("!H", 1000)) + client_frame(PING, b"late"))
    ws.send(client_frame(TEXT, endpoint.request()))
    _, opcode, payload = await ws.frame()
    assert (opcode, payload) == (CLOSE, struct.pack("!H", 1000))
    assert await ws.closed_by_server()


# --- 9: limits -----------------------------------------------------------------------------------


async def test_9_a_message_at_the_limit_is_served_and_one_byte_more_fails_1009(endpoint: Endpoint) -> None:
    base = len(endpoint.request())
    endpoint.ws.send(client_frame(TEXT, endpoint.request(MAX_MESSAGE - base)))
    await endpoint.answered()
    endpoint.ws.send(client_frame(TEXT, endpoint.request(MAX_MESSAGE - base + 1)))
    assert await endpoint.close_code() == 1009


async def test_9_a_fragmented_message_over_the_limit_fails_1009(endpoint: Endpoint) -> None:
    chunk = b"x" * 1024
    endpoint.ws.send(client_frame(TEXT, b"4", fin=False))
    for _ in range(MAX_MESSAGE // len(chunk) + 1):
        endpoint.ws.send(client_frame(CONTINUATION, chunk, fin=False))
    assert await endpoint.close_code() == 1009
