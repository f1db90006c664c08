"""Socket.IO at ``/socket.io/`` (contract §5), over real sockets.

python-socketio's AsyncClient plays the client where it can. Where it cannot (it upgrades to
WebSocket before it connects the namespace, and it always reads), a raw Engine.IO v4 client over
aiohttp's HTTP and WebSocket client plays socket.io-client's part: CONNECT over long-polling, then
upgrade; or a client that stops reading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
import socketio

from server.config import Settings
from tests.clients import Live, SioClient, make_token
from tests.conftest import StartServer
from tests.support import eventually, sio_refusal

RS = "\x1e"  # Engine.IO v4 packet separator in a polling payload


def product(store_id: str, n: int = 0, pad: str = "") -> dict[str, Any]:
    data: dict[str, Any] = {"storeId": store_id, "product": {"id": f"p{n}"}, "n": n}
    if pad:
        data["pad"] = pad
    return {"type": "product_updated", "data": data}


async def post_ok(live: Live, body: Any) -> list[str]:
    status, answer = await live.post(body)
    assert status == 202, answer
    ids: list[str] = answer["ids"]
    return ids


# --- acknowledgements -----------------------------------------------------------------------------


async def test_subscribe_and_unsubscribe_are_acknowledged_and_take_effect(live: Live) -> None:
    client = await live.sio({"token": make_token("u1")})
    await post_ok(live, product("s1", 0))
    assert await client.call("subscribe", {"storeId": "s1"}) == {"ok": True, "room": "store:s1"}
    ids = await post_ok(live, product("s1", 1))
    events = await client.wait_for(1)
    assert events == [("product_updated", (product("s1", 1)["data"], ids[0]))]
    assert await client.call("unsubscribe", {"storeId": "s1"}) == {"ok": True, "room": "store:s1"}
    await post_ok(live, product("s1", 2))
    ids = await post_ok(live, {"type": "store_updated", "data": {"storeId": "s1", "store": {}}})
    events = await client.wait_for(2)
    # Nothing for s1 after the unsubscribe: the next event is the global one.
    assert [(name, args[-1]) for name, args in events[1:]] == [("store_updated", ids[0])]
    await client.close()


@pytest.mark.parametrize("event", ["subscribe", "unsubscribe"])
@pytest.mark.parametrize(
    "data",
    [
        None,
        "s1",
        ["s1"],
        1,
        {},
        {"storeId": None},
        {"storeId": ""},
        {"storeId": 1},
        {"storeId": "s 1"},
        {"storeId": "s" * 129},
        {"store": "s1"},
    ],
)
async def test_bad_input_is_refused_in_the_ack(live: Live, event: str, data: Any) -> None:
    client = await live.sio({"token": make_token("u1")})
    answer = await client.call(event, data)
    assert set(answer) == {"ok", "error", "message"}, answer
    assert answer["ok"] is False and answer["error"] == "bad_request", answer
    assert isinstance(answer["message"], str) and answer["message"], answer
    # The connection carries on.
    assert client.client.connected
    assert await client.call("subscribe", {"storeId": "s1"}) == {"ok": True, "room": "store:s1"}
    await client.close()


async def test_unknown_event_with_an_ack_is_refused(live: Live) -> None:
    client = await live.sio({"token": make_token("u1")})
    for event, data in (("publish", {"type": "x"}), ("ping", None), ("message", "hello")):
        answer = await client.call(event, data)
        assert answer["ok"] is False and answer["error"] == "bad_request" and answer["message"], answer
    # Without an ack it is ignored, and the connection carries on.
    await client.client.emit("publish", {"type": "x"})
    assert await client.call("subscribe", {"storeId": "s1"}) == {"ok": True, "room": "store:s1"}
    await client.close()


async def test_too_many_store_subscriptions_are_refused_in_the_ack(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"max_stores_per_connection": 1}))
    client = await live.sio({"token": make_token("u1"), "stores": ["s1"]})
    answer = await client.call("subscribe", {"storeId": "s2"})
    assert answer["ok"] is False and answer["error"] == "bad_request", answer
    assert await client.call("subscribe", {"storeId": "s1"}) == {"ok": True, "room": "store:s1"}
    await client.close()


async def test_too_many_messages_close_the_transport(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(
        settings_for(websocket={"client_messages_per_second": 1, "client_messages_burst": 3})
    )
    client = await live.sio({"token": make_token("u1")})
    other = await live.sio({"token": make_token("u2")})
    for _ in range(3):
        assert (await client.call("subscribe", {"storeId": "s1"}))["ok"] is True
    await client.client.emit("subscribe", {"storeId": "s1"})

    async def gone() -> bool:
        return not client.client.connected and [c.user_id for c in live.node.hub.connections] == ["u2"]

    await eventually(gone)
    # Not an admin kick: the client may reconnect (no "io server disconnect").
    assert client.disconnect_reasons and client.disconnect_reasons != [
        socketio.AsyncClient.reason.SERVER_DISCONNECT
    ]
    assert other.client.connected
    await other.close()


# --- refused connects ---------------------------------------------------------------------------


REFUSALS = [
    (None, "unauthorized"),
    ({"token": "not-a-jwt"}, "unauthorized"),
    ({"token": make_token("u1", "superuser")}, "forbidden"),
    ({"token": make_token("u1"), "userId": "u2"}, "forbidden"),
    ({"token": make_token("u1"), "stores": "s1"}, "bad_request"),
    ({"token": make_token("u1"), "stores": ["s 1"]}, "bad_request"),
    ({"token": make_token("u1"), "lastEventId": 5}, "bad_request"),
    ({"token": 5}, "bad_request"),
]


@pytest.mark.parametrize(("auth", "message"), REFUSALS)
async def test_refused_connect_carries_the_contract_message(live: Live, auth: Any, message: str) -> None:
    error = await sio_refusal(live, auth)
    assert isinstance(error, dict) and error["message"] == message, error
    assert not live.node.hub.connections


@pytest.mark.parametrize(("auth", "message"), REFUSALS)
async def test_refused_connect_over_polling_carries_the_contract_message(
    live: Live, auth: Any, message: str
) -> None:
    """By hand: python-engineio's client, refused on polling, never sends its CLOSE (its write loop
    exits first) and waits out the long-poll, a whole ping interval."""
    eio = RawEngineIO(live)
    await eio.open_polling()
    await eio.post("40" + (orjson.dumps(auth).decode() if auth is not None else ""))
    reply = await eio.poll()
    assert reply[0].startswith("44"), reply
    assert orjson.loads(reply[0][2:])["message"] == message, reply
    assert not live.node.hub.connections


async def test_auth_that_is_not_an_object_is_bad_request(live: Live) -> None:
    # python-socketio's client sends any JSON value as CONNECT data; a raw client shows the rest.
    ws = await live.session.ws_connect(f"{live.base}/socket.io/?EIO=4&transport=websocket", autoclose=False)
    assert (await ws.receive_str(timeout=3)).startswith("0")
    await ws.send_str('40"just-a-token"')
    reply = await ws.receive_str(timeout=3)
    assert reply.startswith("44"), reply
    assert orjson.loads(reply[2:])["message"] == "bad_request", reply
    await ws.close()


# --- transports ---------------------------------------------------------------------------------


async def test_polling_transport_receives_events_in_order(live: Live) -> None:
    client = await live.sio({"token": make_token("u1"), "stores": ["s1"]}, transports=["polling"])
    assert client.client.eio.current_transport == "polling"
    ids: list[str] = []
    for n in range(30):
        ids += await post_ok(live, product("s1", n))
    ids += await post_ok(live, {"events": [product("s1", n) for n in range(30, 60)]})
    events = await client.wait_for(60)
    assert [args[-1] for _, args in events] == ids
    assert [args[0]["n"] for _, args in events] == list(range(60))
    assert await client.call("unsubscribe", {"storeId": "s1"}) == {"ok": True, "room": "store:s1"}
    await client.close()


async def test_default_transports_connect_and_receive_events_in_order_while_publishing(live: Live) -> None:
    """python-socketio starts on polling and upgrades; a publisher runs all along. The client sees a
    gapless, ordered run of the events published once it was in its rooms."""
    posted: list[str] = []
    stop = asyncio.Event()

    async def publish() -> None:
        n = 0
        while not stop.is_set() or n < 40:
            posted.extend(await post_ok(live, product("s1", n)))
            n += 1
            await asyncio.sleep(0.002)

    publisher = asyncio.create_task(publish())
    await asyncio.sleep(0.02)
    client = SioClient()
    await client.client.connect(live.base, auth={"token": make_token("u1"), "stores": ["s1"]}, wait_timeout=5)
    assert client.client.eio.current_transport == "websocket"
    await client.wait_for(10)
    stop.set()
    await publisher
    expected_tail = posted[posted.index(client.events[0][1][-1]) :]
    events = await client.wait_for(len(expected_tail))
    assert [args[-1] for _, args in events] == expected_tail
    await client.close()


class RawEngineIO:
    """Engine.IO v4 by hand, as socket.io-client speaks it: open on polling, then upgrade."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.url = f"{live.base}/socket.io/?EIO=4"
        self.sid = ""
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def open_polling(self) -> dict[str, Any]:
        async with self.live.session.get(f"{self.url}&transport=polling") as resp:
            assert resp.status == 200
            first = (await resp.text()).split(RS)[0]
        assert first.startswith("0"), first
        handshake: dict[str, Any] = orjson.loads(first[1:])
        self.sid = handshake["sid"]
        assert "websocket" in handshake["upgrades"]
        return handshake

    async def post(self, *packets: str) -> None:
        async with self.live.session.post(
            f"{self.url}&transport=polling&sid={self.sid}", data=RS.join(packets).encode()
        ) as resp:
            assert resp.status == 200, await resp.text()

    async def poll(self) -> list[str]:
        async with self.live.session.get(f"{self.url}&transport=polling&sid={self.sid}") as resp:
            assert resp.status == 200
            return (await resp.text()).split(RS)

    async def upgrade_probe(self) -> None:
        self.ws = await self.live.session.ws_connect(
            f"{self.url}&transport=websocket&sid={self.sid}", autoclose=False
        )
        await self.ws.send_str("2probe")
        assert await self.ws.receive_str(timeout=3) == "3probe"

    async def upgrade_finish(self) -> None:
        assert self.ws is not None
        await self.ws.send_str("5")

    async def receive_ws(self) -> str:
        assert self.ws is not None
        while True:
            packet = await self.ws.receive_str(timeout=3)
            if packet == "2":  # the server's heartbeat: answer it as a client would
                await self.ws.send_str("3")
                continue
            return packet


