"""The front door (server/transports/front_door.py): ``POST /api/v1/events`` answered on the bytes, every
other request handed to aiohttp, over raw sockets so that the exact bytes on the wire are seen.

Each answer of the front door is compared with aiohttp's answer to the same request sent in a
form the front door leaves to aiohttp (a chunked body): same status, same JSON, same headers."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from server.app import create_app
from server.config import Settings
from server.transports.front_door import FrontDoorServer
from tests.clients import ADMIN_KEY, Live, make_token, recv
from tests.conftest import StartServer
from tests.fuzzing import client_frame
from tests.process import running_server
from tests.support import assert_error
from tests.test_websocket_frames import TEXT, RawWebSocket


@pytest.fixture
def backplane() -> str:
    return "memory"


def store_event(seq: int, store: str = "s1") -> dict[str, Any]:
    return {"type": "store_updated", "data": {"storeId": store, "store": {"seq": seq}}}


def plain(body: bytes, headers: dict[str, str] | None = None, key: str | None = ADMIN_KEY) -> bytes:
    """The form the front door answers itself: Content-Length, nothing unusual."""
    sent = {"Host": "x", "Content-Type": "application/json", "Content-Length": str(len(body))}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    sent.update(headers or {})
    head = "".join(f"{name}: {value}\r\n" for name, value in sent.items())
    return f"POST /api/v1/events HTTP/1.1\r\n{head}\r\n".encode("utf-8", "surrogateescape") + body


def chunked(body: bytes, headers: dict[str, str] | None = None, key: str | None = ADMIN_KEY) -> bytes:
    """The same request with a chunked body: one the front door hands to aiohttp."""
    sent = {"Host": "x", "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    sent.update(headers or {})
    head = "".join(f"{name}: {value}\r\n" for name, value in sent.items())
    chunks = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    return f"POST /api/v1/events HTTP/1.1\r\n{head}\r\n".encode("utf-8", "surrogateescape") + chunks


class Raw:
    """One TCP connection that writes bytes as given and reads HTTP/1.1 answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, base: str) -> Raw:
        host, port = base.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"])), timeout)
        else:  # aiohttp's chunked answers: read the chunks
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        return int(status_line.split(" ")[1]), headers, body

    async def closed(self, timeout: float = 5.0) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(), timeout) == b""
        except ConnectionError:
            return True  # reset: closed by the server, with our bytes unread
        except TimeoutError:
            return False

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[Callable[[Live], Any]]:
    opened: list[Raw] = []

    async def connect(live: Live) -> Raw:
        connection = await Raw.open(live.base)
        opened.append(connection)
        return connection

    yield connect
    for connection in opened:
        connection.close()


def counted(live: Live) -> float:
    """``POST /api/v1/events`` requests in the metrics, every status."""
    return sum(
        float(sample.value)
        for family in live.node.metrics.registry.collect()
        if family.name == "realtime_admin_requests"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["route"] == "/api/v1/events"
    )


async def test_a_plain_post_is_answered_and_delivered(live: Live, raw: Any) -> None:
    watcher, _ = await live.ws_ready(token=make_token("u1"), stores="s1")
    connection = await raw(live)
    await connection.send(plain(orjson.dumps(store_event(1))))
    status, headers, body = await connection.answer()
    assert status == 202
    answer = orjson.loads(body)
    assert answer["accepted"] == 1 and len(answer["ids"]) == 1
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(body))
    assert headers["server"].startswith("Python/") and "aiohttp/" in headers["server"]
    assert headers["date"].endswith(" GMT")
    assert "connection" not in headers  # kept alive
    frame = await recv(watcher)
    assert frame["type"] == "store_updated" and frame["id"] == answer["ids"][0]
    assert frame["data"] == store_event(1)["data"]


async def test_requests_sent_together_are_answered_in_order_on_one_connection(live: Live, raw: Any) -> None:
    connection = await raw(live)
    await connection.send(b"".join(plain(orjson.dumps(store_event(n))) for n in range(20)))
    ids = []
    for _ in range(20):
        status, _, body = await connection.answer()
        assert status == 202
        ids.append(orjson.loads(body)["ids"][0])
    assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))
    assert len(set(ids)) == 20


async def test_a_request_arriving_a_byte_at_a_time_is_answered(live: Live, raw: Any) -> None:
    connection = await raw(live)
    request = plain(orjson.dumps(store_event(1)))
    for index in range(len(request)):
        await connection.send(request[index : index + 1])
        await asyncio.sleep(0)
    status, _, body = await connection.answer()
    assert status == 202 and orjson.loads(body)["accepted"] == 1


