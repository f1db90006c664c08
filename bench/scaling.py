#!/usr/bin/env python3
"""Saturation throughput of one or more server processes, with readers that cost almost nothing.

    python3 scaling.py --ports 3001[,3002] --pids PID[,PID] [--clients 1000 --seconds 2]

Why a separate workload: to see whether N processes behind Redis deliver N times what one does,
every process must be the bottleneck on its own core. On a 2-core machine that leaves no core
for a reader that parses every frame (which costs about what the server spends sending it). So
here the clients are plain-WebSocket sinks with 4 MB receive buffers, read in large chunks a few
times a second and not parsed; a few tracker clients per process parse every frame and check
that nothing is lost, duplicated or reordered. Three publishers per process (one POST in flight
each) keep every process a bounded number of events ahead of what it has delivered
(``realtime_deliveries_total`` from ``/metrics``, polled 20 times a second by one thread over
keep-alive connections: a fresh poll before every POST made each publisher wait out two extra
round trips, and the processes idled). With one publisher per process, a process would wait for
the other's publisher, which waits while that process delivers. The
figure is each process's deliveries counted by the process itself over the window, with its CPU
share (a process under about 90 % was not the limit).

Prints one JSON object on stdout. Standard library only; Linux only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import threading
import time

from latency import Client, cpu_seconds, log

TRACKERS_PER_PROCESS = 2
READ_BUFFER = 4 * 1024 * 1024


def deliveries(conn: http.client.HTTPConnection) -> int:
    """The process's delivery count, over a keep-alive connection to it (one per thread)."""
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    for line in body.splitlines():
        if line.startswith("realtime_deliveries_total "):
            return int(float(line.split()[1]))
    raise RuntimeError(f"no realtime_deliveries_total on port {conn.port}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ports", required=True)
    ap.add_argument("--pids", required=True)
    ap.add_argument("--redis-pid", type=int, default=0)
    ap.add_argument("--key", default="benchkey")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100, help="events per POST")
    ap.add_argument("--publishers", type=int, default=3, help="publishers (POSTs in flight) per process")
    ap.add_argument("--ahead", type=int, default=4000, help="events a process may be behind")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--seconds", type=float, default=2.0, help="measured window")
    ap.add_argument("--frame-bytes", type=int, default=300)
    args = ap.parse_args()
    ports = [int(p) for p in args.ports.split(",")]
    pids = [int(p) for p in args.pids.split(",")]

    clients: list[Client] = []
    for i in range(args.clients):
        client = Client(i, ports[i % len(ports)], "ws")
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, READ_BUFFER)
        client.handshake()
        client.sock.setblocking(False)
        clients.append(client)
    per_port = {port: sum(1 for c in clients if c.port == port) for port in ports}
    trackers = [c for port in ports for c in [c for c in clients if c.port == port][:TRACKERS_PER_PROCESS]]
    sinks = [c for c in clients if c not in trackers]
    log(f"connected {len(clients)} clients to {ports}")

    padding = "x" * max(0, args.frame_bytes - 160)
    data = {"seq": 0, "ts": 0, "storeId": "s1", "store": {"id": "s1", "padding": padding}}
    template = json.dumps({"type": "store_updated", "data": data}).replace('"seq": 0', '"seq": %d', 1)
    posted = 0
    posted_lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []
    scratch = bytearray(READ_BUFFER)
    sink_bytes = 0
    last_seen: dict[tuple[int, int], int] = {}  # (client, publisher) -> last seq: order per publisher

    delivered = {port: 0 for port in ports}

    def watch_progress() -> None:
        """Polls each process's delivery count 20 times a second: one /metrics request per
        POST would cost the server (and this client) more than the publishing itself."""
        conns = {port: http.client.HTTPConnection("127.0.0.1", port, timeout=5) for port in ports}
        try:
            while not stop.is_set():
                for port, conn in conns.items():
                    delivered[port] = deliveries(conn)
                time.sleep(0.05)
        except Exception as exc:
            errors.append(f"progress: {exc!r}")
            stop.set()

    def behind() -> int:  # events the furthest-behind process has still to deliver
        return max(posted - delivered[port] // per_port[port] for port in ports)

    publishers = len(ports) * args.publishers

    def publish(k: int) -> None:
        """Publisher k posts to process k mod N; its seqs are k+1, k+1+P, ... (P publishers)."""
        nonlocal posted
        conn = http.client.HTTPConnection("127.0.0.1", ports[k % len(ports)], timeout=10)
        seq = k + 1
        try:
            while not stop.is_set():
                if behind() >= args.ahead:
                    time.sleep(0.01)
                    continue
                seqs = range(seq, seq + args.batch * publishers, publishers)
                seq += args.batch * publishers
                body = '{"events":[' + ",".join(template % n for n in seqs) + "]}"
                conn.request(
                    "POST",
                    "/api/v1/events",
                    body=body,
                    headers={"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"},
                )
                response = conn.getresponse()
                response.read()
                if response.status != 202:
                    raise RuntimeError(f"POST answered {response.status}")
                with posted_lock:
                    posted += args.batch
        except Exception as exc:
            errors.append(repr(exc))
            stop.set()

    def track(client: Client, seq: int) -> None:
        if seq in client.seen:
            client.dup += 1
            return
        client.seen.add(seq)
        key = (client.index, seq % publishers)
        if seq < last_seen.get(key, 0):
            client.reordered += 1
        else:
            last_seen[key] = seq

    def read_all() -> None:
        nonlocal sink_bytes
        for client in sinks:  # MSG_TRUNC: TCP drops what was read instead of copying it (tcp(7))
            try:
                while n := client.sock.recv_into(scratch, 0, socket.MSG_TRUNC):
                    sink_bytes += n
            except BlockingIOError:
                pass
        for client in trackers:
            while True:
                frames, _ = client.read()
                if not frames:
                    break
                for payload in frames:
                    i = payload.find(b'"seq":')
                    if i >= 0:
                        track(client, int(payload[i + 6 : payload.index(b",", i)]))

    def run_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not stop.is_set():
            read_all()
            time.sleep(0.2)

    threads = [threading.Thread(target=publish, args=(k,), daemon=True) for k in range(publishers)]
    threads.append(threading.Thread(target=watch_progress, daemon=True))
    for thread in threads:
        thread.start()
    run_for(args.warmup)
    probes = {port: http.client.HTTPConnection("127.0.0.1", port, timeout=5) for port in ports}
    counts_a = {port: deliveries(probes[port]) for port in ports}
    cpu_a = [cpu_seconds(p) for p in pids]
    redis_a = cpu_seconds(args.redis_pid) if args.redis_pid else 0.0
    self_a, t_a = time.process_time(), time.monotonic()
    run_for(args.seconds)
    t_b, self_b = time.monotonic(), time.process_time()
    counts_b = {port: deliveries(probes[port]) for port in ports}
    cpu_b = [cpu_seconds(p) for p in pids]
    redis_b = cpu_seconds(args.redis_pid) if args.redis_pid else 0.0
    window = t_b - t_a
    stop.set()
    for thread in threads:
        thread.join()

    deadline = time.monotonic() + 20  # drain: every tracker gets every event
    while time.monotonic() < deadline and any(len(c.seen) < posted for c in trackers):
        read_all()
        time.sleep(0.05)
    read_all()
    lost = sum(posted - len(c.seen) for c in trackers)
    closed = sum(1 for c in clients if c.closed_code)
    per_process = [
        {
            "port": port,
            "deliveries_per_s": round((counts_b[port] - counts_a[port]) / window),
            "cpu_pct": round((cpu_b[i] - cpu_a[i]) * 100 / window, 1),
        }
        for i, port in enumerate(ports)
    ]
    total = sum(p["deliveries_per_s"] for p in per_process)
    result = {
        "processes": len(ports),
        "clients": len(clients),
        "seconds": round(window, 2),
        "deliveries_per_s": total,
        "per_process": per_process,
        "server_cpu_us_per_delivery": round(
            sum(b - a for a, b in zip(cpu_a, cpu_b, strict=True)) * 1e6 / (total * window), 3
        ),
        "redis_cpu_pct": round((redis_b - redis_a) * 100 / window, 1) if args.redis_pid else None,
        "loadgen_cpu_pct": round((self_b - self_a) * 100 / window, 1),
        "events_posted": posted,
        "errors": errors,
        "trackers": len(trackers),
        "lost": lost,
        "duplicated": sum(c.dup for c in trackers),
        "reordered": sum(c.reordered for c in trackers),
        "connections_closed": closed,
    }
    for client in clients:
        client.sock.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
