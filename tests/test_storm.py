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

from server.config import Settings
from tests.clients import Live, make_token, recv

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
