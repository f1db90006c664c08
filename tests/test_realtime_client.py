"""realtime_client against the real server: results, typed errors, and retries that never deliver twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from realtime_client import (
    AsyncPublisher,
    Event,
    Publisher,
    RequestRejected,
    RetryPolicy,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from tests.clients import ADMIN_KEY, Live, make_token, recv
from tests.conftest import StartServer, make_settings
from tests.process import ServerProcess
from tests.redis_server import RedisServer, free_port

STORE_DATA = {"storeId": "s1", "store": {"name": "Pizza"}}
FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05)


@pytest.fixture
async def live(start_server: StartServer) -> Live:
    return await start_server(make_settings())


async def frames_until_marker(live: Live, ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Every event ``ws`` receives before a marker posted now: what was delivered, each time."""
    status, marker = await live.post({"type": "store_updated", "data": {"storeId": "m", "store": {}}})
    assert status == 202, marker
    frames: list[dict[str, Any]] = []
    while True:
        frame = await recv(ws, timeout=5)
        if frame["id"] == marker["ids"][0]:
            return frames
        frames.append(frame)


# --- results ------------------------------------------------------------------------------------


async def test_sync_publisher_returns_the_ids_clients_receive(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("u1"))

    def publish() -> tuple[str | None, list[str | None]]:
        with Publisher(live.base, ADMIN_KEY) as publisher:
            one = publisher.publish("store_updated", STORE_DATA)
            many = publisher.publish_many(
                [
                    {"type": "store_updated", "data": {"storeId": "s2", "store": {}}},
                    Event("order_updated", {"orderId": "o1", "order": {"userId": "u1"}}),
                    Event("store_updated", {"storeId": "s3", "store": {}}, to={"users": ["u2"]}),
                ]
            )
            assert many.accepted == 3 and many.stale == []
            return one, many.ids

    one, many = await asyncio.to_thread(publish)
    frames = await frames_until_marker(live, ws)
    assert [(f["type"], f["id"]) for f in frames] == [
        ("store_updated", one),
        ("store_updated", many[0]),
        ("order_updated", many[1]),
    ]
    assert frames[0]["data"] == STORE_DATA


async def test_async_publisher_returns_the_ids_clients_receive(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("u1"))
    async with AsyncPublisher(live.base, ADMIN_KEY) as publisher:
        one = await publisher.publish("order_updated", {"orderId": "o1", "order": {}}, to={"users": ["u1"]})
        many = await publisher.publish_many([Event("store_updated", STORE_DATA) for _ in range(2)])
    frames = await frames_until_marker(live, ws)
    assert [f["id"] for f in frames] == [one, *many.ids]


async def test_the_same_event_published_again_is_delivered_once(live: Live) -> None:
    """An ``Event`` keeps its idempotency key: publishing it again (as after an error) is harmless."""
    ws, _ = await live.ws_ready(token=make_token("u1"))
    events = [Event("store_updated", STORE_DATA), Event("store_updated", STORE_DATA)]
    assert events[0].idempotency_key != events[1].idempotency_key
    async with AsyncPublisher(live.base, ADMIN_KEY) as publisher:
        first = await publisher.publish_many(events)
        again = await publisher.publish_many(events)
        keyed = [await publisher.publish("store_updated", STORE_DATA, idempotency_key="k") for _ in range(2)]
    assert first.ids == again.ids and keyed[0] == keyed[1]
    assert [f["id"] for f in await frames_until_marker(live, ws)] == [*first.ids, keyed[0]]


async def test_publish_many_splits_into_requests_of_max_batch(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("u1"))
    events = [Event("store_updated", {"storeId": f"s{i}", "store": {}}) for i in range(5)]
    async with AsyncPublisher(live.base, ADMIN_KEY, max_batch=2) as publisher:
        result = await publisher.publish_many(events)
    assert result.accepted == 5 and len(result.ids) == 5
    frames = await frames_until_marker(live, ws)
    assert [f["data"]["storeId"] for f in frames] == [f"s{i}" for i in range(5)]


# --- typed errors -------------------------------------------------------------------------------


async def test_validation_failed_carries_the_422_details(live: Live) -> None:
    async with AsyncPublisher(live.base, ADMIN_KEY) as publisher:
        with pytest.raises(ValidationFailed) as caught:
            await publisher.publish_many([Event("store_updated", STORE_DATA), Event("store_updated", {})])
    error = caught.value
    assert error.status == 422 and error.code == "validation_failed"
    assert error.details["events"][0]["index"] == 1
    assert "data.storeId" in error.details["events"][0]["fields"]

    def sync() -> ValidationFailed:
        with Publisher(live.base, ADMIN_KEY) as publisher, pytest.raises(ValidationFailed) as caught:
            publisher.publish("no_such_type", {})
        return caught.value

    assert "no_such_type" in (await asyncio.to_thread(sync)).message


async def test_a_wrong_key_is_unauthorized_and_not_retried(live: Live) -> None:
    retries: list[Unavailable] = []
    policy = RetryPolicy(on_retry=lambda failure, _: retries.append(failure))
    async with AsyncPublisher(live.base, "wrong", retry=policy) as publisher:
        with pytest.raises(Unauthorized) as caught:
            await publisher.publish("store_updated", STORE_DATA)
    assert caught.value.status == 401 and retries == []


async def test_a_body_over_the_limit_is_rejected(start_server: StartServer) -> None:
    live = await start_server(make_settings(admin={"max_body_bytes": 200}))
    async with AsyncPublisher(live.base, ADMIN_KEY) as publisher:
        with pytest.raises(RequestRejected) as caught:
            await publisher.publish("store_updated", {**STORE_DATA, "pad": "x" * 300})
    assert caught.value.status == 413


