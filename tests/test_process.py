"""``python -m server`` as operators run it (contract §1): real processes, real signals, real output.

Each test starts the server as a subprocess from the repository root, on a free port, with an
environment built explicitly (tests/process.py), and reads what it wrote to stdout and stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from tests.clients import SioClient, make_token, recv, recv_close
from tests.process import REPO, Exited, ServerProcess, running_server, server_env, wait_all
from tests.redis_server import free_port

# Recognisable secrets: none of them may ever appear in what the process writes.
JWT_CANARY = "jwt-secret-CANARY-5f1e9c2ab7d04e8f-long-enough-for-hs256"
ADMIN_CANARIES = ("admin-key-CANARY-one-8c41d2", "admin-key-CANARY-two-3b97fa")
CANARY_ENV = {"JWT_SECRET": JWT_CANARY, "ADMIN_API_KEYS": ",".join(ADMIN_CANARIES)}
SECRETS = (JWT_CANARY, *ADMIN_CANARIES)

STORE_EVENT = {"type": "store_updated", "data": {"storeId": "s1", "store": {"name": "Pizza"}}}


def token(user: str) -> str:
    return make_token(user, secret=JWT_CANARY)


def admin_headers(key: str = ADMIN_CANARIES[1]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def output(server: ServerProcess) -> str:
    return server.stdout + server.stderr


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line parsed as one JSON object (failing on the first that is not)."""
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


# --- 1. it starts and answers -----------------------------------------------------------------


async def test_serves_healthz_and_readyz_on_the_host_and_port_from_the_environment(tmp_path: Path) -> None:
    """HOST and PORT override config.yaml's host and port; /healthz and /readyz answer 200."""
    port, file_port = free_port(), free_port()
    while file_port == port:
        file_port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f"host: 127.0.0.1\nport: {file_port}\n")
    env = {**CANARY_ENV, "CONFIG_FILE": str(config), "HOST": "127.0.0.2", "PORT": str(port)}
    with running_server(env) as server:
        assert server.base == f"http://127.0.0.2:{port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.base}/healthz") as resp:
                assert resp.status == 200
                assert (await resp.json())["status"] == "ok"
            async with session.get(f"{server.base}/readyz") as resp:
                assert resp.status == 200
                assert await resp.json() == {"ready": True, "backplane": "memory"}
        # Only where it was told: not on another address, not on the config file's port.
        for address in (("127.0.0.1", port), ("127.0.0.2", file_port), ("127.0.0.1", file_port)):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(address, timeout=2).close()
        server.signal(signal.SIGTERM)
        assert await server.wait_exit(10) == 0


async def test_readyz_is_503_while_redis_is_unreachable_and_the_process_still_serves() -> None:
    """An unreachable REDIS_URL is not a configuration error: the process serves, not ready."""
    with running_server({**CANARY_ENV, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}) as server:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.base}/healthz") as resp:
                assert resp.status == 200
            async with session.get(f"{server.base}/readyz") as resp:
                assert resp.status == 503
                assert await resp.json() == {"ready": False, "backplane": "redis"}
        server.signal(signal.SIGTERM)
        assert await server.wait_exit(10) == 0, server.stderr
        assert "Traceback" not in server.stderr, server.stderr


# --- 2. bad configuration: non-zero exit, one line naming the setting, no traceback -------------


@dataclass
class Case:
    env: dict[str, str | None] = field(default_factory=dict)
    file: str | None = None  # contents of a CONFIG_FILE written for the case
    expect: tuple[str, ...] = ()  # each must appear in the error line
    secrets: tuple[str, ...] = ()  # values of the case that must not
    json: bool = False  # the line must be one JSON object
    mode: int | None = None  # permissions of the CONFIG_FILE


