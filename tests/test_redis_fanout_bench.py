"""bench/redis_fanout.py, the Redis-only micro-benchmark behind the README's capacity model, runs
the server's own publish script: a short run proves it still matches the script's arguments (it
once imported names that had moved, and nothing noticed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_the_redis_fanout_benchmark_publishes_with_the_servers_script_and_every_reader_keeps_up(
    tmp_path: Path,
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server on PATH")
    out = tmp_path / "fanout.json"
    done = subprocess.run(
        [
            sys.executable,
            "bench/redis_fanout.py",
            *("--rates", "500", "--readers", "2", "--seconds", "1"),
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [point] = json.loads(out.read_text())["rows"]
    # Events were added by the script and read back by both readers. Whether they kept up is the
    # benchmark's figure, not asserted: a busy CI machine may slow them.
    assert point["readers"] == 2 and point["events_per_s"] > 0 and point["reads_per_s"] > 0
