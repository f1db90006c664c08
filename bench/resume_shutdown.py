#!/usr/bin/env python3
"""What resume without id costs at SIGTERM and per heartbeat, for N connections (default 10,000).

    cd REPO && .venv/bin/python bench/resume_shutdown.py [--connections 10000] [--runs 5]

Starts a private redis-server, a node on the Redis backplane and N connections of distinct users
in its hub (objects that write nowhere: what is measured is the server's own work and Redis's),
then times, each ``--runs`` times:

- ``save_all``: what ``close_clients`` runs on SIGTERM before closing the clients (every
  connection's position, one per user and role, written in pipelined script calls);
- ``save_leases``: what every process runs once per heartbeat interval (the positions of its live
  connections, for the others to resume them if it is killed).

Prints one JSON object (milliseconds, median and worst) and checks that Redis holds N points.

``--end-to-end``: instead, a real server process (``python -m server``, Redis) with N real
plain-WebSocket clients (raw sockets from this process), then SIGTERM: the time to the process's
exit, how many clients got their 1012, and how many resume points Redis holds afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.backplane.redis import RedisBackplane
from server.config import load_settings
from server.events import Event
from server.hub import Connection
from server.identity.auth import Identity
from server.node import Node
from tests.process import ServerProcess
from tests.redis_server import RedisServer


class Sink(Connection):
    """A connection that writes nowhere."""

    transport = "websocket"
    __slots__ = ()

    def send_events(self, events: Sequence[Event]) -> None:
        pass

    def send_message(self, message: dict[str, Any]) -> None:
        pass

    def confirm_position(self) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        self.closed = True


async def run(connections: int, runs: int) -> dict[str, Any]:
    redis = RedisServer()
    redis.start()
    try:
        env = {"AUTH_INSECURE": "1", "CONFIG_FILE": os.devnull, "REDIS_URL": redis.url}
        settings = load_settings(env=env, overrides={"log_level": "warning"})
        node = Node(settings, RedisBackplane(settings))
        await node.start()
        position = await node.backplane.position()
        for i in range(connections):
            conn = Sink(Identity(f"user-{i}", "customer"), 20.0, 40)  # type: ignore[call-arg]
            node.hub.add(conn, [f"user:user-{i}", "role:customer", "global"])
            conn.start_position = position
            conn.release((), None)
        shutdown, leases = [], []
        for _ in range(runs):
            node.resume_book.closing = False
            started = time.perf_counter()
            saved = await node.resume_book.save_all()
            shutdown.append((time.perf_counter() - started) * 1000)
            assert saved == connections, saved
            started = time.perf_counter()
            await node.backplane.save_leases(node.resume_book.live_points(), only_new=False)
            leases.append((time.perf_counter() - started) * 1000)
        keys = 0
        async for _ in node.backplane.redis.scan_iter(match="rt:resume:*", count=10_000):  # type: ignore[attr-defined]
            keys += 1
        assert keys == connections, keys
        await node.stop()
        return {
            "connections": connections,
            "runs": runs,
            "shutdown_save_ms": {
                "median": round(statistics.median(shutdown), 1),
                "max": round(max(shutdown), 1),
            },
            "lease_round_ms": {"median": round(statistics.median(leases), 1), "max": round(max(leases), 1)},
            "resume_keys_in_redis": keys,
        }
    finally:
        redis.stop()


async def _client(port: int, user: str, opened: list[int], closed: list[int]) -> None:
    """A plain-WebSocket client that reads until the server's close frame; records its code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /api/ws?userId={user}&role=customer HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    opened.append(1)
    buffer = b""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            buffer += chunk
            while len(buffer) >= 2:  # server frames: unmasked, small here
                length = buffer[1] & 0x7F
                header = 2 if length < 126 else 4
                if length == 126:
                    length = int.from_bytes(buffer[2:4], "big")
                if len(buffer) < header + length:
                    break
                opcode, payload = buffer[0] & 0x0F, buffer[header : header + length]
                buffer = buffer[header + length :]
                if opcode == 0x8:
                    closed.append(int.from_bytes(payload[:2], "big"))
                    writer.close()
                    return
    writer.close()


async def end_to_end(connections: int) -> dict[str, Any]:
    redis = RedisServer()
    redis.start()
    server = ServerProcess(
        {
            "REDIS_URL": redis.url,
            "AUTH_INSECURE": "1",
            "ADMIN_API_KEYS": None,
            "JWT_SECRET": None,
            "LOG_LEVEL": "warning",
        }
    )
    try:
        server.start()
        await asyncio.to_thread(server.wait_healthy)
        opened: list[int] = []
        closed: list[int] = []
        tasks = []
        started = time.monotonic()
        for i in range(connections):
            tasks.append(asyncio.create_task(_client(server.port, f"user-{i}", opened, closed)))
            if i % 200 == 199:
                await asyncio.sleep(0.05)
        while len(opened) < connections and time.monotonic() - started < 120:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        connect_seconds = time.monotonic() - started
        await asyncio.sleep(2)  # connected frames out; the connect-time leases written
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        code = await server.wait_exit(within=30)
        exit_seconds = time.monotonic() - signalled
        await asyncio.gather(*tasks, return_exceptions=True)
        import redis as redis_py

        client = redis_py.Redis.from_url(redis.url)
        keys = sum(1 for _ in client.scan_iter(match="rt:resume:*", count=10_000))
        client.close()
        return {
            "connections": len(opened),
            "connect_s": round(connect_seconds, 2),
            "sigterm_to_exit_s": round(exit_seconds, 2),
            "exit_code": code,
            "clients_closed_1012": sum(1 for c in closed if c == 1012),
            "resume_keys_in_redis": keys,
        }
    finally:
        server.close()
        redis.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--end-to-end", action="store_true", help="a real process and real clients")
    args = ap.parse_args()
    if args.end_to_end:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        print(json.dumps(asyncio.run(end_to_end(args.connections))))
        return 0
    print(json.dumps(asyncio.run(run(args.connections, args.runs))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
