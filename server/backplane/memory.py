"""The in-memory backplane: one process, nothing to install. Ids are ``ms-seq`` like Redis's."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Any

import orjson

from server.backplane.base import (
    MAX_RESUME_POINTS,
    STALE,
    Backplane,
    CommandSink,
    EventSink,
    HistoryExpired,
    LostSink,
    NodeReport,
    ResumePoint,
    is_recoverable,
    parse_after,
    select_missed,
    take_resume_point,
)
from server.config import HistorySettings
from server.events import Event, EventId, OutgoingEvent, format_event_id

SWEEP_SECONDS = 60.0
Point = tuple[str, float]  # a resume point: (event id, when saved)


def _who(user_id: str, role: str) -> str:
    return f"{user_id} {role}"  # a user id has no space (``valid_id``)


def _now_ms() -> int:
    return int(time.time() * 1000)


class MemoryBackplane(Backplane):
    name = "memory"

    def __init__(self, history: HistorySettings, idempotency_ttl: int) -> None:
        self.history_settings = history
        self.idempotency_ttl = idempotency_ttl
        # Ids handed out after a restart must not be mistaken for the old process's: the floor
        # starts at "now", so an id from before it is reported as expired (resync).
        self._last: EventId = (_now_ms(), 0)
        self._floor: EventId = self._last
        # ``_last`` as text: one string for every connection that starts at it, not one each
        # (kept by each resume point, thousands after a reconnect storm).
        self._position = format_event_id(self._last)
        self._events: deque[tuple[float, Event]] = deque()
        self._idempotency: dict[str, tuple[float, str]] = {}
        self._versions: dict[str, tuple[float, int]] = {}  # version key -> (expiry, last accepted)
        # "user role" -> [(event id, when saved)]: one per ended connection, each used once. A
        # string key, not a (user, role) tuple: thousands are kept after a reconnect storm.
        self._resume: dict[str, list[Point]] = {}
        # pid -> (expiry, its state as JSON text): one small object per session, not a dict of
        # lists of strings. Text, not orjson's bytes: those are shrunk in place from a 4 KiB
        # buffer, and each kept one pins a hole in the heap (measured: +9 MiB for 2,500).
        self._sessions: dict[str, tuple[float, str]] = {}
        self._on_event: EventSink | None = None
        self._on_command: CommandSink | None = None
        self._report: Callable[[], NodeReport] | None = None
        self._running = False
        self._sweep_at = time.monotonic() + SWEEP_SECONDS

    async def start(
        self,
        on_event: EventSink,
        on_command: CommandSink,
        report: Callable[[], NodeReport],
        on_lost: LostSink | None = None,  # never called: delivery here is part of publishing
    ) -> None:
        self._on_event, self._on_command, self._report = on_event, on_command, report
        self._running = True

    async def stop(self) -> None:
        self._running = False

    @property
    def ready(self) -> bool:
        return self._running

    def _next_id(self) -> EventId:
        ms = _now_ms()
        last_ms, last_seq = self._last
        self._last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return self._last

    async def publish(self, events: Sequence[OutgoingEvent]) -> list[str | None]:
        now = time.monotonic()
        expires = now + self.idempotency_ttl
        ids: list[str | None] = []
        fresh: list[Event] = []
        for outgoing in events:
            key = outgoing.idempotency_key
            seen = self._idempotency.get(key) if key else None
            if seen is not None and seen[0] > now:
                ids.append(seen[1] if seen[1] != STALE else None)
                continue
            version_key = outgoing.version_key
            if version_key is not None and outgoing.version is not None:
                last = self._versions.get(version_key)
                if last is not None and last[0] > now and outgoing.version <= last[1]:
                    if key:
                        self._idempotency[key] = (expires, STALE)
                    ids.append(None)
                    continue
                self._versions[version_key] = (expires, outgoing.version)
            self._position = format_event_id(self._next_id())
            event = outgoing.with_id(self._position)
            if key:
                self._idempotency[key] = (expires, event.id)
            ids.append(event.id)
            fresh.append(event)
        for event in fresh:
            self._events.append((now, event))
        self._trim(now)
        assert self._on_event is not None
        if fresh:
            self._on_event(fresh)
        return ids

    def _trim(self, now: float) -> None:
        settings = self.history_settings
        oldest_allowed = now - settings.max_age_seconds
        events = self._events
        while events and (len(events) > settings.max_events or events[0][0] < oldest_allowed):
            self._floor = events.popleft()[1].sort_key
        if now >= self._sweep_at:
            self._expire(now)

    def _expire(self, now: float) -> None:
        """Forget what has expired, once a minute (on a publish or a history read): each table
        holds at most what a minute and its time to live add, and a busy process reuses that
        memory rather than growing (it once waited for 100,000 entries in one of them)."""
        self._sweep_at = now + SWEEP_SECONDS

        self._idempotency = {k: v for k, v in self._idempotency.items() if v[0] > now}
        self._sessions = {k: v for k, v in self._sessions.items() if v[0] > now}
        self._versions = {k: v for k, v in self._versions.items() if v[0] > now}
        for who in list(self._resume):
            self._resume_points(who, now)

    async def history(self, after: str, rooms: Collection[str]) -> tuple[list[Event], EventId]:
        after_id = parse_after(after)
        self._trim(time.monotonic())
        if not is_recoverable(after_id, self._floor, self._last):
            raise HistoryExpired(after)
        return select_missed([event for _, event in self._events], after_id, rooms), self._last

    async def position(self) -> str:
        return self._position

    async def start_position(self, user_id: str, role: str) -> tuple[str, str | None]:
        who = _who(user_id, role)
        points = self._resume_points(who, time.monotonic())
        point = take_resume_point(points)
        if not points:
            self._resume.pop(who, None)
        return self._position, point

    def _resume_points(self, who: str, now: float) -> list[Point]:
        """The points of ``who`` saved within the window (older ones are forgotten)."""
        points = self._resume.get(who)
        if points is None:
            return []
        since = now - self.history_settings.resume_window_seconds
        points[:] = [point for point in points if point[1] > since]
        if not points:
            del self._resume[who]
        return points

    async def save_resume_points(self, points: Sequence[ResumePoint]) -> None:
        if self.history_settings.resume_window_seconds <= 0:
            return
        now = time.monotonic()
        for user_id, role, position in points:
            saved = self._resume.get(who := _who(user_id, role))
            if saved is None:
                self._resume[who] = [(position, now)]  # sized to its one point
            else:
                saved.append((position, now))
                del saved[:-MAX_RESUME_POINTS]

    async def save_leases(self, points: Sequence[ResumePoint], only_new: bool) -> None:
        """One process: nobody else could take its clients over."""

    async def drop_leases(self, users: Sequence[tuple[str, str]]) -> None:
        """One process: no leases."""

    async def command(self, command: dict[str, Any]) -> None:
        assert self._on_command is not None
        self._on_command(command)
        await asyncio.sleep(0)

    async def presence(self, user_id: str) -> int:
        assert self._report is not None
        return self._report().users.get(user_id, 0)

    async def nodes(self) -> list[NodeReport]:
        assert self._report is not None
        return [self._report()]

    def mark_user(self, user_id: str) -> None:
        """Presence is read from the hub directly: nothing to refresh."""

    async def save_session(self, pid: str, state: dict[str, Any], ttl: int) -> None:
        self._sessions[pid] = (time.monotonic() + ttl, orjson.dumps(state).decode())

    async def load_session(self, pid: str) -> dict[str, Any] | None:
        entry = self._sessions.get(pid)
        if entry is None or entry[0] < time.monotonic():
            return None
        state: dict[str, Any] = orjson.loads(entry[1])
        return state
