"""Client authentication (contract §3) on both transports, over real sockets.

Each case runs on the plain WebSocket (refusals are close frames 4400/4401/4403 after the upgrade)
and on Socket.IO (refusals are CONNECT_ERROR ``{"message": "bad_request"|"unauthorized"|"forbidden"}``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt
import orjson
import pytest
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from server.config import Settings
from tests.clients import JWT_SECRET, Live, SioClient, make_token
from tests.conftest import StartServer

CLOSE_CODES = {"bad_request": 4400, "unauthorized": 4401, "forbidden": 4403}
TRANSPORTS = ["websocket", "socketio"]


@dataclass
class Outcome:
    """How one connection attempt ended: the identity it got, or the refusal kind it was told."""

    user_id: str | None = None
    role: str | None = None
    refused: str | None = None  # "bad_request" | "unauthorized" | "forbidden"


async def attempt(
    live: Live,
    transport: str,
    *,
    token: str | None = None,
    query: dict[str, str] | None = None,
    auth: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Outcome:
    """Connect once. ``token`` goes where each transport's clients put it: the WebSocket query, or
    Socket.IO's ``auth.token``. ``query`` and ``headers`` are sent as they are on either."""
    query = dict(query or {})
    if transport == "websocket":
        if token is not None:
            query["token"] = token
        ws = await live.session.ws_connect(
            f"{live.base}/api/ws", params=query, headers=headers, autoclose=False
        )
        try:
            msg = await ws.receive(timeout=3)
            if msg.type == aiohttp.WSMsgType.TEXT:
                first = orjson.loads(msg.data)
                assert first["type"] == "connected", first
                return Outcome(first["data"]["userId"], first["data"]["role"])
            assert msg.type == aiohttp.WSMsgType.CLOSE, msg
            kinds = {code: kind for kind, code in CLOSE_CODES.items()}
            assert msg.data in kinds, (msg.data, msg.extra)
            assert msg.extra, "a refusal says why in the close reason"
            return Outcome(refused=kinds[msg.data])
        finally:
            await ws.close()
    auth = dict(auth or {})
    if token is not None:
        auth["token"] = token
    url = f"{live.base}?{urlencode(query)}" if query else live.base
    client = SioClient()
    try:
        await client.client.connect(
            url, auth=auth, headers=headers or {}, transports=["websocket"], wait_timeout=5
        )
    except socketio.exceptions.ConnectionError:
        error = client.connect_error
        assert isinstance(error, dict) and error.get("message") in CLOSE_CODES, error
        return Outcome(refused=error["message"])
    try:
        conns = [c for c in live.node.hub.connections if c.transport == "socketio"]
        assert len(conns) == 1, conns
        return Outcome(conns[0].identity.user_id, conns[0].identity.role)
    finally:
        await client.close()


def token_for(claims: dict[str, Any], key: Any = JWT_SECRET, algorithm: str = "HS256", **header: Any) -> str:
    payload = {"exp": int(time.time()) + 3600, **claims}
    return jwt.encode(payload, key, algorithm=algorithm, headers=header or None)


def b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(claims: dict[str, Any]) -> str:
    """alg "none": what an attacker sends hoping the signature is not checked."""
    header = b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    payload = b64(orjson.dumps({"exp": int(time.time()) + 3600, **claims}))
    return f"{header}.{payload}."


