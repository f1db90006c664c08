"""bench/round_trip_floor.py, the README's floor for a single POST through Redis: our server in
memory with one Redis round trip awaited per publish. A real process, a real Redis: the figure it
gives is only meaningful if every publish really waits for Redis and still delivers."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.clients import ADMIN_KEY
from tests.conftest import ExternalRedis
from tests.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parent.parent


async def test_each_publish_waits_for_one_redis_round_trip_and_is_delivered(
    redis_server: RedisServer | ExternalRedis,
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "AUTH_INSECURE": "1",
        "ADMIN_API_KEYS": ADMIN_KEY,
        "CONFIG_FILE": os.devnull,
        "FLOOR_REDIS_URL": redis_server.url,
    }
    env.pop("REDIS_URL", None)  # the server itself stays in memory
    server = await asyncio.create_subprocess_exec(
        sys.executable, "bench/round_trip_floor.py", cwd=REPO, env=env
    )
    pings = aioredis.from_url(redis_server.url)
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    async with session.get(f"{base}/healthz") as answer:
                        if answer.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the server did not start")
            before = await _pings(pings)
            async with session.ws_connect(f"{base}/api/ws?userId=u1&role=customer") as ws:
                assert (await ws.receive_json(timeout=3))["type"] == "connected"
                headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
                for n in range(3):
                    order = {"userId": "u1", "status": "ready"}
                    event = {"type": "order_updated", "data": {"orderId": f"o{n}", "order": order}}
                    async with session.post(f"{base}/api/v1/events", json=event, headers=headers) as answer:
                        assert answer.status == 202, await answer.text()
                    frame = await ws.receive_json(timeout=3)
                    assert frame["type"] == "order_updated" and frame["data"]["orderId"] == f"o{n}"
            assert await _pings(pings) - before == 3
    finally:
        await pings.aclose()
        server.terminate()
        await asyncio.wait_for(server.wait(), 10)


async def _pings(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))
