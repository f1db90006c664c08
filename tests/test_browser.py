"""Real browser clients: headless Chromium (Debian's) driven by Playwright, on a page of another origin.

- the seed hook, ported to plain JavaScript unchanged in behaviour (tests/browser/seed-hook.js);
- the example hooks' core (examples/src), compiled by esbuild, through the same checks;
- socket.io-client's browser bundle;
- CORS as the browser applies it.

The seed hook with a platform session cookie and with server-side resume: test_browser_platform.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser_support import (
    EVENTS_ONLY,
    PageServer,
    build_example_bundle,
    chromium,
    open_page,
    screenshot,
    wait_until,
    ws_base,
)
from tests.clients import Live, every_type, make_token
from tests.conftest import StartServer, make_settings
from tests.process import RestartScene
from tests.redis_server import RedisServer, free_port

USER = "u-browser"
EVERY_TYPE = every_type(USER)
# What the seed note says each of them invalidates, in order.
SEED_INVALIDATIONS = [
    ["orders"],
    ["order", "o1"],
    ["stores"],
    ["store", "s1"],
    ["products"],
    ["products", "s1"],
    ["stores"],
    ["products", "s1"],
    ["products", "s1"],
]
WRONG_SECRET = "not-the-server-secret-but-long-enough"


@pytest.fixture(scope="session")
def example_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_example_bundle(tmp_path_factory.mktemp("examples"))


@pytest.fixture
async def page_server(example_bundle: Path) -> AsyncIterator[PageServer]:
    server = await PageServer(example_bundle).start()
    yield server
    await server.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as context:
        yield context


def seed_url(base: str, user: str) -> str:
    """The seed's URL, exactly: ``${NEXT_PUBLIC_WS_URL}/api/ws?userId=${userId}&role=customer``."""
    return f"{ws_base(base)}/api/ws?userId={user}&role=customer"


async def start_client(page: Any, client: str, base: str, token: str | None = None) -> None:
    if client == "seed":
        await page.evaluate("([url, user]) => startSeed(url, user)", [ws_base(base), USER])
    else:
        url = seed_url(base, USER) if token is None else f"{ws_base(base)}/api/ws"
        await page.evaluate("([url, token]) => startExample(url, token)", [url, token])


@pytest.mark.parametrize("client", ["seed", "example"])
async def test_hook_connects_with_the_seed_url_receives_every_type_and_subscribes(
    client: str, start_server: StartServer, page_server: PageServer, browser: Any
) -> None:
    live: Live = await start_server(make_settings(env={"AUTH_INSECURE": "1"}))
    page = await open_page(browser, page_server.origin())
    await start_client(page, client, live.base)
    await wait_until(page, "T.connected")
    connected = await wait_until(page, "T.received[0]")
    assert connected["type"] == "connected" and connected["data"]["userId"] == USER, connected

    await page.evaluate("T.client.sendMessage({type: 'subscribe', data: {storeId: 's1'}})")
    subscribed = await wait_until(page, "T.received.find(m => m.type === 'subscribed')")
    assert subscribed["data"] == {"room": "store:s1"}
    status, answer = await live.post({"events": EVERY_TYPE})
    assert status == 202, answer
    received = await wait_until(page, f"{EVENTS_ONLY}.length >= 5 && {EVENTS_ONLY}")
    assert received == [
        {**event, "id": event_id} for event, event_id in zip(EVERY_TYPE, answer["ids"], strict=True)
    ]
    assert await page.evaluate("T.invalidations") == SEED_INVALIDATIONS
    assert page.errors == []
    await screenshot(page, f"{client}-hook-every-event-type")


async def test_seed_hook_backs_off_3_6_12_24_30_seconds_then_stops(
    page_server: PageServer, browser: Any
) -> None:
    """The port keeps the seed's schedule (timers run on Playwright's clock: no waiting)."""
    page = await browser.new_page()
    await page.clock.install()
    await page.goto(page_server.origin())
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: every attempt fails (1006)
    await page.evaluate("([url, user]) => startSeed(url, user)", [ws_base(nowhere), USER])
    for attempt in range(5):
        await wait_until(page, f"T.closes.length === {attempt + 1} && T.delays.length === {attempt + 1}")
        await page.clock.run_for(await page.evaluate(f"T.delays[{attempt}]"))
    await wait_until(page, "T.closes.length === 6")
    await page.clock.run_for(120_000)
    assert await page.evaluate("T.delays") == [3000, 6000, 12000, 24000, 30000]
    assert await page.evaluate("T.closes") == [1006] * 6


