"""What the fuzz tests (tests/test_fuzz_*.py) share: hypothesis settings, WebSocket frames as a
client and a server write them, and the check that nothing reached the log as an error.

Each fuzz test runs a bounded number of examples (``FUZZ_SCALE=10`` runs ten times as many, for a
longer hunt by hand), with no per-example deadline: a slow example on a busy machine is not a bug.
Examples are drawn afresh on every run (no example database is written).
"""

from __future__ import annotations

import itertools
import logging
import os
import struct

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
FUZZ_SCALE = float(os.environ.get("FUZZ_SCALE", "1"))


def fuzz_settings(examples: int) -> settings:
    """``examples`` examples (times ``FUZZ_SCALE``), no deadline, against one server per test."""
    return settings(
        max_examples=max(1, int(examples * FUZZ_SCALE)),
        deadline=None,
        database=None,
        # One server serves every example of a test: that is the point (other clients must notice
        # nothing), so the function-scoped fixtures are meant.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


def client_frame(
    opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, mask: bytes = b"\0\0\0\0"
) -> bytes:
    """A masked client-to-server frame (RFC 6455 §5.2); ``rsv`` is the RSV bits as in the first byte."""
    first = (0x80 if fin else 0) | rsv | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    repeated = (mask * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
    return header + mask + masked


def server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Parse what a server wrote: its frames as (first byte, payload), and an incomplete tail.

    Fails the test if a frame is masked (a server never masks: RFC 6455 §5.1).
    """
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while len(data) - pos >= 2:
        first, second = data[pos], data[pos + 1]
        assert not second & 0x80, f"a server frame is masked: {data[pos : pos + 16]!r}"
        length, header = second & 0x7F, 2
        if length == 126:
            header = 4
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        elif length == 127:
            header = 10
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
        if len(data) - pos < header + length:
            break
        frames.append((first, data[pos + header : pos + header + length]))
        pos += header + length
    return frames, data[pos:]


def close_code_of(payload: bytes) -> int:
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005


def assert_log_clean(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing a client sent reached the log as an error or a traceback."""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, "\n".join(f"{r.name}: {r.getMessage()}" for r in errors) + "\n" + caplog.text
    assert "Traceback" not in caplog.text, caplog.text


# --- strategies ---------------------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
masks = st.binary(min_size=4, max_size=4)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few random edits: bytes flipped, inserted, deleted, duplicated; a truncation."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "truncate", "set"]))
        at = draw(st.integers(0, len(out)))
        if kind == "flip" and at < len(out):
            out[at] ^= draw(st.integers(1, 255))
        elif kind == "set" and at < len(out):
            out[at] = draw(st.sampled_from([0x00, 0x7E, 0x7F, 0x80, 0xFE, 0xFF, 0x88, 0x89, 0x8A, 0x0]))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del out[at : at + draw(st.integers(1, 16))]
        elif kind == "duplicate":
            out[at:at] = out[at : at + draw(st.integers(1, 32))]
        elif kind == "truncate":
            del out[at:]
    return bytes(out)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at random places, as TCP may deliver it (one byte per read included)."""
    if not data:
        return []
    if draw(st.booleans()):
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=12)))
    else:
        step = draw(st.integers(1, 7))
        cuts = list(range(step, len(data), step))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]
