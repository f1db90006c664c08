"""The protocol every accepted socket starts with: ``POST /api/v1/events`` answered here, on the
bytes, and every other request given to aiohttp.

A single-event POST cost about 140 µs of CPU through aiohttp (its request, handler task,
response and writer objects: over two thirds of it), against Node's ~40 µs (issue 18). Services
post one event per state change, over keep-alive connections, so that route is answered here:
the request is recognised on the bytes, the same ``AdminApi`` checks run (key, rate limit, media
type, JSON, schemas, idempotency, publish) and the answer is written in one call.

Only a strict, plain form of the request is taken: the exact request line
``POST /api/v1/events HTTP/1.1``, at most 128 well-formed header lines (aiohttp's limits), one
``Host``, one ``Content-Length`` no larger than ``admin.max_body_bytes``, and no
``Transfer-Encoding``, ``Expect`` or ``Upgrade``. Anything else (another route, a query string,
chunked bodies, odd or duplicated framing headers, a body over the limit) goes to aiohttp with
every byte received so far: the socket is handed to aiohttp's own protocol, as if it had had it
from the start, and stays with it. So aiohttp's parser decides every case this one does not
want to, and its answers (400, 413, 404, 405...) stay what they were. Requests on one
connection are answered in order, one at a time.

While a socket is here, this module enforces what aiohttp would: ``http_idle_timeout_seconds``
without a whole request head closes it (slowloris), and at shutdown idle connections are closed
and busy ones are closed once answered.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

if TYPE_CHECKING:
    from server.admin_api import AdminApi

log = logging.getLogger(__name__)

REQUEST_LINE = b"POST /api/v1/events HTTP/1.1\r\n"
MAX_HEAD_BYTES = 8190  # aiohttp's own limit for a request line and for a header line
MAX_HEADERS = 128  # aiohttp's RequestHandler's
# Header lines as RFC 9110 defines them: a token, a colon, a value of visible characters, spaces
# and tabs. Control characters, bare CR or LF, obs-fold continuation lines: aiohttp decides.
HEADER_LINES = re.compile(rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
# Headers that change how the request is framed or answered: present, the request is aiohttp's.
NOT_OURS = frozenset((b"transfer-encoding", b"expect", b"upgrade"))
READ = frozenset(
    (b"host", b"content-length", b"content-type", b"authorization", b"idempotency-key", b"connection")
)
REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


class NotOurs(Exception):
    """The request is one for aiohttp."""


class FrontDoorServer:
    """What the listening socket makes a protocol with (aiohttp's ``Server``, wrapped): a
    ``FrontDoor`` per connection, which gives the connection to ``inner`` unless it stays a
    publishing connection."""

    def __init__(self, inner: web.Server, admin: AdminApi, idle_timeout: float) -> None:
        self.inner = inner
        self.admin = admin
        self.idle_timeout = idle_timeout
        self.max_body = admin.settings.admin.max_body_bytes
        self.connections: set[FrontDoor] = set()
        self.answering: set[asyncio.Task[None]] = set()  # requests being answered
        self.closing = False
        self._date = (0, b"")

    def __call__(self) -> FrontDoor:
        return FrontDoor(self)

    def __getattr__(self, name: str) -> Any:
        # Everything else a runner or site asks of its server (connections, requests_count...).
        return getattr(self.inner, name)

    def pre_shutdown(self) -> None:
        self.closing = True
        for connection in list(self.connections):
            connection.close_when_idle()
        self.inner.pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (aiohttp's signature)
        if self.answering:
            await asyncio.wait(self.answering, timeout=timeout)
        for connection in list(self.connections):
            connection.abort()
        await self.inner.shutdown(timeout)

    def date(self) -> bytes:
        """The ``Date`` header's value, formatted once a second (as aiohttp does)."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]


def install(app: web.Application, admin: AdminApi, idle_timeout: float) -> None:
    """Put the front door in front of ``app``, for ``run_app`` and for test servers alike."""
    make_handler = app._make_handler  # SEAM: aiohttp.Application._make_handler

    def make_front_door(**kwargs: Any) -> Any:
        return FrontDoorServer(make_handler(**kwargs), admin, idle_timeout)

    app._make_handler = make_front_door  # type: ignore[method-assign]


class FrontDoor(asyncio.Protocol):
    __slots__ = (
        "_answered_at",
        "_buffer",
        "_busy",
        "_close_after",
        "_paused_reading",
        "_paused_writing",
        "_server",
        "_timer",
        "_transport",
    )

    def __init__(self, server: FrontDoorServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._busy = False  # a request is being answered
        self._close_after = False
        self._paused_reading = False
        self._paused_writing = False
        self._timer: asyncio.TimerHandle | None = None
        self._answered_at = 0.0  # loop time of the connection or its last answer: idle from there

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._server.connections.add(self)
        loop = asyncio.get_running_loop()
        self._answered_at = loop.time()
        self._timer = loop.call_at(self._answered_at + self._server.idle_timeout, self._idle)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        if not self._buffer and not self._busy and not REQUEST_LINE.startswith(data[: len(REQUEST_LINE)]):
            self._buffer = data  # the usual case for a client: straight to aiohttp
            self._hand_over()
            return
        self._buffer += data
        if self._busy:
            if len(self._buffer) > self._server.max_body + MAX_HEAD_BYTES and not self._paused_reading:
                self._paused_reading = True
                self._transport.pause_reading()
            return
        self._next()

    def eof_received(self) -> bool:
        return False  # the socket is closed (an answer being made is still counted, not written)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if not self._busy:
            self._next()

    # --- requests --------------------------------------------------------------------------

    def _next(self) -> None:
        """Answer the next whole request in the buffer, or hand the connection over."""
        if self._transport is None or self._busy or self._paused_writing:
            return
        if self._close_after or self._server.closing:
            self._transport.close()  # after the answer is written; nothing more is read
            return
        buffer = self._buffer
        if not buffer:
            return
        try:
            request = self._parse(buffer)
        except NotOurs:
            self._hand_over()
            return
        if request is None:
            return  # not whole yet
        end, authorization, content_type, key, body, close = request
        self._buffer = buffer[end:]
        self._busy = True
        self._close_after = close
        task = asyncio.get_running_loop().create_task(self._answer(authorization, content_type, key, body))
        answering = self._server.answering
        answering.add(task)
        task.add_done_callback(answering.discard)

    def _parse(self, buffer: bytes) -> tuple[int, str, str, str | None, bytes, bool] | None:
        """The request at the start of ``buffer``: (its end, Authorization, Content-Type,
        Idempotency-Key, body, Connection: close); ``None`` while it is not whole; ``NotOurs``."""
        if not buffer.startswith(REQUEST_LINE):
            if REQUEST_LINE.startswith(buffer):
                return None
            raise NotOurs
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise NotOurs
            return None
        start = len(REQUEST_LINE)
        if head_end + 2 > start and HEADER_LINES.fullmatch(buffer, start, head_end + 2) is None:
            raise NotOurs
        lines = buffer[start:head_end].split(b"\r\n") if head_end > start else []
        if len(lines) > MAX_HEADERS:
            raise NotOurs
        fields: dict[bytes, bytes] = {}
        for line in lines:
            name, _, value = line.partition(b":")
            name = name.lower()
            if name in READ:
                if name in fields:
                    raise NotOurs  # twice: aiohttp decides which counts, or refuses
                fields[name] = value.strip(b" \t")
            elif name in NOT_OURS:
                raise NotOurs
        if b"host" not in fields:
            raise NotOurs  # HTTP/1.1 requires it: aiohttp answers 400
        length = fields.get(b"content-length")
        if length is None or not length.isdigit() or len(length) > 10 or int(length) > self._server.max_body:
            raise NotOurs  # no length, a bad one, or over the limit (aiohttp answers 413)
        connection = fields.get(b"connection", b"keep-alive").lower()
        if connection not in (b"keep-alive", b"close"):
            raise NotOurs
        body_start = head_end + 4
        end = body_start + int(length)
        if len(buffer) < end:
            return None
        key = fields.get(b"idempotency-key")
        return (
            end,
            fields.get(b"authorization", b"").decode("utf-8", "surrogateescape"),
            fields.get(b"content-type", b"").decode("utf-8", "surrogateescape"),
            None if key is None else key.decode("utf-8", "surrogateescape"),
            buffer[body_start:end],
            connection == b"close",
        )

    async def _answer(self, authorization: str, content_type: str, key: str | None, body: bytes) -> None:
        try:
            status, headers, answer = await self._server.admin.post_events_bytes(
                authorization, content_type, key, body
            )
        except Exception:
            log.exception("POST /api/v1/events failed")
            status, headers, answer = 500, {}, b'{"error":"internal","message":"internal error","details":{}}'
            self._close_after = True
        transport = self._transport
        if transport is not None:
            head = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b""))]
            for name, value in headers.items():
                head.append(f"{name}: {value}\r\n".encode())
            head.append(
                b"Content-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\nServer: %s\r\n%s\r\n"
                % (
                    len(answer),
                    self._server.date(),
                    SERVER_SOFTWARE.encode(),
                    b"Connection: close\r\n" if self._close_after else b"",
                )
            )
            head.append(answer)
            transport.write(b"".join(head))
        self._busy = False
        self._answered_at = asyncio.get_running_loop().time()
        if self._paused_reading and transport is not None:
            self._paused_reading = False
            transport.resume_reading()
        self._next()

    # --- the connection --------------------------------------------------------------------

    def _hand_over(self) -> None:
        """Give the socket, and what it has sent so far, to aiohttp's protocol for good."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self.connection_lost(None)
        if self._paused_reading:
            transport.resume_reading()
        protocol = self._server.inner()  # SEAM: aiohttp.Server.__call__
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        buffer, self._buffer = self._buffer, b""
        if buffer:
            protocol.data_received(buffer)

    def _idle(self) -> None:
        """No request head for ``http_idle_timeout_seconds`` (from the connection's start or its
        last answer): closed, as aiohttp closes it. A whole head whose body is still coming goes
        to aiohttp, which reads bodies without a deadline. One timer per connection, moved on
        here rather than at every request."""
        self._timer = None
        if self._transport is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = (now if self._busy else self._answered_at) + self._server.idle_timeout
        if due > now:
            self._timer = loop.call_at(due, self._idle)
        elif b"\r\n\r\n" in self._buffer:
            self._hand_over()
        else:
            self._transport.close()

    def close_when_idle(self) -> None:
        self._close_after = True
        if not self._busy and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
