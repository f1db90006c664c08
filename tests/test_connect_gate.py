"""At most ``websocket.max_connecting`` connects are admitted at once; the rest wait their turn
(server/transports/gate.py). Waiting loses nothing and reorders nothing: a client whose connect
waits is served when a slot frees, what it sent behind its connect is answered after it, and one
that leaves while waiting gives its turn back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

import orjson
import pytest

from server.app import SIO, WEBSOCKET
from server.transports.gate import ConnectGate
from tests.clients import Live, make_token
from tests.support import eventually
from tests.test_hostile_input import sio_raw
from tests.test_websocket_frames import TEXT, client_frame, raw_connect


@pytest.fixture
def backplane() -> str:
    return "memory"


def test_the_gate_admits_up_to_its_limit_and_the_rest_in_order() -> None:
    gate = ConnectGate(2)
    started: list[int] = []
    for n in range(5):
        gate.enter(lambda n=n: started.append(n))  # type: ignore[misc]
    assert started == [0, 1] and len(gate) == 3
    gate.leave()
    assert started == [0, 1, 2] and gate.active == 2
    gate.leave()
    gate.leave()
    assert started == [0, 1, 2, 3, 4] and len(gate) == 0
    for _ in range(2):
        gate.leave()
    assert gate.active == 0


def test_a_connect_that_fails_to_start_gives_its_turn_to_the_next() -> None:
    gate = ConnectGate(1)
    started: list[str] = []
    gate.enter(lambda: started.append("first"))

    def broken() -> None:
        raise RuntimeError("boom")

    gate.enter(broken)
    gate.enter(lambda: started.append("third"))
    gate.leave()  # the first is done: the broken one starts, fails, and the third goes on
    assert started == ["first", "third"] and gate.active == 1


def occupy(gate: ConnectGate) -> None:
    """Take every slot, as connects in progress would."""
    for _ in range(gate.limit):
        gate.enter(lambda: None)


def release(gate: ConnectGate) -> None:
    for _ in range(gate.limit):
        gate.leave()


async def test_a_plain_websocket_connect_waits_its_turn_then_is_served(live: Live) -> None:
    gate = live.app[WEBSOCKET].gate
    occupy(gate)
    opening = asyncio.ensure_future(raw_connect(live, f"/api/ws?token={make_token('u1')}&storeId=s1"))
    await asyncio.sleep(0.3)
    assert not opening.done(), "admitted while every slot was taken"
    assert len(gate) == 1
    release(gate)
    ws = await asyncio.wait_for(opening, 5)
    first = await ws.message()
    assert first["type"] == "connected"
    await eventually(lambda: _idle(gate))
    ws.close()


async def test_a_plain_websocket_client_that_leaves_while_waiting_gives_its_turn_back(live: Live) -> None:
    gate = live.app[WEBSOCKET].gate
    occupy(gate)
    url = urlsplit(live.base)
    _, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        f"GET /api/ws?token={make_token('u1')} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await leaves_while_waiting(live, gate, writer.close)
    # The next client is served at once.
    ws = await raw_connect(live, f"/api/ws?token={make_token('u2')}")
    assert (await ws.message())["type"] == "connected"
    ws.close()


async def test_a_socketio_connect_waits_its_turn_and_what_follows_it_is_answered_after_it(
    live: Live,
) -> None:
    gate = live.app[SIO].server.eio.gate
    ws = await sio_raw(live)
    occupy(gate)
    # The CONNECT and, in the same write, a subscribe with an ack id: both wait, in order.
    connect = b"40" + orjson.dumps({"token": make_token("u1")})
    subscribe = b'421["subscribe",{"storeId":"s2"}]'
    ws.send(client_frame(TEXT, connect) + client_frame(TEXT, subscribe))
    with pytest.raises(TimeoutError):
        await ws.frame(timeout=0.3)
    assert len(gate) == 1
    release(gate)
    _, _, first = await ws.frame()
    assert first.startswith(b"40{"), first
    _, _, second = await ws.frame()
    assert second.startswith(b"431["), second
    assert orjson.loads(second[3:])[0]["ok"] is True
    await eventually(lambda: _idle(gate))
    ws.close()


async def test_a_socketio_client_that_leaves_while_waiting_gives_its_turn_back(live: Live) -> None:
    gate = live.app[SIO].server.eio.gate
    ws = await sio_raw(live)
    occupy(gate)
    ws.send(client_frame(TEXT, b"40" + orjson.dumps({"token": make_token("u1")})))
    await leaves_while_waiting(live, gate, ws.close)
    client = await live.sio({"token": make_token("u2")})
    assert client.client.connected
    await client.close()


async def leaves_while_waiting(live: Live, gate: ConnectGate, hang_up: Callable[[], None]) -> None:
    """The client waiting its turn hangs up; once the slots free, its turn is given back and
    nothing of it is left."""
    await eventually(lambda: _waiting(gate, 1))
    hang_up()
    await asyncio.sleep(0.2)
    release(gate)
    await eventually(lambda: _idle(gate))
    assert not live.node.hub.connections


async def _idle(gate: ConnectGate) -> bool:
    return gate.active == 0 and len(gate) == 0


async def _waiting(gate: ConnectGate, count: int) -> bool:
    return len(gate) == count
