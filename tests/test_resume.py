"""A client that reconnects without any id (the existing hook) is resumed by the server (contract §7).

Each test drops a client the way it happens in production (heartbeat timeout, slow-consumer close,
a lost network), posts events while it is away, then reconnects as the hook does: same user and
role, no ``lastEventId``. Restarts and kills of real processes are in ``test_resume_cluster.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from server.backplane.base import MAX_RESUME_POINTS, TOGETHER_SECONDS, take_resume_point
from server.backplane.redis import RedisBackplane
from server.config import Settings
from server.transports import plain_ws
from tests.clients import Live, make_token, no_message, recv, recv_close
from tests.conftest import StartServer, make_settings
from tests.redis_server import RedisServer
from tests.support import eventually

SHORT_HEARTBEAT = {"heartbeat_seconds": 0.2, "heartbeat_timeout_seconds": 0.2}
WINDOW = {"resume_window_seconds": 60}


def order(user: str, n: int) -> dict[str, Any]:
    return {"type": "order_updated", "data": {"orderId": f"o-{user}-{n}", "order": {"userId": user}, "n": n}}


def product(n: int, pad: str = "") -> dict[str, Any]:
    return {
        "type": "product_updated",
        "data": {"storeId": "s1", "product": {"id": f"p{n}"}, "n": n, "pad": pad},
    }


async def post_ids(live: Live, body: Any) -> list[str]:
    status, answer = await live.post(body)
    assert status == 202, answer
    ids: list[str] = answer["ids"]
    return ids


def drop(ws: aiohttp.ClientWebSocketResponse) -> None:
    """The network goes away: no close frame, the TCP connection is reset."""
    # SEAM: aiohttp's private ``_writer`` (its transport): a test-only way to cut the socket.
    ws._writer.transport.abort()


async def hub_empty(live: Live) -> None:
    async def empty() -> bool:
        return not live.node.hub.connections

    await eventually(empty)


async def frames_until_quiet(ws: aiohttp.ClientWebSocketResponse, wait: float = 0.5) -> list[dict[str, Any]]:
    frames = []
    while True:
        try:
            frames.append(await recv(ws, timeout=wait))
        except TimeoutError:
            return frames


async def confirmed(live: Live, ws: aiohttp.ClientWebSocketResponse, event_id: str) -> None:
    """Until the server knows the client received ``event_id`` (a ping written after it was
    answered: aiohttp answers pings while it reads)."""
    (conn,) = live.node.hub.connections

    async def acked() -> bool:
        return bool(conn.received_position() == event_id)

    reading = asyncio.create_task(no_message(ws, 10))
    await eventually(acked)
    reading.cancel()


async def dropped_and_back(
    live: Live, ws: aiohttp.ClientWebSocketResponse, user: str, n: int
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any], list[str]]:
    """The network drops ``ws``; an order for ``user`` is posted while it is away; the hook comes
    back without an id and is resumed. The new socket, its ``connected`` frame, what was posted."""
    drop(ws)
    await hub_empty(live)
    sent = await post_ids(live, order(user, n))
    again, connected = await live.ws_ready(token=make_token(user))
    assert connected["data"]["resumed"] is True
    return again, connected, sent


async def comes_back_fresh(live: Live, user: str) -> None:
    """The hook of ``user`` reconnects without an id: not resumed, and nothing replayed."""
    again, connected = await live.ws_ready(token=make_token(user))
    assert connected["data"]["resumed"] is False
    await no_message(again)
    await again.close()


async def sio_events(live: Live, auth: dict[str, Any], count: int) -> list[tuple[str, tuple[Any, ...]]]:
    """Connect as python-socketio's AsyncClient does by default (no position sent), read ``count``
    events, then anything else that comes within a moment."""
    client = await live.sio(auth)
    await client.wait_for(count)
    await asyncio.sleep(0.3)
    await client.close()
    return client.events


# --- plain WebSocket -----------------------------------------------------------------------------


async def test_hook_reconnecting_after_a_heartbeat_timeout_gets_what_it_missed(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket=SHORT_HEARTBEAT, history=WINDOW))
    token = make_token("hook")
    # A client that stops answering pings (its phone slept): the server cuts it off.
    ws = await live.session.ws_connect(
        f"{live.base}/api/ws", params={"token": token}, autoping=False, autoclose=False
    )
    assert (await recv(ws))["data"]["resumed"] is False
    sent = await post_ids(live, order("hook", 0))
    await hub_empty(live)
    await ws.close()
    sent += await post_ids(live, {"events": [order("hook", 1), order("other", 1), order("hook", 2)]})
    sent.remove(sent[2])  # the other user's
    again, connected = await live.ws_ready(token=token)
    assert connected["data"]["resumed"] is True
    # Never confirmed by a pong, so its position is where it connected: event 0 comes again too.
    assert [frame["id"] for frame in await frames_until_quiet(again)] == sent
    live_id = await post_ids(live, order("hook", 3))
    assert (await recv(again))["id"] == live_id[0]
    await again.close()


async def test_an_answered_ping_moves_the_position_so_nothing_older_is_replayed(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket=SHORT_HEARTBEAT, history=WINDOW))
    ws, _ = await live.ws_ready(token=make_token("hook"))
    first = await post_ids(live, order("hook", 0))
    assert (await recv(ws))["id"] == first[0]
    await confirmed(live, ws, first[0])  # a ping written after event 0 was answered
    drop(ws)
    await hub_empty(live)
    missed = await post_ids(live, order("hook", 1))
    again, connected = await live.ws_ready(token=make_token("hook"))
    assert connected["data"]["resumed"] is True and connected["data"]["lastEventId"] == first[0]
    assert [frame["id"] for frame in await frames_until_quiet(again)] == missed
    await again.close()


async def test_hook_reconnecting_after_a_slow_consumer_close_gets_every_event(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"send_buffer_bytes": 65536}, history=WINDOW))
    slow, _ = await live.ws_ready(token=make_token("slow"), storeId="s1")  # and then never reads
    sent: list[str] = []
    while any(not c.closed for c in live.node.hub.connections):
        assert len(sent) < 2000, "40 MB sent and the slow consumer is still open"
        sent += await post_ids(live, {"events": [product(len(sent) + i, "x" * 20_000) for i in range(10)]})
    await hub_empty(live)
    await slow.close()
    sent += await post_ids(live, product(len(sent)))  # while it is away
    again, connected = await live.ws_ready(token=make_token("slow"), storeId="s1")
    assert connected["data"]["resumed"] is True
    received = [frame["id"] for frame in await frames_until_quiet(again, 1.0)]
    assert received == sent  # from where it connected: nothing it could have missed is left out
    await again.close()


async def test_no_resume_after_the_clients_own_close_on_either_transport(live: Live) -> None:
    assert live.node.resume_book.window == 120  # the default window (config.yaml says the same)
    ws, _ = await live.ws_ready(token=make_token("leaver"))
    await ws.close()  # 1000: the user left
    await hub_empty(live)
    client = await live.sio({"token": make_token("sio-leaver")})
    await client.close()  # a Socket.IO DISCONNECT
    await hub_empty(live)
    await post_ids(live, {"events": [order("leaver", 0), order("sio-leaver", 0)]})
    await comes_back_fresh(live, "leaver")
    assert await sio_events(live, {"token": make_token("sio-leaver")}, 0) == []


async def test_a_user_disconnected_by_the_admin_api_is_not_resumed(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("kicked"))
    async with live.session.post(
        f"{live.base}/api/v1/users/kicked/disconnect", headers=live.headers()
    ) as resp:
        assert resp.status == 200
    assert await recv_close(ws) == 4001
    await hub_empty(live)
    await post_ids(live, order("kicked", 0))
    await comes_back_fresh(live, "kicked")


async def test_no_resume_outside_the_window(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(history={"resume_window_seconds": 1}))
    ws, _ = await live.ws_ready(token=make_token("late"))
    drop(ws)
    await hub_empty(live)
    await post_ids(live, order("late", 0))
    await asyncio.sleep(1.5)  # the window passes
    await comes_back_fresh(live, "late")


async def test_resume_never_replays_another_users_order(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(history=WINDOW))
    ws, _ = await live.ws_ready(token=make_token("alice"))
    client = await live.sio({"token": make_token("alice")})
    drop(ws)
    # SEAM: python-engineio's client keeps its WebSocket in ``eio.ws``: the network goes, no DISCONNECT.
    drop(client.client.eio.ws)
    await hub_empty(live)
    sent = await post_ids(live, {"events": [order("bob", 0), order("alice", 1), order("bob", 2)]})
    again, connected = await live.ws_ready(token=make_token("alice"))
    assert connected["data"]["resumed"] is True
    assert [frame["id"] for frame in await frames_until_quiet(again)] == [sent[1]]
    await again.close()
    events = await sio_events(live, {"token": make_token("alice")}, 1)
    assert [(name, args[-1]) for name, args in events] == [("order_updated", sent[1])]


async def test_several_tabs_that_drop_together_each_resume(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(history=WINDOW))
    tabs = [(await live.ws_ready(token=make_token("tabs")))[0] for _ in range(2)]
    for tab in tabs:
        drop(tab)
    await hub_empty(live)
    sent = await post_ids(live, order("tabs", 0))
    for _ in range(2):
        again, connected = await live.ws_ready(token=make_token("tabs"))
        assert connected["data"]["resumed"] is True
        assert [frame["id"] for frame in await frames_until_quiet(again)] == sent
        await again.close()


async def test_a_reconnect_takes_its_point_so_each_gap_is_replayed_once(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """A phone on a bad network drops again and again: each reconnect replays the gap since its
    own drop, never everything since the first one (that amplification swamped the soak run)."""
    live = await start_server(settings_for(websocket=SHORT_HEARTBEAT, history=WINDOW))
    ws, _ = await live.ws_ready(token=make_token("churn"))
    again, _, gap_one = await dropped_and_back(live, ws, "churn", 0)
    assert [frame["id"] for frame in await frames_until_quiet(again)] == gap_one
    seen = await post_ids(live, order("churn", 1))
    assert (await recv(again))["id"] == seen[0]
    await confirmed(live, again, seen[0])
    third, _, gap_two = await dropped_and_back(live, again, "churn", 2)
    assert [frame["id"] for frame in await frames_until_quiet(third)] == gap_two
    await third.close()  # its own close: nothing saved, and the points used are gone
    await comes_back_fresh(live, "churn")


async def test_a_resumed_hook_is_pinged_at_once_so_a_second_drop_does_not_replay_the_first_gap(
    live: Live,
) -> None:
    """Without a mark, a resumed connection's position stays its resume point until the next
    heartbeat (25 s): a phone that drops again before then is replayed the first gap again."""
    ws, _ = await live.ws_ready(token=make_token("marked"))
    again, _, gap_one = await dropped_and_back(live, ws, "marked", 0)
    (conn,) = live.node.hub.connections

    async def marked() -> bool:
        return bool(conn.received_position() == gap_one[0])

    reading = asyncio.create_task(frames_until_quiet(again, 1.0))  # aiohttp answers the ping
    await eventually(marked)
    assert [frame["id"] for frame in await reading] == gap_one
    third, connected, gap_two = await dropped_and_back(live, again, "marked", 1)
    assert connected["data"]["lastEventId"] == gap_one[0]
    assert [frame["id"] for frame in await frames_until_quiet(third)] == gap_two
    await third.close()


async def test_events_to_a_client_without_an_id_carry_a_position_mark_and_to_one_with_an_id_none(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plain_ws, "MARK_SECONDS", 0.0)
    url = f"{live.base}/api/ws"
    hook = await live.session.ws_connect(url, params={"token": make_token("hook")}, autoping=False)
    assert (await recv(hook))["type"] == "connected"
    (position,) = await post_ids(live, {"events": [order("other", 0)]})
    with_id = await live.session.ws_connect(
        url, params={"token": make_token("hook"), "lastEventId": position}, autoping=False
    )
    assert (await recv(with_id))["type"] == "connected"
    (sent,) = await post_ids(live, order("hook", 1))
    for ws in (hook, with_id):
        assert orjson.loads((await ws.receive(timeout=3)).data)["id"] == sent
    ping = await hook.receive(timeout=3)
    assert ping.type == aiohttp.WSMsgType.PING
    await hook.pong(ping.data)
    (conn,) = [c for c in live.node.hub.connections if c.start_position != position]

    async def marked() -> bool:
        return bool(conn.received_position() == sent)

    await eventually(marked)
    with pytest.raises(TimeoutError):
        await with_id.receive(timeout=0.5)  # its own id resumes it: no mark needed
    await hook.close()
    await with_id.close()


async def test_points_saved_together_resume_each_reconnect_from_the_oldest(live: Live) -> None:
    """Two tabs drop together at different positions; a reconnect cannot say which tab it is, so
    both reconnects start from the older position, and a third finds nothing."""
    backplane = live.node.backplane
    first, second = await post_ids(live, {"events": [order("nobody", 0), order("nobody", 1)]})
    await backplane.save_resume_points([("tabs", "customer", second), ("tabs", "customer", first)])
    assert (await backplane.start_position("tabs", "customer"))[1] == first
    assert (await backplane.start_position("tabs", "customer"))[1] == first
    assert (await backplane.start_position("tabs", "customer"))[1] is None
    assert (await backplane.start_position("tabs", "driver"))[1] is None


@pytest.mark.parametrize("backplane", ["redis"])  # the script's own handling of save times
async def test_points_saved_apart_are_taken_one_by_one_oldest_first(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """Points saved far apart are one client's successive drops (or a late-detected half-open
    connection): each is replayed once, oldest first, and the newer keeps its own position."""
    live = await start_server(settings_for())
    backplane = live.node.backplane
    assert isinstance(backplane, RedisBackplane)
    first, second = await post_ids(live, {"events": [order("nobody", 0), order("nobody", 1)]})
    key = f"{backplane.resume_prefix}customer:apart"
    now_ms = int(time.time() * 1000)
    apart_ms = int(TOGETHER_SECONDS * 1000) + 1000
    await backplane.redis.zadd(key, {f"{second}|a": now_ms, f"{first}|b": now_ms - apart_ms, "junk": now_ms})
    assert (await backplane.start_position("apart", "customer"))[1] == first
    assert (await backplane.start_position("apart", "customer"))[1] == second
    assert (await backplane.start_position("apart", "customer"))[1] is None
    assert await backplane.redis.exists(key) == 0


def test_take_resume_point_inherits_only_between_points_saved_together() -> None:
    together = [("5-0", 100.0), ("3-0", 100.0 + TOGETHER_SECONDS)]
    assert take_resume_point(together) == "3-0"
    assert together == [("3-0", 100.0)]  # the other tab starts as far back, saved when it was
    apart = [("5-0", 100.0), ("3-0", 100.1 + TOGETHER_SECONDS), ("bad", 100.0)]
    assert take_resume_point(apart) == "3-0"
    assert apart == [("5-0", 100.0)]
    assert take_resume_point(apart) == "5-0"
    assert take_resume_point(apart) is None


async def test_a_reconnect_loop_keeps_a_bounded_number_of_points(live: Live) -> None:
    backplane = live.node.backplane
    (position,) = await post_ids(live, order("nobody", 0))
    await backplane.save_resume_points([("loop", "customer", position)] * (MAX_RESUME_POINTS + 50))
    taken = [(await backplane.start_position("loop", "customer"))[1] for _ in range(MAX_RESUME_POINTS + 10)]
    assert taken == [position] * MAX_RESUME_POINTS + [None] * 10


async def test_a_hook_that_connected_while_redis_was_down_still_leaves_a_point_when_it_drops(
    start_server: StartServer, redis: RedisServer
) -> None:
    """Its position could not be read at connect: it starts from the last event this process
    delivered, so a drop before its first pong is still resumed (the soak's hook clients missed
    the events posted right after its Redis restart)."""
    live = await start_server(make_settings(redis={"url": redis.url, "retry_after_seconds": 1}))
    (before,) = await post_ids(live, order("nobody", 0))

    async def delivered() -> bool:
        return bool(live.node.hub.position == before)

    await eventually(delivered)
    redis.pause()
    try:
        ws, connected = await live.ws_ready(token=make_token("outage"))  # after the read times out
    finally:
        redis.resume()
    assert connected["data"]["resumed"] is False
    seen = await post_ids(live, order("outage", 1))
    assert (await recv(ws, timeout=10))["id"] == seen[0]
    again, _, missed = await dropped_and_back(live, ws, "outage", 2)
    assert [frame["id"] for frame in await frames_until_quiet(again)] == seen + missed
    await again.close()


async def test_a_point_that_could_not_be_saved_while_redis_was_down_is_saved_once_it_is_back(
    start_server: StartServer, redis: RedisServer
) -> None:
    """The soak's hook clients that dropped just as its Redis came back were not resumed."""
    live = await start_server(make_settings(redis={"url": redis.url, "retry_after_seconds": 1}))
    ws, _ = await live.ws_ready(token=make_token("unsaved"))
    (seen,) = await post_ids(live, order("unsaved", 0))
    assert (await recv(ws))["id"] == seen
    await confirmed(live, ws, seen)  # (a ping answered: its point will be after ``seen``)
    redis.pause()
    try:
        drop(ws)
        await hub_empty(live)
        await asyncio.sleep(6)  # the save times out meanwhile
    finally:
        redis.resume()
    missed = await post_ids(live, order("unsaved", 1))
    again, connected = await live.ws_ready(token=make_token("unsaved"))
    assert connected["data"]["resumed"] is True, connected
    assert [frame["id"] for frame in await frames_until_quiet(again)] == missed
    await again.close()


