"""Token lifetime (contract §3, §4, §5, §8): a connection lives as long as its token, unless the
client refreshes it in band; a refresh must name the same user and role."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import aiohttp
import jwt
import pytest

from server.app import AUTHENTICATOR
from server.identity.auth import Identity
from server.identity.lifetime import COMPACT_MIN, Lifetime
from tests.clients import JWT_SECRET, Live, make_token, no_message, recv, recv_close
from tests.conftest import StartServer
from tests.support import eventually, sio_refusal

pytestmark = pytest.mark.usefixtures("log_watch")


def short_token(user_id: str = "u1", role: str = "customer", seconds: int = 2, **claims: Any) -> str:
    """A token that expires within 1-2 s (``exp`` is whole seconds)."""
    return make_token(user_id, role, exp=int(time.time()) + seconds, **claims)


def closes(log: pytest.LogCaptureFixture, reason: str) -> int:
    return sum(1 for r in log.records if r.getMessage() == f"connection closed: {reason}")


async def sio_closed_final(raw: aiohttp.ClientWebSocketResponse, code: int) -> None:
    """Socket.IO's final close: a DISCONNECT packet, then the transport closes with ``code``."""
    assert await raw.receive_str(timeout=5) == "41"
    closing = await raw.receive(timeout=5)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closing
    assert raw.close_code == code


async def test_an_unrefreshed_token_closes_its_connection_4401_when_it_expires(
    live: Live, log_watch: pytest.LogCaptureFixture
) -> None:
    ws, _ = await live.ws_ready(token=short_token())
    raw = await live.sio_ws({"token": short_token()})
    client = await live.sio({"token": short_token()})
    keeps, _ = await live.ws_ready(token=make_token("u2"))  # an hour left: untouched
    assert await recv_close(ws) == 4401
    await sio_closed_final(raw, 4401)
    for _ in range(50):
        if client.disconnect_reasons:
            break
        await asyncio.sleep(0.1)
    # A DISCONNECT packet: socket.io-client's "io server disconnect", which it does not retry.
    assert client.disconnect_reasons == [client.client.reason.SERVER_DISCONNECT]
    assert closes(log_watch, "token expired") == 3
    await keeps.send_json({"type": "ping"})
    assert await recv(keeps) == {"type": "pong"}


async def test_a_refreshed_connection_outlives_its_first_token(live: Live) -> None:
    ws, _ = await live.ws_ready(token=short_token())
    client = await live.sio({"token": short_token()})
    fresh = make_token("u1")
    await ws.send_json({"type": "refresh", "data": {"token": fresh}})
    expected_exp = jwt.decode(fresh, options={"verify_signature": False})["exp"]
    assert await recv(ws) == {"type": "refreshed", "data": {"exp": expected_exp}}
    assert await client.call("refresh", {"token": fresh}) == {"ok": True, "exp": expected_exp}
    await asyncio.sleep(2.5)  # past the first tokens' expiry
    await ws.send_json({"type": "ping"})
    assert await recv(ws) == {"type": "pong"}
    assert await client.call("subscribe", {"storeId": "s1"}) == {"ok": True, "room": "store:s1"}
    assert client.client.connected
    # The refreshed expiry is the one that counts now.
    await ws.send_json({"type": "refresh", "data": {"token": short_token()}})
    assert (await recv(ws))["type"] == "refreshed"
    assert await recv_close(ws) == 4401
    await client.close()


REFUSED_REFRESHES: dict[str, Callable[[], str]] = {
    "another sub": lambda: make_token("u2"),
    "another role": lambda: make_token("u1", "driver"),
    "a bad signature": lambda: make_token("u1", secret="another-secret-that-is-long-enough-x"),
    "expired": lambda: make_token("u1", exp=int(time.time()) - 10),
    "not a JWT": lambda: "eyJnot-a-token",
    "no exp": lambda: jwt.encode({"sub": "u1", "role": "customer"}, JWT_SECRET, algorithm="HS256"),
}


@pytest.mark.parametrize("case", list(REFUSED_REFRESHES))
async def test_a_refresh_that_does_not_verify_or_names_someone_else_closes_4403(
    live: Live, log_watch: pytest.LogCaptureFixture, case: str
) -> None:
    token = REFUSED_REFRESHES[case]()
    ws, _ = await live.ws_ready(token=make_token("u1"))
    await ws.send_json({"type": "refresh", "data": {"token": token}})
    assert await recv_close(ws) == 4403
    raw = await live.sio_ws({"token": make_token("u1")})
    await raw.send_str('421["refresh",{"token":"' + token + '"}]')
    ack = await raw.receive_str(timeout=3)
    assert ack.startswith("431[") and '"ok":false' in ack and '"error":"forbidden"' in ack, ack
    await sio_closed_final(raw, 4403)
    # The log line says why (and never the token: the log watch checks).
    assert any(r.getMessage().startswith("connection closed: refresh refused") for r in log_watch.records)


@pytest.mark.parametrize("data", [None, {}, {"token": 7}, {"token": ""}, "eyJx"])
async def test_a_malformed_refresh_is_a_bad_request_and_the_connection_stays(live: Live, data: Any) -> None:
    ws, _ = await live.ws_ready(token=make_token("u1"))
    await ws.send_json({"type": "refresh", "data": data})
    answer = await recv(ws)
    assert answer["type"] == "error" and answer["data"]["code"] == "bad_request", answer
    client = await live.sio({"token": make_token("u1")})
    answer = await client.call("refresh", data)
    assert answer["ok"] is False and answer["error"] == "bad_request", answer
    await ws.send_json({"type": "ping"})
    assert await recv(ws) == {"type": "pong"}
    assert client.client.connected
    await client.close()


