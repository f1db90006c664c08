"""Many processes act as one through Redis (real processes, a private redis-server)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from tests.clients import ADMIN_KEY, Live, make_token, recv, recv_close
from tests.process import ServerProcess
from tests.redis_server import RedisServer


@pytest.fixture
def config_file() -> Iterator[str]:
    """Short presence expiry, so a killed process is forgotten quickly."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write("redis:\n  presence_ttl_seconds: 1.5\n  retry_after_seconds: 1\n")
    yield handle.name
    os.unlink(handle.name)


@pytest.fixture
async def cluster(redis: RedisServer, config_file: str) -> AsyncIterator[list[Live]]:
    async with running_cluster(redis, config_file) as nodes:
        yield nodes


@contextlib.asynccontextmanager
async def running_cluster(redis: RedisServer, config_file: str, count: int = 2) -> AsyncIterator[list[Live]]:
    """``count`` server processes on ``redis`` (named node-0, node-1...), each ready."""
    processes = [
        ServerProcess(
            {"REDIS_URL": redis.url, "CONFIG_FILE": config_file, "DYNO": f"node-{i}", "LOG_LEVEL": "warning"}
        )
        for i in range(count)
    ]
    for process in processes:
        process.start()
    session = aiohttp.ClientSession()
    try:
        await asyncio.gather(*(asyncio.to_thread(p.wait_healthy) for p in processes))
        nodes = [Live(base=p.base, app=p, session=session, admin_key=ADMIN_KEY) for p in processes]
        await wait_until(lambda: all_ready(nodes), what="every process ready")
        yield nodes
    finally:
        await session.close()
        for process in processes:
            process.close()
            print(process.stderr[-3000:])  # shown by pytest when the test failed


async def all_ready(nodes: list[Live]) -> bool:
    for node in nodes:
        async with node.session.get(f"{node.base}/readyz") as resp:
            if resp.status != 200:
                return False
    return True


async def wait_until(check: Callable[[], Awaitable[Any]], what: str, limit: float = 10) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def store_event(seq: int) -> dict[str, Any]:
    return {"type": "store_updated", "data": {"storeId": "s1", "store": {}, "seq": seq}}


async def test_events_posted_anywhere_reach_every_client_once_in_one_order(cluster: list[Live]) -> None:
    a, b = cluster
    ws_a, _ = await a.ws_ready(token=make_token("u1"))
    ws_b, _ = await b.ws_ready(token=make_token("u2"))
    sio_a = await a.sio({"token": make_token("u3")})
    sio_b = await b.sio({"token": make_token("u4")}, transports=["polling"])
    total = 40
    published: list[str] = []

    async def post(seq: int) -> None:
        status, body = await cluster[seq % 2].post(store_event(seq))
        assert status == 202
        published.extend(body["ids"])

    await asyncio.gather(*(post(seq) for seq in range(total)))
    order = sorted(published, key=lambda i: tuple(map(int, i.split("-"))))
    for ws in (ws_a, ws_b):
        ids = [(await recv(ws))["id"] for _ in range(total)]
        assert ids == order  # everyone sees the cluster's single order, each event once
    for client in (sio_a, sio_b):
        events = await client.wait_for(total, timeout=5)
        assert [args[-1] for _, args in events] == order
        await client.close()


async def test_idempotency_key_is_honoured_across_processes(cluster: list[Live]) -> None:
    a, b = cluster
    ws, _ = await b.ws_ready(token=make_token("u1"))
    headers = {"Idempotency-Key": "order-77-ready"}
    first = await a.post(store_event(1), headers=headers)
    repeat = await b.post(store_event(1), headers=headers)
    assert first[0] == repeat[0] == 202 and first[1] == repeat[1]
    assert (await recv(ws))["id"] == first[1]["ids"][0]
    status, body = await a.post(store_event(2))
    assert status == 202
    assert (await recv(ws))["id"] == body["ids"][0]  # the next event, not the repeat