async def test_a_client_that_sends_an_id_is_resumed_from_it_and_told_so(live: Live) -> None:
    ws, connected = await live.ws_ready(token=make_token("exact"))
    assert connected["data"]["resumed"] is False
    position = connected["data"]["lastEventId"]
    await ws.close()
    sent = await post_ids(live, order("exact", 0))
    again, connected = await live.ws_ready(token=make_token("exact"), lastEventId=position)
    assert connected["data"]["resumed"] is True and connected["data"]["lastEventId"] == position
    assert [frame["id"] for frame in await frames_until_quiet(again)] == sent
    await again.close()


async def test_resume_from_a_point_older_than_the_history_is_a_resync_and_not_resumed(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(history={"max_events": 3, **WINDOW}))
    ws, _ = await live.ws_ready(token=make_token("away"))
    drop(ws)
    await hub_empty(live)
    for n in range(150):  # far more than the history keeps, on either backplane
        await post_ids(live, {"events": [order("away", n), order("nobody", n)]})
    again, connected = await live.ws_ready(token=make_token("away"))
    assert connected["data"]["resumed"] is False
    assert await recv(again) == {"type": "resync", "data": {"reason": "history_expired"}}
    await again.close()


# --- Socket.IO -----------------------------------------------------------------------------------


async def test_socketio_client_that_stops_answering_pings_is_resumed(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    # Whole seconds: python-engineio advertises the interval in whole seconds.
    live = await start_server(settings_for(websocket={"heartbeat_seconds": 1}, history=WINDOW))
    silent = await live.sio_ws({"token": make_token("sleepy")})  # never answers the pings
    sent = await post_ids(live, order("sleepy", 0))
    await hub_empty(live)  # ping timeout
    await silent.close()
    sent += await post_ids(live, order("sleepy", 1))
    events = await sio_events(live, {"token": make_token("sleepy")}, 2)
    assert [args[-1] for _, args in events] == sent


async def sio_marked_after_resume(live: Live, user: str) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    """A raw Socket.IO client of ``user`` drops; an order is posted; it comes back without an id:
    the replay, then at once (not a ping interval later) a PING, answered here."""
    first = await live.sio_ws({"token": make_token(user)})
    drop(first)
    await hub_empty(live)
    (sent,) = await post_ids(live, order(user, 0))
    again = await live.sio_ws({"token": make_token(user)})
    replayed = await again.receive_str(timeout=3)
    assert replayed.startswith("42") and sent in replayed, replayed
    assert await again.receive_str(timeout=3) == "2"
    await again.send_str("3")
    return again, sent


async def test_a_socketio_client_resumed_from_a_point_is_pinged_at_once(live: Live) -> None:
    again, sent = await sio_marked_after_resume(live, "sio-marked")
    (conn,) = live.node.hub.connections

    async def marked() -> bool:
        return bool(conn.received_position() == sent)

    await eventually(marked)
    await again.close()


async def test_the_ping_out_of_turn_does_not_start_a_second_ping_cycle(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"heartbeat_seconds": 1}, history=WINDOW))
    again, _ = await sio_marked_after_resume(live, "sio-cycle")
    pings = 0
    deadline = asyncio.get_running_loop().time() + 3.5
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            packet = await again.receive_str(timeout=left)
        except TimeoutError:
            break
        assert packet == "2", packet
        pings += 1
        await again.send_str("3")
    assert 2 <= pings <= 4, pings  # one a second; two cycles would make about seven
    await again.close()


