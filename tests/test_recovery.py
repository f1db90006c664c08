"""A client that reconnects gets every event it missed, exactly once, in order (contract §7)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import aiohttp
import orjson
import pytest

from tests.clients import Live, make_token, no_message, recv
from tests.conftest import StartServer, make_settings
from tests.redis_server import RedisServer


def store_event(seq: int) -> dict[str, Any]:
    return {"type": "store_updated", "data": {"storeId": "s1", "store": {}, "seq": seq}}


async def position(live: Live, token: str) -> str:
    """Where a client that has seen nothing yet resumes from: the ``connected`` frame says."""
    ws, connected = await live.ws_ready(token=token)
    await ws.close()
    last_event_id: str = connected["data"]["lastEventId"]
    return last_event_id


async def publish_stream(live: Live, count: int, gap: float = 0.002) -> list[str]:
    ids = []
    for seq in range(count):
        status, body = await live.post(store_event(seq))
        assert status == 202, body
        ids.extend(body["ids"])
        await asyncio.sleep(gap)
    return ids


async def test_websocket_client_dropping_repeatedly_misses_nothing(live: Live) -> None:
    total = 150
    token = make_token("roamer")
    last_id = await position(live, token)
    publisher = asyncio.create_task(publish_stream(live, total))
    seqs: list[int] = []
    rng = random.Random(7)
    while len(seqs) < total:
        ws, connected = await live.ws_ready(token=token, lastEventId=last_id)
        assert connected["data"]["lastEventId"] == last_id
        for _ in range(rng.randint(1, 25)):
            try:
                frame = await recv(ws, timeout=3)
            except TimeoutError:
                break
            assert frame["type"] == "store_updated", frame
            seqs.append(frame["data"]["seq"])
            last_id = frame["id"]
            if len(seqs) == total:
                break
        await ws.close()  # drop, then reconnect while the publisher carries on
    await publisher
    assert seqs == list(range(total))


async def test_socketio_client_resuming_with_last_event_id_misses_nothing(live: Live) -> None:
    total = 120
    token = make_token("roamer")
    last_id = await position(live, token)
    publisher = asyncio.create_task(publish_stream(live, total))
    seqs: list[int] = []
    rng = random.Random(11)
    while len(seqs) < total:
        client = await live.sio({"token": token, "lastEventId": last_id})
        want = min(total, len(seqs) + rng.randint(1, 25))
        with contextlib.suppress(AssertionError):  # fewer arrived: resume from what did
            await client.wait_for(want - len(seqs), timeout=3)
        await client.close()
        for name, args in client.events:
            assert name == "store_updated", (name, args)
            seqs.append(args[0]["seq"])
            last_id = args[-1]
    await publisher
    assert seqs == list(range(total))


async def test_missed_events_come_before_live_ones_and_in_order(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("alice"), storeId="s1")
    _, first = await live.post(store_event(0))
    assert (await recv(ws))["id"] == first["ids"][0]
    await ws.close()
    _, missed = await live.post({"events": [store_event(1), store_event(2)]})
    ws, connected = await live.ws_ready(token=make_token("alice"), storeId="s1", lastEventId=first["ids"][0])
    assert connected["data"]["lastEventId"] == first["ids"][0]
    assert [(await recv(ws))["id"] for _ in range(2)] == missed["ids"]
    _, live_event = await live.post(store_event(3))
    assert (await recv(ws))["id"] == live_event["ids"][0]
    await no_message(ws)


async def test_history_never_replays_another_users_order(live: Live) -> None:
    ws, connected = await live.ws_ready(token=make_token("alice"))
    position = connected["data"]["lastEventId"]
    await ws.close()
    for user in ("bob", "alice", "bob"):
        status, _ = await live.post(
            {"type": "order_updated", "data": {"orderId": f"o-{user}", "order": {"userId": user}}}
        )
        assert status == 202
    ws, _ = await live.ws_ready(token=make_token("alice"), lastEventId=position)
    frame = await recv(ws)
    assert frame["data"]["orderId"] == "o-alice"
    await no_message(ws)
    sio = await live.sio({"token": make_token("alice"), "lastEventId": position})
    events = await sio.wait_for(1)
    await asyncio.sleep(0.2)
    assert [args[0]["orderId"] for _, args in sio.events] == ["o-alice"], events
    await sio.close()


async def test_expired_history_sends_resync_then_live_events(start_server, settings_for) -> None:
    live = await start_server(settings_for(history={"max_events": 3}))
    ws, connected = await live.ws_ready(token=make_token("alice"))
    position = connected["data"]["lastEventId"]
    await ws.close()
    # Enough events that the ones after ``position`` are trimmed (Redis trims in whole nodes).
    for start in range(0, 400, 100):
        status, _ = await live.post({"events": [store_event(seq) for seq in range(start, start + 100)]})
        assert status == 202
    ws, _ = await live.ws_ready(token=make_token("alice"), lastEventId=position)
    assert await recv(ws) == {"type": "resync", "data": {"reason": "history_expired"}}
    await no_message(ws)
    _, body = await live.post(store_event(999))
    assert (await recv(ws))["id"] == body["ids"][0]

    sio = await live.sio({"token": make_token("alice"), "lastEventId": position})
    events = await sio.wait_for(1)
    assert events[0] == ("resync", ({"reason": "history_expired"},))
    await sio.close()


async def test_unknown_or_malformed_ids_get_resync(live: Live) -> None:
    for bad in ("not-an-id", "99999999999999-0", "1-0"):
        ws, _ = await live.ws_ready(token=make_token("alice"), lastEventId=bad)
        assert await recv(ws) == {"type": "resync", "data": {"reason": "history_expired"}}, bad
        await ws.close()


async def _engineio_connect(
    live: Live, auth: dict[str, Any]
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """Socket.IO by hand over Engine.IO v4, to see the CONNECT packet's ``pid``."""
    ws = await live.session.ws_connect(f"{live.base}/socket.io/?EIO=4&transport=websocket")
    opened = await ws.receive_str()
    assert opened.startswith("0{")
    await ws.send_str("40" + orjson.dumps(auth).decode())
    reply = await ws.receive_str()
    assert reply.startswith("40{"), reply
    return ws, orjson.loads(reply[2:])


