#!/usr/bin/env python3
"""RSS after churn (issue 16, part 3): does a server process give back what connections took?

One ``python -m server`` process (memory backplane; ``--redis`` for a private redis-server) on
loopback. Its RSS (``/proc/PID/status`` VmRSS) is read:

- **before**: after a warm-up of 100 connections that came and went (so that what is built once,
  on first use, is counted in the baseline, not as a leak);
- **during**: the highest reading while ``--total`` connections (half plain WebSocket, half
  Socket.IO over WebSocket) come and go, ``--concurrent`` at a time: each wave connects, gets
  two broadcast events, then half its clients vanish without a close and half close properly;
- **after**: once the server reports no connection left, ``--settle`` seconds later.

    bench/churn_rss.py                          # 5,000 connections, 1,000 at a time
    bench/churn_rss.py --concurrent 5000        # all 5,000 at once
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from wsclient import EngineIO, RawWebSocket, connect_ws

REPO = Path(__file__).resolve().parent.parent
JWT_SECRET = "churn-secret-that-is-long-enough-for-hs256"
ADMIN_KEY = "churn-admin-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sampler:
    """Reads the process's RSS every 50 ms; ``peak`` is the highest since ``reset``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_kib(self.pid))
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def open_client(port: int, index: int, sio: bool, got: dict[int, int]) -> RawWebSocket | None:
    token = jwt.encode(
        {"sub": f"churn-{index}", "role": "customer", "exp": int(time.time()) + 3600}, JWT_SECRET
    )
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def count(_text: str) -> None:
        got[index] = got.get(index, 0) + 1
        if not ready.done():
            ready.set_result(None)

    try:
        if sio:
            ws = await connect_ws("127.0.0.1", port, "/socket.io/?EIO=4&transport=websocket", within=30)
            eio = EngineIO(ws, {"token": token, "stores": ["s1"]})
            eio.on_connect = lambda _data: ready.done() or ready.set_result(None)
            eio.on_event = lambda _name, _args: count("")
        else:
            ws = await connect_ws("127.0.0.1", port, f"/api/ws?token={token}&storeId=s1", within=30)
            ws.on_text = count
        ws.start()
        await asyncio.wait_for(ready, 30)
    except (OSError, TimeoutError, ConnectionError) as exc:
        print(f"client {index}: {exc!r}", file=sys.stderr)
        return None
    return ws