async def test_example_core_does_not_retry_a_refused_token(
    start_server: StartServer, page_server: PageServer, browser: Any
) -> None:
    live: Live = await start_server(make_settings(env={"CORS_ALLOWED_ORIGINS": page_server.origin()}))
    page = await browser.new_page()
    await page.clock.install()
    await page.goto(page_server.origin())
    bad = make_token(USER, secret=WRONG_SECRET)
    await page.evaluate("([url, token]) => startExample(url, token)", [f"{ws_base(live.base)}/api/ws", bad])
    await wait_until(page, "T.status === 'stopped'")
    await page.clock.run_for(120_000)  # a retry, had one been scheduled, would have run by now
    await asyncio.sleep(0.3)
    assert await page.evaluate("T.closes") == [4401]
    assert await page.evaluate("T.willRetry") is False


async def test_example_core_resumes_by_last_event_id_after_a_server_restart(
    redis: RedisServer, page_server: PageServer, browser: Any
) -> None:
    """SIGTERM → 1012; the core reconnects (jittered, ≤ 3 s) with lastEventId and gets what it missed."""
    async with RestartScene(redis.url, {"AUTH_INSECURE": "1"}) as scene:
        page = await open_page(browser, page_server.origin())
        await start_client(page, "example", scene.base)
        await wait_until(page, "T.connected")
        ids = [await scene.post(1)]
        await wait_until(page, f"{EVENTS_ONLY}.length === 1")

        scene.stop()
        await wait_until(page, "T.closes.length === 1")
        assert await page.evaluate("[T.closes, T.willRetry]") == [[1012], True]
        await scene.stopped()
        ids += [await scene.post(seq) for seq in (2, 3)]
        await scene.start_again()
        # The reconnect's first frame: it continues from the id the core sent, then the missed events.
        connected = await wait_until(page, "T.received.filter(m => m.type === 'connected')[1]", timeout=20)
        assert connected["data"]["lastEventId"] == ids[0], connected
        ids.append(await scene.post(4))
        received = await wait_until(page, f"{EVENTS_ONLY}.length >= 4 && {EVENTS_ONLY}")
        assert [m["data"]["seq"] for m in received] == [1, 2, 3, 4]
        assert [m["id"] for m in received] == ids
        await screenshot(page, "example-hook-after-restart")


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_socketio_browser_bundle_connects_with_a_token_receives_and_recovers_after_a_drop(
    transport: str, start_server: StartServer, page_server: PageServer, browser: Any
) -> None:
    live: Live = await start_server(make_settings(env={"CORS_ALLOWED_ORIGINS": page_server.origin()}))
    page = await open_page(browser, page_server.origin())
    options = {"auth": {"token": make_token(USER)}, "transports": [transport]}
    await page.evaluate("([url, options]) => startSocketIO(url, options)", [live.base, options])
    await wait_until(page, "T.connects.length === 1")

    async def post(seq: int) -> str:
        status, answer = await live.post(
            {"type": "store_updated", "data": {"storeId": "s1", "store": {}, "seq": seq}}
        )
        assert status == 202, answer
        event_id: str = answer["ids"][0]
        return event_id

    ids = [await post(1), await post(2)]
    await wait_until(page, "T.received.length === 2")
    # A dropped connection (the transport closes under the client); it stays away while we post.
    await page.evaluate("T.socket.io.reconnection(false); T.socket.io.engine.close()")
    await wait_until(page, "!T.connected")
    ids += [await post(3), await post(4)]
    await page.evaluate("T.socket.io.reconnection(true); T.socket.connect()")
    second = await wait_until(page, "T.connects[1]")
    assert second == {"recovered": True, "transport": transport}
    ids.append(await post(5))
    received = await wait_until(page, "T.received.length >= 5 && T.received")
    assert [m["data"]["seq"] for m in received] == [1, 2, 3, 4, 5]
    assert [m["id"] for m in received] == ids
    assert await page.evaluate("T.errors") == []
    await screenshot(page, f"socketio-{transport}-recovered")


