"""Engine.IO's HTTP side and its idle sessions: JSONP, Origin on every request, oversized polling
POSTs, sessions that never send CONNECT, and clients that stop answering pings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import orjson
import pytest

from server.config import Settings
from tests.clients import Live, make_token
from tests.conftest import StartServer
from tests.support import eventually
from tests.test_hostile_input import _sio_sockets, sio_raw
from tests.test_websocket_frames import CLOSE, TEXT, client_frame

POLLING = "/socket.io/?EIO=4&transport=polling"


@pytest.fixture
def backplane() -> str:
    return "memory"


async def handshake(live: Live, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    async with live.session.get(f"{live.base}{POLLING}", headers=headers or {}) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


def sid_of(open_packet: str) -> str:
    assert open_packet.startswith("0{"), open_packet
    sid: str = orjson.loads(open_packet[1:])["sid"]
    return sid


async def test_jsonp_polling_is_refused(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """A JSONP answer is a script any site can load with the visitor's cookies."""
    live = await start_server(settings_for())
    for query in ("&j=0", "&j=abc"):
        async with live.session.get(f"{live.base}{POLLING}{query}") as resp:
            assert resp.status == 400
            assert "JSONP" in (await resp.json())["message"]
    assert not _sio_sockets(live)


async def test_polling_checks_the_origin_of_every_request_and_echoes_only_allowed_ones(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(cors_allowed_origins=["https://shop.example"]))
    status, body, headers = await handshake(live, {"Origin": "https://shop.example"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://shop.example"
    sid = sid_of(body)
    status, _, headers = await handshake(live, {"Origin": "https://evil.example"})
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    # A request of an open session from another origin is refused too, not only the handshake.
    url = f"{live.base}{POLLING}&sid={sid}"
    async with live.session.post(url, data="40", headers={"Origin": "https://evil.example"}) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with live.session.post(url, data="40", headers={"Origin": "https://shop.example"}) as resp:
        assert resp.status == 200


async def test_a_polling_post_over_the_limit_is_answered_and_the_session_closed(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """It once got no answer at all: closing waited for a poll that never came."""
    live = await start_server(settings_for(websocket={"max_message_bytes": 1024}))
    _, body, _ = await handshake(live)
    sid = sid_of(body)
    url = f"{live.base}{POLLING}&sid={sid}"
    async with live.session.post(
        url, data="4" + "x" * 70_000, timeout=aiohttp.ClientTimeout(total=5)
    ) as resp:
        assert resp.status == 400

    async def closed() -> bool:
        return sid not in _sio_sockets(live)

    await eventually(closed, within=5)


async def test_an_engine_io_session_without_connect_is_closed_after_the_connect_timeout(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"connect_timeout_seconds": 0.5}))
    idle = await sio_raw(live)  # never sends CONNECT
    polling_sid = sid_of((await handshake(live))[1])
    connected = await live.sio_ws({"token": make_token("u1")})  # connects in time: kept
    _, opcode, _ = await idle.frame(timeout=5)
    assert opcode == CLOSE

    async def only_the_connected_one_left() -> bool:
        return len(_sio_sockets(live)) == 1 and polling_sid not in _sio_sockets(live)

    await eventually(only_the_connected_one_left, within=5)
    assert len(live.node.hub.connections) == 1
    await connected.close()
    idle.close()


async def test_a_socket_io_client_that_stops_answering_pings_is_dropped_with_nothing_sent(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """A half-open client (it vanished, no FIN) once stayed online forever while no events flowed."""
    live = await start_server(
        settings_for(websocket={"heartbeat_seconds": 0.3, "heartbeat_timeout_seconds": 0.3})
    )
    ws = await sio_raw(live)
    ws.send(client_frame(TEXT, b'40{"token":"' + make_token("u1").encode() + b'"}'))
    assert (await ws.frame())[2].startswith(b"40{")
    _, presence = await live.get("/api/v1/presence/users/u1")
    assert presence["online"]
    # It never answers the Engine.IO PING ("2") it is sent.
    _, opcode, payload = await ws.frame(timeout=3)
    assert (opcode, payload) == (TEXT, b"2")

    async def offline() -> bool:
        _, presence = await live.get("/api/v1/presence/users/u1")
        return not presence["online"] and not _sio_sockets(live)

    await eventually(offline, within=5)
    ws.close()


async def test_a_polling_client_that_stops_polling_is_dropped(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """The PingScheduler, not python-engineio's service task (off), drops a long-polling client
    that vanished: its PING waits in its queue unanswered."""
    live = await start_server(
        settings_for(websocket={"heartbeat_seconds": 0.3, "heartbeat_timeout_seconds": 0.3})
    )
    status, text, _ = await handshake(live)
    assert status == 200
    sid = sid_of(text)
    url = f"{live.base}{POLLING}&sid={sid}"
    async with live.session.post(url, data='40{"token":"' + make_token("u1") + '"}') as resp:
        assert resp.status == 200
    async with live.session.get(url) as resp:
        assert (await resp.text()).startswith("40{")
    _, presence = await live.get("/api/v1/presence/users/u1")
    assert presence["online"]
    # It never polls again.

    async def offline() -> bool:
        _, presence = await live.get("/api/v1/presence/users/u1")
        return not presence["online"] and sid not in _sio_sockets(live)

    await eventually(offline, within=5)


async def test_a_socket_io_client_that_answers_pings_stays(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(
        settings_for(websocket={"heartbeat_seconds": 1, "heartbeat_timeout_seconds": 2})
    )
    client = await live.sio({"token": make_token("u1")})
    # Several ping rounds, each answered by python-socketio's client (whole seconds: python-engineio
    # announces the interval to clients in whole seconds).
    await asyncio.sleep(3.5)
    assert client.client.connected, client.disconnect_reasons
    assert len(live.node.hub.connections) == 1
    await client.close()


async def test_a_polling_client_that_never_polls_is_closed_once_its_queue_is_full(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """Answers (here CONNECT_ERRORs to unknown namespaces) pile up for a client that only POSTs."""
    live = await start_server(settings_for(websocket={"max_queued_packets": 5}))
    _, body, _ = await handshake(live)
    sid = sid_of(body)
    url = f"{live.base}{POLLING}&sid={sid}"
    packets = "\x1e".join(f"40/n{i}," for i in range(10))
    async with live.session.post(url, data=packets) as resp:
        assert resp.status in (200, 400)

    async def closed() -> bool:
        return sid not in _sio_sockets(live)

    await eventually(closed, within=5)
