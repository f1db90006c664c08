"""The Redis backplane (``REDIS_URL``): many processes act as one.

One Redis stream carries everything: ``XADD`` gives each event its id and order, the stream
(trimmed by length and age) is the history any process can replay from, and every process tails
it with ``XREAD BLOCK``. Admin commands (disconnect a user) travel in the same stream, so they
are ordered with events. Presence and stats are per-process hashes that expire unless the process
keeps refreshing them, so a crashed process stops being counted by itself.

Keys (``P`` is ``redis.key_prefix``; the README documents the entry format for direct publishers):

- ``P:events``: the stream; entries ``type``, ``data`` (JSON), ``rooms`` (JSON array) or ``cmd``,
  and ``n``: the entry's ordinal, the value ``P:events:added`` took when it was added (a tail
  that falls further behind than the stream is long sees that entries were trimmed unread)
- ``P:events:floor``: every event with an id above it is still in the stream, unless trimmed
- ``P:events:added``: entries ever added, to tell whether trimming has removed any
- ``P:idem:KEY``: the id an event's own idempotency key got ('' if it was stale);
  ``P:idem-header:KEY#INDEX``: the same for a request's ``Idempotency-Key`` header
- ``P:ver:TYPE:ENTITY``: the last version accepted for that entity
- ``P:resume:ROLE:USER``: sorted set, one member ``EVENT_ID|TAG`` per connection of that user and
  role that dropped (it was last known to be receiving up to EVENT_ID), scored by when it was
  saved; a reconnect without an id takes one (expires after the resume window)
- ``P:lease:ROLE:USER``: hash, process → ``POSITION|COUNT``: the oldest position of that user's
  COUNT live connections there, renewed every heartbeat interval (expires after the resume
  window); each reconnect elsewhere that uses it takes one of the COUNT
- ``P:session:PID``: a Socket.IO session's stores
- ``P:nodes`` (sorted set: node → expiry ms), ``P:node:NAME`` (stats), ``P:node:NAME:users``
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from server.backplane.base import (
    STALE,
    Backplane,
    BackplaneUnavailable,
    CommandSink,
    EventSink,
    HistoryExpired,
    LostSink,
    NodeReport,
    ResumePoint,
    is_recoverable,
    leases_by_user,
    oldest,
    parse_after,
    select_missed,
)
from server.backplane.redis_scripts import (
    COMMAND,
    DROP_LEASES,
    HISTORY,
    HISTORY_PAGE,
    POSITION,
    PUBLISH,
    SAVE_CHUNK,
    SAVE_LEASES,
    SAVE_RESUME,
    SHA,
    START_POSITION,
)
from server.backplane.resp import ReplyLost, RespConnection
from server.config import Settings
from server.events import Event, EventId, OutgoingEvent, format_event_id, parse_event_id
from server.metrics import Metrics

log = logging.getLogger(__name__)

BLOCK_MS = 2000
PRESENCE_FLUSH_SECONDS = 0.1
# Every process's counters (stats, the dashboard's rates and latency) are at most this old in Redis.
STATS_FLUSH_SECONDS = 1.0
STARTUP_WAIT_SECONDS = 2.0
# A publish waits at most this long for this process's tail to catch up (then 503, nothing accepted).
CATCH_UP_SECONDS = 5.0

HISTORY_PAGE_SIZE = 1000  # entries per XRANGE when replaying


def _id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class RedisBackplane(Backplane):
    name = "redis"
    shares_processes = True

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        config = settings.redis
        assert config.url is not None
        self.settings = settings
        self.node = settings.node_name
        self.prefix = prefix = config.key_prefix
        self.stream = f"{prefix}:events"
        self.floor_key = f"{prefix}:events:floor"
        self.added_key = f"{prefix}:events:added"
        self.key_prefix = f"{prefix}:"  # idempotency keys and versions: see OutgoingEvent
        self.resume_prefix = f"{prefix}:resume:"
        self.lease_prefix = f"{prefix}:lease:"
        # This process's field in the lease hashes: its name alone would be taken for its own by
        # the next process of the same name (a restarted dyno), which then resumed nobody.
        self.lease_field = f"{self.node}#{secrets.token_hex(4)}"
        self.resume_window_ms = settings.history.resume_window_seconds * 1000
        self._point_tags = itertools.count()  # each ended connection's point is its own member
        self.session_prefix = f"{prefix}:session:"
        self.nodes_key = f"{prefix}:nodes"
        self.node_key = self._node_key(self.node)
        self.users_key = f"{self.node_key}:users"
        self.retry_after = config.retry_after_seconds
        self.ttl_ms = int(config.presence_ttl_seconds * 1000)
        options: dict[str, Any] = {
            "socket_connect_timeout": 2,
            "socket_timeout": BLOCK_MS / 1000 + 3,
            "health_check_interval": 10,
            # Fail fast: the caller answers 503 and the service retries, so a retry here could
            # only make a request slower or publish it twice.
            "retry": Retry(NoBackoff(), 0),
        }
        if config.url.startswith("rediss://") and not config.tls_verify:
            options.update(ssl_cert_reqs="none", ssl_check_hostname=False)
        self.redis: aioredis.Redis = aioredis.from_url(config.url, **options)
        # The hot path (publish, tail) bypasses redis-py: see server/backplane/resp.py.
        # History has its own: a reconnect storm sends thousands of reads at once, pipelined on one
        # connection (redis-py's pool stops at 100 connections: the rest were told to resync).
        self._publisher, self._tailer, self._history = (
            RespConnection(config.url, tls_verify=config.tls_verify, timeout=BLOCK_MS / 1000 + 3)
            for _ in range(3)
        )
        # Entries read from Redis for replays, parsed once: after a deploy, the clients that reconnect
        # to a fresh process miss mostly the same events, and each parse (JSON checks, an Event
        # whose frames are built once, then shared) cost ~5 µs per event per client. Stream
        # entries never change; Redis still decides which ones a client gets.
        self._replayed: dict[bytes, Event] = {}
        # Publish calls sent and answered (they share one pipelined connection: answers come in
        # order), and the tail's wait for the answers of those in flight. See ``_tail``.
        self._publishes_sent = self._publishes_answered = 0
        self._answers_awaited = 0
        self._answers_waiter: asyncio.Future[None] | None = None
        # Ordinals (the ``n`` of entries): of the last entry the tail read, and of the newest this
        # process published; and its events sent but not answered yet. The stream keeps
        # ``history.max_events`` entries: a tail further behind than that would lose what was
        # trimmed before it read it. So a publish here waits while the tail would be more than half
        # of that behind (``_catch_up``): a process accepts events no faster than it delivers them.
        # If a process falls behind all the same (stopped, or starved while others publish), its
        # clients are told to resync: see ``_dispatch``.
        self._tail_n = self._published_n = self._in_flight = 0
        self._lag_limit = settings.history.max_events // 2
        self._caught_up: asyncio.Future[None] | None = None
        # Replays under way, by position: their events and the newest id they read.
        self._reads_after: dict[str, asyncio.Future[tuple[list[Event], EventId]]] = {}
        self.history_reads = 0  # reads of the stream for replays (for stats and tests)
        self._on_event: EventSink | None = None
        self._on_command: CommandSink | None = None
        self._on_lost: LostSink | None = None
        self._report: Callable[[], NodeReport] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._tail_ok = False
        self._connected = asyncio.Event()  # set once the tail has reached Redis
        self._last_read = 0.0
        self._dirty_users: set[str] = set()

    def _node_key(self, node: str) -> str:
        return f"{self.prefix}:node:{node}"

    # --- lifecycle ------------------------------------------------------------------------

    async def start(
        self,
        on_event: EventSink,
        on_command: CommandSink,
        report: Callable[[], NodeReport],
        on_lost: LostSink | None = None,
    ) -> None:
        self._on_event, self._on_command, self._report, self._on_lost = on_event, on_command, report, on_lost
        self._running = True
        self._tasks = [
            asyncio.create_task(self._tail(), name="backplane-tail"),
            asyncio.create_task(self._presence(), name="backplane-presence"),
        ]
        # Start ready when Redis answers; when it does not, start anyway (503s) and keep trying.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), STARTUP_WAIT_SECONDS)

    async def stop(self) -> None:
        self._running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=BLOCK_MS / 1000 + 1)
        self._publisher.close()
        self._tailer.close()
        self._history.close()
        with contextlib.suppress(RedisError, OSError):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self.nodes_key, self.node)
                pipe.delete(self.node_key, self.users_key)
                await pipe.execute()
        await self.redis.aclose()

    @property
    def ready(self) -> bool:
        # A tail that has not read for a while is as bad as one that failed: never deaf silently.
        return self._tail_ok and time.monotonic() - self._last_read < BLOCK_MS / 1000 + 5

    @contextlib.asynccontextmanager
    async def _reachable(self) -> AsyncIterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, self.retry_after) from None

    # --- events ---------------------------------------------------------------------------

    async def publish(self, events: Sequence[OutgoingEvent]) -> list[str | None]:
        args: list[Any] = [
            self.settings.history.max_events,
            self.settings.admin.idempotency_ttl_seconds,
            self.key_prefix,
        ]
        for event in events:
            versioned = event.version_key is not None and event.version is not None
            args += [
                event.type,
                event.data_json,
                orjson.dumps(event.rooms),
                event.idempotency_key or "",
                event.version_key if versioned else "",
                str(event.version) if versioned else "",
            ]
        count = len(events)
        if self._published_n + self._in_flight - self._tail_n + count > self._lag_limit:
            await self._catch_up(count)
        self._publishes_sent = sent = self._publishes_sent + 1
        self._in_flight += count
        try:  # what ``_reachable`` does, without a context manager on the hot path
            added, ids = await self._eval(PUBLISH, args)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, self.retry_after) from None
        finally:
            self._in_flight -= count
            self._publishes_answered = max(self._publishes_answered, sent)
            waiter = self._answers_waiter
            if waiter is not None and self._publishes_answered >= self._answers_awaited and not waiter.done():
                waiter.set_result(None)
        self._published_n = added  # answers come in order: the latest is the newest
        return [None if raw in (b"", STALE) else _id(raw) for raw in ids]

    async def _catch_up(self, count: int) -> None:
        """Wait while the entries this process added (or is adding) that its tail has not read,
        with these ``count``, are more than ``_lag_limit``. Never while the tail has read them all
        (a batch larger than the limit goes alone), nor while the tail is down."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_SECONDS
        while self._tail_ok and (ahead := self._published_n + self._in_flight - self._tail_n) > 0:
            if ahead + count <= self._lag_limit:
                return
            if self._caught_up is None:
                self._caught_up = loop.create_future()
            try:
                # Shielded: one publisher that gives up must not cancel the others' wait.
                await asyncio.wait_for(asyncio.shield(self._caught_up), deadline - loop.time())
            except TimeoutError:
                message = "this process is delivering events slower than they are posted: retry later"
                raise BackplaneUnavailable(message, self.retry_after) from None

    def _release_publishers(self) -> None:
        waiter, self._caught_up = self._caught_up, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def command(self, command: dict[str, Any]) -> None:
        async with self._reachable():
            await self._eval(COMMAND, [self.settings.history.max_events, orjson.dumps(command)])

    async def _eval(
        self,
        script: str,
        args: list[Any],
        keys: Sequence[str] | None = None,
        connection: RespConnection | None = None,
    ) -> Any:
        """Run a script (on the stream's keys unless told) by its SHA, sending its text only when
        Redis lacks it."""
        call = (connection or self._publisher).call
        if keys is None:
            keys = (self.stream, self.floor_key, self.added_key)
        try:
            return await call("EVALSHA", SHA[script], len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await call("EVAL", script, len(keys), *keys, *args)

    async def _tail(self) -> None:
        """Read the stream forever, from where this process left off; reconnect with backoff."""
        last: str | None = None
        backoff = 0.1
        loop = asyncio.get_running_loop()
        while self._running:
            try:
                if last is None:
                    last, self._tail_n = await self._anchor()
                    self.tail_start = parse_event_id(last)
                if not self._tail_ok:
                    await self._tailer.call("PING")  # ready now, not after a first XREAD's BLOCK
                    if self._connected.is_set():
                        self.metrics.backplane_reconnects.inc()
                    log.info("backplane tail connected", extra={"node": self.node, "from": last})
                    self._tail_ok, self._last_read = True, time.monotonic()
                    self._connected.set()
                reply: Any = await self._tailer.call(
                    "XREAD", "COUNT", 1000, "BLOCK", BLOCK_MS, "STREAMS", self.stream, last
                )
                self._last_read, backoff = time.monotonic(), 0.1
                for _, entries in reply or ():
                    last = self._dispatch(entries) or last
                # This process's own publishes in flight have added (or are adding) their entries:
                # read after their answers, and those entries come in one read, not one each
                # (one round trip and one write per client for several events). Other processes'
                # entries wait at most one publish round trip.
                if reply and self._publishes_answered < self._publishes_sent:
                    self._answers_awaited = self._publishes_sent
                    self._answers_waiter = loop.create_future()
                    try:
                        await self._answers_waiter
                    finally:
                        self._answers_waiter = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._running:
                    return
                if self._tail_ok or backoff == 0.1:
                    log.error("backplane tail lost: retrying", extra={"node": self.node, "error": repr(exc)})
                self._tail_ok = False
                self._release_publishers()  # a tail that is down does not hold publishing up
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _dispatch(self, entries: list[list[Any]]) -> str:
        """Hand the events read to the hub together, commands in their place; the last id read."""
        assert self._on_event is not None and self._on_command is not None
        events: list[Event] = []
        event_id = ""
        for raw_id, flat in entries:  # XREAD's reply: [id, [field, value, field, value...]]
            event_id = _id(raw_id)
            # Redis keeps fields in pairs; an entry without any is skipped as malformed below.
            fields = dict(zip(flat[::2], flat[1::2], strict=False)) if flat else {}
            # A direct publisher's entry has no ordinal: it counts one (the README's format).
            raw_n = fields.get(b"n", b"")
            n = int(raw_n) if raw_n.isdigit() and len(raw_n) < 19 else self._tail_n + 1  # INCR: < 2**63
            if n > self._tail_n + 1:
                if events:
                    self._on_event(events)
                    events = []
                self._lost(n - self._tail_n - 1, event_id)
            self._tail_n = n  # lower: the count started again (Redis lost its data), nothing skipped
            try:
                if b"cmd" in fields:
                    if events:
                        self._on_event(events)
                        events = []
                    self._on_command(orjson.loads(fields[b"cmd"]))
                else:
                    events.append(_parse_entry(event_id, fields))
            except (KeyError, ValueError, TypeError) as exc:
                log.error("skipped a malformed stream entry", extra={"id": event_id, "error": repr(exc)})
        if events:
            self.metrics.read_from_backplane(events[-1])
            self._on_event(events)
        if self._caught_up is not None:
            self._release_publishers()  # each looks again at how far behind the tail is
        return event_id

    def _lost(self, count: int, next_id: str) -> None:
        """``count`` entries before ``next_id`` were trimmed from the stream before this process
        read them: from ``next_id`` on, every entry reaches the hub again."""
        next_key = parse_event_id(next_id)
        if next_key is not None:
            self.tail_start = _just_before(next_key)
        if self._on_lost is not None:
            self._on_lost(count, next_id)

    async def _anchor(self) -> tuple[str, int]:
        """The newest id, and its ordinal (where the tail starts counting)."""
        newest, added = await self._eval(POSITION, [])
        return _id(newest), int(added)

    async def position(self) -> str:
        async with self._reachable():
            newest, _ = await self._anchor()
            return newest

    async def start_position(self, user_id: str, role: str) -> tuple[str, str | None]:
        if self.resume_window_ms <= 0:
            return await self.position(), None
        keys = (
            self.stream,
            self.floor_key,
            self.added_key,
            self._resume_key(user_id, role),
            self._lease_key(user_id, role),
        )
        async with self._reachable():
            position, points = await self._eval(
                START_POSITION, [self.resume_window_ms, self.lease_field], keys
            )
        return _id(position), oldest(points)

    def _resume_key(self, user_id: str, role: str) -> str:
        return f"{self.resume_prefix}{role}:{user_id}"

    def _lease_key(self, user_id: str, role: str) -> str:
        return f"{self.lease_prefix}{role}:{user_id}"

    async def save_leases(self, points: Sequence[ResumePoint], only_new: bool) -> None:
        if self.resume_window_ms <= 0 or not points:
            return
        leases = leases_by_user(points)
        calls = []
        for start in range(0, len(leases), SAVE_CHUNK):
            chunk = leases[start : start + SAVE_CHUNK]
            keys = [self._lease_key(user_id, role) for user_id, role, _, _ in chunk]
            args = [self.resume_window_ms, self.lease_field, "1" if only_new else "0"]
            for _, _, position, count in chunk:
                args += [position, count]
            calls.append(self._eval(SAVE_LEASES, args, keys))
        async with self._reachable():
            await asyncio.gather(*calls)

    async def drop_leases(self, users: Sequence[tuple[str, str]]) -> None:
        calls = []
        for start in range(0, len(users), SAVE_CHUNK):
            keys = [self._lease_key(user_id, role) for user_id, role in users[start : start + SAVE_CHUNK]]
            calls.append(self._eval(DROP_LEASES, [self.lease_field], keys))
        async with self._reachable():
            await asyncio.gather(*calls)

    async def save_resume_points(self, points: Sequence[ResumePoint]) -> None:
        """One script call per ``SAVE_CHUNK`` points, all sent at once (pipelined)."""
        if self.resume_window_ms <= 0 or not points:
            return
        calls = []
        for start in range(0, len(points), SAVE_CHUNK):
            chunk = points[start : start + SAVE_CHUNK]
            keys = [self._resume_key(user_id, role) for user_id, role, _ in chunk]
            members = [f"{position}|{self.lease_field}.{next(self._point_tags)}" for _, _, position in chunk]
            calls.append(self._eval(SAVE_RESUME, [self.resume_window_ms, *members], keys))
        async with self._reachable():
            await asyncio.gather(*calls)

    async def history(self, after: str, rooms: Collection[str]) -> tuple[list[Event], EventId]:
        """The events after ``after`` addressed to ``rooms``.

        Concurrent replays from one position share one read of the stream (``_read_after``), and
        each keeps what is addressed to it. In a reconnect storm thousands of clients come back
        from few positions (the same last broadcast, the same heartbeat round's ping mark): read
        once each, instead of Redis sending the same pages to every client (10,000 clients with 100
        events of 400 bytes is 400 MB, and the reads behind it timed out into resyncs).

        A read shared may have passed the stream's end before this client joined its rooms: what
        came after it (the id returned) is then only in this process's recent events, which the
        caller adds (``Node.connect``).
        """
        after_id = parse_after(after)
        read = self._reads_after.get(after)
        if read is None:
            read = asyncio.get_running_loop().create_task(self._read_after(after, after_id))
            self._reads_after[after] = read
            read.add_done_callback(self._read_done)
        # Shielded: a client that leaves while waiting must not cancel the others' read.
        events, covered = await asyncio.shield(read)
        return select_missed(events, after_id, rooms), covered

    def _read_done(self, read: asyncio.Future[tuple[list[Event], EventId]]) -> None:
        for after, task in list(self._reads_after.items()):
            if task is read:
                del self._reads_after[after]
        if not read.cancelled():
            read.exception()  # retrieved here: every waiter may have left

    async def _read_after(self, after: str, after_id: EventId) -> tuple[list[Event], EventId]:
        """Read in pages of ``HISTORY_PAGE_SIZE`` entries, at most ``history.max_events`` in all: a
        position further back than that is expired (the client resyncs), whatever Redis kept."""
        self.history_reads += 1
        budget = self.settings.history.max_events
        page = max(1, min(HISTORY_PAGE_SIZE, budget + 1))
        # One script call on the history connection (a storm's thousands share it, pipelined).
        async with self._reachable():
            reply = await self._eval(HISTORY, [f"({after}", page], connection=self._history)
        floor_raw, added, length, first, newest, entries = reply
        if floor_raw is None:
            raise HistoryExpired(after)  # the stream was lost (e.g. Redis restarted empty)
        floor = parse_event_id(_id(floor_raw))
        assert floor is not None
        if int(added or 0) > length:
            # Trimming removed entries; the newest removed one is older than the first kept.
            first_kept = parse_event_id(_id(first[0][0])) if first else None
            floor = max(floor, _just_before(first_kept) if first_kept else floor)
        last = parse_event_id(_id(newest[0][0])) if newest else floor
        assert last is not None
        if not is_recoverable(after_id, floor, last):
            raise HistoryExpired(after)
        events: list[Event] = []
        covered = after_id  # the newest id read: a short page means nothing came after it yet
        read = 0
        while True:
            read += len(entries)
            if read > budget:
                raise HistoryExpired(after)  # more than the history holds: refetch instead
            for raw_id, flat in entries:  # [id, [field, value, field, value...]]
                event = self._replayed.get(raw_id) or self._parse_replayed(raw_id, flat)
                if event is not None:
                    events.append(event)  # each reader keeps only its rooms' (``history``)
            if entries:
                covered = parse_event_id(_id(entries[-1][0])) or covered
            if len(entries) < page:
                return events, covered
            entries = await self._next_page(_id(entries[-1][0]), after, page)

    def _parse_replayed(self, raw_id: bytes, flat: list[bytes]) -> Event | None:
        """A stream entry read for a replay, as an Event kept for the next client that misses it."""
        fields = dict(zip(flat[::2], flat[1::2], strict=False))
        if b"cmd" in fields:
            return None
        try:
            event = _parse_entry(_id(raw_id), fields)
        except (KeyError, ValueError, TypeError):
            return None
        replayed = self._replayed
        replayed[raw_id] = event
        if len(replayed) > self.settings.history.max_events:
            del replayed[next(iter(replayed))]  # the oldest kept
        return event

    async def _next_page(self, last_read: str, after: str, page: int) -> Any:
        """The entries after ``last_read``; expired if trimming reached past it meanwhile."""
        async with self._reachable():
            first, entries = await self._eval(
                HISTORY_PAGE, [f"({last_read}", page], keys=(self.stream,), connection=self._history
            )
        first_kept = parse_event_id(_id(first[0][0])) if first else None
        last_read_id = parse_event_id(last_read)
        if first_kept is not None and last_read_id is not None and first_kept > last_read_id:
            raise HistoryExpired(after)  # entries right after the page read were trimmed away
        return entries

    # --- presence and stats ---------------------------------------------------------------

    def mark_user(self, user_id: str) -> None:
        self._dirty_users.add(user_id)

    async def _presence(self) -> None:
        """Refresh this process's presence: changed users often, everything every ttl/3."""
        next_full = next_stats = 0.0
        while self._running:
            try:
                now = time.monotonic()
                if now >= next_full:
                    self._dirty_users.clear()
                    await self._write_presence(full=True)
                    next_full, next_stats = now + self.ttl_ms / 3000, now + STATS_FLUSH_SECONDS
                elif self._dirty_users or now >= next_stats:
                    await self._write_presence(full=False)
                    next_stats = now + STATS_FLUSH_SECONDS
                await asyncio.sleep(PRESENCE_FLUSH_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception:
                next_full = 0.0  # write everything again once Redis is back
                await asyncio.sleep(1.0)

    async def _write_presence(self, full: bool) -> None:
        assert self._report is not None
        report = self._report()
        expires = int(time.time() * 1000) + self.ttl_ms
        async with self.redis.pipeline(transaction=True) as pipe:
            if full:
                pipe.delete(self.users_key)
                if report.users:
                    pipe.hset(self.users_key, mapping=report.users)  # type: ignore[arg-type]
            else:
                dirty, self._dirty_users = self._dirty_users, set()
                for user in dirty:
                    count = report.users.get(user, 0)
                    if count:
                        pipe.hset(self.users_key, user, count)
                    else:
                        pipe.hdel(self.users_key, user)
            pipe.hset(
                self.node_key,
                mapping={
                    "connections": report.connections,
                    "by_transport": orjson.dumps(report.by_transport),
                    "delivered": report.events_delivered,
                    "accepted": report.events_accepted,
                    "latency": orjson.dumps(report.latency),
                },
            )
            pipe.pexpire(self.users_key, self.ttl_ms)
            pipe.pexpire(self.node_key, self.ttl_ms)
            pipe.zadd(self.nodes_key, {self.node: expires})
            pipe.zremrangebyscore(self.nodes_key, "-inf", int(time.time() * 1000))
            await pipe.execute()
        if full:
            # Age limit of the history; the length limit is applied by every XADD.
            oldest_ms = int(time.time() * 1000) - self.settings.history.max_age_seconds * 1000
            await self.redis.xtrim(self.stream, minid=f"{oldest_ms}-0", approximate=True)

    async def _other_nodes(self) -> list[str]:
        """Live processes other than this one (this one's figures are read locally: fresher)."""
        names: Any = await self.redis.zrangebyscore(self.nodes_key, int(time.time() * 1000), "+inf")
        return [node for node in map(_id, names) if node != self.node]

    async def presence(self, user_id: str) -> int:
        assert self._report is not None
        local = self._report().users.get(user_id, 0)
        async with self._reachable():
            nodes = await self._other_nodes()
            if not nodes:
                return local
            async with self.redis.pipeline(transaction=False) as pipe:
                for node in nodes:
                    pipe.hget(f"{self._node_key(node)}:users", user_id)
                counts = await pipe.execute()
        return local + sum(int(count) for count in counts if count)

    async def nodes(self) -> list[NodeReport]:
        assert self._report is not None
        async with self._reachable():
            names = await self._other_nodes()
            async with self.redis.pipeline(transaction=False) as pipe:
                for node in names:
                    pipe.hgetall(self._node_key(node))
                stats = await pipe.execute()
        reports = [self._report()]
        for name, fields in zip(names, stats, strict=True):
            if fields:
                reports.append(
                    NodeReport(
                        node=name,
                        connections=int(fields.get(b"connections", 0)),
                        by_transport=orjson.loads(fields.get(b"by_transport", b"{}")),
                        events_delivered=int(fields.get(b"delivered", 0)),
                        events_accepted=int(fields.get(b"accepted", 0)),
                        latency=orjson.loads(fields.get(b"latency", b"[]")),
                    )
                )
        return reports

    # --- Socket.IO sessions for connection-state recovery ------------------------------------

    async def save_session(self, pid: str, state: dict[str, Any], ttl: int) -> None:
        async with self._reachable():
            # On every Socket.IO connect: the lean connection, not redis-py's pool (100 at most).
            await self._history.call("SET", f"{self.session_prefix}{pid}", orjson.dumps(state), "EX", ttl)

    async def load_session(self, pid: str) -> dict[str, Any] | None:
        async with self._reachable():
            raw = await self._history.call("GET", f"{self.session_prefix}{pid}")
        return orjson.loads(raw) if raw else None


def _unavailable(exc: Exception, retry_after: int) -> BackplaneUnavailable:
    """What a Redis failure means for the caller: retry later, and whether the request may have run."""
    if isinstance(exc, ReplyLost):
        message = "Redis failed while running the request"
        return BackplaneUnavailable(message, retry_after, maybe_accepted=True)
    return BackplaneUnavailable(f"Redis is unreachable ({type(exc).__name__})", retry_after)


def _parse_entry(event_id: str, fields: dict[bytes, bytes]) -> Event:
    """A stream entry → Event; malformed entries (from a direct publisher) raise ValueError."""
    data = fields[b"data"]
    orjson.loads(data)  # must be JSON: it is spliced into every client's frame as it is
    rooms = orjson.loads(fields[b"rooms"])
    if not isinstance(rooms, list) or not all(isinstance(room, str) for room in rooms):
        raise ValueError("rooms must be a JSON array of strings")
    return Event(event_id, fields[b"type"].decode(), data, tuple(rooms))


def _just_before(event_id: EventId) -> EventId:
    ms, seq = event_id
    return (ms, seq - 1) if seq > 0 else (ms - 1, 2**64 - 1)


__all__ = ["RedisBackplane", "format_event_id"]