async def connections(base: str, http: aiohttp.ClientSession) -> int:
    async with http.get(f"{base}/api/v1/stats", headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as resp:
        stats: dict[str, Any] = await resp.json()
    total: int = stats["connections"]
    return total


async def wave(port: int, base: str, http: aiohttp.ClientSession, first: int, count: int) -> int:
    """``count`` clients connect, two broadcasts reach them, then they all go; how many connected."""
    got: dict[int, int] = {}
    clients = await asyncio.gather(
        *(open_client(port, index, index % 2 == 1, got) for index in range(first, first + count))
    )
    opened = [c for c in clients if c is not None]
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for n in range(2):
        event = {"type": "store_updated", "data": {"storeId": "s1", "store": {"n": n, "pad": "x" * 200}}}
        async with http.post(f"{base}/api/v1/events", json=event, headers=headers) as resp:
            assert resp.status == 202, await resp.text()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sum(got.values()) < len(opened) * 2:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    for index, client in enumerate(opened):
        if index % 4 < 2:
            client.drop()  # vanishes: no close frame
        elif client.transport is not None:
            client.transport.write(b"\x88\x82\x00\x00\x00\x00\x03\xe8")  # a masked close 1000, then wait
    return len(opened)


async def gone(base: str, http: aiohttp.ClientSession, within: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await connections(base, http) == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise RuntimeError("connections still open on the server")


def start(
    args: argparse.Namespace,
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes] | None, int, str]:
    """The server process (and its redis-server with ``--redis``): processes, port, log path."""
    port = free_port()
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "LANG": "C.UTF-8",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "JWT_SECRET": JWT_SECRET,
        "ADMIN_API_KEYS": ADMIN_KEY,
        "LOG_LEVEL": "warning",
        **dict(item.split("=", 1) for item in args.env or ()),
    }
    redis: subprocess.Popen[bytes] | None = None
    if args.redis:
        redis_port = free_port()
        redis = subprocess.Popen(
            [
                *(shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--save", ""),
                *("--appendonly", "no", "--dir", tempfile.mkdtemp(prefix="churn-redis-")),
            ],
            stdout=subprocess.DEVNULL,
        )
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        time.sleep(0.5)
    with tempfile.NamedTemporaryFile(prefix="churn-server-", suffix=".log", delete=False) as log:
        command = [sys.executable, *(args.wrapper or ["-m", "server"])]
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
    return server, redis, port, log.name


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    server, redis, port, log_name = start(args)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(1200):  # 60 s: slower under a tracing wrapper
                try:
                    async with http.get(f"{base}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            started_rss = rss_kib(server.pid)
            await wave(port, base, http, 0, 100)  # warm-up
            await gone(base, http)
            await asyncio.sleep(args.settle)
            before = rss_kib(server.pid)
            if args.wrapper:
                server.send_signal(signal.SIGUSR1)
                await asyncio.sleep(args.settle * 3)  # a snapshot under tracemalloc takes a while
                await asyncio.sleep(args.settle)
            sampler = Sampler(server.pid)
            sampler.start()
            connected = 0
            first = 100
            t0 = time.monotonic()
            while first - 100 < args.total:
                count = min(args.concurrent, args.total - (first - 100))
                connected += await wave(port, base, http, first, count)
                first += count
                await gone(base, http)
            churn_seconds = time.monotonic() - t0
            sampler.stop()
            during = sampler.peak
            await asyncio.sleep(args.settle)
            after = rss_kib(server.pid)
            if args.wrapper:
                server.send_signal(signal.SIGUSR1)
                await asyncio.sleep(args.settle * 3)  # a snapshot under tracemalloc takes a while
            await asyncio.sleep(args.settle)
            later = rss_kib(server.pid)
    finally:
        server.terminate()
        server.wait(60)
        if redis is not None:
            redis.kill()
            redis.wait()
    return {
        "backplane": "redis" if args.redis else "memory",
        "env": args.env or [],
        "total": args.total,
        "concurrent": args.concurrent,
        "connected": connected,
        "churn_seconds": round(churn_seconds, 1),
        "rss_at_start_mib": round(started_rss / 1024, 1),
        "before_mib": round(before / 1024, 1),
        "during_peak_mib": round(during / 1024, 1),
        "after_mib": round(after / 1024, 1),
        "after_twice_settle_mib": round(later / 1024, 1),
        "after_vs_before": round(after / before, 3),
        "server_log": log_name,
        "load_average": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--total", type=int, default=5000, help="connections that come and go (5000)")
    parser.add_argument("--concurrent", type=int, default=1000, help="open at once (1000)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between gone and measured (5)")
    parser.add_argument("--redis", action="store_true", help="with a private redis-server as backplane")
    parser.add_argument(
        "--wrapper",
        nargs="+",
        help="run the server as ``python WRAPPER...`` instead of ``python -m server``, and send it "
        "SIGUSR1 before and after the churn (e.g. a script that dumps tracemalloc snapshots)",
    )
    parser.add_argument(
        "--env", nargs="+", metavar="KEY=VALUE", help="more environment for the server (e.g. LD_PRELOAD=...)"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(measure(args))
    print(
        f"churn: {result['connected']:,}/{result['total']:,} connections "
        f"({result['concurrent']:,} at a time, "
        f"half plain WS, half Socket.IO; {result['backplane']} backplane{' ' if args.env else ''}"
        f"{' '.join(args.env or [])}) in {result['churn_seconds']} s; "
        f"RSS at start {result['rss_at_start_mib']} MiB"
    )
    print(
        f"RSS before {result['before_mib']} MiB, during (peak) {result['during_peak_mib']} MiB, "
        f"after {result['after_mib']} MiB ({(result['after_vs_before'] - 1) * 100:+.1f} %), "
        f"{args.settle:g} s later {result['after_twice_settle_mib']} MiB"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
