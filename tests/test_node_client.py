"""The official JavaScript socket.io-client (from the npm registry) against our server.

Runs whenever ``node`` is on PATH; CI sets REQUIRE_NODE=1 so that it can never be skipped there.
Most tests drive the client through tests/node_remote.py: it prints what it sees, the test posts
events and restarts servers in between.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.clients import Live, every_type, make_token
from tests.node_remote import NODE_DIR, NodeSioClient, require_node
from tests.process import RestartScene
from tests.redis_server import RedisServer

USER = "node-user"

EVERY_TYPE = every_type(USER)

TRANSPORTS = {
    "websocket": {"transports": ["websocket"]},
    "polling-then-upgrade": {"transports": ["polling", "websocket"]},
}


async def test_official_client_recovers_missed_events(start_server, settings_for) -> None:
    require_node()
    live: Live = await start_server(settings_for(env={"AUTH_INSECURE": "1"}))
    process = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "recovery.js"),
        live.base,
        live.admin_key or "",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, (stdout.decode(), stderr.decode())
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    assert result["recovered"] is True and result["firstRecovered"] is False
    assert result["seqs"] == [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_token_client_receives_every_event_type_with_data_and_id_and_gets_acks(
    transport: str, live: Live
) -> None:
    client = await NodeSioClient.start(live.base, auth={"token": make_token(USER)}, **TRANSPORTS[transport])
    try:
        opened = await client.next("open")
        assert opened["transport"] == transport.split("-")[0]
        connected = await client.next("connect")
        assert connected["recovered"] is False
        if transport == "polling-then-upgrade":
            assert (await client.seen_one("upgrade"))["transport"] == "websocket"

        assert await client.emit("subscribe", {"storeId": "s1"}) == [{"ok": True, "room": "store:s1"}]
        status, answer = await live.post({"events": EVERY_TYPE})
        assert status == 202, answer
        received = await client.events(len(EVERY_TYPE))
        # Each event as (data, id): the event id last, as socket.io-client's recovery reads it.
        assert received == [
            (event["type"], [event["data"], event_id])
            for event, event_id in zip(EVERY_TYPE, answer["ids"], strict=True)
        ]

        assert await client.emit("unsubscribe", {"storeId": "s1"}) == [{"ok": True, "room": "store:s1"}]
        status, answer = await live.post({"events": [EVERY_TYPE[2], EVERY_TYPE[1]]})
        assert status == 202, answer
        # The product event went to store:s1 only: the first thing to arrive is the global one.
        assert await client.events(1) == [("store_updated", [EVERY_TYPE[1]["data"], answer["ids"][1]])]

        [refusal] = await client.emit("subscribe", {"storeId": ""})
        assert refusal["ok"] is False and refusal["error"] == "bad_request" and refusal["message"], refusal
    finally:
        await client.close()


OTHER_SECRET = "another-secret-long-enough-for-hs256"
REFUSALS = [
    ("no token", {}, "unauthorized"),
    ("bad signature", {"token": make_token(USER, secret=OTHER_SECRET)}, "unauthorized"),
    ("role not allowed", {"token": make_token(USER, role="pirate")}, "forbidden"),
    ("stores not a list", {"token": make_token(USER), "stores": "s1"}, "bad_request"),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("auth", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
async def test_refused_connect_shows_the_contract_message(
    transport: str, auth: dict[str, Any], message: str, live: Live
) -> None:
    client = await NodeSioClient.start(live.base, auth=auth, reconnection=False, **TRANSPORTS[transport])
    try:
        refused = await client.next("connect_error")
        assert refused["message"] == message, refused
        assert isinstance(refused["data"]["reason"], str), refused  # the server's human-readable reason
        assert not [m for m in client.seen if m["on"] == "connect"], client.seen
    finally:
        await client.close()


# --- a real restart: SIGTERM, 1012, a new process on the same port -------------------------------


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_reconnects_by_itself_after_a_server_restart_and_recovers_what_it_missed(
    transport: str, redis: RedisServer
) -> None:
    """Process A serves the client; B (same Redis) takes the events posted while A is down."""
    client: NodeSioClient | None = None
    async with RestartScene(redis.url) as scene:
        try:
            client = await NodeSioClient.start(
                scene.base,
                auth={"token": make_token(USER)},
                transports=[transport],
                reconnectionDelay=100,
                reconnectionDelayMax=300,
            )
            assert (await client.next("connect"))["recovered"] is False
            ids = [await scene.post(seq) for seq in (1, 2, 3)]
            await client.events(3)

            scene.stop()
            disconnected = await client.next("disconnect")
            # Not "io server disconnect", which socket.io-client takes as final.
            assert disconnected["reason"] in ("transport close", "transport error"), disconnected
            await scene.stopped()
            ids += [await scene.post(seq) for seq in (4, 5, 6)]
            await scene.start_again()
            reconnected = await client.next("connect", timeout=15)
            assert reconnected["recovered"] is True, client.seen
            ids.append(await scene.post(7))
            await client.events(4)
            received = client.all_events()
            assert [args[0]["seq"] for _, args in received] == [1, 2, 3, 4, 5, 6, 7], received
            assert [args[1] for _, args in received] == ids
        finally:
            if client is not None:
                await client.close()