def event_ids(packets: list[str]) -> list[str]:
    """The event ids in Socket.IO EVENT packets (``42["type", data, "id"]``)."""
    return [orjson.loads(p[2:])[-1] for p in packets if p.startswith("42")]


async def test_heartbeat_setting_is_the_engine_io_ping_interval(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    # Whole seconds: python-engineio truncates the advertised interval to them (int(s) * 1000).
    live = await start_server(settings_for(websocket={"heartbeat_seconds": 1}))
    handshake = await RawEngineIO(live).open_polling()
    assert handshake["pingInterval"] == 1000
    ws = await live.sio_ws({"token": make_token("u1")})
    assert await ws.receive_str(timeout=2) == "2"  # the server's ping, one interval later
    # Each pong starts the next interval: the pings go on (all sockets share one ping task).
    for _ in range(2):
        await ws.send_str("3")
        assert await ws.receive_str(timeout=2) == "2"
    await ws.close()


async def test_events_posted_while_upgrading_arrive_in_order_across_the_upgrade(live: Live) -> None:
    eio = RawEngineIO(live)
    await eio.open_polling()
    await eio.post("40" + orjson.dumps({"token": make_token("u1"), "stores": ["s1"]}).decode())
    connected = await eio.poll()
    assert connected[0].startswith("40") and "sid" in orjson.loads(connected[0][2:]), connected

    ids = await post_ok(live, product("s1", 0))  # on polling
    assert event_ids(await eio.poll()) == ids

    pending_poll = asyncio.create_task(eio.poll())  # socket.io-client keeps one GET open
    await asyncio.sleep(0.05)
    await eio.upgrade_probe()
    ids += await post_ok(live, product("s1", 1))  # after the probe, before the upgrade
    ids += await post_ok(live, {"events": [product("s1", 2), product("s1", 3)]})
    received = event_ids(await asyncio.wait_for(pending_poll, 3))  # the server ends it with a NOOP
    await eio.upgrade_finish()
    ids += await post_ok(live, product("s1", 4))  # after the upgrade
    ids += await post_ok(live, {"events": [product("s1", n) for n in range(5, 25)]})
    while len(received) < len(ids) - 1:
        received += event_ids([await eio.receive_ws()])
    assert [ids[0], *received] == ids
    assert eio.ws is not None
    await eio.ws.close()


async def test_events_to_a_polling_client_wait_for_its_next_poll(live: Live) -> None:
    eio = RawEngineIO(live)
    await eio.open_polling()
    await eio.post("40" + orjson.dumps({"token": make_token("u1")}).decode())
    assert (await eio.poll())[0].startswith("40")
    ids = await post_ok(
        live, {"events": [product("s1", n, "") | {"to": {"users": ["u1"]}} for n in range(5)]}
    )
    assert event_ids(await eio.poll()) == ids


# --- slow consumers -------------------------------------------------------------------------------


async def test_slow_consumer_is_closed_while_a_reader_gets_every_event_in_order(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """The slow client speaks Engine.IO over aiohttp's WebSocket client and stops reading once it is
    connected; aiohttp then stops reading the socket (backpressure). The reader is python-socketio."""
    live = await start_server(settings_for(websocket={"send_buffer_bytes": 65536}))
    reader = await live.sio({"token": make_token("reader"), "stores": ["s1"]})
    slow = await live.sio_ws({"token": make_token("slow"), "stores": ["s1"]})
    assert {c.user_id for c in live.node.hub.connections} == {"reader", "slow"}

    def slow_open() -> bool:
        return any(c.user_id == "slow" and not c.closed for c in live.node.hub.connections)

    pad = "x" * 20_000
    ids: list[str] = []
    n = 0
    while slow_open() or n < 20:
        assert n < 2000, "40 MB sent and the slow consumer is still open"
        ids += await post_ok(live, {"events": [product("s1", n, pad), product("s1", n + 1, pad)]})
        n += 2
        await reader.wait_for(n)
    assert [args[-1] for _, args in reader.events] == ids
    assert [args[0]["n"] for _, args in reader.events] == list(range(n))

    async def slow_gone() -> bool:
        _, presence = await live.get("/api/v1/presence/users/slow")
        return {c.user_id for c in live.node.hub.connections} == {"reader"} and presence["connections"] == 0

    await eventually(slow_gone, within=5)
    ids += await post_ok(live, product("s1", n))
    await reader.wait_for(n + 1)
    assert reader.events[-1][1][-1] == ids[-1]
    assert reader.client.connected
    await reader.close()
    await slow.close()


async def test_slow_consumer_that_reads_again_gets_its_events_in_order_then_1008(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"send_buffer_bytes": 65536}))
    slow = await live.sio_ws({"token": make_token("slow"), "stores": ["s1"]})
    pad = "x" * 20_000
    ids: list[str] = []
    while any(not c.closed for c in live.node.hub.connections):
        assert len(ids) < 2000, "40 MB sent and the slow consumer is still open"
        ids += await post_ok(live, {"events": [product("s1", len(ids) + i, pad) for i in range(10)]})
    received: list[str] = []
    while True:
        msg = await slow.receive(timeout=3)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        assert not msg.data.startswith("41"), msg.data
        received += event_ids([msg.data])
    # A transport close, not a Socket.IO DISCONNECT (41): the client may reconnect and recover.
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008, msg
    assert received and received == ids[: len(received)]
    await slow.close()


