"""A lean, pipelined Redis connection for the backplane's hot path: publishing and tailing.

redis-py's asyncio client spends 80 to 180 µs of CPU on each command here (connection pool, retry
and observability hooks, and a task per write under ``socket_timeout``): with one command to
publish and one to read the event back, that was most of what a single POST cost. The same
command on an asyncio protocol, packed and parsed by hiredis (the parser redis-py uses), costs
about 25 µs. So the two hot commands go through this class; everything else uses redis-py.

Commands are written as soon as they are called and their replies matched in order
(pipelining), so concurrent publishers share the connection without waiting for each other.
Any failure or timeout closes the connection and fails every command in flight (a reply could
otherwise be matched to the wrong command); the next call connects again.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ResponseError

_MORE = object()  # hiredis: the reply is not complete yet


class ReplyLost(ConnectionError):
    """The command was sent but no reply came: Redis may or may not have run it."""


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        # Kept, not looked up per command: on Python 3.11 every asyncio.get_running_loop() (and
        # with it asyncio.timeout and current_task) makes a getpid system call.
        self.loop = asyncio.get_running_loop()
        self.parser = hiredis.Reader(replyError=ResponseError, notEnoughData=_MORE)
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        # Each waiting command's deadline (loop time). One timer per connection watches the
        # oldest, not one per command: a timer is three objects (~500 bytes while it waits, a
        # reconnect storm's thousands of commands in flight) and costs a schedule and a cancel.
        self.deadlines: collections.deque[float] = collections.deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        while (reply := self.parser.gets()) is not _MORE:
            if not self.waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(ConnectionError("unexpected reply from Redis"))
                return
            waiter = self.waiting.popleft()
            self.deadlines.popleft()
            if not waiter.done():
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError(f"Redis closed the connection ({exc or 'EOF'})"))

    def expect(self, waiter: asyncio.Future[Any], seconds: float) -> None:
        """``waiter`` gets the next reply, or a ``TimeoutError`` ``seconds`` from now."""
        deadline = self.loop.time() + seconds
        self.waiting.append(waiter)
        self.deadlines.append(deadline)
        if self._watchdog is None:
            self._watchdog = self.loop.call_at(deadline, self._watch)

    def _watch(self) -> None:
        # Replies come in order, so the oldest command is the one to time out first (a later one
        # with a shorter deadline, only a connection's set-up, waits for it: never sooner).
        self._watchdog = None
        if not self.deadlines:
            return
        if self.deadlines[0] <= self.loop.time():
            _expire(self.waiting[0])  # its caller fails the connection, and every command on it
        else:
            self._watchdog = self.loop.call_at(self.deadlines[0], self._watch)

    def fail(self, error: Exception) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.deadlines.clear()
        if self.transport is not None:
            self.transport.abort()
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class RespConnection:
    """One connection to the Redis at ``url``; ``call`` sends a command and returns its reply."""

    def __init__(self, url: str, *, tls_verify: bool, timeout: float, connect_timeout: float = 2.0) -> None:
        self.options: dict[str, Any] = dict(parse_url(url))
        self.tls: ssl.SSLContext | None = None
        if url.startswith("rediss://"):
            self.tls = ssl.create_default_context(cafile=self.options.get("ssl_ca_certs"))
            if not tls_verify or self.options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                self.tls.check_hostname = False
                self.tls.verify_mode = ssl.CERT_NONE
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()

    async def call(self, *args: str | bytes | int | float) -> Any:
        """Send one command; its reply, or ``ResponseError``, ``ReplyLost`` or another ``OSError``."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        return await self._send(protocol, args, self.timeout)

    @staticmethod
    async def _send(protocol: _Protocol, args: tuple[str | bytes | int | float, ...], seconds: float) -> Any:
        waiter = protocol.loop.create_future()
        protocol.expect(waiter, seconds)
        assert protocol.transport is not None
        # hiredis's stub types ``args`` as a 1-tuple; it packs any length.
        protocol.transport.write(hiredis.pack_command(args))  # type: ignore[arg-type]
        try:
            reply = await waiter
        except BaseException as exc:
            # A later reply would be taken for the next command's: this connection is done.
            protocol.fail(ConnectionError(f"an earlier command on this connection ended: {exc!r}"))
            if isinstance(exc, ConnectionError | TimeoutError):
                raise ReplyLost(f"no reply from Redis ({exc})") from exc
            raise
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def _connect(self) -> _Protocol:
        async with self._connecting:  # concurrent callers share one new connection
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol
            loop = asyncio.get_running_loop()
            options = self.options
            async with asyncio.timeout(self.connect_timeout):
                if "path" in options:
                    _, protocol = await loop.create_unix_connection(_Protocol, options["path"])
                else:
                    _, protocol = await loop.create_connection(
                        _Protocol,
                        options.get("host", "localhost"),
                        options.get("port", 6379),
                        ssl=self.tls,
                    )
            try:
                if options.get("password"):
                    username = options.get("username")
                    auth = (username, options["password"]) if username else (options["password"],)
                    await self._send(protocol, ("AUTH", *auth), self.connect_timeout)
                if options.get("db"):
                    await self._send(protocol, ("SELECT", options["db"]), self.connect_timeout)
            except BaseException as exc:
                protocol.fail(ConnectionError("Redis refused the connection's set-up"))
                if isinstance(exc, ReplyLost):  # nothing of the caller's was sent yet
                    raise ConnectionError(f"Redis did not answer the connection's set-up ({exc})") from exc
                raise
            self._protocol = protocol
            return protocol

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.fail(ConnectionError("connection closed"))
            self._protocol = None
