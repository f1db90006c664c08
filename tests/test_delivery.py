"""Events posted to the admin API reach exactly their audience, on both transports."""

from __future__ import annotations

import asyncio

from tests.clients import Live, make_token, no_message, recv


async def test_order_update_reaches_only_its_customer(live: Live) -> None:
    alice, _ = await live.ws_ready(token=make_token("alice"))
    bob, _ = await live.ws_ready(token=make_token("bob"))
    viewer, _ = await live.ws_ready(token=make_token("carol"), storeId="s1")
    alice_sio = await live.sio({"token": make_token("alice")})
    bob_sio = await live.sio({"token": make_token("bob"), "stores": ["s1"]})

    status, body = await live.post(
        {"type": "order_updated", "data": {"orderId": "o1", "order": {"userId": "alice", "status": "ready"}}}
    )
    assert status == 202 and body["accepted"] == 1

    frame = await recv(alice)
    assert frame == {
        "type": "order_updated",
        "data": {"orderId": "o1", "order": {"userId": "alice", "status": "ready"}},
        "id": body["ids"][0],
    }
    events = await alice_sio.wait_for(1)
    assert events == [
        (
            "order_updated",
            ({"orderId": "o1", "order": {"userId": "alice", "status": "ready"}}, body["ids"][0]),
        )
    ]
    await no_message(bob)
    await no_message(viewer)
    await asyncio.sleep(0.1)
    assert bob_sio.events == []
    await alice_sio.close()
    await bob_sio.close()


async def test_store_updated_reaches_everyone_once(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("u1"), storeId="s1")
    sio = await live.sio({"token": make_token("u2"), "stores": ["s1"]})
    status, body = await live.post(
        {
            "type": "store_availability_changed",
            "data": {"storeId": "s1", "isActive": False},
            "to": {"global": True, "stores": ["s1"]},
        }
    )
    assert status == 202
    assert (await recv(ws))["id"] == body["ids"][0]
    await no_message(ws)
    events = await sio.wait_for(1)
    await asyncio.sleep(0.2)
    assert len(sio.events) == 1 and events[0][0] == "store_availability_changed"
    await sio.close()


async def test_product_update_reaches_only_store_viewers(live: Live) -> None:
    viewer, _ = await live.ws_ready(token=make_token("u1"), stores="s1,s2")
    other, _ = await live.ws_ready(token=make_token("u2"), storeId="s3")
    sio_viewer = await live.sio({"token": make_token("u3")})
    assert await sio_viewer.call("subscribe", {"storeId": "s1"}) == {"ok": True, "room": "store:s1"}
    for event in (
        {"type": "product_updated", "data": {"storeId": "s1", "product": {"id": "p1", "price": 3}}},
        {
            "type": "product_availability_changed",
            "data": {"storeId": "s1", "productId": "p1", "available": False},
        },
    ):
        status, _ = await live.post(event)
        assert status == 202
        frame = await recv(viewer)
        assert frame["type"] == event["type"] and frame["data"] == event["data"]
    await no_message(other)
    events = await sio_viewer.wait_for(2)
    assert [name for name, _ in events] == ["product_updated", "product_availability_changed"]
    await sio_viewer.close()


async def test_seed_hook_url_and_frames_work_in_insecure_mode(start_server, settings_for) -> None:
    live = await start_server(settings_for(env={"AUTH_INSECURE": "1"}))
    ws = await live.ws(userId="42", role="customer")
    connected = await recv(ws)
    assert connected["type"] == "connected"
    assert connected["data"]["userId"] == "42" and "user:42" in connected["data"]["rooms"]
    status, _ = await live.post(
        {"type": "store_updated", "data": {"storeId": "s9", "store": {"name": "Pizza"}}}
    )
    assert status == 202
    frame = await recv(ws)
    assert set(frame) == {"type", "data", "id"}
    assert frame["type"] == "store_updated" and frame["data"] == {"storeId": "s9", "store": {"name": "Pizza"}}


async def test_mixed_batch_reaches_each_client_in_order_once(live: Live) -> None:
    """A batch addressed to different audiences: each client gets exactly its own, in id order."""
    alice, _ = await live.ws_ready(token=make_token("alice"), storeId="s1")
    bob, _ = await live.ws_ready(token=make_token("bob"))
    alice_sio = await live.sio({"token": make_token("alice"), "stores": ["s1"]})
    polling = await live.sio({"token": make_token("alice"), "stores": ["s1"]}, transports=["polling"])

    def order(user: str, n: int) -> dict[str, object]:
        return {"type": "order_updated", "data": {"orderId": f"o{n}", "order": {"userId": user}}}

    def product(store: str, n: int) -> dict[str, object]:
        return {"type": "product_updated", "data": {"storeId": store, "product": {"id": f"p{n}"}}}

    batch = [order("alice", 1), product("s1", 2), order("bob", 3), product("s2", 4)]
    # alice is in both rooms of this one: it must reach her once.
    batch.append(
        {
            "type": "store_updated",
            "data": {"storeId": "s1", "store": {}},
            "to": {"users": ["alice"], "stores": ["s1"]},
        }
    )
    batch += [product("s1", 6), order("alice", 7)]
    status, body = await live.post({"events": batch})
    assert status == 202
    ids = body["ids"]
    mine = [ids[i] for i in (0, 1, 4, 5, 6)]

    assert [(await recv(alice))["id"] for _ in mine] == mine
    await no_message(alice)
    assert [(await recv(bob))["id"] for _ in range(1)] == [ids[2]]
    await no_message(bob)
    for client in (alice_sio, polling):
        events = await client.wait_for(len(mine))
        assert [args[-1] for _, args in events] == mine
    await asyncio.sleep(0.2)
    assert len(alice_sio.events) == len(polling.events) == len(mine)
    await alice_sio.close()
    await polling.close()