# --- frame size -----------------------------------------------------------------------------------


async def test_message_over_max_message_bytes_closes_with_1009(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"max_message_bytes": 1024}))
    ws = await live.sio_ws({"token": make_token("u1")})
    # Exactly the limit is allowed: an ack comes back.
    empty = '421["subscribe",{"storeId":"s1","pad":""}]'
    await ws.send_str(empty.replace('"pad":""', '"pad":"' + "x" * (1024 - len(empty)) + '"'))
    assert (await ws.receive_str(timeout=3)).startswith("431[")
    await ws.send_str(empty.replace('"pad":""', '"pad":"' + "x" * 2000 + '"'))
    msg = await ws.receive(timeout=3)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1009, msg
    await ws.close()

    async def gone() -> bool:
        return not live.node.hub.connections

    await eventually(gone)


async def test_client_that_stops_polling_is_closed_once_its_queue_holds_more_than_the_send_buffer(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """A long-polling client's events wait in Engine.IO's queue until it polls: that queue is its
    send buffer, bounded in bytes like a WebSocket client's."""
    live = await start_server(settings_for(websocket={"send_buffer_bytes": 65536}))
    reader = await live.sio({"token": make_token("reader"), "stores": ["s1"]})
    eio = RawEngineIO(live)
    await eio.open_polling()
    await eio.post("40" + orjson.dumps({"token": make_token("slow"), "stores": ["s1"]}).decode())
    assert (await eio.poll())[0].startswith("40")

    def slow_open() -> bool:
        return any(c.user_id == "slow" and not c.closed for c in live.node.hub.connections)

    pad = "x" * 20_000
    n = 0
    while slow_open():
        assert n < 20, f"{n * 20} KB queued for a client that does not poll, and it is still open"
        await post_ok(live, product("s1", n, pad))
        n += 1
        await reader.wait_for(n)

    async def slow_gone() -> bool:
        return {c.user_id for c in live.node.hub.connections} == {"reader"}

    await eventually(slow_gone)
    assert reader.client.connected
    await reader.close()


async def test_admin_disconnect_of_a_polling_client_is_final(live: Live) -> None:
    client = await live.sio({"token": make_token("alice")}, transports=["polling"])
    status, answer = await live.post(
        {"type": "order_updated", "data": {"orderId": "o", "order": {"userId": "alice"}}}
    )
    assert status == 202, answer
    await client.wait_for(1)
    async with live.session.post(
        f"{live.base}/api/v1/users/alice/disconnect", headers=live.headers()
    ) as resp:
        assert resp.status == 200 and await resp.json() == {"disconnected": 1}

    async def gone() -> bool:
        return (
            not client.client.connected and bool(client.disconnect_reasons) and not live.node.hub.connections
        )

    await eventually(gone)
    assert client.disconnect_reasons == [socketio.AsyncClient.reason.SERVER_DISCONNECT]