def test_nothing_listening_is_unavailable_after_every_attempt() -> None:
    retries: list[float] = []
    policy = RetryPolicy(attempts=3, base=0.01, on_retry=lambda _, delay: retries.append(delay))
    url = f"http://127.0.0.1:{free_port()}"
    with Publisher(url, ADMIN_KEY, retry=policy) as publisher, pytest.raises(Unavailable) as caught:
        publisher.publish("store_updated", STORE_DATA)
    assert caught.value.status == 0 and "no answer" in caught.value.message
    assert len(retries) == 2


def test_backoff_grows_exponentially_with_full_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(base=0.1, cap=1.0)
    no_hint = Unavailable("down")
    for retry, ceiling in ((0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (6, 1.0)):
        delays = [policy.delay(retry, no_hint) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays), (retry, max(delays))
        assert max(delays) > ceiling / 2  # jittered over the whole range, not fixed
    hinted = Unavailable("down", retry_after=2)
    assert all(2 <= policy.delay(0, hinted) <= 2.1 for _ in range(50))
    assert RetryPolicy(max_retry_after=5).delay(0, Unavailable("", retry_after=3600)) <= 5.25


def test_a_url_without_http_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="http"):
        Publisher("localhost:3000", ADMIN_KEY)


# --- retries that never deliver twice -----------------------------------------------------------


class FlakyProxy:
    """A real TCP proxy in front of the server that spoils the first answer: ``drop`` forwards
    the request, then cuts the connection instead of answering (the server accepted the events,
    the client never hears so); ``hold`` keeps the answer back longer than the client waits."""

    def __init__(self, upstream: str, mode: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.mode = mode
        self.spoiled = 0
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        spoil = self.spoiled == 0

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, answers: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    if answers and spoil and self.spoiled == 0:
                        self.spoiled += 1
                        if self.mode == "hold":
                            await asyncio.sleep(2)
                        writer.transport.abort()
                        up_writer.close()
                        return
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def proxy_for(live: Live) -> AsyncIterator[Callable[[str], Any]]:
    proxies: list[FlakyProxy] = []

    async def make(mode: str) -> tuple[FlakyProxy, str]:
        proxy = FlakyProxy(live.base, mode)
        proxies.append(proxy)
        return proxy, await proxy.start()

    yield make
    for proxy in proxies:
        await proxy.close()


@pytest.mark.parametrize("mode", ["drop", "hold"])
@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_an_answer_lost_after_the_server_accepted_is_retried_and_delivered_once(
    live: Live, proxy_for: Callable[[str], Any], mode: str, flavour: str
) -> None:
    ws, _ = await live.ws_ready(token=make_token("u1"))
    proxy, url = await proxy_for(mode)
    retries: list[Unavailable] = []
    policy = RetryPolicy(attempts=3, base=0.01, on_retry=lambda failure, _: retries.append(failure))
    options: dict[str, Any] = {"retry": policy, "read_timeout": 0.5}
    if flavour == "sync":

        def publish() -> str | None:
            with Publisher(url, ADMIN_KEY, **options) as publisher:
                return publisher.publish("store_updated", STORE_DATA)

        event_id = await asyncio.to_thread(publish)
    else:
        async with AsyncPublisher(url, ADMIN_KEY, **options) as publisher:
            event_id = await publisher.publish("store_updated", STORE_DATA)
    assert proxy.spoiled == 1 and len(retries) == 1 and proxy.connections == 2
    assert [f["id"] for f in await frames_until_marker(live, ws)] == [event_id]


@pytest.fixture
def quick_retry_config() -> Iterator[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write("redis:\n  retry_after_seconds: 1\n")
    yield handle.name
    os.unlink(handle.name)


async def test_a_retry_across_a_redis_outage_delivers_exactly_once(
    redis: RedisServer, quick_retry_config: str
) -> None:
    server = ServerProcess(
        {"REDIS_URL": redis.url, "CONFIG_FILE": quick_retry_config, "LOG_LEVEL": "warning"}
    )
    retries: list[Unavailable] = []
    outage_seen = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_retry(failure: Unavailable, _: float) -> None:
        retries.append(failure)
        loop.call_soon_threadsafe(outage_seen.set)

    try:
        await asyncio.to_thread(server.start().wait_healthy)
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{server.base}/api/ws", params={"token": make_token("u1")})
            assert (await recv(ws))["type"] == "connected"
            redis.stop()

            def publish() -> str | None:
                policy = RetryPolicy(attempts=30, base=0.05, cap=0.5, on_retry=on_retry)
                with Publisher(server.base, ADMIN_KEY, retry=policy) as publisher:
                    return publisher.publish("store_updated", STORE_DATA)

            publishing = asyncio.create_task(asyncio.to_thread(publish))
            await asyncio.wait_for(outage_seen.wait(), 10)
            redis.start()
            event_id = await asyncio.wait_for(publishing, 60)
            assert retries and all(r.status == 503 and r.retry_after == 1 for r in retries), retries
            frame = await recv(ws, timeout=10)
            assert frame == {"type": "store_updated", "data": STORE_DATA, "id": event_id}
            # Nothing else arrives: the marker posted now is the next frame.
            async with session.post(
                f"{server.base}/api/v1/events",
                data=json.dumps({"type": "store_updated", "data": {"storeId": "m", "store": {}}}),
                headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
            ) as resp:
                marker = (await resp.json())["ids"][0]
            assert (await recv(ws, timeout=10))["id"] == marker
            await ws.close()
    finally:
        server.close()


def test_the_client_needs_nothing_from_the_server_package() -> None:
    """``realtime_client`` is copied into services on its own: it must not import ``server``."""
    import subprocess
    import sys

    from tests.process import REPO

    code = (
        "import sys, realtime_client\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('server', 'handlers')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done
