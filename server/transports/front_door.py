"""The protocol every accepted socket starts with: ``POST /api/v1/events``, the plain
WebSocket upgrade (``GET /api/ws``) and a new Engine.IO session's WebSocket upgrade
(``GET /socket.io/?EIO=4&transport=websocket``) are taken here, on the bytes; every other request
goes to aiohttp.

Through aiohttp a single-event POST cost about 140 µs of CPU (its request, handler task, response
and writer objects: over two thirds of it), against Node's ~40 µs, and its request handling was a
third of a plain WebSocket connect (issue 18). Services post one event per state change over
keep-alive connections, and every client of a restarted process reconnects at once: those two
requests are recognised here, run the same code as behind aiohttp (``AdminApi.post_events_bytes``,
``WebSocketEndpoint.upgrade``, python-engineio's request handling on an environ made here:
``RealtimeEngine.handle_environ``), and are answered in one write. A Socket.IO client on WebSocket
then costs no aiohttp request either (its peak memory in a reconnect storm was most of the RSS
that stayed after churn).

Only a strict, plain form of each request is taken: the exact request line
(``POST /api/v1/events HTTP/1.1``, or ``GET /api/ws`` with an optional query and ``HTTP/1.1``),
at most 128 well-formed header lines (aiohttp's limits), one ``Host``, no header that changes
the framing (``Transfer-Encoding``, ``Expect``, ``Upgrade`` on the POST, a body on the upgrade),
none of the headers read twice, a POST body no larger than ``admin.max_body_bytes``, and an
upgrade that ``handshake`` accepts. Anything else (another route, chunked bodies, odd or
duplicated headers, a body over the limit, a bad handshake, a session cookie to look up) goes to
aiohttp with every byte received so far: the socket is handed to aiohttp's own protocol, as if
it had had it from the start, and stays with it. So aiohttp's parser decides every case this
one does not want to, and its answers (400, 413, 404, 405...) stay what they were. Requests on
one connection are answered in order, one at a time.

While a socket is here, this module enforces what aiohttp would: ``http_idle_timeout_seconds``
without a whole request head closes it (slowloris), and at shutdown idle connections are closed
and busy ones are closed once answered. (aiohttp also turns on TCP keep-alive probes; sockets
kept here do without: the idle timeout and the WebSocket heartbeat find dead peers sooner.)
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NamedTuple, cast
from urllib.parse import parse_qs

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, MultiDictProxy
from yarl import URL

from server.transports.websocket import DOOR_UPGRADE, TakenOver, handshake

if TYPE_CHECKING:
    from server.api.admin import AdminApi
    from server.transports.plain_ws import WebSocketEndpoint
    from server.transports.socketio import RealtimeEngine

log = logging.getLogger(__name__)

POST_LINE = b"POST /api/v1/events HTTP/1.1\r\n"
UPGRADE_STARTS = (b"GET /api/ws?", b"GET /api/ws ")
UPGRADE_LINE = re.compile(rb"GET /api/ws(?:\?([!-~]*))? HTTP/1\.1\r\n")
# A new Engine.IO session on WebSocket (no sid: an upgrade from polling is aiohttp's).
ENGINE_START = b"GET /socket.io/?"
ENGINE_LINE = re.compile(rb"GET /socket\.io/\?([!-~]*) HTTP/1\.1\r\n")
STARTS = (POST_LINE, *UPGRADE_STARTS, ENGINE_START)
MAX_HEAD_BYTES = 8190  # aiohttp's own limit for a request line and for a header line
MAX_HEADERS = 128  # aiohttp's RequestHandler's
# Header lines as RFC 9110 defines them: a token, a colon, a value of visible characters, spaces
# and tabs. Control characters, bare CR or LF, obs-fold continuation lines: aiohttp decides.
HEADER_LINES = re.compile(rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
# Per route: the headers read (each at most once), and those that make a request aiohttp's.
POST_READS = frozenset(
    (b"host", b"content-length", b"content-type", b"authorization", b"idempotency-key", b"connection")
)
POST_REFUSED = frozenset((b"transfer-encoding", b"expect", b"upgrade"))
UPGRADE_READS = frozenset(
    (
        b"host",
        b"upgrade",
        b"connection",
        b"sec-websocket-version",
        b"sec-websocket-key",
        b"sec-websocket-extensions",
        b"origin",
        b"authorization",
        b"cookie",
    )
)
UPGRADE_REFUSED = frozenset((b"transfer-encoding", b"content-length", b"expect"))
REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
NO_QUERY: MultiDictProxy[str] = MultiDictProxy(CIMultiDict())  # an Engine.IO upgrade's is in its environ


class NotOurs(Exception):
    """The request is one for aiohttp."""


class FrontDoorServer:
    """What the listening socket makes a protocol with (aiohttp's ``Server``, wrapped): a
    ``FrontDoor`` per connection, which gives the connection to ``inner`` unless it is a
    publishing connection or a WebSocket upgrade it takes."""

    def __init__(
        self,
        inner: web.Server,
        admin: AdminApi,
        websocket: WebSocketEndpoint,
        engine: RealtimeEngine,
        idle_timeout: float,
        cookie_auth: bool,
    ) -> None:
        self.inner = inner
        self.admin = admin
        self.websocket = websocket
        self.engine = engine
        self.idle_timeout = idle_timeout
        self.cookie_auth = cookie_auth  # a Cookie on an upgrade may need a session lookup: aiohttp's
        self.max_body = admin.settings.admin.max_body_bytes
        self.connections: set[FrontDoor] = set()
        self.answering: set[asyncio.Task[None]] = set()  # requests being answered
        self.closing = False
        self._date = (0, b"")
        self._sweeper: asyncio.Task[None] | None = None

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
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.inner.shutdown(timeout)

    def watch(self, connection: FrontDoor) -> None:
        self.connections.add(connection)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Close the connections idle for ``idle_timeout``, give or take a step: one task for all
        of them, not a timer each (a timer is three objects, ~400 bytes, per connection in a
        reconnect storm, and their peak stays in the process's RSS)."""
        loop = asyncio.get_running_loop()
        step = min(1.0, self.idle_timeout / 4)
        try:
            while self.connections:
                await asyncio.sleep(step)
                now = loop.time()
                for connection in list(self.connections):
                    connection.check_idle(now)
        finally:
            self._sweeper = None

    def date(self) -> bytes:
        """The ``Date`` header's value, formatted once a second (as aiohttp does)."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]


def install(app: web.Application, front_door: Callable[[web.Server], FrontDoorServer]) -> None:
    """Put ``front_door(aiohttp's server)`` in front of ``app``, for ``run_app`` and for test
    servers alike."""
    make_handler = app._make_handler  # SEAM: aiohttp.Application._make_handler

    def make_front_door(**kwargs: Any) -> Any:
        return front_door(make_handler(**kwargs))

    app._make_handler = make_front_door  # type: ignore[method-assign]


class DoorUpgrade:
    """An upgrade read by the front door: what ``take_over`` and ``WebSocketEndpoint.upgrade`` ask of it."""

    __slots__ = ("_door", "headers", "host", "query")

    def __init__(
        self, door: FrontDoor, headers: CIMultiDict[str], query: MultiDictProxy[str], host: str
    ) -> None:
        self._door = door
        self.headers = headers
        self.query = query
        self.host = host

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._door._transport

    def cookie(self, name: str) -> None:
        return None  # with cookie authentication on, an upgrade with a Cookie is aiohttp's

    def release(self) -> bytes:
        return self._door.detach()


class PostHead(NamedTuple):
    """A POST whose head is read; its body may still be coming."""

    body_start: int
    end: int
    authorization: str
    content_type: str
    idempotency_key: str | None
    close: bool


class FrontDoor(asyncio.Protocol):
    __slots__ = (
        "_answered_at",
        "_buffer",
        "_busy",
        "_close_after",
        "_loop",
        "_paused_reading",
        "_paused_writing",
        "_post_head",
        "_server",
        "_transport",
    )

    def __init__(self, server: FrontDoorServer) -> None:
        self._server = server
        # Kept: on Python 3.11 every asyncio.get_running_loop() makes a getpid system call.
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        # Appended to and cut from the front in place: a request arriving in many small reads
        # costs time in proportion to its size, not to its size times the number of reads.
        self._buffer = bytearray()
        self._post_head: PostHead | None = None  # read once, while its body comes
        self._busy = False  # a request is being answered
        self._close_after = False
        self._paused_reading = False
        self._paused_writing = False
        self._answered_at = 0.0  # loop time of the connection or its last answer: idle from there

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._answered_at = self._loop.time()
        self._server.watch(self)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
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
        self._paused_reading = False  # nothing to resume on a closed socket
        self.detach()

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if not self._busy:
            self._next()

    # --- requests --------------------------------------------------------------------------

    def _next(self) -> None:
        """Take the next whole request in the buffer, or hand the connection over."""
        if self._transport is None or self._busy or self._paused_writing:
            return
        if self._close_after or self._server.closing:
            self._transport.close()  # after the answer is written; nothing more is read
            return
        buffer = self._buffer
        if not buffer:
            return
        try:
            if buffer.startswith(POST_LINE):
                self._post(buffer)
            elif buffer.startswith(UPGRADE_STARTS):
                self._upgrade(buffer)
            elif buffer.startswith(ENGINE_START):
                self._engine_upgrade(buffer)
            elif not any(start.startswith(buffer) for start in STARTS):
                raise NotOurs
        except NotOurs:
            self._hand_over()

    def _start(self, coroutine: Any, done: Callable[[], None] | None = None) -> None:
        self._busy = True
        task = self._loop.create_task(coroutine)
        answering = self._server.answering
        answering.add(task)
        task.add_done_callback(answering.discard)
        if done is not None:
            task.add_done_callback(lambda _: done())

    def _post(self, buffer: bytearray) -> None:
        post = self._post_head
        if post is None:
            head = _head(buffer, len(POST_LINE), POST_READS, POST_REFUSED)
            if head is None:
                return  # not whole yet
            body_start, fields = head
            length = fields.get(b"content-length", b"")
            if not length.isdigit() or len(length) > 10 or int(length) > self._server.max_body:
                raise NotOurs  # no length, a bad one, or over the limit (aiohttp answers 413)
            connection = fields.get(b"connection", b"keep-alive").lower()
            if connection not in (b"keep-alive", b"close"):
                raise NotOurs
            key = fields.get(b"idempotency-key")
            post = self._post_head = PostHead(
                body_start,
                body_start + int(length),
                _text(fields.get(b"authorization", b"")),
                _text(fields.get(b"content-type", b"")),
                None if key is None else _text(key),
                connection == b"close",
            )
        if len(buffer) < post.end:
            return  # the body is still coming
        body = bytes(buffer[post.body_start : post.end])
        del buffer[: post.end]
        self._post_head = None
        self._close_after = post.close
        self._start(self._answer(post.authorization, post.content_type, post.idempotency_key, body))

    def _upgrade_request(
        self, buffer: bytearray, line_pattern: re.Pattern[bytes], compress: bool, cookie_ours: bool
    ) -> tuple[re.Match[bytes], int, CIMultiDict[str], bytes, bool] | None:
        """A WebSocket upgrade read on the bytes: its request line, where its head ends, its
        headers, the ``101`` and whether it deflates; ``None`` while it is not whole; ``NotOurs``
        for anything aiohttp's route must answer (its handshake check is the same one)."""
        line = line_pattern.match(buffer)
        if line is None:
            if b"\r\n" in buffer or len(buffer) > MAX_HEAD_BYTES:
                raise NotOurs
            return None  # the request line is not whole yet
        head = _head(buffer, line.end(), UPGRADE_READS, UPGRADE_REFUSED)
        if head is None:
            return None
        end, fields = head
        if not cookie_ours and b"cookie" in fields:
            raise NotOurs
        headers = CIMultiDict((name.decode("ascii"), _text(value)) for name, value in fields.items())
        try:
            response, deflate = handshake(headers, compress)
        except web.HTTPBadRequest:
            raise NotOurs from None
        return line, end, headers, response, deflate

    def _upgrade(self, buffer: bytearray) -> None:
        # With cookie authentication on, a Cookie may need a session lookup: aiohttp's route does it.
        websocket = self._server.websocket
        request = self._upgrade_request(
            buffer, UPGRADE_LINE, websocket.settings.compression, not self._server.cookie_auth
        )
        if request is None:
            return
        line, end, headers, response, deflate = request
        query = URL.build(path="/api/ws", query_string=(line.group(1) or b"").decode("ascii"), encoded=True)
        del buffer[:end]  # what a client sends before our 101 is passed on
        upgrade = DoorUpgrade(self, headers, query.query, headers["Host"])
        gate = websocket.gate
        self._busy = True  # while it waits its turn, what it sends next waits in the buffer

        def start() -> None:
            if self._transport is None:  # it left while waiting
                gate.leave()
                return
            self._start(self._take_upgrade(upgrade, response, deflate), gate.leave)

        gate.enter(start)

    def _engine_upgrade(self, buffer: bytearray) -> None:
        """A new Engine.IO session on WebSocket (``EIO=4&transport=websocket``, no ``sid``, no
        JSONP): python-engineio runs it from the environ built here instead of aiohttp's request.
        A Cookie stays: it is read at the Socket.IO CONNECT, as behind aiohttp."""
        request = self._upgrade_request(buffer, ENGINE_LINE, self._server.engine.compress, True)
        if request is None:
            return
        line, end, headers, response, deflate = request
        query_string = line.group(1).decode("ascii")
        query = parse_qs(query_string)
        if (
            query.get("EIO") != ["4"]
            or query.get("transport") != ["websocket"]
            or {"sid", "j"} & query.keys()
        ):
            raise NotOurs  # polling, an upgrade of a polling session, another protocol version
        # What python-engineio's aiohttp driver makes of a request (``translate_request``), for
        # the headers read here, and the upgrade for our WebSocket driver (eio.WebSocketDriver).
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "QUERY_STRING": query_string,
            "PATH_INFO": "/socket.io/",
            "SCRIPT_NAME": "",
            "SERVER_PROTOCOL": "HTTP/1.1",
            **{f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()},
            DOOR_UPGRADE: (DoorUpgrade(self, headers, NO_QUERY, headers["Host"]), response, deflate),
        }
        del buffer[:end]  # what a client sends before our 101 is passed on
        self._start(self._take_engine_upgrade(environ))

    async def _take_engine_upgrade(self, environ: dict[str, Any]) -> None:
        try:
            answer = await self._server.engine.handle_environ(environ)
            if not isinstance(answer, TakenOver):  # the request is one python-engineio accepts
                log.warning("engine.io refused an upgrade", extra={"status": answer.status})
        except Exception:
            log.exception("engine.io upgrade failed")
        if self._transport is not None:  # not taken: the client left, or it failed
            self._transport.close()

    async def _take_upgrade(self, upgrade: DoorUpgrade, response: bytes, deflate: bool) -> None:
        try:
            opening = await self._server.websocket.upgrade(upgrade, response, deflate)
        except Exception:
            log.exception("websocket upgrade failed")
            opening = None
        if self._transport is not None:  # not taken: the client left, or it failed
            self._transport.close()
        if opening is not None:
            await opening  # its greeting: the connect is done (``ConnectGate``) when it is

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
        self._answered_at = self._loop.time()
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
        buffer = self.detach()
        protocol = self._server.inner()  # SEAM: aiohttp.Server.__call__
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if buffer:
            protocol.data_received(buffer)

    def detach(self) -> bytes:
        """Let go of the socket (another protocol takes it); what it has sent and is not read."""
        transport = self._transport
        buffer, self._buffer = bytes(self._buffer), bytearray()
        self._post_head = None
        self._transport = None
        self._server.connections.discard(self)
        self._busy = False
        if self._paused_reading and transport is not None:
            self._paused_reading = False
            transport.resume_reading()
        return buffer

    def check_idle(self, now: float) -> None:
        """No request head for ``http_idle_timeout_seconds`` (from the connection's start or its
        last answer): closed, as aiohttp closes it. A whole head whose body is still coming goes
        to aiohttp, which reads bodies without a deadline."""
        if self._transport is None or self._busy or now - self._answered_at < self._server.idle_timeout:
            return
        if b"\r\n\r\n" in self._buffer:
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


def _head(
    buffer: bytearray, start: int, reads: frozenset[bytes], refused: frozenset[bytes]
) -> tuple[int, dict[bytes, bytes]] | None:
    """The header lines from ``start`` to the blank line: (where the head ends, the fields of
    ``reads`` by lower-case name); ``None`` while the head is not whole; ``NotOurs``."""
    head_end = buffer.find(b"\r\n\r\n", start - 2)
    if head_end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise NotOurs
        return None
    if head_end + 2 > start and HEADER_LINES.fullmatch(buffer, start, head_end + 2) is None:
        raise NotOurs
    lines = bytes(buffer[start:head_end]).split(b"\r\n") if head_end > start else []
    if len(lines) > MAX_HEADERS:
        raise NotOurs
    fields: dict[bytes, bytes] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name in reads:
            if name in fields:
                raise NotOurs  # twice: aiohttp decides which counts, or refuses
            fields[name] = value.strip(b" \t")
        elif name in refused:
            raise NotOurs
    if b"host" not in fields:
        raise NotOurs  # HTTP/1.1 requires it: aiohttp answers 400
    return head_end + 4, fields


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")  # as aiohttp decodes header values
