"""Helpers shared by the contract tests: raw admin requests, error-shape checks, waiting, raw clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import socketio

from tests.clients import Live, SioClient, make_token, recv

ERROR_KEYS = {"error", "message", "details"}


async def request(
    live: Live,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    admin: bool = True,
) -> tuple[int, dict[str, str], Any]:
    """Any HTTP request to the server under test: status, headers and the JSON (or text) answer."""
    sent = {**(live.headers() if admin else {}), **(headers or {})}
    async with live.session.request(method, f"{live.base}{path}", data=body, headers=sent) as resp:
        raw = await resp.read()
        try:
            answer: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            answer = raw.decode(errors="replace")
        return resp.status, dict(resp.headers), answer


async def post_raw(
    live: Live, body: bytes, content_type: str | None = "application/json", **headers: str
) -> tuple[int, dict[str, str], Any]:
    sent = dict(headers)
    if content_type is not None:
        sent["Content-Type"] = content_type
    return await request(live, "POST", "/api/v1/events", body=body, headers=sent)


def assert_error(status: int, body: Any, expected_status: int, code: str | None = None) -> dict[str, Any]:
    """The contract's error shape: ``{"error": CODE, "message": "...", "details": {...}}``."""
    assert status == expected_status, (status, body)
    assert isinstance(body, dict) and set(body) == ERROR_KEYS, body
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["message"], str) and body["message"], body
    assert isinstance(body["details"], dict), body
    if code is not None:
        assert body["error"] == code, body
    return body


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0, step: float = 0.02) -> None:
    """Poll ``check`` until it holds (delivery on the Redis backplane is asynchronous)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


class Watchers:
    """One connected client of each transport per user, to prove that something was NOT delivered."""

    def __init__(self) -> None:
        self.ws: list[aiohttp.ClientWebSocketResponse] = []
        self.sio: list[SioClient] = []

    @classmethod
    async def open(cls, live: Live, users: dict[str, list[str]]) -> Watchers:
        """``users``: user id → stores it views. Every client is also in ``global`` and its role room."""
        watchers = cls()
        for user_id, stores in users.items():
            query = {"token": make_token(user_id)}
            if stores:
                query["stores"] = ",".join(stores)
            ws, _ = await live.ws_ready(**query)
            watchers.ws.append(ws)
            watchers.sio.append(await live.sio({"token": make_token(user_id), "stores": stores}))
        return watchers

    async def assert_nothing(self, live: Live) -> None:
        """Nothing was delivered: the first thing every watcher receives is a marker posted now.

        Delivery keeps the order events were accepted in (the memory backplane delivers before the
        POST is answered, Redis through one ordered stream), so anything the refused request had let
        through would arrive before the marker. No sleeping needed.
        """
        assert all(client.events == [] for client in self.sio), [c.events for c in self.sio]
        marker = {"storeId": "m", "store": {}}
        status, answer = await live.post({"type": "store_updated", "data": marker})
        assert status == 202, answer
        for ws in self.ws:
            frame = await recv(ws)
            assert frame == {"type": "store_updated", "data": marker, "id": answer["ids"][0]}, frame
        for client in self.sio:
            events = await client.wait_for(1)
            assert [(name, args[0]) for name, args in events] == [("store_updated", marker)], events
            client.events.clear()

    async def drain(self, count: int) -> None:
        """Every watcher receives ``count`` events (an accepted request's), then starts afresh."""
        for ws in self.ws:
            for _ in range(count):
                await recv(ws)
        for client in self.sio:
            await client.wait_for(count)
            client.events.clear()

    async def close(self) -> None:
        for ws in self.ws:
            await ws.close()
        for client in self.sio:
            await client.close()


async def sio_refusal(live: Live, auth: dict[str, Any] | None = None, **connect: Any) -> Any:
    """Connect with python-socketio and expect a refusal; the CONNECT_ERROR data it got."""
    client = SioClient()
    try:
        await client.client.connect(
            live.base,
            auth=auth,
            transports=connect.pop("transports", ["websocket"]),
            wait_timeout=5,
            **connect,
        )
    except socketio.exceptions.ConnectionError:
        pass
    else:
        await client.close()
        raise AssertionError("the Socket.IO connect was accepted")
    return client.connect_error


async def sio_connect(live: Live, auth: dict[str, Any] | None = None, **connect: Any) -> SioClient:
    """Connect with python-socketio, passing e.g. ``headers`` through."""
    client = SioClient()
    await client.client.connect(
        live.base, auth=auth, transports=connect.pop("transports", ["websocket"]), wait_timeout=5, **connect
    )
    return client