async def _next_event(ws: aiohttp.ClientWebSocketResponse) -> list[Any]:
    while True:
        text = await asyncio.wait_for(ws.receive_str(), 3)
        if text == "2":
            await ws.send_str("3")
            continue
        assert text.startswith("42"), text
        event: list[Any] = orjson.loads(text[2:])
        return event


async def test_socketio_pid_and_offset_restore_session_and_missed_events(live: Live) -> None:
    token = make_token("alice")
    ws, connect = await _engineio_connect(live, {"token": token})
    pid = connect["pid"]
    await ws.send_str('420["subscribe",{"storeId":"s7"}]')
    ack = await asyncio.wait_for(ws.receive_str(), 3)
    assert ack == '430[{"ok":true,"room":"store:s7"}]'
    _, body = await live.post({"type": "product_updated", "data": {"storeId": "s7", "product": {}}})
    event = await _next_event(ws)
    assert event[0] == "product_updated" and event[-1] == body["ids"][0]
    await ws.close()

    _, missed = await live.post({"type": "product_updated", "data": {"storeId": "s7", "product": {"n": 2}}})
    ws, connect = await _engineio_connect(live, {"token": token, "pid": pid, "offset": body["ids"][0]})
    assert connect["pid"] == pid  # same pid: socket.io-client sets socket.recovered = true
    event = await _next_event(ws)
    assert event == ["product_updated", {"storeId": "s7", "product": {"n": 2}}, missed["ids"][0]]
    await ws.close()

    # Another user's token cannot take over the session's stores.
    ws, connect = await _engineio_connect(
        live, {"token": make_token("mallory"), "pid": pid, "offset": body["ids"][0]}
    )
    assert connect["pid"] != pid
    await ws.close()


async def test_socketio_resuming_by_pid_while_redis_is_down_is_told_to_resync(
    start_server: StartServer, redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by bench/soak.py: the session lookup raised out of the CONNECT handler, the client
    got no answer and the log a traceback."""
    live = await start_server(make_settings(redis={"url": redis.url}))
    token = make_token("alice")
    ws, connect = await _engineio_connect(live, {"token": token})
    pid = connect["pid"]
    _, body = await live.post(store_event(1))
    assert (await _next_event(ws))[-1] == body["ids"][0]
    await ws.close()
    redis.stop()
    caplog.clear()
    ws, connect = await asyncio.wait_for(
        _engineio_connect(live, {"token": token, "pid": pid, "offset": body["ids"][0]}), 5
    )
    assert connect["pid"] != pid  # not recovered: socket.io-client's socket.recovered is false
    assert await _next_event(ws) == ["resync", {"reason": "history_unavailable"}]
    await ws.close()
    # Redis being down is logged as such, in one line each, with no traceback.
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "could not save session for recovery: Redis is unreachable" in caplog.text
