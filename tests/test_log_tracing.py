"""JSON logs across a cluster: one event followed by its id from the process that accepted it to
the process that delivered it, and no line anywhere holding a token, cookie, API key or password."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.clients import SioClient, make_token, recv
from tests.process import ServerProcess
from tests.redis_server import RedisServer
from tests.test_process import json_lines

JWT_CANARY = "jwt-secret-CANARY-7d1f0c9e5a3b-long-enough-for-hs256"
ADMIN_CANARIES = ("admin-key-CANARY-alpha-41c7", "admin-key-CANARY-beta-9e02")
WRONG_KEY = "admin-key-CANARY-wrong-6b5d"
REDIS_PASSWORD = "redis-CANARY-password-2f8a"
OTHER_COOKIE = "cookie-CANARY-unrelated-0c3e"


def token(user: str) -> str:
    return make_token(user, secret=JWT_CANARY)


@pytest.fixture
def secret_redis() -> Iterator[RedisServer]:
    server = RedisServer(password=REDIS_PASSWORD)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def config_file(tmp_path: Path) -> str:
    path = tmp_path / "config.yaml"
    path.write_text("auth:\n  cookie_name: rt_token\n")
    return str(path)


def malformed_request(host: str, port: int) -> bytes:
    """A request aiohttp's parser refuses (a NUL in a header value); the raw answer."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n")
        return sock.recv(4096)


async def test_an_event_is_followed_by_its_id_across_processes_and_no_secret_is_logged(
    secret_redis: RedisServer, config_file: str
) -> None:
    common = {
        "REDIS_URL": secret_redis.url,
        "CONFIG_FILE": config_file,
        "JWT_SECRET": JWT_CANARY,
        "ADMIN_API_KEYS": ",".join(ADMIN_CANARIES),
        "LOG_FORMAT": "json",
    }
    accepting = ServerProcess({**common, "DYNO": "web.1", "LOG_LEVEL": "info"})
    delivering = ServerProcess({**common, "DYNO": "web.2", "LOG_LEVEL": "debug"})  # everything it says
    tokens = {user: token(user) for user in ("query", "header", "cookie", "sio")}
    try:
        for process in (accepting, delivering):
            process.start()
        await asyncio.gather(*(asyncio.to_thread(p.wait_healthy) for p in (accepting, delivering)))
        async with aiohttp.ClientSession() as session:
            url = f"{delivering.base}/api/ws"
            clients = [
                await session.ws_connect(url, params={"token": tokens["query"]}),
                await session.ws_connect(url, headers={"Authorization": f"Bearer {tokens['header']}"}),
                await session.ws_connect(
                    url, headers={"Cookie": f"other={OTHER_COOKIE}; rt_token={tokens['cookie']}"}
                ),
            ]
            for ws in clients:
                assert (await recv(ws))["type"] == "connected"
            sio = SioClient()
            await sio.connect(delivering.base, {"token": tokens["sio"]}, ["websocket"])

            events = f"{accepting.base}/api/v1/events"
            body = {"type": "store_updated", "data": {"storeId": "s1", "store": {}}}
            wrong = {"Authorization": f"Bearer {WRONG_KEY}"}
            async with session.post(events, json=body, headers=wrong) as resp:
                assert resp.status == 401
            admin = {"Authorization": f"Bearer {ADMIN_CANARIES[1]}"}
            async with session.post(events, json=body, headers=admin) as resp:
                assert resp.status == 202
                event_id = (await resp.json())["ids"][0]
            for ws in clients:
                assert (await recv(ws, timeout=5))["id"] == event_id
            assert (await sio.wait_for(1))[0][1][-1] == event_id

            answer = await asyncio.to_thread(malformed_request, accepting.host, accepting.port)
            assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request"), answer
            await sio.close()
            for ws in clients:
                await ws.close()
        for process in (accepting, delivering):
            process.signal(signal.SIGTERM)
        for process in (accepting, delivering):
            assert await process.wait_exit(10) == 0
    finally:
        for process in (accepting, delivering):
            process.close()

    logs = {p: json_lines(p.stdout) + json_lines(p.stderr) for p in (accepting, delivering)}

    def with_id(process: ServerProcess, message: str) -> list[dict[str, Any]]:
        return [e for e in logs[process] if e["message"] == message and event_id in e.get("ids", ())]

    [accepted] = with_id(accepting, "events accepted")
    assert accepted["types"] == ["store_updated"] and accepted["level"] == "info"
    [delivered] = with_id(delivering, "events delivered")
    assert delivered["connections"] == 4
    assert not with_id(delivering, "events accepted") and not with_id(accepting, "events delivered")

    # The refused request is one info line, not an error with a traceback.
    [malformed] = [e for e in logs[accepting] if e["message"].startswith("malformed HTTP request refused")]
    assert malformed["level"] == "info" and "exception" not in malformed, malformed
    assert not [e for e in logs[accepting] + logs[delivering] if e["level"] in ("error", "critical")]

    written = "".join(p.stdout + p.stderr for p in (accepting, delivering))
    for secret in (JWT_CANARY, *ADMIN_CANARIES, WRONG_KEY, REDIS_PASSWORD, OTHER_COOKIE, *tokens.values()):
        assert secret not in written, secret
    assert "CANARY" not in written