async def test_socketio_client_reconnecting_after_a_slow_consumer_close_gets_every_event(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"send_buffer_bytes": 65536}, history=WINDOW))
    slow = await live.sio_ws({"token": make_token("slow"), "stores": ["s1"]})  # then never reads
    sent: list[str] = []
    while any(not c.closed for c in live.node.hub.connections):
        assert len(sent) < 2000, "40 MB sent and the slow consumer is still open"
        sent += await post_ids(live, {"events": [product(len(sent) + i, "x" * 20_000) for i in range(10)]})
    await hub_empty(live)
    await slow.close()
    sent += await post_ids(live, product(len(sent)))
    events = await sio_events(live, {"token": make_token("slow"), "stores": ["s1"]}, len(sent))
    assert [args[-1] for _, args in events] == sent


async def test_socketio_client_dropped_by_the_network_is_resumed_with_a_pid_of_its_own(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(history=WINDOW))
    first = await live.sio({"token": make_token("roamer")})
    drop(first.client.eio.ws)  # SEAM: python-engineio's client's ``eio.ws`` (see above)
    await hub_empty(live)
    sent = await post_ids(live, order("roamer", 0))
    ws = await live.session.ws_connect(f"{live.base}/socket.io/?EIO=4&transport=websocket", autoclose=False)
    assert (await ws.receive_str(timeout=3)).startswith("0")
    await ws.send_str("40" + orjson.dumps({"token": make_token("roamer")}).decode())
    connected = orjson.loads((await ws.receive_str(timeout=3))[2:])
    assert connected["pid"]  # defect: a resumed session had pid ""
    event = await ws.receive_str(timeout=3)
    assert orjson.loads(event[2:])[-1] == sent[0]
    await ws.close()


