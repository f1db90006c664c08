"""A reconnect storm: hundreds of clients reconnecting at once each get everything they missed.

Through Redis, history reads went through redis-py's pool, which stops at 100 connections: in a
storm every client past the hundredth was told to resync (``history_unavailable``) and replayed
nothing. They now share one pipelined connection, and replays from one position share one read
(at 10,000 clients, each reading its own pages timed out into resyncs). The storm goes to a process
started after the events (as after a deploy), so none of them is in its memory and every replay
reads Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from server.backplane.base import parse_after
from server.backplane.redis import RedisBackplane
from server.config import Settings
from server.events import Event, EventId
from tests.clients import Live, make_token, recv
from tests.support import eventually


def order(user: str, n: int) -> dict[str, Any]:
    return {"type": "order_updated", "data": {"orderId": f"o-{user}-{n}", "order": {"userId": user}}}


CLIENTS = 250  # more than redis-py's pool held
MISSED = 30


async def replay_of(
    session: aiohttp.ClientSession, live: Live, user: str, last_event_id: str
) -> tuple[dict[str, Any], list[int]]:
    ws = await session.ws_connect(
        f"{live.base}/api/ws", params={"token": make_token(user), "lastEventId": last_event_id}
    )
    try:
        connected = await recv(ws, timeout=20)
        seqs = []
        for _ in range(MISSED):
            frame = await recv(ws, timeout=20)
            assert frame["type"] == "store_updated", frame  # not {"type": "resync", ...}
            seqs.append(frame["data"]["seq"])
    finally:
        await ws.close()
    return connected, seqs


async def test_every_client_of_a_reconnect_storm_replays_everything_it_missed(
    start_server: Callable[[Settings], Awaitable[Live]], settings_for: Callable[..., Settings], backplane: str
) -> None:
    live = await start_server(settings_for(node_name="before"))
    status, body = await live.post({"type": "store_updated", "data": {"storeId": "s1", "store": {}}})
    assert status == 202, body
    last_event_id = body["ids"][0]
    events = [
        {"type": "store_updated", "data": {"storeId": "s1", "store": {}, "seq": n}} for n in range(MISSED)
    ]
    status, body = await live.post({"events": events})
    assert status == 202, body
    if backplane == "redis":  # a fresh process: what these clients missed is only in Redis
        live = await start_server(settings_for(node_name="after"))
    # The test's own session holds at most 100 connections: the storm gets one without a limit.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(
            *(replay_of(session, live, f"storm{n}", last_event_id) for n in range(CLIENTS))
        )
    for connected, seqs in results:
        assert connected["type"] == "connected", connected
        assert connected["data"]["lastEventId"] == last_event_id
        assert seqs == list(range(MISSED))
    if backplane == "redis":
        # Replays from one position share one read of the stream: not one read per client.
        assert live.node.backplane.history_reads <= CLIENTS // 5, live.node.backplane.history_reads


@pytest.mark.parametrize("backplane", ["redis"])
async def test_a_client_sharing_a_read_that_ended_before_it_joined_gets_what_came_after_it(
    start_server: Callable[[Settings], Awaitable[Live]], settings_for: Callable[..., Settings]
) -> None:
    """A shared read can pass the stream's end before a later client joins its rooms; an event
    that the tail brought in between was neither in the read nor sent to that client live. It
    must still be replayed (the soak missed a few events this way after each restart)."""
    before = await start_server(settings_for(node_name="before"))
    ws, connected = await before.ws_ready(token=make_token("late"))
    position = connected["data"]["lastEventId"]
    await ws.close()
    status, body = await before.post(order("late", 0))
    assert status == 202, body
    first = body["ids"][0]
    live = await start_server(settings_for(node_name="after"))  # its tail starts after ``first``
    backplane = live.node.backplane
    assert isinstance(backplane, RedisBackplane)
    ended = await backplane._read_after(position, parse_after(position))  # the shared read, done
    shared: asyncio.Future[tuple[list[Event], EventId]] = asyncio.get_running_loop().create_future()
    backplane._reads_after[position] = shared  # ...but its answer not yet handed to its readers
    try:
        status, body = await live.post(order("late", 1))
        assert status == 202, body
        second = body["ids"][0]

        async def in_the_hub() -> bool:
            recent = live.node.hub.recent or ()
            return any(event.id == second for event in recent)

        await eventually(in_the_hub)  # it reached the hub: the new client is not in its rooms yet
        connecting = asyncio.ensure_future(live.ws_ready(token=make_token("late"), lastEventId=position))

        async def joined() -> bool:
            return bool(live.node.hub.connections)

        await eventually(joined)
        shared.set_result(ended)
        again, connected = await connecting
    finally:
        backplane._reads_after.pop(position, None)
    assert connected["data"]["resumed"] is True
    assert [(await recv(again))["id"] for _ in range(2)] == [first, second]
    await again.close()
