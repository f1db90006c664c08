"""The listening socket's backlog (``backlog`` in config.yaml): what the kernel listens with."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from server.transports.listen import listen_backlog
from tests.process import ServerProcess, running_server, wait_all


def listen_queue_limit(port: int) -> int:
    """The accept-queue limit of the socket listening on ``port``, as the kernel reports it
    (``ss``: Send-Q of a listening socket is its backlog)."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True, timeout=5
    ).stdout
    lines = out.split("\n")
    assert lines[0], f"nothing listens on {port}"
    return int(lines[0].split()[2])


@pytest.mark.parametrize(("file", "expected"), [(None, 4096), ("backlog: 1000\n", 1000)])
def test_the_server_listens_with_the_configured_backlog(
    tmp_path: Path, file: str | None, expected: int
) -> None:
    """Default 4096, not aiohttp's 128 (which overflowed in reconnect storms); config.yaml's
    ``backlog`` sets it. (This machine's somaxconn is at least 4096, else the cap applies.)"""
    cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
    env: dict[str, str | None] = {}
    if file is not None:
        config = tmp_path / "config.yaml"
        config.write_text(file)
        env["CONFIG_FILE"] = str(config)
    with running_server(env) as server:
        assert listen_queue_limit(server.port) == min(expected, cap)


@pytest.mark.parametrize("value", ["0", "-5", "70000", "lots"])
def test_a_bad_backlog_is_a_configuration_error(tmp_path: Path, value: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"backlog: {value}\n")
    server = ServerProcess({"CONFIG_FILE": str(config)}).start()
    try:
        (exited,) = wait_all([server], timeout=15)
    finally:
        server.close()
    assert exited.returncode == 2
    assert "backlog" in exited.stderr, exited.stderr
    assert "Traceback" not in exited.stderr


def test_a_backlog_over_somaxconn_is_capped_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    somaxconn = tmp_path / "somaxconn"
    somaxconn.write_text("512\n")
    with caplog.at_level(logging.WARNING, logger="server.transports.listen"):
        assert listen_backlog(4096, somaxconn) == 512
    assert "net.core.somaxconn=512" in caplog.text
    caplog.clear()
    assert listen_backlog(256, somaxconn) == 256
    assert listen_backlog(4096, tmp_path / "absent") == 4096
    assert caplog.text == ""
