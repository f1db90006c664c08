"""What the fuzz tests found, each pinned with the input that showed it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
import orjson
import pytest

from server.config import Settings
from tests.clients import Live, make_token
from tests.conftest import StartServer
from tests.fuzzing import CLOSE, TEXT, assert_log_clean, client_frame, close_code_of
from tests.support import assert_error, eventually, post_raw
from tests.test_fuzz_frames import sio_sockets
from tests.test_websocket_frames import raw_connect

POLLING = "/socket.io/?EIO=4&transport=polling"


@pytest.fixture
def backplane() -> str:
    return "memory"


@pytest.fixture
async def live(start_server: StartServer, settings_for: Callable[..., Settings]) -> Live:
    return await start_server(settings_for())


async def connected_sio(live: Live) -> object:
    ws = await raw_connect(live, "/socket.io/?EIO=4&transport=websocket")
    assert (await ws.frame())[2].startswith(b"0{")
    ws.send(client_frame(TEXT, b'40{"token":"' + make_token("u1").encode() + b'"}'))
    assert (await ws.frame())[2].startswith(b"40{")
    return ws


@pytest.mark.parametrize(
    "packet",
    [
        b"42",
        b"42[]",
        b"42[[1]]",
        b"42{}",
        b'42["disconnect"]',
        b'42["connect",{},{}]',
        b'42["*",{}]',
        b'42["*"]',
    ],
)
async def test_a_socket_io_event_without_a_name_or_with_a_reserved_one_closes_the_client(
    live: Live, packet: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """``42`` and ``42[]`` raised inside python-socketio (a traceback each); ``42["disconnect"]``
    ran our disconnect handler while the client stayed connected, out of the hub; ``42["*",{}]``
    ran our catch-all with the arguments shifted. Node's parser refuses them all: so do we (1002)."""
    ws = await connected_sio(live)
    ws.send(client_frame(TEXT, packet))  # type: ignore[attr-defined]
    while True:
        _, opcode, payload = await ws.frame()  # type: ignore[attr-defined]
        if opcode == CLOSE:
            assert close_code_of(payload) == 1002
            ws.send(client_frame(CLOSE, payload[:2]))  # type: ignore[attr-defined]  # answered, as browsers do
            break

    async def gone() -> bool:
        return not live.node.hub.connections and not sio_sockets(live)

    await eventually(gone, within=5)
    assert_log_clean(caplog)
    ws.close()  # type: ignore[attr-defined]


async def test_acks_from_a_client_are_ignored_without_a_log_line_each(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    """We never ask for acks; python-socketio warned once per ACK packet (a log flood)."""
    ws = await connected_sio(live)
    caplog.clear()
    ws.send(client_frame(TEXT, b"431[]") * 500)  # type: ignore[attr-defined]
    ws.send(client_frame(TEXT, b"40/nowhere,"))  # type: ignore[attr-defined]
    _, _, answer = await ws.frame()  # type: ignore[attr-defined]
    assert answer.startswith(b"44/nowhere,"), answer
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    ws.close()  # type: ignore[attr-defined]


async def test_a_connect_behind_the_clients_own_close_packet_gets_no_traceback(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    """Engine.IO CLOSE, then a Socket.IO CONNECT in the same read: python-socketio had forgotten the
    session when the CONNECT reached it (KeyError, logged with its traceback)."""
    ws = await raw_connect(live, "/socket.io/?EIO=4&transport=websocket")
    assert (await ws.frame())[2].startswith(b"0{")
    ws.send(client_frame(TEXT, b"1") + client_frame(TEXT, b"40"))
    with pytest.raises(asyncio.IncompleteReadError):
        while True:
            await ws.frame()

    async def gone() -> bool:
        return not sio_sockets(live)

    await eventually(gone, within=5)
    await asyncio.sleep(0.1)
    assert_log_clean(caplog)
    ws.close()


async def open_polling(live: Live) -> str:
    async with live.session.get(f"{live.base}{POLLING}") as resp:
        sid: str = orjson.loads((await resp.text())[1:])["sid"]
        return sid


async def poll(live: Live, sid: str) -> tuple[int, str]:
    async with live.session.get(
        f"{live.base}{POLLING}&sid={sid}", timeout=aiohttp.ClientTimeout(total=5)
    ) as resp:
        return resp.status, await resp.text()


async def post(live: Live, sid: str, body: bytes) -> int:
    async with live.session.post(
        f"{live.base}{POLLING}&sid={sid}", data=body, timeout=aiohttp.ClientTimeout(total=5)
    ) as resp:
        return resp.status


@pytest.mark.parametrize("body", [b"\xff\xfe", b"x", b"4\x1e", b"\x1e".join([b"6"] * 17), b"d="])
async def test_a_malformed_polling_payload_closes_the_session_without_a_traceback(
    live: Live, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Not UTF-8, an unknown or empty packet, over 16 packets: python-engineio logged each with a
    traceback and answered 200. Node closes the session on a parse error: 400, session gone."""
    sid = await open_polling(live)
    waiting = asyncio.ensure_future(poll(live, sid))
    assert await post(live, sid, body) == 400
    status, text = await waiting
    assert status == 400 or text == "1", (status, text)
    assert sid not in sio_sockets(live)
    assert_log_clean(caplog)


async def test_packets_behind_a_polling_close_packet_are_ignored_not_a_500(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    """``1`` then ``0`` in one POST: python-engineio raised for the ``0`` once the session was gone,
    and its error path then failed itself (UnboundLocalError: a 500 and a traceback)."""
    sid = await open_polling(live)
    waiting = asyncio.ensure_future(poll(live, sid))
    assert await post(live, sid, b"1\x1e0") == 200
    await waiting
    assert sid not in sio_sockets(live)
    assert_log_clean(caplog)


async def test_a_waiting_long_poll_is_answered_when_the_client_closes(live: Live) -> None:
    """Without a Socket.IO CONNECT, a client's CLOSE left its waiting poll hanging for
    ping_interval + ping_timeout (45 s), holding its request."""
    sid = await open_polling(live)
    waiting = asyncio.ensure_future(poll(live, sid))
    await asyncio.sleep(0.05)  # the poll is waiting
    assert await post(live, sid, b"1") == 200
    status, text = await asyncio.wait_for(waiting, 2)
    assert status == 200 and text == "6", (status, text)  # a NOOP: the next poll learns the rest


async def test_requests_for_unknown_sessions_are_not_logged_as_errors(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    """python-engineio logged a client's stale sid, wrong version or transport at ERROR."""
    for query in ("EIO=4&transport=polling&sid=nope", "EIO=4&transport=pigeon", "EIO=3&transport=polling"):
        async with live.session.get(f"{live.base}/socket.io/?{query}") as resp:
            assert resp.status == 400
        async with live.session.post(f"{live.base}/socket.io/?{query}", data=b"40") as resp:
            assert resp.status == 400
    assert_log_clean(caplog)


@pytest.mark.parametrize("depth", [254, 300, 1000])
async def test_event_data_nested_too_deep_to_encode_is_422(
    live: Live, depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    """It was a plain-text 500 and a traceback (orjson encodes 254 levels at most)."""
    deep = b"[" * depth + b"1" + b"]" * depth
    body = b'{"type":"store_updated","data":{"storeId":"s1","store":{"x":' + deep + b"}}}"
    status, _, answer = await post_raw(live, body)
    error = assert_error(status, answer, 422, "validation_failed")
    assert error["details"]["events"][0]["fields"] == {"data": ["nested too deep to encode"]}
    assert_log_clean(caplog)
