"""Staff rooms and an order's parties (contract §2, §6, §8): a store's verified staff and the driver
receive its orders; a customer who merely views the store never does, live or replayed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from tests.clients import ADMIN_KEY, Live, SioClient, make_token, no_message, recv
from tests.conftest import StartServer
from tests.process import ServerProcess
from tests.redis_server import RedisServer
from tests.session_service import SessionService, assert_no_secrets, cookie_header
from tests.support import assert_error, post_raw

pytestmark = pytest.mark.usefixtures("log_watch")

PARTIES = {"userId": "c1", "storeId": "s1", "driverId": "d1", "status": "ready"}
ORDER = {"type": "order_updated", "data": {"orderId": "o1", "order": PARTIES}}
MARKER = {"type": "store_updated", "data": {"storeId": "m", "store": {}}}

WS = aiohttp.ClientWebSocketResponse


async def post_order_then_marker(live: Live, order: dict[str, Any] = ORDER) -> tuple[str, str]:
    """Post the order, then a marker to everyone: whoever's first message is the marker never got
    the order (delivery keeps the order events were accepted in, on both backplanes)."""
    status, answer = await live.post(order)
    assert status == 202, answer
    status, marker = await live.post(MARKER)
    assert status == 202, marker
    return answer["ids"][0], marker["ids"][0]


async def ws_gets(ws: WS, *types: str) -> None:
    assert [(await recv(ws))["type"] for _ in types] == list(types)


async def sio_gets(client: SioClient, *types: str) -> None:
    events = await client.wait_for(len(types))
    assert [name for name, _ in events] == list(types), events
    client.events.clear()


async def test_an_order_reaches_its_customer_its_stores_staff_and_its_driver_and_nobody_else(
    live: Live,
) -> None:
    merchant, connected = await live.ws_ready(token=make_token("m1", "merchant", stores=["s1", "s9"]))
    assert {"staff:s1", "staff:s9"} <= set(connected["data"]["rooms"]), connected
    merchant_sio = await live.sio({"token": make_token("m2", "merchant", stores=["s1"])})
    merchant_polling = await live.sio({"token": make_token("m2", "merchant", stores=["s1"])}, ["polling"])
    other_merchant, _ = await live.ws_ready(token=make_token("m3", "merchant", stores=["s2"]))
    driver, _ = await live.ws_ready(token=make_token("d1", "driver"))
    driver_sio = await live.sio({"token": make_token("d1", "driver")})
    customer, _ = await live.ws_ready(token=make_token("c1"))
    # Customers viewing the store, one with a stores claim (a customer is no staff).
    viewer, connected = await live.ws_ready(token=make_token("c2"), storeId="s1")
    assert "store:s1" in connected["data"]["rooms"], connected
    claimer, connected = await live.ws_ready(token=make_token("c3", "customer", stores=["s1"]), storeId="s1")
    assert not any(room.startswith("staff:") for room in connected["data"]["rooms"]), connected
    viewer_sio = await live.sio({"token": make_token("c2"), "stores": ["s1"]})
    other_driver_sio = await live.sio({"token": make_token("d2", "driver")})

    await post_order_then_marker(live)
    for ws in (merchant, driver, customer):
        await ws_gets(ws, "order_updated", "store_updated")
    for client in (merchant_sio, merchant_polling, driver_sio):
        await sio_gets(client, "order_updated", "store_updated")
    for ws in (other_merchant, viewer, claimer):
        await ws_gets(ws, "store_updated")
    for client in (viewer_sio, other_driver_sio):
        await sio_gets(client, "store_updated")
    for client in (merchant_sio, merchant_polling, driver_sio, viewer_sio, other_driver_sio):
        await client.close()


async def test_a_customer_viewing_the_store_never_gets_its_orders_replayed(live: Live) -> None:
    status, first = await live.post(MARKER)
    assert status == 202, first
    since = first["ids"][0]
    # While they are away: an order of s1, then a marker.
    await post_order_then_marker(live)
    viewer, _ = await live.ws_ready(token=make_token("c2"), storeId="s1", lastEventId=since)
    await ws_gets(viewer, "store_updated")
    await no_message(viewer, 0.2)
    viewer_sio = await live.sio({"token": make_token("c2"), "stores": ["s1"], "lastEventId": since})
    await sio_gets(viewer_sio, "store_updated")
    # The same replay does bring it to the store's staff.
    merchant, _ = await live.ws_ready(token=make_token("m1", "merchant", stores=["s1"]), lastEventId=since)
    await ws_gets(merchant, "order_updated", "store_updated")
    merchant_sio = await live.sio(
        {"token": make_token("m1", "merchant", stores=["s1"]), "lastEventId": since}
    )
    await sio_gets(merchant_sio, "order_updated", "store_updated")
    await viewer_sio.close()
    await merchant_sio.close()


async def test_nothing_a_client_sends_puts_it_in_a_staff_room(live: Live) -> None:
    ws, connected = await live.ws_ready(token=make_token("c1x"), stores="staff:s1,s1", storeId="staff:s1")
    assert set(connected["data"]["rooms"]) == {
        "user:c1x",
        "role:customer",
        "global",
        "store:staff:s1",
        "store:s1",
    }, connected
    await ws.send_json({"type": "subscribe", "data": {"storeId": "staff:s1"}})
    assert await recv(ws) == {"type": "subscribed", "data": {"room": "store:staff:s1"}}
    # A merchant's token without a stores claim is in no staff room either, whatever it asks.
    merchant, connected = await live.ws_ready(token=make_token("m0", "merchant"), storeId="s1")
    assert not any(room.startswith("staff:") for room in connected["data"]["rooms"]), connected
    client = await live.sio({"token": make_token("c1y"), "stores": ["staff:s1"]})
    assert await client.call("subscribe", {"storeId": "staff:s1"}) == {"ok": True, "room": "store:staff:s1"}
    await post_order_then_marker(
        live, {"type": "order_updated", "data": {"orderId": "o", "order": {"storeId": "s1"}}}
    )
    await ws_gets(ws, "store_updated")
    await ws_gets(merchant, "store_updated")
    await sio_gets(client, "store_updated")
    await client.close()


async def test_to_staff_names_staff_rooms(live: Live) -> None:
    s1, _ = await live.ws_ready(token=make_token("m1", "merchant", stores=["s1"]))
    s2, _ = await live.ws_ready(token=make_token("m2", "merchant", stores=["s2"]))
    viewer, _ = await live.ws_ready(token=make_token("c9"), storeId="s2")
    order = {**ORDER, "to": {"staff": ["s2"]}}  # replaces the default audience
    await post_order_then_marker(live, order)
    await ws_gets(s2, "order_updated", "store_updated")
    await ws_gets(s1, "store_updated")
    await ws_gets(viewer, "store_updated")
    status, answer = await live.post({**MARKER, "to": {"staff": ["s1"]}})
    assert status == 202, answer
    assert (await recv(s1))["id"] == answer["ids"][0]
    await no_message(s2, 0.1)


@pytest.mark.parametrize(
    "order",
    [
        {"userId": "a b", "customerId": "c1"},  # never silently sent to customerId instead
        {"userId": True, "customerId": "c1"},
        {"customerId": "x y"},
        {"userId": "c1", "storeId": "s 1"},
        {"userId": "c1", "driverId": ["d1"]},
        {"status": "no party at all"},
    ],
)
async def test_an_order_with_an_invalid_party_or_none_is_422_and_reaches_nobody(
    live: Live, order: dict[str, Any]
) -> None:
    customer, _ = await live.ws_ready(token=make_token("c1"))
    event = {"type": "order_updated", "data": {"orderId": "o1", "order": order}}
    status, _, body = await post_raw(live, orjson.dumps(event))
    assert_error(status, body, 422, "validation_failed")
    assert "to" in body["details"]["events"][0]["fields"], body
    status, answer = await live.post(MARKER)
    assert status == 202, answer
    await ws_gets(customer, "store_updated")


@pytest.mark.parametrize("parties", [{"storeId": "s1"}, {"driverId": "d1"}, {"customerId": 42}])
async def test_an_order_with_only_a_store_a_driver_or_a_numeric_customer_is_accepted(
    live: Live, parties: dict[str, Any]
) -> None:
    merchant, _ = await live.ws_ready(token=make_token("m1", "merchant", stores=["s1"]))
    driver, _ = await live.ws_ready(token=make_token("d1", "driver"))
    customer, _ = await live.ws_ready(token=make_token("42"))
    event = {"type": "order_updated", "data": {"orderId": "o1", "order": parties}}
    await post_order_then_marker(live, event)
    expected = {"storeId": merchant, "driverId": driver, "customerId": customer}
    for key, ws in expected.items():
        await ws_gets(ws, *(("order_updated",) if key in parties else ()), "store_updated")


async def test_staff_rooms_are_capped_at_the_stores_per_connection_limit(
    start_server: StartServer, settings_for: Callable[..., Any]
) -> None:
    live = await start_server(settings_for(websocket={"max_stores_per_connection": 2}))
    _, connected = await live.ws_ready(token=make_token("m1", "merchant", stores=["a", "b", "c"]))
    assert sorted(r for r in connected["data"]["rooms"] if r.startswith("staff:")) == ["staff:a", "staff:b"]


async def test_a_session_identified_merchant_joins_the_staff_rooms_its_session_lists(
    start_server: StartServer, settings_for: Callable[..., Any], session_service: SessionService
) -> None:
    live = await start_server(settings_for(env={"AUTH_SESSION_URL": session_service.url}))
    session_service.user("sess-CANARY-m", "m7", "merchant", ["s1"])
    ws = await live.session.ws_connect(
        f"{live.base}/api/ws?userId=m7&role=merchant", headers=cookie_header("sess-CANARY-m"), autoclose=False
    )
    connected = await recv(ws)
    assert "staff:s1" in connected["data"]["rooms"], connected
    client = SioClient()
    await client.client.connect(live.base, headers=cookie_header("sess-CANARY-m"), transports=["websocket"])
    await post_order_then_marker(live)
    await ws_gets(ws, "order_updated", "store_updated")
    await sio_gets(client, "order_updated", "store_updated")
    await client.close()
    await ws.close()


# --- two processes through Redis ------------------------------------------------------------------


@pytest.fixture
async def two_nodes(redis: RedisServer) -> AsyncIterator[tuple[list[Live], list[ServerProcess]]]:
    processes = [
        ServerProcess({"REDIS_URL": redis.url, "DYNO": f"node-{i}", "LOG_LEVEL": "info"}) for i in range(2)
    ]
    for process in processes:
        process.start()
    await asyncio.gather(*(asyncio.to_thread(p.wait_healthy) for p in processes))
    session = aiohttp.ClientSession()
    yield [Live(base=p.base, app=p, session=session, admin_key=ADMIN_KEY) for p in processes], processes
    await session.close()
    for process in processes:
        process.close()


async def test_staff_and_driver_delivery_across_two_processes_and_no_leak_to_viewers(
    two_nodes: tuple[list[Live], list[ServerProcess]],
) -> None:
    (a, b), processes = two_nodes
    merchant, _ = await a.ws_ready(token=make_token("m1", "merchant", stores=["s1"]))
    merchant_sio = await b.sio({"token": make_token("m2", "merchant", stores=["s1"])})
    driver, _ = await b.ws_ready(token=make_token("d1", "driver"))
    customer_sio = await a.sio({"token": make_token("c1")})
    viewer, _ = await b.ws_ready(token=make_token("c2"), storeId="s1")
    viewer_sio = await a.sio({"token": make_token("c3"), "stores": ["s1"]})
    await post_order_then_marker(b)
    await ws_gets(merchant, "order_updated", "store_updated")
    await ws_gets(driver, "order_updated", "store_updated")
    await sio_gets(merchant_sio, "order_updated", "store_updated")
    await sio_gets(customer_sio, "order_updated", "store_updated")
    await ws_gets(viewer, "store_updated")
    await sio_gets(viewer_sio, "store_updated")
    for client in (merchant_sio, customer_sio, viewer_sio):
        await client.close()
    for ws in (merchant, driver, viewer):
        await ws.close()
    for process in processes:
        process.close()
        assert "client connected" in process.stderr
        assert_no_secrets(process.stderr + process.stdout)