async def test_presence_stats_and_disconnect_span_every_process(cluster: list[Live]) -> None:
    a, b = cluster
    ws_a, _ = await a.ws_ready(token=make_token("alice"))
    sio_b = await b.sio({"token": make_token("alice")})
    bob, _ = await b.ws_ready(token=make_token("bob"))

    async def alice_connections() -> bool:
        counts = [(await node.get("/api/v1/presence/users/alice"))[1]["connections"] for node in cluster]
        return counts == [2, 2]

    await wait_until(alice_connections, "alice counted on both processes")
    status, stats = await a.get("/api/v1/stats")
    assert status == 200 and stats["connections"] == 3
    assert stats["byNode"] == {"node-0": 1, "node-1": 2}
    assert stats["byTransport"] == {"websocket": 2, "socketio": 1}

    status, body = await _post(b, "/api/v1/users/alice/disconnect")
    assert status == 200 and body == {"disconnected": 2}
    assert await recv_close(ws_a) == 4001
    await wait_until(lambda: _true(not sio_b.client.connected), "socket.io client disconnected")
    # bob, on the same process as one of alice's connections, is untouched
    _, event = await a.post(store_event(5))
    assert (await recv(bob))["id"] == event["ids"][0]


async def _true(value: bool) -> bool:
    return value


async def _post(node: Live, path: str) -> tuple[int, Any]:
    async with node.session.post(f"{node.base}{path}", headers=node.headers()) as resp:
        return resp.status, await resp.json()


async def test_killed_process_stops_being_counted(cluster: list[Live]) -> None:
    a, b = cluster
    on_a, _ = await a.ws_ready(token=make_token("carol"))
    on_b, _ = await b.ws_ready(token=make_token("carol"))

    async def carol(expected: int) -> bool:
        _, presence = await a.get("/api/v1/presence/users/carol")
        return bool(presence["connections"] == expected)

    await wait_until(lambda: carol(2), "carol on both processes")
    b.app.kill()  # SIGKILL: no clean-up runs
    await wait_until(lambda: carol(1), "the dead process's connection expiring", limit=5)
    status, stats = await a.get("/api/v1/stats")
    assert status == 200 and list(stats["byNode"]) == ["node-0"]
    assert not on_a.closed
    await on_b.close()


async def test_redis_outage_refuses_with_503_keeps_clients_and_recovers(
    cluster: list[Live], redis: RedisServer
) -> None:
    a, b = cluster
    ws_a, _ = await a.ws_ready(token=make_token("u1"))
    ws_b, _ = await b.ws_ready(token=make_token("u2"))
    accepted: dict[str, int] = {}  # event id -> seq
    refused = 0
    maybe_accepted: set[int] = set()  # seqs whose 503 said Redis failed while running the request
    stop = asyncio.Event()

    async def publisher() -> None:
        nonlocal refused
        seq = 0
        while not stop.is_set():
            status, body = await cluster[seq % 2].post(store_event(seq))
            if status == 202:
                accepted[body["ids"][0]] = seq
            else:
                assert status == 503 and body["error"] == "unavailable", body
                refused += 1
                if "may still be delivered" in body["message"]:
                    maybe_accepted.add(seq)
                else:
                    assert body["message"].endswith("nothing was accepted"), body
            seq += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(publisher())
    await asyncio.sleep(0.3)
    redis.stop()
    async with a.session.post(f"{a.base}/api/v1/events", json=store_event(-1), headers=a.headers()) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    await wait_until(lambda: _none_ready(cluster), "/readyz to answer 503")
    # Clients stay connected and served while Redis is away.
    await ws_a.send_json({"type": "ping"})
    received_a = await _drain_until_pong(ws_a)
    await asyncio.sleep(0.5)
    redis.start()
    await wait_until(lambda: all_ready(cluster), "both processes ready again", limit=15)
    await asyncio.sleep(0.5)
    stop.set()
    await task
    assert refused > 0
    received_b = await _drain(ws_b)
    later = await _drain(ws_a)
    assert not received_a.keys() & later.keys(), "delivered twice"
    received_a.update(later)
    for received in (received_a, received_b):
        missing = [i for i in accepted if i not in received]
        assert not missing, f"accepted but never delivered: {missing[:5]}"
        # Killed while running a publish, Redis may have passed the event on without answering
        # (its 503 says so); an event refused with "nothing was accepted" is never delivered.
        unexpected = {i: n for i, n in received.items() if i not in accepted and n not in maybe_accepted}
        assert not unexpected, unexpected


