"""Memory after churn (issue 16, part 3): 2,000 connections of both transports come and go, and a
real server process's RSS (/proc/PID/status VmRSS) comes back near its baseline.

The bound is the issue's (10 %): Python's allocator keeps some freed memory for reuse, so RSS does
not fall back to the byte; a leak of a few KiB per connection fails it. The full measure,
5,000 connections with the figures printed, is bench/churn_rss.py.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time

import aiohttp
import orjson
import pytest

from tests.clients import ADMIN_KEY, make_token
from tests.process import ServerProcess, running_server

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")


def rss_kib(server: ServerProcess) -> int:
    assert server.process is not None
    with open(f"/proc/{server.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def masked_text(text: str) -> bytes:
    """A client text frame (masked with a zero key: legal, and the payload stays as it is)."""
    payload = text.encode()
    assert len(payload) < 65536
    length = (
        bytes([0x80 | len(payload)])
        if len(payload) < 126
        else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    )
    return b"\x81" + length + b"\0\0\0\0" + payload


async def connect(port: int, index: int, socketio: bool) -> asyncio.StreamWriter:
    """Upgrade by hand, get in (``connected`` frame, or Socket.IO's CONNECT reply), return the
    writer: the caller then vanishes (abort) or closes properly."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    token = make_token(f"churn-{index}")
    path = "/socket.io/?EIO=4&transport=websocket" if socketio else f"/api/ws?token={token}&storeId=s1"
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 101 " in head, head
    seen = b""
    if socketio:
        while b"0{" not in seen:
            seen += await reader.read(4096)
        writer.write(masked_text("40" + orjson.dumps({"token": token, "stores": ["s1"]}).decode()))
        while b'40{"sid"' not in seen:
            seen += await reader.read(4096)
    else:
        while b'"connected"' not in seen:
            seen += await reader.read(4096)
    return writer


async def connections(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(f"{base}/api/v1/stats", headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as resp:
        count: int = (await resp.json())["connections"]
        return count


async def churn(http: aiohttp.ClientSession, server: ServerProcess, first: int, count: int) -> None:
    """``count`` clients, half of each transport, connect; a broadcast goes out; half of them
    vanish without a close and half close properly; wait until the server has none left."""
    writers = await asyncio.gather(
        *(connect(server.port, i, i % 2 == 1) for i in range(first, first + count))
    )
    event = {"type": "store_updated", "data": {"storeId": "s1", "store": {"pad": "x" * 200}}}
    async with http.post(
        f"{server.base}/api/v1/events", json=event, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as resp:
        assert resp.status == 202
    for index, writer in enumerate(writers):
        if index % 2:
            writer.transport.abort()
        else:
            writer.write(bytes([0x88, 0x82]) + b"\0\0\0\0" + (1000).to_bytes(2, "big"))
    deadline = time.monotonic() + 60
    while await connections(http, server.base):
        assert time.monotonic() < deadline, "connections still open on the server"
        await asyncio.sleep(0.2)
    for writer in writers:
        writer.transport.abort()


@pytest.mark.timeout(300)
async def test_rss_comes_back_near_its_baseline_after_2000_connections_come_and_go() -> None:
    with running_server({"LOG_LEVEL": "warning"}) as server:
        async with aiohttp.ClientSession() as http:
            await churn(http, server, 0, 100)  # what is built on first use belongs to the baseline
            await asyncio.sleep(2)
            before = rss_kib(server)
            peak = before
            for wave in range(4):
                await churn(http, server, 100 + wave * 500, 500)
                peak = max(peak, rss_kib(server))
            await asyncio.sleep(5)
            after = rss_kib(server)
    print(f"RSS before {before} KiB, peak between waves {peak} KiB, after {after} KiB")
    assert peak > before  # the connections did take memory: the measure can see it
    # The bound (within 10 %): measured +3.9-4.0 % here (2026-11-27; +8.1-8.6 % before
    # closed connections were freed at once and connects were gated).
    assert after <= before * 1.10, (before, peak, after)
