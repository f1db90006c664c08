"""The session service's HTTP client (server/identity/session_client.py) against raw servers that
answer exactly the bytes each case needs: kept-alive reuse, a connection the service closed while
idle, chunked and unframed answers, answers cut short, too large or not HTTP, and timeouts."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeAlias

import pytest

from server.identity.session_client import SessionClient, SessionRequestError
from tests.test_redis_tls import self_signed

OK = b'{"userId":"u1"}'
Reader: TypeAlias = asyncio.StreamReader
Writer: TypeAlias = asyncio.StreamWriter


def framed(body: bytes = OK, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


async def read_request(reader: Reader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


class Service:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""


Handler = Callable[[Service, Reader, Writer], Awaitable[None]]


@asynccontextmanager
async def raw_service(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Service]:
    service = Service()

    async def on_connection(reader: Reader, writer: Writer) -> None:
        service.connections += 1
        try:
            await handler(service, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    service.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/api/auth/realtime?v=1"
    try:
        yield service
    finally:
        server.close()


async def keep_alive(service: Service, reader: Reader, writer: Writer) -> None:
    while True:
        service.requests.append(await read_request(reader))
        writer.write(framed())
        await writer.drain()


async def test_lookups_reuse_one_kept_alive_connection_and_send_the_headers_as_given() -> None:
    async with raw_service(keep_alive) as service:
        client = SessionClient(service.url, max_idle=4)
        for _ in range(3):
            assert await client.get({"Cookie": "session=abc; theme=dark"}, 1024) == (200, OK)
        client.close()
    assert service.connections == 1
    head = service.requests[0].decode()
    assert head.startswith("GET /api/auth/realtime?v=1 HTTP/1.1\r\n")
    assert f"Host: {service.url.split('/')[2]}\r\n" in head
    assert "Cookie: session=abc; theme=dark\r\n" in head
    assert "Accept-Encoding: identity\r\n" in head


async def test_a_connection_the_service_closed_while_idle_is_replaced_and_the_lookup_answered() -> None:
    async def one_answer_then_close(service: Service, reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(framed())  # keep-alive by HTTP/1.1's default, then closed anyway
        await writer.drain()

    async with raw_service(one_answer_then_close) as service:
        client = SessionClient(service.url, max_idle=4)
        assert await client.get({}, 1024) == (200, OK)
        await asyncio.sleep(0.05)  # the close reaches the client, or is still on its way: both must work
        assert await client.get({}, 1024) == (200, OK)
        client.close()
    assert service.connections == 2


async def test_a_kept_alive_connection_closed_as_it_is_reused_is_asked_again() -> None:
    """The service closes the connection when the second request arrives, answering nothing:
    the request is sent again on a new connection (a GET that got no byte back)."""
    seen = 0

    async def close_on_second(service: Service, reader: Reader, writer: Writer) -> None:
        nonlocal seen
        while True:
            await read_request(reader)
            seen += 1
            if seen == 2:
                return  # closes without a byte
            writer.write(framed())
            await writer.drain()

    async with raw_service(close_on_second) as service:
        client = SessionClient(service.url, max_idle=4)
        assert await client.get({}, 1024) == (200, OK)
        assert await client.get({}, 1024) == (200, OK)
        client.close()
    assert service.connections == 2 and seen == 3


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n"
        + OK[:5]
        + b"\r\n"
        + b"%x\r\n" % (len(OK) - 5)
        + OK[5:]
        + b"\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" + framed(),
        b"HTTP/1.0 200 OK\r\n\r\n" + OK,  # unframed: ends when the connection does
    ],
    ids=["chunked", "interim 100 first", "ends at close"],
)
async def test_answers_framed_in_every_way_http_allows_are_read_whole(answer: bytes) -> None:
    async def reply(service: Service, reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        for i in range(0, len(answer), 7):  # in small pieces
            writer.write(answer[i : i + 7])
            await writer.drain()
        if answer.startswith(b"HTTP/1.0"):
            writer.close()
        else:
            await reader.read()

    async with raw_service(reply) as service:
        client = SessionClient(service.url, max_idle=4)
        assert await client.get({}, 1024) == (200, OK)
        client.close()


@pytest.mark.parametrize(
    "answer, error",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + OK, "closed before the answer"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not HTTP"),
        (b"", "closed before the answer"),
    ],
    ids=["cut short", "not HTTP", "nothing"],
)
async def test_answers_that_are_cut_short_or_not_http_fail_the_request(answer: bytes, error: str) -> None:
    async def reply(service: Service, reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()

    async with raw_service(reply) as service:
        client = SessionClient(service.url, max_idle=4)
        with pytest.raises(SessionRequestError, match=error):
            await client.get({}, 1024)
        assert client.idle_connections == 0  # a failed connection is never kept
        client.close()


async def test_an_answer_over_the_limit_is_cut_at_the_limit_and_its_connection_not_kept() -> None:
    big = b'{"userId":"' + b"x" * 5000 + b'"}'

    async def reply(service: Service, reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(framed(big))
        await writer.drain()
        await reader.read()

    async with raw_service(reply) as service:
        client = SessionClient(service.url, max_idle=4)
        status, body = await client.get({}, 1000)
        assert status == 200 and body == big[:1001]
        assert client.idle_connections == 0
        client.close()


async def test_a_service_that_does_not_answer_times_out_and_its_connection_is_dropped() -> None:
    async def silent(service: Service, reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        await reader.read()

    async with raw_service(silent) as service:
        client = SessionClient(service.url, max_idle=4)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await client.get({}, 1024)
        assert client.idle_connections == 0
        client.close()


async def test_a_header_with_a_line_break_is_never_sent_and_nothing_listening_fails_cleanly() -> None:
    async with raw_service(keep_alive) as service:
        client = SessionClient(service.url, max_idle=4)
        with pytest.raises(SessionRequestError, match="Cookie header cannot be forwarded"):
            await client.get({"Cookie": "a=b\r\nX-Admin: 1"}, 1024)
        assert service.connections == 0
        url = service.url
    with pytest.raises(SessionRequestError, match="could not connect"):
        await SessionClient(url, max_idle=4).get({}, 1024)


async def test_an_https_service_is_asked_over_tls_and_an_untrusted_certificate_refused(
    tmp_path: Path,
) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    async with raw_service(keep_alive, tls) as service:
        untrusted = SessionClient(service.url, max_idle=4)
        with pytest.raises(SessionRequestError, match="could not connect"):
            await untrusted.get({}, 1024)
        client = SessionClient(service.url, max_idle=4)
        assert client.tls is not None
        client.tls.load_verify_locations(cert)  # as a deployment's own CA would be
        assert await client.get({"Cookie": "session=abc"}, 1024) == (200, OK)
        assert await client.get({"Cookie": "session=abc"}, 1024) == (200, OK)
        client.close()
    # The refused handshake never reached the service; the trusted client's two lookups, one connection.
    assert service.connections == 1 and len(service.requests) == 2
