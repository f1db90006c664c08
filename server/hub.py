"""The hub: this process's connections, the rooms they are in, and delivery of one event to them.

Delivery is synchronous and never waits for a client: each connection writes the event's
pre-encoded frame into its own bounded buffer, and a connection whose buffer overflows is closed
(1008) while the others carry on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

from handlers.subscriptions import USER_PREFIX, user_room
from server.events import Event, EventBatch, EventId
from server.identity.auth import Identity
from server.metrics import Metrics

log = logging.getLogger(__name__)
_serials = itertools.count()

CLOSE_SLOW_CONSUMER = 1008
CLOSE_RESTART = 1012
CLOSE_KICKED = 4001
CLOSE_TOO_MANY_FOR_USER = 4008
CLOSE_RATE_LIMITED = 4429


class Connection(ABC):
    """One client connection, of either transport. Subclasses only know how to write and close."""

    transport: ClassVar[str]
    # Slots: one of these per client, 10,000s per process. ``__weakref__``: the identity lifetime
    # schedule refers to connections weakly, so a closed one is freed at once.
    __slots__ = (
        "__weakref__",
        "_burst",
        "_held",
        "_rate",
        "_refilled",
        "_resync",
        "_sent_up_to",
        "_tokens",
        "closed",
        "identity",
        "rooms",
        "serial",
        "start_position",
    )

    def __init__(self, identity: Identity, rate: float, burst: int) -> None:
        self.identity = identity
        self.serial = next(_serials)  # connection order, process-wide: the oldest has the lowest
        self.rooms: set[str] = set()
        self.closed = False
        # Live events wait here while missed events are replayed (see ``release``).
        self._held: list[Event] | None = []
        # After a replay, live events up to this id were already sent: this process's tail can
        # lag behind the history it replayed from (Redis), so they may still arrive.
        self._sent_up_to: EventId | None = None
        # A resync to send once the transport has sent its first message (see ``resync``).
        self._resync: str | None = None
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._refilled = time.monotonic()
        # Where this connection started receiving (what it resumed from, or the stream's newest
        # id at connect): its position until it answers a ping (see ``received_position``).
        self.start_position: str | None = None

    @property
    def user_id(self) -> str:
        return self.identity.user_id

    @property
    def replaying(self) -> bool:
        """Live events are held: what was delivered to the hub is not all in the socket yet."""
        return self._held is not None

    def acked_position(self) -> str | None:
        """The hub's position when the last ping this client answered was written, if any."""
        return None

    @abstractmethod
    def confirm_position(self) -> None:
        """Ping now, out of the heartbeat's turn: once answered, ``received_position`` is the
        hub's position of now (for a client resumed from a point, see ``Node.resume``)."""

    def received_position(self) -> str | None:
        """Up to where this client is known to have received (contract §7: resume without id).

        Every event delivered to the hub before a ping was written into the socket ahead of it,
        so once the client's pong arrives it has them all: the ping's position is certain.
        """
        return self.acked_position() or self.start_position

    def deliver(self, events: Sequence[Event]) -> None:
        """Send ``events`` (in id order, all addressed to this connection) in one write."""
        if self._held is not None:
            self._held.extend(events)
            return
        if self._sent_up_to is not None:
            sent_up_to = self._sent_up_to
            events = [event for event in events if event.sort_key > sent_up_to]
            if not events:
                return
            self._sent_up_to = None  # the tail is past the replay: events arrive in id order
        if not self.closed:
            self.send_events(events)

    def resync(self, reason: str) -> None:
        """Tell the client to refetch everything (contract §7's ``resync``): what it missed cannot
        be replayed. While live events are held the transport may not have sent its first message
        yet: ``release`` sends it then, first."""
        if self._held is not None:
            self._resync = reason
        elif not self.closed:
            self.send_message({"type": "resync", "data": {"reason": reason}})

    def release(self, replay: Iterable[Event], after: EventId | None) -> None:
        """Send the missed events, then the live ones held meanwhile, each once, then go live."""
        held, self._held = self._held or [], None
        reason, self._resync = self._resync, None
        if reason is not None:
            self.resync(reason)  # live now: sent at once, before anything else
        last = after
        pending = list(replay)
        if pending:
            last = pending[-1].sort_key
        for event in held:
            if last is None or event.sort_key > last:
                pending.append(event)
                last = event.sort_key
        if pending:
            self.send_replay(pending)
        self._sent_up_to = last

    def allow_message(self) -> bool:
        """Token bucket for client-to-server messages (contract: 4429 when exceeded)."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    @abstractmethod
    def send_events(self, events: Sequence[Event]) -> None:
        """Write the events' frames now, in order, in as few writes as the transport allows; never await."""

    def send_replay(self, events: Sequence[Event]) -> None:
        """Write what a reconnecting client missed. It may exceed the send buffer's bound, which
        is for live traffic: the replay is bounded by the history, and a client closed for being
        slow (1008) is replayed at least what it had not read, which is more than the bound."""
        self.send_events(events)

    @abstractmethod
    def send_message(self, message: dict[str, Any]) -> None:
        """Write a control message (connected, subscribed, error, resync...)."""

    @abstractmethod
    def close(self, code: int, reason: str) -> None:
        """Start closing; the transport calls ``Hub.remove`` once it is gone."""


