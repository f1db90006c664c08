"""Headless Chromium (Debian's ``chromium``) driven by Playwright, and the test page it opens.

The page (tests/browser/) is served by its own aiohttp app on another port than the server under
test, as a web app is: every connection the page opens is cross-origin, with the browser's own
Origin header, cookies and CORS rules. It loads the seed hook's port, socket.io-client's browser
bundle (tests/node) and the example hooks' core, bundled by esbuild from examples/src.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.node_remote import NODE_DIR, require_node
from tests.redis_server import free_port

PAGE_DIR = Path(__file__).parent / "browser"
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots: gitignored
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_browser() -> None:
    """Chromium and Playwright; in CI (REQUIRE_CHROMIUM=1) their absence is a failure, not a skip."""
    missing = []
    if not os.path.exists(CHROMIUM):
        missing.append(CHROMIUM)
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if missing:
        if os.environ.get("REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"missing {', '.join(missing)} (REQUIRE_CHROMIUM=1)")
        pytest.skip(f"missing {', '.join(missing)}")


def build_example_bundle(out_dir: Path) -> Path:
    """examples/src/browser.ts bundled by esbuild (the hooks' core as compiled, not a rewrite)."""
    require_node(EXAMPLES_DIR, "esbuild")
    bundle = out_dir / "realtime-examples.js"
    subprocess.run(
        [
            str(EXAMPLES_DIR / "node_modules" / ".bin" / "esbuild"),
            "src/browser.ts",
            "--bundle",
            "--format=iife",
            "--global-name=RealtimeExamples",
            "--target=es2020",
            f"--outfile={bundle}",
        ],
        cwd=EXAMPLES_DIR,
        check=True,
        timeout=120,
        capture_output=True,
    )
    return bundle


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PageServer:
    """The test page's own origin: ``http://127.0.0.1:PORT`` (or ``http://localhost:PORT``)."""

    def __init__(self, bundle: Path, extra: dict[str, Handler] | None = None) -> None:
        require_node()  # socket.io-client's browser bundle comes from tests/node's packages
        self.port = free_port()
        self.files = {
            "/seed-hook.js": PAGE_DIR / "seed-hook.js",
            "/page.js": PAGE_DIR / "page.js",
            "/socket.io.min.js": NODE_DIR / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js",
            "/realtime-examples.js": bundle,
        }
        self.app = web.Application()
        self.app.router.add_get("/", self.index)
        for path in self.files:
            self.app.router.add_get(path, self.static)
        for path, handler in (extra or {}).items():
            self.app.router.add_get(path, handler)
        self.runner = web.AppRunner(self.app)

    def origin(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    async def index(self, _: web.Request) -> web.StreamResponse:
        return web.FileResponse(PAGE_DIR / "index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(self.files[request.path], headers={"Content-Type": "text/javascript"})

    async def start(self) -> PageServer:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A fresh headless Chromium (a new empty profile) as a Playwright browser context."""
    require_browser()
    from playwright.async_api import async_playwright

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                yield context
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


EVENTS_ONLY = "T.received.filter(m => m.id)"  # what a page's client received, events only


def ws_base(http_base: str) -> str:
    return http_base.replace("http://", "ws://", 1)


async def open_page(context: Any, url: str) -> Any:
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(url)
    page.errors = errors
    return page


async def wait_until(page: Any, expression: str, timeout: float = 10.0) -> Any:
    """Wait until the page's ``expression`` (JavaScript, may use ``T``) is truthy; its value."""
    handle = await page.wait_for_function(expression, timeout=timeout * 1000)
    return await handle.json_value()


async def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
