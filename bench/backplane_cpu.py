#!/usr/bin/env python3
"""CPU per published event of the backplane alone: memory against Redis, no HTTP, no clients.

The ingest workload of ``bench/run`` measures a single-event POST end to end, and on this 2-vCPU
machine its figure moves by ±30 % from run to run (HTTP, ten watchers, the load generator on
the other core). This isolates what the Redis backplane adds to a publish: the publish script's
round trip and the tail's read of the event, against the memory backplane's publish.

Each round runs both, in turn, in this process (pinned to ``--cpu``): ``--concurrency`` tasks
publish ``--events`` single-event calls in all, back to back, as concurrent POSTs would; an event
counts once the backplane hands it to the hub (the ``on_event`` sink). The figure is this
process's CPU (``time.process_time``) per event, user and system, and the median of the rounds.
A third row is one ``PING`` round trip on the backplane's own connection class
(``server/backplane/resp.py``): the floor of any command, whatever it runs.

Redis: a private ``redis-server`` (free port, no persistence, pinned to ``--redis-cpu``), or
``--redis-url``.

    .venv/bin/python bench/backplane_cpu.py
    .venv/bin/python bench/backplane_cpu.py --rounds 7 --events 40000 --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop  # noqa: E402
from redis_fanout import start_redis  # noqa: E402 - the same private redis-server

from server.backplane.base import Backplane, NodeReport  # noqa: E402
from server.backplane.memory import MemoryBackplane  # noqa: E402
from server.backplane.redis import RedisBackplane  # noqa: E402
from server.backplane.resp import RespConnection  # noqa: E402
from server.config import load_settings  # noqa: E402
from server.events import Event, OutgoingEvent  # noqa: E402

EVENT = OutgoingEvent(
    "order_updated",
    b'{"orderId":"o-1042","status":"preparing","userId":"u-17","storeId":"s-3","updatedAt":"2026-11-27T04:00:00Z"}',
    ("user:u-17", "store:s-3"),
)


def _report() -> NodeReport:
    return NodeReport("backplane-cpu")  # what a process with no clients writes as its presence


async def _measure(work: Callable[[], Awaitable[None]], count: int) -> tuple[float, float]:
    """µs of user and system CPU per unit of ``work``'s ``count``."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    await work()
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return user * 1e6 / count, system * 1e6 / count


async def publishing(backplane: Backplane, events: int, concurrency: int) -> tuple[float, float]:
    handed = 0
    done = asyncio.get_running_loop().create_future()
    target = 0

    def on_event(batch: Sequence[Event]) -> None:
        nonlocal handed
        handed += len(batch)
        if handed >= target and not done.done():
            done.set_result(None)

    await backplane.start(on_event, lambda command: None, _report)

    async def publish(calls: int) -> None:
        for _ in range(calls):
            await backplane.publish([EVENT])

    async def run(total: int) -> None:
        nonlocal target, done
        target = handed + total
        done = asyncio.get_running_loop().create_future()
        await asyncio.gather(*(publish(total // concurrency) for _ in range(concurrency)))
        await done

    try:
        await run(min(2000, events))  # warm-up: connections, script cache, allocator
        return await _measure(lambda: run(events), events)
    finally:
        await backplane.stop()


async def pings(url: str, count: int, concurrency: int) -> tuple[float, float]:
    connection = RespConnection(url, tls_verify=True, timeout=5)
    await connection.call("PING")

    async def ping(calls: int) -> None:
        for _ in range(calls):
            await connection.call("PING")

    async def run() -> None:
        await asyncio.gather(*(ping(count // concurrency) for _ in range(concurrency)))

    try:
        return await _measure(run, count)
    finally:
        connection.close()


async def main(args: argparse.Namespace, url: str) -> None:
    env = {"AUTH_INSECURE": "1", "CONFIG_FILE": os.devnull}
    memory_settings = load_settings(env)
    redis_settings = load_settings({**env, "REDIS_URL": url})
    rows: dict[str, list[tuple[float, float]]] = {"memory": [], "redis": [], "ping": []}
    events = args.events - args.events % args.concurrency
    for round_ in range(args.rounds):
        memory = MemoryBackplane(memory_settings.history, memory_settings.admin.idempotency_ttl_seconds)
        rows["memory"].append(await publishing(memory, events, args.concurrency))
        rows["redis"].append(await publishing(RedisBackplane(redis_settings), events, args.concurrency))
        rows["ping"].append(await pings(url, events, args.concurrency))
        figures = ", ".join(f"{name} {sum(got[-1]):.1f}" for name, got in rows.items())
        print(f"round {round_ + 1}: µs CPU per event: {figures}", file=sys.stderr, flush=True)
    print(f"\n{events} events a round, {args.concurrency} publishing at once, {args.rounds} rounds (median)")
    print("| what | µs CPU per event | user | system |")
    print("| --- | --- | --- | --- |")
    names = {
        "memory": "publish, memory backplane",
        "redis": "publish, Redis backplane (script + tail read)",
        "ping": "one PING round trip (resp.py)",
    }
    medians = {}
    for name, got in rows.items():
        medians[name] = statistics.median(user + system for user, system in got)
        user = statistics.median(user for user, _ in got)
        system = statistics.median(system for _, system in got)
        print(f"| {names[name]} | {medians[name]:.1f} | {user:.1f} | {system:.1f} |")
    print(f"\nRedis adds {medians['redis'] - medians['memory']:.1f} µs per event to a publish.")


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50000, help="events per round and backplane")
    ap.add_argument("--concurrency", type=int, default=4, help="publishing tasks (the ingest workload's 4)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cpu", default="1", help="CPU to pin this process to ('' = not pinned)")
    ap.add_argument("--redis-cpu", default="0", help="CPU to pin the private redis-server to")
    ap.add_argument("--redis-url", help="use this Redis instead of a private one (its db is written to)")
    args = ap.parse_args()
    if args.concurrency < 1 or args.rounds < 1 or args.events < args.concurrency:
        ap.error("--concurrency and --rounds must be at least 1, and --events at least --concurrency")
    if args.cpu:
        os.sched_setaffinity(0, {int(args.cpu)})
    proc = workdir = None
    url = args.redis_url
    if url is None:
        proc, port, workdir = start_redis(args.redis_cpu or None)
        url = f"redis://127.0.0.1:{port}/0"
    try:
        uvloop.run(main(args, url))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    cli()
