"""bench/round_trip_floor.py, the README's floor for a single POST through Redis: our server in
memory with one Redis round trip awaited per publish. A real process, a real Redis: the figure it
gives is only meaningful if every publish really waits for Redis and still delivers."""

from __future__ import annotations

import aiohttp
import redis.asyncio as aioredis

from tests.clients import ADMIN_KEY
from tests.conftest import ExternalRedis
from tests.process import running_server
from tests.redis_server import RedisServer


async def test_each_publish_waits_for_one_redis_round_trip_and_is_delivered(
    redis_server: RedisServer | ExternalRedis,
) -> None:
    # The server itself stays in memory: no REDIS_URL (server_env passes nothing else in).
    env = {"AUTH_INSECURE": "1", "FLOOR_REDIS_URL": redis_server.url}
    pings = aioredis.from_url(redis_server.url)
    try:
        with running_server(env, program=["bench/round_trip_floor.py"]) as server:
            before = await _pings(pings)
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(f"{server.base}/api/ws?userId=u1&role=customer") as ws,
            ):
                assert (await ws.receive_json(timeout=3))["type"] == "connected"
                headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
                for n in range(3):
                    order = {"userId": "u1", "status": "ready"}
                    event = {"type": "order_updated", "data": {"orderId": f"o{n}", "order": order}}
                    async with session.post(
                        f"{server.base}/api/v1/events", json=event, headers=headers
                    ) as answer:
                        assert answer.status == 202, await answer.text()
                    frame = await ws.receive_json(timeout=3)
                    assert frame["type"] == "order_updated" and frame["data"]["orderId"] == f"o{n}"
            assert await _pings(pings) - before == 3
    finally:
        await pings.aclose()


async def _pings(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))