async def _none_ready(nodes: list[Live]) -> bool:
    for node in nodes:
        async with node.session.get(f"{node.base}/readyz") as resp:
            if resp.status == 200:
                return False
    return True


async def _drain_until_pong(ws: aiohttp.ClientWebSocketResponse) -> dict[str, int]:
    """Event id -> seq of the events received before the pong; a repeated id fails the test."""
    received: dict[str, int] = {}
    while True:
        frame = await recv(ws, timeout=5)
        if frame["type"] == "pong":
            return received
        assert frame["id"] not in received, f"delivered twice: {frame}"
        received[frame["id"]] = frame["data"]["seq"]


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> dict[str, int]:
    received: dict[str, int] = {}
    while True:
        try:
            frame = await recv(ws, timeout=1.0)
        except TimeoutError:
            return received
        assert frame["id"] not in received, f"delivered twice: {frame}"
        received[frame["id"]] = frame["data"]["seq"]


async def test_client_resumes_on_another_process_without_gap_or_repeat(cluster: list[Live]) -> None:
    a, b = cluster
    token = make_token("roamer")
    total = 60
    publisher_done = asyncio.Event()

    async def publish() -> None:
        for seq in range(total):
            status, _ = await cluster[seq % 2].post(store_event(seq))
            assert status == 202
            await asyncio.sleep(0.005)
        publisher_done.set()

    ws, connected = await a.ws_ready(token=token)
    last_id = connected["data"]["lastEventId"]
    task = asyncio.create_task(publish())
    seqs: list[int] = []
    hop = 0
    while len(seqs) < total:
        for _ in range(7):  # a few events, then the phone switches networks and dyno
            try:
                frame = await recv(ws, timeout=3)
            except TimeoutError:
                break
            seqs.append(frame["data"]["seq"])
            last_id = frame["id"]
            if len(seqs) == total:
                break
        await ws.close()
        hop += 1
        ws, connected = await cluster[hop % 2].ws_ready(token=token, lastEventId=last_id)
        assert connected["data"]["lastEventId"] == last_id
    await task
    await ws.close()
    assert seqs == list(range(total))
    sio = await b.sio({"token": token, "lastEventId": connected["data"]["lastEventId"]})
    await asyncio.sleep(0.3)
    assert sio.events == []  # nothing after the last id: nothing replayed twice
    await sio.close()


async def test_socketio_client_resumes_on_another_process_without_gap_or_repeat(cluster: list[Live]) -> None:
    a, _ = cluster
    token = make_token("roamer")
    total = 45
    ws, connected = await a.ws_ready(token=token)  # where a client that saw nothing resumes from
    last_id = connected["data"]["lastEventId"]
    await ws.close()

    async def publish() -> None:
        for seq in range(total):
            status, _ = await cluster[seq % 2].post(store_event(seq))
            assert status == 202
            await asyncio.sleep(0.005)

    task = asyncio.create_task(publish())
    seqs: list[int] = []
    hop = 0
    while len(seqs) < total:
        client = await cluster[hop % 2].sio({"token": token, "lastEventId": last_id})
        with contextlib.suppress(AssertionError):  # fewer arrived: resume from what did
            await client.wait_for(min(6, total - len(seqs)), timeout=3)
        await client.close()
        for _, args in client.events:
            seqs.append(args[0]["seq"])
            last_id = args[-1]
        hop += 1
    await task
    assert seqs == list(range(total))
