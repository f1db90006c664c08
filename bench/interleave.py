#!/usr/bin/env python3
"""Single-event POST CPU of several servers, measured in turns so the machine's drift cancels out.

``bench/run`` measures one variant after the other, minutes apart, and on this 2-vCPU VM the
speed of the same code moves by ±30 % within minutes (2026-11-27: the same in-memory server
86 to 154 µs per POST, the Redis ratio of one pair of runs anywhere from x0.84 to x2.7). A ratio
of two servers is only as good as the time between their measurements. Here every server runs
the whole time, each pinned to ``--server-cpu``, and the load goes to one at a time in short
windows (``--window``), round after round: whatever slows the machine slows all of them alike.

Each server gets ``--watchers`` plain-WebSocket clients on store ``ingest`` and, in its windows,
``--concurrency`` keep-alive connections that POST one ``product_updated`` each, back to back
(the ingest workload of ``bench/run``). CPU is read from every thread's ``schedstat`` (ns) at the
start and end of each window. Printed: each server's µs per POST, its ratio to the first
(all its windows together, and the median of the adjacent windows' ratios), and what its watchers
got: every event, once, or the run fails.

Servers, ``LABEL=KIND[@CHECKOUT]``: ``memory``, ``redis`` (a database of its own on
``--redis-url``'s Redis, emptied first), ``floor`` (``bench/round_trip_floor.py``: memory plus
one Redis round trip per POST) or ``node-ws`` (``bench/ref-ws.js``, the Node reference of
``bench/run``; run ``npm ci`` in ``bench`` first); ``CHECKOUT`` another working tree of this
repository (its ``.venv``, or ``--python``), to compare code:

    .venv/bin/python bench/interleave.py mem=memory redis=redis floor=floor
    .venv/bin/python bench/interleave.py node=node-ws ours=memory
    .venv/bin/python bench/interleave.py main=redis@/tmp/main change=redis --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wsclient import RawWebSocket, connect_ws  # the load scripts' WebSocket client

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "benchkey"
KINDS = ("memory", "redis", "floor", "node-ws")


@dataclass
class Server:
    label: str
    kind: str
    checkout: Path
    port: int
    redis_url: str | None = None
    process: subprocess.Popen[bytes] | None = None
    sequence: int = 0  # the last event's ``seq``
    posts: int = 0  # answered 202
    in_flight: int = 0
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # set when none is in flight
    windows: list[tuple[int, int]] = field(default_factory=list)  # (ns of CPU, POSTs) per window
    watchers: list[Watcher] = field(default_factory=list)

    def cpu_ns(self) -> int:
        assert self.process is not None
        total = 0
        for task in os.listdir(f"/proc/{self.process.pid}/task"):
            try:
                with open(f"/proc/{self.process.pid}/task/{task}/schedstat") as stats:
                    total += int(stats.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
                pass
        return total


class Watcher:
    """A plain-WebSocket client (``bench/wsclient.py``) that checks it gets every
    ``product_updated``, once. (Not in order: concurrent POSTs on different connections may be
    read in either order.)"""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.duplicated = 0
        self.socket: RawWebSocket | None = None

    async def open(self, port: int) -> None:
        path = f"/api/ws?userId=w{os.urandom(4).hex()}&role=customer&stores=ingest"
        self.socket = await connect_ws("127.0.0.1", port, path)
        connected = asyncio.get_running_loop().create_future()
        self.socket.on_text = lambda text: self._frame(text, connected)
        self.socket.start()
        await asyncio.wait_for(connected, 10)

    def _frame(self, text: str, connected: asyncio.Future[None]) -> None:
        frame = orjson.loads(text)
        if frame["type"] == "connected" and not connected.done():
            connected.set_result(None)
        elif frame["type"] == "product_updated":
            seq = frame["data"]["seq"]
            self.duplicated += seq in self.seen
            self.seen.add(seq)


def start(server: Server, args: argparse.Namespace) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CONFIG_FILE", "JWT_SECRET", "DYNO")}
    env.update(
        PORT=str(server.port),
        HOST="127.0.0.1",
        AUTH_INSECURE="1",
        ADMIN_API_KEYS=API_KEY,
        LOG_LEVEL="warning",
        CONFIG_FILE=str(ROOT / "bench" / "server.yaml"),
    )
    python = args.python or str(server.checkout / ".venv" / "bin" / "python")
    command = [python, "-m", "server"]
    if server.kind == "redis":
        assert server.redis_url is not None
        env["REDIS_URL"] = server.redis_url
        flush(server.redis_url)
    elif server.kind == "floor":
        env["FLOOR_REDIS_URL"] = args.redis_url
        command = [python, str(server.checkout / "bench" / "round_trip_floor.py")]
    elif server.kind == "node-ws":  # bench/run's reference, with the accept queue it gives it
        env["BACKLOG"] = "4096"
        command = ["node", str(server.checkout / "bench" / "ref-ws.js")]
    server.process = subprocess.Popen(
        ["taskset", "-c", args.server_cpu, *command],
        cwd=server.checkout,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(Path(args.logs) / f"{server.label}.interleave.raw", "wb"),  # noqa: SIM115 - the child's
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=1):
                return
        except OSError:
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{server.label} did not start: see {args.logs}/{server.label}.interleave.raw"
                ) from None
            time.sleep(0.1)


def place_redis(url: str, cpu: str) -> Callable[[], None]:
    """Run every thread of the (local) Redis at ``url`` on ``cpu``; returns what puts it back.

    Where Redis runs changes the server's own CPU: free to run on the server's CPU, it takes turns
    with the server there (2026-11-27, this tool: a single POST through Redis cost x1.51-1.60 the
    in-memory figure with Redis left free, x1.35-1.39 with it on the driver's CPU)."""
    info = subprocess.run([*redis_cli(url), "INFO", "server"], check=True, capture_output=True, text=True)
    pid = next(
        line.split(":")[1].strip() for line in info.stdout.splitlines() if line.startswith("process_id:")
    )
    before = subprocess.run(["taskset", "-p", "-c", pid], check=True, capture_output=True, text=True)
    cpus = before.stdout.rsplit(":", 1)[1].strip()
    subprocess.run(["taskset", "-a", "-p", "-c", cpu, pid], check=True, capture_output=True)
    return lambda: subprocess.run(["taskset", "-a", "-p", "-c", cpus, pid], check=False, capture_output=True)


def redis_cli(url: str) -> list[str]:
    """``redis-cli`` for the Redis and database of ``url``."""
    parts = urlsplit(url)
    command = ["redis-cli", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    command += ["-n", parts.path.strip("/") or "0"]
    return [*command, "-a", parts.password, "--no-auth-warning"] if parts.password else command


def database(url: str, index: int) -> str:
    """``url`` with the ``index``-th database below its own (default 15): each Redis-backed
    server reads its own stream."""
    parts = urlsplit(url)
    number = int(parts.path.strip("/") or 15) - index
    if number < 0:
        raise ValueError(f"no database {number} for redis server {index + 1} of {url}")
    return urlunsplit(parts._replace(path=f"/{number}"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def flush(url: str) -> None:
    """Empty this server's database: an earlier run's stream and resume points must not reach it."""
    subprocess.run([*redis_cli(url), "FLUSHDB"], check=True, capture_output=True)


async def poster(server: Server, turn: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = (
        f"POST /api/v1/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()
    try:
        while True:
            await turn.wait()
            server.sequence += 1
            event = {
                "type": "product_updated",
                "data": {"seq": server.sequence, "storeId": "ingest", "product": {"id": "p1"}},
            }
            body = orjson.dumps(event)
            server.in_flight += 1
            try:
                writer.write(b"%s%d\r\n\r\n%s" % (head, len(body), body))
                answer = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line[15:])
                    for line in answer.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
            finally:
                server.in_flight -= 1
                if not server.in_flight:
                    server.settled.set()
            if not answer.startswith(b"HTTP/1.1 202"):
                raise RuntimeError(f"{server.label} answered {answer.split(b' ', 2)[1].decode()}")
            server.posts += 1
    finally:
        writer.close()


async def measure(servers: list[Server], args: argparse.Namespace) -> None:
    for server in servers:
        server.watchers = [Watcher() for _ in range(args.watchers)]
        for watcher in server.watchers:
            await watcher.open(server.port)
    turn = {server.label: asyncio.Event() for server in servers}
    tasks = [
        asyncio.create_task(poster(server, turn[server.label]))
        for server in servers
        for _ in range(args.concurrency)
    ]
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        for server in servers:
            cpu, posts = server.cpu_ns(), server.posts
            turn[server.label].set()
            await asyncio.sleep(args.window)
            turn[server.label].clear()
            if server.in_flight:  # those in flight end
                server.settled.clear()
                await server.settled.wait()
            await asyncio.sleep(0.005)  # and their deliveries go out
            server.windows.append((server.cpu_ns() - cpu, server.posts - posts))
            failed = [task for task in tasks if task.done() and task.exception()]
            if failed:
                raise RuntimeError(f"a publisher failed: {failed[0].exception()!r}")
    deadline = time.monotonic() + 10
    # Polled: the last frames may still be on their way to any of the watchers.
    while any(len(w.seen) < s.posts for s in servers for w in s.watchers) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    for watcher in (watcher for server in servers for watcher in server.watchers):
        if watcher.socket is not None:
            watcher.socket.drop()


def report(servers: list[Server], args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """Print each server's figures and return them; ``complete`` is False for a server whose
    watchers missed an event or got one twice."""
    base = servers[0]
    base_cost = sum(ns for ns, _ in base.windows) / max(base.posts, 1)
    print(
        f"{len(base.windows)} rounds of {args.window * 1000:.0f} ms windows, "
        f"{args.concurrency} POSTs in flight, {args.watchers} watchers per server; "
        f"server CPU {args.server_cpu}, this driver CPU {args.driver_cpu}"
    )
    figures: dict[str, dict[str, object]] = {}
    for server in servers:
        cost = sum(ns for ns, _ in server.windows) / max(server.posts, 1)
        line = f"{server.label:>10} ({server.kind}): {server.posts:>7} POSTs, {cost / 1000:6.1f} µs/POST"
        ratio = median = None
        if server is not base:
            pairs = zip(server.windows, base.windows, strict=True)
            ratio = cost / base_cost
            median = statistics.median([(c / n) / (bc / bn) for (c, n), (bc, bn) in pairs if n and bn])
            line += f", x{ratio:.3f} {base.label} (median of rounds x{median:.3f})"
        got = [len(w.seen) for w in server.watchers]
        duplicated = sum(w.duplicated for w in server.watchers)
        line += f"; each watcher got {min(got)}-{max(got)} of them, {duplicated} twice"
        print(line)
        figures[server.label] = {
            "kind": server.kind,
            "posts": server.posts,
            "us_per_post": round(cost / 1000, 2),
            "ratio": None if ratio is None else round(ratio, 3),
            "median_ratio": None if median is None else round(median, 3),
            "complete": min(got) == max(got) == server.posts and duplicated == 0,
        }
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("servers", nargs="+", help="LABEL=KIND[@CHECKOUT], KIND one of " + ", ".join(KINDS))
    parser.add_argument(
        "--seconds", type=float, default=30, help="load time in all (each server gets its share)"
    )
    parser.add_argument("--window", type=float, default=0.25, help="seconds of load per server per round")
    parser.add_argument("--concurrency", type=int, default=4, help="POSTs in flight (bench/run's ingest: 4)")
    parser.add_argument("--watchers", type=int, default=10, help="WebSocket clients per server")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/15",
        help="redis servers get its db, then the ones below",
    )
    parser.add_argument(
        "--redis-cpu",
        help="run the Redis of --redis-url (this machine's) on this CPU meanwhile (default: where it is)",
    )
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--driver-cpu", default="1")
    parser.add_argument("--base-port", type=int, default=0, help="server i on this + i (default: free ports)")
    parser.add_argument("--python", help="interpreter for every server (default: its checkout's .venv)")
    parser.add_argument(
        "--logs", default=str(ROOT / "bench" / "results"), help="where the servers' stderr goes"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    servers: list[Server] = []
    for index, spec in enumerate(args.servers):
        label, _, rest = spec.partition("=")
        kind, _, checkout = rest.partition("@")
        if not label or kind not in KINDS:
            parser.error(f"{spec!r}: expected LABEL=KIND[@CHECKOUT], KIND one of {', '.join(KINDS)}")
        port = args.base_port + index if args.base_port else free_port()
        server = Server(label, kind, Path(checkout or ROOT).resolve(), port)
        if kind == "redis":
            try:
                server.redis_url = database(args.redis_url, sum(s.kind == "redis" for s in servers))
            except ValueError as exc:
                parser.error(str(exc))
        servers.append(server)
    Path(args.logs).mkdir(parents=True, exist_ok=True)
    placed = place_redis(args.redis_url, args.redis_cpu) if args.redis_cpu else None
    try:
        for server in servers:
            start(server, args)
        os.sched_setaffinity(0, {int(args.driver_cpu)})
        uvloop.run(measure(servers, args))
        figures = report(servers, args)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1))
        return 0 if all(server["complete"] for server in figures.values()) else 1
    finally:
        if placed is not None:
            placed()
        for server in servers:
            if server.process is not None:
                server.process.terminate()
                try:
                    server.process.wait(5)
                except subprocess.TimeoutExpired:
                    server.process.kill()


if __name__ == "__main__":
    sys.exit(main())
