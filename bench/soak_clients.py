"""The soak's clients, publisher and bookkeeping (``bench/soak.py`` runs them).

Every client keeps the ids it received and the stretches of time it is owed every event of its
rooms (its *coverage*). Event ids are Redis stream ids (``ms-seq``, the milliseconds of Redis's
clock, which is this machine's), so an event whose id's milliseconds are later than the moment a
client saw its ``connected`` frame was added to the stream after that client was in its rooms:
the client is owed it. A client that sends its last id when it reconnects stays owed everything;
a ``resync`` (or a Socket.IO recovery the server declined) tells the client to refetch, so the
stretch before it ends there and a new one starts. Hook-mode clients (no id, as the seed hook)
are owed everything from their first connect: the contract's §7 resumes them server-side.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
from wsclient import EngineIO, HandshakeError, RawWebSocket, connect_ws

WS_KINDS = ("ws-id", "ws-hook")
SIO_KINDS = ("sio-id", "sio-pid", "sio-hook")
KINDS = WS_KINDS + SIO_KINDS
WITH_ID = ("ws-id", "sio-id", "sio-pid")
HOOK_ATTEMPTS = 5  # the seed hook's maxReconnectAttempts


def id_key(event_id: str) -> int:
    """A stream id as one comparable integer."""
    ms, _, seq = event_id.partition("-")
    return int(ms) * 1_000_000 + int(seq or 0)


def now_key() -> int:
    """Every event with a greater key was added to the stream after this moment."""
    return int(time.time() * 1000) * 1_000_000 + 999_999


@dataclass
class Client:
    kind: str
    index: int
    token: str
    store: str
    last_id: str | None = None  # the id sent on reconnect (id kinds)
    pid: str | None = None  # Socket.IO private session id (sio-pid)
    coverage: list[list[int | None]] = field(default_factory=list)  # [after, through or None]
    seen: set[int] = field(default_factory=set)
    duplicates: int = 0
    connects: int = 0
    drops: int = 0
    failures: int = 0
    resyncs: int = 0
    fresh_restarts: int = 0  # an id kind reconnecting without an id (it had none yet), or declined
    resumed_flags: Counter[str] = field(default_factory=Counter)  # hook kinds: connected.resumed
    gave_up: int = 0
    history: list[str] = field(default_factory=list)  # what happened to it, for short_clients
    failure_reasons: Counter[str] = field(default_factory=Counter)
    close_codes: Counter[str] = field(default_factory=Counter)
    connected: bool = False
    socket: RawWebSocket | None = None
    _last_seen: int = 0

    def note(self, what: str) -> None:
        self.history.append(f"{time.time():.3f} {what}")
        if len(self.history) > 60:
            del self.history[:30]

    @property
    def user(self) -> str:
        return f"soak-{self.index}"

    @property
    def has_id(self) -> bool:
        return self.kind in WITH_ID

    def start_coverage(self) -> None:
        """From now on this client is owed every event of its rooms (a fresh start)."""
        if self.coverage and self.coverage[-1][1] is None:
            self.coverage[-1][1] = max(self._last_seen, self.coverage[-1][0] or 0)
        self.coverage.append([now_key(), None])

    def event(self, event_id: str) -> None:
        key = id_key(event_id)
        if key in self.seen:
            self.duplicates += 1
        else:
            self.seen.add(key)
        self._last_seen = max(self._last_seen, key)
        self.last_id = event_id

    def owed(self, key: int) -> bool:
        return any(
            after is not None and key > after and (to is None or key <= to) for after, to in self.coverage
        )


@dataclass
class Run:
    """What every client and the publisher share."""

    host: str
    port: int
    life: tuple[float, float]
    churning: bool = True
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    settle: asyncio.Event = field(default_factory=asyncio.Event)
    last_receipt: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)


def reconnect_delay(client: Client, attempt: int) -> float:
    """The hook: 3 s, 6 s, 12 s … capped at 30 s. Others: socket.io-client's defaults (1 s doubling
    to 5 s, ±50 %)."""
    if client.kind.endswith("-hook"):
        return min(3.0 * 2**attempt, 30.0)
    base = min(1.0 * 2**attempt, 5.0)
    return base * random.uniform(0.5, 1.5)


async def open_plain(run: Run, client: Client) -> RawWebSocket:
    query = {"token": client.token, "storeId": client.store}
    if client.kind == "ws-hook":
        query = {"userId": client.user, "role": "customer", **query}
    sent_id = client.last_id if client.kind == "ws-id" else None
    if sent_id:
        query["lastEventId"] = sent_id
    ws = await connect_ws(run.host, run.port, "/api/ws?" + urlencode(query))
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_text(text: str) -> None:
        message = orjson.loads(text)
        if "id" in message:
            client.event(message["id"])
            run.last_receipt = time.monotonic()
        elif message.get("type") == "connected":
            data = message.get("data") or {}
            client.note(f"connected sent={sent_id} data={data.get('lastEventId')} last={client.last_id}")
            if client.kind == "ws-hook":
                client.resumed_flags[str(data.get("resumed", "absent"))] += 1
            if not client.coverage or (client.kind == "ws-id" and not sent_id):
                if client.coverage:
                    client.fresh_restarts += 1
                client.start_coverage()
            if client.kind == "ws-id" and not client.last_id:
                client.last_id = data.get("lastEventId")  # the stream position: resume from there
            if not ready.done():
                ready.set_result(None)
        elif message.get("type") == "resync":
            client.note(f"resync {message.get('data')}")
            client.resyncs += 1
            client.start_coverage()

    ws.on_text = on_text
    _watch_close(ws, client, ready)
    ws.start()
    await _ready(ws, ready)
    return ws


async def open_sio(run: Run, client: Client) -> RawWebSocket:
    auth: dict[str, Any] = {"token": client.token, "stores": [client.store]}
    sent_pid = None
    if client.kind == "sio-id" and client.last_id:
        auth["lastEventId"] = client.last_id
    if client.kind == "sio-pid" and client.pid and client.last_id:
        auth["pid"], auth["offset"] = client.pid, client.last_id  # as socket.io-client sends them
        sent_pid = client.pid
    ws = await connect_ws(run.host, run.port, "/socket.io/?EIO=4&transport=websocket")
    eio = EngineIO(ws, auth)
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_connect(data: dict[str, Any]) -> None:
        client.note(f"connected auth={ {k: v for k, v in auth.items() if k != 'token'} } got={data}")
        client.pid = data.get("pid")
        resuming = "lastEventId" in auth or sent_pid is not None
        if sent_pid is not None and client.pid != sent_pid:
            resuming = False  # socket.io-client: socket.recovered is false, the app refetches
        if not client.coverage or (client.has_id and not resuming):
            if client.coverage:
                client.fresh_restarts += 1
            client.start_coverage()
        if not ready.done():
            ready.set_result(None)

    def on_connect_error(data: Any) -> None:
        if not ready.done():
            ready.set_exception(ConnectionError(f"CONNECT_ERROR {data}"))

    def on_event(name: str, args: list[Any]) -> None:
        if name == "resync":
            client.note(f"resync {args}")
            client.resyncs += 1
            client.start_coverage()
        elif args and isinstance(args[-1], str):
            client.event(args[-1])
            run.last_receipt = time.monotonic()

    _watch_close(ws, client, ready)
    eio.on_connect, eio.on_connect_error, eio.on_event = on_connect, on_connect_error, on_event
    ws.start()
    await _ready(ws, ready)
    return ws


async def _ready(ws: RawWebSocket, ready: asyncio.Future[None]) -> None:
    try:
        await asyncio.wait_for(ready, 10)
    except BaseException:
        ws.drop()
        raise


def _watch_close(ws: RawWebSocket, client: Client, ready: asyncio.Future[None]) -> None:
    def on_close(code: int | None) -> None:
        client.note(f"closed {code} last={client.last_id}")
        client.connected = False
        client.close_codes[str(code) if code is not None else "none"] += 1
        if not ready.done():
            ready.set_exception(ConnectionError(f"closed {code} before connecting"))

    ws.on_close = on_close


async def client_loop(run: Run, client: Client, start_delay: float) -> None:
    """Connect, stay a while, vanish without a close, come back: until the run finishes."""
    await asyncio.sleep(start_delay)
    attempt = 0
    while not run.finished.is_set():
        opener = open_plain if client.kind in WS_KINDS else open_sio
        try:
            ws = await opener(run, client)
        except (HandshakeError, OSError, TimeoutError, ConnectionError) as exc:
            client.failures += 1
            client.note(f"failed {exc!r}")
            at = int(time.monotonic() - run.started)
            client.failure_reasons[f"{type(exc).__name__}: {str(exc)[:60]} @{at - at % 5}s"] += 1
            attempt += 1
            if client.kind.endswith("-hook") and attempt >= HOOK_ATTEMPTS:
                # The hook stops after 5 attempts; the user reloads the page later (a refetch).
                client.gave_up += 1
                attempt = 0
                await asyncio.sleep(30)
                client.start_coverage()
                continue
            await asyncio.sleep(reconnect_delay(client, attempt - 1))
            continue
        attempt = 0
        client.connects += 1
        client.connected, client.socket = True, ws
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        previous = ws.on_close

        def on_close(code: int | None, previous: Any = previous, closed: Any = closed) -> None:
            previous(code)
            if not closed.done():
                closed.set_result(None)

        ws.on_close = on_close
        if ws.closed:
            closed.set_result(None)
        if not closed.done() and not run.settle.is_set():
            settling = asyncio.ensure_future(run.settle.wait())
            await asyncio.wait({closed, settling}, timeout=random.uniform(*run.life))
            settling.cancel()
            if not closed.done() and not run.settle.is_set():
                client.drops += 1
                ws.drop()
                await closed
        if run.settle.is_set() and not closed.done():
            finished = asyncio.ensure_future(run.finished.wait())
            await asyncio.wait({closed, finished}, return_when=asyncio.FIRST_COMPLETED)
            finished.cancel()
        if run.finished.is_set():
            break
        await asyncio.sleep(reconnect_delay(client, 0))


# --- the publisher --------------------------------------------------------------------------


@dataclass
class Posted:
    key: int
    audience: str  # "user", "store" or "global"
    target: str


@dataclass
class Publisher:
    base: str
    admin_key: str
    users: list[str]
    stores: list[str]
    accepted: list[Posted] = field(default_factory=list)
    by_type: Counter[str] = field(default_factory=Counter)
    posts: int = 0
    refused_503: int = 0
    rate_limited_429: int = 0
    retries: int = 0
    other_answers: Counter[str] = field(default_factory=Counter)  # proxy 502/504, resets ...
    given_up: int = 0
    in_flight: int = 0
    serial: int = 0

    def next_event(self) -> tuple[dict[str, Any], str, str]:
        self.serial += 1
        n = self.serial
        roll = random.random()
        if roll < 0.5:
            user = random.choice(self.users)
            data = {"orderId": f"o{n}", "order": {"userId": user, "status": "preparing", "n": n}}
            return {"type": "order_updated", "data": data}, "user", user
        store = random.choice(self.stores)
        if roll < 0.95:
            data = {"storeId": store, "product": {"id": f"p{n}", "price": n % 1000}}
            return {"type": "product_updated", "data": data}, "store", store
        return {"type": "store_updated", "data": {"storeId": store, "store": {"open": True}}}, "global", ""

    async def post(self, http: aiohttp.ClientSession, body: Any, key: str) -> list[str | None] | None:
        """POST until accepted, retrying refusals and lost answers with the same key (≤ 60 s)."""
        headers = {"Authorization": f"Bearer {self.admin_key}", "Idempotency-Key": key}
        deadline = time.monotonic() + 60
        first = True
        while time.monotonic() < deadline:
            if not first:
                self.retries += 1
            first = False
            self.posts += 1
            wait = 0.5
            try:
                async with http.post(f"{self.base}/api/v1/events", json=body, headers=headers) as resp:
                    if resp.status == 202:
                        ids: list[str | None] = (await resp.json())["ids"]
                        return ids
                    if resp.status == 503:
                        self.refused_503 += 1
                    elif resp.status == 429:
                        self.rate_limited_429 += 1
                    else:
                        self.other_answers[str(resp.status)] += 1
                        if 400 <= resp.status < 500:
                            raise RuntimeError(f"POST refused {resp.status}: {await resp.text()}")
                    wait = float(resp.headers.get("Retry-After", "0.5") or 0.5)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.other_answers[type(exc).__name__] += 1
            await asyncio.sleep(min(wait, 2.0))
        self.given_up += 1
        return None

    async def publish_one(self, http: aiohttp.ClientSession) -> None:
        body, audience, target = self.next_event()
        self.in_flight += 1
        try:
            ids = await self.post(http, body, uuid.uuid4().hex)
        finally:
            self.in_flight -= 1
        if ids and ids[0] is not None:
            self.accepted.append(Posted(id_key(ids[0]), audience, target))
            self.by_type[body["type"]] += 1

    async def run(self, http: aiohttp.ClientSession, rate: float, stop: asyncio.Event) -> None:
        """A steady ``rate`` of single-event POSTs; one that is retried never delays the next."""
        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / rate
        due = time.monotonic()
        while not stop.is_set():
            task = asyncio.ensure_future(self.publish_one(http))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            due += interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks)


# --- the tally ------------------------------------------------------------------------------


def tally(clients: list[Client], accepted: list[Posted]) -> dict[str, dict[str, int]]:
    """Per kind: events addressed to it, deliveries owed, received, missing, duplicated ..."""
    by_user: dict[str, list[Client]] = {}
    by_store: dict[str, list[Client]] = {}
    for client in clients:
        by_user.setdefault(client.user, []).append(client)
        by_store.setdefault(client.store, []).append(client)
    fields = ("events", "expected", "received", "missing", "clients_missing_any", "duplicated")
    fields += ("connects", "drops", "failures", "resyncs", "fresh_restarts", "gave_up")
    rows: dict[str, dict[str, int]] = {
        kind: {"clients": sum(1 for c in clients if c.kind == kind), **dict.fromkeys(fields, 0)}
        for kind in KINDS
    }
    addressed: dict[str, set[int]] = {kind: set() for kind in KINDS}
    short: set[int] = set()  # clients that missed at least one event
    for event in accepted:
        if event.audience == "user":
            audience = by_user.get(event.target, [])
        elif event.audience == "store":
            audience = by_store.get(event.target, [])
        else:
            audience = clients
        for client in audience:
            addressed[client.kind].add(event.key)
            if client.owed(event.key):
                row = rows[client.kind]
                row["expected"] += 1
                if event.key in client.seen:
                    row["received"] += 1
                else:
                    row["missing"] += 1
                    short.add(client.index)
    for client in clients:
        row = rows[client.kind]
        row["duplicated"] += client.duplicates
        for name in ("connects", "drops", "failures", "resyncs", "fresh_restarts", "gave_up"):
            row[name] += getattr(client, name)
    for client in clients:
        rows[client.kind]["clients_missing_any"] += client.index in short
    for kind in KINDS:
        rows[kind]["events"] = len(addressed[kind])
    return {kind: dict(row) for kind, row in rows.items()}


def short_clients(
    clients: list[Client], accepted: list[Posted], limit: int = 10, with_id: bool = True
) -> list[dict[str, Any]]:
    """What happened to the first few clients with (or without) an id that missed something."""
    found = []
    for client in clients:
        if client.has_id != with_id:
            continue
        mine = [
            e.key
            for e in accepted
            if (e.audience == "global")
            or (e.audience == "user" and e.target == client.user)
            or (e.audience == "store" and e.target == client.store)
        ]
        missed = sorted(k for k in mine if client.owed(k) and k not in client.seen)
        if missed:
            found.append(
                {
                    "kind": client.kind,
                    "index": client.index,
                    "missed": len(missed),
                    "first_missed": missed[0],
                    "last_missed": missed[-1],
                    "coverage": client.coverage,
                    "connects": client.connects,
                    "resyncs": client.resyncs,
                    "fresh_restarts": client.fresh_restarts,
                    "failures": dict(client.failure_reasons),
                    "close_codes": dict(client.close_codes),
                    "log": client.history[-30:],
                }
            )
            if len(found) >= limit:
                break
    return found
