"""Fuzzing the WebSocket parser (server/transports/websocket.py): random and mutated frames.

As a unit: a ``WebSocketProtocol`` on a real socket pair is fed client frames, whole or cut at
random places. Valid conversations (fragmented, compressed, with pings between fragments) must
come out exactly as sent; mutated ones must never raise, must end as they would have ended had
they arrived in one read, and may only be answered with well-formed frames and a valid close.

Over a socket: the same streams go to ``/api/ws`` and to Engine.IO's WebSocket of a running
server, while other clients stay connected: they must notice nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.config import Settings
from server.transports.websocket import WebSocketProtocol, deflate, valid_close_code
from tests.clients import Live, SioClient, make_token, recv
from tests.conftest import StartServer
from tests.fuzzing import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    assert_log_clean,
    chunked,
    client_frame,
    close_code_of,
    fuzz_settings,
    masks,
    mutated,
    server_frames,
)
from tests.support import eventually
from tests.test_websocket_frames import raw_connect

MAX_MESSAGE = 512  # small, so that "too big" (1009) is reached as often as not
OUR_CLOSE_CODES = {1002, 1007, 1009}  # what the parser itself closes with


@pytest.fixture
def backplane() -> str:
    return "memory"


# --- the parser as a unit ------------------------------------------------------------------------


class Recorder(WebSocketProtocol):
    """A ``WebSocketProtocol`` that keeps what it is given."""

    __slots__ = ("closed_with", "messages")
    closing_timeout = 60.0  # the test's socket pair is dropped long before

    def __init__(self, deflated: bool) -> None:
        super().__init__(MAX_MESSAGE, deflated)
        self.messages: list[str | bytes] = []
        self.closed_with: int | None = None

    def on_message(self, data: str | bytes) -> None:
        self.messages.append(data)

    def on_closed(self, code: int) -> None:
        self.closed_with = code


@dataclass
class Outcome:
    messages: list[str | bytes]
    written: bytes
    close_code: int | None  # the code the protocol recorded (ours or the peer's)


@contextlib.asynccontextmanager
async def on_socket_pair(protocol: Recorder) -> AsyncIterator[socket.socket]:
    """``protocol`` on one end of a real socket pair (a real asyncio transport); the other end."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, ours)
    try:
        yield peer
    finally:
        transport.abort()
        peer.close()


async def read_available(peer: socket.socket) -> bytes:
    """Everything the protocol wrote so far (the loop is given a turn to flush)."""
    received = bytearray()
    for _ in range(3):
        await asyncio.sleep(0)
        while True:
            try:
                chunk = peer.recv(65536)
            except BlockingIOError:
                break
            if not chunk:
                return bytes(received)
            received += chunk
    return bytes(received)


async def feed(chunks: list[bytes], deflated: bool) -> Outcome:
    protocol = Recorder(deflated)
    async with on_socket_pair(protocol) as peer:
        for chunk in chunks:
            protocol.data_received(chunk)  # must never raise, whatever the bytes
        written = await read_available(peer)
    return Outcome(protocol.messages, written, protocol._close_code)


@dataclass
class Conversation:
    """Frames a well-behaved client may send, and what the server must make of them."""

    wire: bytearray = field(default_factory=bytearray)
    messages: list[str | bytes] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)


