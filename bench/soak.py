#!/usr/bin/env python3
"""Soak with faults (issue 16, part 5): two server processes and Redis behind HAProxy, thousands of
churning clients of every kind, events posted all along, and the faults a deployment meets.

    bench/soak.py                              # 10 minutes, 1,000 plain-WS + 1,000 Socket.IO clients
    bench/soak.py --minutes 1 --clients 200    # the test suite's version (tests/test_soak.py)

Everything runs on loopback, bounded in time and count:

- a private ``redis-server`` on a free port, with ``--appendonly yes --appendfsync always``: every
  event the API accepted is on disk before the 202, so it survives the Redis crash below;
- two processes started with the Procfile's command (``python -m server``) by a small supervisor
  that starts again any process that exits, as a dyno manager does (``DYNO=web.1``, ``web.2``);
- HAProxy in front (round-robin, no affinity, 55 s idle timeout, WebSocket upgrades passed
  through), as Heroku's router; clients and the publisher only ever talk to it;
- clients of five kinds churn: they connect with a JWT each, view a store, vanish without a
  close after 5-30 s, and come back: ``ws-id`` (plain WS, ``lastEventId``), ``ws-hook`` (plain WS
  without an id, 3 s then doubling, as the seed hook), ``sio-id`` (``auth.lastEventId``),
  ``sio-pid`` (socket.io-client's ``pid``/``offset``), ``sio-hook`` (Socket.IO without an id);
- events at a steady rate (order_updated to one user, product_updated to a store, store_updated
  to everyone), single POSTs with an ``Idempotency-Key`` each, 503s retried with the same key;
- faults: a slow consumer (stops reading; must be closed 1008 alone), one process SIGKILLed,
  Redis SIGKILLed and started again, then a rolling restart (SIGTERM to each process in turn).

It prints per client kind: events addressed to it, deliveries owed, received, missing,
duplicated; peak RSS per process; POSTs refused (503) and retried. How a client is owed an event:
``bench/soak_clients.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import jwt
from soak_clients import (
    KINDS,
    SIO_KINDS,
    WITH_ID,
    WS_KINDS,
    Client,
    Publisher,
    Run,
    client_loop,
    short_clients,
    tally,
)
from wsclient import connect_ws

REPO = Path(__file__).resolve().parent.parent
JWT_SECRET = "soak-secret-that-is-long-enough-for-hs256"
ADMIN_KEY = "soak-admin-key"
# The one ERROR line a Redis crash is expected to cause (each process's stream tail, once).
EXPECTED_ERRORS = ("backplane tail lost: retrying",)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- Redis --------------------------------------------------------------------------------------


class Redis:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise SystemExit("soak: redis-server is not installed")
        self.process = subprocess.Popen(
            [
                *(executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)),
                *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def crash(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def rss_kib(self) -> int:
        return _status(self.process.pid, "VmRSS") if self.process else 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


# --- the processes and their supervisor ---------------------------------------------------------


def procfile_command() -> list[str]:
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return shlex.split(line[4:])
    raise SystemExit("soak: the Procfile has no web: line")


def _status(pid: int, field_name: str) -> int:
    """A ``VmRSS``-style line of /proc/PID/status, in KiB (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Dyno:
    """One process slot (``web.N``): its port stays, its process is replaced when it exits."""

    number: int
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exits: list[tuple[str, int, float]] = field(default_factory=list)  # (why, code, seconds to exit)
    peak_rss_kib: int = 0
    end_rss_kib: int = 0
    _signalled: tuple[str, float] | None = None
    _log: IO[bytes] | None = None

    @property
    def name(self) -> str:
        return f"web.{self.number}"

    def start(self) -> None:
        if self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed by ``stop``)
        self.process = subprocess.Popen(
            procfile_command(),
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        self.starts += 1

    def send(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self._signalled = (sig.name, time.monotonic())
        self.process.send_signal(sig)

    def reap(self) -> bool:
        """True if the process has exited (and records how)."""
        if self.process is None or self.process.poll() is None:
            return False
        why, since = self._signalled or ("exited by itself", time.monotonic())
        self.exits.append((why, self.process.returncode, round(time.monotonic() - since, 2)))
        self._signalled = None
        self.process = None
        return True

    def sample(self) -> None:
        if self.process is not None:
            self.peak_rss_kib = max(self.peak_rss_kib, _status(self.process.pid, "VmHWM"))
            self.end_rss_kib = _status(self.process.pid, "VmRSS")

    def healthy(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                return sock.recv(64).split(b" ", 2)[1:2] == [b"200"]
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self._log is not None:
            self._log.close()


class Supervisor:
    """Starts every dyno, and starts again any that exits (after 0.5 s), like a dyno manager."""

    def __init__(self, dynos: list[Dyno]) -> None:
        self.dynos = dynos
        self.running = True

    async def run(self) -> None:
        while self.running:
            for dyno in self.dynos:
                dyno.sample()
                if dyno.reap():
                    log(f"supervisor: {dyno.name} exited ({dyno.exits[-1]}); starting it again")
                    await asyncio.sleep(0.5)
                    dyno.start()
            await asyncio.sleep(0.2)

    async def wait_healthy(self, dyno: Dyno, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if dyno.process is not None and await asyncio.to_thread(dyno.healthy):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{dyno.name} is not healthy {within}s later")


# --- the proxy ----------------------------------------------------------------------------------

HAPROXY_CONFIG = """
global
    maxconn 9000
defaults
    mode http
    timeout connect 5s
    timeout client 55s
    timeout server 55s
    timeout tunnel 55s
    timeout http-request 10s
    retries 3
    option redispatch
frontend web
    bind 127.0.0.1:{port}
    default_backend dynos
backend dynos
    balance roundrobin
    option httpchk GET /healthz
    default-server check inter 1s fall 2 rise 1
{servers}
"""


class Proxy:
    """HAProxy as Heroku's router: round-robin, no affinity, 55 s idle (``timeout tunnel`` for
    WebSockets, which HAProxy passes through in HTTP mode), retries elsewhere when a dyno refuses."""

    def __init__(self, workdir: Path, dynos: list[Dyno]) -> None:
        self.port = free_port()
        self.config = workdir / "haproxy.cfg"
        servers = "\n".join(f"    server {d.name} 127.0.0.1:{d.port}" for d in dynos)
        self.config.write_text(HAPROXY_CONFIG.format(port=self.port, servers=servers))
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "haproxy.log"

    def start(self) -> None:
        executable = shutil.which("haproxy")
        if executable is None:
            raise SystemExit("soak: haproxy is not installed (apt-get install -y haproxy)")
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [executable, "-db", "-f", str(self.config)], stdout=out, stderr=out
            )
        wait_port(self.port)

    def rss_kib(self) -> int:
        return _status(self.process.pid, "VmHWM") if self.process else 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


# --- faults -------------------------------------------------------------------------------------


@dataclass
class Faults:
    timeline: list[str] = field(default_factory=list)
    slow_consumer: dict[str, Any] = field(default_factory=dict)

    def note(self, started: float, what: str) -> None:
        entry = f"{time.monotonic() - started:6.1f}s {what}"
        self.timeline.append(entry)
        log(f"fault: {what}")


def count_in_logs(dynos: list[Dyno], text: str) -> int:
    return sum(path.read_text(errors="replace").count(text) for path in {d.log_path for d in dynos})


async def slow_consumer(
    run: Run, dynos: list[Dyno], http: aiohttp.ClientSession, base: str
) -> dict[str, Any]:
    """A client that stops reading while big events for its user keep coming: it must be closed
    with 1008 and nobody else may notice."""
    token = jwt.encode({"sub": "slow-1", "role": "customer", "exp": int(time.time()) + 7200}, JWT_SECRET)
    ws = await connect_ws(run.host, run.port, f"/api/ws?token={token}", receive_buffer=16384)
    codes: list[int | None] = []
    ws.on_close = codes.append
    ws.start()
    await asyncio.sleep(0.5)  # its connected frame arrives
    ws.pause()
    before = count_in_logs(dynos, "slow consumer closed")
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    blob = "x" * 30_000
    posted = 0
    for batch in range(80):
        events = [
            {
                "type": "order_updated",
                "data": {"orderId": f"slow{batch}-{i}", "order": {"userId": "slow-1", "blob": blob}},
                "idempotencyKey": f"slow-{batch}-{i}-{random.random()}",
            }
            for i in range(30)
        ]
        async with http.post(f"{base}/api/v1/events", json={"events": events}, headers=headers) as resp:
            if resp.status == 202:
                posted += len(events)
        if count_in_logs(dynos, "slow consumer closed") > before:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1)
    logged = count_in_logs(dynos, "slow consumer closed") - before
    ws.resume()  # read what is left: the close frame, if it is still there
    for _ in range(100):
        if ws.closed:
            break
        await asyncio.sleep(0.1)
    ws.drop()
    return {
        "events_posted": posted,
        "bytes_posted": posted * len(blob),
        "closed_in_log": logged,
        "close_seen": codes,
    }


async def run_faults(
    run: Run,
    supervisor: Supervisor,
    redis: Redis,
    faults: Faults,
    seconds: float,
    http: aiohttp.ClientSession,
    base: str,
) -> None:
    started = time.monotonic()
    dynos = supervisor.dynos

    async def at(fraction: float) -> None:
        await asyncio.sleep(max(0.0, started + fraction * seconds - time.monotonic()))

    await at(0.15)
    faults.note(started, "a slow consumer joins (stops reading; big events for its user)")
    faults.slow_consumer = await slow_consumer(run, dynos, http, base)
    faults.note(started, f"slow consumer: {faults.slow_consumer}")
    await at(0.3)
    faults.note(started, f"SIGKILL {dynos[0].name}")
    dynos[0].send(signal.SIGKILL)
    await asyncio.sleep(1)
    await supervisor.wait_healthy(dynos[0])
    faults.note(started, f"{dynos[0].name} is back")
    await at(0.45)
    faults.note(started, "Redis SIGKILLed (append-only file, fsync always)")
    await asyncio.to_thread(redis.crash)
    await asyncio.sleep(2)
    await asyncio.to_thread(redis.start)
    faults.note(started, "Redis started again from its append-only file")
    await at(0.6)
    for dyno in dynos:
        faults.note(started, f"rolling restart: SIGTERM {dyno.name}")
        dyno.send(signal.SIGTERM)
        await asyncio.sleep(1)
        await supervisor.wait_healthy(dyno)
        faults.note(started, f"rolling restart: {dyno.name} is back")
        await asyncio.sleep(2)


# --- the run ------------------------------------------------------------------------------------


def make_clients(count: int, stores: list[str], token_life: int) -> list[Client]:
    """Half plain WebSocket (split between its kinds), half Socket.IO (split between its kinds)."""
    kinds: list[str] = []
    ws_count = count // 2
    for index in range(ws_count):
        kinds.append(WS_KINDS[index % len(WS_KINDS)])
    for index in range(count - ws_count):
        kinds.append(SIO_KINDS[index % len(SIO_KINDS)])
    exp = int(time.time()) + token_life
    return [
        Client(
            kind=kind,
            index=index,
            token=jwt.encode({"sub": f"soak-{index}", "role": "customer", "exp": exp}, JWT_SECRET),
            store=stores[index % len(stores)],
        )
        for index, kind in enumerate(kinds)
    ]


def scan_logs(dynos: list[Dyno]) -> dict[str, Any]:
    """Levels counted, and every error line (grouped) from the processes' JSON logs."""
    levels: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    not_json = 0
    tracebacks = 0
    for dyno in dynos:
        for line in dyno.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                not_json += 1
                tracebacks += "Traceback" in line
                continue
            level = str(entry.get("level"))
            levels[level] += 1
            tracebacks += "exception" in entry
            if level in ("error", "critical"):
                errors[f"{level}: {entry.get('message')}"] += 1
    unexpected = {k: v for k, v in errors.items() if not any(e in k for e in EXPECTED_ERRORS)}
    return {
        "levels": dict(levels),
        "errors": dict(errors),
        "unexpected_errors": unexpected,
        "tracebacks": tracebacks,
        "not_json_lines": not_json,
    }


def markdown(summary: dict[str, Any]) -> str:
    rows = summary["kinds"]
    cols = [
        ("clients", "clients"),
        ("events", "events addressed"),
        ("expected", "deliveries owed"),
        ("received", "received"),
        ("missing", "missing"),
        ("clients_missing_any", "clients missing any"),
        ("duplicated", "duplicated"),
        ("connects", "connects"),
        ("drops", "drops"),
        ("failures", "failed connects"),
        ("resyncs", "resyncs"),
        ("fresh_restarts", "restarts without id"),
    ]
    lines = [
        "| kind | " + " | ".join(title for _, title in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for kind in KINDS:
        lines.append(f"| {kind} | " + " | ".join(f"{rows[kind].get(key, 0):,}" for key, _ in cols) + " |")
    return "\n".join(lines)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.minutes * 60
    workdir = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    redis = Redis(workdir)
    redis.start()
    venv_bin = str(Path(sys.executable).parent)
    ports = [free_port() for _ in range(args.processes)]
    dynos = []
    for number, port in enumerate(ports, 1):
        env = {
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "LANG": "C.UTF-8",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "DYNO": f"web.{number}",
            "REDIS_URL": redis.url,
            "JWT_SECRET": JWT_SECRET,
            "ADMIN_API_KEYS": ADMIN_KEY,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": args.log_level,
        }
        dynos.append(Dyno(number, port, env, workdir / f"web.{number}.log"))
    supervisor = Supervisor(dynos)
    proxy = Proxy(workdir, dynos)
    stores = [f"store-{n}" for n in range(max(1, args.clients // 50))]
    clients = make_clients(args.clients, stores, int(seconds) + 3600)
    run = Run("127.0.0.1", proxy.port, (args.min_life, args.max_life))
    base = f"http://127.0.0.1:{proxy.port}"
    publisher = Publisher(base, ADMIN_KEY, [c.user for c in clients], stores)
    faults = Faults()
    load_start = os.getloadavg()
    started = time.monotonic()
    tasks: list[asyncio.Task[Any]] = []
    supervising: asyncio.Future[None] | None = None
    try:
        for dyno in dynos:
            dyno.start()
        supervising = asyncio.ensure_future(supervisor.run())
        for dyno in dynos:
            await supervisor.wait_healthy(dyno)
        proxy.start()
        log(f"redis :{redis.port}, {', '.join(f'{d.name} :{d.port}' for d in dynos)}, haproxy :{proxy.port}")
        log(
            f"{len(clients)} clients ({dict(Counter(c.kind for c in clients))}), {len(stores)} stores, "
            f"{args.rate} events/s for {seconds:.0f}s; logs in {workdir}"
        )
        ramp = min(10.0, seconds / 6)
        tasks = [asyncio.ensure_future(client_loop(run, c, random.uniform(0, ramp))) for c in clients]
        stop_posting = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=15)
        ) as http:
            posting = asyncio.ensure_future(publisher.run(http, args.rate, stop_posting))
            fault_task = asyncio.ensure_future(
                run_faults(run, supervisor, redis, faults, seconds, http, base)
            )
            progress_every = max(10.0, seconds / 20)
            while time.monotonic() - started < seconds:
                await asyncio.sleep(min(progress_every, seconds - (time.monotonic() - started)))
                connected = sum(c.connected for c in clients)
                log(
                    f"{time.monotonic() - started:5.0f}s: {connected} connected, {len(publisher.accepted)} "
                    f"accepted, {publisher.refused_503} refused (503), load {os.getloadavg()[0]:.2f}"
                )
            stop_posting.set()
            await posting
            await fault_task  # a fault still running is finished, not cut short
            # Settle: no more drops; everyone reconnects and takes what it is owed.
            run.settle.set()
            deadline = time.monotonic() + args.settle
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                waiting = [c for c in clients if not c.connected and not c.gave_up]
                if not waiting and time.monotonic() - run.last_receipt > 3:
                    break
            run.finished.set()
        settled = time.monotonic() - started
        alive = {d.name: d.process is not None and d.process.poll() is None and d.healthy() for d in dynos}
    finally:
        run.finished.set()
        for client in clients:
            if client.socket is not None:
                client.socket.drop()
        for task in tasks:
            task.cancel()
        supervisor.running = False
        if supervising is not None:
            supervising.cancel()
        await asyncio.sleep(0.3)
        proxy_rss = proxy.rss_kib()
        redis_rss = redis.rss_kib()
        proxy.stop()
        for dyno in dynos:
            dyno.sample()
            dyno.stop()
        redis.stop()
    kinds = tally(clients, publisher.accepted)
    short = short_clients(clients, publisher.accepted)
    short_hooks = short_clients(clients, publisher.accepted, with_id=False)
    close_codes: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
    for client in clients:
        for code, count in client.close_codes.items():
            close_codes[client.kind][code] = close_codes[client.kind].get(code, 0) + count
    hook_resumed = Counter[str]()
    failures: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    for client in clients:
        hook_resumed.update(client.resumed_flags)
        failures[client.kind].update(client.failure_reasons)
    return {
        "scale": {
            "clients": args.clients,
            "kinds": dict(Counter(c.kind for c in clients)),
            "stores": len(stores),
            "rate": args.rate,
            "seconds": seconds,
            "life": [args.min_life, args.max_life],
            "processes": args.processes,
            "wall_seconds": round(settled, 1),
            "load_at_start": [round(x, 2) for x in load_start],
            "load_at_end": [round(x, 2) for x in os.getloadavg()],
            "cpus": os.cpu_count(),
        },
        "kinds": kinds,
        "with_id": list(WITH_ID),
        "close_codes": close_codes,
        "failed_connects": {kind: dict(reasons) for kind, reasons in failures.items()},
        "ws_hook_connected_resumed": dict(hook_resumed),
        "posts": {
            "accepted": len(publisher.accepted),
            "by_type": dict(publisher.by_type),
            "requests": publisher.posts,
            "refused_503": publisher.refused_503,
            "rate_limited_429": publisher.rate_limited_429,
            "retries": publisher.retries,
            "other_answers": dict(publisher.other_answers),
            "given_up": publisher.given_up,
        },
        "processes": {
            d.name: {
                "starts": d.starts,
                "exits": d.exits,
                "peak_rss_mib": round(d.peak_rss_kib / 1024, 1),
                "rss_at_end_mib": round(d.end_rss_kib / 1024, 1),
            }
            for d in dynos
        },
        "alive_at_end": alive,
        "haproxy_peak_rss_mib": round(proxy_rss / 1024, 1),
        "redis_rss_mib": round(redis_rss / 1024, 1),
        "faults": faults.timeline,
        "slow_consumer": faults.slow_consumer,
        "logs": scan_logs(dynos),
        "workdir": str(workdir),
        "clients_with_id_missing_events": short,
        "clients_without_id_missing_events": short_hooks,
    }


def report(summary: dict[str, Any]) -> None:
    scale = summary["scale"]
    print()
    print(
        f"Soak: {scale['clients']:,} clients {scale['kinds']}, {scale['stores']} stores, "
        f"{scale['rate']} events/s for {scale['seconds']:.0f} s "
        f"(+ settle; {scale['wall_seconds']} s in all), "
        f"{scale['processes']} processes + Redis behind HAProxy, {scale['cpus']} CPUs, "
        f"load average {scale['load_at_start'][0]} at start, {scale['load_at_end'][0]} at end."
    )
    print()
    print(markdown(summary))
    print()
    posts = summary["posts"]
    print(
        f"POSTs: {posts['accepted']:,} events accepted {posts['by_type']}; {posts['requests']:,} requests, "
        f"{posts['refused_503']} refused (503), {posts['rate_limited_429']} rate-limited (429), "
        f"{posts['retries']} retries (same key), other answers {posts['other_answers']}, "
        f"{posts['given_up']} given up."
    )
    for name, proc in summary["processes"].items():
        print(
            f"{name}: peak RSS {proc['peak_rss_mib']} MiB (at the end {proc['rss_at_end_mib']} MiB), "
            f"started {proc['starts']} times, exits {proc['exits']}"
        )
    print(
        f"HAProxy peak RSS {summary['haproxy_peak_rss_mib']} MiB; "
        f"Redis RSS at end {summary['redis_rss_mib']} MiB"
    )
    print(f"processes up at the end: {summary['alive_at_end']}")
    print(f"close codes seen by clients: {summary['close_codes']}")
    print(f"failed connects: {summary['failed_connects']}")
    print(f"ws-hook connected.resumed: {summary['ws_hook_connected_resumed']}")
    print(f"slow consumer: {summary['slow_consumer']}")
    print("faults:")
    for entry in summary["faults"]:
        print(f"  {entry}")
    print(f"server logs: {summary['logs']}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="churn and post this long (default 10)")
    parser.add_argument("--clients", type=int, default=2000, help="half plain WS, half Socket.IO (2000)")
    parser.add_argument("--rate", type=float, default=20.0, help="events posted per second (20)")
    parser.add_argument("--min-life", type=float, default=5.0, help="shortest connection, s (5)")
    parser.add_argument("--max-life", type=float, default=30.0, help="longest connection, s (30)")
    parser.add_argument("--processes", type=int, default=2, help="server processes (2)")
    parser.add_argument("--settle", type=float, default=60.0, help="most seconds to wait at the end (60)")
    parser.add_argument("--log-level", default="warning", help="the servers' LOG_LEVEL (warning)")
    parser.add_argument("--logs", help="directory for the logs (default: a new temporary one)")
    parser.add_argument("--json", help="also write the summary to this file")
    args = parser.parse_args()
    if args.clients < 10 or args.minutes <= 0 or args.rate <= 0 or args.processes < 2:
        parser.error("needs --clients ≥ 10, --minutes > 0, --rate > 0, --processes ≥ 2")
    import uvloop

    summary = uvloop.run(soak(args))
    report(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
