"""Who a client is (contract §3, §8): JWT verification, platform sessions, insecure development
mode, and the Origin check.

Both transports call the same ``Authenticator``; only where they read the credentials from differs.
Whatever identified a client, it ends as one ``Identity``: who, which role, which stores it works
for, when it expires and how to re-check it. Transports never look at where it came from.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import jwt

from handlers.subscriptions import valid_id
from server.config import AuthSettings
from server.identity import hs256
from server.identity.errors import CLOSE_CODES, AuthError, FailureKind
from server.identity.lifetime import Lifetime
from server.identity.sessions import ForwardedHeaders, SessionVerifier

if TYPE_CHECKING:
    from server.identity.lifetime import Watched

__all__ = ["CLOSE_CODES", "AuthError", "Authenticator", "Credentials", "FailureKind", "Identity"]

log = logging.getLogger(__name__)

_HMAC_ALGORITHMS = ("HS256",)
_PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    role: str
    stores: tuple[str, ...] = ()  # the stores it works for (token claim or session answer)
    expires_at: float | None = None  # the token's exp, seconds since the epoch; None: never
    # How to re-check it: the session headers it was identified by (in memory, on the connection
    # only); None for a token or insecure identity.
    session: ForwardedHeaders | None = field(default=None, repr=False, compare=False)

    @property
    def exp(self) -> int | float | None:
        """``expires_at`` as the token had it, for clients (an integer, almost always)."""
        expires_at = self.expires_at
        return int(expires_at) if expires_at is not None and expires_at.is_integer() else expires_at


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client presented, whichever transport it came by."""

    token: str | None = None
    user_id: str | None = None
    role: str | None = None
    # The Cookie and Authorization headers as they came, for the session service.
    cookie: str | None = field(default=None, repr=False)
    authorization: str | None = field(default=None, repr=False)


class Authenticator:
    def __init__(self, settings: AuthSettings, allowed_origins: tuple[str, ...]) -> None:
        self.settings = settings
        # Each role's one string: an identity keeps it, not the copy its token or session gave
        # (kept after the connection by its resume point: thousands after a reconnect storm).
        self._roles = {role: role for role in (*settings.roles, settings.default_role)}
        self.allowed_origins = frozenset(origin.rstrip("/") for origin in allowed_origins)
        self.sessions: SessionVerifier | None = None
        if settings.session_url:
            self.sessions = SessionVerifier(
                settings.session_url,
                timeout=settings.session_timeout_seconds,
                cache_seconds=settings.session_cache_seconds,
                max_entries=settings.session_cache_max_entries,
                max_concurrency=settings.session_max_concurrency,
            )
        self.lifetime: Lifetime = Lifetime(self.sessions, settings.session_recheck_seconds)
        # HS256 tokens PyJWT would accept are verified by hs256.verify (a quarter of a connect's CPU
        # went to PyJWT); everything else, errors included, still goes through PyJWT.
        self._hs256_key = hs256.usable_key(settings.jwt_secret) if settings.audience is None else None
        self._required = ("sub", "exp") if settings.require_exp else ("sub",)

    async def start(self) -> None:
        """On app startup: the pooled HTTP client for session lookups."""
        if self.sessions is not None:
            await self.sessions.start()

    async def stop(self) -> None:
        self.lifetime.stop()
        if self.sessions is not None:
            await self.sessions.stop()

    def watch(self, conn: Watched) -> None:
        """Close ``conn`` when its identity expires or its session ends (one schedule per process)."""
        self.lifetime.watch(conn)

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

    async def authenticate(self, credentials: Credentials) -> Identity:
        """Who the client is: its token when it has one, else its platform session when the
        server has a session service, else (insecure mode) what it claims."""
        if credentials.token or self.sessions is None:
            return self.identify(credentials)
        self._check_claimed(credentials)
        headers = ForwardedHeaders(credentials.cookie, credentials.authorization)
        if headers.empty:
            raise AuthError("unauthorized", "a token or a session is required")
        answer = await self.sessions.lookup(headers)
        role = self._role(answer.role or self.settings.default_role)
        identity = Identity(answer.user_id, role, answer.stores, None, headers)
        self._check_match(credentials, identity, "the session")
        return self._allowed(identity)

    def refresh(self, current: Identity, token: str) -> Identity:
        """The identity a fresh token gives a connection; AuthError("forbidden") if it does not
        verify or names someone else (contract §8: the connection is then closed with 4403)."""
        try:
            identity = self._verify(token)
        except AuthError as exc:
            raise AuthError("forbidden", f"refresh refused: {exc.message}") from None
        if identity.user_id != current.user_id or identity.role != current.role:
            raise AuthError("forbidden", "refresh refused: the token names another user or role")
        return identity

    def identify(self, credentials: Credentials) -> Identity:
        """Verify the token (or trust the claimed identity in insecure mode)."""
        self._check_claimed(credentials)
        if credentials.token:
            identity = self._verify(credentials.token)
            self._check_match(credentials, identity, "the token")
        elif self.settings.insecure:
            if not credentials.user_id:
                raise AuthError("bad_request", "userId is required")
            role = self._role(credentials.role or self.settings.default_role)
            identity = Identity(credentials.user_id, role)
        else:
            raise AuthError("unauthorized", "a token is required")
        return self._allowed(identity)

    @staticmethod
    def _check_claimed(credentials: Credentials) -> None:
        for name, value in (("userId", credentials.user_id), ("role", credentials.role)):
            if value is not None and not valid_id(value):
                raise AuthError("bad_request", f"{name} must be 1-128 letters, digits or _.:@-")

    @staticmethod
    def _check_match(credentials: Credentials, identity: Identity, source: str) -> None:
        """A userId or role in the query must be the verified one's."""
        if credentials.user_id is not None and credentials.user_id != identity.user_id:
            raise AuthError("forbidden", f"userId does not match {source}")
        if credentials.role is not None and credentials.role != identity.role:
            raise AuthError("forbidden", f"role does not match {source}")

    def _allowed(self, identity: Identity) -> Identity:
        if identity.role not in self.settings.roles:
            raise AuthError("forbidden", f"role {identity.role!r} is not allowed")
        return identity

    def _verify(self, token: str) -> Identity:
        settings = self.settings
        if self._hs256_key is not None:
            claims = hs256.verify(token, self._hs256_key, time.time(), self._required, settings.issuer)
            if claims is not None:
                return self._identity(claims)
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
                options={
                    "require": list(self._required),
                    "verify_aud": settings.audience is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("unauthorized", "the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError("unauthorized", f"the token is invalid: {exc}") from None
        return self._identity(claims)

    def _identity(self, claims: dict[str, Any]) -> Identity:
        """The identity verified claims give, or AuthError when they do not name a valid one."""
        settings = self.settings
        user_id, role = claims.get("sub"), claims.get("role", settings.default_role)
        if not isinstance(user_id, str) or not valid_id(user_id):
            raise AuthError("unauthorized", "the token's sub is not a valid user id")
        if not isinstance(role, str):
            raise AuthError("unauthorized", "the token's role claim must be a string")
        stores: Any = claims.get("stores", [])
        if not isinstance(stores, list) or not all(valid_id(store) for store in stores):
            raise AuthError("unauthorized", "the token's stores claim must be a list of store ids")
        exp = claims.get("exp")
        expires_at = float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
        return Identity(user_id, self._role(role), tuple(dict.fromkeys(stores)), expires_at)

    def _role(self, role: str) -> str:
        return self._roles.get(role, role)
