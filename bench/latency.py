#!/usr/bin/env python3
"""Latency workload with kernel receive timestamps: N WebSocket clients, one event per POST.

    python3 latency.py --proto ws|sio --ports 3001[,3002] --pub-port 3001 --pids PID[,PID]

Why not the Node load generator: with 1,000 clients one event is 1,000 frames, and a reader that
wakes up for each spends about as long on a frame as the server does on sending it, so the time
at which a frame is *read* says more about the reader than about the server. Here every read
asks the kernel when the bytes arrived in the client's socket (``SO_TIMESTAMPNS``; on loopback
that is when the server's send call put them there), and latency = that time minus the wall-clock
time taken just before the POST was written. How fast this script then gets round to reading
does not change the figure.

Prints one JSON object on stdout (the keys ``loadgen.js`` uses for its latency workload).
Standard library only; Linux only.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import selectors
import socket
import struct
import sys
import time

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("@qq")
ANCILLARY = socket.CMSG_SPACE(TIMESPEC.size)
SEQ, TS = b'"seq":', b'"ts":'


def log(*a: object) -> None:
    print("[latency]", *a, file=sys.stderr, flush=True)


def number(buf: bytes, pos: int) -> float:
    end = pos
    while end < len(buf) and buf[end] in b"0123456789.":
        end += 1
    return float(buf[pos:end])


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (RFC 6455: clients mask); small payloads only."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    n = len(payload)
    head = (
        bytes([0x80 | opcode, 0x80 | n])
        if n < 126
        else bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    )
    return head + mask + body


class Client:
    def __init__(self, index: int, port: int, proto: str) -> None:
        self.index, self.port, self.proto = index, port, proto
        self.buf = b""
        self.seen: set[int] = set()
        self.max_seq = 0
        self.dup = self.reordered = 0
        self.closed_code: int | None = None
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def handshake(self) -> None:
        uid = f"u{self.index}"
        path = (
            f"/api/ws?userId={uid}&role=customer"
            if self.proto == "ws"
            else "/socket.io/?EIO=4&transport=websocket"
        )
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv_blocking()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        while True:  # until the server says the client is in
            for text in self._blocking_frames():
                if self.proto == "ws" and b'"connected"' in text:
                    return
                if text.startswith(b"0{"):
                    auth = json.dumps({"userId": uid, "role": "customer"}).encode()
                    self.sock.sendall(masked(0x1, b"40" + auth))
                elif text.startswith(b"40"):
                    return
                elif text.startswith(b"44"):
                    raise ConnectionError(text.decode(errors="replace"))

    def _recv_blocking(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed during handshake")
        return data

    def _blocking_frames(self) -> list[bytes]:
        frames = self.frames()
        while not frames:
            self.buf += self._recv_blocking()
            frames = self.frames()
        return frames

    def frames(self) -> list[bytes]:
        """Complete text/binary payloads at the front of ``self.buf`` (control frames handled)."""
        out, buf, pos = [], self.buf, 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, start = b1 & 0x7F, pos + 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n, start = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            if len(buf) < start + n:
                break
            payload, pos = buf[start : start + n], start + n
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self.sock.sendall(masked(0xA, payload))
            elif opcode == 0x8:
                self.closed_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            elif opcode in (0x1, 0x2):  # the servers here do not fragment
                if self.proto == "sio" and payload == b"2":
                    self.sock.sendall(masked(0x1, b"3"))
                else:
                    out.append(payload)
        self.buf = buf[pos:]
        return out

    def read(self) -> tuple[list[bytes], float]:
        """What arrived, and when the kernel got (the last of) it, in epoch seconds."""
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(65536, ANCILLARY)
        except BlockingIOError:
            return [], 0.0
        if not data:
            self.closed_code = self.closed_code or 1006
            return [], 0.0
        stamp = 0.0
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = TIMESPEC.unpack(value[: TIMESPEC.size])
                stamp = sec + nsec / 1e9
        self.buf += data
        return self.frames(), stamp or time.time()

    def track(self, seq: int) -> None:
        if seq in self.seen:
            self.dup += 1
            return
        self.seen.add(seq)
        if seq < self.max_seq:
            self.reordered += 1
        else:
            self.max_seq = seq


class Publisher:
    """POSTs on one keep-alive connection, written without blocking so the loop never stalls."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.statuses: list[int] = []

    def post(self, event: dict) -> None:
        body = json.dumps(event, separators=(",", ":")).encode()
        self.sock.sendall(
            f"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, rest = self.buf.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.statuses.append(int(head.split(b" ", 2)[1]))
            self.buf = rest[length:]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, int(len(sorted_values) * p + 0.999999) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proto", choices=("ws", "sio"), default="ws")
    ap.add_argument("--ports", default="3000")
    ap.add_argument("--pub-port", type=int)
    ap.add_argument("--pids", default="")
    ap.add_argument("--redis-pid", type=int, default=0)
    ap.add_argument("--key", default="benchkey")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=5)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--warmup", type=int, default=5, help="events sent first, not counted")
    ap.add_argument("--frame-bytes", type=int, default=300)
    ap.add_argument("--drain-timeout", type=float, default=10)
    args = ap.parse_args()
    ports = [int(p) for p in args.ports.split(",")]
    pids = [int(p) for p in args.pids.split(",") if p]

    clients, errors = [], {}
    t0 = time.monotonic()
    for i in range(args.clients):
        try:
            client = Client(i, ports[i % len(ports)], args.proto)
            client.handshake()
            client.sock.setblocking(False)
            clients.append(client)
        except OSError as exc:
            errors[str(exc)] = errors.get(str(exc), 0) + 1
    connect = {
        "ok": len(clients),
        "failed": args.clients - len(clients),
        "seconds": round(time.monotonic() - t0, 2),
        "errors": errors,
    }
    log(f"connected {len(clients)}/{args.clients} in {connect['seconds']}s")
    if not clients:
        print(json.dumps({"error": f"no client connected: {errors}", "connect": connect}))
        return 1

    publisher = Publisher(args.pub_port or ports[0], args.key)
    publisher.sock.setblocking(False)
    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client.sock, selectors.EVENT_READ, client)
    selector.register(publisher.sock, selectors.EVENT_READ, None)

    probe = {
        "seq": 10**6,
        "ts": time.time() * 1000,
        "storeId": "s1",
        "store": {"id": "s1", "name": "Bench store", "padding": ""},
    }
    padding = "x" * max(
        0, args.frame_bytes - len(json.dumps({"type": "store_updated", "data": probe, "id": "1234567"}))
    )
    latencies: list[float] = []
    counted_from = args.warmup + 1
    total = args.warmup + max(1, round(args.rate * args.duration))
    deliveries = format_errors = 0

    def pump(timeout: float) -> None:
        nonlocal deliveries, format_errors
        for key, _ in selector.select(timeout):
            client = key.data
            if client is None:
                publisher.read()
                continue
            frames, stamp = client.read()
            for payload in frames:
                i = payload.find(SEQ)
                if i < 0:
                    continue
                seq = int(number(payload, i + len(SEQ)))
                j = payload.find(TS, i)
                if j < 0 or not payload.startswith(
                    b'42["store_updated"' if args.proto == "sio" else b'{"type":"store_updated"'
                ):
                    format_errors += 1
                    continue
                if seq < counted_from:
                    continue
                deliveries += 1
                latencies.append(stamp * 1000 - number(payload, j + len(TS)))
                client.track(seq)

    def snapshot() -> dict[str, float]:
        return {
            "t": time.monotonic(),
            "server": sum(cpu_seconds(p) for p in pids),
            "redis": cpu_seconds(args.redis_pid) if args.redis_pid else 0.0,
            "self": time.process_time(),
        }

    start = time.monotonic() + 0.2
    a: dict[str, float] = {}
    for seq in range(1, total + 1):
        due = start + (seq - 1) / args.rate
        if seq == counted_from:
            a = snapshot()
        while (wait := due - time.monotonic()) > 0:
            pump(wait)
        ts = time.time() * 1000
        publisher.post(
            {
                "type": "store_updated",
                "data": {
                    "seq": seq,
                    "ts": round(ts, 3),
                    "storeId": "s1",
                    "store": {"id": "s1", "name": "Bench store", "padding": padding},
                },
            }
        )
    posted = total - args.warmup
    expected = posted * len(clients)
    deadline = time.monotonic() + args.drain_timeout
    while deliveries < expected and time.monotonic() < deadline:
        pump(0.05)
    pump(0.2)  # duplicates that come late
    b = snapshot()

    latencies.sort()

    def per_delivery(used: float) -> float | None:
        return round(used * 1e6 / deliveries, 3) if deliveries else None

    seconds = b["t"] - a["t"]
    ok_posts = sum(1 for s in publisher.statuses[args.warmup :] if s == 202)
    distinct = sum(len(c.seen) for c in clients)
    close_codes: dict[str, int] = {}
    for client in clients:
        if client.closed_code:
            close_codes[str(client.closed_code)] = close_codes.get(str(client.closed_code), 0) + 1
    result = {
        "method": "kernel receive timestamps (SO_TIMESTAMPNS)",
        "connect": connect,
        "events_posted": posted,
        "post_errors": posted - ok_posts,
        "drained": deliveries >= expected,
        "samples": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50) or 0, 3),
        "p99_ms": round(percentile(latencies, 0.99) or 0, 3),
        "max_ms": round(latencies[-1], 3) if latencies else None,
        "mean_ms": round(sum(latencies) / len(latencies), 3) if latencies else None,
        "seconds": round(seconds, 2),
        "deliveries": deliveries,
        "server_cpu_us_per_delivery": per_delivery(b["server"] - a["server"]),
        "server_cpu_pct": round((b["server"] - a["server"]) * 100 / seconds, 1),
        "redis_cpu_us_per_delivery": per_delivery(b["redis"] - a["redis"]) if args.redis_pid else None,
        "loadgen_cpu_us_per_delivery": per_delivery(b["self"] - a["self"]),
        "expected": expected,
        "received_distinct": distinct,
        "lost": expected - distinct,
        "duplicated": sum(c.dup for c in clients),
        "reordered": sum(c.reordered for c in clients),
        "format_errors": format_errors,
        "close_codes": close_codes,
    }
    for client in clients:
        client.sock.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