class UserCounts(Mapping[str, int]):
    """Connections per user, read from the hub's ``user:`` rooms when asked (never copied)."""

    def __init__(self, rooms: dict[str, set[Connection]]) -> None:
        self._rooms = rooms

    def __getitem__(self, user_id: str) -> int:
        members = self._rooms.get(user_room(user_id))
        if not members:
            raise KeyError(user_id)
        return len(members)

    def __iter__(self) -> Iterator[str]:
        skip = len(USER_PREFIX)
        return iter([room[skip:] for room in self._rooms if room.startswith(USER_PREFIX)])

    def __len__(self) -> int:
        return sum(1 for room in self._rooms if room.startswith(USER_PREFIX))


def _log_delivered(events: Sequence[Event], connections: int) -> None:
    """One line per batch written to local sockets: an event's id can be followed here from the
    process that accepted it ("events accepted")."""
    if log.isEnabledFor(logging.INFO):  # the fields cost something; skip them when not logged
        log.info("events delivered", extra={"ids": [e.id for e in events], "connections": connections})


class Hub:
    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.rooms: dict[str, set[Connection]] = {}
        self.connections: set[Connection] = set()
        self.delivered = 0
        self.users = UserCounts(self.rooms)
        self._pending: list[Event] = []  # delivered at the next turn of the event loop
        self._loop: asyncio.AbstractEventLoop | None = None  # the first deliver's
        # The id of the last event delivered here: each connection has it, or a later event,
        # in its socket (one assignment per batch, not per connection; see received_position).
        self.position: str | None = None
        # The last events delivered here, when kept (``keep_recent``): a reconnect storm replays
        # from them instead of each client reading the shared history again (Redis).
        self.recent: deque[Event] | None = None
        self._by_transport: Counter[str] = Counter()

    def keep_recent(self, count: int) -> None:
        self.recent = deque(maxlen=count) if count > 0 else None

    def recent_since(
        self, after: EventId, rooms: Collection[str], first: EventId | None = None
    ) -> list[Event] | None:
        """The kept events after ``after`` addressed to ``rooms``, oldest first; ``None`` when
        some of the events after ``after`` may not be kept (the shared history must answer).

        ``first``: every event after it reached this hub (where the backplane's tail started).
        Every event after the first kept one is kept too (the tail delivers all, in order), so
        this is what the history would give, minus what the tail has not delivered yet: that
        reaches the client live (it is in its rooms, held, before this is read).
        """
        recent = self.recent
        if recent is None:
            return None
        full = len(recent) == recent.maxlen
        covered_from = recent[0].sort_key if recent else None
        if not full and first is not None:
            covered_from = first
        newest = recent[-1].sort_key if recent else covered_from
        if covered_from is None or newest is None or not covered_from <= after <= newest:
            return None  # older than what is kept, or newer than this tail: the history decides
        wanted = set(rooms)
        missed = []
        for event in reversed(recent):
            if event.sort_key <= after:
                break
            if not wanted.isdisjoint(event.rooms):
                missed.append(event)
        missed.reverse()
        return missed

    def add(self, conn: Connection, rooms: Iterable[str]) -> None:
        self.connections.add(conn)
        self._by_transport[conn.transport] += 1
        for room in rooms:
            self.join(conn, room)

    def remove(self, conn: Connection) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        self._by_transport[conn.transport] -= 1
        for room in list(conn.rooms):
            self.leave(conn, room)

    def join(self, conn: Connection, room: str) -> None:
        conn.rooms.add(room)
        self.rooms.setdefault(room, set()).add(conn)

    def leave(self, conn: Connection, room: str) -> None:
        conn.rooms.discard(room)
        members = self.rooms.get(room)
        if members is not None:
            members.discard(conn)
            if not members:
                del self.rooms[room]

    def deliver(self, events: Sequence[Event]) -> None:
        """Hand each event to every local connection in any of its rooms, each exactly once.

        Delivery runs once the event loop has handled everything else that is ready (one
        ``call_soon``), so that events arriving together (a batch POST, concurrent POSTs, one
        read of the Redis stream) reach each connection as one write: one system call per client
        instead of one per client and event.
        """
        if not self._pending:
            loop = self._loop
            if loop is None:  # kept: on Python 3.11 each get_running_loop() is a getpid system call
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self.flush)
        self._pending.extend(events)

    def flush(self) -> None:
        """Deliver what is pending now (before anything that must come after it, e.g. a close)."""
        events, self._pending = self._pending, []
        if events:
            self._deliver_now(events)
            self.position = events[-1].id
            if self.recent is not None:
                self.recent.extend(events)

    def _deliver_now(self, events: list[Event]) -> None:
        rooms = events[0].rooms
        if all(event.rooms == rooms for event in events):
            targets = self._targets(rooms)
            batch = EventBatch(events)
            for conn in targets:
                conn.deliver(batch)
            self.delivered += len(targets) * len(events)
            if targets:
                self.metrics.delivered(events)
                _log_delivered(events, len(targets))
            return
        per_connection: dict[Connection, list[Event]] = {}
        reached: list[Event] = []  # events some local connection was in the rooms of
        for event in events:
            targets = self._targets(event.rooms)
            if targets:
                reached.append(event)
            for conn in targets:
                if conn in per_connection:
                    per_connection[conn].append(event)
                else:
                    per_connection[conn] = [event]
        for conn, mine in per_connection.items():
            conn.deliver(mine)
            self.delivered += len(mine)
        self.metrics.delivered(reached)
        if reached:
            _log_delivered(reached, len(per_connection))

    def _targets(self, event_rooms: tuple[str, ...]) -> Collection[Connection]:
        """The connections in any of ``event_rooms``, each once.

        Always a copy: a connection closed for overflowing leaves its rooms during delivery.
        """
        rooms = self.rooms
        if len(event_rooms) == 1:
            return tuple(rooms.get(event_rooms[0], ()))
        return set().union(*(rooms.get(room, ()) for room in event_rooms))

    def by_transport(self) -> dict[str, int]:
        return {transport: count for transport, count in self._by_transport.items() if count}

    def close_oldest(self, user_id: str, keep: int, code: int, reason: str) -> int:
        """Close ``user_id``'s oldest open connections until at most ``keep`` are left."""
        members = self.rooms.get(user_room(user_id), ())
        if len(members) <= keep:
            return 0
        open_ones = sorted((conn for conn in members if not conn.closed), key=lambda conn: conn.serial)
        oldest = open_ones[: max(0, len(open_ones) - keep)]
        for conn in oldest:
            conn.close(code, reason)
        return len(oldest)

    def close_user(self, user_id: str, code: int, reason: str) -> int:
        self.flush()  # events published before the close reach the user first
        conns = list(self.rooms.get(user_room(user_id), ()))
        for conn in conns:
            conn.close(code, reason)
        return len(conns)

    def resync_all(self, reason: str) -> int:
        """Every connection is told to refetch (``Connection.resync``), after what is pending."""
        self.flush()
        connections = list(self.connections)  # a write can close one (1008), which removes it
        for conn in connections:
            conn.resync(reason)
        return len(connections)

    def close_all(self, code: int, reason: str) -> None:
        self.flush()
        for conn in list(self.connections):
            conn.close(code, reason)
