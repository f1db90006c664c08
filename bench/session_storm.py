#!/usr/bin/env python3
"""Reconnect storm against platform sessions (contract §8): N hook clients, no token, a few hundred
distinct session cookies, all connecting at once to one fresh server process.

The session service runs in this process (an aiohttp app on a free port) and counts the requests
it gets; the server is ``python -m server`` with ``AUTH_SESSION_URL`` pointing at it, JWT_SECRET
and ADMIN_API_KEYS set, no insecure mode. Two rounds: a cold cache (the process just started, as
after a deploy) and, after every client has dropped, a warm one. Prints connects/s and the
session requests each round made.

    bench/session_storm.py                       # 10,000 clients, 500 sessions
    bench/session_storm.py --clients 2000        # a quicker run
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import socket
import sys
import time
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SessionService:
    """The platform's session endpoint, in a process of its own (in the clients' process, 10,000
    connecting clients starve it and the server's lookups time out: that would measure the bench)."""

    def __init__(self, delay: float, requests: Synchronized) -> None:  # type: ignore[type-arg]
        self.delay = delay
        self.requests = requests

    async def handle(self, request: web.Request) -> web.Response:
        with self.requests.get_lock():
            self.requests.value += 1
        session = request.cookies.get("session", "")
        if not session.startswith("s-"):
            return web.json_response({"error": "no session"}, status=401)
        if self.delay:
            await asyncio.sleep(self.delay)  # a database read, say
        return web.json_response({"userId": "user-" + session[2:], "role": "customer"})


async def connect(
    http: aiohttp.ClientSession, url: str, cookie: str
) -> aiohttp.ClientWebSocketResponse | None:
    try:
        async with asyncio.timeout(30):
            ws = await http.ws_connect(url, headers={"Cookie": f"session={cookie}; theme=dark"})
            msg = await ws.receive()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    if msg.type != aiohttp.WSMsgType.TEXT or '"connected"' not in msg.data:
        await ws.close()
        return None
    return ws


async def storm(http: aiohttp.ClientSession, base: str, clients: int, sessions: int) -> tuple[list, float]:
    """Every client at once; the hook's URL with its session's user id."""
    tasks = []
    started = time.perf_counter()
    for index in range(clients):
        session = index % sessions
        url = f"{base}/api/ws?userId=user-{session}&role=customer"
        tasks.append(connect(http, url, f"s-{session}"))
    sockets = await asyncio.gather(*tasks)
    return list(sockets), time.perf_counter() - started


def serve_sessions(port: int, delay: float, requests: Synchronized) -> None:  # type: ignore[type-arg]
    app = web.Application()
    app.router.add_get("/session", SessionService(delay, requests).handle)
    web.run_app(app, host="127.0.0.1", port=port, backlog=4096, print=None, access_log=None)


async def main(args: argparse.Namespace, service_port: int, requests: Synchronized) -> None:  # type: ignore[type-arg]
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CONFIG_FILE": os.devnull,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "JWT_SECRET": "bench-secret-that-is-long-enough-for-hs256",
        "ADMIN_API_KEYS": "benchkey",
        "AUTH_SESSION_URL": f"http://127.0.0.1:{service_port}/session",
        "LOG_LEVEL": "warning",
    }
    server = await asyncio.create_subprocess_exec(sys.executable, "-m", "server", cwd=REPO, env=env)
    base = f"http://127.0.0.1:{port}"
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http:
            for _ in range(200):
                try:
                    async with http.get(f"{base}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            print(f"{args.clients} clients, {args.sessions} distinct sessions, one server process")
            for name in ("cold cache (fresh process)", "warm cache (everyone reconnects)"):
                before = requests.value
                sockets, seconds = await storm(http, base, args.clients, args.sessions)
                ok = [ws for ws in sockets if ws is not None]
                print(
                    f"  {name}: {len(ok)}/{args.clients} connected in {seconds:.2f} s = "
                    f"{len(ok) / seconds:,.0f} connects/s; session requests: {requests.value - before}"
                )
                await asyncio.gather(*(ws.close() for ws in ok))
                await asyncio.sleep(0.5)
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 15)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--sessions", type=int, default=500, help="distinct session cookies (users)")
    parser.add_argument(
        "--service-delay", type=float, default=0.005, help="seconds the service takes to answer"
    )
    arguments = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * arguments.clients + 1000)), hard))
    # Started before any event loop exists in this process (a fork of a running loop is unsafe).
    counter: Synchronized = multiprocessing.Value("q", 0)  # type: ignore[type-arg]
    session_port = free_port()
    service = multiprocessing.Process(
        target=serve_sessions, args=(session_port, arguments.service_delay, counter), daemon=True
    )
    service.start()
    try:
        asyncio.run(main(arguments, session_port, counter))
    finally:
        service.terminate()
        service.join(5)
