"""The HS256 fast path agrees with PyJWT: whatever it accepts, PyJWT accepts with the same claims,
and every token PyJWT refuses it leaves to PyJWT (returns None)."""

from __future__ import annotations

import base64
import hmac
import time
import warnings
from typing import Any

import jwt
import orjson
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from server.identity import hs256

SECRET = "fast-path-secret-that-is-long-enough-for-hs256"
KEY = hs256.usable_key(SECRET)
NOW = time.time()


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged(header: Any, claims: Any, secret: str = SECRET, raw_claims: bytes | None = None) -> str:
    """A token signed as given, header and claims encoded as they are (even when PyJWT would not)."""
    body = raw_claims if raw_claims is not None else orjson.dumps(claims)
    head = b64(orjson.dumps(header)) + "." + b64(body)
    return head + "." + b64(hmac.new(secret.encode(), head.encode(), "sha256").digest())


HS = {"alg": "HS256", "typ": "JWT"}
GOOD = {"sub": "u1", "role": "customer", "exp": int(NOW) + 86400, "stores": ["s1"]}

ACCEPTED = {
    "plain": jwt.encode(GOOD, SECRET),
    "with iat and nbf in the past": jwt.encode({**GOOD, "iat": int(NOW) - 5, "nbf": int(NOW) - 5}, SECRET),
    "float exp": forged(HS, {**GOOD, "exp": NOW + 86400.5}),
    "with kid": jwt.encode(GOOD, SECRET, headers={"kid": "k1"}),
    "no typ": forged({"alg": "HS256"}, GOOD),
    "jti string": jwt.encode({**GOOD, "jti": "abc"}, SECRET),
}


def hs512(claims: dict[str, Any]) -> str:
    with warnings.catch_warnings():  # the token's algorithm is the point here, not the key's length
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, SECRET, algorithm="HS512")


REFUSED_BY_BOTH = {
    "expired": jwt.encode({**GOOD, "exp": int(NOW) - 1}, SECRET),
    "expires now": jwt.encode({**GOOD, "exp": int(NOW) - 0.2}, SECRET),
    "not yet valid (nbf)": jwt.encode({**GOOD, "nbf": int(NOW) + 86400}, SECRET),
    "issued in the future": jwt.encode({**GOOD, "iat": int(NOW) + 86400}, SECRET),
    "wrong secret": jwt.encode(GOOD, SECRET + "x"),
    "no sub": jwt.encode({"exp": int(NOW) + 86400}, SECRET),
    "no exp": jwt.encode({"sub": "u1"}, SECRET),
    "exp null": forged(HS, {**GOOD, "exp": None}),
    "sub not a string": forged(HS, {**GOOD, "sub": 17}),
    "jti not a string": forged(HS, {**GOOD, "jti": 5}),
    "exp a word": forged(HS, {**GOOD, "exp": "soon"}),
    "nbf null": forged(HS, {**GOOD, "nbf": None}),
    "claims not an object": forged(HS, None, raw_claims=b"[1, 2]"),
    "claims not JSON": forged(HS, None, raw_claims=b"{nope"),
    "alg none": b64(b'{"alg":"none"}') + "." + b64(orjson.dumps(GOOD)) + ".",
    "HS512": hs512(GOOD),
    "two segments": "abc.def",
    "garbage": "not a token",
    "signature tampered": jwt.encode(GOOD, SECRET)[:-3] + "AAA",
    "payload tampered": forged(HS, GOOD).replace(".", ".e", 1),
}
LEFT_TO_PYJWT = {  # odd but possibly valid: PyJWT decides
    "crit header": forged({**HS, "crit": ["exp"]}, GOOD),
    "exp a numeric string": forged(HS, {**GOOD, "exp": str(int(NOW) + 86400)}),
    "exp true": forged(HS, {**GOOD, "exp": True}),
}


def pyjwt(token: str, issuer: str | None = None) -> dict[str, Any] | None:
    try:
        claims: dict[str, Any] = jwt.decode(
            token, SECRET, algorithms=["HS256"], issuer=issuer, options={"require": ["sub", "exp"]}
        )
    except jwt.InvalidTokenError:
        return None
    return claims


@pytest.mark.parametrize("name", ACCEPTED)
def test_a_plain_valid_token_gives_the_claims_pyjwt_gives(name: str) -> None:
    assert KEY is not None
    token = ACCEPTED[name]
    claims = hs256.verify(token, KEY, time.time(), ("sub", "exp"), None)
    assert claims is not None
    assert claims == pyjwt(token)


@pytest.mark.parametrize("name", REFUSED_BY_BOTH)
def test_a_token_pyjwt_refuses_is_left_to_it(name: str) -> None:
    assert KEY is not None
    token = REFUSED_BY_BOTH[name]
    assert pyjwt(token) is None, "the case must be one PyJWT refuses"
    assert hs256.verify(token, KEY, time.time(), ("sub", "exp"), None) is None


@pytest.mark.parametrize("name", LEFT_TO_PYJWT)
def test_unusual_tokens_are_left_to_pyjwt(name: str) -> None:
    assert KEY is not None
    assert hs256.verify(LEFT_TO_PYJWT[name], KEY, time.time(), ("sub", "exp"), None) is None


def test_the_issuer_is_checked_when_configured() -> None:
    assert KEY is not None
    token = jwt.encode({**GOOD, "iss": "shop"}, SECRET)
    assert hs256.verify(token, KEY, time.time(), ("sub", "exp"), "shop") == pyjwt(token, "shop")
    assert hs256.verify(token, KEY, time.time(), ("sub", "exp"), "other") is None
    assert hs256.verify(ACCEPTED["plain"], KEY, time.time(), ("sub", "exp"), "shop") is None


def test_without_exp_required_a_token_without_exp_is_accepted() -> None:
    assert KEY is not None
    token = jwt.encode({"sub": "u1"}, SECRET)
    assert hs256.verify(token, KEY, time.time(), ("sub",), None) == {"sub": "u1"}


@pytest.mark.parametrize("secret", [None, "", "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n"])
def test_keys_pyjwt_would_refuse_get_no_fast_path(secret: str | None) -> None:
    assert hs256.usable_key(secret) is None