CASES: dict[str, Case] = {
    "unknown key": Case(file="prot: 3000\n", expect=("prot", "unknown setting")),
    "unknown nested key": Case(
        file="websocket:\n  heartbeat_secs: 5\n", expect=("websocket.heartbeat_secs", "unknown setting")
    ),
    "port not a number": Case(env={"PORT": None}, file="port: abc\n", expect=("port", "integer")),
    "negative heartbeat": Case(
        file="websocket: {heartbeat_seconds: -1}\n", expect=("websocket.heartbeat_seconds", "greater than 0")
    ),
    "no connect admitted": Case(
        file="websocket: {max_connecting: 0}\n", expect=("websocket.max_connecting", "greater than 0")
    ),
    "section not a mapping": Case(file="auth: yes\n", expect=("auth",)),
    "default role not allowed": Case(file="auth: {default_role: boss}\n", expect=("auth.default_role",)),
    "missing CONFIG_FILE": Case(
        env={"CONFIG_FILE": "/nonexistent/config.yaml"}, expect=("CONFIG_FILE", "cannot read")
    ),
    "CONFIG_FILE a directory": Case(env={"CONFIG_FILE": "/"}, expect=("CONFIG_FILE", "cannot read")),
    "invalid YAML": Case(file="port: [3000\n", expect=("CONFIG_FILE", "not valid YAML")),
    "YAML not a mapping": Case(file="- port\n- host\n", expect=("CONFIG_FILE", "mapping")),
    "REDIS_URL not redis": Case(env={"REDIS_URL": "http://x"}, expect=("REDIS_URL", "redis://")),
    "REDIS_URL without host": Case(env={"REDIS_URL": "redis://"}, expect=("REDIS_URL", "host")),
    "redis.url in the file": Case(file="redis: {url: 'http://x'}\n", expect=("redis.url", "redis://")),
    "LOG_FORMAT xml": Case(env={"LOG_FORMAT": "xml"}, expect=("LOG_FORMAT", "text, json")),
    "LOG_LEVEL unknown": Case(env={"LOG_LEVEL": "loud"}, expect=("LOG_LEVEL", "debug")),
    "PORT not a number": Case(env={"PORT": "abc"}, expect=("PORT", "integer")),
    "PORT out of range": Case(env={"PORT": "70000"}, expect=("PORT", "65535")),
    "no JWT key": Case(env={"JWT_SECRET": None}, expect=("JWT_SECRET", "JWT_PUBLIC_KEY", "AUTH_INSECURE=1")),
    "no admin key": Case(env={"ADMIN_API_KEYS": None}, expect=("ADMIN_API_KEYS", "AUTH_INSECURE=1")),
    "admin keys all empty": Case(env={"ADMIN_API_KEYS": " , ,"}, expect=("ADMIN_API_KEYS", "required")),
    "CORS * without AUTH_INSECURE": Case(
        env={"CORS_ALLOWED_ORIGINS": "*"}, expect=("CORS_ALLOWED_ORIGINS", "AUTH_INSECURE=1")
    ),
    "JWT_PUBLIC_KEY not PEM": Case(env={"JWT_PUBLIC_KEY": "notapem"}, expect=("JWT_PUBLIC_KEY", "PEM")),
    "event type redefines a built-in": Case(
        file="event_types: {order_updated: {fields: {}, audience: global}}\n",
        expect=("event_types.order_updated", "built-in"),
    ),
    "event type with a reserved name": Case(
        file="event_types: {connected: {audience: global}}\n", expect=("event_types.connected", "reserved")
    ),
    "event type field of no known kind": Case(
        file="event_types: {driver_location: {fields: {lat: float}}}\n",
        expect=("event_types.driver_location.fields.lat", "string, number"),
    ),
    # The line names what is wrong, never the secret value that is wrong.
    "REDIS_URL password, no host": Case(
        env={"REDIS_URL": "redis://:hunter2-redis-CANARY@"}, expect=("REDIS_URL",), secrets=("hunter2",)
    ),
    "REDIS_URL password, wrong scheme": Case(
        env={"REDIS_URL": "http://user:hunter2-redis-CANARY@example.com"},
        expect=("REDIS_URL",),
        secrets=("hunter2",),
    ),
    "JWT_PUBLIC_KEY garbled PEM": Case(
        env={"JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nkey-CANARY-c0ffee\n-----END PUBLIC KEY-----\n"},
        expect=("JWT_PUBLIC_KEY",),
        secrets=("c0ffee",),
    ),
    "secret in invalid YAML": Case(
        file='auth:\n  jwt_secret: "file-secret-CANARY-77\n', expect=("CONFIG_FILE",), secrets=("CANARY-77",)
    ),
    "secret of the wrong type": Case(
        env={"JWT_SECRET": None},
        file="auth:\n  jwt_secret: [file-secret-CANARY-78]\n",
        expect=("auth.jwt_secret", "string"),
        secrets=("CANARY-78",),
    ),
}
if os.geteuid() != 0:  # root reads it anyway; "CONFIG_FILE a directory" covers that case
    CASES["CONFIG_FILE unreadable"] = Case(file="port: 3000\n", mode=0, expect=("CONFIG_FILE", "cannot read"))
