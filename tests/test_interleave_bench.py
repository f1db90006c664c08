"""bench/interleave.py, the drift-proof A/B of single-POST CPU behind the README's Redis ratio:
a short run against real servers and a real Redis, and its check that watchers got every event."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import ExternalRedis
from tests.redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("interleave", REPO / "bench" / "interleave.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["interleave"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _interleave(tmp_path: Path, *args: str) -> tuple[dict[str, dict[str, Any]], str]:
    """A short run of the tool with these servers and options: its figures (``--json``) and output."""
    cpus = sorted(os.sched_getaffinity(0))
    done = subprocess.run(
        [
            sys.executable,
            "bench/interleave.py",
            *args,
            *("--seconds", "3", "--window", "0.1", "--watchers", "2", "--python", sys.executable),
            *("--server-cpu", str(cpus[0]), "--driver-cpu", str(cpus[-1])),
            *("--logs", str(tmp_path), "--json", str(tmp_path / "figures.json")),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((tmp_path / "figures.json").read_text()), done.stdout


def test_a_short_run_measures_every_server_in_turns_and_every_watcher_gets_every_event(
    tmp_path: Path, redis_server: RedisServer | ExternalRedis
) -> None:
    if isinstance(redis_server, ExternalRedis):
        pytest.skip("empties databases of the Redis it is given: only a private one")
    figures, output = _interleave(
        tmp_path, "mem=memory", "redis=redis", "floor=floor", "--redis-url", redis_server.url
    )
    assert figures.keys() == {"mem", "redis", "floor"}
    for label, server in figures.items():
        assert server["posts"] > 0 and server["us_per_post"] > 0 and server["complete"], figures
        assert f"{label} ({server['kind']}): {server['posts']:>7} POSTs" in output
        assert f"each watcher got {server['posts']}-{server['posts']} of them, 0 twice" in output
    assert figures["mem"]["ratio"] is None  # the others are compared with the first
    assert figures["redis"]["ratio"] > 0 and figures["floor"]["median_ratio"] > 0


def test_the_node_reference_is_measured_in_turns_with_ours(tmp_path: Path) -> None:
    if not (REPO / "bench" / "node_modules" / "ws").is_dir() or shutil.which("node") is None:
        if os.environ.get("REQUIRE_BENCH_NODE") == "1":  # CI: never skipped there
            pytest.fail("node and bench/node_modules are required (REQUIRE_BENCH_NODE=1)")
        pytest.skip("needs node and bench/node_modules (npm ci in bench)")
    figures, _ = _interleave(tmp_path, "node=node-ws", "ours=memory")
    assert figures["node"]["kind"] == "node-ws" and figures["node"]["posts"] > 0
    assert figures["node"]["complete"] and figures["ours"]["complete"], figures
    assert figures["ours"]["ratio"] > 0


def test_a_watcher_that_missed_or_doubled_an_event_fails_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    tool = _tool()
    args = type(
        "Args", (), {"window": 0.25, "concurrency": 4, "watchers": 2, "server_cpu": "0", "driver_cpu": "1"}
    )

    def server(seen: list[set[int]], duplicated: int = 0) -> object:
        result = tool.Server("mem", "memory", REPO, 1, posts=3, windows=[(3000, 3)])
        for events in seen:
            watcher = tool.Watcher()
            watcher.seen, watcher.duplicated = events, duplicated
            result.watchers.append(watcher)
        return result

    assert tool.report([server([{1, 2, 3}, {1, 2, 3}])], args)["mem"]["complete"]
    assert not tool.report([server([{1, 2, 3}, {1, 3}])], args)["mem"]["complete"]
    assert not tool.report([server([{1, 2, 3}, {1, 2, 3}], duplicated=1)], args)["mem"]["complete"]
    assert "each watcher got 2-3 of them" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("servers", "error"),
    [
        (["mem=nothing"], "'mem=nothing': expected LABEL=KIND[@CHECKOUT], KIND one of memory, redis"),
        (["=memory"], "'=memory': expected LABEL=KIND[@CHECKOUT]"),
        (
            ["a=redis", "b=redis", "--redis-url", "redis://127.0.0.1:6379/0"],
            "no database -1 for redis server 2",
        ),
    ],
)
def test_a_bad_server_list_is_refused_before_anything_starts(servers: list[str], error: str) -> None:
    done = subprocess.run(
        [sys.executable, "bench/interleave.py", *servers],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and error in done.stderr, done.stderr
