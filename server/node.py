"""The node: one process's wiring of hub, backplane and catalogue, shared by both transports."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from handlers.subscriptions import STAFF_PREFIX, staff_rooms, store_room, store_rooms, viewed_stores
from server.backplane.base import Backplane, BackplaneUnavailable, HistoryExpired, NodeReport
from server.config import Settings
from server.events import Event, EventId, OutgoingEvent, parse_event_id
from server.hub import CLOSE_KICKED, CLOSE_TOO_MANY_FOR_USER, Connection, Hub
from server.identity.auth import Authenticator, AuthError, Identity
from server.metrics import Metrics
from server.resume import ResumeBook

log = logging.getLogger(__name__)

DISCONNECT_USER = "disconnect_user"


@dataclass
class Resume:
    """What a connecting client gets before live events: a resync notice or the events it missed."""

    after: EventId | None = None
    after_id: str | None = None  # ``after`` as sent: the client's id, or the server's resume point
    by_server: bool = False  # resumed from where an earlier connection dropped (no id sent)
    missed: list[Event] = field(default_factory=list)
    resync_reason: str | None = None
    position: str | None = None  # where a client that saw nothing can resume from

    @property
    def recovered(self) -> bool:
        return self.after is not None and self.resync_reason is None


class Node:
    def __init__(self, settings: Settings, backplane: Backplane, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.name = settings.node_name
        self.backplane = backplane
        self.metrics = metrics or Metrics()
        self.hub = Hub(self.metrics)
        if backplane.shares_processes:  # the memory backplane's history is local already
            self.hub.keep_recent(settings.history.max_events)
        self.metrics.watch(self)
        # Called with every batch of events this process receives (the dashboard's tail, while open).
        self.taps: list[Callable[[Sequence[Event]], None]] = []
        self.events_accepted = 0
        self.resume_book = ResumeBook(
            backplane, self.hub, settings.history.resume_window_seconds, settings.websocket.heartbeat_seconds
        )

    async def start(self) -> None:
        await self.backplane.start(self._received, self._on_command, self.report, self._lost)
        self.resume_book.start()
        log.info(
            "node started",
            extra={"node": self.name, "backplane": self.backplane.name},
        )

    async def stop(self) -> None:
        self.resume_book.stop()
        await self.backplane.stop()

    def _received(self, events: Sequence[Event]) -> None:
        self.hub.deliver(events)
        for tap in self.taps:
            tap(events)

    def _lost(self, count: int, next_id: str) -> None:
        """Events were lost to this process (its tail fell behind the history): every client here
        may have missed some, and none can be replayed. Each is told to refetch, and goes on live."""
        self.metrics.backplane_events_lost.inc(count)
        if self.hub.recent is not None:
            self.hub.recent.clear()  # it has a hole now: replays read the shared history instead
        resynced = self.hub.resync_all("history_expired")
        log.error(
            "events lost to this process (its tail fell behind the history): clients told to resync",
            extra={"node": self.name, "lost": count, "next": next_id, "connections": resynced},
        )

    def report(self) -> NodeReport:
        hub = self.hub
        return NodeReport(
            node=self.name,
            connections=len(hub.connections),
            by_transport=hub.by_transport(),
            users=hub.users,
            events_delivered=hub.delivered,
            events_accepted=self.events_accepted,
            latency=self.metrics.latency_counts(),
        )

    # --- publishing -----------------------------------------------------------------------

    async def publish(self, events: Sequence[OutgoingEvent]) -> list[str | None]:
        """Each event's id, or ``None`` for one dropped as stale (its version is not the newest)."""
        ids = await self.backplane.publish(events)
        accepted = sum(1 for event_id in ids if event_id is not None)
        self.events_accepted += accepted
        self.metrics.accepted(events, ids)
        if log.isEnabledFor(logging.INFO):  # the fields cost something; skip them when not logged
            log.info(
                "events accepted",
                # Every id, so that one event can be followed to the processes that deliver it.
                extra={
                    "count": accepted,
                    "stale": len(ids) - accepted,
                    "types": sorted({e.type for e in events}),
                    "ids": ids,
                },
            )
        return ids

    async def disconnect_user(self, user_id: str) -> int:
        """Close every connection of ``user_id`` on every process (4001); how many there were."""
        count = await self.backplane.presence(user_id)
        await self.backplane.command({"op": DISCONNECT_USER, "userId": user_id})
        return count

    def _on_command(self, command: dict[str, Any]) -> None:
        if command.get("op") == DISCONNECT_USER:
            closed = self.hub.close_user(str(command.get("userId")), CLOSE_KICKED, "disconnected")
            if closed:
                log.info(
                    "user disconnected by admin",
                    extra={"userId": command.get("userId"), "connections": closed},
                )

    # --- connections ----------------------------------------------------------------------

    def check_capacity(self) -> None:
        """Refuse a new connection while this process is at ``websocket.max_connections`` (1013 /
        CONNECT_ERROR ``unavailable``: try again, likely on another process); existing ones stay."""
        if len(self.hub.connections) >= self.settings.websocket.max_connections:
            raise AuthError("unavailable", "this server is at its connection limit: try again later")

    async def connect(
        self,
        conn: Connection,
        rooms: Sequence[str],
        last_event_id: str | None,
        resume_without_id: bool = False,
    ) -> Resume:
        """Put ``conn`` in its rooms (live events are held) and find what it missed.

        ``resume_without_id``: the client sent no position at all, so it continues where a
        connection of its user and role dropped within the resume window, if one did (§7).
        The transport then sends its own first message and calls ``resume``.
        """
        self.hub.add(conn, rooms)
        self.backplane.mark_user(conn.user_id)
        cap = self.settings.websocket.max_connections_per_user
        closed = self.hub.close_oldest(conn.user_id, cap, CLOSE_TOO_MANY_FOR_USER, "too many connections")
        if closed:  # a reconnect loop (or a script) cannot pile up sockets for one user
            log.info("oldest connections closed", extra={"userId": conn.user_id, "connections": closed})
        resume = Resume()
        point = None
        try:
            if resume_without_id and last_event_id is None and self.resume_book.enabled:
                resume.position, point = await self.backplane.start_position(conn.user_id, conn.identity.role)
            else:
                resume.position = await self.backplane.position()
        except BackplaneUnavailable:
            resume.position = None
        if last_event_id is None and point is not None:
            last_event_id, resume.by_server = point, True
        if last_event_id is not None:
            resume.after, resume.after_id = parse_event_id(last_event_id), last_event_id
            recent = None
            if resume.after is not None:
                recent = self.hub.recent_since(resume.after, conn.rooms, self.backplane.tail_start)
            try:
                if recent is not None:
                    resume.missed = recent
                else:
                    missed, covered = await self.backplane.history(last_event_id, conn.rooms)
                    # Events after the read that reached this hub before ``conn`` joined its rooms
                    # (a read shared with clients that came earlier may have ended before that).
                    later = self.hub.recent_since(covered, conn.rooms, self.backplane.tail_start)
                    resume.missed = missed + later if later else missed
            except HistoryExpired:
                resume.resync_reason = "history_expired"
            except BackplaneUnavailable:
                resume.resync_reason = "history_unavailable"
        # Redis down: what this hub delivered last is a safe start (whatever comes after reaches
        # ``conn`` live), so a drop before its first pong still leaves a point (contract §7).
        conn.start_position = (resume.after_id if resume.recovered else resume.position) or self.hub.position
        self.resume_book.started(conn)
        log.info(
            "client connected",
            extra={
                "transport": conn.transport,
                "userId": conn.user_id,
                "role": conn.identity.role,
                "resumed": resume.recovered,
                "by_server": resume.by_server,
                "missed": len(resume.missed),
            },
        )
        return resume

    def resume(self, conn: Connection, resume: Resume) -> None:
        if resume.resync_reason is not None:
            conn.resync(resume.resync_reason)
            conn.release((), None)
        else:
            conn.release(resume.missed, resume.after)
            if resume.by_server and resume.recovered and not conn.closed:
                # Resumed from a point: until it answers a ping its position is that point, so a
                # drop before the next heartbeat would replay all of this again (contract §7).
                conn.confirm_position()

    def disconnect(self, conn: Connection, reason: str, code: int | None = None) -> None:
        """``conn`` is gone; ``code`` is how it closed (``None``: no close code, e.g. a lost network)."""
        if conn not in self.hub.connections:
            return
        self.hub.remove(conn)
        self.backplane.mark_user(conn.user_id)
        self.resume_book.ended(conn, code)
        log.info(
            "client disconnected",
            extra={"transport": conn.transport, "userId": conn.user_id, "reason": reason, "code": code},
        )

    def staff_rooms(self, identity: Identity) -> list[str]:
        """The ``staff:`` rooms the verified ``identity`` belongs in (contract §8)."""
        limit = self.settings.websocket.max_stores_per_connection
        return staff_rooms(identity.role, identity.stores, self.settings.auth.staff_roles, limit)

    def refresh(self, conn: Connection, token: str, authenticator: Authenticator) -> Identity | AuthError:
        """A fresh token in band (contract §8): the connection's new identity, or why it was
        refused (another user or role, or a token that does not verify): it is then closed (4403)."""
        try:
            identity = authenticator.refresh(conn.identity, token)
        except AuthError as exc:
            log.info(
                "connection closed: " + exc.message,
                extra={"userId": conn.user_id, "transport": conn.transport},
            )
            conn.close(exc.close_code, "refresh refused")
            return exc
        self.reidentify(conn, identity)
        authenticator.watch(conn)
        return identity

    def reidentify(self, conn: Connection, identity: Identity) -> None:
        """A refreshed token: the connection's identity, and with it its staff rooms, are replaced."""
        rooms = self.staff_rooms(identity)
        for room in [room for room in conn.rooms if room.startswith(STAFF_PREFIX)]:
            if room not in rooms:
                self.hub.leave(conn, room)
        for room in rooms:
            self.hub.join(conn, room)
        conn.identity = identity

    def subscribe(self, conn: Connection, store_id: str) -> str:
        """Join ``store:{store_id}``; the same rules as stores named at connect (SubscriptionError)."""
        store_rooms([*viewed_stores(conn.rooms), store_id], self.settings.websocket.max_stores_per_connection)
        room = store_room(store_id)
        self.hub.join(conn, room)
        return room

    def unsubscribe(self, conn: Connection, store_id: str) -> str:
        room = store_room(store_id)
        self.hub.leave(conn, room)
        return room
