"""Typed errors: what a caller can do about a failed publish depends only on its class."""

from __future__ import annotations

from typing import Any


class PublishError(Exception):
    """The events were not published. ``status`` is the HTTP status (0: no answer at all)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details: dict[str, Any] = details or {}


class ValidationFailed(PublishError):
    """422: the server refused the events as they are; ``details`` says which event and field.

    For example ``{"events": [{"index": 0, "fields": {"data.storeId": ["Missing data..."]}}]}``.
    Retrying the same events cannot succeed.
    """


class Unauthorized(PublishError):
    """401: the API key is missing or wrong."""


class RequestRejected(PublishError):
    """Another 4xx (400 malformed, 413 too large, 415, 404...): a bug in the request, not a hiccup."""


class Unavailable(PublishError):
    """503, 502 or 504, a connection error or a timeout, still so after every retry.

    Because each event carries an idempotency key, calling again with the same events (the same
    ``Event`` objects, or the same ``idempotency_key``) can never deliver one twice.
    ``retry_after`` is the server's last ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class RateLimited(Unavailable):
    """429, still so after every retry: the key exceeds its request rate."""


class UnexpectedResponse(PublishError):
    """The server answered something this client does not understand (a 500, not JSON...)."""
