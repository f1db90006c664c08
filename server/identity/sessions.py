"""Platform sessions (contract §8): a client without a token is who the site's session says it is.

The server asks ``GET AUTH_SESSION_URL`` with the client's ``Cookie`` and ``Authorization`` headers
as they came. Answers are cached per credential under a keyed hash of those headers (never the
headers themselves), and concurrent lookups of one credential share one request, so a reconnect
storm costs the session service about one request per session, not one per connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from handlers.subscriptions import valid_id
from server.identity.errors import AuthError, FailureKind
from server.identity.session_client import SessionClient, SessionRequestError

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024  # a session answer is a few ids; anything bigger is not one
_REFUSALS: dict[int, FailureKind] = {401: "unauthorized", 403: "forbidden"}
_MESSAGES: dict[str, str] = {
    "unauthorized": "the session is not valid",
    "forbidden": "the session may not connect",
    "unavailable": "the session service did not answer: retry",
}


@dataclass(frozen=True, slots=True)
class ForwardedHeaders:
    """The client's own credential headers, forwarded as they came. Kept in memory on the
    connection only (for re-checks): never logged, never a cache key, never in a repr."""

    cookie: str | None = field(default=None, repr=False)
    authorization: str | None = field(default=None, repr=False)

    @property
    def empty(self) -> bool:
        return not self.cookie and not self.authorization

    def as_dict(self) -> dict[str, str]:
        sent: dict[str, str] = {}
        if self.cookie:
            sent["Cookie"] = self.cookie
        if self.authorization:
            sent["Authorization"] = self.authorization
        return sent


@dataclass(frozen=True, slots=True)
class SessionAnswer:
    """A 200 from the session service: who the client is."""

    user_id: str
    role: str | None = None
    stores: tuple[str, ...] = ()


# What a lookup ends in: an answer, or the kind of refusal the client is told.
Outcome = SessionAnswer | FailureKind


class SessionVerifier:
    """Lookups against the session service: kept-alive connections, bounded, cached, coalesced."""

    def __init__(
        self,
        url: str,
        timeout: float,
        cache_seconds: float,
        max_entries: int,
        max_concurrency: int,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.max_entries = max_entries
        self.max_concurrency = max_concurrency
        self.requests = 0  # made to the service (for stats and tests)
        # Counted by the app's metrics once it wires them (server/app.py): each lookup's result
        # (ok, unauthorized, forbidden, unavailable), and each answer taken from the cache.
        self.on_lookup: Callable[[str], None] = lambda result: None
        self.on_cache_hit: Callable[[], None] = lambda: None
        self._unavailable = 0  # failed lookups since the last line logged about them
        self._unavailable_logged = -1.0
        # A per-process key: the hashes mean nothing outside this process, not even to someone
        # who can read its memory and guess cookies offline.
        self._salt = secrets.token_bytes(32)
        self._cache: dict[bytes, tuple[float, Outcome]] = {}  # key -> (expires, outcome), oldest first
        self._inflight: dict[bytes, asyncio.Task[Outcome]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._http: SessionClient | None = None

    async def start(self) -> None:
        if self._http is None:
            self._http = SessionClient(self.url, max_idle=self.max_concurrency)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrency)

    async def stop(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        if self._http is not None:
            self._http.close()
            self._http = None

    def key(self, headers: ForwardedHeaders) -> bytes:
        """The cache key of a credential: a keyed SHA-256 of the forwarded headers (cookies in any
        order are one credential: clients do not all list them alike)."""
        cookies = sorted(part.strip() for part in (headers.cookie or "").split(";") if part.strip())
        material = orjson.dumps([cookies, headers.authorization])
        return hmac.new(self._salt, material, hashlib.sha256).digest()

    async def lookup(self, headers: ForwardedHeaders) -> SessionAnswer:
        """Who the session says the client is (cached); AuthError when it refuses or is unavailable."""
        key = self.key(headers)
        outcome = self._cached(key)
        if outcome is None:
            outcome = await self.ask(headers, key)
        else:
            self.on_cache_hit()
        if isinstance(outcome, SessionAnswer):
            return outcome
        raise AuthError(outcome, _MESSAGES[outcome])

    async def ask(self, headers: ForwardedHeaders, key: bytes | None = None) -> Outcome:
        """Ask the service now (not the cache), sharing a request already under way for this credential."""
        key = self.key(headers) if key is None else key
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(headers, key))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        # Shielded: a client that goes away while waiting must not cancel the others' request.
        return await asyncio.shield(task)

    # --- the cache ----------------------------------------------------------------------------

    def _cached(self, key: bytes) -> Outcome | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._cache[key]
            return None
        return entry[1]

    def _remember(self, key: bytes, outcome: Outcome) -> None:
        if self.cache_seconds <= 0 or outcome == "unavailable":
            return  # a failure is never cached: the next client asks again
        cache = self._cache
        cache.pop(key, None)
        if len(cache) >= self.max_entries:
            now = time.monotonic()
            for stale in [k for k, (expires, _) in cache.items() if expires <= now]:
                del cache[stale]
            while len(cache) >= self.max_entries:
                del cache[next(iter(cache))]  # the oldest entry
        cache[key] = (time.monotonic() + self.cache_seconds, outcome)

    def cache_entries(self) -> list[tuple[bytes, Outcome]]:
        """What the cache holds (for tests: hashes and answers, never a credential)."""
        return [(key, outcome) for key, (_, outcome) in self._cache.items()]

    # --- one request ----------------------------------------------------------------------------

    async def _fetch(self, headers: ForwardedHeaders, key: bytes) -> Outcome:
        await self.start()
        assert self._http is not None and self._slots is not None
        reason: str
        try:
            # The timeout covers waiting for a free slot too: it is the client who waits.
            async with asyncio.timeout(self.timeout), self._slots:
                self.requests += 1
                status, body = await self._http.get(headers.as_dict(), MAX_ANSWER_BYTES)
        except TimeoutError:
            reason = f"no answer within {self.timeout:g} s"
        except SessionRequestError as exc:
            reason = f"request failed ({exc})"  # its messages never quote a header's value
        else:
            refusal = _REFUSALS.get(status)
            if refusal is not None:
                self._remember(key, refusal)
                self.on_lookup(refusal)
                return refusal
            parsed = _parse(body) if status == 200 else f"answered {status}"
            if isinstance(parsed, SessionAnswer):
                self._remember(key, parsed)
                self.on_lookup("ok")
                return parsed
            reason = parsed
        self._log_unavailable(reason)
        self.on_lookup("unavailable")
        return "unavailable"

    def _log_unavailable(self, reason: str) -> None:
        """One line a second at most: in an outage every reconnecting client fails a lookup."""
        self._unavailable += 1
        now = time.monotonic()
        if now - self._unavailable_logged >= 1.0:
            log.warning(
                "session service unavailable", extra={"reason": reason, "failures": self._unavailable}
            )
            self._unavailable, self._unavailable_logged = 0, now


def _parse(body: bytes) -> SessionAnswer | str:
    """A 200's body as an answer, or why it is unusable."""
    if len(body) > MAX_ANSWER_BYTES:
        return "answer too large"
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "answer is not JSON"
    if not isinstance(answer, dict):
        return "answer is not a JSON object"
    user_id, role, stores = answer.get("userId"), answer.get("role"), answer.get("stores")
    if not isinstance(user_id, str) or not valid_id(user_id):
        return "answer has no valid string userId"
    if role is not None and not isinstance(role, str):
        return "answer's role is not a string"
    if stores is None:
        stores = []
    if not isinstance(stores, list) or not all(valid_id(store) for store in stores):
        return "answer's stores is not a list of store ids"
    return SessionAnswer(user_id, role, tuple(dict.fromkeys(stores)))
