"""The plain WebSocket protocol at ``GET /api/ws`` (contract §4), over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from server.config import Settings
from tests.clients import Live, make_token, no_message, recv, recv_close
from tests.conftest import StartServer
from tests.support import eventually


def product(store_id: str, n: int = 0, pad: str = "") -> dict[str, Any]:
    data: dict[str, Any] = {"storeId": store_id, "product": {"id": f"p{n}"}, "n": n}
    if pad:
        data["pad"] = pad
    return {"type": "product_updated", "data": data}


async def send(ws: aiohttp.ClientWebSocketResponse, message: Any) -> None:
    await ws.send_str(orjson.dumps(message).decode())


async def still_open(live: Live, ws: aiohttp.ClientWebSocketResponse) -> None:
    """The connection survived: it answers a ping and still receives events."""
    await send(ws, {"type": "ping"})
    assert await recv(ws) == {"type": "pong"}
    status, answer = await live.post({"type": "store_updated", "data": {"storeId": "x", "store": {}}})
    assert status == 202
    assert (await recv(ws))["id"] == answer["ids"][0]


# --- replies ------------------------------------------------------------------------------------


async def test_connected_frame_comes_first_and_names_the_rooms(live: Live) -> None:
    ws, first = await live.ws_ready(token=make_token("u1", "driver"), stores="s1,s2")
    assert set(first) == {"type", "data"}
    assert set(first["data"]) == {"userId", "role", "rooms", "lastEventId", "resumed"}
    assert first["data"]["resumed"] is False  # a fresh start
    assert first["data"]["userId"] == "u1" and first["data"]["role"] == "driver"
    assert sorted(first["data"]["rooms"]) == ["global", "role:driver", "store:s1", "store:s2", "user:u1"]
    await ws.close()


async def test_subscribe_and_unsubscribe_reply_exactly_and_take_effect(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("u1"))
    status, _ = await live.post(product("s1", 0))
    assert status == 202
    await no_message(ws, 0.1)

    await send(ws, {"type": "subscribe", "data": {"storeId": "s1"}})
    assert await recv(ws) == {"type": "subscribed", "data": {"room": "store:s1"}}
    status, answer = await live.post(product("s1", 1))
    assert status == 202
    frame = await recv(ws)
    assert frame == {"type": "product_updated", "data": product("s1", 1)["data"], "id": answer["ids"][0]}

    # Subscribing twice is harmless: one room, each event once.
    await send(ws, {"type": "subscribe", "data": {"storeId": "s1"}})
    assert await recv(ws) == {"type": "subscribed", "data": {"room": "store:s1"}}
    status, answer = await live.post(product("s1", 2))
    assert (await recv(ws))["id"] == answer["ids"][0]
    await no_message(ws, 0.1)

    await send(ws, {"type": "unsubscribe", "data": {"storeId": "s1"}})
    assert await recv(ws) == {"type": "unsubscribed", "data": {"room": "store:s1"}}
    status, _ = await live.post(product("s1", 3))
    assert status == 202
    await no_message(ws, 0.1)
    # Unsubscribing from a store it does not view is answered the same way.
    await send(ws, {"type": "unsubscribe", "data": {"storeId": "s9"}})
    assert await recv(ws) == {"type": "unsubscribed", "data": {"room": "store:s9"}}
    await ws.close()


async def test_ping_gets_exactly_pong(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("u1"))
    for message in ({"type": "ping"}, {"type": "ping", "data": {"t": 1}}):
        await send(ws, message)
        assert await recv(ws) == {"type": "pong"}
    await ws.close()


BAD_FRAMES: dict[str, str] = {
    "malformed JSON": '{"type": "ping"',
    "not JSON at all": "hello",
    "empty text": "",
    "a JSON array": '[{"type": "ping"}]',
    "a JSON string": '"ping"',
    "a JSON number": "1",
    "JSON null": "null",
    "no type": '{"data": {"storeId": "s1"}}',
    "type not a string": '{"type": 1}',
    "unknown type": '{"type": "publish", "data": {}}',
    "subscribe without data": '{"type": "subscribe"}',
    "subscribe with data not an object": '{"type": "subscribe", "data": "s1"}',
    "subscribe without storeId": '{"type": "subscribe", "data": {}}',
    "subscribe with storeId null": '{"type": "subscribe", "data": {"storeId": null}}',
    "subscribe with a numeric storeId": '{"type": "subscribe", "data": {"storeId": 1}}',
    "subscribe with an empty storeId": '{"type": "subscribe", "data": {"storeId": ""}}',
    "subscribe with a storeId with a space": '{"type": "subscribe", "data": {"storeId": "s 1"}}',
    "subscribe with a storeId of 129 chars": orjson.dumps(
        {"type": "subscribe", "data": {"storeId": "s" * 129}}
    ).decode(),
    "unsubscribe with a bad storeId": '{"type": "unsubscribe", "data": {"storeId": "s/1"}}',
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
async def test_bad_frame_gets_an_error_frame_and_the_connection_stays_open(live: Live, case: str) -> None:
    ws, _ = await live.ws_ready(token=make_token("u1"))
    await ws.send_str(BAD_FRAMES[case])
    reply = await recv(ws)
    assert reply["type"] == "error" and set(reply) == {"type", "data"}, reply
    assert reply["data"]["code"] == "bad_request" and set(reply["data"]) == {"code", "message"}, reply
    assert isinstance(reply["data"]["message"], str) and reply["data"]["message"], reply
    await still_open(live, ws)
    await ws.close()


async def test_binary_frame_gets_an_error_frame_and_the_connection_stays_open(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("u1"))
    await ws.send_bytes(b'{"type": "ping"}')
    reply = await recv(ws)
    assert reply["type"] == "error" and reply["data"]["code"] == "bad_request", reply
    await still_open(live, ws)
    await ws.close()


async def test_bad_subscribe_leaves_the_rooms_as_they_were(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("u1"), storeId="s1")
    await ws.send_str('{"type": "unsubscribe", "data": {"storeId": ""}}')
    assert (await recv(ws))["type"] == "error"
    status, answer = await live.post(product("s1"))
    assert status == 202
    assert (await recv(ws))["id"] == answer["ids"][0]
    await ws.close()


async def test_subscribing_to_more_stores_than_allowed_is_an_error(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"max_stores_per_connection": 2}))
    ws, _ = await live.ws_ready(token=make_token("u1"), storeId="s1")
    await send(ws, {"type": "subscribe", "data": {"storeId": "s2"}})
    assert (await recv(ws))["type"] == "subscribed"
    await send(ws, {"type": "subscribe", "data": {"storeId": "s3"}})
    reply = await recv(ws)
    assert reply["type"] == "error" and reply["data"]["code"] == "bad_request", reply
    # Re-subscribing to one it already views is still fine, and s3 was not joined.
    await send(ws, {"type": "subscribe", "data": {"storeId": "s1"}})
    assert (await recv(ws))["type"] == "subscribed"
    status, _ = await live.post(product("s3"))
    assert status == 202
    await no_message(ws, 0.1)
    await ws.close()


# --- close codes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        {"storeId": "s 1"},
        {"storeId": ""},
        {"stores": "s1,s/2"},
        {"lastEventId": "1" * 65},
        {"userId": "a b"},
        {"role": "r o l e"},
    ],
)
async def test_bad_query_closes_with_4400(live: Live, query: dict[str, str]) -> None:
    ws = await live.ws(token=make_token("u1"), **query)
    assert await recv_close(ws) == 4400
    assert ws.close_code == 4400


@pytest.mark.parametrize(
    ("stores", "rooms"),
    [("", []), ("s1,,s2,", ["store:s1", "store:s2"]), (" s1 , s2", ["store:s1", "store:s2"])],
)
async def test_empty_items_in_the_stores_list_are_skipped(live: Live, stores: str, rooms: list[str]) -> None:
    """A client that joins an empty list of stores (``stores=``) connects, viewing none."""
    ws, first = await live.ws_ready(token=make_token("u1"), stores=stores)
    assert sorted(r for r in first["data"]["rooms"] if r.startswith("store:")) == rooms
    await ws.close()


async def test_too_many_stores_in_the_query_closes_with_4400(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"max_stores_per_connection": 2}))
    ws, _ = await live.ws_ready(token=make_token("u1"), stores="s1,s2")
    await ws.close()
    ws = await live.ws(token=make_token("u1"), stores="s1,s2", storeId="s3")
    assert await recv_close(ws) == 4400


async def test_too_many_messages_close_with_4429(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(
        settings_for(websocket={"client_messages_per_second": 1, "client_messages_burst": 3})
    )
    ws, _ = await live.ws_ready(token=make_token("u1"))
    for _ in range(4):
        await send(ws, {"type": "ping"})
    for _ in range(3):
        assert await recv(ws) == {"type": "pong"}
    assert await recv_close(ws) == 4429
    await ws.close()

    async def gone() -> bool:
        return not live.node.hub.connections

    await eventually(gone)
    # Bad frames count too: they cost the server as much.
    ws, _ = await live.ws_ready(token=make_token("u1"))
    for _ in range(4):
        await ws.send_bytes(b"x")
    for _ in range(3):
        assert (await recv(ws))["type"] == "error"
    assert await recv_close(ws) == 4429


async def test_messages_within_the_rate_are_all_answered(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(
        settings_for(websocket={"client_messages_per_second": 50, "client_messages_burst": 2})
    )
    ws, _ = await live.ws_ready(token=make_token("u1"))
    for _ in range(5):
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}
        await asyncio.sleep(0.03)  # 33/s: under the rate, so the bucket refills
    await ws.close()


async def test_frame_over_max_message_bytes_closes_with_1009(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"max_message_bytes": 1024}))
    ws, _ = await live.ws_ready(token=make_token("u1"))
    # Just under the limit is a frame like any other.
    near = orjson.dumps({"type": "ping", "pad": ""})
    await send(ws, {"type": "ping", "pad": "x" * (1024 - len(near))})
    assert await recv(ws) == {"type": "pong"}
    await send(ws, {"type": "ping", "pad": "x" * 2000})
    assert await recv_close(ws) == 1009

    async def gone() -> bool:
        return not live.node.hub.connections

    await eventually(gone)


# --- slow consumers -------------------------------------------------------------------------------


async def test_slow_consumer_is_closed_while_a_reader_gets_every_event_in_order(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """aiohttp's client stops reading the socket once ~128 KiB wait unread (it pauses the protocol),
    so a client that never calls ``receive`` makes the server's send buffer grow: real backpressure.
    The reader keeps up: each step posts 40 KB and waits until the reader has it."""
    live = await start_server(settings_for(websocket={"send_buffer_bytes": 65536}))
    reader, _ = await live.ws_ready(token=make_token("reader"), storeId="s1")
    slow, _ = await live.ws_ready(token=make_token("slow"), storeId="s1")
    assert {c.user_id for c in live.node.hub.connections} == {"reader", "slow"}

    def slow_open() -> bool:
        return any(c.user_id == "slow" and not c.closed for c in live.node.hub.connections)

    pad = "x" * 20_000
    received: list[int] = []
    ids: list[str] = []
    n = 0
    while slow_open() or n < 20:
        assert n < 2000, "40 MB sent and the slow consumer is still open"
        status, answer = await live.post({"events": [product("s1", n, pad), product("s1", n + 1, pad)]})
        assert status == 202, answer
        ids += answer["ids"]
        n += 2
        for _ in range(2):
            frame = await recv(reader)
            received.append(frame["data"]["n"])
            assert frame["id"] == ids[len(received) - 1]
    assert received == list(range(n))

    async def slow_gone() -> bool:
        users = {c.user_id for c in live.node.hub.connections}
        _, presence = await live.get("/api/v1/presence/users/slow")
        return users == {"reader"} and presence["connections"] == 0

    await eventually(slow_gone, within=5)
    # The reader carries on.
    status, answer = await live.post(product("s1", n))
    assert (await recv(reader))["id"] == answer["ids"][0]
    await reader.close()
    await slow.close()


async def test_slow_consumer_that_reads_again_gets_its_events_in_order_then_1008(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"send_buffer_bytes": 65536}))
    slow, _ = await live.ws_ready(token=make_token("slow"), storeId="s1")
    pad = "x" * 20_000
    ids: list[str] = []
    while any(not c.closed for c in live.node.hub.connections):
        assert len(ids) < 2000, "40 MB sent and the slow consumer is still open"
        status, answer = await live.post({"events": [product("s1", len(ids) + i, pad) for i in range(10)]})
        assert status == 202, answer
        ids += answer["ids"]
    # It reads again at once (before the server gives up on the close handshake and aborts).
    received: list[str] = []
    while True:
        msg = await slow.receive(timeout=3)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        received.append(orjson.loads(msg.data)["id"])
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008, msg
    assert received and received == ids[: len(received)]
    await slow.close()


# --- heartbeat ------------------------------------------------------------------------------------


async def test_heartbeat_setting_makes_the_server_ping_and_keeps_an_idle_client(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"heartbeat_seconds": 0.2}))
    # A client that shows the pings to us instead of answering them itself.
    ws = await live.session.ws_connect(
        f"{live.base}/api/ws", params={"token": make_token("u1")}, autoping=False, autoclose=False
    )
    assert (await recv(ws))["type"] == "connected"
    msg = await ws.receive(timeout=1)
    assert msg.type == aiohttp.WSMsgType.PING, msg
    await ws.close()
    # A client that answers pings stays connected while idle, for several heartbeats.
    idle, _ = await live.ws_ready(token=make_token("u2"))
    await no_message(idle, 1.0)
    await still_open(live, idle)
    await idle.close()


async def test_client_that_never_answers_pings_is_dropped(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"heartbeat_seconds": 0.2}))
    ws = await live.session.ws_connect(
        f"{live.base}/api/ws", params={"token": make_token("u1")}, autoping=False, autoclose=False
    )
    assert (await recv(ws))["type"] == "connected"

    async def gone() -> bool:
        return not live.node.hub.connections

    await eventually(gone, within=3)
    await ws.close()
