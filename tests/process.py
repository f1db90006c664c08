"""``python -m server`` as a real process: an explicit environment, a free port, output to files.

``running_server(env)`` starts it, waits for ``/healthz`` and always kills it at the end;
``wait_all`` waits for processes expected to stop by themselves (configuration errors).
Output goes to temporary files rather than pipes, so a chatty process can never block on a
full pipe and everything it wrote can be read after it is gone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp

from tests.clients import ADMIN_KEY, JWT_SECRET
from tests.redis_server import free_port

REPO = Path(__file__).resolve().parent.parent


def server_env(env: Mapping[str, str | None] | None = None, port: int | None = None) -> dict[str, str]:
    """The whole environment of the process, built here: nothing leaks in from the test run.

    Defaults are the test keys, no config file, 127.0.0.1 and a free port; a value of ``None``
    in ``env`` removes that variable.
    """
    built: dict[str, str | None] = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "CONFIG_FILE": os.devnull,
        "JWT_SECRET": JWT_SECRET,
        "ADMIN_API_KEYS": ADMIN_KEY,
        "HOST": "127.0.0.1",
        "PORT": str(port if port is not None else free_port()),
        **(env or {}),
    }
    return {key: value for key, value in built.items() if value is not None}


@dataclass
class Exited:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class ServerProcess:
    def __init__(
        self,
        env: Mapping[str, str | None] | None = None,
        args: Sequence[str] = (),
        program: Sequence[str] = ("-m", "server"),
    ) -> None:
        self.env = server_env(env)
        self.program = list(program)  # what the interpreter runs: the server, or a bench wrapper of it
        self.args = list(args)  # after it, e.g. ["serve"]
        self.host = self.env.get("HOST", "0.0.0.0")
        self.port = int(self.env["PORT"]) if self.env.get("PORT", "").isdigit() else 3000
        # Closed by ``close``: they outlive the process, so that its output can be read after it.
        self._out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self._final: tuple[str, str] | None = None  # the output, once the files are closed

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerProcess:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, *self.program, *self.args],
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
        )
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Block until ``GET /healthz`` answers 200; fail with the process's output if it exits."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.process.returncode}:\n{self.stdout}\n{self.stderr}"
                )
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server did not answer /healthz in {timeout}s:\n{self.stderr}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait_exit(self, within: float = 10.0) -> int:
        """Wait without blocking the event loop, so the test's clients keep answering the server."""
        assert self.process is not None
        deadline = time.monotonic() + within
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"server still running {within}s later:\n{self.stderr}")
            await asyncio.sleep(0.02)
        return self.process.returncode

    def _read(self, handle: IO[bytes]) -> str:
        handle.flush()
        handle.seek(0)
        return handle.read().decode("utf-8", errors="replace")

    @property
    def stdout(self) -> str:
        return self._final[0] if self._final else self._read(self._out)

    @property
    def stderr(self) -> str:
        return self._final[1] if self._final else self._read(self._err)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def close(self) -> None:
        """Kill it if it still runs; what it wrote stays readable."""
        self.kill()
        if self._final is None:
            self._final = (self.stdout, self.stderr)
            self._out.close()
            self._err.close()


@contextmanager
def running_server(
    env: Mapping[str, str | None] | None = None,
    timeout: float = 20.0,
    program: Sequence[str] = ("-m", "server"),
) -> Iterator[ServerProcess]:
    """A server that answers ``/healthz``; killed on the way out whatever happened."""
    server = ServerProcess(env, program=program)
    try:
        server.start().wait_healthy(timeout)
        yield server
    finally:
        server.close()


def wait_all(servers: list[ServerProcess], timeout: float = 10.0) -> list[Exited]:
    """Wait for processes started together; each one's time is from its start to its exit."""
    deadline = time.monotonic() + timeout
    exited: dict[int, float] = {}
    try:
        while len(exited) < len(servers):
            for index, server in enumerate(servers):
                assert server.process is not None
                if index not in exited and server.process.poll() is not None:
                    exited[index] = time.monotonic() - server.started
            if time.monotonic() > deadline:
                running = [s for i, s in enumerate(servers) if i not in exited]
                raise AssertionError(
                    f"still running after {timeout}s: " + "\n".join(f"{s.env}:\n{s.stderr}" for s in running)
                )
            time.sleep(0.01)
        results = []
        for index, server in enumerate(servers):
            assert server.process is not None
            results.append(Exited(server.process.returncode, server.stdout, server.stderr, exited[index]))
        return results
    finally:
        for server in servers:
            server.close()


async def post_via(base: str, seq: int) -> str:
    """A store_updated numbered ``seq``, posted to the process at ``base``; its event id."""
    body = {"type": "store_updated", "data": {"storeId": "s1", "store": {}, "seq": seq}}
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/api/v1/events", json=body, headers=headers) as resp,
    ):
        answer = await resp.json()
        assert resp.status == 202, answer
        event_id: str = answer["ids"][0]
        return event_id


class RestartScene:
    """A deploy, as the client tests play it: a server on Redis that is stopped (SIGTERM) and
    started again on the same port, and a second process on the same Redis that publishes
    meanwhile. ``async with RestartScene(url) as scene``: both are up; all are closed after."""

    def __init__(self, redis_url: str, env: Mapping[str, str] | None = None) -> None:
        self.env = {"REDIS_URL": redis_url, "PORT": str(free_port()), **(env or {})}
        self.servers = [ServerProcess(self.env), ServerProcess({"REDIS_URL": redis_url})]

    @property
    def base(self) -> str:
        """The restarted server's address (the same before and after)."""
        return self.servers[0].base

    async def __aenter__(self) -> RestartScene:
        try:
            for server in self.servers:
                server.start()
            for server in self.servers:
                await asyncio.to_thread(server.wait_healthy)
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for server in self.servers:
            server.close()

    async def post(self, seq: int) -> str:
        """An event numbered ``seq``, through the publishing process; its id."""
        return await post_via(self.servers[1].base, seq)

    def stop(self) -> None:
        """SIGTERM, as a deploy sends: the server closes its clients with 1012 and exits."""
        self.servers[0].signal(signal.SIGTERM)

    async def stopped(self) -> None:
        """Until it has exited, cleanly."""
        assert await self.servers[0].wait_exit(10) == 0, self.servers[0].stderr

    async def start_again(self) -> None:
        """The same command on the same port (the stopped process's output is kept)."""
        self.servers[0].close()
        self.servers[0] = ServerProcess(self.env).start()
        await asyncio.to_thread(self.servers[0].wait_healthy)
