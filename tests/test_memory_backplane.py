"""The in-memory backplane forgets what has expired once a minute, whatever the tables' size: a
busy single process reuses that memory instead of growing until a table holds 100,000 entries
(as it once did). Its clock is replaced here, not the process's."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from server.backplane import memory
from server.backplane.memory import SWEEP_SECONDS, MemoryBackplane
from server.config import HistorySettings
from server.events import OutgoingEvent


async def test_expired_sessions_resume_points_and_keys_are_swept_once_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [time.monotonic()]
    monkeypatch.setattr(memory, "time", SimpleNamespace(monotonic=lambda: now[0], time=time.time))
    backplane = MemoryBackplane(HistorySettings(resume_window_seconds=5), idempotency_ttl=5)
    delivered: list[Any] = []
    await backplane.start(delivered.extend, lambda _command: None, lambda: None)  # type: ignore[arg-type, return-value]

    def event(key: str) -> OutgoingEvent:
        return OutgoingEvent("store_updated", b"{}", ("store:s1",), idempotency_key=key)

    for n in range(100):
        await backplane.save_session(f"pid-{n}", {"userId": f"u{n}", "stores": []}, ttl=5)
    await backplane.save_resume_points([(f"u{n}", "customer", "1-0") for n in range(100)])
    await backplane.publish([event(f"k{n}") for n in range(100)])
    tables = (backplane._sessions, backplane._resume, backplane._idempotency)
    assert [len(table) for table in tables] == [100, 100, 100]

    now[0] += 10  # all expired, but the minute has not passed: kept until the sweep
    await backplane.publish([event("fresh")])
    assert [len(table) for table in (backplane._sessions, backplane._resume)] == [100, 100]
    assert await backplane.load_session("pid-1") is None  # expired all the same

    now[0] += SWEEP_SECONDS
    await backplane.publish([event("fresher")])
    assert len(backplane._sessions) == 0
    assert len(backplane._resume) == 0
    assert set(backplane._idempotency) == {"fresher"}  # "fresh" expired too
    assert len(delivered) == 102
