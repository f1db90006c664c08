"""The recent events this process's tail has read, to replay from without asking Redis.

In a reconnect storm through Redis, every client's history was a script call returning its
missed entries, each parsed again (JSON checks, an ``Event``): with 100 missed events that was
~500 µs of CPU per connect, four times a plain connect. The tail has already read and parsed
every one of those events, in order. ``RecentEvents`` keeps the newest of them (as many as the
history keeps) and answers a replay when it can prove it holds every event after the client's
id: the id is no older than the first event it holds in full continuity, no newer than the last
it read, and within the history's age limit. Otherwise (an old id, a tail that failed, a
process that just started) it answers None and Redis decides, as before.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Collection, Sequence

from server.events import Event, EventId


class RecentEvents:
    def __init__(self, max_events: int, max_age_seconds: float) -> None:
        self._events: collections.deque[Event] = collections.deque(maxlen=max_events)
        self._max_age_ms = max_age_seconds * 1000
        self._after: EventId | None = None  # every event read after this id is held...
        self._last: EventId | None = None  # ...up to this one, the last id the tail read

    def start(self, position: EventId | None) -> None:
        """The tail (re)starts reading after ``position``: what is held before it may have gaps."""
        self._events.clear()
        self._after = self._last = position

    def read(self, events: Sequence[Event], last: EventId | None) -> None:
        """The tail read ``events`` (in id order) and everything up to ``last`` (commands too)."""
        held = self._events
        for event in events:
            if len(held) == held.maxlen:  # the oldest goes: continuity now starts at it
                self._after = held[0].sort_key
            held.append(event)
        if last is not None:
            self._last = last

    def missed(self, after: EventId, rooms: Collection[str]) -> list[Event] | None:
        """Events after ``after`` for ``rooms``, in order; None when only Redis can tell."""
        if self._after is None or self._last is None or not self._after <= after <= self._last:
            return None
        if after[0] < time.time() * 1000 - self._max_age_ms:
            return None  # the age limit is Redis's to apply
        wanted = set(rooms)
        found: list[Event] = []
        for event in reversed(self._events):  # from the newest: as many steps as events missed
            if event.sort_key <= after:
                break
            if not wanted.isdisjoint(event.rooms):
                found.append(event)
        found.reverse()
        return found
