"""The official JavaScript socket.io-client (from the npm registry) against our server.

Runs whenever ``node`` is on PATH; CI sets REQUIRE_NODE=1 so that it can never be skipped there.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.clients import Live

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="session")
def node_client() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        if os.environ.get("REQUIRE_NODE") == "1":
            pytest.fail("node and npm are required (REQUIRE_NODE=1)")
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "socket.io-client").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300)
    return NODE_DIR


async def test_official_client_recovers_missed_events(node_client: Path, start_server, settings_for) -> None:
    live: Live = await start_server(settings_for(env={"AUTH_INSECURE": "1"}))
    process = await asyncio.create_subprocess_exec(
        "node",
        str(node_client / "recovery.js"),
        live.base,
        live.admin_key or "",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, (stdout.decode(), stderr.decode())
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    assert result["recovered"] is True and result["firstRecovered"] is False
    assert result["seqs"] == [1, 2, 3, 4, 5, 6, 7]
