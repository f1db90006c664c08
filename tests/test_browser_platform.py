"""The seed hook, unchanged, in production conditions that need other branches of the server:

- identified by the platform's session cookie through AUTH_SESSION_URL, no token, no insecure
  mode (contract §3, §8): needs the identity branch (issue 13);
- the example core's in-band token refresh (contract §4, §8): needs the identity branch;
- after a server restart, reconnecting without any id and still getting what it missed
  (server-side resume, contract §7 last paragraph): needs the resume branch (issue 14).

Both fail until those branches are merged. Same page, port and Chromium as test_browser.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

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
from tests.clients import Live, make_token
from tests.conftest import StartServer, make_settings
from tests.process import RestartScene
from tests.redis_server import RedisServer, free_port

COOKIE = "platform_session"
SESSIONS = {"sess-7f3a": "u-cookie"}  # the platform's live sessions: cookie value → user id


@pytest.fixture(scope="session")
def example_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_example_bundle(tmp_path_factory.mktemp("examples"))


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as context:
        yield context


class SessionService:
    """The platform's session endpoint (AUTH_SESSION_URL): the cookie's user, or 401."""

    def __init__(self) -> None:
        self.port = free_port()
        self.cookies_seen: list[str | None] = []
        app = web.Application()
        app.router.add_get("/session", self.session)
        self.runner = web.AppRunner(app)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/session"

    async def session(self, request: web.Request) -> web.Response:
        self.cookies_seen.append(request.headers.get("Cookie"))
        user = SESSIONS.get(request.cookies.get(COOKIE, ""))
        if user is None:
            return web.json_response({"error": "no session"}, status=401)
        return web.json_response({"userId": user, "role": "customer"})

    async def __aenter__(self) -> SessionService:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.runner.cleanup()


async def login(_: web.Request) -> web.StreamResponse:
    """The web app's own sign-in: its origin sets the session cookie (HttpOnly: no script sees it)."""
    response = web.HTTPFound("/")
    response.set_cookie(COOKIE, "sess-7f3a", path="/", httponly=True, samesite="Lax")
    raise response


@pytest.fixture
async def page_server(example_bundle: Path) -> AsyncIterator[PageServer]:
    server = await PageServer(example_bundle, extra={"/login": login}).start()
    yield server
    await server.stop()


async def start(page: Any, client: str, base: str, user: str) -> None:
    """The seed hook, or the example core on the seed's URL with no token."""
    if client == "seed":
        await page.evaluate("([url, user]) => startSeed(url, user)", [ws_base(base), user])
    else:
        url = f"{ws_base(base)}/api/ws?userId={user}&role=customer"
        await page.evaluate("(url) => startExample(url, null)", url)


@pytest.mark.parametrize("client", ["seed", "example"])
async def test_hook_is_identified_by_the_platform_session_cookie(
    client: str, start_server: StartServer, page_server: PageServer, browser: Any
) -> None:
    async with SessionService() as sessions:
        env = {"AUTH_SESSION_URL": sessions.url, "CORS_ALLOWED_ORIGINS": page_server.origin()}
        live: Live = await start_server(make_settings(env=env))
        page = await open_page(browser, f"{page_server.origin()}/login")  # sets the cookie, then the page
        await start(page, client, live.base, "u-cookie")
        connected = await wait_until(page, "T.received[0]")
        assert connected["type"] == "connected" and connected["data"]["userId"] == "u-cookie", connected
        assert f"{COOKIE}=sess-7f3a" in (sessions.cookies_seen[-1] or ""), sessions.cookies_seen

        order = {"orderId": "o9", "order": {"userId": "u-cookie", "status": "ready"}}
        status, answer = await live.post({"type": "order_updated", "data": order})
        assert status == 202, answer
        received = await wait_until(page, f"{EVENTS_ONLY}.length === 1 && {EVENTS_ONLY}")
        assert received == [{"type": "order_updated", "data": order, "id": answer["ids"][0]}]
        await screenshot(page, f"{client}-hook-session-cookie")

        # Without the cookie (signed out) the session service answers 401: the server closes 4401.
        await browser.clear_cookies()
        page = await open_page(browser, page_server.origin())
        await start(page, client, live.base, "u-cookie")
        assert await wait_until(page, "T.closes.length && T.closes[0]") == 4401
        assert not [m for m in await page.evaluate("T.received") if m["type"] == "connected"]


async def test_seed_hook_gets_what_it_missed_across_a_restart_without_sending_an_id(
    redis: RedisServer, page_server: PageServer, browser: Any
) -> None:
    """SIGTERM → 1012; the hook reconnects 3 s later with its unchanged URL; the server resumes it."""
    async with RestartScene(redis.url, {"AUTH_INSECURE": "1"}) as scene:
        page = await open_page(browser, page_server.origin())
        await page.evaluate("([url, user]) => startSeed(url, user)", [ws_base(scene.base), "u-resume"])
        await wait_until(page, "T.connected")
        ids = [await scene.post(1)]
        await wait_until(page, f"{EVENTS_ONLY}.length === 1")

        scene.stop()
        assert await wait_until(page, "T.closes.length && T.closes[0]") == 1012
        await scene.stopped()
        ids += [await scene.post(seq) for seq in (2, 3)]
        await scene.start_again()
        connected = await wait_until(page, "T.received.filter(m => m.type === 'connected')[1]", timeout=30)
        assert connected["data"]["resumed"] is True, connected
        ids.append(await scene.post(4))
        # Until all four arrived: a repeat (event 1 again) must not end the wait early.
        received = await wait_until(
            page, f"new Set({EVENTS_ONLY}.map(m => m.data.seq)).size >= 4 && {EVENTS_ONLY}"
        )
        # At least once (contract §7): a repeat is harmless to the hook, a miss is not.
        seqs = [m["data"]["seq"] for m in received]
        assert sorted(set(seqs)) == [1, 2, 3, 4], seqs
        assert {m["id"] for m in received} == set(ids)
        await screenshot(page, "seed-hook-after-restart")


async def test_example_core_refreshes_its_token_in_band_before_exp(
    start_server: StartServer, page_server: PageServer, browser: Any
) -> None:
    """A 4-second token: the core sends ``refresh`` at half its life and outlives its ``exp``."""
    live: Live = await start_server(make_settings(env={"CORS_ALLOWED_ORIGINS": page_server.origin()}))
    short_exp, fresh_exp = int(time.time()) + 4, int(time.time()) + 3600
    tokens = [make_token("u-refresh", exp=short_exp), make_token("u-refresh", exp=fresh_exp)]
    page = await open_page(browser, page_server.origin())
    url = f"{ws_base(live.base)}/api/ws"
    await page.evaluate("([url, tokens]) => startExample(url, tokens)", [url, tokens])
    refreshed = await wait_until(page, "T.received.find(m => m.type === 'refreshed')", timeout=10)
    assert refreshed["data"] == {"exp": fresh_exp}, refreshed
    await asyncio.sleep(max(0.0, short_exp + 1.5 - time.time()))  # past the first token's exp
    status, answer = await live.post({"type": "store_updated", "data": {"storeId": "s1", "store": {}}})
    assert status == 202, answer
    await wait_until(page, f"{EVENTS_ONLY}.length === 1")
    assert await page.evaluate("T.closes") == []
