"""Who a client is (contract §3): JWT verification, insecure development mode, and the Origin check.

Both transports call the same ``Authenticator``; only where they read the token from differs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import jwt

from handlers.subscriptions import valid_id
from server.config import AuthSettings

log = logging.getLogger(__name__)

FailureKind = Literal["bad_request", "unauthorized", "forbidden"]
CLOSE_CODES: dict[str, int] = {"bad_request": 4400, "unauthorized": 4401, "forbidden": 4403}
_HMAC_ALGORITHMS = ("HS256",)
_PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    role: str


class AuthError(Exception):
    """The connection is refused; ``kind`` is what the client is told, ``message`` why."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.message = message

    @property
    def close_code(self) -> int:
        return CLOSE_CODES[self.kind]


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client presented, whichever transport it came by."""

    token: str | None = None
    user_id: str | None = None
    role: str | None = None


class Authenticator:
    def __init__(self, settings: AuthSettings, allowed_origins: tuple[str, ...]) -> None:
        self.settings = settings
        self.allowed_origins = frozenset(origin.rstrip("/") for origin in allowed_origins)

    def check_origin(self, origin: str | None, host: str | None) -> None:
        """Browsers send Origin; services and native apps do not, and are let through."""
        if origin is None:
            return
        if self.allowed_origins:
            if "*" in self.allowed_origins or origin.rstrip("/") in self.allowed_origins:
                return
        elif self.settings.insecure or (host and urlsplit(origin).netloc.lower() == host.lower()):
            return  # development mode: any origin; otherwise same-origin pages only
        raise AuthError("forbidden", f"origin {origin} is not allowed")

    def identify(self, credentials: Credentials) -> Identity:
        """Verify the token (or trust the claimed identity in insecure mode)."""
        for name, value in (("userId", credentials.user_id), ("role", credentials.role)):
            if value is not None and not valid_id(value):
                raise AuthError("bad_request", f"{name} must be 1-128 letters, digits or _.:@-")
        if credentials.token:
            identity = self._verify(credentials.token)
            if credentials.user_id is not None and credentials.user_id != identity.user_id:
                raise AuthError("forbidden", "userId does not match the token")
            if credentials.role is not None and credentials.role != identity.role:
                raise AuthError("forbidden", "role does not match the token")
        elif self.settings.insecure:
            if not credentials.user_id:
                raise AuthError("bad_request", "userId is required")
            identity = Identity(credentials.user_id, credentials.role or self.settings.default_role)
        else:
            raise AuthError("unauthorized", "a token is required")
        if identity.role not in self.settings.roles:
            raise AuthError("forbidden", f"role {identity.role!r} is not allowed")
        return identity

    def _verify(self, token: str) -> Identity:
        settings = self.settings
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise AuthError("unauthorized", "the token is malformed") from None
        key: str | None
        if algorithm in _HMAC_ALGORITHMS:
            key = settings.jwt_secret
        elif algorithm in _PUBLIC_KEY_ALGORITHMS:
            key = settings.jwt_public_key
        else:
            key = None
        if not key or not isinstance(algorithm, str):
            raise AuthError("unauthorized", f"tokens signed with {algorithm!r} are not accepted")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=settings.audience,
                issuer=settings.issuer,
                options={"require": ["sub"], "verify_aud": settings.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("unauthorized", "the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError("unauthorized", f"the token is invalid: {exc}") from None
        user_id, role = claims.get("sub"), claims.get("role", settings.default_role)
        if not isinstance(user_id, str) or not valid_id(user_id):
            raise AuthError("unauthorized", "the token's sub is not a valid user id")
        if not isinstance(role, str):
            raise AuthError("unauthorized", "the token's role claim must be a string")
        return Identity(user_id, role)
