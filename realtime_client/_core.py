"""What the sync and async publishers share: the request body, the retry policy, the answer's meaning.

Nothing here does I/O, so both publishers read the same rules from one place.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from realtime_client.errors import (
    PublishError,
    RateLimited,
    RequestRejected,
    Unauthorized,
    Unavailable,
    UnexpectedResponse,
    ValidationFailed,
)

EVENTS_PATH = "/api/v1/events"
USER_AGENT = "realtime-client/1"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_BATCH = 1000  # the server's default ``admin.max_batch``


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Event:
    """One event to publish. Its idempotency key is fixed when it is made, so publishing the same
    ``Event`` again (after an ``Unavailable``, say) is never delivered twice."""

    type: str
    data: Mapping[str, Any]
    to: Mapping[str, Any] | None = (
        None  # {"users": [...], "stores": [...], "staff": [...], "roles": [...], "global": bool}
    )
    version: int | None = None
    idempotency_key: str = field(default_factory=new_idempotency_key)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "data": dict(self.data)}
        if self.to is not None:
            body["to"] = dict(self.to)
        if self.version is not None:
            body["version"] = self.version
        body["idempotencyKey"] = self.idempotency_key
        return body


def as_event(item: Event | Mapping[str, Any]) -> Event:
    """An ``Event``, or a dict in the API's own shape (``idempotencyKey`` kept when given)."""
    if isinstance(item, Event):
        return item
    if not isinstance(item, Mapping) or "type" not in item or "data" not in item:
        raise TypeError("each event must be an Event or a dict with 'type' and 'data'")
    key = item.get("idempotencyKey") or new_idempotency_key()
    return Event(item["type"], item["data"], item.get("to"), item.get("version"), key)


def batches(events: Iterable[Event | Mapping[str, Any]], size: int = MAX_BATCH) -> list[list[Event]]:
    """Requests of at most ``size`` events (each request is all or nothing on the server)."""
    items = [as_event(item) for item in events]
    if not items:
        raise ValueError("publish_many needs at least one event")
    return [items[start : start + size] for start in range(0, len(items), size)]


def encode(events: Sequence[Event]) -> bytes:
    payload: Any = events[0].body() if len(events) == 1 else {"events": [e.body() for e in events]}
    return json.dumps(payload, separators=(",", ":")).encode()


@dataclass(frozen=True)
class PublishResult:
    """The server's 202: each event's id in order (``None`` where it was dropped as stale)."""

    ids: list[str | None]
    accepted: int
    stale: list[int] = field(default_factory=list)

    def __add__(self, other: PublishResult) -> PublishResult:
        offset = len(self.ids)
        return PublishResult(
            self.ids + other.ids,
            self.accepted + other.accepted,
            self.stale + [offset + i for i in other.stale],
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; the server's ``Retry-After`` is a floor.

    ``attempts`` counts the first try. Delays are ``uniform(0, min(cap, base * 2**n))`` seconds,
    or ``Retry-After`` plus up to ``base`` of jitter (at most ``max_retry_after``) when given.
    """

    attempts: int = 5
    base: float = 0.25
    cap: float = 8.0
    max_retry_after: float = 30.0
    # Called before each retry with the failure and the delay about to be waited (e.g. to log it).
    on_retry: Callable[[Unavailable, float], None] | None = None

    def delay(self, retry: int, failure: Unavailable) -> float:
        """Seconds to wait before retry number ``retry`` (0 first) after ``failure``."""
        if failure.retry_after is not None:
            seconds = min(self.max_retry_after, failure.retry_after) + random.uniform(0, self.base)
        else:
            seconds = random.uniform(0, min(self.cap, self.base * 2**retry))
        if self.on_retry is not None:
            self.on_retry(failure, seconds)
        return seconds


class Retry(Exception):
    """This attempt failed in a way a retry with the same keys may fix."""

    def __init__(self, error: Unavailable) -> None:
        super().__init__(error.message)
        self.error = error


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare from this server; fall back to backoff
    return seconds if seconds >= 0 else None


def interpret(status: int, retry_after: str | None, raw: bytes) -> PublishResult:
    """The answer → a result, an error to raise, or ``Retry``."""
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if status == 202 and isinstance(body, dict) and isinstance(body.get("ids"), list):
        return PublishResult(list(body["ids"]), int(body.get("accepted", 0)), list(body.get("stale", [])))
    error = body if isinstance(body, dict) else {}
    code = str(error.get("error", ""))
    message = str(error.get("message") or f"HTTP {status}")
    details = error.get("details") if isinstance(error.get("details"), dict) else None
    kwargs: dict[str, Any] = {"status": status, "code": code, "details": details}
    if status in RETRY_STATUSES:
        kind = RateLimited if status == 429 else Unavailable
        raise Retry(kind(message, retry_after=parse_retry_after(retry_after), **kwargs))
    kinds: dict[int, type[PublishError]] = {401: Unauthorized, 422: ValidationFailed}
    if status in kinds:
        raise kinds[status](message, **kwargs)
    if 400 <= status < 500:
        raise RequestRejected(message, **kwargs)
    raise UnexpectedResponse(f"unexpected answer {status}: {message}", **kwargs)


def events_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https://: {url!r}")
    return url.rstrip("/") + EVENTS_PATH


def headers(key: str | None) -> dict[str, str]:
    sent = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if key:
        sent["Authorization"] = f"Bearer {key}"
    return sent