def pem(private_key: Any) -> str:
    text: str = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return text


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# --- tokens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_hs256_token_gives_the_tokens_user_and_role(live: Live, transport: str) -> None:
    assert await attempt(live, transport, token=make_token("u1", "merchant")) == Outcome("u1", "merchant")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_token_without_a_role_claim_gets_the_default_role(live: Live, transport: str) -> None:
    assert await attempt(live, transport, token=make_token("u1", None)) == Outcome("u1", "customer")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_public_key_tokens_are_verified_with_jwt_public_key(
    start_server: StartServer,
    settings_for: Callable[..., Settings],
    rsa_key: Any,
    ec_key: Any,
    transport: str,
    algorithm: str,
) -> None:
    key = rsa_key if algorithm == "RS256" else ec_key
    # Only the public key is configured: JWT_SECRET is empty.
    live = await start_server(settings_for(env={"JWT_SECRET": "", "JWT_PUBLIC_KEY": pem(key)}))
    good = token_for({"sub": "u1", "role": "driver"}, key, algorithm)
    assert await attempt(live, transport, token=good) == Outcome("u1", "driver")

    other = (
        rsa.generate_private_key(65537, 2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    forged = token_for({"sub": "u1"}, other, algorithm)
    assert await attempt(live, transport, token=forged) == Outcome(refused="unauthorized")
    # No HS256 secret is configured, so HS256 tokens are refused...
    assert await attempt(live, transport, token=make_token("u1")) == Outcome(refused="unauthorized")
    # ...including one "signed" with the public key as an HMAC secret (algorithm confusion).
    confused = _hmac_token({"sub": "u1"}, pem(key).encode())
    assert await attempt(live, transport, token=confused) == Outcome(refused="unauthorized")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_hs256_and_rs256_work_side_by_side(
    start_server: StartServer, settings_for: Callable[..., Settings], rsa_key: Any, transport: str
) -> None:
    live = await start_server(settings_for(env={"JWT_PUBLIC_KEY": pem(rsa_key)}))
    assert await attempt(live, transport, token=make_token("u1")) == Outcome("u1", "customer")
    assert await attempt(live, transport, token=token_for({"sub": "u2"}, rsa_key, "RS256")) == Outcome(
        "u2", "customer"
    )
    confused = _hmac_token({"sub": "u1"}, pem(rsa_key).encode())
    assert await attempt(live, transport, token=confused) == Outcome(refused="unauthorized")


def _hmac_token(claims: dict[str, Any], secret: bytes, algorithm: str = "HS256") -> str:
    """HMAC by hand: PyJWT refuses a PEM key as an HMAC secret, and warns about short HS512 keys."""
    import hashlib
    import hmac

    header = b64(orjson.dumps({"alg": algorithm, "typ": "JWT"}))
    payload = b64(orjson.dumps({"exp": int(time.time()) + 3600, **claims}))
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[algorithm]
    signature = hmac.new(secret, f"{header}.{payload}".encode(), digest).digest()
    return f"{header}.{payload}.{b64(signature)}"


BAD_TOKENS: dict[str, Callable[[], str]] = {
    "expired": lambda: token_for({"sub": "u1", "exp": int(time.time()) - 60}),
    "not yet valid": lambda: token_for({"sub": "u1", "nbf": int(time.time()) + 600}),
    "wrong secret": lambda: make_token("u1", secret="another-secret-that-is-long-enough-for-hs256"),
    "alg none": lambda: unsigned_token({"sub": "u1"}),
    "alg none with a signature": lambda: unsigned_token({"sub": "u1"}) + "c2ln",
    "tampered payload": lambda: _tamper(make_token("u1")),
    "malformed": lambda: "not-a-jwt",
    "three garbage parts": lambda: "a.b.c",
    "no sub": lambda: token_for({"role": "customer"}),
    "sub not a string": lambda: token_for({"sub": 42}),
    "sub not a valid id": lambda: token_for({"sub": "a b"}),
    "role not a string": lambda: token_for({"sub": "u1", "role": ["admin"]}),
    "HS512": lambda: _hmac_token({"sub": "u1"}, JWT_SECRET.encode(), "HS512"),
}


def _tamper(token: str) -> str:
    header, _, signature = token.split(".")
    payload = b64(orjson.dumps({"sub": "admin-user", "role": "admin", "exp": int(time.time()) + 3600}))
    return f"{header}.{payload}.{signature}"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_invalid_token_is_unauthorized(live: Live, transport: str, case: str) -> None:
    assert await attempt(live, transport, token=BAD_TOKENS[case]()) == Outcome(refused="unauthorized")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_missing_token_is_unauthorized_when_not_insecure(live: Live, transport: str) -> None:
    assert await attempt(live, transport) == Outcome(refused="unauthorized")
    # A claimed identity without a token is not trusted.
    outcome = await attempt(
        live, transport, query={"userId": "u1", "role": "customer"}, auth={"userId": "u1"}
    )
    assert outcome == Outcome(refused="unauthorized")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_audience_and_issuer_are_checked_when_configured(
    start_server: StartServer, settings_for: Callable[..., Settings], transport: str
) -> None:
    live = await start_server(settings_for(auth={"audience": "realtime", "issuer": "https://auth.example"}))
    good = {"sub": "u1", "aud": "realtime", "iss": "https://auth.example"}
    assert await attempt(live, transport, token=token_for(good)) == Outcome("u1", "customer")
    for claims in ({**good, "aud": "other"}, {**good, "iss": "https://evil.example"}, {"sub": "u1"}):
        assert await attempt(live, transport, token=token_for(claims)) == Outcome(refused="unauthorized"), (
            claims
        )


# --- identity and roles ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_query_user_and_role_must_match_the_token(live: Live, transport: str) -> None:
    token = make_token("u1", "merchant")
    assert await attempt(live, transport, token=token, query={"userId": "u1", "role": "merchant"}) == Outcome(
        "u1", "merchant"
    )
    assert await attempt(live, transport, token=token, query={"userId": "u2"}) == Outcome(refused="forbidden")
    assert await attempt(live, transport, token=token, query={"role": "admin"}) == Outcome(
        refused="forbidden"
    )


async def test_socketio_auth_user_must_match_the_token(live: Live) -> None:
    token = make_token("u1")
    assert await attempt(live, "socketio", token=token, auth={"userId": "u1"}) == Outcome("u1", "customer")
    assert await attempt(live, "socketio", token=token, auth={"userId": "u2"}) == Outcome(refused="forbidden")
    assert await attempt(live, "socketio", token=token, auth={"role": "admin"}) == Outcome(
        refused="forbidden"
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_role_not_in_the_configured_roles_is_forbidden(
    start_server: StartServer, settings_for: Callable[..., Settings], transport: str
) -> None:
    live = await start_server(settings_for())
    assert await attempt(live, transport, token=make_token("u1", "superuser")) == Outcome(refused="forbidden")
    for role in ("customer", "merchant", "driver", "admin"):
        assert await attempt(live, transport, token=make_token("u1", role)) == Outcome("u1", role)
    narrow = await start_server(settings_for(auth={"roles": ["customer", "driver"]}))
    assert await attempt(narrow, transport, token=make_token("u1", "merchant")) == Outcome(
        refused="forbidden"
    )
    assert await attempt(narrow, transport, token=make_token("u1", "driver")) == Outcome("u1", "driver")


# --- where the token is read from -----------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_token_is_read_from_the_query(live: Live, transport: str) -> None:
    outcome = await attempt(live, transport, query={"token": make_token("u1", "driver")})
    assert outcome == Outcome("u1", "driver")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_token_is_read_from_the_authorization_header(live: Live, transport: str) -> None:
    headers = {"Authorization": f"Bearer {make_token('u1', 'driver')}"}
    assert await attempt(live, transport, headers=headers) == Outcome("u1", "driver")
    assert await attempt(live, transport, headers={"Authorization": "Bearer nonsense"}) == Outcome(
        refused="unauthorized"
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_token_is_read_from_the_configured_cookie_only(
    start_server: StartServer, settings_for: Callable[..., Settings], transport: str
) -> None:
    cookie = {"Cookie": f"other=1; rt_session={make_token('u1', 'driver')}"}
    with_cookie = await start_server(settings_for(auth={"cookie_name": "rt_session"}))
    assert await attempt(with_cookie, transport, headers=cookie) == Outcome("u1", "driver")
    # Off by default: the same cookie is not a credential.
    without = await start_server(settings_for())
    assert await attempt(without, transport, headers=cookie) == Outcome(refused="unauthorized")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_first_token_found_wins(
    start_server: StartServer, settings_for: Callable[..., Settings], transport: str
) -> None:
    live = await start_server(settings_for(auth={"cookie_name": "rt_session"}))
    bad = "not-a-jwt"
    places: list[tuple[str, Callable[[str], dict[str, Any]]]] = [
        ("query", lambda t: {"query": {"token": t}}),
        ("header", lambda t: {"headers": {"Authorization": f"Bearer {t}"}}),
        ("cookie", lambda t: {"headers": {"Cookie": f"rt_session={t}"}}),
    ]
    if transport == "socketio":
        places.insert(0, ("auth", lambda t: {"token": t}))
    for index, (first, put_first) in enumerate(places):
        for second, put_second in places[index + 1 :]:
            for winner, loser, expected in (
                (make_token("u1"), bad, Outcome("u1", "customer")),
                (bad, make_token("u1"), Outcome(refused="unauthorized")),
            ):
                kwargs = _combine(put_first(winner), put_second(loser))
                assert await attempt(live, transport, **kwargs) == expected, (first, second, winner is bad)


def _combine(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in (a, b):
        for key, value in part.items():
            if isinstance(value, dict):
                merged.setdefault(key, {})
                if key == "headers" and "Cookie" in value and "Cookie" in merged[key]:
                    merged[key]["Cookie"] += "; " + value["Cookie"]
                else:
                    merged[key].update(value)
            else:
                merged[key] = value
    return merged


# --- Origin ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_configured_origins_are_allowed_and_others_forbidden(
    start_server: StartServer, settings_for: Callable[..., Settings], transport: str
) -> None:
    live = await start_server(
        settings_for(env={"CORS_ALLOWED_ORIGINS": "https://shop.example, https://admin.example"})
    )
    token = make_token("u1")
    for origin in ("https://shop.example", "https://admin.example"):
        assert await attempt(live, transport, token=token, headers={"Origin": origin}) == Outcome(
            "u1", "customer"
        )
    for origin in (
        "https://evil.example",
        "http://shop.example",
        "https://shop.example.evil.example",
        "null",
        live.base,
    ):
        outcome = await attempt(live, transport, token=token, headers={"Origin": origin})
        assert outcome == Outcome(refused="forbidden"), origin


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_without_configured_origins_only_no_origin_and_same_origin_are_accepted(
    live: Live, transport: str
) -> None:
    token = make_token("u1")
    assert await attempt(live, transport, token=token) == Outcome("u1", "customer")
    assert await attempt(live, transport, token=token, headers={"Origin": live.base}) == Outcome(
        "u1", "customer"
    )
    port = live.base.rsplit(":", 1)[1]
    for origin in (
        "https://evil.example",
        f"http://localhost.evil.example:{port}",
        "null",
        "http://127.0.0.1:1",
    ):
        outcome = await attempt(live, transport, token=token, headers={"Origin": origin})
        assert outcome == Outcome(refused="forbidden"), origin


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_insecure_mode_without_configured_origins_accepts_any_origin(
    start_server: StartServer, settings_for: Callable[..., Settings], transport: str
) -> None:
    live = await start_server(settings_for(env={"AUTH_INSECURE": "1"}))
    for origin in ("https://evil.example", "http://localhost:5173", "null"):
        outcome = await attempt(live, transport, query={"userId": "42"}, headers={"Origin": origin})
        assert outcome == Outcome("42", "customer"), origin


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_insecure_mode_with_configured_origins_still_checks_them(
    start_server: StartServer, settings_for: Callable[..., Settings], transport: str
) -> None:
    live = await start_server(
        settings_for(env={"AUTH_INSECURE": "1", "CORS_ALLOWED_ORIGINS": "http://localhost:5173"})
    )
    ok = await attempt(live, transport, query={"userId": "42"}, headers={"Origin": "http://localhost:5173"})
    assert ok == Outcome("42", "customer")
    refused = await attempt(
        live, transport, query={"userId": "42"}, headers={"Origin": "https://evil.example"}
    )
    assert refused == Outcome(refused="forbidden")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cross_site_page_riding_the_users_cookie_is_refused(
    start_server: StartServer, settings_for: Callable[..., Settings], transport: str
) -> None:
    """Cross-site WebSocket hijacking: the browser sends the cookie along; the Origin gives it away."""
    live = await start_server(settings_for(auth={"cookie_name": "rt_session"}))
    cookie = f"rt_session={make_token('u1')}"
    own = await attempt(live, transport, headers={"Cookie": cookie, "Origin": live.base})
    assert own == Outcome("u1", "customer")
    foreign = await attempt(live, transport, headers={"Cookie": cookie, "Origin": "https://evil.example"})
    assert foreign == Outcome(refused="forbidden")


# --- insecure development mode --------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_insecure_mode_trusts_the_query_and_needs_a_user_id(
    start_server: StartServer, settings_for: Callable[..., Settings], transport: str
) -> None:
    live = await start_server(settings_for(env={"AUTH_INSECURE": "1"}))
    assert await attempt(live, transport, query={"userId": "42", "role": "driver"}) == Outcome("42", "driver")
    assert await attempt(live, transport, query={"userId": "42"}) == Outcome("42", "customer")
    assert await attempt(live, transport) == Outcome(refused="bad_request")
    assert await attempt(live, transport, query={"role": "customer"}) == Outcome(refused="bad_request")
    assert await attempt(live, transport, query={"userId": "a b"}) == Outcome(refused="bad_request")
    assert await attempt(live, transport, query={"userId": "42", "role": "superuser"}) == Outcome(
        refused="forbidden"
    )
    # A token, when given, is still verified.
    assert await attempt(live, transport, token="not-a-jwt") == Outcome(refused="unauthorized")


async def test_insecure_mode_trusts_socketio_auth(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(env={"AUTH_INSECURE": "1"}))
    assert await attempt(live, "socketio", auth={"userId": "42", "role": "merchant"}) == Outcome(
        "42", "merchant"
    )
    assert await attempt(live, "socketio", auth={"userId": 42}) == Outcome(refused="bad_request")
    assert await attempt(live, "socketio", auth={"role": "merchant"}) == Outcome(refused="bad_request")
