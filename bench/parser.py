"""WebSocket parser bench: ours (server.transports.websocket.WebSocketProtocol) against aiohttp's own reader.

Two hostile shapes, each at several sizes to show how the cost grows:

- one text message of N KiB fed one byte per ``data_received`` call (a byte per TCP segment);
- a text message split around N empty continuation frames (fed in 64 KiB reads).

aiohttp's reader is ``aiohttp._websocket.reader.WebSocketReader`` (what ``aiohttp.http.WebSocketReader``
names): its compiled ``reader_c`` class when the wheel has it, and its pure-Python ``reader_py``
class, both fed the same bytes as ours. Each figure is the best of ``--repeat`` runs, in
milliseconds, on one core; nothing else is measured (no sockets read, no handlers run).

    .venv/bin/python bench/parser.py              # ~3 s on this machine
    .venv/bin/python bench/parser.py --repeat 1   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp._websocket import reader_py
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from aiohttp.base_protocol import BaseProtocol

from server.transports.websocket import WebSocketProtocol

LIMIT = 4 * 1024 * 1024  # max message size for every parser
MASK = b"\x01\x02\x03\x04"


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    repeated = (MASK * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
    return header + MASK + masked


def one_message(kib: int) -> bytes:
    return client_frame(0x1, b"x" * (kib * 1024))


def empty_continuations(count: int) -> bytes:
    empty = client_frame(0x0, b"", fin=False)
    return client_frame(0x1, b"hello", fin=False) + empty * count + client_frame(0x0, b" world")


def one_byte_reads(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def reads_of(data: bytes, size: int = 65536) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class Counter(WebSocketProtocol):
    __slots__ = ("messages",)

    def __init__(self) -> None:
        super().__init__(LIMIT)
        self.messages = 0

    def on_message(self, data: str | bytes) -> None:
        self.messages += 1


def run_ours(chunks: list[bytes], loop: asyncio.AbstractEventLoop) -> float:
    protocol = Counter()
    ours, peer = socket.socketpair()
    try:
        transport, _ = loop.run_until_complete(loop.connect_accepted_socket(lambda: protocol, ours))
        feed = protocol.data_received
        start = time.perf_counter()
        for chunk in chunks:
            feed(chunk)
        elapsed = time.perf_counter() - start
        assert protocol.messages == 1, protocol.messages
        transport.abort()
    finally:
        peer.close()
    return elapsed


def run_aiohttp(chunks: list[bytes], loop: asyncio.AbstractEventLoop, python: bool) -> float:
    queue_class = reader_py.WebSocketDataQueue if python else WebSocketDataQueue
    reader_class = reader_py.WebSocketReader if python else WebSocketReader
    queue = queue_class(BaseProtocol(loop), 2**30, loop=loop)
    reader = reader_class(queue, LIMIT, compress=False, decode_text=True)
    feed = reader.feed_data
    start = time.perf_counter()
    for chunk in chunks:
        feed(chunk)
    elapsed = time.perf_counter() - start
    message = loop.run_until_complete(queue.read())
    assert message.type == 1 and len(message.data) > 5, message  # the whole text message
    return elapsed


def best(run: Callable[[], float], repeat: int) -> float:
    return min(run() for _ in range(repeat)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    compiled = WebSocketReader is not reader_py.WebSocketReader
    print(
        f"aiohttp {__import__('aiohttp').__version__}: WebSocketReader = "
        f"{WebSocketReader.__module__}.{WebSocketReader.__qualname__}"
        f" ({'compiled' if compiled else 'pure Python: no compiled reader in this install'}); "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; best of {args.repeat}, ms"
    )
    cases: list[tuple[str, list[bytes]]] = []
    for kib in (8, 16, 32, 64):
        cases.append((f"{kib} KiB message, 1 byte per read", one_byte_reads(one_message(kib))))
    for count in (25_000, 50_000, 100_000, 200_000):
        cases.append((f"{count:,} empty continuations", reads_of(empty_continuations(count))))
    print()
    print("| input | ours | aiohttp reader_c | aiohttp reader_py |")
    print("|---|---|---|---|")
    for name, chunks in cases:
        ours = best(lambda chunks=chunks: run_ours(chunks, loop), args.repeat)
        compiled_ms = best(lambda chunks=chunks: run_aiohttp(chunks, loop, python=False), args.repeat)
        python_ms = best(lambda chunks=chunks: run_aiohttp(chunks, loop, python=True), args.repeat)
        print(f"| {name} | {ours:.1f} | {compiled_ms:.1f} | {python_ms:.1f} |")
    loop.close()


if __name__ == "__main__":
    main()
