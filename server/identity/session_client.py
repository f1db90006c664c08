"""A lean HTTP/1.1 client for the session service: one kind of request, kept-alive connections.

In a reconnect storm with a session cookie each, every connect asks the session service once,
and aiohttp's client spent more CPU on that request than the rest of the connect (its request
and response objects, connector and timers). This one writes ``GET`` with the client's own
credential headers on a kept-alive connection and parses the answer with httptools (llhttp, the
parser Node.js uses). It is no general client: no redirects, no compression (it asks for none),
no cookies kept, no proxies.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import httptools

_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")


class SessionRequestError(ConnectionError):
    """The request failed or its answer was not HTTP: the session service is unavailable."""


class _Connection(asyncio.Protocol):
    """One connection; one request at a time. ``answer`` is set while a request waits."""

    def __init__(self) -> None:
        # Kept, not looked up per request: on Python 3.11 each get_running_loop() is a getpid call.
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.body = bytearray()
        self.limit = 0
        self.status = 0
        self.received = False  # any byte of the current answer
        self.headers_done = False
        self.framed = False  # the answer says where it ends (length or chunks), not at close
        self.closed = False
        self.reusable = False

    # --- asyncio -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.answer is None:  # nothing was asked: the connection is out of step
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(SessionRequestError("the answer is not HTTP"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is not None and self.headers_done and not self.framed:
            self._finish(keep=False)  # an answer that ends when the connection does
        self._fail(SessionRequestError("the connection closed before the answer"))

    # --- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.answer is None:
            return
        self.body += body
        if len(self.body) > self.limit:  # too large to be an answer: stop here
            self._finish(keep=False)

    def on_message_complete(self) -> None:
        if self.answer is None:
            return
        if 100 <= self.status < 200:  # an interim answer: the real one follows
            self.headers_done, self.framed = False, False
            self.body.clear()
            return
        self._finish(keep=self.parser.should_keep_alive())

    # --- requests -----------------------------------------------------------------------------

    def send(self, request: bytes, limit: int) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        answer: asyncio.Future[tuple[int, bytes]] = self.loop.create_future()
        self.answer, self.limit, self.status = answer, limit, 0
        self.body.clear()
        self.received = self.headers_done = self.framed = self.reusable = False
        self.transport.write(request)
        return answer

    def _finish(self, keep: bool) -> None:
        answer, self.answer = self.answer, None
        self.reusable = keep and not self.closed
        if answer is not None and not answer.done():
            answer.set_result((self.status, bytes(self.body[: self.limit + 1])))
        if not self.reusable:
            self.close()

    def _fail(self, error: Exception) -> None:
        answer, self.answer = self.answer, None
        if answer is not None and not answer.done():
            answer.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class SessionClient:
    """``GET url`` with given headers; kept-alive connections, at most ``max_idle`` kept idle."""

    def __init__(self, url: str, max_idle: int) -> None:
        parts = urlsplit(url)  # checked at start (``config._check_http_url``): http(s), a host, no user
        assert parts.hostname is not None
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # Accept-Encoding: identity: an answer is read as it comes, never decompressed.
        self._head = (
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: application/json\r\n"
            "Accept-Encoding: identity\r\nUser-Agent: realtime-server\r\n"
        ).encode()
        self.max_idle = max_idle
        self._idle: list[_Connection] = []

    async def get(self, headers: dict[str, str], limit: int) -> tuple[int, bytes]:
        """The status and body (at most ``limit`` + 1 bytes of it) of ``GET`` with ``headers``."""
        lines = [self._head]
        for name, value in headers.items():
            if any(c in value for c in _FORBIDDEN_IN_HEADERS):
                raise SessionRequestError(f"the {name} header cannot be forwarded")
            lines.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
        lines.append(b"\r\n")
        request = b"".join(lines)
        while self._idle:
            connection = self._idle.pop()
            if connection.closed:
                continue
            try:
                return await self._exchange(connection, request, limit)
            except SessionRequestError:
                # A kept-alive connection the service closed as it was reused: a GET that got no
                # byte back is asked again, on the next idle connection or a new one.
                if connection.received:
                    raise
        return await self._exchange(await self._connect(), request, limit)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(_Connection, self.host, self.port, ssl=self.tls)
        except (OSError, ssl.SSLError) as exc:
            raise SessionRequestError(f"could not connect ({type(exc).__name__})") from exc
        return connection

    async def _exchange(self, connection: _Connection, request: bytes, limit: int) -> tuple[int, bytes]:
        try:
            answer = await connection.send(request, limit)
        except BaseException:
            connection.close()  # timed out or failed mid-answer: never reused
            raise
        if connection.reusable:
            if len(self._idle) < self.max_idle:
                self._idle.append(connection)
            else:
                connection.close()
        return answer

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
