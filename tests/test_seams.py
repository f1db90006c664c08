"""The private library details the server relies on (server/seams.py): the versions they were
written for, that each still exists, and that the list and the ``# SEAM:`` comments agree."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from server.seams import SEAMS, WRITTEN_FOR, check_versions, seam_exists

ROOT = Path(__file__).resolve().parent.parent
SEAM_COMMENT = re.compile(r"#\s*SEAM:\s*([A-Za-z_][\w.]*\w)")


def seam_comments() -> dict[str, list[str]]:
    """Every ``# SEAM: name`` comment in server/: name -> the files that carry it."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "server").rglob("*.py")):
        if path.name == "seams.py":
            continue
        for line in path.read_text().splitlines():
            if "SEAM:" in line:
                match = SEAM_COMMENT.search(line)
                assert match, f"{path.relative_to(ROOT)}: a SEAM comment without a name: {line.strip()}"
                found.setdefault(match.group(1), []).append(str(path.relative_to(ROOT)))
    return found


@pytest.mark.skipif(
    os.environ.get("SEAMS_IGNORE_VERSIONS") == "1",
    reason="bench/newest_releases.sh: other versions on purpose",
)
def test_the_installed_libraries_are_those_the_seams_were_written_for() -> None:
    mismatches = check_versions()
    assert not mismatches, "\n".join(str(m) for m in mismatches)


def test_requirements_pin_the_versions_the_seams_were_written_for() -> None:
    pins = dict(
        line.split("#")[0].strip().split("==", 1)
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line.split("#")[0]
    )
    for library, version in WRITTEN_FOR.items():
        assert pins.get(library) == version, (
            f"requirements.txt pins {library}=={pins.get(library)}, but the seams in server/seams.py "
            f"were written for {version}: review them, then move both together"
        )


@pytest.mark.parametrize("seam", SEAMS, ids=[seam.name for seam in SEAMS])
def test_each_seam_still_exists_in_the_installed_library(seam) -> None:
    assert seam.library in WRITTEN_FOR
    assert seam_exists(seam), (
        f"{seam.library} no longer has {seam.target}, which {seam.where} relies on ({seam.why})"
    )


def test_every_seam_comment_is_listed_and_every_listed_seam_is_marked() -> None:
    comments = seam_comments()
    listed = {seam.name: seam for seam in SEAMS}
    unlisted = sorted(set(comments) - set(listed))
    assert not unlisted, f"# SEAM: comments not listed in server/seams.py: {unlisted} ({comments})"
    for name, seam in listed.items():
        assert seam.where in comments.get(name, []), f"{seam.where} has no '# SEAM: {name}' comment"


def test_a_missing_seam_is_detected() -> None:
    """The existence check can fail: a renamed method and an instance attribute that was never set."""
    from dataclasses import replace

    real = SEAMS[0]
    assert not seam_exists(replace(real, target="socketio.async_server:AsyncServer._no_such_method"))
    assert not seam_exists(replace(real, target="engineio.async_socket:AsyncSocket.no_such_attribute"))
    assert not seam_exists(replace(real, target="no_such_module:Thing.attr"))
    assert seam_exists(replace(real, target="engineio.async_socket:AsyncSocket.queue"))  # set in __init__


def test_a_version_mismatch_names_the_library_and_both_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    import server.seams

    monkeypatch.setitem(server.seams.WRITTEN_FOR, "aiohttp", "0.0.1")
    [mismatch] = check_versions()
    message = str(mismatch)
    assert "aiohttp" in message and "0.0.1" in message and str(mismatch.installed) in message