# With LOG_FORMAT=json (or log_format: json in the file), the line is itself one JSON object.
for name in (
    "unknown nested key",
    "missing CONFIG_FILE",
    "invalid YAML",
    "REDIS_URL without host",
    "no JWT key",
):
    base = CASES[name]
    CASES[f"{name} (json)"] = Case({**base.env, "LOG_FORMAT": "json"}, base.file, base.expect, json=True)
CASES["log_format json in the file"] = Case(
    env={"PORT": None}, file="log_format: json\nport: abc\n", expect=("port", "integer"), json=True
)


@pytest.fixture(scope="module")
def config_failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exited]:
    """Every case run at once (they are independent), so the whole table takes a second or two."""
    folder = tmp_path_factory.mktemp("configs")
    servers: dict[str, ServerProcess] = {}
    for index, (name, case) in enumerate(CASES.items()):
        env = {**CANARY_ENV, **case.env}
        if case.file is not None:
            path = folder / f"case-{index}.yaml"
            path.write_text(case.file)
            if case.mode is not None:
                path.chmod(case.mode)
            env["CONFIG_FILE"] = str(path)
        servers[name] = ServerProcess(env).start()
    return dict(zip(servers, wait_all(list(servers.values()), timeout=30), strict=True))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_configuration_exits_with_one_line_naming_the_setting(
    config_failures: dict[str, Exited], name: str
) -> None:
    case, result = CASES[name], config_failures[name]
    assert result.returncode != 0, result
    # It stops by itself rather than serving. (All the cases start at once: on an idle machine
    # each is done in well under a second, so this leaves room for a busy one.)
    assert result.seconds < 10, result
    assert result.stdout == "", result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    if case.json:
        entry = json_lines(line)[0]
        assert entry["level"] == "critical", entry
        line = entry["message"]
    assert "configuration error" in line, line
    for part in case.expect:
        assert part in line, (part, line)
    for secret in (*SECRETS, *case.secrets):
        assert secret not in result.stderr, (secret, result.stderr)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_port_in_use_exits_with_one_line_and_no_traceback(log_format: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**CANARY_ENV, "PORT": str(port), "LOG_FORMAT": log_format}
        [result] = wait_all([ServerProcess(env).start()], timeout=10)
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.splitlines()[-1]
    if log_format == "json":
        entries = json_lines(result.stderr)
        assert entries[-1]["level"] == "critical", entries
        last = entries[-1]["message"]
    assert "HOST/PORT" in last and f"127.0.0.1:{port}" in last and "in use" in last, last


# --- 3. no secret is ever written ---------------------------------------------------------------


async def test_no_secret_or_token_is_written_even_at_debug_level() -> None:
    env = {**CANARY_ENV, "LOG_LEVEL": "debug"}
    wrong_key = "admin-key-CANARY-wrong-0a9d"
    tokens = [token("alice"), token("bob")]
    with running_server(env) as server:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(
                f"{server.base}/api/ws", params={"token": tokens[0]}, autoclose=False
            )
            assert (await recv(ws))["type"] == "connected"
            sio = SioClient()
            await sio.connect(server.base, {"token": tokens[1]}, ["websocket"])
            for key, status in ((ADMIN_CANARIES[1], 202), (ADMIN_CANARIES[0], 202), (wrong_key, 401)):
                async with session.post(
                    f"{server.base}/api/v1/events", json=STORE_EVENT, headers=admin_headers(key)
                ) as resp:
                    assert resp.status == status
            assert (await recv(ws))["type"] == "store_updated"
            await sio.wait_for(2)
            # A token signed with another key is refused, and not echoed either.
            forged = make_token("mallory", secret="another-secret-CANARY-that-is-long-enough")
            refused = await session.ws_connect(
                f"{server.base}/api/ws", params={"token": forged}, autoclose=False
            )
            assert await recv_close(refused) == 4401
            tokens.append(forged)
            await sio.close()
            await ws.close()
        server.signal(signal.SIGTERM)
        assert await server.wait_exit(10) == 0
        written = output(server)
    assert "client connected" in written and "events accepted" in written  # it did log, at debug
    for secret in (*SECRETS, wrong_key, *tokens):
        assert secret not in written, secret
    assert "CANARY" not in written


# --- 4. shutdown: 1012 to every client, no Socket.IO DISCONNECT, exit 0 within 10 s ---------------


