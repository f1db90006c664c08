"""Real clients for tests: aiohttp's WebSocket client, python-socketio's AsyncClient, HTTP posts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import orjson
import socketio

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"
ADMIN_KEY = "test-admin-key"


def make_token(user_id: str, role: str | None = "customer", secret: str = JWT_SECRET, **claims: Any) -> str:
    payload: dict[str, Any] = {"sub": user_id, "exp": int(time.time()) + 3600, **claims}
    if role is not None:
        payload["role"] = role
    return jwt.encode(payload, secret, algorithm="HS256")


@dataclass
class Live:
    """A server under test, reachable over real sockets at ``base`` (http://127.0.0.1:PORT)."""

    base: str
    app: Any
    session: aiohttp.ClientSession
    admin_key: str | None = ADMIN_KEY
    _sio_clients: list[socketio.AsyncClient] = field(default_factory=list)

    @property
    def node(self) -> Any:
        from server.app import NODE

        return self.app[NODE]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"} if self.admin_key else {}

    async def post(self, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.session.post(
            f"{self.base}/api/v1/events",
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json", **self.headers(), **(headers or {})},
        ) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(f"{self.base}{path}", headers=self.headers()) as resp:
            return resp.status, await resp.json()

    async def ws(self, **query: str) -> aiohttp.ClientWebSocketResponse:
        return await self.session.ws_connect(f"{self.base}/api/ws", params=query, autoclose=False)

    async def ws_ready(self, **query: str) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
        """Connect and read the ``connected`` frame."""
        ws = await self.ws(**query)
        first = await recv(ws)
        assert first["type"] == "connected", first
        return ws, first

    async def sio_ws(self, auth: dict[str, Any]) -> aiohttp.ClientWebSocketResponse:
        """A raw Engine.IO WebSocket, connected to the Socket.IO namespace with ``auth``: for tests
        that need to see (or not read) the frames themselves."""
        url = f"{self.base}/socket.io/?EIO=4&transport=websocket"
        ws = await self.session.ws_connect(url, autoclose=False)
        assert (await ws.receive_str(timeout=3)).startswith("0")
        await ws.send_str("40" + orjson.dumps(auth).decode())
        connected = await ws.receive_str(timeout=3)
        assert connected.startswith("40"), connected
        return ws

    async def sio(self, auth: dict[str, Any] | None = None, transports: list[str] | None = None) -> SioClient:
        client = SioClient()
        await client.connect(self.base, auth, transports)
        return client


def every_type(user: str) -> list[dict[str, Any]]:
    """One event of each built-in type, each reaching ``user`` once subscribed to s1 (§6)."""
    return [
        {"type": "order_updated", "data": {"orderId": "o1", "order": {"userId": user, "status": "ready"}}},
        {"type": "store_updated", "data": {"storeId": "s1", "store": {"name": "Pizza"}}},
        {"type": "product_updated", "data": {"storeId": "s1", "product": {"id": "p1", "price": 9.5}}},
        {"type": "store_availability_changed", "data": {"storeId": "s1", "isActive": False}},
        {
            "type": "product_availability_changed",
            "data": {"storeId": "s1", "productId": "p1", "available": True},
        },
    ]


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    result: dict[str, Any] = orjson.loads(msg.data)
    return result


async def recv_close(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> int | None:
    """Read until the server closes; the close code it sent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await asyncio.wait_for(ws.receive(), deadline - time.monotonic())
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return ws.close_code
        if msg.type == aiohttp.WSMsgType.ERROR:
            return ws.close_code
    raise AssertionError("the server did not close the connection")


async def no_message(ws: aiohttp.ClientWebSocketResponse, wait: float = 0.3) -> None:
    try:
        msg = await asyncio.wait_for(ws.receive(), wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message {msg.type} {msg.data!r}")


class SioClient:
    """python-socketio's AsyncClient, recording every event it receives in order."""

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.arrived = asyncio.Event()
        self.disconnect_reasons: list[Any] = []
        self.connect_error: Any = None

        @self.client.on("*")
        async def on_any(event: str, *args: Any) -> None:
            self.events.append((event, args))
            self.arrived.set()

        @self.client.event
        async def disconnect(reason: Any = None) -> None:
            self.disconnect_reasons.append(reason)

        @self.client.event
        async def connect_error(data: Any) -> None:
            self.connect_error = data

    async def connect(self, base: str, auth: dict[str, Any] | None, transports: list[str] | None) -> None:
        await self.client.connect(base, auth=auth, transports=transports or ["websocket"], wait_timeout=5)

    async def wait_for(self, count: int, timeout: float = 3.0) -> list[tuple[str, tuple[Any, ...]]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            self.arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"expected {count} events, got {self.events}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)
        return self.events

    async def call(self, event: str, data: Any) -> Any:
        return await self.client.call(event, data, timeout=3)

    async def close(self) -> None:
        if self.client.connected:
            await self.client.disconnect()
