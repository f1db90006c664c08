"""Resume without id across real processes sharing Redis: after a restart (SIGTERM, 1012) and
after a kill (SIGKILL: the process saves nothing), the hook reconnecting to the other process
gets what it missed (contract §7)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp
import pytest

from server.events import parse_event_id
from tests.clients import Live, SioClient, make_token, no_message, recv, recv_close

# Two real processes sharing a private Redis: the cluster tests' fixtures.
from tests.test_cluster import cluster, config_file, wait_until  # noqa: F401


def order(user: str, n: int) -> dict[str, Any]:
    return {"type": "order_updated", "data": {"orderId": f"o-{user}-{n}", "order": {"userId": user}, "n": n}}


async def post_ids(node: Live, body: Any) -> list[str]:
    status, answer = await node.post(body)
    assert status == 202, answer
    ids: list[str] = answer["ids"]
    return ids


async def frames_until_quiet(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    frames = []
    while True:
        try:
            frames.append(await recv(ws, timeout=1.0))
        except TimeoutError:
            return frames


async def sio_ids(node: Live, user: str) -> list[str]:
    """python-socketio's AsyncClient as it reconnects by default: no position sent."""
    client = SioClient()
    await client.connect(node.base, {"token": make_token(user)}, None)
    await asyncio.sleep(1.0)
    await client.close()
    return [args[-1] for _, args in client.events]


async def clients_on(node: Live) -> tuple[aiohttp.ClientWebSocketResponse, SioClient]:
    ws, connected = await node.ws_ready(token=make_token("hook"))
    assert connected["data"]["resumed"] is False
    sio = SioClient()
    await sio.connect(node.base, {"token": make_token("sio")}, None)
    return ws, sio


async def check_resumed_on(survivor: Live, before: list[str], missed: list[str]) -> None:
    """Each client reconnects without an id: it gets every event it missed, and only its own."""
    ws, connected = await survivor.ws_ready(token=make_token("hook"))
    assert connected["data"]["resumed"] is True
    received = await frames_until_quiet(ws)
    assert all(frame["data"]["order"]["userId"] == "hook" for frame in received), received
    ids = [frame["id"] for frame in received]
    assert ids[-1:] == [missed[0]] and set(ids) <= {*before, missed[0]}, (ids, before, missed)
    await ws.close()
    ids = await sio_ids(survivor, "sio")
    assert ids[-1:] == [missed[1]] and set(ids) <= {*before, missed[1]}, (ids, before, missed)


@pytest.mark.parametrize("fault", ["restart", "kill"])
async def test_hook_reconnecting_to_the_other_process_gets_what_it_missed(
    cluster: list[Live], fault: str
) -> None:
    """A restart (SIGTERM: 1012, resume points saved) or a kill (SIGKILL: nothing runs at its
    end; its leases are what the others have)."""
    doomed, survivor = cluster
    ws, sio = await clients_on(doomed)
    before = await post_ids(survivor, {"events": [order("hook", 0), order("sio", 0)]})
    assert (await recv(ws))["id"] == before[0]
    await sio.wait_for(1)
    if fault == "restart":
        doomed.app.signal(signal.SIGTERM)
        assert await recv_close(ws) == 1012
        assert await doomed.app.wait_exit() == 0
    else:
        doomed.app.kill()
        assert await recv_close(ws) in (1006, None)
    await ws.close()
    missed = await post_ids(survivor, {"events": [order("hook", 1), order("sio", 1), order("other", 1)]})
    await check_resumed_on(survivor, before, missed)
    await sio.close()


async def test_no_resume_on_the_other_process_after_the_clients_own_close(cluster: list[Live]) -> None:
    first, other = cluster
    ws, sio = await clients_on(first)
    await ws.close()  # 1000
    await sio.close()  # Socket.IO DISCONNECT

    async def gone() -> bool:
        _, stats = await first.get("/api/v1/stats")
        return bool(stats["connections"] == 0)

    await wait_until(gone, "both clients gone")
    await asyncio.sleep(0.2)  # the lease is dropped in the turn after the close
    await post_ids(other, {"events": [order("hook", 0), order("sio", 0)]})
    again, connected = await other.ws_ready(token=make_token("hook"))
    assert connected["data"]["resumed"] is False
    await no_message(again)
    await again.close()
    assert await sio_ids(other, "sio") == []


async def test_versions_are_decided_once_across_two_real_processes(cluster: list[Live]) -> None:
    """Two processes, one Redis: the publish script decides each version once, atomically."""

    def versioned(version: int, **extra: Any) -> dict[str, Any]:
        data = {"orderId": "o-hook", "order": {"userId": "hook"}, "n": version}
        return {"type": "order_updated", "data": data, "version": version, **extra}

    assert (await cluster[0].post(versioned(5)))[1]["accepted"] == 1
    status, answer = await cluster[1].post(versioned(5))
    assert status == 202 and answer == {"accepted": 0, "ids": [None], "stale": [0]}, answer
    # Racing workers: whatever the interleaving, what is accepted goes up in the stream's order.
    results = await asyncio.gather(
        *(cluster[v % 2].post(versioned(v, idempotencyKey=f"k{v}")) for v in range(6, 40))
    )
    ids = [answer["ids"][0] for _, answer in results]
    kept = sorted((parse_event_id(i), v) for v, i in zip(range(6, 40), ids, strict=True) if i is not None)
    assert [v for _, v in kept] == sorted(v for _, v in kept) and kept[-1][1] == 39
    # A retry on the other process repeats the first answer, stale or not.
    for v, (_, first) in zip(range(6, 40), results, strict=True):
        _, again = await cluster[(v + 1) % 2].post(versioned(v, idempotencyKey=f"k{v}"))
        assert again == first


async def test_a_killed_processs_lease_resumes_each_of_its_connections_once(cluster: list[Live]) -> None:
    """Two tabs on a process that is killed: each reconnect elsewhere takes one of the lease's two
    connections; a later reconnect is not resumed from it again (it used to be, every time, for
    as long as the user kept reconnecting: the soak's replays grew after each kill)."""
    doomed, survivor = cluster
    tabs = [(await doomed.ws_ready(token=make_token("tabs")))[0] for _ in range(2)]
    before = await post_ids(survivor, order("tabs", 0))
    for tab in tabs:
        assert (await recv(tab))["id"] == before[0]
    doomed.app.kill()
    for tab in tabs:
        assert await recv_close(tab) in (1006, None)
        await tab.close()
    missed = await post_ids(survivor, order("tabs", 1))
    for _ in tabs:
        again, connected = await survivor.ws_ready(token=make_token("tabs"))
        assert connected["data"]["resumed"] is True
        ids = [frame["id"] for frame in await frames_until_quiet(again)]
        assert ids[-1:] == missed and set(ids) <= {*before, *missed}, ids
        await again.close()
    later, connected = await survivor.ws_ready(token=make_token("tabs"))
    assert connected["data"]["resumed"] is False
    await no_message(later)
    await later.close()
