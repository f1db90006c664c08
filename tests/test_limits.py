"""Explicit limits (config.yaml), each sent the input that triggers it."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable

import pytest

from server.config import Settings
from tests.clients import ADMIN_KEY, Live
from tests.conftest import StartServer
from tests.process import running_server


def store_event(n: int) -> dict[str, object]:
    return {"type": "store_availability_changed", "data": {"storeId": "s1", "isActive": n % 2 == 0}}


async def test_an_admin_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(
        settings_for(
            env={"ADMIN_API_KEYS": f"{ADMIN_KEY},second-key"},
            admin={"requests_per_second": 1, "requests_burst": 3},
        )
    )
    answers = [await live.post(store_event(n)) for n in range(4)]
    assert [status for status, _ in answers] == [202, 202, 202, 429]
    _, body = answers[3]
    assert body["error"] == "rate_limited" and body["message"] and body["details"] == {}
    async with live.session.get(f"{live.base}/api/v1/stats", headers=live.headers()) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 1
    other = Live(live.base, live.app, live.session, admin_key="second-key")
    assert (await other.post(store_event(0)))[0] == 202
    # A refused request costs nothing: after the wait, the key is served again.
    await asyncio.sleep(1.1)
    assert (await live.post(store_event(1)))[0] == 202


async def test_a_request_with_a_wrong_key_is_401_not_counted_against_any_key(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(admin={"requests_per_second": 1, "requests_burst": 2}))
    intruder = Live(live.base, live.app, live.session, admin_key="wrong")
    for n in range(5):
        assert (await intruder.post(store_event(n)))[0] == 401
    assert (await live.post(store_event(0)))[0] == 202


@pytest.fixture
def backplane() -> str:
    return "memory"


async def test_an_http_connection_trickling_its_headers_is_closed_after_the_idle_timeout() -> None:
    """Slowloris: a header line every half second never completes a request."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
        config.write("http_idle_timeout_seconds: 1\n")
    try:
        with running_server({"CONFIG_FILE": config.name}) as server:
            host, port = server.base.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /api/ws HTTP/1.1\r\nHost: x\r\n")
            closed = False
            for i in range(20):
                await asyncio.sleep(0.5)
                try:
                    writer.write(f"X-Slow-{i}: 1\r\n".encode())
                    await writer.drain()
                except ConnectionError:
                    closed = True
                    break
                if reader.at_eof() or writer.is_closing():
                    closed = True
                    break
                try:
                    if await asyncio.wait_for(reader.read(1), 0.01) == b"":
                        closed = True
                        break
                except TimeoutError:
                    pass
            assert closed, "the trickling connection is still open after 10 s"
            writer.close()
    finally:
        os.unlink(config.name)
