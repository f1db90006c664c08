"""The lifetime of connected identities (contract §8): token expiry and session re-checks.

One heap of due times per process, checked by one task: no timer per connection, and nothing on
the delivery path. A connection is pushed when it connects (and again when it refreshes its token
or passes a re-check); entries made stale by a refresh or a close are skipped when they come due.
Entries hold a weak reference: a closed connection's memory is freed when it goes, not when its
token would have expired (bench/churn_rss.py measured up to 2,000 dead connections kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
import weakref
from typing import TYPE_CHECKING, ClassVar, Protocol

from server.background import spawn
from server.identity.sessions import ForwardedHeaders, SessionAnswer, SessionVerifier

if TYPE_CHECKING:
    from server.identity.auth import Identity

log = logging.getLogger(__name__)

CLOSE_EXPIRED = 4401  # token expired unrefreshed, or the session ended
CLOSE_FORBIDDEN = 4403
_EXPIRY, _RECHECK = 0, 1
# Re-checks come due on a grid of this many seconds, so connections made within one step are
# re-checked in one batch (and one request per credential).
RECHECK_STEP = 1.0
COMPACT_MIN = 256  # dead entries tolerated before the heap is compacted at all


class Watched(Protocol):
    """What the schedule needs of a connection (``server.hub.Connection`` is one)."""

    identity: Identity
    closed: bool
    transport: ClassVar[str]

    def close(self, code: int, reason: str) -> None: ...


class Lifetime:
    def __init__(self, sessions: SessionVerifier | None, recheck_seconds: float) -> None:
        self.sessions = sessions
        self.recheck_seconds = recheck_seconds
        self._heap: list[tuple[float, int, int, weakref.ref[Watched]]] = []
        self._order = itertools.count()  # ties: first pushed, first due (and never compare conns)
        self._dead = 0  # entries whose connection has been freed (counted by their weak references)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def watch(self, conn: Watched) -> None:
        """Schedule ``conn``'s expiry and first session re-check, as its identity says."""
        identity = conn.identity
        if identity.expires_at is not None:
            self._push(identity.expires_at, _EXPIRY, conn)
        self._schedule_recheck(conn)

    def _schedule_recheck(self, conn: Watched) -> None:
        if conn.identity.session is None or self.sessions is None or self.recheck_seconds <= 0:
            return
        due = math.ceil((time.time() + self.recheck_seconds) / RECHECK_STEP) * RECHECK_STEP
        self._push(due, _RECHECK, conn)

    def _push(self, due: float, kind: int, conn: Watched) -> None:
        if self._dead > COMPACT_MIN and self._dead * 2 > len(self._heap):
            self.compact()
        heap = self._heap
        earliest = heap[0][0] if heap else math.inf
        heapq.heappush(heap, (due, next(self._order), kind, weakref.ref(conn, self._died)))
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        elif due < earliest and self._wake is not None:
            self._wake.set()

    def _died(self, _ref: weakref.ref[Watched]) -> None:
        self._dead += 1  # only counted: called wherever a connection happens to be freed

    def compact(self) -> None:
        """Drop the entries of closed connections: done once they are half the heap, so a
        reconnect storm leaves at most as many dead entries as live ones (amortised O(1) each)."""
        self._heap = [entry for entry in self._heap if _open(entry[3])]
        heapq.heapify(self._heap)
        self._dead = 0

    async def _run(self) -> None:
        assert self._wake is not None
        wake = self._wake
        try:
            while True:
                heap = self._heap
                if not heap:
                    await wake.wait()
                    wake.clear()
                    continue
                delay = heap[0][0] - time.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), delay)
                    wake.clear()
                    continue
                self._due(time.time())
        except asyncio.CancelledError:
            raise
        except Exception:  # never leave the process without its expiry schedule silently
            log.exception("identity lifetime schedule failed")
            self._task = None

    def _due(self, now: float) -> None:
        """Close what expired; gather the re-checks due into one batch."""
        heap = self._heap
        rechecks: list[Watched] = []
        while heap and heap[0][0] <= now:
            due, _, kind, ref = heapq.heappop(heap)
            conn = ref()
            if conn is None or conn.closed:
                if conn is None:
                    self._dead = max(0, self._dead - 1)
                continue
            identity = conn.identity
            if kind == _EXPIRY:
                if identity.expires_at == due:  # else refreshed since: a later entry exists
                    _close(conn, CLOSE_EXPIRED, "token expired")
            elif identity.session is not None:
                rechecks.append(conn)
        if rechecks:
            spawn(self._recheck(rechecks))

    async def _recheck(self, conns: list[Watched]) -> None:
        """Ask the session service once per credential; close the connections whose session ended."""
        sessions = self.sessions
        assert sessions is not None
        by_key: dict[bytes, tuple[ForwardedHeaders, list[Watched]]] = {}
        for conn in conns:
            headers = conn.identity.session
            assert headers is not None
            key = sessions.key(headers)
            by_key.setdefault(key, (headers, []))[1].append(conn)
        groups = list(by_key.items())
        outcomes = await asyncio.gather(
            *(sessions.ask(headers, key) for key, (headers, _) in groups), return_exceptions=True
        )
        for (_, (_, members)), outcome in zip(groups, outcomes, strict=True):
            for conn in members:
                if conn.closed or conn.identity.session is None:
                    continue  # closed, or re-identified by a token meanwhile
                if outcome == "unauthorized":
                    _close(conn, CLOSE_EXPIRED, "session ended")
                elif outcome == "forbidden":
                    _close(conn, CLOSE_FORBIDDEN, "session forbidden")
                elif isinstance(outcome, SessionAnswer) and outcome.user_id != conn.identity.user_id:
                    _close(conn, CLOSE_EXPIRED, "session now names another user")
                else:  # still valid, or the check failed (timeout, 5xx): keep it, ask again later
                    self._schedule_recheck(conn)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def _open(ref: weakref.ref[Watched]) -> bool:
    conn = ref()
    return conn is not None and not conn.closed


def _close(conn: Watched, code: int, reason: str) -> None:
    log.info(
        "connection closed: " + reason,
        extra={"userId": conn.identity.user_id, "transport": conn.transport, "code": code},
    )
    conn.close(code, reason)