async def test_no_resume_after_a_socketio_transport_closed_by_the_client_with_1000(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(history=WINDOW))
    ws = await live.sio_ws({"token": make_token("closer")})
    await ws.close()  # WebSocket close 1000, no Socket.IO DISCONNECT: the tab was closed
    await hub_empty(live)
    await post_ids(live, order("closer", 0))
    assert await sio_events(live, {"token": make_token("closer")}, 0) == []


async def test_socketio_sessions_resuming_by_last_event_id_each_get_a_pid_of_their_own(live: Live) -> None:
    ws, connected = await live.ws_ready(token=make_token("exact"))
    position = connected["data"]["lastEventId"]
    await ws.close()
    pids = []
    for _ in range(2):
        raw = await live.session.ws_connect(
            f"{live.base}/socket.io/?EIO=4&transport=websocket", autoclose=False
        )
        assert (await raw.receive_str(timeout=3)).startswith("0")
        await raw.send_str(
            "40" + orjson.dumps({"token": make_token("exact"), "lastEventId": position}).decode()
        )
        pids.append(orjson.loads((await raw.receive_str(timeout=3))[2:])["pid"])
        await raw.close()
    assert all(pids) and pids[0] != pids[1], pids  # defect: both were "" (one shared session key)


async def test_no_resume_after_a_close_frame_without_a_code(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    """A browser's ``ws.close()`` sends a close frame with no code (1005): the client's own close."""
    from tests.test_websocket_frames import CLOSE, client_frame, raw_connect

    live = await start_server(settings_for(history=WINDOW))
    raw = await raw_connect(live, f"/api/ws?token={make_token('tab')}")
    assert (await raw.message())["type"] == "connected"
    raw.send(client_frame(CLOSE, b""))
    await hub_empty(live)
    raw.writer.close()
    await post_ids(live, order("tab", 0))
    await comes_back_fresh(live, "tab")
