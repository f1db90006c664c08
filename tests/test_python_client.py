"""python-socketio's AsyncClient, as a Python service or script would use it, on both transports.

A server restart (SIGTERM → WebSocket 1012, or the end of the long-polling session) must look to
it like a dropped connection, which it retries, and never like a final server disconnect. With
``auth`` as a function, each reconnect sends the last event id it saw and gets what it missed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import socketio

from tests.clients import make_token
from tests.process import RestartScene
from tests.redis_server import RedisServer


class ResumingClient:
    """An AsyncClient that reconnects by itself and asks for what it missed (``auth.lastEventId``)."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.client = socketio.AsyncClient(
            reconnection=True, reconnection_delay=0.2, reconnection_delay_max=0.5
        )
        self.received: list[tuple[dict[str, Any], str]] = []
        self.last_event_id: str | None = None
        self.connects = 0
        self.disconnect_reasons: list[Any] = []
        self.changed = asyncio.Event()

        @self.client.event
        async def connect() -> None:
            self.connects += 1
            self.changed.set()

        @self.client.event
        async def disconnect(reason: Any = None) -> None:
            self.disconnect_reasons.append(reason)
            self.changed.set()

        @self.client.on("store_updated")
        async def store_updated(data: dict[str, Any], event_id: str) -> None:
            self.received.append((data, event_id))
            self.last_event_id = event_id
            self.changed.set()

    def auth(self) -> dict[str, Any]:
        """Called by python-socketio at every (re)connect."""
        auth: dict[str, Any] = {"token": make_token("py-user")}
        if self.last_event_id is not None:
            auth["lastEventId"] = self.last_event_id
        return auth

    async def connect(self, base: str) -> None:
        await self.client.connect(base, auth=self.auth, transports=[self.transport], wait_timeout=5)

    async def until(self, check: Any, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_async_client_reconnects_after_a_server_restart_and_gets_what_it_missed(
    transport: str, redis: RedisServer
) -> None:
    client = ResumingClient(transport)
    async with RestartScene(redis.url) as scene:
        try:
            await client.connect(scene.base)
            ids = [await scene.post(1)]
            await client.until(lambda: len(client.received) == 1)

            scene.stop()
            await client.until(lambda: client.disconnect_reasons)
            await scene.stopped()
            # A dropped transport, which it retries; not SERVER_DISCONNECT, after which it gives up.
            assert client.disconnect_reasons == [socketio.AsyncClient.reason.TRANSPORT_ERROR]
            ids += [await scene.post(seq) for seq in (2, 3)]
            await scene.start_again()
            await client.until(lambda: client.connects == 2)
            ids.append(await scene.post(4))
            await client.until(lambda: len(client.received) >= 4)
            assert [data["seq"] for data, _ in client.received] == [1, 2, 3, 4]
            assert [event_id for _, event_id in client.received] == ids
            assert client.client.transport() == transport
        finally:
            await client.client.disconnect()
