"""The official socket.io-client (npm) in Node, remote-controlled by a test (tests/node/sio_remote.js).

The Node process prints what the client sees as JSON lines and takes commands on stdin, so that
the test, in Python, can restart servers and post events between the client's steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).parent / "node"


def require_node(directory: Path = NODE_DIR, module: str = "socket.io-client") -> Path:
    """Node and the npm packages of ``directory`` (installed with ``npm ci`` once).

    Without node the test is skipped, except when REQUIRE_NODE=1 (CI), where it fails.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        if os.environ.get("REQUIRE_NODE") == "1":
            pytest.fail("node and npm are required (REQUIRE_NODE=1)")
        pytest.skip("node is not installed")
    if not (directory / "node_modules" / module).exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=directory, check=True, timeout=300)
    return directory


class NodeSioClient:
    """One socket.io-client ``io(url, options)`` in its own Node process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.seen: list[dict[str, Any]] = []  # everything it printed, in order
        self._read = 0  # how far ``next`` has consumed ``seen``
        self._arrived = asyncio.Event()
        self._seq = 0
        self._reader = asyncio.ensure_future(self._read_lines())

    @classmethod
    async def start(cls, url: str, **options: Any) -> NodeSioClient:
        require_node()
        process = await asyncio.create_subprocess_exec(
            "node",
            str(NODE_DIR / "sio_remote.js"),
            url,
            json.dumps(options),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read_lines(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.seen.append(json.loads(line))
            self._arrived.set()

    async def next(self, on: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next message of kind ``on`` (``connect``, ``event``, ...); those before it are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            while self._read < len(self.seen):
                message = self.seen[self._read]
                self._read += 1
                if message["on"] == on:
                    return message
            if self._reader.done():
                raise AssertionError(f"node exited before {on!r}: {self.seen} {await self._stderr()}")
            self._arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {on!r} within {timeout}s; saw {self.seen}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def seen_one(self, on: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first message of kind ``on`` seen at any time, before or after ``next``'s position."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.seen:
                if message["on"] == on:
                    return message
            if self._reader.done() or time.monotonic() > deadline:
                raise AssertionError(f"no {on!r}: {self.seen}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), max(0.0, deadline - time.monotonic()))

    async def events(self, count: int, timeout: float = 10.0) -> list[tuple[str, list[Any]]]:
        """The next ``count`` events, as (name, args)."""
        found = [await self.next("event", timeout) for _ in range(count)]
        return [(message["name"], message["args"]) for message in found]

    def all_events(self) -> list[tuple[str, list[Any]]]:
        return [(m["name"], m["args"]) for m in self.seen if m["on"] == "event"]

    def command(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")

    async def emit(self, event: str, data: Any) -> list[Any]:
        """Emit with an acknowledgement; the ack's arguments."""
        self._seq += 1
        seq = self._seq
        self.command(cmd="emit", seq=seq, event=event, data=data)
        while True:
            ack = await self.next("ack")
            if ack["seq"] == seq:
                assert "error" not in ack, ack
                args: list[Any] = ack["args"]
                return args

    async def _stderr(self) -> str:
        assert self.process.stderr is not None
        with contextlib.suppress(TimeoutError):
            return (await asyncio.wait_for(self.process.stderr.read(), 2)).decode(errors="replace")
        return ""

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ConnectionError):
                self.command(cmd="close")
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._reader
