"""Replays from what the tail read (server/backplane/recent.py): only when every event after the
client's id is held; otherwise None, and Redis decides."""

from __future__ import annotations

import time

from server.backplane.recent import RecentEvents
from server.events import Event

NOW_MS = int(time.time() * 1000)


def event(seq: int, *rooms: str, ms: int = NOW_MS) -> Event:
    return Event(f"{ms}-{seq}", "store_updated", b"{}", rooms or ("global",))


def ids(events: list[Event] | None) -> list[str] | None:
    return None if events is None else [e.id for e in events]


def test_the_events_after_the_id_for_the_rooms_in_order() -> None:
    recent = RecentEvents(max_events=100, max_age_seconds=600)
    recent.start((NOW_MS, 0))
    read = [event(1), event(2, "user:a"), event(3, "user:b"), event(4)]
    recent.read(read, read[-1].sort_key)
    assert ids(recent.missed((NOW_MS, 1), ["global", "user:a"])) == [f"{NOW_MS}-2", f"{NOW_MS}-4"]
    assert ids(recent.missed((NOW_MS, 0), ["user:b"])) == [f"{NOW_MS}-3"]
    assert ids(recent.missed((NOW_MS, 4), ["global"])) == []


def test_an_id_from_before_the_tail_started_or_after_what_it_read_is_for_redis() -> None:
    recent = RecentEvents(max_events=100, max_age_seconds=600)
    assert recent.missed((NOW_MS, 0), ["global"]) is None  # not started
    recent.start((NOW_MS, 5))
    recent.read([event(6), event(7)], (NOW_MS, 8))  # 8: a command, read too
    assert recent.missed((NOW_MS, 4), ["global"]) is None  # before the start: gaps possible
    assert recent.missed((NOW_MS, 9), ["global"]) is None  # not read yet here
    assert ids(recent.missed((NOW_MS, 8), ["global"])) == []
    assert ids(recent.missed((NOW_MS, 5), ["global"])) == [f"{NOW_MS}-6", f"{NOW_MS}-7"]


def test_once_the_oldest_are_dropped_only_ids_from_then_on_are_answered() -> None:
    recent = RecentEvents(max_events=3, max_age_seconds=600)
    recent.start((NOW_MS, 0))
    recent.read([event(n) for n in range(1, 6)], (NOW_MS, 5))  # holds 3, 4, 5
    assert recent.missed((NOW_MS, 1), ["global"]) is None  # 2 was dropped
    assert ids(recent.missed((NOW_MS, 2), ["global"])) == [f"{NOW_MS}-{n}" for n in (3, 4, 5)]


def test_a_restart_of_the_tail_forgets_what_was_held() -> None:
    recent = RecentEvents(max_events=100, max_age_seconds=600)
    recent.start((NOW_MS, 0))
    recent.read([event(1), event(2)], (NOW_MS, 2))
    recent.start((NOW_MS, 7))  # reconnected after a failure: what came between is unknown here
    assert recent.missed((NOW_MS, 1), ["global"]) is None
    assert ids(recent.missed((NOW_MS, 7), ["global"])) == []


def test_an_id_older_than_the_age_limit_is_for_redis() -> None:
    old = NOW_MS - 700_000
    recent = RecentEvents(max_events=100, max_age_seconds=600)
    recent.start((old, 0))
    recent.read([event(1, ms=old), event(1)], (NOW_MS, 1))
    assert recent.missed((old, 0), ["global"]) is None
    assert ids(recent.missed((old, 1), ["global"])) is None
