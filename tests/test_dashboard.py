"""The dashboard: its page, its admin-only live feed, the whole cluster in it, and a real browser.

The browser test drives Debian's Chromium with Playwright (never Playwright's own browser
download). It runs wherever /usr/bin/chromium exists; CI installs it and sets
REQUIRE_CHROMIUM=1, so there it can never be skipped.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from server.api.dashboard import quantile
from server.metrics import LATENCY_BUCKETS
from tests.clients import ADMIN_KEY, Live, make_token, recv
from tests.conftest import StartServer, make_settings
from tests.redis_server import RedisServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
STORE_EVENT = {"type": "store_updated", "data": {"storeId": "s1", "store": {"name": "Pizza"}}}


async def open_feed(live: Live, key: Any = ADMIN_KEY) -> aiohttp.ClientWebSocketResponse:
    ws = await live.session.ws_connect(f"{live.base}/dashboard/feed", autoclose=False)
    await ws.send_str(orjson.dumps({"key": key}).decode())
    return ws


async def next_of(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next feed message of type ``kind`` (stats arrive every second in between)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        message = await recv(ws, timeout=max(0.01, deadline - loop.time()))
        if message["type"] == kind:
            return message


async def stats_until(
    ws: aiohttp.ClientWebSocketResponse, check: Any, timeout: float = 10.0
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        stats = await next_of(ws, "stats", timeout=max(0.01, deadline - loop.time()))
        if check(stats):
            return stats


# --- pages ---------------------------------------------------------------------------------------


async def test_root_links_to_the_dashboard_the_docs_and_healthz(live: Live) -> None:
    async with live.session.get(f"{live.base}/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        page = await resp.text()
    for link in ('href="/dashboard"', 'href="/api/v1/openapi.json"', 'href="/healthz"'):
        assert link in page


async def test_dashboard_page_is_static_and_allows_only_its_own_script(live: Live) -> None:
    async with live.session.get(f"{live.base}/dashboard") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        page = await resp.text()
        policy = resp.headers["Content-Security-Policy"]
    assert 'id="login"' in page and "sessionStorage" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "script-src 'sha256-" in policy and "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy


# --- the feed ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["wrong", "", None, 7])
async def test_feed_refuses_anything_but_an_admin_key_with_4401(live: Live, key: Any) -> None:
    ws = await open_feed(live, key)
    message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 4401, message
    await ws.close()


async def test_feed_refuses_a_message_that_is_not_json(live: Live) -> None:
    ws = await live.session.ws_connect(f"{live.base}/dashboard/feed", autoclose=False)
    await ws.send_str("let me in")
    message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 4401
    await ws.close()


async def test_feed_refuses_a_foreign_origin(live: Live) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await live.session.ws_connect(
            f"{live.base}/dashboard/feed", headers={"Origin": "https://evil.example"}
        )
    assert refused.value.status == 403


async def test_feed_accepts_its_own_origin_even_when_cors_lists_only_the_apps(
    start_server: StartServer,
) -> None:
    live = await start_server(make_settings(cors_allowed_origins=["https://app.example.com"]))
    ws = await live.session.ws_connect(f"{live.base}/dashboard/feed", headers={"Origin": live.base})
    await ws.send_str(orjson.dumps({"key": ADMIN_KEY}).decode())
    assert (await next_of(ws, "hello"))["node"] == live.node.name
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await live.session.ws_connect(
            f"{live.base}/dashboard/feed", headers={"Origin": "https://evil.example"}
        )
    assert refused.value.status == 403


async def test_feed_falls_back_to_this_process_while_redis_is_down(
    start_server: StartServer, redis: RedisServer
) -> None:
    live = await start_server(make_settings(node_name="alone", redis={"url": redis.url}))
    feed = await open_feed(live)
    await next_of(feed, "hello")
    redis.stop()
    stats = await stats_until(feed, lambda s: s["error"] is not None)
    assert stats["error"].startswith("only this process") and [n["node"] for n in stats["nodes"]] == ["alone"]
    redis.start()
    await stats_until(feed, lambda s: s["error"] is None, timeout=20)
    await feed.close()


async def test_feed_shows_nodes_connections_events_and_their_data_on_request(live: Live) -> None:
    feed = await open_feed(live)
    hello = await next_of(feed, "hello")
    assert hello["node"] == live.node.name
    client, _ = await live.ws_ready(token=make_token("u1"))
    stats = await stats_until(feed, lambda s: s["nodes"][0]["connections"] == 1)
    assert stats["nodes"][0]["byTransport"] == {"websocket": 1}
    status, answer = await live.post({"events": [STORE_EVENT, {**STORE_EVENT, "to": {"users": ["u1"]}}]})
    assert status == 202
    events = (await next_of(feed, "events"))["events"]
    assert events == [
        {"id": answer["ids"][0], "type": "store_updated", "rooms": ["global"], "bytes": 41},
        {"id": answer["ids"][1], "type": "store_updated", "rooms": ["user:u1"], "bytes": 41},
    ]
    assert "data" not in events[0]  # only on request
    await feed.send_str(orjson.dumps({"op": "data", "id": answer["ids"][1]}).decode())
    data = await next_of(feed, "data")
    assert data == {"type": "data", "id": answer["ids"][1], "data": STORE_EVENT["data"]}
    await feed.send_str(orjson.dumps({"op": "data", "id": "1-0"}).decode())
    assert (await next_of(feed, "data"))["data"] is None
    stats = await stats_until(feed, lambda s: s["totals"]["accepted"] == 2)
    assert stats["totals"]["delivered"] == 2 and stats["latency"]["count"] == 2
    assert 0 <= stats["latency"]["p50"] <= stats["latency"]["p99"] <= LATENCY_BUCKETS[-1]
    await client.close()
    await feed.close()


async def test_feed_shows_every_node_of_a_cluster(start_server: StartServer, redis: RedisServer) -> None:
    prefix = f"dash-{uuid.uuid4().hex[:6]}"
    a, b = [
        await start_server(make_settings(node_name=name, redis={"url": redis.url, "key_prefix": prefix}))
        for name in ("node-a", "node-b")
    ]
    feed = await open_feed(a)
    on_b = await b.sio({"token": make_token("u2")})
    stats = await stats_until(feed, lambda s: len(s["nodes"]) == 2 and s["nodes"][1]["connections"] == 1)
    nodes = [(n["node"], n["byTransport"]) for n in stats["nodes"]]
    assert nodes == [("node-a", {}), ("node-b", {"socketio": 1})]
    status, answer = await b.post(STORE_EVENT)  # posted to the other process
    assert status == 202
    assert (await next_of(feed, "events"))["events"][0]["id"] == answer["ids"][0]
    await on_b.close()
    await feed.close()


def test_latency_quantiles_interpolate_within_buckets_as_prometheus_does() -> None:
    empty = [0.0] * (len(LATENCY_BUCKETS) + 1)
    assert quantile(0.5, empty) is None
    # 10 observations in the first bucket (0-1 ms), 10 in the second (1-2.5 ms).
    counts = [10.0] + [20.0] * len(LATENCY_BUCKETS)
    assert quantile(0.5, counts) == pytest.approx(0.001)
    assert quantile(0.75, counts) == pytest.approx(0.001 + 0.0015 / 2)
    beyond = [0.0] * len(LATENCY_BUCKETS) + [5.0]  # all above the last bucket
    assert quantile(0.99, beyond) == LATENCY_BUCKETS[-1]


# --- in a real browser ---------------------------------------------------------------------------


@pytest.fixture
def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"{CHROMIUM} is required (REQUIRE_CHROMIUM=1)")
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium")
    return CHROMIUM


async def test_dashboard_in_chromium_logs_in_sees_a_client_publishes_and_tails(
    start_server: StartServer, chromium: str
) -> None:
    from playwright.async_api import async_playwright, expect

    live = await start_server(make_settings(node_name="web.1"))
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1360, "height": 860})
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        try:
            await page.goto(f"{live.base}/dashboard")
            # A wrong key is refused and not kept.
            await page.fill("#key", "not-the-key")
            await page.click("#login button")
            await expect(page.locator("#login-error")).to_have_text("That key was refused.")
            assert await page.evaluate("sessionStorage.getItem('realtime-admin-key')") is None
            await page.fill("#key", ADMIN_KEY)
            await page.click("#login button")
            await expect(page.locator("#status")).to_have_text("live")
            assert await page.evaluate("sessionStorage.getItem('realtime-admin-key')") == ADMIN_KEY

            # A client connects: it appears in the node's row.
            row = page.locator('#nodes tr[data-node="web.1"]')
            await expect(row.locator("td.websocket")).to_have_text("0")
            client, _ = await live.ws_ready(token=make_token("alice"), storeId="s1")
            sio = await live.sio({"token": make_token("bob")})
            await expect(row.locator("td.websocket")).to_have_text("1")
            await expect(row.locator("td.socketio")).to_have_text("1")
            await expect(page.locator("#total-connections")).to_have_text("2")

            # Publish from the form: the client receives it and the tail shows it.
            await page.fill("#publish-users", "alice")
            await page.fill("#publish-data", '{"storeId": "s1", "store": {"name": "From the dashboard"}}')
            await page.click("#publish-form button")
            await expect(page.locator("#publish-result")).to_contain_text("Accepted: ")
            event_id = (await page.text_content("#publish-result") or "").removeprefix("Accepted: ")
            frame = await recv(client)
            assert frame["id"] == event_id and frame["data"]["store"]["name"] == "From the dashboard"
            tail_row = page.locator(f'#tail tr[data-id="{event_id}"]')
            await expect(tail_row.locator("td.type")).to_have_text("store_updated")
            await expect(tail_row.locator("td.audience")).to_have_text("user:alice")
            await expect(page.locator("#event-data")).to_be_hidden()
            await tail_row.click()
            await expect(page.locator("#event-data")).to_contain_text("From the dashboard")

            # A refused publish says why.
            await page.fill("#publish-data", '{"storeId": "s1"}')
            await page.click("#publish-form button")
            await expect(page.locator("#publish-result")).to_contain_text("422 validation_failed")

            # Presence across the cluster, through the admin API with the same key.
            await page.fill("#presence-user", "alice")
            await page.click("#presence-form button")
            await expect(page.locator("#presence-result")).to_have_text("alice is online: 1 connection")
            await page.fill("#presence-user", "carol")
            await page.click("#presence-form button")
            await expect(page.locator("#presence-result")).to_have_text("carol is offline")

            # Some traffic for the charts, then the picture.
            for n in range(6):
                status, _ = await live.post({"events": [STORE_EVENT] * (5 + n * 3)})
                assert status == 202
                await asyncio.sleep(0.4)
            await expect(page.locator("#p50")).not_to_have_text("\u2013")  # the page's "no figure yet"
            await tail_row.click()
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"))

            # Logging out forgets the key; a reload asks for it again.
            await page.click("#logout")
            await expect(page.locator("#login")).to_be_visible()
            await page.reload()
            await expect(page.locator("#login")).to_be_visible()
            # The browser reports the refused publish's 422 itself; nothing else went wrong.
            assert [e for e in errors if "422" not in e] == [], errors
            await client.close()
            await sio.close()
        finally:
            await browser.close()