async def test_a_refresh_replaces_the_staff_rooms_with_the_new_tokens_stores(live: Live) -> None:
    ws, connected = await live.ws_ready(token=make_token("m1", "merchant", stores=["s1"]))
    assert "staff:s1" in connected["data"]["rooms"]
    client = await live.sio({"token": make_token("m1", "merchant", stores=["s1"])})
    moved = make_token("m1", "merchant", stores=["s2"])
    await ws.send_json({"type": "refresh", "data": {"token": moved}})
    assert (await recv(ws))["type"] == "refreshed"
    assert (await client.call("refresh", {"token": moved}))["ok"] is True
    for store in ("s1", "s2"):
        order = {"type": "order_updated", "data": {"orderId": f"o-{store}", "order": {"storeId": store}}}
        status, answer = await live.post(order)
        assert status == 202, answer
    assert (await recv(ws))["data"]["orderId"] == "o-s2"
    await no_message(ws, 0.2)
    events = await client.wait_for(1)
    await asyncio.sleep(0.2)
    assert [args[0]["orderId"] for _, args in events] == ["o-s2"], events
    await client.close()


async def test_a_token_without_exp_is_refused_unless_require_exp_is_off(
    start_server: StartServer, settings_for: Callable[..., Any]
) -> None:
    forever = jwt.encode({"sub": "u1", "role": "customer"}, JWT_SECRET, algorithm="HS256")
    live = await start_server(settings_for())
    ws = await live.ws(token=forever)
    assert await recv_close(ws) == 4401
    assert (await sio_refusal(live, {"token": forever}))["message"] == "unauthorized"
    relaxed = await start_server(settings_for(auth={"require_exp": False}))
    ws, _ = await relaxed.ws_ready(token=forever)
    client = await relaxed.sio({"token": forever})
    assert len(relaxed.app[AUTHENTICATOR].lifetime) == 0  # nothing scheduled: it never expires
    await ws.send_json({"type": "refresh", "data": {"token": forever}})
    assert await recv(ws) == {"type": "refreshed", "data": {"exp": None}}
    await client.close()
    await ws.close()


async def test_the_schedule_forgets_closed_connections(live: Live) -> None:
    lifetime = live.app[AUTHENTICATOR].lifetime
    for _ in range(3):
        ws, _ = await live.ws_ready(token=make_token("u1"))
        await ws.close()

    async def all_gone() -> bool:
        return not live.node.hub.connections

    await eventually(all_gone)
    assert len(lifetime) == 3  # entries of closed connections wait for their due time...
    lifetime.compact()  # ...or the next compaction (once they are half the heap), whichever is first
    assert len(lifetime) == 0


class _Watched:
    transport: ClassVar[str] = "websocket"

    def __init__(self) -> None:
        self.identity = Identity("u1", "customer", (), time.time() + 3600)
        self.closed = False

    def close(self, code: int, reason: str) -> None:
        self.closed = True


async def test_dead_entries_never_outnumber_live_ones_for_long() -> None:
    """A reconnect storm: thousands connect and go before their tokens expire. Their entries are
    dropped once they are half the heap, not kept until their due time."""
    lifetime = Lifetime(None, 0)
    try:
        conns = [_Watched() for _ in range(COMPACT_MIN * 2)]
        for conn in conns:
            lifetime.watch(conn)
        del conn, conns[1:]  # all but one freed: their entries are dead
        gc.collect()
        assert len(lifetime) == COMPACT_MIN * 2  # nothing is dropped until the next push...
        survivor = _Watched()
        lifetime.watch(survivor)
        assert len(lifetime) == 2  # ...which compacts: the two live ones are left
        conns.clear()
        lifetime.watch(_Watched())  # one dead entry: far too few to compact for
        assert len(lifetime) == 3
    finally:
        lifetime.stop()


async def test_a_closed_connection_is_freed_at_once_not_by_the_collector(live: Live) -> None:
    """Nothing keeps a closed connection: not the lifetime schedule until its token's expiry (it
    refers to connections weakly), not a cycle left for the collector's next full pass, nor a
    scheduled ping. After a deploy's reconnect storm, thousands would be held meanwhile
    (bench/churn_rss.py: the peak RSS, which the process never gives back)."""
    ws, _ = await live.ws_ready(token=make_token("u1"))
    client = await live.sio({"token": make_token("u2")})
    conns = list(live.node.hub.connections)
    assert len(conns) == 2
    refs = [weakref.ref(obj) for conn in conns for obj in (conn, *_parts(conn))]
    del conns
    gc.disable()
    try:
        await ws.close()
        await client.close()

        async def all_gone() -> bool:
            return not live.node.hub.connections

        await eventually(all_gone)
        await asyncio.sleep(0.2)  # the transports' last callbacks run
        assert [ref() for ref in refs] == [None] * len(refs)
    finally:
        gc.enable()


def _parts(conn: Any) -> list[Any]:
    """The Engine.IO socket under a Socket.IO connection (a plain WebSocket's has no weak
    references, for its size: its connection, which it refers to, stands for it here)."""
    return [] if conn.transport == "websocket" else [conn.eio_socket]
