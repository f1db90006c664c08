"""``python -m server <command>`` as an operator types it: real subprocesses, real servers."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web

from tests.clients import ADMIN_KEY, JWT_SECRET, Live, make_token
from tests.conftest import StartServer, make_settings
from tests.process import REPO, ServerProcess, server_env
from tests.redis_server import free_port

STORE_DATA = {"storeId": "s1", "store": {"name": "Pizza"}}


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


def run(*args: str, env: Mapping[str, str | None] | None = None) -> Ran:
    """The command, blocking (for commands that need no server of this test's loop)."""
    done = subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=REPO,
        env=server_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


async def run_async(*args: str, env: Mapping[str, str | None] | None = None) -> Ran:
    """The command, while this test's event loop keeps serving the in-process server."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        *args,
        cwd=REPO,
        env=server_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


def assert_one_line_failure(ran: Ran, *expected: str, code: int | None = None) -> str:
    assert ran.code != 0, ran
    if code is not None:
        assert ran.code == code, ran
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr
    assert "Traceback" not in ran.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# --- help and the default command ---------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["serve"], ["publish"], ["token"], ["check-config"]])
def test_help_at_every_level_prints_usage_and_exits_0(command: list[str]) -> None:
    ran = run(*command, "--help", env={"JWT_SECRET": None, "ADMIN_API_KEYS": None})
    assert ran.code == 0, ran
    assert ran.stdout.startswith("usage: python -m server"), ran.stdout
    assert ran.stderr == ""


def test_top_level_help_lists_every_command() -> None:
    ran = run("--help")
    for command in ("serve", "publish", "token", "check-config"):
        assert command in ran.stdout


@pytest.mark.parametrize("args", [[], ["serve"]], ids=["no command", "serve"])
async def test_no_command_and_serve_both_serve_until_sigterm(args: list[str]) -> None:
    server = ServerProcess(args=args)
    try:
        await asyncio.to_thread(server.start().wait_healthy)
        server.signal(signal.SIGTERM)
        assert await server.wait_exit(10) == 0
    finally:
        server.close()


# --- bad input: one line, non-zero ----------------------------------------------------------------

BAD_INPUT: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "unknown command": (["bogus"], ("invalid choice", "bogus")),
    "unknown option": (["serve", "--port", "1"], ("unrecognized arguments", "--port")),
    "publish without --data": (["publish", "store_updated"], ("--data",)),
    "publish without a type": (["publish", "--data", "{}"], ("type",)),
    "--data not JSON": (["publish", "store_updated", "--data", "{nope"], ("--data", "not valid JSON")),
    "--data not an object": (["publish", "store_updated", "--data", "[1]"], ("--data", "JSON object")),
    "--version negative": (
        ["publish", "store_updated", "--data", "{}", "--version", "-1"],
        ("--version", ">= 0"),
    ),
    "--version not a number": (
        ["publish", "store_updated", "--data", "{}", "--version", "x"],
        ("--version", "invalid int"),
    ),
    "--url not http": (
        ["publish", "store_updated", "--data", "{}", "--url", "ftp://h"],
        ("--url", "http://"),
    ),
    "--idempotency-key too long": (
        ["publish", "store_updated", "--data", "{}", "--idempotency-key", "k" * 256],
        ("--idempotency-key",),
    ),
    "token without --user": (["token"], ("--user",)),
    "token with a bad --ttl": (["token", "--user", "u1", "--ttl", "soon"], ("--ttl", "soon")),
    "token with a zero --ttl": (["token", "--user", "u1", "--ttl", "0"], ("--ttl",)),
    "token with an unknown role": (["token", "--user", "u1", "--role", "pirate"], ("--role", "pirate")),
    "token with a bad user id": (["token", "--user", "a b"], ("--user",)),
    "token with bad stores": (["token", "--user", "u1", "--stores", "s1,a b"], ("--stores", "a b")),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_every_bad_input_exits_non_zero_with_one_line(case: str) -> None:
    args, expected = BAD_INPUT[case]
    assert_one_line_failure(run(*args), *expected, code=2)


def test_token_refuses_clearly_without_a_secret() -> None:
    ran = run("token", "--user", "u1", env={"JWT_SECRET": None, "ADMIN_API_KEYS": None})
    assert_one_line_failure(ran, "no JWT_SECRET configured", code=1)
    assert ran.stdout == ""


def test_a_configuration_error_stops_every_command_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("prot: 3000\n")
    for args in (["token", "--user", "u1"], ["check-config"]):
        assert_one_line_failure(run(*args, env={"CONFIG_FILE": str(config)}), "prot", "unknown setting")


# --- token ----------------------------------------------------------------------------------------


async def test_token_is_signed_with_the_configured_secret_and_the_server_accepts_it(
    start_server: StartServer,
) -> None:
    ran = await run_async(
        "token", "--user", "alice", "--role", "merchant", "--stores", "s1,s2", "--ttl", "2h"
    )
    assert ran.code == 0 and ran.stderr == "", ran
    token = ran.stdout.strip()
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["role"] == "merchant" and claims["stores"] == ["s1", "s2"]
    assert claims["exp"] - claims["iat"] == 7200
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-that-is-long-enough-for-hs256", algorithms=["HS256"])
    live = await start_server(make_settings())
    ws, connected = await live.ws_ready(token=token)
    assert connected["data"]["userId"] == "alice" and connected["data"]["role"] == "merchant"
    await ws.close()


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_token_defaults_role_and_ttl_and_warns_of_a_short_secret() -> None:
    ran = run("token", "--user", "u1", env={"JWT_SECRET": "short"})
    assert ran.code == 0, ran
    claims = jwt.decode(ran.stdout.strip(), "short", algorithms=["HS256"])
    assert claims["role"] == "customer" and claims["exp"] - claims["iat"] == 3600 and "stores" not in claims
    assert ran.stderr.splitlines() == [
        "warning: JWT_SECRET is shorter than 32 bytes (RFC 7518 asks for at least 32)"
    ]


# --- check-config ---------------------------------------------------------------------------------

SECRET = "check-config-CANARY-secret-that-is-long-enough"
KEYS = "check-config-CANARY-key-1,check-config-CANARY-key-2"


def test_check_config_prints_every_setting_with_secrets_masked() -> None:
    env = {
        "JWT_SECRET": SECRET,
        "ADMIN_API_KEYS": KEYS,
        "REDIS_URL": "redis://:CANARYpw@db:6380/1",
        "PORT": "4000",
    }
    ran = run("check-config", env=env)
    assert ran.code == 0, ran
    assert "CANARY" not in ran.stdout + ran.stderr
    settings = dict(line.split(" = ", 1) for line in ran.stdout.splitlines())
    assert settings["port"] == "4000"
    assert settings["auth.jwt_secret"] == '"***"'
    assert settings["admin.api_keys"] == '"*** (2 keys)"'
    assert settings["redis.url"] == '"redis://:***@db:6380/1"'
    assert settings["websocket.heartbeat_seconds"] == "25.0"
    assert ran.stderr.strip() == "configuration OK"


def test_output_into_a_pipe_closed_early_is_not_an_error() -> None:
    """``check-config | head``: the reader may go before the command writes (``true`` reads nothing)."""
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m server check-config | true"],
        cwd=REPO,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_check_config_exits_1_with_the_reason_serve_would_give() -> None:
    ran = run("check-config", env={"JWT_SECRET": None})
    assert_one_line_failure(ran, "configuration error", "JWT_SECRET", code=1)
    assert ran.stdout == ""


# --- publish --------------------------------------------------------------------------------------


def publish_env(live: Live) -> dict[str, str | None]:
    return {"REALTIME_URL": live.base, "ADMIN_API_KEYS": ADMIN_KEY}


async def test_publish_prints_the_id_of_the_event_a_client_receives(start_server: StartServer) -> None:
    live = await start_server(make_settings())
    ws, _ = await live.ws_ready(token=make_token("u1"))
    ran = await run_async("publish", "store_updated", "--data", json.dumps(STORE_DATA), env=publish_env(live))
    assert ran.code == 0 and ran.stderr == "", ran
    event_id = ran.stdout.strip()
    frame = json.loads((await ws.receive(timeout=3)).data)
    assert frame == {"type": "store_updated", "data": STORE_DATA, "id": event_id}
    await ws.close()


async def test_publish_addresses_users_and_repeats_an_idempotency_key_once(start_server: StartServer) -> None:
    live = await start_server(make_settings())
    ws_u1, _ = await live.ws_ready(token=make_token("u1"))
    ws_u2, _ = await live.ws_ready(token=make_token("u2"))
    args = ["publish", "store_updated", "--data", json.dumps(STORE_DATA), "--user", "u1"]
    args += ["--url", live.base, "--key", ADMIN_KEY, "--idempotency-key", "cli-once"]
    first = await run_async(*args, env={"ADMIN_API_KEYS": None})
    again = await run_async(*args, env={"ADMIN_API_KEYS": None})
    assert first.code == again.code == 0, (first, again)
    assert first.stdout == again.stdout
    frame = json.loads((await ws_u1.receive(timeout=3)).data)
    assert frame["id"] == first.stdout.strip()
    # u2 got nothing, and u1 nothing more: the next event each receives is a marker.
    status, marker = await live.post({"type": "store_updated", "data": STORE_DATA})
    assert status == 202
    for ws in (ws_u1, ws_u2):
        assert json.loads((await ws.receive(timeout=3)).data)["id"] == marker["ids"][0]
        await ws.close()


async def test_publish_reports_a_refusal_in_one_line(start_server: StartServer) -> None:
    live = await start_server(make_settings())
    env = publish_env(live)
    bad_key = await run_async("publish", "store_updated", "--data", "{}", "--key", "wrong", env=env)
    assert_one_line_failure(bad_key, "401 unauthorized", code=1)
    invalid = await run_async("publish", "store_updated", "--data", '{"storeId": "s1"}', env=env)
    assert_one_line_failure(invalid, "422 validation_failed", "data.store", code=1)
    unknown = await run_async("publish", "pizza_thrown", "--data", "{}", env=env)
    assert_one_line_failure(unknown, "422", "pizza_thrown", code=1)


def test_publish_to_nothing_listening_fails_in_one_line_after_retries() -> None:
    ran = run("publish", "store_updated", "--data", "{}", "--url", f"http://127.0.0.1:{free_port()}")
    assert_one_line_failure(ran, "publish failed (no answer)", code=1)


async def test_publish_sends_staff_and_version_in_the_event() -> None:
    """``--staff`` and ``--version`` reach the request body as ``to.staff`` and ``version``.

    A recording server stands in for the real one: the real server learns those fields on
    another branch, and this test pins only what the command sends.
    """
    bodies: list[Any] = []

    async def record(request: web.Request) -> web.Response:
        bodies.append({"body": await request.json(), "auth": request.headers.get("Authorization")})
        return web.json_response({"accepted": 1, "ids": ["1-0"]}, status=202)

    app = web.Application()
    app.router.add_post("/api/v1/events", record)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        args = ["publish", "order_updated", "--data", '{"orderId": "o1", "order": {}}', "--staff", "s1"]
        args += ["--staff", "s2", "--store", "s3", "--global", "--version", "17", "--idempotency-key", "k1"]
        ran = await run_async(
            *args, env={"REALTIME_URL": f"http://127.0.0.1:{port}", "ADMIN_API_KEYS": "a,b"}
        )
    finally:
        await runner.cleanup()
    assert ran.code == 0 and ran.stdout == "1-0\n", ran
    assert bodies == [
        {
            "body": {
                "type": "order_updated",
                "data": {"orderId": "o1", "order": {}},
                "to": {"stores": ["s3"], "staff": ["s1", "s2"], "global": True},
                "version": 17,
                "idempotencyKey": "k1",
            },
            "auth": "Bearer a",
        }
    ]
