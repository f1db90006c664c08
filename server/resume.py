"""Resume without an id (contract §7): where a client that reconnects without a position continues.

A connection's position is certain and cheap: when the server writes a ping, every event the hub
delivered before it is already in the socket ahead of the ping, so once the client's pong arrives
it has received up to the hub's position at ping time (``Connection.received_position``; one
value per ping round, nothing per delivered event). What this module keeps, per user and role:

- **resume points**: a connection that ended other than by the client's own close or a "stop"
  code leaves its position, saved for ``history.resume_window_seconds``. A reconnect takes one
  point (the oldest), so a client that drops again and again replays each gap once; several tabs
  that drop together each get what they missed, at least once (``take_resume_point``);
- **leases** (Redis only): every ``websocket.heartbeat_seconds`` each process writes the
  positions of its live connections (per user: the oldest, and how many), so that the clients
  of a process that is killed (no code runs, nothing is saved at its end) are resumed by the
  others too; each reconnect that uses a lease takes one of its connections.

Writes are batched: everything that happens in one turn of the event loop is one round trip.
"""

from __future__ import annotations

import asyncio
import logging

from handlers.subscriptions import user_room
from server.background import spawn
from server.backplane.base import Backplane, BackplaneUnavailable, ResumePoint
from server.hub import Connection, Hub

log = logging.getLogger(__name__)

# A connection that ended with one of these is not resumed: the client's own close (1000, 1001;
# 1005 is a close frame the client sent without a code, as a browser's ``ws.close()`` does), or a
# close that means "stop" (kicked, bad query, bad token, forbidden).
STOP_CODES = frozenset({1000, 1001, 1005, 4001, 4400, 4401, 4403})
SHUTDOWN_SAVE_SECONDS = 3.0  # of the 10 s shutdown budget
SAVE_RETRY_SECONDS = 1.0  # points that could not be saved (Redis down) are tried again this often
MAX_UNSAVED_POINTS = 100_000  # kept meanwhile, at most (the oldest dropped first)


class ResumeBook:
    def __init__(self, backplane: Backplane, hub: Hub, window: int, lease_interval: float) -> None:
        self.backplane = backplane
        self.hub = hub
        self.window = window  # seconds; 0 = resume without id is off
        self.lease_interval = lease_interval
        self.closing = False  # shutting down: every connection's point is saved at once
        self._points: list[ResumePoint] = []  # connections that ended this turn
        self._new_leases: list[ResumePoint] = []  # connections that started this turn
        self._ended: list[tuple[str, str]] = []  # users (and roles) that closed for good
        self._flush_due = False
        self._retry_due = False  # points that could not be saved wait for another try
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.window > 0

    def start(self) -> None:
        if self.enabled and self.backplane.shares_processes:
            self._task = asyncio.get_running_loop().create_task(self._renew_leases())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # --- connections ---------------------------------------------------------------------------

    def started(self, conn: Connection) -> None:
        """A connection is live: add it to its user's lease here (an older position is kept)."""
        if self.enabled and self.backplane.shares_processes and conn.start_position is not None:
            self._new_leases.append((conn.user_id, conn.identity.role, conn.start_position))
            self._schedule()

    def ended(self, conn: Connection, code: int | None) -> None:
        """``conn`` left the hub; ``code`` is how it closed (``None``: no close code at all)."""
        if not self.enabled or self.closing:
            return
        if code in STOP_CODES:
            role = conn.identity.role
            if self.backplane.shares_processes and not _has_other(self.hub, conn.user_id, role):
                self._ended.append((conn.user_id, role))  # its lease must not resume anyone
                self._schedule()
            return
        position = conn.received_position()
        if position is not None:
            role = conn.identity.role
            self._points.append((conn.user_id, role, position))
            if self.backplane.shares_processes and not _has_other(self.hub, conn.user_id, role):
                self._ended.append((conn.user_id, role))  # the point replaces its (older) lease
            self._schedule()

    def _schedule(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            spawn(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # everything that ends or starts in this turn goes together
        self._flush_due = False
        points, self._points = self._points, []
        leases, self._new_leases = self._new_leases, []
        ended, self._ended = self._ended, []
        calls = []
        if points:
            calls.append(self.backplane.save_resume_points(points))
        if ended:  # before the new leases: a user who reconnected here this turn keeps its own
            calls.append(self.backplane.drop_leases(ended))
        if leases:
            calls.append(self.backplane.save_leases(leases, only_new=True))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BackplaneUnavailable):
                log.warning("could not save resume points", extra={"error": str(outcome)})
            elif isinstance(outcome, BaseException):
                log.error("saving resume points failed", exc_info=outcome)
        if points and isinstance(outcomes[0], BackplaneUnavailable):
            # Redis is down or restarting: these clients will reconnect meanwhile or soon after,
            # so the points are kept and saved again (leases are rewritten every heartbeat).
            self._points = (points + self._points)[-MAX_UNSAVED_POINTS:]
            if not self._retry_due:
                self._retry_due = True
                spawn(self._retry())

    async def _retry(self) -> None:
        await asyncio.sleep(SAVE_RETRY_SECONDS)
        self._retry_due = False
        if self._points:
            self._schedule()

    async def _renew_leases(self) -> None:
        """Every ``lease_interval``: the positions of this process's live connections."""
        while True:
            await asyncio.sleep(self.lease_interval)
            points = self.live_points()
            if points:
                try:
                    await self.backplane.save_leases(points, only_new=False)
                except BackplaneUnavailable:
                    pass  # the next round writes them again
                except Exception:
                    log.exception("renewing leases failed")

    def live_points(self) -> list[ResumePoint]:
        """Each live connection's position (several per user: each tab resumes on its own)."""
        return [
            (conn.user_id, conn.identity.role, position)
            for conn in self.hub.connections
            if (position := conn.received_position()) is not None
        ]

    async def save_all(self) -> int:
        """Shutdown: every open connection's point, saved at once before the clients are closed."""
        self.closing = True
        self.hub.flush()
        points = self.live_points()
        if not self.enabled or not points:
            return 0
        users = list({(user_id, role) for user_id, role, _ in points})
        try:
            # The leases go: they are older than the points (one heartbeat), so would win.
            async with asyncio.timeout(SHUTDOWN_SAVE_SECONDS):
                await asyncio.gather(
                    self.backplane.save_resume_points(points), self.backplane.drop_leases(users)
                )
        except (BackplaneUnavailable, TimeoutError) as exc:
            log.warning("could not save resume points at shutdown", extra={"error": repr(exc)})
            return 0
        return len(points)


def _has_other(hub: Hub, user_id: str, role: str) -> bool:
    members = hub.rooms.get(user_room(user_id), ())
    return any(conn.identity.role == role for conn in members)


__all__ = ["STOP_CODES", "ResumeBook"]
