"""``python -m server`` as a real process on a free port, for cluster and lifecycle tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.clients import ADMIN_KEY, JWT_SECRET
from tests.redis_server import free_port

REPO = Path(__file__).resolve().parent.parent


class ServerProcess:
    def __init__(self, env: dict[str, str] | None = None, name: str = "node") -> None:
        self.port = free_port()
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "CONFIG_FILE": os.devnull,
            "JWT_SECRET": JWT_SECRET,
            "ADMIN_API_KEYS": ADMIN_KEY,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DYNO": name,
            "LOG_LEVEL": "warning",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: a pipe nobody reads would block a chatty server.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the object)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> ServerProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server"],
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=0.5) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not answer /healthz")

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 15) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
