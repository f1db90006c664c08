#!/usr/bin/env python3
"""A deploy restart as the production hook lives it, with and without resume without id.

    cd REPO && .venv/bin/python bench/restart.py [--ws 5000 --sio 5000 --rate 200]

Two server processes share a private redis-server. ``--ws`` plain-WebSocket clients connect as
the unchanged hook does (``/api/ws?userId=…&role=customer``, no ``lastEventId``, ever) and
``--sio`` Socket.IO clients as python-socketio's ``AsyncClient`` and socket.io-client without
recovery state do (``auth: {userId, role}``, no ``lastEventId``/``pid``/``offset``), all to the
first process. Events flow at ``--rate`` per second (``order_updated``, each to one client's
user, round robin, posted to the second process in batches every 50 ms). ``--before`` seconds
later the first process gets SIGTERM; every client reconnects to the second as its kind does:
the hook 3 s after the close, then backing off (6, 12, 24, 30 s; 5 attempts); Socket.IO after
python-socketio's default delay (1 s, randomised by up to 50 %). Publishing goes on until every
client is live again and ``--after`` seconds more.

Per client kind: the events each client should have received (its user's, from the start of
publishing to its end), how many it missed and how many it saw twice, and the time from the
SIGTERM until every client of that kind was connected again. Then the same run with
``history.resume_window_seconds: 0`` (resume off). Prints one JSON object and a Markdown table.

Uses the server's own test helpers (``tests/process.py``, ``tests/redis_server.py``); runs
``python -m server`` with this interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.process import ServerProcess
from tests.redis_server import RedisServer

HOOK_DELAYS = (3, 6, 12, 24, 30)  # the hook: 3 s, doubling, capped at 30 s, 5 attempts


@dataclass
class Client:
    kind: str  # "ws" or "sio"
    user: str
    received: list[str] = field(default_factory=list)
    connects: int = 0
    live_again_at: float | None = None  # when it was connected again after the SIGTERM
    resumed: bool | None = None  # what the last connected frame said (plain WS)
    failed: bool = False
    other: list[str] = field(default_factory=list)  # messages other than events (resync...)


class Run:
    def __init__(self, args: argparse.Namespace, resume: bool) -> None:
        self.args = args
        self.resume = resume
        self.clients = [Client("ws", f"ws-{i}") for i in range(args.ws)] + [
            Client("sio", f"sio-{i}") for i in range(args.sio)
        ]
        self.published: list[tuple[str, str]] = []  # (event id, user)
        self.killed_at = 0.0
        self.stop = asyncio.Event()
        self.bases: list[str] = []

    async def main(self) -> dict[str, Any]:
        redis = RedisServer()
        redis.start()
        config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)  # noqa: SIM115
        config.write(
            f"history: {{resume_window_seconds: {120 if self.resume else 0}}}\n"
            f"websocket: {{heartbeat_seconds: {self.args.heartbeat}}}\n"
        )
        config.close()
        env = {
            "REDIS_URL": redis.url,
            "AUTH_INSECURE": "1",
            "ADMIN_API_KEYS": None,
            "JWT_SECRET": None,
            "CONFIG_FILE": config.name,
            "LOG_LEVEL": "warning",
        }
        servers = [ServerProcess({**env, "DYNO": f"web.{i + 1}"}) for i in range(2)]
        try:
            for server in servers:
                server.start()
            for server in servers:
                await asyncio.to_thread(server.wait_healthy)
            self.bases = [server.base for server in servers]
            return await self._drive(servers[0])
        finally:
            for server in servers:
                server.close()
            redis.stop()
            os.unlink(config.name)

    async def _drive(self, doomed: ServerProcess) -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            self.session = session
            ready = [asyncio.Event() for _ in self.clients]
            tasks = [
                asyncio.create_task(self._ws(c, e) if c.kind == "ws" else self._sio(c, e))
                for c, e in zip(self.clients, ready, strict=True)
            ]
            started = time.monotonic()
            for event in ready:
                await event.wait()
            connect_seconds = time.monotonic() - started
            publisher = asyncio.create_task(self._publish())
            await asyncio.sleep(self.args.before)
            self.killed_at = time.monotonic()
            doomed.signal(signal.SIGTERM)
            while not all(c.live_again_at or c.failed for c in self.clients):
                await asyncio.sleep(0.1)
                if time.monotonic() - self.killed_at > 120:
                    break
            await asyncio.sleep(self.args.after)
            self.stop.set()
            await publisher
            await asyncio.sleep(2)  # the last events reach everyone
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self._report(connect_seconds)

    # --- publisher ---------------------------------------------------------------------------

    async def _publish(self) -> None:
        users = [c.user for c in self.clients]
        random.Random(1).shuffle(users)
        per_tick = max(1, round(self.args.rate / 20))
        n = 0
        next_tick = time.monotonic()
        url = f"{self.bases[1]}/api/v1/events"
        while not self.stop.is_set():
            batch = []
            for _ in range(per_tick):
                user = users[n % len(users)]
                batch.append(
                    {"type": "order_updated", "data": {"orderId": f"o{n}", "order": {"userId": user}}}
                )
                n += 1
            async with self.session.post(url, data=orjson.dumps({"events": batch}), headers=_JSON) as resp:
                answer = await resp.json()
                assert resp.status == 202, answer
            self.published += [
                (event_id, event["data"]["order"]["userId"])
                for event_id, event in zip(answer["ids"], batch, strict=True)
            ]
            next_tick += 0.05
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))

    # --- clients -----------------------------------------------------------------------------

    async def _ws(self, client: Client, ready: asyncio.Event) -> None:
        base = self.bases[0]
        attempt = 0
        while True:
            try:
                url = f"{base}/api/ws?userId={client.user}&role=customer"
                async with self.session.ws_connect(url, autoclose=False, max_msg_size=0) as ws:
                    attempt = 0
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        frame = orjson.loads(msg.data)
                        if frame["type"] == "connected":
                            self._connected(client, ready)
                            client.resumed = frame["data"].get("resumed")
                        elif "id" in frame:
                            client.received.append(frame["id"])
                        else:
                            client.other.append(f"{frame['type']} {frame.get('data')}")
            except (aiohttp.ClientError, OSError):
                pass
            if attempt >= len(HOOK_DELAYS):
                client.failed = True
                return
            await asyncio.sleep(HOOK_DELAYS[attempt])
            attempt += 1
            base = self.bases[1]  # the router sends it to a live process

    async def _sio(self, client: Client, ready: asyncio.Event) -> None:
        base = self.bases[0]
        rng = random.Random(client.user)
        while True:
            try:
                url = f"{base}/socket.io/?EIO=4&transport=websocket"
                async with self.session.ws_connect(url, autoclose=False, max_msg_size=0) as ws:
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        data: str = msg.data
                        if data.startswith("0"):
                            auth = {"userId": client.user, "role": "customer"}
                            await ws.send_str("40" + orjson.dumps(auth).decode())
                        elif data == "2":
                            await ws.send_str("3")
                        elif data.startswith("40"):
                            self._connected(client, ready)
                        elif data.startswith("42"):
                            name, *args = orjson.loads(data[2:])
                            if name == "order_updated":
                                client.received.append(args[-1])
                            else:
                                client.other.append(f"{name} {args[0]}")
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(1.0 + rng.random() * 0.5)  # python-socketio's default delay
            base = self.bases[1]

    def _connected(self, client: Client, ready: asyncio.Event) -> None:
        client.connects += 1
        if client.connects == 1:
            ready.set()
        elif self.killed_at and client.live_again_at is None:
            client.live_again_at = time.monotonic()

    # --- report ------------------------------------------------------------------------------

    def _report(self, connect_seconds: float) -> dict[str, Any]:
        expected: dict[str, set[str]] = {}
        for event_id, user in self.published:
            expected.setdefault(user, set()).add(event_id)
        kinds: dict[str, Any] = {}
        for kind in ("ws", "sio"):
            mine = [c for c in self.clients if c.kind == kind]
            if not mine:
                continue
            missed = [len(expected.get(c.user, set()) - set(c.received)) for c in mine]
            twice = [len(c.received) - len(set(c.received)) for c in mine]
            live_again = [c.live_again_at - self.killed_at for c in mine if c.live_again_at]
            kinds[kind] = {
                "clients": len(mine),
                "events_expected": sum(len(expected.get(c.user, ())) for c in mine),
                "events_missed": sum(missed),
                "clients_that_missed": sum(1 for m in missed if m),
                "events_seen_twice": sum(twice),
                "clients_that_saw_twice": sum(1 for t in twice if t),
                "reconnected": len(live_again),
                "failed": sum(1 for c in mine if c.failed),
                "all_live_again_s": round(max(live_again), 2) if live_again else None,
                "resumed_true": sum(1 for c in mine if c.resumed) if kind == "ws" else None,
                "other_messages": sorted({name for c in mine for name in c.other}),
            }
        return {
            "resume": self.resume,
            "events_published": len(self.published),
            "initial_connect_s": round(connect_seconds, 2),
            "kinds": kinds,
        }


_JSON = {"Content-Type": "application/json"}


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"{args.ws} plain-WS (hook) + {args.sio} Socket.IO clients, {args.rate} events/s, "
        f"SIGTERM {args.before} s after publishing starts, heartbeat {args.heartbeat} s",
        "",
        "| resume | clients | events expected | missed (clients) | seen twice (clients) "
        "| all live again after SIGTERM, s |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        for kind, k in result["kinds"].items():
            name = "plain WS (hook)" if kind == "ws" else "Socket.IO"
            lines.append(
                f"| {'on' if result['resume'] else 'off'} | {k['clients']} {name} | {k['events_expected']} "
                f"| {k['events_missed']} ({k['clients_that_missed']}) "
                f"| {k['events_seen_twice']} ({k['clients_that_saw_twice']}) | {k['all_live_again_s']} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ws", type=int, default=5000)
    ap.add_argument("--sio", type=int, default=5000)
    ap.add_argument("--rate", type=int, default=200, help="events per second")
    ap.add_argument("--before", type=float, default=8.0, help="seconds of publishing before SIGTERM")
    ap.add_argument("--after", type=float, default=3.0, help="seconds of publishing once all are back")
    ap.add_argument("--heartbeat", type=float, default=5.0, help="websocket.heartbeat_seconds")
    ap.add_argument("--only", choices=("on", "off"), help="one run only")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    modes = [args.only == "on"] if args.only else [True, False]
    results = [asyncio.run(Run(args, resume).main()) for resume in modes]
    print(json.dumps(results))
    print(table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
