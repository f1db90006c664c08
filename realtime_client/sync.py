"""``Publisher``: a blocking publisher for services without an event loop (urllib3's pool)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import urllib3

from realtime_client._core import (
    MAX_BATCH,
    Event,
    PublishResult,
    Retry,
    RetryPolicy,
    batches,
    encode,
    events_url,
    headers,
    interpret,
)
from realtime_client.errors import Unavailable


class Publisher:
    """Publishes events to ``url`` (the server's base, e.g. ``https://rt.example.com``) with ``key``.

    One pooled connection per thread that uses it (up to ``pool_size``); thread-safe. Each
    request is retried on 503/502/504/429, connection errors and timeouts, as ``retry`` says.
    """

    def __init__(
        self,
        url: str,
        key: str | None,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        pool_size: int = 4,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.url = events_url(url)
        self.retry = retry or RetryPolicy()
        self.max_batch = max_batch
        self._headers = headers(key)
        self._pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=pool_size,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=False,  # our own policy below: it knows which answers are safe to retry
        )

    def publish(
        self,
        type: str,
        data: Mapping[str, Any],
        to: Mapping[str, Any] | None = None,
        version: int | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str | None:
        """Publish one event; its id (``None`` if the server dropped it as stale)."""
        event = Event(type, data, to, version, *([idempotency_key] if idempotency_key else []))
        return self.publish_many([event]).ids[0]

    def publish_many(self, events: Iterable[Event | Mapping[str, Any]]) -> PublishResult:
        """Publish events in order, ``max_batch`` per request (each request is all or nothing)."""
        result: PublishResult | None = None
        for batch in batches(events, self.max_batch):
            done = self._send(encode(batch))
            result = done if result is None else result + done
        assert result is not None
        return result

    def _send(self, body: bytes) -> PublishResult:
        last: Unavailable | None = None
        for attempt in range(self.retry.attempts):
            if last is not None:
                time.sleep(self.retry.delay(attempt - 1, last))
            try:
                resp = self._pool.request(
                    "POST", self.url, body=body, headers=self._headers, preload_content=True
                )
            except urllib3.exceptions.HTTPError as exc:  # connection refused/reset, timeouts
                last = Unavailable(f"no answer from {self.url}: {_reason(exc)}")
                continue
            try:
                return interpret(resp.status, resp.headers.get("Retry-After"), resp.data)
            except Retry as retry:
                last = retry.error
        assert last is not None
        raise last

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc) or type(exc).__name__
