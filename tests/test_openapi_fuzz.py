"""Schemathesis against the live server: generated requests for every operation of
``/api/v1/openapi.json`` find no 5xx and no answer the document does not describe.

Bounded: at most 25 examples per operation and 20 s of fuzzing, on one worker.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.clients import ADMIN_KEY
from tests.process import ServerProcess

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
)


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(tmp_path: Path) -> None:
    server = ServerProcess({"LOG_LEVEL": "warning"})
    try:
        server.start().wait_healthy()
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{server.base}/api/v1/openapi.json",
                "--header",
                f"Authorization: Bearer {ADMIN_KEY}",
                "--checks",
                CHECKS,
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "25",
                "--max-time",
                "20",
                "--workers",
                "1",
                "--request-timeout",
                "5",
                "--no-color",
            ],
            cwd=tmp_path,  # its cache and reports stay out of the repository
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert "Selected: 4/4" in run.stdout and " passed" in run.stdout, run.stdout[-3000:]
        assert server.process is not None
        server.signal(signal.SIGTERM)
        server.process.wait(timeout=15)
        # Nothing it sent made the server log an unhandled error.
        for marker in ("Traceback", "Error handling request", '"level": "error"', " ERROR "):
            assert marker not in server.stderr, server.stderr[-3000:]
    finally:
        server.close()
