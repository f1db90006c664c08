"""Platform sessions (contract §8): token-less clients identified by a real session service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import aiohttp
import pytest

from server.app import AUTHENTICATOR
from server.config import DEFAULT_CONFIG_FILE, AuthSettings, ConfigError, Settings, load_settings
from tests.clients import Live, make_token, no_message, recv, recv_close
from tests.conftest import StartServer, make_settings
from tests.process import running_server
from tests.session_service import Answer, SessionService, assert_no_secrets, cookie_header
from tests.support import sio_connect, sio_refusal

pytestmark = pytest.mark.usefixtures("log_watch")

HOOK = "/api/ws?userId=u1&role=customer"  # the seed hook's URL, exactly
ORDER = {"type": "order_updated", "data": {"orderId": "o1", "order": {"userId": "u1", "status": "ready"}}}


async def hook(live: Live, cookie: str | None, path: str = HOOK) -> aiohttp.ClientWebSocketResponse:
    headers = cookie_header(cookie) if cookie is not None else {}
    return await live.session.ws_connect(f"{live.base}{path}", headers=headers, autoclose=False)


def with_sessions(settings_for: Callable[..., Settings], service: SessionService, **auth: Any) -> Settings:
    return settings_for(env={"AUTH_SESSION_URL": service.url}, auth=auth)


async def test_the_seed_hook_with_its_session_cookie_and_no_token_receives_its_order(
    start_server: StartServer, settings_for: Callable[..., Settings], session_service: SessionService
) -> None:
    # JWT_SECRET and ADMIN_API_KEYS are set (settings_for), AUTH_INSECURE is not.
    settings = with_sessions(settings_for, session_service)
    assert not settings.auth.insecure and settings.auth.jwt_secret
    live = await start_server(settings)
    session_service.user("sess-CANARY-u1", "u1")
    ws = await hook(live, "sess-CANARY-u1")
    connected = await recv(ws)
    assert connected["type"] == "connected", connected
    assert connected["data"]["userId"] == "u1" and connected["data"]["role"] == "customer"
    status, answer = await live.post(ORDER)
    assert status == 202, answer
    assert await recv(ws) == {**ORDER, "id": answer["ids"][0]}
    # The service got the browser's Cookie header as it came, and nothing was asked twice.
    assert session_service.headers == [cookie_header("sess-CANARY-u1")]
    assert session_service.total == 1
    await ws.close()


async def test_a_socketio_client_is_identified_by_its_cookie(
    start_server: StartServer, settings_for: Callable[..., Settings], session_service: SessionService
) -> None:
    live = await start_server(with_sessions(settings_for, session_service))
    session_service.user("sess-CANARY-sio", "u1", "customer")
    for transports in (["websocket"], ["polling"]):
        client = await sio_connect(
            live, None, headers=cookie_header("sess-CANARY-sio"), transports=transports
        )
        status, answer = await live.post(ORDER)
        assert status == 202, answer
        events = await client.wait_for(1)
        assert events == [("order_updated", (ORDER["data"], answer["ids"][0]))]
        await client.close()
    assert session_service.total == 1  # the second connect was answered by the cache


REFUSALS = {
    "401": (Answer(401, {"error": "x"}), 4401, "unauthorized"),
    "403": (Answer(403, {"error": "x"}), 4403, "forbidden"),
    "500": (Answer(500, {"error": "x"}), 1013, "unavailable"),
    "302 to a login page": (Answer(302, b""), 1013, "unavailable"),
    "slower than the timeout": (Answer(200, {"userId": "u1"}, delay=2.0), 1013, "unavailable"),
    "not JSON": (Answer(200, b"<html>login</html>"), 1013, "unavailable"),
    "JSON but not an object": (Answer(200, ["u1"]), 1013, "unavailable"),
    "no userId": (Answer(200, {"user": "u1"}), 1013, "unavailable"),
    "userId not a string": (Answer(200, {"userId": 7}), 1013, "unavailable"),
    "userId not an id": (Answer(200, {"userId": "a b"}), 1013, "unavailable"),
    "role not a string": (Answer(200, {"userId": "u1", "role": ["admin"]}), 1013, "unavailable"),
    "stores not a list": (Answer(200, {"userId": "u1", "stores": "s1"}), 1013, "unavailable"),
    "a role not allowed": (Answer(200, {"userId": "u1", "role": "boss"}), 4403, "forbidden"),
    "another user than the query's": (Answer(200, {"userId": "u2"}), 4403, "forbidden"),
    "another role than the query's": (Answer(200, {"userId": "u1", "role": "driver"}), 4403, "forbidden"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_session_answers_that_refuse_the_client_on_both_transports(
    start_server: StartServer,
    settings_for: Callable[..., Settings],
    session_service: SessionService,
    log_watch: pytest.LogCaptureFixture,
    case: str,
) -> None:
    answer, code, kind = REFUSALS[case]
    live = await start_server(with_sessions(settings_for, session_service, session_timeout_seconds=0.5))
    session_service.answers["sess-CANARY-x"] = answer
    ws = await hook(live, "sess-CANARY-x")
    assert await recv_close(ws) == code
    refusal = await sio_refusal(
        live, {"userId": "u1", "role": "customer"}, headers=cookie_header("sess-CANARY-x")
    )
    assert refusal["message"] == kind, refusal
    unavailable = [r for r in log_watch.records if r.getMessage() == "session service unavailable"]
    if kind == "unavailable":
        # Never cached: each client asked. Failed lookups are logged with why, one line a second
        # at most (in an outage every reconnecting client fails one).
        assert session_service.total == 2
        assert len(unavailable) == 1 and unavailable[0].__dict__.get("reason")
    else:
        assert not unavailable


async def test_no_cookie_no_token_is_unauthorized_without_a_lookup(
    start_server: StartServer, settings_for: Callable[..., Settings], session_service: SessionService
) -> None:
    live = await start_server(with_sessions(settings_for, session_service))
    ws = await hook(live, None)
    assert await recv_close(ws) == 4401
    assert (await sio_refusal(live, {}))["message"] == "unauthorized"
    assert session_service.total == 0


async def test_a_token_always_wins_over_the_session(
    start_server: StartServer, settings_for: Callable[..., Settings], session_service: SessionService
) -> None:
    live = await start_server(with_sessions(settings_for, session_service))
    session_service.user("sess-CANARY-t", "someone-else")
    ws = await hook(live, "sess-CANARY-t", f"/api/ws?token={make_token('u1')}")
    assert (await recv(ws))["data"]["userId"] == "u1"
    client = await sio_connect(live, {"token": make_token("u1")}, headers=cookie_header("sess-CANARY-t"))
    assert session_service.total == 0
    # A bad token is refused as a bad token: no fallback to the session.
    bad = await hook(live, "sess-CANARY-t", "/api/ws?token=eyJnot-a-token")
    assert await recv_close(bad) == 4401
    assert session_service.total == 0
    await ws.close()
    await client.close()


async def test_concurrent_connects_with_one_cookie_share_one_lookup_and_the_cache_holds_no_cookie(
    start_server: StartServer, settings_for: Callable[..., Settings], session_service: SessionService
) -> None:
    live = await start_server(with_sessions(settings_for, session_service))
    cookie = "sess-CANARY-storm-0123456789"
    session_service.answers[cookie] = Answer(200, {"userId": "u1"}, delay=0.3)  # they all overlap
    sockets = await asyncio.gather(*(hook(live, cookie) for _ in range(15)))
    for ws in sockets:
        assert (await recv(ws))["type"] == "connected"
    assert 1 <= session_service.total <= 2, session_service.requests
    # Later connects are answered from the cache, on either transport.
    again = await hook(live, cookie)
    assert (await recv(again))["type"] == "connected"
    client = await sio_connect(live, None, headers=cookie_header(cookie))
    assert session_service.total <= 2
    verifier = live.app[AUTHENTICATOR].sessions
    entries = verifier.cache_entries()
    assert len(entries) == 1
    for key, outcome in entries:
        assert cookie.encode() not in key and b"CANARY" not in key
        assert "CANARY" not in repr(outcome) and outcome.user_id == "u1"
    for ws in [*sockets, again]:
        await ws.close()
    await client.close()


async def test_with_the_cache_off_every_connect_asks(
    start_server: StartServer, settings_for: Callable[..., Settings], session_service: SessionService
) -> None:
    live = await start_server(with_sessions(settings_for, session_service, session_cache_seconds=0))
    session_service.user("sess-CANARY-nc", "u1")
    for _ in range(3):
        ws = await hook(live, "sess-CANARY-nc")
        assert (await recv(ws))["type"] == "connected"
        await ws.close()
    assert session_service.total == 3
    assert live.app[AUTHENTICATOR].sessions.cache_entries() == []


async def test_a_session_that_ends_is_closed_4401_at_the_next_recheck_and_a_failed_recheck_keeps_it(
    start_server: StartServer, settings_for: Callable[..., Settings], session_service: SessionService
) -> None:
    live = await start_server(with_sessions(settings_for, session_service, session_recheck_seconds=1))
    cookie = "sess-CANARY-recheck"
    session_service.user(cookie, "u1")
    ws = await hook(live, cookie)
    assert (await recv(ws))["type"] == "connected"
    client = await sio_connect(live, None, headers=cookie_header(cookie))
    raw = await live.session.ws_connect(
        f"{live.base}/socket.io/?EIO=4&transport=websocket", headers=cookie_header(cookie), autoclose=False
    )
    assert (await raw.receive_str(timeout=3)).startswith("0")
    await raw.send_str("40")
    assert (await raw.receive_str(timeout=3)).startswith("40")
    asked = session_service.total
    # The service fails: the re-checks fail, and the connections stay.
    session_service.answers[cookie] = Answer(503, {"error": "down"})
    deadline = asyncio.get_running_loop().time() + 10
    while session_service.requests[cookie] < asked + 2:  # two rounds of re-checks, at least
        assert asyncio.get_running_loop().time() < deadline, "no re-check was made"
        await asyncio.sleep(0.1)
    await ws.send_json({"type": "ping"})
    assert await recv(ws) == {"type": "pong"}
    assert client.client.connected
    # The session ends: closed with 4401 (Socket.IO: a DISCONNECT packet, which is final).
    session_service.answers[cookie] = Answer(401, {"error": "signed out"})
    assert await recv_close(ws) == 4401
    assert await raw.receive_str(timeout=5) == "41"
    closing = await raw.receive(timeout=5)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closing
    for _ in range(50):
        if client.disconnect_reasons:
            break
        await asyncio.sleep(0.1)
    # python-socketio names it "server disconnect" (socket.io-client: "io server disconnect").
    assert client.disconnect_reasons == [client.client.reason.SERVER_DISCONNECT], client.disconnect_reasons
    await client.close()


async def test_a_recheck_of_many_connections_asks_once_per_credential(
    start_server: StartServer, settings_for: Callable[..., Settings], session_service: SessionService
) -> None:
    live = await start_server(with_sessions(settings_for, session_service, session_recheck_seconds=1))
    for name in ("a", "b"):
        session_service.user(f"sess-CANARY-{name}", f"user-{name}")
    for name in "ab":  # one lookup per session, then the cache
        assert (await recv(await hook(live, f"sess-CANARY-{name}", "/api/ws")))["type"] == "connected"
    assert session_service.total == 2
    sockets = await asyncio.gather(
        *(hook(live, f"sess-CANARY-{name}", "/api/ws") for name in "ab" for _ in range(4))
    )
    for ws in sockets:
        assert (await recv(ws))["type"] == "connected"
    assert session_service.total == 2
    # Before the first re-check (1 s after the connects at the earliest), session a ends.
    session_service.answers["sess-CANARY-a"] = Answer(401, {})
    for ws in sockets[:4]:
        assert await recv_close(ws) == 4401
    # The round asked once per session (twice if the connects straddled a re-check step),
    # however many connections it has: not once per connection.
    assert session_service.requests["sess-CANARY-a"] - 1 <= 2, session_service.requests
    for ws in sockets[4:]:
        await no_message(ws, 0.1)
        await ws.close()


def test_settings_accept_a_session_url_without_a_jwt_key_but_not_nothing_at_all() -> None:
    settings = make_settings({"JWT_SECRET": "", "AUTH_SESSION_URL": "https://shop.example/api/session"})
    assert settings.auth.jwt_secret is None and settings.auth.session_url
    with pytest.raises(ConfigError, match="JWT_SECRET, JWT_PUBLIC_KEY or AUTH_SESSION_URL"):
        make_settings({"JWT_SECRET": ""})
    with pytest.raises(ConfigError, match="AUTH_SESSION_URL: must be an http"):
        make_settings({"AUTH_SESSION_URL": "ftp://shop.example/session"})
    with pytest.raises(ConfigError, match="AUTH_SESSION_URL: must not carry a user name or password"):
        make_settings({"AUTH_SESSION_URL": "https://svc:secret@shop.example/api/session"})
    with pytest.raises(ConfigError, match="AUTH_SESSION_URL: has a port that is not a number"):
        make_settings({"AUTH_SESSION_URL": "https://shop.example:99999/api/session"})
    with pytest.raises(ConfigError, match=r"auth\.session_timeout_seconds"):
        make_settings(auth={"session_timeout_seconds": 0})


async def test_a_process_with_only_a_session_url_and_admin_keys_serves_the_hook(
    session_service: SessionService,
) -> None:
    session_service.user("sess-CANARY-proc", "u1")
    env = {"JWT_SECRET": None, "AUTH_SESSION_URL": session_service.url, "LOG_LEVEL": "debug"}
    with running_server(env) as server:
        async with aiohttp.ClientSession() as http:
            live = Live(base=server.base, app=None, session=http)
            ws = await hook(live, "sess-CANARY-proc")
            assert (await recv(ws))["data"]["userId"] == "u1"
            status, answer = await live.post(ORDER)
            assert status == 202, answer
            assert (await recv(ws))["id"] == answer["ids"][0]
            await ws.close()
            refused = await hook(live, "sess-CANARY-nobody")
            assert await recv_close(refused) == 4401
        server.close()
        assert "session" in server.stderr  # it did log the connects and the refusal...
        assert_no_secrets(server.stderr + server.stdout)  # ...and never a cookie value


async def test_a_client_that_leaves_during_its_session_lookup_leaves_nothing_behind(
    start_server: StartServer,
    settings_for: Callable[..., Settings],
    session_service: SessionService,
    log_watch: pytest.LogCaptureFixture,
) -> None:
    live = await start_server(with_sessions(settings_for, session_service))
    session_service.answers["sess-CANARY-gone"] = Answer(200, {"userId": "u1"}, delay=0.5)
    leaving = asyncio.ensure_future(hook(live, "sess-CANARY-gone"))
    await asyncio.sleep(0.2)
    leaving.cancel()
    await asyncio.sleep(0.6)  # the lookup ends after the client left
    assert session_service.total == 1
    assert not live.node.hub.connections
    assert not [r for r in log_watch.records if r.levelno >= logging.ERROR], log_watch.records
    # The answer was cached all the same: the client's retry costs nothing.
    ws = await hook(live, "sess-CANARY-gone")
    assert (await recv(ws))["type"] == "connected"
    assert session_service.total == 1
    await ws.close()


def test_the_shipped_config_yaml_states_the_identity_defaults() -> None:
    shipped = load_settings(
        env={"CONFIG_FILE": str(DEFAULT_CONFIG_FILE), "JWT_SECRET": "x" * 32, "ADMIN_API_KEYS": "k"}
    ).auth
    text = DEFAULT_CONFIG_FILE.read_text()
    for setting in fields(AuthSettings):
        if setting.name.startswith("session_") or setting.name in ("require_exp", "staff_roles"):
            assert f"  {setting.name}:" in text, setting.name  # listed, with its comment
            assert getattr(shipped, setting.name) == getattr(AuthSettings(), setting.name), setting.name


async def test_session_lookups_and_cache_hits_are_counted_in_metrics(
    start_server: StartServer, settings_for: Callable[..., Settings], session_service: SessionService
) -> None:
    from tests.test_metrics import Delta

    live = await start_server(with_sessions(settings_for, session_service))
    session_service.user("sess-CANARY-m1", "m1")
    async with Delta(live) as delta:
        first = await hook(live, "sess-CANARY-m1", "/api/ws")
        assert (await recv(first))["type"] == "connected"
        second = await hook(live, "sess-CANARY-m1", "/api/ws")  # the same session: from the cache
        assert (await recv(second))["type"] == "connected"
        refused = await hook(live, "sess-CANARY-nobody", "/api/ws")
        assert await recv_close(refused) == 4401
        assert await delta.of("realtime_session_lookups_total", result="ok") == 1
        assert await delta.of("realtime_session_lookups_total", result="unauthorized") == 1
        assert await delta.of("realtime_session_cache_hits_total") == 1
    for ws in (first, second):
        await ws.close()
