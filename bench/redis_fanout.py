#!/usr/bin/env python3
"""Where one Redis stops: one stream, events added at R per second, N processes tailing it.

The Redis backplane (server/backplane/redis.py) adds every event to one stream with the server's
own publish script (EVALSHA: XADD MAXLEN ~, each entry counted), and every server process reads
the whole stream with XREAD COUNT 1000 BLOCK. This measures that alone, with no server and no clients: a
private redis-server (started here, pinned to one CPU, no persistence), one publisher sending
the script at rate R (events of ~300 bytes, `--batch` events per call, as single-event POSTs
make them by default), and N simulated processes, each one connection doing what the server's
tail does, on the same pipelined connection class (server/backplane/resp.py).

For each (R, N) it reports what Redis did in the window: events read per second by all readers
(R x N when they keep up), Redis's CPU (utime + stime of its process from /proc/PID/stat, in % of
one core, and µs per event read), bytes it sent (INFO stats total_net_output_bytes), and how far
behind the slowest reader was at the end. A point is "kept up" when every reader read every
event of the window and ended less than 0.5 s behind. Redis is single-threaded: at ~100 % CPU it
is saturated, whatever the readers do. The readers and the publisher run in this process, on the
other CPU: when its CPU reaches ~100 % the figure is a bound set by this client, not by Redis
(the `client CPU %` column says so).

With ``--server``, one real server process (``python -m server`` on this Redis, no clients) tails
the stream as well, and its CPU per event read is reported: what every process pays for the
events of the whole platform, whoever they are for. (It is then an N+1st reader: Redis's CPU and
bytes include its reads, the reads columns do not.)

    bench/redis_fanout.py                                  # the default grid, ~1 minute
    bench/redis_fanout.py --server --rates 1000,5000,15000,30000 --readers 1
    bench/redis_fanout.py --rates 1000,10000 --readers 1,10,50 --seconds 3
    bench/redis_fanout.py --json results/redis_fanout.json

Needs redis-server on PATH and the server's virtualenv (hiredis, redis-py): run it with the
interpreter the server uses, from the repository root or anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.backplane.redis_scripts import PUBLISH, SHA  # noqa: E402 - the server's own publish script
from server.backplane.resp import RespConnection  # noqa: E402

STREAM, FLOOR, ADDED = "rt:events", "rt:events:floor", "rt:events:added"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis(cpu: str | None) -> tuple[subprocess.Popen[bytes], int, str]:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not on PATH")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="redis-fanout-")
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", workdir, "--maxclients", "10000"]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", cpu, *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port, workdir
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start")


def start_server(url: str) -> subprocess.Popen[bytes]:
    """One real server process on this Redis, with no clients: it only tails the stream."""
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CONFIG_FILE": os.devnull,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "AUTH_INSECURE": "1",
        "REDIS_URL": url,
        "LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            time.sleep(0.5)  # its tail connects just after it listens
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("the server did not start")


class Reader:
    """One simulated server process: the tail loop of server/backplane/redis.py."""

    def __init__(self, url: str, start: str) -> None:
        self.conn = RespConnection(url, tls_verify=True, timeout=10)
        self.last = start
        self.read = 0
        self.running = True

    async def run(self) -> None:
        while self.running:
            reply: Any = await self.conn.call(
                "XREAD", "COUNT", 1000, "BLOCK", 200, "STREAMS", STREAM, self.last
            )
            for _, entries in reply or ():
                self.read += len(entries)
                self.last = entries[-1][0].decode()


def stream_ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


async def measure(
    url: str, redis_pid: int, rate: int, readers: int, seconds: float, batch: int, server_pid: int | None
) -> dict[str, Any]:
    admin = RespConnection(url, tls_verify=True, timeout=10)
    await admin.call("DEL", STREAM, FLOOR, ADDED)
    await admin.call("SCRIPT", "LOAD", PUBLISH)
    start = "0-0"
    tails = [Reader(url, start) for _ in range(readers)]
    tasks = [asyncio.create_task(t.run()) for t in tails]
    publisher = RespConnection(url, tls_verify=True, timeout=10)
    data = json.dumps({"storeId": "s1", "store": {"id": "s1", "name": "Bench store", "padding": "x" * 220}})
    one = ["store_updated", data, '["global"]', "", "", ""]  # type, data, rooms, no key, no version

    async def publish(count: int) -> None:
        calls = []
        for first in range(0, count, batch):
            n = min(batch, count - first)
            args = [10000, 86400, "rt:", *(one * n)]
            calls.append(publisher.call("EVALSHA", SHA[PUBLISH], 3, STREAM, FLOOR, ADDED, *args))
        await asyncio.gather(*calls)

    tick = 0.01
    loop = asyncio.get_running_loop()
    published = 0

    async def run_for(duration: float) -> None:
        """Publish at ``rate``, by the clock: a slow round trip is made up for in the next one."""
        nonlocal published
        t0 = loop.time()
        sent = 0
        while (now := loop.time()) - t0 < duration:
            count = min(int(rate * (now - t0)) - sent, max(batch, rate // 10))  # at most 0.1 s at once
            if count > 0:
                await publish(count)
                sent += count
                published += count
            await asyncio.sleep(tick)

    await run_for(0.5)  # warm-up: readers connected and reading
    info0 = await admin.call("INFO", "stats")
    cpu0, self0, read0, pub0 = (
        cpu_seconds(redis_pid),
        time.process_time(),
        sum(t.read for t in tails),
        published,
    )
    server0 = cpu_seconds(server_pid) if server_pid else 0.0
    t0 = loop.time()
    await run_for(seconds)
    t1 = loop.time()
    cpu1, self1, read1, pub1 = (
        cpu_seconds(redis_pid),
        time.process_time(),
        sum(t.read for t in tails),
        published,
    )
    server_cpu = cpu_seconds(server_pid) - server0 if server_pid else None
    info1 = await admin.call("INFO", "stats")
    # How far behind the slowest reader is now: compare its position with the newest entry.
    newest = await admin.call("XREVRANGE", STREAM, "+", "-", "COUNT", 1)
    newest_ms = stream_ms(newest[0][0].decode()) if newest else 0
    lag_ms = max((newest_ms - stream_ms(t.last)) for t in tails) if tails else 0
    for t in tails:
        t.running = False
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for conn in (*(t.conn for t in tails), publisher, admin):
        conn.close()

    def stat(info: bytes, name: str) -> int:
        for line in info.decode().splitlines():
            if line.startswith(name + ":"):
                return int(line.split(":")[1])
        return 0

    secs = t1 - t0
    written = pub1 - pub0
    read = read1 - read0
    out_bytes = stat(info1, "total_net_output_bytes") - stat(info0, "total_net_output_bytes")
    in_bytes = stat(info1, "total_net_input_bytes") - stat(info0, "total_net_input_bytes")
    redis_cpu = cpu1 - cpu0
    return {
        "rate": rate,
        "readers": readers,
        "batch": batch,
        "seconds": round(secs, 2),
        "events_per_s": round(written / secs),
        "reads_per_s": round(read / secs),
        "expected_reads_per_s": round(written * readers / secs),
        "redis_cpu_pct": round(100 * redis_cpu / secs, 1),
        "redis_cpu_us_per_read": round(1e6 * redis_cpu / read, 3) if read else None,
        "redis_cpu_us_per_event_written": round(1e6 * redis_cpu / written, 1) if written else None,
        "net_out_mb_per_s": round(out_bytes / secs / 1e6, 2),
        "net_in_mb_per_s": round(in_bytes / secs / 1e6, 2),
        "out_bytes_per_read": round(out_bytes / read) if read else None,
        "client_cpu_pct": round(100 * (self1 - self0) / secs, 1),
        "lag_ms_at_end": lag_ms,
        "server_cpu_pct": round(100 * server_cpu / secs, 1) if server_cpu is not None else None,
        "server_cpu_us_per_event": round(1e6 * server_cpu / written, 1) if server_cpu and written else None,
        "kept_up": read >= 0.98 * written * readers and lag_ms < 500,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| events/s (R) | readers (N) | reads/s (of R x N) | Redis CPU % | Redis µs/read | "
        "Redis µs/event written | out MB/s | bytes/read | client CPU % | slowest lag, ms | kept up | "
        "server process: CPU %, µs/event read |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['events_per_s']:,} | {r['readers']} | "
            f"{r['reads_per_s']:,} / {r['expected_reads_per_s']:,} | "
            f"{r['redis_cpu_pct']} | {r['redis_cpu_us_per_read']} | {r['redis_cpu_us_per_event_written']} | "
            f"{r['net_out_mb_per_s']} | {r['out_bytes_per_read']} | {r['client_cpu_pct']} | "
            f"{r['lag_ms_at_end']} | {'yes' if r['kept_up'] else '**no**'} | "
            + (
                f"{r['server_cpu_pct']}, {r['server_cpu_us_per_event']} |"
                if r["server_cpu_pct"] is not None
                else "- |"
            )
        )
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="100,1000,5000,20000", help="events added per second, comma list")
    ap.add_argument("--readers", default="1,10,50,200", help="simulated server processes, comma list")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured window per point")
    ap.add_argument("--batch", type=int, default=1, help="events per publish call (1 = single-event POSTs)")
    ap.add_argument("--redis-cpu", default="0", help="CPU to pin redis-server to ('' = not pinned)")
    ap.add_argument("--client-cpu", default="1", help="CPU to pin this client to ('' = not pinned)")
    ap.add_argument(
        "--server", action="store_true", help="also run one real server process tailing the stream"
    )
    ap.add_argument("--json", help="also write every figure to this file")
    args = ap.parse_args()
    if args.client_cpu:
        os.sched_setaffinity(0, {int(args.client_cpu)})
    proc, port, workdir = start_redis(args.redis_cpu or None)
    url = f"redis://127.0.0.1:{port}/0"
    rows = []
    server = start_server(url) if args.server else None
    try:
        load = os.getloadavg()[0]
        print(
            f"redis-server pid {proc.pid} on CPU {args.redis_cpu or 'any'}; load average {load:.2f}",
            flush=True,
        )
        for rate in [int(x) for x in args.rates.split(",")]:
            for readers in [int(x) for x in args.readers.split(",")]:
                row = await measure(
                    url, proc.pid, rate, readers, args.seconds, args.batch, server.pid if server else None
                )
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=15)
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(rows))
    if args.json:
        meta = {"load_average_at_start": load, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **vars(args)}
        with open(args.json, "w") as f:  # noqa: ASYNC230 - once, at the end
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    asyncio.run(main())
