"""A publisher client for services: ``Publisher`` (blocking) and ``AsyncPublisher`` (asyncio).

Standalone: it needs ``urllib3`` (sync) or ``aiohttp`` (async), never the server's code.

    from realtime_client import Publisher
    with Publisher("https://rt.example.com", key) as publisher:
        event_id = publisher.publish("store_updated", {"storeId": "s1", "store": {}})
"""

from realtime_client._core import Event, PublishResult, RetryPolicy
from realtime_client.aio import AsyncPublisher
from realtime_client.errors import (
    PublishError,
    RateLimited,
    RequestRejected,
    Unauthorized,
    Unavailable,
    UnexpectedResponse,
    ValidationFailed,
)
from realtime_client.sync import Publisher

__all__ = [
    "AsyncPublisher",
    "Event",
    "PublishError",
    "PublishResult",
    "Publisher",
    "RateLimited",
    "RequestRejected",
    "RetryPolicy",
    "Unauthorized",
    "Unavailable",
    "UnexpectedResponse",
    "ValidationFailed",
]
