"""A fast path for the common client token: HS256, signature and registered claims checked here.

PyJWT spends ~60 µs on a token (its options, key checks that it repeats on every call, stdlib
JSON, warnings); in a reconnect storm that was a quarter of the server's CPU per connect. Here a
plainly formed HS256 token costs one HMAC and two small decodes. Anything this path does not
positively accept (another algorithm, a bad signature, an expired or not-yet-valid token, an odd
header or claim) returns None, and PyJWT then decides: its answer, and the words of its errors,
stay the only ones clients see.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from typing import Any

import orjson
from jwt.algorithms import HMACAlgorithm
from jwt.exceptions import InvalidKeyError

_PLAIN_HEADER_KEYS = frozenset({"alg", "typ", "kid"})  # anything else ("crit", "b64", ...): PyJWT
_TIME_CLAIMS = ("exp", "nbf", "iat")


def usable_key(secret: str | None) -> bytes | None:
    """The HMAC key, once, if PyJWT would accept it (not empty, not an asymmetric key or JWK)."""
    if not secret:
        return None
    try:
        return HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except InvalidKeyError:
        return None


_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _segment(text: str) -> bytes:
    raw = text.encode("ascii")
    # PyJWT's base64url_decode: base64.urlsafe_b64decode(raw + padding), which is this (it
    # discards characters outside the alphabet too) behind two layers of Python calls.
    return binascii.a2b_base64(raw.translate(_URLSAFE) + b"=" * (-len(raw) % 4))


def verify(
    token: str, key: bytes, now: float, required: tuple[str, ...], issuer: str | None
) -> dict[str, Any] | None:
    """The claims, when PyJWT would return the same ones for ``jwt.decode(token, key,
    algorithms=["HS256"], issuer=issuer, options={"require": required})`` with no audience; else None."""
    try:
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = orjson.loads(_segment(header_b64))
        if type(header) is not dict or header.get("alg") != "HS256":
            return None
        if not header.keys() <= _PLAIN_HEADER_KEYS:
            return None
        signed = f"{header_b64}.{payload_b64}".encode("ascii")
        expected = hmac.new(key, signed, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _segment(signature_b64)):
            return None
        claims = orjson.loads(_segment(payload_b64))
    except (ValueError, UnicodeError, binascii.Error):  # orjson.JSONDecodeError is a ValueError
        return None
    if type(claims) is not dict or any(claims.get(name) is None for name in required):
        return None
    for name in ("sub", "jti"):  # PyJWT: when present, a string
        if name in claims and type(claims[name]) is not str:
            return None
    try:
        for name in _TIME_CLAIMS:  # PyJWT: when present, int() of it; exp > now >= nbf, iat
            if name in claims:
                value = claims[name]
                if type(value) not in (int, float):
                    return None
                if int(value) <= now if name == "exp" else int(value) > now:
                    return None
    except (ValueError, OverflowError):  # NaN, infinity
        return None
    if issuer is not None and claims.get("iss") != issuer:
        return None
    return claims