@st.composite
def conversations(draw: st.DrawFn, deflated: bool) -> Conversation:
    """Messages, fragmented at random, compressed or not, with pings and pongs between fragments."""
    talk = Conversation()

    def control() -> None:
        kind = draw(st.sampled_from([None, None, PING, PONG]))
        if kind is not None:
            payload = draw(st.binary(max_size=125))
            talk.wire += client_frame(kind, payload, mask=draw(masks))
            if kind == PING:
                talk.pongs.append(payload)

    for _ in range(draw(st.integers(0, 5))):
        control()
        message: str | bytes
        if draw(st.booleans()):
            message = draw(st.text(max_size=MAX_MESSAGE // 4))
            opcode, payload = TEXT, message.encode()
        else:
            message = draw(st.binary(max_size=MAX_MESSAGE - 64))
            opcode, payload = BINARY, message
        talk.messages.append(message)
        compressed = deflated and draw(st.booleans())
        if compressed:
            payload = deflate(payload)
        cuts = sorted(draw(st.sets(st.integers(0, len(payload)), max_size=4)))
        edges = [0, *cuts, len(payload)]
        pieces = [payload[a:b] for a, b in itertools.pairwise(edges)]
        for index, piece in enumerate(pieces):
            if index:
                control()  # control frames may come between the fragments of a message
            last = index == len(pieces) - 1
            talk.wire += client_frame(
                opcode if index == 0 else CONTINUATION,
                piece,
                fin=last,
                rsv=0x40 if compressed and index == 0 else 0,
                mask=draw(masks),
            )
    control()
    return talk


@given(data=st.data(), deflated=st.booleans())
@fuzz_settings(300)
async def test_valid_conversations_arrive_exactly_as_sent_however_they_are_cut(
    data: st.DataObject, deflated: bool
) -> None:
    talk = data.draw(conversations(deflated))
    outcome = await feed(data.draw(chunked(bytes(talk.wire))), deflated)
    assert outcome.messages == talk.messages
    frames, tail = server_frames(outcome.written)
    assert tail == b""
    assert frames == [(0x80 | PONG, payload) for payload in talk.pongs]
    assert outcome.close_code is None


@st.composite
def hostile_streams(draw: st.DrawFn, deflated: bool) -> bytes:
    """A valid conversation mutated, or frames with random headers, or bytes at random."""
    kind = draw(st.sampled_from(["mutated", "frames", "random"]))
    if kind == "mutated":
        talk = draw(conversations(deflated))
        if draw(st.booleans()):
            talk.wire += client_frame(CLOSE, draw(st.binary(max_size=8)), mask=draw(masks))
        return draw(mutated(bytes(talk.wire)))
    if kind == "frames":
        wire = bytearray()
        for _ in range(draw(st.integers(1, 6))):
            wire += client_frame(
                draw(st.integers(0, 15)),
                draw(st.binary(max_size=200) | st.just(b"\x03\xe8") | st.just(b"\x03")),
                fin=draw(st.booleans()),
                rsv=draw(st.sampled_from([0, 0, 0x40, 0x20, 0x10, 0x70])),
                mask=draw(masks),
            )
        return bytes(wire)
    return draw(st.binary(max_size=400))


def assert_well_answered(outcome: Outcome) -> None:
    """Only whole, unmasked frames were written; a close frame, if any, is last and valid."""
    frames, tail = server_frames(outcome.written)
    assert tail == b"", outcome.written
    closes = [payload for first, payload in frames if first & 0x0F == CLOSE]
    assert len(closes) <= 1, frames
    if closes:
        assert frames[-1][0] & 0x0F == CLOSE, frames
        code = close_code_of(closes[0])
        assert (code == 1005 and closes[0] == b"") or valid_close_code(code), closes[0]
        assert outcome.close_code is not None
    for first, payload in frames:
        assert first & 0x80, "every frame we send is final"
        assert first & 0x0F in (PONG, CLOSE), frames
        assert len(payload) <= 125
    for message in outcome.messages:
        assert isinstance(message, str | bytes)
        assert len(message.encode() if isinstance(message, str) else message) <= MAX_MESSAGE


@given(data=st.data(), deflated=st.booleans())
@fuzz_settings(400)
async def test_hostile_streams_never_raise_and_end_the_same_however_they_are_cut(
    data: st.DataObject, deflated: bool
) -> None:
    stream = data.draw(hostile_streams(deflated))
    whole = await feed([stream], deflated)
    assert_well_answered(whole)
    cut = await feed(data.draw(chunked(stream)), deflated)
    assert cut == whole


# --- over a socket, against a running server ------------------------------------------------------


SIO_PATH = "/socket.io/?EIO=4&transport=websocket"


@dataclass
class Bystanders:
    """Clients of both transports that must notice nothing of what the fuzzed client does."""

    live: Live
    ws: Any
    sio: SioClient
    baseline_sockets: int
    posted: int = 0
    users: int = 0

    def fresh_user(self) -> str:
        """A user never seen before: the server resumes a user's earlier connection (contract §7),
        which would replay the events posted since, so each fuzzed connection is someone new."""
        self.users += 1
        return f"fuzzer{self.users}"

    @classmethod
    async def open(cls, live: Live) -> Bystanders:
        ws, _ = await live.ws_ready(token=make_token("bystander"))
        sio = await live.sio({"token": make_token("bystander")})
        return cls(live, ws, sio, len(sio_sockets(live)))

    async def still_served(self) -> None:
        """An event posted now reaches both; the fuzzed connection is gone from the server."""
        self.posted += 1
        marker = {"storeId": f"m{self.posted}", "store": {}}
        status, answer = await self.live.post({"type": "store_updated", "data": marker})
        assert status == 202, answer
        assert await recv(self.ws) == {"type": "store_updated", "data": marker, "id": answer["ids"][0]}
        events = await self.sio.wait_for(1)
        assert events == [("store_updated", (marker, answer["ids"][0]))], events
        self.sio.events.clear()

        async def only_bystanders_left() -> bool:
            return (
                len(self.live.node.hub.connections) == 2
                and len(sio_sockets(self.live)) == self.baseline_sockets
            )

        await eventually(only_bystanders_left, within=5)

    async def close(self) -> None:
        await self.ws.send_str('{"type":"ping"}')
        while (await recv(self.ws))["type"] != "pong":
            pass  # events accepted by the admin API's fuzzing, if any, come first
        await self.ws.close()
        await self.sio.close()


def sio_sockets(live: Live) -> dict[str, object]:
    from server.app import SIO

    sockets: dict[str, object] = live.app[SIO].server.eio.sockets
    return sockets


@pytest.fixture
async def served(
    start_server: StartServer, settings_for: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Bystanders]:
    live = await start_server(settings_for(websocket={"max_message_bytes": MAX_MESSAGE}))
    bystanders = await Bystanders.open(live)
    yield bystanders
    await bystanders.close()
    assert_log_clean(caplog)


async def send_then_hang_up(ws: Any, stream: list[bytes]) -> list[tuple[int, bytes]]:
    """Send the chunks, then our FIN; every frame the server wrote until it closed the socket."""
    for chunk in stream:
        ws.send(chunk)
    with contextlib.suppress(ConnectionError):
        await ws.writer.drain()
        ws.writer.write_eof()
    received = bytearray()
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(ws.reader.read(65536), 5):
            received += chunk
    ws.close()
    frames, tail = server_frames(bytes(received))
    assert tail == b"", received
    return frames


def check_answers(frames: list[tuple[int, bytes]], endpoint: str) -> None:
    """Answers are whole text frames of the endpoint's protocol, pongs, and at most one close."""
    for index, (first, payload) in enumerate(frames):
        opcode = first & 0x0F
        if opcode == CLOSE:
            assert index == len(frames) - 1, frames
            # Ours, or the client's own close code echoed (none, if its close frame had none).
            assert payload == b"" or valid_close_code(close_code_of(payload)), payload
            continue
        assert opcode in (TEXT, PONG), frames
        if opcode == TEXT and endpoint == "plain":
            message = orjson.loads(payload)
            assert message["type"] in ("pong", "error", "subscribed", "unsubscribed"), message
        elif opcode == TEXT:
            assert payload[:1] in (b"2", b"3", b"4", b"6"), payload  # ping, pong, message, noop


@st.composite
def plain_messages(draw: st.DrawFn) -> bytes:
    """What a client of ``/api/ws`` may send, valid or not."""
    kind = draw(st.sampled_from(["ping", "subscribe", "unsubscribe", "json", "text"]))
    if kind == "ping":
        return b'{"type":"ping"}'
    if kind in ("subscribe", "unsubscribe"):
        store = draw(st.text(max_size=12) | st.integers(-(2**63), 2**63 - 1) | st.none())
        return orjson.dumps({"type": kind, "data": {"storeId": store}})
    if kind == "json":
        return orjson.dumps(
            draw(st.dictionaries(st.sampled_from(["type", "data", "x"]), st.text(max_size=8)))
        )
    return draw(st.text(max_size=40)).encode()


@st.composite
def socket_streams(draw: st.DrawFn, endpoint: str) -> bytes:
    """Frames carrying the endpoint's own messages, then perhaps mutated; or frames at random."""
    if draw(st.integers(0, 3)) == 0:
        return draw(hostile_streams(False))
    wire = bytearray()
    for _ in range(draw(st.integers(1, 5))):
        if endpoint == "plain":
            payload = draw(plain_messages())
        else:
            payload = b"4" + draw(
                st.sampled_from([b'2["x"]', b'21["subscribe",{"storeId":"s1"}]', b"0", b"1"])
            )
        wire += client_frame(TEXT, payload, mask=draw(masks))
        if draw(st.booleans()):
            wire += client_frame(PING, draw(st.binary(max_size=10)), mask=draw(masks))
    return draw(mutated(bytes(wire))) if draw(st.booleans()) else bytes(wire)


@given(data=st.data())
@fuzz_settings(150)
async def test_hostile_frames_on_the_plain_websocket_leave_other_clients_untouched(
    served: Bystanders, data: st.DataObject, caplog: pytest.LogCaptureFixture
) -> None:
    # Everything is drawn first: a draw may end the example, which must not leave a socket open.
    stream = data.draw(socket_streams("plain"))
    chunks = data.draw(chunked(stream))
    ws = await raw_connect(served.live, f"/api/ws?token={make_token(served.fresh_user())}")
    assert (await ws.message())["type"] == "connected"
    check_answers(await send_then_hang_up(ws, chunks), "plain")
    await served.still_served()
    assert_log_clean(caplog)


@given(data=st.data(), connect=st.booleans())
@fuzz_settings(150)
async def test_hostile_frames_on_engine_ios_websocket_leave_other_clients_untouched(
    served: Bystanders, data: st.DataObject, connect: bool, caplog: pytest.LogCaptureFixture
) -> None:
    stream = data.draw(socket_streams("socketio"))
    chunks = data.draw(chunked(stream))
    ws = await raw_connect(served.live, SIO_PATH)
    _, _, opened = await ws.frame()
    assert opened.startswith(b"0{")
    if connect:
        ws.send(
            client_frame(
                TEXT, b'40{"token":"' + make_token(served.fresh_user()).encode() + b'"}', mask=b"abcd"
            )
        )
        _, _, connected = await ws.frame()
        assert connected.startswith(b"40{"), connected
    check_answers(await send_then_hang_up(ws, chunks), "socketio")
    await served.still_served()
    assert_log_clean(caplog)