async def test_a_large_body_arriving_in_many_small_reads_is_answered_whole(live: Live, raw: Any) -> None:
    """The head is read once and kept while the body comes, read after read."""
    connection = await raw(live)
    connection.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    event = {"type": "store_updated", "data": {"storeId": "s1", "store": {"pad": "x" * 60_000}}}
    request = plain(orjson.dumps(event))
    for index in range(0, len(request), 97):
        await connection.send(request[index : index + 97])
    status, _, body = await connection.answer()
    assert status == 202 and orjson.loads(body)["accepted"] == 1


async def test_another_request_on_the_same_connection_goes_to_aiohttp_and_then_publishing_still_works(
    live: Live, raw: Any
) -> None:
    connection = await raw(live)
    await connection.send(plain(orjson.dumps(store_event(1))))
    assert (await connection.answer())[0] == 202
    await connection.send(
        f"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n".encode()
    )
    status, _, body = await connection.answer()
    assert status == 200 and "connections" in orjson.loads(body)
    await connection.send(plain(orjson.dumps(store_event(2))))
    status, _, body = await connection.answer()
    assert status == 202 and orjson.loads(body)["accepted"] == 1


# Bad requests: each answered by the front door and, in the chunked form, by aiohttp's route. The
# two answers must be the same (status, JSON, the headers a client acts on).
BAD_REQUESTS = {
    "no key": (orjson.dumps(store_event(1)), {}, None, 401),
    "wrong key": (orjson.dumps(store_event(1)), {}, "nope", 401),
    "key not UTF-8": (orjson.dumps(store_event(1)), {}, "\udcff\udcfe", 401),
    "not JSON media type": (orjson.dumps(store_event(1)), {"Content-Type": "text/plain"}, ADMIN_KEY, 415),
    "no body": (b"", {}, ADMIN_KEY, 400),
    "malformed JSON": (b'{"type": ', {}, ADMIN_KEY, 400),
    "JSON not an object": (b"[1, 2]", {}, ADMIN_KEY, 422),
    "unknown type": (orjson.dumps({"type": "nope", "data": {}}), {}, ADMIN_KEY, 422),
    "bad data": (orjson.dumps({"type": "store_updated", "data": {"storeId": 5}}), {}, ADMIN_KEY, 422),
    "empty batch": (b'{"events": []}', {}, ADMIN_KEY, 422),
    "too long an Idempotency-Key": (
        orjson.dumps(store_event(1)),
        {"Idempotency-Key": "k" * 256},
        ADMIN_KEY,
        400,
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
async def test_a_bad_request_gets_the_same_answer_from_the_front_door_and_from_aiohttp(
    live: Live, raw: Any, case: str
) -> None:
    body, headers, key, expected = BAD_REQUESTS[case]
    headers = {**headers}
    if key is not None and not key.isascii():
        headers["Authorization"] = f"Bearer {key}"
        key = None

    before = counted(live)
    answers = []
    for form in (plain, chunked):
        connection = await raw(live)
        await connection.send(form(body, headers, key))
        answers.append(await connection.answer())
    (status, here, body_here), (status_aiohttp, there, body_there) = answers
    assert_error(status, orjson.loads(body_here), expected)
    assert (status, orjson.loads(body_here)) == (status_aiohttp, orjson.loads(body_there))
    for name in ("content-type", "www-authenticate", "retry-after"):
        assert here.get(name) == there.get(name), name
    assert counted(live) == before + 2  # both counted in the route's metric


async def test_the_rate_limit_answers_429_with_retry_after_on_the_front_door(
    start_server: StartServer, settings_for: Callable[..., Settings], raw: Any
) -> None:
    live = await start_server(settings_for(admin={"requests_per_second": 1, "requests_burst": 1}))
    connection = await raw(live)
    await connection.send(plain(orjson.dumps(store_event(1))) + plain(orjson.dumps(store_event(2))))
    assert (await connection.answer())[0] == 202
    status, headers, body = await connection.answer()
    assert_error(status, orjson.loads(body), 429, "rate_limited")
    assert headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("name", "request_bytes", "expected"),
    [
        # handed to aiohttp: the answers are aiohttp's route's, in the contract's shape
        ("a query string", b"POST /api/v1/events?x=1 HTTP/1.1\r\nHost: x\r\n", None),
        ("HTTP/1.0", b"POST /api/v1/events HTTP/1.0\r\nHost: x\r\n", None),
        (
            "too many headers",
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(130)),
            400,
        ),
        ("no Host", b"POST /api/v1/events HTTP/1.1\r\nContent-Length: 2\r\n", 400),
        ("two Hosts", b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nHost: y\r\nContent-Length: 2\r\n", 400),
        (
            "a body over the limit",
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n",
            413,
        ),
        (
            "two lengths",
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n",
            400,
        ),
        ("a bad length", b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n", 400),
        (
            "a header line without a colon",
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nHost x\r\nContent-Length: 2\r\n",
            400,
        ),
        (
            "a space before the colon",
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Length : 2\r\n",
            400,
        ),
        (
            "a control character",
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nX-A: \x01\r\nContent-Length: 2\r\n",
            400,
        ),
        (
            "a folded line",
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\nContent-Length: 2\r\n",
            400,
        ),
    ],
)
async def test_a_request_the_front_door_does_not_take_is_answered_by_aiohttp(
    live: Live, raw: Any, name: str, request_bytes: bytes, expected: int | None
) -> None:
    connection = await raw(live)
    auth = f"Authorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\n".encode()
    if b"Content-Length" in request_bytes:
        await connection.send(request_bytes + auth + b"\r\n{}")
    else:
        body = orjson.dumps(store_event(1))
        await connection.send(request_bytes + auth + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    status, _, body = await connection.answer()
    if expected is None:
        assert status == 202, (name, body)
    else:
        assert status == expected, (name, body)
        if status == 413:
            assert_error(status, orjson.loads(body), 413, "payload_too_large")


async def test_expect_100_continue_is_left_to_aiohttp(live: Live, raw: Any) -> None:
    connection = await raw(live)
    body = orjson.dumps(store_event(1))
    await connection.send(plain(b"", {"Expect": "100-continue", "Content-Length": str(len(body))}))
    interim = await asyncio.wait_for(connection.reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100")
    await connection.send(body)
    assert (await connection.answer())[0] == 202


async def test_connection_close_is_honoured(live: Live, raw: Any) -> None:
    connection = await raw(live)
    await connection.send(plain(orjson.dumps(store_event(1)), {"Connection": "close"}))
    status, headers, _ = await connection.answer()
    assert status == 202 and headers["connection"] == "close"
    assert await connection.closed()


async def test_a_websocket_client_still_connects_through_the_front_door(live: Live) -> None:
    ws, first = await live.ws_ready(token=make_token("u1"))
    assert first["type"] == "connected"
    await ws.close()


async def test_a_silent_connection_and_a_trickled_post_head_are_closed_after_the_idle_timeout() -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
        config.write("http_idle_timeout_seconds: 1\n")
    try:
        with running_server({"CONFIG_FILE": config.name}) as server:
            silent = await Raw.open(server.base)
            trickling = await Raw.open(server.base)
            await trickling.send(b"POST /api/v1/events HTTP/1.1\r\n")
            for i in range(4):
                await asyncio.sleep(0.5)
                try:
                    await trickling.send(f"X-Slow-{i}: 1\r\n".encode())
                except ConnectionError:
                    break
            assert await silent.closed(timeout=3), "a connection that sent nothing is still open"
            assert await trickling.closed(timeout=3), "a POST whose head never ends is still open"
            silent.close()
            trickling.close()
    finally:
        os.unlink(config.name)


async def test_sigterm_closes_an_idle_publishing_connection_and_the_process_exits() -> None:
    with running_server() as server:
        connection = await Raw.open(server.base)
        await connection.send(plain(orjson.dumps(store_event(1))))
        status, _, _ = await connection.answer()
        assert status == 202
        server.signal(signal.SIGTERM)
        assert await server.wait_exit(10) == 0
        assert await connection.closed(timeout=1)
        connection.close()


# --- plain WebSocket upgrades ------------------------------------------------------------------


ENGINE_WS = "/socket.io/?EIO=4&transport=websocket"


def upgrade(path: str, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


@pytest.fixture
async def door(aiohttp_server: Any, settings_for: Callable[..., Settings]) -> AsyncIterator[tuple[Live, Any]]:
    """A server, and its front door (what its runner serves): its ``inner`` aiohttp server counts
    the requests aiohttp handled."""
    server = await aiohttp_server(create_app(settings_for()), host="127.0.0.1")
    async with aiohttp.ClientSession() as session:
        yield (
            Live(base=str(server.make_url("")).rstrip("/"), app=server.app, session=session),
            server.runner.server,
        )


async def test_a_websocket_upgrade_and_a_post_are_taken_by_the_front_door_and_others_by_aiohttp(
    door: tuple[Live, Any],
) -> None:
    live, front = door
    assert isinstance(front, FrontDoorServer)
    ws, first = await live.ws_ready(token=make_token("u1"), stores="s1")
    assert first["data"]["userId"] == "u1" and "store:s1" in first["data"]["rooms"]
    assert (await live.post(store_event(1)))[0] == 202
    assert (await recv(ws))["type"] == "store_updated"
    assert front.inner.requests_count == 0  # neither reached aiohttp
    assert (await live.get("/healthz"))[0] == 200
    assert front.inner.requests_count == 1
    await ws.close()


async def test_a_socketio_websocket_session_is_taken_by_the_front_door_and_polling_by_aiohttp(
    door: tuple[Live, Any],
) -> None:
    """python-socketio's client on WebSocket alone: its Engine.IO upgrade (no sid) never reaches
    aiohttp, yet everything works (CONNECT with a token, an event, an ack). On polling, or
    polling then upgraded, aiohttp serves every request, as before."""
    live, front = door
    client = await live.sio({"token": make_token("u1")}, transports=["websocket"])
    assert (await live.post(store_event(1)))[0] == 202
    [(name, _args)] = await client.wait_for(1, timeout=5)
    assert name == "store_updated"
    assert (await client.call("subscribe", {"storeId": "s2"}))["ok"] is True
    assert front.inner.requests_count == 0  # the upgrade and the POST: neither reached aiohttp
    await client.close()
    polling = await live.sio({"token": make_token("u2")}, transports=["polling", "websocket"])
    assert (await live.post(store_event(2)))[0] == 202
    [(name, _args)] = await polling.wait_for(1, timeout=5)
    assert name == "store_updated"
    assert front.inner.requests_count >= 2  # the polling handshake and its upgrade are aiohttp's
    await polling.close()


async def test_what_a_client_sends_with_its_upgrade_request_is_read_after_the_101(
    live: Live, raw: Any
) -> None:
    connection = await raw(live)
    await connection.send(
        upgrade(f"/api/ws?token={make_token('u1')}") + client_frame(TEXT, b'{"type":"ping"}', mask=b"abcd")
    )
    head = await asyncio.wait_for(connection.reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    ws = RawWebSocket(connection.reader, connection.writer, head)
    assert (await ws.message())["type"] == "connected"
    assert await ws.message() == {"type": "pong"}


@pytest.mark.parametrize(
    ("name", "extra", "path"),
    [
        ("the front door's", "", "/api/ws?token={token}"),
        ("aiohttp's (a Content-Length makes it aiohttp's)", "Content-Length: 0\r\n", "/api/ws?token={token}"),
    ],
)
async def test_a_refused_upgrade_is_closed_the_same_way_on_both_paths(
    live: Live, raw: Any, name: str, extra: str, path: str
) -> None:
    connection = await raw(live)
    await connection.send(upgrade(path.format(token=make_token("u1", secret="x" * 40)), extra))
    head = await asyncio.wait_for(connection.reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), name
    ws = RawWebSocket(connection.reader, connection.writer, head)
    assert await ws.close_code() == 4401, name


@pytest.mark.parametrize(
    ("name", "request_bytes", "expected"),
    [
        ("no version", upgrade("/api/ws").replace(b"Sec-WebSocket-Version: 13\r\n", b""), b"400"),
        (
            "a bad key",
            upgrade("/api/ws").replace(b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: !"),
            b"400",
        ),
        ("not an upgrade", b"GET /api/ws HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
        ("HTTP/1.0", upgrade("/api/ws").replace(b"HTTP/1.1", b"HTTP/1.0"), b"101"),
        ("another path", upgrade("/api/wsx"), b"404"),
        ("a space in the target", upgrade("/api/ws?a b"), b"400"),
        (
            "Engine.IO, a bad key",
            upgrade(ENGINE_WS).replace(b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: !"),
            b"400",
        ),
        ("Engine.IO, no version", upgrade(ENGINE_WS).replace(b"Sec-WebSocket-Version: 13\r\n", b""), b"400"),
        ("Engine.IO 3", upgrade("/socket.io/?EIO=3&transport=websocket"), b"400"),
        ("Engine.IO, an unknown sid", upgrade(f"{ENGINE_WS}&sid=nope"), b"400"),
        ("Engine.IO, JSONP", upgrade(f"{ENGINE_WS}&j=0"), b"400"),
        (
            "Engine.IO, not an upgrade",
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n\r\n",
            b"400",
        ),
        ("Engine.IO, taken by the front door", upgrade(ENGINE_WS), b"101"),
    ],
)
async def test_an_upgrade_the_front_door_does_not_take_gets_aiohttps_answer(
    live: Live, raw: Any, name: str, request_bytes: bytes, expected: bytes
) -> None:
    connection = await raw(live)
    await connection.send(request_bytes)
    head = await asyncio.wait_for(connection.reader.readuntil(b"\r\n\r\n"), 5)
    assert head.split(b" ")[1] == expected, (name, head)
