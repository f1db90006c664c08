"""Explicit limits (config.yaml), each sent the input that triggers it."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable

import pytest
import socketio

from server.config import Settings
from tests.clients import ADMIN_KEY, Live, SioClient, make_token, recv, recv_close
from tests.conftest import StartServer
from tests.process import running_server
from tests.support import eventually


def store_event(n: int) -> dict[str, object]:
    return {"type": "store_availability_changed", "data": {"storeId": "s1", "isActive": n % 2 == 0}}


async def test_an_admin_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(
        settings_for(
            env={"ADMIN_API_KEYS": f"{ADMIN_KEY},second-key"},
            admin={"requests_per_second": 1, "requests_burst": 3},
        )
    )
    answers = [await live.post(store_event(n)) for n in range(4)]
    assert [status for status, _ in answers] == [202, 202, 202, 429]
    _, body = answers[3]
    assert body["error"] == "rate_limited" and body["message"] and body["details"] == {}
    async with live.session.get(f"{live.base}/api/v1/stats", headers=live.headers()) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 1
    other = Live(live.base, live.app, live.session, admin_key="second-key")
    assert (await other.post(store_event(0)))[0] == 202
    # A refused request costs nothing: after the wait, the key is served again.
    await asyncio.sleep(1.1)
    assert (await live.post(store_event(1)))[0] == 202


async def test_a_request_with_a_wrong_key_is_401_not_counted_against_any_key(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(admin={"requests_per_second": 1, "requests_burst": 2}))
    intruder = Live(live.base, live.app, live.session, admin_key="wrong")
    for n in range(5):
        assert (await intruder.post(store_event(n)))[0] == 401
    assert (await live.post(store_event(0)))[0] == 202


@pytest.fixture
def backplane() -> str:
    return "memory"


async def test_an_http_connection_trickling_its_headers_is_closed_after_the_idle_timeout() -> None:
    """Slowloris: a header line every half second never completes a request."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
        config.write("http_idle_timeout_seconds: 1\n")
    try:
        with running_server({"CONFIG_FILE": config.name}) as server:
            host, port = server.base.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /api/ws HTTP/1.1\r\nHost: x\r\n")
            closed = False
            for i in range(20):
                await asyncio.sleep(0.5)
                try:
                    writer.write(f"X-Slow-{i}: 1\r\n".encode())
                    await writer.drain()
                except ConnectionError:
                    closed = True
                    break
                if reader.at_eof() or writer.is_closing():
                    closed = True
                    break
                try:
                    if await asyncio.wait_for(reader.read(1), 0.01) == b"":
                        closed = True
                        break
                except TimeoutError:
                    pass
            assert closed, "the trickling connection is still open after 10 s"
            writer.close()
    finally:
        os.unlink(config.name)


async def test_beyond_max_connections_new_clients_get_1013_and_existing_ones_are_untouched(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"max_connections": 2}))
    first, _ = await live.ws_ready(token=make_token("u1"))
    second = await live.sio({"token": make_token("u2")})
    refused = await live.ws(token=make_token("u3"))
    assert await recv_close(refused) == 1013
    client = SioClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(live.base, {"token": make_token("u4")}, None)
    assert client.connect_error["message"] == "unavailable"
    assert len(live.node.hub.connections) == 2
    await first.send_str('{"type":"ping"}')
    assert await recv(first) == {"type": "pong"}
    assert second.client.connected
    await first.close()
    await second.close()


async def test_beyond_max_connections_per_user_the_oldest_are_closed_4008(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(websocket={"max_connections_per_user": 2}))
    oldest, _ = await live.ws_ready(token=make_token("u1"))
    oldest_sio = await live.sio({"token": make_token("u1")})
    other_user, _ = await live.ws_ready(token=make_token("u2"))
    newest, _ = await live.ws_ready(token=make_token("u1"))  # third of u1: the oldest goes
    assert await recv_close(oldest) == 4008
    newer_still, _ = await live.ws_ready(token=make_token("u1"))  # fourth: the Socket.IO one goes

    async def sio_kicked() -> bool:
        return not oldest_sio.client.connected

    await eventually(sio_kicked, within=5)
    assert oldest_sio.disconnect_reasons == ["server disconnect"]  # a DISCONNECT: final, no reconnect
    assert not oldest_sio.events  # a DISCONNECT is not an event
    status, _ = await live.post(
        {"type": "order_updated", "data": {"orderId": "o1", "order": {"userId": "u1"}}}
    )
    assert status == 202
    assert (await recv(newest))["type"] == "order_updated"
    assert (await recv(newer_still))["type"] == "order_updated"
    await other_user.send_str('{"type":"ping"}')
    assert await recv(other_user) == {"type": "pong"}
    for ws in (newest, newer_still, other_user):
        await ws.close()
