"""``AsyncPublisher``: the same as ``Publisher`` for asyncio services (aiohttp's pooled session)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import aiohttp

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


class AsyncPublisher:
    """``async with AsyncPublisher(url, key) as publisher: await publisher.publish(...)``.

    The session (a pool of up to ``pool_size`` keep-alive connections) is opened on first use,
    inside the running loop, and closed by ``close()`` or the ``async with``.
    """

    def __init__(
        self,
        url: str,
        key: str | None,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        pool_size: int = 8,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.url = events_url(url)
        self.retry = retry or RetryPolicy()
        self.max_batch = max_batch
        self._headers = headers(key)
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    async def publish(
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
        return (await self.publish_many([event])).ids[0]

    async def publish_many(self, events: Iterable[Event | Mapping[str, Any]]) -> PublishResult:
        result: PublishResult | None = None
        for batch in batches(events, self.max_batch):
            done = await self._send(encode(batch))
            result = done if result is None else result + done
        assert result is not None
        return result

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size), timeout=self._timeout
            )
        return self._session

    async def _send(self, body: bytes) -> PublishResult:
        session = self._open()
        last: Unavailable | None = None
        for attempt in range(self.retry.attempts):
            if last is not None:
                await asyncio.sleep(self.retry.delay(attempt - 1, last))
            try:
                async with session.post(self.url, data=body, headers=self._headers) as resp:
                    raw = await resp.read()
                    status, retry_after = resp.status, resp.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = Unavailable(f"no answer from {self.url}: {exc or type(exc).__name__}")
                continue
            try:
                return interpret(status, retry_after, raw)
            except Retry as retry:
                last = retry.error
        assert last is not None
        raise last

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
