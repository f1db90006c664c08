"""The backplane interface: orders events, gives each its id, keeps history, carries them everywhere.

Two implementations: ``MemoryBackplane`` (one process, nothing to run) and ``RedisBackplane``
(``REDIS_URL``: many processes as one). The node calls these methods and nothing else, and the
same behavioural tests run against both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.events import Event, EventId, OutgoingEvent, format_event_id, parse_event_id

# Events in id order, as many as arrived together: a connection gets them in one write.
EventSink = Callable[[Sequence[Event]], None]
CommandSink = Callable[[dict[str, Any]], None]
# How many events this process will never receive, and the id it receives again from: its tail
# fell further behind than the history (shared backplanes only). Its clients must refetch.
LostSink = Callable[[int, str], None]
# (user id, role, event id): a connection of that user and role that ended other than by the
# client's own close was last known to be receiving up to that event.
ResumePoint = tuple[str, str, str]
STALE = ""  # what an idempotency key of an event dropped as stale is stored with


class BackplaneUnavailable(Exception):
    """Delivery cannot be accepted right now. Retry after ``retry_after`` s.

    Nothing was accepted, unless ``maybe_accepted``: the backplane failed while running the
    request, so its events may still be delivered (idempotency keys make the retry safe).
    """

    def __init__(self, message: str, retry_after: int = 2, *, maybe_accepted: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.maybe_accepted = maybe_accepted


class HistoryExpired(Exception):
    """Events after the requested id are no longer (or were never) all in the history."""


@dataclass
class NodeReport:
    """What one process reports about itself, for presence and stats."""

    node: str
    connections: int = 0
    by_transport: dict[str, int] = field(default_factory=dict)
    users: Mapping[str, int] = field(default_factory=dict)
    events_delivered: int = 0
    events_accepted: int = 0
    # Delivery latency histogram: cumulative counts per bucket of server.metrics.LATENCY_BUCKETS, +Inf last.
    latency: list[float] = field(default_factory=list)


def is_recoverable(after: EventId, floor: EventId, last: EventId) -> bool:
    """Every event with an id above ``floor`` is kept, and ``last`` is the newest id handed out."""
    return floor <= after <= last


def select_missed(events: Sequence[Event], after: EventId, rooms: Collection[str]) -> list[Event]:
    """Events after ``after`` addressed to any of ``rooms`` (the history's privacy rule)."""
    wanted = set(rooms)
    return [e for e in events if e.sort_key > after and not wanted.isdisjoint(e.rooms)]


class Backplane(ABC):
    """See the module docstring. ``on_event`` runs for every event on every process, in id order."""

    name: str
    shares_processes: bool = False  # other processes take over this one's clients (leases, §7)
    tail_start: EventId | None = None  # every event after it reached ``on_event`` (shared only)

    @abstractmethod
    async def start(
        self,
        on_event: EventSink,
        on_command: CommandSink,
        report: Callable[[], NodeReport],
        on_lost: LostSink | None = None,
    ) -> None:
        """Connect and start carrying events to ``on_event`` and commands to ``on_command``;
        ``on_lost`` is told when events were lost to this process (then delivery goes on)."""

    @abstractmethod
    async def stop(self) -> None: ...

    @property
    @abstractmethod
    def ready(self) -> bool:
        """True while events can be accepted and this process is receiving them."""

    @abstractmethod
    async def publish(self, events: Sequence[OutgoingEvent]) -> list[str | None]:
        """Accept all the events or none (``BackplaneUnavailable``); return their ids in order.

        An event whose idempotency key was seen within the TTL is not published again: the id
        it got the first time is returned in its place. An event with a ``version`` not above
        the last accepted one for its ``version_key`` (earlier in the same call included) is not
        published: ``None`` in its place (and again for a repeat of its idempotency key).
        """

    @abstractmethod
    async def history(self, after: str, rooms: Collection[str]) -> tuple[list[Event], EventId]:
        """Events after ``after`` addressed to ``rooms``, oldest first, or ``HistoryExpired``;
        and the newest id the read covered (events after it are for the tail to bring)."""

    @abstractmethod
    async def position(self) -> str:
        """The id of the newest event: a client that saw nothing yet can resume from here."""

    @abstractmethod
    async def start_position(self, user_id: str, role: str) -> tuple[str, str | None]:
        """``position()``, and where a reconnect of ``user_id``/``role`` without an id resumes
        (``None``: nowhere): a resume point saved within ``history.resume_window_seconds``,
        taken (``take_resume_point``), or the older lease of another process. One round trip."""

    @abstractmethod
    async def save_resume_points(self, points: Sequence[ResumePoint]) -> None:
        """Remember each point for ``history.resume_window_seconds``, one per ended connection,
        even several of one user (one round trip for all)."""

    @abstractmethod
    async def save_leases(self, points: Sequence[ResumePoint], only_new: bool) -> None:
        """This process's live connections' positions (one each), for the others to resume them
        if it dies: per user and role, the oldest and how many connections (each reconnect that
        uses a lease takes one). ``only_new``: connections added to a user's lease (its older
        position kept); otherwise the lease is replaced. Only shared backplanes."""

    @abstractmethod
    async def drop_leases(self, users: Sequence[tuple[str, str]]) -> None:
        """These users (and roles) closed for good here: their leases must resume nobody."""

    @abstractmethod
    async def command(self, command: dict[str, Any]) -> None:
        """Run an admin command (e.g. disconnect a user) on every process, this one included."""

    @abstractmethod
    async def presence(self, user_id: str) -> int:
        """Connections of ``user_id`` on every live process."""

    @abstractmethod
    async def nodes(self) -> list[NodeReport]:
        """Every live process's report."""

    @abstractmethod
    def mark_user(self, user_id: str) -> None:
        """The local connection count of ``user_id`` changed (presence is refreshed soon)."""

    @abstractmethod
    async def save_session(self, pid: str, state: dict[str, Any], ttl: int) -> None:
        """Keep a Socket.IO session's state (its store rooms) for connection-state recovery."""

    @abstractmethod
    async def load_session(self, pid: str) -> dict[str, Any] | None: ...


# Resume points saved within this many seconds of each other belong to connections that dropped
# together (several tabs on one lost network): see ``take_resume_point``.
TOGETHER_SECONDS = 5.0
MAX_RESUME_POINTS = 64  # per user and role: a reconnect loop cannot grow them


def take_resume_point(points: list[tuple[str, float]]) -> str | None:
    """Remove and return the oldest of ``points`` (position, when saved), or ``None``.

    Each point is used by one reconnect, so a client that drops again and again replays each gap
    once, not everything since its first drop. Reconnects cannot say which tab they are: when the
    next point was saved together with the one taken, it inherits its position, so whichever tab
    comes next still gets everything it missed (at least once, contract §7)."""
    valid = [(parsed, point) for point in points if (parsed := parse_event_id(point[0])) is not None]
    points[:] = [point for _, point in sorted(valid)]
    if not points:
        return None
    position, saved = points.pop(0)
    if points and abs(points[0][1] - saved) <= TOGETHER_SECONDS:
        points[0] = (position, points[0][1])
    return position


def leases_by_user(points: Iterable[ResumePoint]) -> list[tuple[str, str, str, int]]:
    """Per user and role: the oldest position and how many connections it stands for."""
    by_user: dict[tuple[str, str], list[str]] = {}
    for user_id, role, position in points:
        by_user.setdefault((user_id, role), []).append(position)
    result = []
    for (user_id, role), positions in by_user.items():
        first = oldest(positions)
        if first is not None:
            result.append((user_id, role, first, len(positions)))
    return result


def oldest(positions: Collection[str | bytes]) -> str | None:
    """The oldest of some event ids (several tabs that dropped: each must get what it missed)."""
    best: tuple[EventId, str] | None = None
    for raw in positions:
        text = raw.decode() if isinstance(raw, bytes) else raw
        parsed = parse_event_id(text)
        if parsed is not None and (best is None or parsed < best[0]):
            best = (parsed, text)
    return best[1] if best else None


def parse_after(after: str) -> EventId:
    parsed = parse_event_id(after)
    if parsed is None:
        raise HistoryExpired(f"unknown event id {after!r}")
    return parsed


__all__ = [
    "MAX_RESUME_POINTS",
    "TOGETHER_SECONDS",
    "Backplane",
    "BackplaneUnavailable",
    "HistoryExpired",
    "NodeReport",
    "ResumePoint",
    "format_event_id",
    "is_recoverable",
    "leases_by_user",
    "oldest",
    "parse_after",
    "select_missed",
    "take_resume_point",
]
