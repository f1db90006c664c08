"""The backplane's own Redis connection (server/backplane/resp.py), against a real redis-server:
pipelining, error replies, a frozen server, dropped connections, passwords and databases."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from server.backplane.resp import ReplyLost, RespConnection
from tests.clients import make_token, recv
from tests.conftest import StartServer, make_settings
from tests.redis_server import RedisServer


def connection(url: str, timeout: float = 2.0) -> RespConnection:
    return RespConnection(url, tls_verify=True, timeout=timeout)


async def test_concurrent_commands_each_get_their_own_reply(redis: RedisServer) -> None:
    conn = connection(redis.url)
    replies = await asyncio.gather(*(conn.call("ECHO", f"value-{i}") for i in range(500)))
    assert replies == [f"value-{i}".encode() for i in range(500)]
    conn.close()


async def test_an_error_reply_raises_and_the_connection_carries_on(redis: RedisServer) -> None:
    conn = connection(redis.url)
    await conn.call("SET", "text", "abc")
    with pytest.raises(ResponseError, match="not an integer"):
        await conn.call("INCR", "text")
    assert await conn.call("INCR", "counter") == 1
    conn.close()


async def test_a_frozen_redis_times_out_and_no_late_reply_is_taken_for_a_new_command(
    redis: RedisServer,
) -> None:
    conn = connection(redis.url, timeout=0.3)
    assert await conn.call("PING") == b"PONG"
    redis.pause()
    try:
        started = time.monotonic()
        calls = (conn.call("ECHO", "early-1"), conn.call("ECHO", "early-2"))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, ReplyLost) for r in results), results
        assert time.monotonic() - started < 2
    finally:
        redis.resume()
    # Redis now answers the early commands too, on the old connection: a new command must not get those.
    assert await conn.call("ECHO", "late") == b"late"
    conn.close()


async def test_each_command_times_out_on_its_own_deadline_with_one_timer_per_connection(
    redis: RedisServer,
) -> None:
    """One timer watches the oldest command in flight: a command sent long after the first (the
    timer then armed for an answered command) still times out ``timeout`` after it was sent."""
    conn = connection(redis.url, timeout=0.3)
    for _ in range(6):  # 0.6 s of answered commands: the timer has fired and been re-armed
        assert await conn.call("PING") == b"PONG"
        await asyncio.sleep(0.1)
    redis.pause()
    try:
        started = time.monotonic()
        with pytest.raises(ReplyLost):
            await conn.call("PING")
        assert 0.25 <= time.monotonic() - started < 1.0
    finally:
        redis.resume()
    assert await conn.call("ECHO", "after") == b"after"
    conn.close()


async def test_publishing_carries_on_after_redis_drops_the_connections(
    start_server: StartServer, redis: RedisServer
) -> None:
    live = await start_server(make_settings(redis={"url": redis.url}))
    ws, _ = await live.ws_ready(token=make_token("u1"))
    event = {"type": "store_updated", "data": {"storeId": "s1", "store": {}}}
    status, first = await live.post(event)
    assert status == 202
    assert (await recv(ws))["id"] == first["ids"][0]
    admin = aioredis.from_url(redis.url)
    killed = await admin.client_kill_filter(_type="normal", skipme=True)
    await admin.aclose()
    assert killed >= 2  # the publishing and the tailing connection at least
    await asyncio.sleep(0.1)
    status, second = await live.post(event)
    assert status == 202, second
    assert (await recv(ws))["id"] == second["ids"][0]


async def test_a_password_and_a_database_in_the_url_are_used(start_server: StartServer) -> None:
    server = RedisServer(password="s3cret")
    server.start()
    try:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        live = await start_server(make_settings(redis={"url": url, "key_prefix": "pw"}))
        ws, _ = await live.ws_ready(token=make_token("u1"))
        status, body = await live.post({"type": "store_updated", "data": {"storeId": "s1", "store": {}}})
        assert status == 202
        assert (await recv(ws))["id"] == body["ids"][0]
        admin = aioredis.from_url(url)
        assert await admin.xlen("pw:events") == 1
        await admin.aclose()

        wrong = await start_server(make_settings(redis={"url": f"redis://:wrong@127.0.0.1:{server.port}/3"}))
        status, body = await wrong.post({"type": "store_updated", "data": {"storeId": "s1", "store": {}}})
        assert status == 503 and body["error"] == "unavailable"
    finally:
        server.stop()


async def test_a_publish_to_a_frozen_redis_answers_503_saying_the_outcome_is_unknown(
    start_server: StartServer, redis: RedisServer
) -> None:
    live = await start_server(make_settings(redis={"url": redis.url, "retry_after_seconds": 1}))
    ws, _ = await live.ws_ready(token=make_token("u1"))
    event = {"type": "store_updated", "data": {"storeId": "s1", "store": {}}}
    redis.pause()
    try:
        started = time.monotonic()
        status, body = await live.post(event)
        waited = time.monotonic() - started
    finally:
        redis.resume()
    assert status == 503 and body["error"] == "unavailable"
    assert "may still be delivered: retry with the same idempotency keys" in body["message"], body
    assert waited < 10
    status, body = await live.post(event)  # Redis is back: the next publish goes through at once
    assert status == 202, body
    frames = [await recv(ws, timeout=5)]
    if frames[0]["id"] != body["ids"][0]:  # the frozen Redis did run the first one after all
        frames.append(await recv(ws, timeout=5))
    assert frames[-1]["id"] == body["ids"][0]


async def test_a_set_up_left_unanswered_is_not_taken_for_a_lost_reply() -> None:
    """AUTH sent on a new connection and never answered: nothing of the caller's was sent, so the
    error must not say the command may have run (a publish would answer "may still be delivered")."""
    server = RedisServer(password="s3cret")
    server.start()
    try:
        conn = RespConnection(server.url, tls_verify=True, timeout=2.0, connect_timeout=0.3)
        server.pause()
        try:
            with pytest.raises(ConnectionError) as caught:
                await conn.call("PING")
        finally:
            server.resume()
        assert not isinstance(caught.value, ReplyLost), caught.value
        assert await conn.call("PING") == b"PONG"  # and the next call connects afresh
        conn.close()
    finally:
        server.stop()