async def engineio_connect(session: aiohttp.ClientSession, base: str, auth: dict[str, Any]) -> Any:
    """Socket.IO by hand over an Engine.IO v4 WebSocket, to see every packet the server sends."""
    ws = await session.ws_connect(f"{base}/socket.io/?EIO=4&transport=websocket", autoclose=False)
    opened = await ws.receive_str(timeout=5)
    assert opened.startswith("0"), opened
    await ws.send_str("40" + json.dumps(auth))
    connected = await ws.receive_str(timeout=5)
    assert connected.startswith("40{"), connected
    return ws


async def packets_until_close(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[str], int | None]:
    """What the server sends until it closes (answering pings, as a client does)."""
    packets: list[str] = []
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type == aiohttp.WSMsgType.TEXT:
            packets.append(msg.data)
            if msg.data == "2":
                await ws.send_str("3")
            continue
        code = ws.close_code
        await ws.close()
        return packets, code


async def polling_connect(session: aiohttp.ClientSession, base: str, auth: dict[str, Any]) -> str:
    """Socket.IO by hand over Engine.IO v4 long-polling; the Engine.IO session id."""
    url = f"{base}/socket.io/?EIO=4&transport=polling"
    async with session.get(url) as resp:
        opened = await resp.text()
    assert opened.startswith("0"), opened
    sid: str = json.loads(opened[1:])["sid"]
    async with session.post(f"{url}&sid={sid}", data="40" + json.dumps(auth)) as resp:
        assert resp.status == 200, await resp.text()
    async with session.get(f"{url}&sid={sid}") as resp:
        connected = await resp.text()
    assert connected.startswith("40{"), connected
    return sid


async def polled_until_close(session: aiohttp.ClientSession, base: str, sid: str) -> list[str]:
    """Long-poll until the server ends the session; every packet it sent meanwhile."""
    url = f"{base}/socket.io/?EIO=4&transport=polling&sid={sid}"
    packets: list[str] = []
    while True:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status != 200:
                    return packets
                payload = await resp.text()
        except aiohttp.ClientConnectionError:
            return packets
        for packet in payload.split("\x1e"):
            packets.append(packet)
            if packet == "1":  # Engine.IO CLOSE
                return packets
            if packet == "2":
                async with session.post(url, data="3"):
                    pass


