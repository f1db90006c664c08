"""A process's tail of the Redis stream must never fall behind the history silently.

The stream keeps ``history.max_events`` entries. A process whose tail is further behind than that
would read on from the first entry still kept, and its clients would never get the ones trimmed
in between. So a process that publishes waits for its own tail (it accepts events no faster than
it delivers them), and one that fell behind all the same (here: stopped with SIGSTOP while
another publishes) tells each of its clients to resync, then goes on live.

Real processes, a private redis-server, a history of 100 events; the 503 of a publish that waited
too long is provoked in-process, through a proxy that holds only the tail's connection to Redis.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

import server.backplane.redis as redis_backplane
from tests.clients import Live, make_token, recv
from tests.conftest import StartServer, make_settings
from tests.redis_server import RedisServer
from tests.test_cluster import running_cluster

HISTORY = 100


@pytest.fixture
def small_history() -> Iterator[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(f"history:\n  max_events: {HISTORY}\nredis:\n  retry_after_seconds: 1\n")
    yield handle.name
    os.unlink(handle.name)


@pytest.fixture
async def pair(redis: RedisServer, small_history: str) -> AsyncIterator[list[Live]]:
    async with running_cluster(redis, small_history) as nodes:
        try:
            yield nodes
        finally:
            for node in nodes:  # a test that failed midway may have left one stopped
                os.kill(node.app.process.pid, signal.SIGCONT)


def batch(first: int, count: int) -> dict[str, Any]:
    return {
        "events": [
            {"type": "store_updated", "data": {"storeId": "s1", "store": {}, "seq": first + i}}
            for i in range(count)
        ]
    }


async def lost_metric(node: Live) -> float:
    async with node.session.get(f"{node.base}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("realtime_backplane_events_lost_total "):
            return float(line.split()[1])
    raise AssertionError("realtime_backplane_events_lost_total is not exposed")


async def test_a_process_that_publishes_faster_than_its_tail_reads_waits_for_it(pair: list[Live]) -> None:
    """40 batches of 50 posted at once (2,000 events, twenty times the history): each is accepted,
    and a client gets every one of them, in order, without a resync."""
    node = pair[0]
    ws, _ = await node.ws_ready(token=make_token("u1"))
    posts, size = 40, 50
    answers = await asyncio.gather(*(node.post(batch(k * size, size)) for k in range(posts)))
    assert [status for status, _ in answers] == [202] * posts, answers
    ids = [event_id for _, body in answers for event_id in body["ids"]]
    frames = [await recv(ws, timeout=10) for _ in range(posts * size)]
    assert [frame["type"] for frame in frames] == ["store_updated"] * len(frames)  # no resync
    assert [frame["id"] for frame in frames] == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert await lost_metric(node) == 0
    await ws.close()


async def test_a_process_that_fell_behind_the_history_tells_its_clients_to_resync(pair: list[Live]) -> None:
    publisher, stopped = pair
    ws, _ = await stopped.ws_ready(token=make_token("u1"))
    sio = await stopped.sio({"token": make_token("u2")})
    status, _ = await publisher.post(batch(0, 1))
    assert status == 202
    assert (await recv(ws))["data"]["seq"] == 0
    await sio.wait_for(1)
    stopped_pid = stopped.app.process.pid
    os.kill(stopped_pid, signal.SIGSTOP)  # a stalled process: its tail reads nothing meanwhile
    try:
        for k in range(5):  # five times the history: what the stopped tail had not read is trimmed
            status, _ = await publisher.post(batch(1 + k * 100, 100))
            assert status == 202
    finally:
        os.kill(stopped_pid, signal.SIGCONT)
    # What its tail had read before it stopped (Redis answered its pending read), in order; then
    # the resync; then what is still in the stream, in order, up to the last event.
    before: list[int] = []
    while (frame := await recv(ws, timeout=5))["type"] == "store_updated":
        before.append(frame["data"]["seq"])
    assert frame == {"type": "resync", "data": {"reason": "history_expired"}}
    assert before == list(range(1, len(before) + 1))
    after: list[int] = []
    while not after or after[-1] != 500:
        frame = await recv(ws, timeout=5)
        assert frame["type"] == "store_updated", frame
        after.append(frame["data"]["seq"])
    assert after == list(range(after[0], 501)) and after[0] > len(before) + 1
    assert await lost_metric(stopped) == after[0] - len(before) - 1  # each event it never got
    status, _ = await publisher.post(batch(501, 1))
    assert status == 202
    assert (await recv(ws))["data"]["seq"] == 501
    await ws.close()
    # A Socket.IO client of the same process: the same, as Socket.IO events.
    received = [(name, args[0]) for name, args in await sio.wait_for(len(before) + len(after) + 3, timeout=5)]
    resync = received.index(("resync", {"reason": "history_expired"}))
    seqs = [data["seq"] for name, data in received if name == "store_updated"]
    assert seqs[:resync] == list(range(resync)) and seqs[resync:] == list(range(after[0], 502))
    await sio.close()


async def test_direct_publishers_entries_count_one_each_and_a_malformed_one_is_skipped(
    pair: list[Live], redis: RedisServer
) -> None:
    """The README's format for services that write to the stream themselves: entries without an
    ordinal count one each (no resync), and a malformed entry is skipped without stopping the tail."""
    node = pair[0]
    ws, _ = await node.ws_ready(token=make_token("u1"))
    status, _ = await node.post(batch(0, 1))
    assert status == 202
    direct = aioredis.from_url(redis.url)
    try:
        for seq in (1, 2):  # exactly the README's recipe
            async with direct.pipeline(transaction=True) as pipe:
                data = orjson.dumps({"storeId": "s1", "store": {}, "seq": seq})
                pipe.xadd(
                    "rt:events",
                    {"type": "store_updated", "data": data, "rooms": '["global"]'},
                    maxlen=10000,
                )
                pipe.incr("rt:events:added")
                await pipe.execute()
        async with direct.pipeline(transaction=True) as pipe:  # not JSON, and an ordinal that is not one
            pipe.xadd(
                "rt:events", {"type": "store_updated", "data": "{not json", "rooms": "[]", "n": "x" * 30}
            )
            pipe.incr("rt:events:added")
            await pipe.execute()
    finally:
        await direct.aclose()
    status, _ = await node.post(batch(3, 1))
    assert status == 202
    frames = [await recv(ws) for _ in range(4)]
    assert [(frame["type"], frame["data"]["seq"]) for frame in frames] == [
        ("store_updated", seq) for seq in range(4)
    ]
    assert await lost_metric(node) == 0
    await ws.close()


class TailHolder:
    """A TCP proxy to Redis that holds the tail's connection (the one that sends ``XREAD``): Redis
    keeps answering, but the process's tail reads nothing until ``release``. Real sockets both ways."""

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        self.released = asyncio.Event()  # clear: the tail's bytes wait
        self.released.set()
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> TailHolder:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    def hold(self) -> None:
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.redis.port)
        is_tail = False

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, to_redis: bool) -> None:
            nonlocal is_tail
            while data := await src.read(65536):
                is_tail = is_tail or (to_redis and b"XREAD" in data)
                if is_tail:
                    await self.released.wait()
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(
            pipe(reader, upstream_writer, True), pipe(upstream_reader, writer, False), return_exceptions=True
        )

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_publish_that_would_outrun_its_own_tail_waits_then_is_refused_with_503(
    redis: RedisServer, start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While this process's tail reads nothing, a publish that would put it more than half the
    history behind waits, then is answered 503 (nothing accepted); once the tail reads, it goes."""
    monkeypatch.setattr(redis_backplane, "CATCH_UP_SECONDS", 1.0)  # the wait before the 503: 5 s
    proxy = await TailHolder(redis).start()
    try:
        node = await start_server(
            make_settings(history={"max_events": HISTORY}, redis={"url": proxy.url, "retry_after_seconds": 1})
        )
        ws, _ = await node.ws_ready(token=make_token("u1"))
        proxy.hold()
        assert (await node.post(batch(0, 40)))[0] == 202  # the tail has read everything: it goes
        status, body = await node.post(batch(40, 40))  # 80 unread would be more than 50: waits
        assert status == 503 and body["error"] == "unavailable", body
        assert "slower than they are posted" in body["message"] and "nothing was accepted" in body["message"]
        proxy.release()
        assert [(await recv(ws))["data"]["seq"] for _ in range(40)] == list(range(40))
        assert (await node.post(batch(40, 40)))[0] == 202  # the refused batch, again: it goes
        assert [(await recv(ws))["data"]["seq"] for _ in range(40)] == list(range(40, 80))
        await ws.close()
    finally:
        await proxy.close()
