"""Fuzzing Engine.IO and Socket.IO packets, over Engine.IO's WebSocket and over long-polling POSTs,
with and without a Socket.IO CONNECT (with a token) first.

Whatever a client sends: no 5xx, no error or traceback in the log, and afterwards either its
session is closed or it is still served (it answers, and is in the hub exactly when python-socketio
counts it connected); clients of both transports that stay connected notice nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.config import Settings
from tests.clients import make_token
from tests.conftest import StartServer
from tests.fuzzing import (
    BINARY,
    CLOSE,
    TEXT,
    assert_log_clean,
    client_frame,
    close_code_of,
    fuzz_settings,
    json_values,
    masks,
)
from tests.support import eventually
from tests.test_fuzz_frames import Bystanders, sio_sockets
from tests.test_websocket_frames import raw_connect

MAX_MESSAGE = 2048
POLLING = "/socket.io/?EIO=4&transport=polling"
SENTINEL = b"40/nowhere,"  # a CONNECT to an unknown namespace: always answered (CONNECT_ERROR)


@pytest.fixture
def backplane() -> str:
    return "memory"


@pytest.fixture
async def served(
    start_server: StartServer, settings_for: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Bystanders]:
    live = await start_server(
        settings_for(
            websocket={
                "max_message_bytes": MAX_MESSAGE,
                "client_messages_per_second": 1000,
                "client_messages_burst": 1000,
            }
        )
    )
    bystanders = await Bystanders.open(live)
    yield bystanders
    await bystanders.close()
    assert_log_clean(caplog)


# --- packets --------------------------------------------------------------------------------------

EVENT_NAMES = [
    "subscribe",
    "unsubscribe",
    "refresh",
    "x",
    "",
    "*",
    "connect",
    "disconnect",
    "connect_error",
    "disconnecting",
    "newListener",
    "removeListener",
    "message",
]
event_names = st.sampled_from(EVENT_NAMES) | st.text(max_size=6) | st.integers(-5, 5) | json_values
event_args = st.lists(
    json_values | st.fixed_dictionaries({"storeId": st.text(max_size=6) | json_values}), max_size=3
)


@st.composite
def socketio_packets(draw: st.DrawFn) -> str:
    """A Socket.IO packet as text: every type, namespace, ack id and payload shape, valid or not."""
    kind = draw(st.sampled_from("0123456789"))
    namespace = draw(st.sampled_from(["", "", "", "/,", "/nowhere,", "/x", "/a,b,"]))
    ack = draw(st.sampled_from(["", "", "", "1", "42", "007", "99999999999999999999"]))
    if kind in "5" or draw(st.integers(0, 9)) == 0:
        count = draw(st.sampled_from(["", "0-", "1-", "999999999-", "x-"]))
        kind += count
    shape = draw(st.sampled_from(["event", "json", "none", "text"]))
    if shape == "event":
        payload = orjson.dumps([draw(event_names), *draw(event_args)]).decode()
    elif shape == "json":
        payload = orjson.dumps(draw(json_values)).decode()
    elif shape == "none":
        payload = ""
    else:
        payload = draw(st.text(max_size=20))
    return kind + namespace + ack + payload


@st.composite
def engineio_packets(draw: st.DrawFn) -> str:
    """An Engine.IO packet: mostly MESSAGEs carrying Socket.IO packets, and every other type."""
    if draw(st.integers(0, 3)):
        return "4" + draw(socketio_packets())
    kind = draw(st.sampled_from(["0", "1", "2", "3", "5", "6", "7", "b", "x", ""]))
    return kind + draw(st.sampled_from(["", "probe", "{}", "AAEC", "\x00"]) | st.text(max_size=8))


def connect_packet(user: str) -> bytes:
    return b'40{"token":"' + make_token(user).encode() + b'"}'


def sio_server(served: Bystanders) -> Any:
    from server.app import SIO

    return served.live.app[SIO].server


async def consistent(served: Bystanders, eio_sid: str) -> None:
    """python-socketio counts the session connected to "/" exactly when the hub has its connection."""
    server = sio_server(served)

    async def agree() -> bool:
        sid = server.manager.sid_from_eio_sid(eio_sid, "/")
        in_socketio = sid is not None and server.manager.is_connected(sid, "/")
        in_hub = any(getattr(c, "eio_sid", None) == eio_sid for c in served.live.node.hub.connections)
        return bool(in_socketio) == in_hub

    await eventually(agree, within=3)


# --- over Engine.IO's WebSocket -------------------------------------------------------------------


async def read_until_sentinel_or_close(ws: Any) -> tuple[bool, list[tuple[int, bytes]]]:
    """Frames up to the answer to ``SENTINEL`` (True: still served) or the close (False)."""
    frames: list[tuple[int, bytes]] = []
    while True:
        try:
            first, opcode, payload = await ws.frame(timeout=5)
        except asyncio.IncompleteReadError:
            return False, frames  # closed (e.g. the client's own CLOSE packet)
        frames.append((first, payload))
        if opcode == CLOSE:
            assert payload == b"" or close_code_of(payload) in (1000, 1002, 1007, 1008, 1009), payload
            return False, frames
        assert opcode == TEXT, frames
        assert payload[:1] in (b"1", b"2", b"3", b"4", b"6"), frames
        if payload.startswith(b"44/nowhere,"):
            return True, frames


@given(data=st.data(), connect=st.booleans())
@fuzz_settings(200)
async def test_random_packets_over_engine_ios_websocket(
    served: Bystanders, data: st.DataObject, connect: bool, caplog: pytest.LogCaptureFixture
) -> None:
    packets = data.draw(st.lists(engineio_packets(), min_size=1, max_size=8))
    binary = data.draw(st.lists(st.booleans(), min_size=len(packets), max_size=len(packets)))
    mask = data.draw(masks)
    ws = await raw_connect(served.live, "/socket.io/?EIO=4&transport=websocket")
    try:
        _, _, opened = await ws.frame()
        eio_sid = orjson.loads(opened[1:])["sid"]
        if connect:
            ws.send(client_frame(TEXT, connect_packet(served.fresh_user()), mask=mask))
            _, _, connected = await ws.frame()
            assert connected.startswith(b"40{"), connected
        for packet, as_binary in zip(packets, binary, strict=True):
            ws.send(client_frame(BINARY if as_binary else TEXT, packet.encode(), mask=mask))
        ws.send(client_frame(TEXT, b"4" + SENTINEL, mask=mask))
        alive, _ = await read_until_sentinel_or_close(ws)
        if alive:
            await consistent(served, eio_sid)
    finally:
        ws.close()
    await served.still_served()
    assert_log_clean(caplog)


# --- over long-polling ----------------------------------------------------------------------------


async def poll(served: Bystanders, sid: str) -> tuple[int, str]:
    async with served.live.session.get(
        f"{served.live.base}{POLLING}&sid={sid}", timeout=aiohttp.ClientTimeout(total=5)
    ) as resp:
        return resp.status, await resp.text()


async def post(served: Bystanders, sid: str, body: bytes, content_type: str | None = None) -> int:
    headers = {"Content-Type": content_type} if content_type else {}
    async with served.live.session.post(
        f"{served.live.base}{POLLING}&sid={sid}",
        data=body,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=5),
    ) as resp:
        await resp.read()
        assert resp.status in (200, 400, 413), resp.status
        return resp.status


async def polled_until_sentinel(served: Bystanders, sid: str, first: asyncio.Future[tuple[int, str]]) -> bool:
    """Poll (``first`` is the poll already waiting) until the answer to ``SENTINEL`` (True) or the
    session's end (False); never hangs."""
    for attempt in range(20):
        status, text = await (first if attempt == 0 else poll(served, sid))
        assert status in (200, 400), (status, text)
        if status == 400:
            return False
        packets = text.split("\x1e")
        assert all(p[:1] in ("1", "2", "4", "6") for p in packets), packets
        if any(p.startswith("44/nowhere,") for p in packets):
            return True
        if "1" in packets:  # the server's CLOSE
            return False
    raise AssertionError("the answer never came")


