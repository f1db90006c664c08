"""socket.io-client's in-band token refresh (contract §5 and §8).

Needs the identity branch (issue 13: token expiry and ``refresh``); it fails without it.
"""

from __future__ import annotations

import asyncio
import time

from tests.clients import Live, make_token
from tests.node_remote import NodeSioClient

USER = "refresh-user"
STORE_EVENT = {"type": "store_updated", "data": {"storeId": "s1", "store": {}}}


async def test_refresh_ack_carries_the_new_exp_and_keeps_the_connection_past_the_old_one(live: Live) -> None:
    old_exp = int(time.time()) + 3
    client = await NodeSioClient.start(
        live.base, transports=["websocket"], auth={"token": make_token(USER, exp=old_exp)}, reconnection=False
    )
    try:
        await client.next("connect")
        new_exp = int(time.time()) + 3600
        assert await client.emit("refresh", {"token": make_token(USER, exp=new_exp)}) == [
            {"ok": True, "exp": new_exp}
        ]
        await asyncio.sleep(max(0.0, old_exp + 1.5 - time.time()))  # past the first token's exp
        status, answer = await live.post(STORE_EVENT)
        assert status == 202, answer
        assert await client.events(1) == [("store_updated", [STORE_EVENT["data"], answer["ids"][0]])]
        assert not [m for m in client.seen if m["on"] == "disconnect"], client.seen
    finally:
        await client.close()


async def test_without_refresh_the_connection_ends_at_exp_as_final(live: Live) -> None:
    client = await NodeSioClient.start(
        live.base, transports=["websocket"], auth={"token": make_token(USER, exp=int(time.time()) + 2)}
    )
    try:
        await client.next("connect")
        disconnected = await client.next("disconnect", timeout=10)
        # A Socket.IO DISCONNECT: socket.io-client does not reconnect (the app must get a new token).
        assert disconnected["reason"] == "io server disconnect", disconnected
    finally:
        await client.close()


async def test_refresh_without_a_token_is_a_bad_request(live: Live) -> None:
    client = await NodeSioClient.start(live.base, transports=["websocket"], auth={"token": make_token(USER)})
    try:
        await client.next("connect")
        [answer] = await client.emit("refresh", {})
        assert answer["ok"] is False and answer["error"] == "bad_request" and answer["message"], answer
    finally:
        await client.close()