async def ws_close_code(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    code = await recv_close(ws, timeout=10)
    await ws.close()  # answer the close frame, as a browser does
    return code


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_closes_every_client_with_1012_and_exits_0_within_10s(sig: signal.Signals) -> None:
    with running_server(CANARY_ENV) as server:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(
                f"{server.base}/api/ws", params={"token": token("alice")}, autoclose=False
            )
            assert (await recv(ws))["type"] == "connected"
            sio = SioClient()  # python-socketio's client, on the WebSocket transport
            await sio.connect(server.base, {"token": token("bob")}, ["websocket"])
            raw = await engineio_connect(session, server.base, {"token": token("carol")})
            polling = await polling_connect(session, server.base, {"token": token("dave")})
            # Its long-poll must be waiting at the server when the signal comes, as a client's is.
            polled_task = asyncio.ensure_future(polled_until_close(session, server.base, polling))
            await asyncio.sleep(0.2)

            started = time.monotonic()
            server.signal(sig)
            ws_code, (raw_packets, raw_code), polled, exit_code = await asyncio.gather(
                ws_close_code(ws), packets_until_close(raw), polled_task, server.wait_exit(10)
            )
            elapsed = time.monotonic() - started
            for _ in range(100):
                if sio.disconnect_reasons:
                    break
                await asyncio.sleep(0.02)

    assert exit_code == 0, server.stderr
    assert elapsed < 10, elapsed
    # No Socket.IO DISCONNECT ("41"): socket.io-client would take it as final and not reconnect.
    assert not [p for p in raw_packets + polled if p.startswith("41")], (raw_packets, polled)
    # Long-polling: the waiting poll is answered (NOOP) and the session ends with no Engine.IO
    # CLOSE packet either, which python-socketio's client would take as final (test_python_client.py).
    assert polled == ["6"], polled
    # python-socketio reports "server disconnect" for a DISCONNECT packet; here the transport closed.
    assert sio.disconnect_reasons == [socketio.AsyncClient.reason.TRANSPORT_ERROR], sio.disconnect_reasons
    assert raw_code == 1012
    assert ws_code == 1012
    assert "Traceback" not in server.stderr, server.stderr


async def test_sigterm_exits_within_10s_with_a_client_that_never_reads() -> None:
    """A client that completed the upgrade and then stopped reading cannot hold the process."""
    with running_server(CANARY_ENV) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            (
                f"GET /api/ws?token={token('dave')} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert await server.wait_exit(10) == 0, server.stderr
        assert time.monotonic() - started < 10
        writer.close()


# --- 5. logging ----------------------------------------------------------------------------------


async def run_once(server: ServerProcess) -> None:
    """A whole life: a connection of each transport, an accepted publish, a disconnect, SIGTERM."""
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"{server.base}/api/ws", params={"token": token("alice")}, autoclose=False
        )
        assert (await recv(ws))["type"] == "connected"
        sio = SioClient()
        await sio.connect(server.base, {"token": token("bob")}, ["websocket"])
        async with session.post(
            f"{server.base}/api/v1/events", json=STORE_EVENT, headers=admin_headers()
        ) as resp:
            assert resp.status == 202
        assert (await recv(ws))["type"] == "store_updated"
        await sio.wait_for(1)
        await sio.close()
        await ws.close()
        # Both disconnects are done before the process is told to stop.
        for _ in range(250):
            async with session.get(f"{server.base}/api/v1/stats", headers=admin_headers()) as resp:
                if (await resp.json())["connections"] == 0:
                    break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the clients' disconnects were not seen")
    server.signal(signal.SIGTERM)
    assert await server.wait_exit(10) == 0, server.stderr


async def test_json_logs_are_one_object_per_line_from_start_to_stop() -> None:
    # At debug level, so that every logger that writes anything is in the run.
    with running_server({**CANARY_ENV, "LOG_FORMAT": "json", "LOG_LEVEL": "debug"}) as server:
        await run_once(server)
        entries = json_lines(server.stdout) + json_lines(server.stderr)
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
    messages = [entry["message"] for entry in entries]
    for expected in ("server starting", "server listening", "server stopped", "events accepted"):
        assert expected in messages, (expected, messages)
    connects = [e for e in entries if e["message"] == "client connected"]
    disconnects = [e for e in entries if e["message"] == "client disconnected"]
    assert sorted(e["transport"] for e in connects) == ["socketio", "websocket"], connects
    assert sorted(e["transport"] for e in disconnects) == ["socketio", "websocket"], disconnects
    accepted = next(e for e in entries if e["message"] == "events accepted")
    assert accepted["count"] == 1 and accepted["types"] == ["store_updated"], accepted
    assert messages.index("server starting") < messages.index("client connected")
    assert messages[-1] == "server stopped", messages


INTERPRETER_REPORTS = """
import threading, warnings
from server.logs import configure_logging
configure_logging("info", "json")
class Broken:
    def __del__(self):
        raise ValueError("in __del__")
Broken()
thread = threading.Thread(target=lambda: 1 / 0)
thread.start()
thread.join()
warnings.warn("a warning")
raise RuntimeError("uncaught")
"""


def test_json_logs_cover_what_the_interpreter_would_print_itself() -> None:
    """Exceptions in __del__, in a thread, uncaught, and warnings: JSON lines too, not tracebacks."""
    result = subprocess.run(
        [sys.executable, "-c", INTERPRETER_REPORTS],
        cwd=REPO,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and result.stdout == ""
    entries = json_lines(result.stderr)
    assert [e["level"] for e in entries] == ["error", "critical", "warning", "critical"], entries
    for entry, error in zip(entries, ("ValueError", "ZeroDivisionError", None, "RuntimeError"), strict=True):
        assert error is None or error in entry["exception"], entry


async def test_log_level_warning_leaves_out_the_info_lines() -> None:
    with running_server({**CANARY_ENV, "LOG_FORMAT": "json", "LOG_LEVEL": "warning"}) as server:
        await run_once(server)
        entries = json_lines(server.stdout) + json_lines(server.stderr)
    assert [e for e in entries if e["level"] not in ("warning", "error", "critical")] == []


async def test_the_shipped_config_yaml_loads_and_logs_are_text_by_default() -> None:
    with running_server({**CANARY_ENV, "CONFIG_FILE": None}) as server:  # config.yaml at the root
        server.signal(signal.SIGTERM)
        assert await server.wait_exit(10) == 0
        lines = server.stderr.splitlines()
    assert lines and all(not line.startswith("{") for line in lines), lines
    assert any("INFO server: server starting" in line for line in lines), lines
    assert "server stopped" in lines[-1], lines


# --- 6. Procfile -----------------------------------------------------------------------------------


def test_procfile_runs_the_server() -> None:
    lines = (REPO / "Procfile").read_text().splitlines()
    assert "web: python -m server" in [line.strip() for line in lines]