async def test_cors_an_allowed_origin_connects_on_both_transports_and_another_origin_is_refused(
    start_server: StartServer, page_server: PageServer, browser: Any
) -> None:
    allowed, other = page_server.origin("127.0.0.1"), page_server.origin("localhost")
    live: Live = await start_server(make_settings(env={"CORS_ALLOWED_ORIGINS": allowed}))
    token = make_token(USER)
    ws_url = f"{ws_base(live.base)}/api/ws?token={token}"

    async def try_origin(origin: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        page = await open_page(browser, origin)
        seen["websocket"] = await page.evaluate("(url) => probeWebSocket(url)", ws_url)
        for transport in ("polling", "websocket"):
            page = await open_page(browser, origin)
            options = {"auth": {"token": token}, "transports": [transport], "reconnection": False}
            await page.evaluate("([url, options]) => startSocketIO(url, options)", [live.base, options])
            seen[f"socketio-{transport}"] = await wait_until(
                page, "(T.connects.length || T.errors.length) && {connects: T.connects, errors: T.errors}"
            )
        return seen

    ok = await try_origin(allowed)
    assert ok["websocket"]["frames"][0]["type"] == "connected", ok
    assert ok["socketio-polling"] == {
        "connects": [{"recovered": False, "transport": "polling"}],
        "errors": [],
    }
    assert ok["socketio-websocket"] == {
        "connects": [{"recovered": False, "transport": "websocket"}],
        "errors": [],
    }

    refused = await try_origin(other)
    assert refused["websocket"] == {"code": 4403, "frames": []}, refused
    # Long-polling from a foreign page: the server answers 403 without CORS headers, so the
    # browser itself withholds the answer (socket.io-client sees only "xhr poll error").
    assert refused["socketio-polling"]["connects"] == [], refused
    assert refused["socketio-polling"]["errors"] and "forbidden" not in refused["socketio-polling"]["errors"]
    assert refused["socketio-websocket"] == {"connects": [], "errors": ["forbidden"]}, refused


async def test_example_socketio_core_receives_every_type_and_stops_on_a_refused_token(
    start_server: StartServer, page_server: PageServer, browser: Any
) -> None:
    live: Live = await start_server(make_settings(env={"CORS_ALLOWED_ORIGINS": page_server.origin()}))
    page = await open_page(browser, page_server.origin())
    options = {"token": make_token(USER), "transports": ["websocket"]}
    await page.evaluate("([url, options]) => startExampleSocketIO(url, options)", [live.base, options])
    await wait_until(page, "T.connected")
    assert await page.evaluate("T.client.subscribe('s1')") == {"ok": True, "room": "store:s1"}
    status, answer = await live.post({"events": EVERY_TYPE})
    assert status == 202, answer
    received = await wait_until(page, "T.received.length >= 5 && T.received")
    assert received == [
        {**event, "id": event_id} for event, event_id in zip(EVERY_TYPE, answer["ids"], strict=True)
    ]
    assert await page.evaluate("T.invalidations") == SEED_INVALIDATIONS
    await screenshot(page, "example-socketio-every-event-type")

    bad = make_token(USER, secret=WRONG_SECRET)
    refused = await browser.new_page()
    await refused.clock.install()
    await refused.goto(page_server.origin())
    options = {"token": bad, "transports": ["websocket"]}
    await refused.evaluate("([url, options]) => startExampleSocketIO(url, options)", [live.base, options])
    assert await wait_until(refused, "T.stopped") == "unauthorized"
    await refused.clock.run_for(120_000)  # a retry, had one been scheduled, would have run by now
    await asyncio.sleep(0.3)
    assert await refused.evaluate("T.statuses") == ["connecting", "stopped"]


async def test_example_core_spreads_10000_tabs_reconnects_over_the_backoff_window(
    page_server: PageServer, browser: Any
) -> None:
    """The compiled core's delays: under the seed's 3 s * 2^n (at most 30 s), uniform below it."""
    page = await open_page(browser, page_server.origin())
    spread = await page.evaluate(
        """() => {
            const { reconnectDelay, SEED_RECONNECT, RETRY_CLOSE_CODES } = RealtimeExamples;
            const perSecond = [0, 0, 0];
            let over = 0;
            for (let tab = 0; tab < 10000; tab++) {
                const delay = reconnectDelay(0, SEED_RECONNECT);
                if (delay >= 3000 || delay < 0) over++;
                else perSecond[Math.floor(delay / 1000)]++;
            }
            const worst = (attempt) =>
                Math.max(...Array.from({ length: 2000 }, () => reconnectDelay(attempt, SEED_RECONNECT)));
            const bounds = [0, 1, 2, 3, 4, 5].map(worst);
            return { perSecond, over, bounds, retry: [...RETRY_CLOSE_CODES].sort() };
        }"""
    )
    assert spread["over"] == 0
    # Uniform over the first 3 s: about a third each second, never all of them at once.
    assert all(2800 < count < 3900 for count in spread["perSecond"]), spread
    upper = [3000, 6000, 12000, 24000, 30000, 30000]
    assert all(b < u and b > u * 0.9 for b, u in zip(spread["bounds"], upper, strict=True)), spread
    assert spread["retry"] == [1006, 1008, 1012, 1013]
