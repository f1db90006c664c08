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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.auth import Identity
from server.backplane.redis import RedisBackplane
from server.config import load_settings
from server.events import Event
from server.hub import Connection
from server.node import Node
from tests.redis_server import RedisServer


class Sink(Connection):
    """A connection that writes nowhere."""

    transport = "websocket"
    __slots__ = ()

    def send_events(self, events: Sequence[Event]) -> None:
        pass

    def send_message(self, message: dict[str, Any]) -> None:
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.connections, args.runs))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