@st.composite
def polling_bodies(draw: st.DrawFn) -> bytes:
    """A long-polling payload: packets joined by the record separator, or bytes at random."""
    kind = draw(st.sampled_from(["packets", "packets", "many", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    packets = draw(st.lists(engineio_packets(), min_size=1, max_size=20 if kind == "many" else 6))
    return "\x1e".join(packets).encode()


@given(data=st.data(), connect=st.booleans())
@fuzz_settings(100)
async def test_random_payloads_over_long_polling(
    served: Bystanders, data: st.DataObject, connect: bool, caplog: pytest.LogCaptureFixture
) -> None:
    body = data.draw(polling_bodies())
    content_type = data.draw(st.sampled_from([None, "text/plain;charset=UTF-8", "application/octet-stream"]))
    status, opened = await poll_handshake(served)
    assert status == 200, opened
    sid = orjson.loads(opened[1:])["sid"]
    if connect:
        assert await post(served, sid, connect_packet(served.fresh_user())) == 200
        status, text = await poll(served, sid)
        assert status == 200 and text.startswith("40{"), text
    # A long-poll waits meanwhile, as a real client's does (a session closed for a malformed
    # payload hands it its CLOSE packet; without one, the close waits a second for it).
    waiting = asyncio.ensure_future(poll(served, sid))
    if await post(served, sid, body, content_type) == 200 and await post(served, sid, b"4" + SENTINEL) == 200:
        if await polled_until_sentinel(served, sid, waiting):
            await consistent(served, sid)
    else:
        status, text = await waiting
        assert status == 400 or text.split("\x1e")[-1] in ("1", "6"), (status, text)
    await close_polling(served, sid)
    await served.still_served()
    assert_log_clean(caplog)


async def poll_handshake(served: Bystanders) -> tuple[int, str]:
    async with served.live.session.get(f"{served.live.base}{POLLING}") as resp:
        return resp.status, await resp.text()


async def close_polling(served: Bystanders, sid: str) -> None:
    """Leave as a client does: an Engine.IO CLOSE packet (the session may be gone already), with
    a poll that takes what was queued (else closing waits a second for it)."""
    leaving = asyncio.ensure_future(post(served, sid, b"1"))
    with contextlib.suppress(AssertionError, TimeoutError):
        await poll(served, sid)
    with contextlib.suppress(AssertionError):
        await leaving

    async def gone() -> bool:
        return sid not in sio_sockets(served.live)

    await eventually(gone, within=5)


@given(
    query=st.dictionaries(
        st.sampled_from(["EIO", "transport", "sid", "t", "b64", "j", "x"]), st.text(max_size=8)
    )
)
@fuzz_settings(100)
async def test_random_engine_io_queries_are_never_a_server_error(
    served: Bystanders, query: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    for method in ("GET", "POST", "OPTIONS"):
        async with served.live.session.request(
            method, f"{served.live.base}/socket.io/", params=query, data=b"40" if method == "POST" else None
        ) as resp:
            await resp.read()
            assert resp.status < 500, (method, query, resp.status)
    for sid in list(sio_sockets(served.live)):
        if sid not in {*served_sids(served)}:
            await close_polling(served, sid)
    assert_log_clean(caplog)


def served_sids(served: Bystanders) -> set[str]:
    """The Engine.IO sessions of the bystanders (the Socket.IO one)."""
    return {c.eio_sid for c in served.live.node.hub.connections if hasattr(c, "eio_sid")}
