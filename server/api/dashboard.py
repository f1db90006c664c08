"""The live dashboard: ``GET /dashboard`` (one static page), its feed, and ``GET /`` (links).

The page itself holds no data and is served to anyone; everything it shows comes over the feed
(``GET /dashboard/feed``, a WebSocket whose first message must carry an admin API key) or from the
admin API with the same key. The feed sends, once a second, the whole cluster's nodes and
counters (``Backplane.nodes``) and the delivery latency percentiles, and, as they arrive, the
events this process receives from the backplane, which on Redis are every process's events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import re
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import WSMsgType, web

from server.backplane.base import BackplaneUnavailable, NodeReport
from server.config import Settings
from server.events import Event
from server.identity.auth import Authenticator, AuthError
from server.metrics import LATENCY_BUCKETS
from server.node import Node

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
AUTH_TIMEOUT_SECONDS = 10.0
STATS_SECONDS = 1.0
TAIL_FLUSH_SECONDS = 0.25
TAIL_KEPT = 200  # events whose data a dashboard can still open
TAIL_SENT_PER_FLUSH = 50  # a flood shows its newest events, not all of them
RATE_WINDOW_SECONDS = 3.0  # other processes' counters reach Redis in steps: rates are smoothed
LATENCY_WINDOW_SECONDS = 60.0
CLOSE_UNAUTHORIZED = 4401


def quantile(q: float, cumulative: Sequence[float]) -> float | None:
    """The ``q`` quantile, in seconds, of a histogram of ``LATENCY_BUCKETS`` (cumulative counts,
    +Inf last), interpolated within its bucket as Prometheus's ``histogram_quantile`` does."""
    if not cumulative or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), cumulative, strict=False):
        if count >= rank:
            if bound == float("inf"):
                return LATENCY_BUCKETS[-1]
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return None


def _sum_buckets(reports: Sequence[NodeReport]) -> list[float]:
    size = len(LATENCY_BUCKETS) + 1
    total = [0.0] * size
    for report in reports:
        if len(report.latency) == size:
            total = [a + b for a, b in zip(total, report.latency, strict=True)]
    return total


class Page:
    """A static page read once, with a Content-Security-Policy that allows its own inline script
    and style by hash, and nothing from anywhere else."""

    def __init__(self, name: str) -> None:
        self.body = (STATIC / name).read_bytes()
        text = self.body.decode()
        sources = {
            kind: " ".join(
                f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'"
                for block in re.findall(rf"<{kind}>(.*?)</{kind}>", text, re.S)
            )
            or "'none'"
            for kind in ("script", "style")
        }
        self.headers = {
            "Content-Security-Policy": (
                f"default-src 'none'; script-src {sources['script']}; style-src {sources['style']}; "
                "connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; "
                "base-uri 'none'"
            ),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }

    def response(self) -> web.Response:
        return web.Response(body=self.body, content_type="text/html", charset="utf-8", headers=self.headers)


class Feed:
    """One open dashboard: its socket and the events waiting for the next flush."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None) -> None:
        self.ws = ws
        self.transport = transport
        self.pending: deque[Event] = deque(maxlen=TAIL_SENT_PER_FLUSH)


class Dashboard:
    def __init__(self, node: Node, authenticator: Authenticator, settings: Settings) -> None:
        self.node = node
        self.authenticator = authenticator
        self.keys = [key.encode() for key in settings.admin.api_keys]
        self.page = Page("dashboard.html")
        self.index = Page("index.html")
        self.feeds: set[Feed] = set()
        self.recent: deque[Event] = deque(maxlen=TAIL_KEPT)
        self._history: deque[tuple[float, int, int, list[float]]] = deque()
        self._task: asyncio.Task[None] | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.landing)
        app.router.add_get("/dashboard", self.dashboard)
        app.router.add_get("/dashboard/feed", self.feed)

    async def landing(self, _: web.Request) -> web.Response:
        return self.index.response()

    async def dashboard(self, _: web.Request) -> web.Response:
        return self.page.response()

    # --- the feed -------------------------------------------------------------------------

    def _key_ok(self, presented: Any) -> bool:
        if not self.keys:
            return True  # AUTH_INSECURE=1 without keys: the admin API is open too
        candidate = presented.encode("utf-8", "surrogateescape") if isinstance(presented, str) else b""
        matched = False
        for key in self.keys:  # every key, in constant time, as the admin API compares them
            matched |= hmac.compare_digest(candidate, key)
        return matched

    async def feed(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        # The dashboard's own page is always same-origin; CORS_ALLOWED_ORIGINS (the apps' sites)
        # may not list the server's own address, so that is not required here.
        if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
            try:
                self.authenticator.check_origin(origin, request.host)
            except AuthError as exc:
                raise web.HTTPForbidden(text=exc.message) from None
        ws = web.WebSocketResponse(heartbeat=25.0, max_msg_size=4096)
        await ws.prepare(request)
        try:
            first = await ws.receive(timeout=AUTH_TIMEOUT_SECONDS)
            hello = orjson.loads(first.data) if first.type == WSMsgType.TEXT else None
        except (TimeoutError, orjson.JSONDecodeError):
            hello = None
        if not isinstance(hello, dict) or not self._key_ok(hello.get("key")):
            await ws.close(code=CLOSE_UNAUTHORIZED, message=b"a valid admin API key is required")
            return ws
        feed = Feed(ws, request.transport)
        self._open(feed)
        try:
            await ws.send_str(_dumps({"type": "hello", "node": self.node.name}))
            await self._send_stats([feed])
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._answer(feed, msg.data)
        finally:
            self._close(feed)
        return ws

    async def _answer(self, feed: Feed, text: str) -> None:
        """The page asks for an event's data when an operator clicks it."""
        try:
            ask = orjson.loads(text)
        except orjson.JSONDecodeError:
            return
        if isinstance(ask, dict) and ask.get("op") == "data":
            found = next((e for e in self.recent if e.id == ask.get("id")), None)
            data = orjson.Fragment(found.data_json) if found is not None else None
            await _send(feed, {"type": "data", "id": ask.get("id"), "data": data})

    def _open(self, feed: Feed) -> None:
        self.feeds.add(feed)
        self.node.metrics.dashboard_feeds.inc()
        if len(self.feeds) == 1:
            self.node.taps.append(self._tap)
            self._task = asyncio.create_task(self._run(), name="dashboard-feed")

    def _close(self, feed: Feed) -> None:
        self.feeds.discard(feed)
        self.node.metrics.dashboard_feeds.dec()
        if not self.feeds:
            with contextlib.suppress(ValueError):
                self.node.taps.remove(self._tap)
            if self._task is not None:
                self._task.cancel()
                self._task = None
            self.recent.clear()
            self._history.clear()

    def _tap(self, events: Sequence[Event]) -> None:
        """Every event this process receives, while a dashboard is open: kept, not yet sent."""
        self.recent.extend(events)
        for feed in self.feeds:
            feed.pending.extend(events[-TAIL_SENT_PER_FLUSH:])

    async def _run(self) -> None:
        next_stats = 0.0
        while True:
            await asyncio.sleep(TAIL_FLUSH_SECONDS)
            try:
                for feed in list(self.feeds):
                    if feed.pending:
                        events, feed.pending = list(feed.pending), deque(maxlen=TAIL_SENT_PER_FLUSH)
                        await _send(feed, {"type": "events", "events": [_summary(e) for e in events]})
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + STATS_SECONDS
                    await self._send_stats(list(self.feeds))
            except Exception:  # a dashboard must never stop updating for one bad turn
                log.exception("dashboard feed update failed")

    async def _send_stats(self, feeds: Sequence[Feed]) -> None:
        stats = await self.stats()
        for feed in feeds:
            await _send(feed, stats)

    async def stats(self) -> dict[str, Any]:
        """The cluster now: nodes, totals, rates over the last seconds, latency percentiles."""
        error = None
        try:
            reports = await self.node.backplane.nodes()
        except BackplaneUnavailable as exc:
            reports, error = [self.node.report()], f"only this process: {exc}"
        now = time.monotonic()
        accepted = sum(r.events_accepted for r in reports)
        delivered = sum(r.events_delivered for r in reports)
        buckets = _sum_buckets(reports)
        history = self._history
        history.append((now, accepted, delivered, buckets))
        while len(history) > 1 and now - history[0][0] > LATENCY_WINDOW_SECONDS:
            history.popleft()
        rate_from = next((h for h in history if now - h[0] <= RATE_WINDOW_SECONDS), history[0])
        elapsed = now - rate_from[0]
        window = buckets  # the latency of the last minute, once there is a minute to look back on
        if len(history) > 1:
            window = [
                max(0.0, now_count - then) for now_count, then in zip(buckets, history[0][3], strict=True)
            ]
        return {
            "type": "stats",
            "time": time.time(),
            "node": self.node.name,
            "error": error,
            "nodes": [
                {
                    "node": r.node,
                    "connections": r.connections,
                    "byTransport": r.by_transport,
                    "accepted": r.events_accepted,
                    "delivered": r.events_delivered,
                }
                for r in sorted(reports, key=lambda r: r.node)
            ],
            "totals": {"accepted": accepted, "delivered": delivered},
            "rates": {
                "events": max(0.0, accepted - rate_from[1]) / elapsed if elapsed > 0 else 0.0,
                "deliveries": max(0.0, delivered - rate_from[2]) / elapsed if elapsed > 0 else 0.0,
            },
            "latency": {
                "windowSeconds": round(now - history[0][0]) if len(history) > 1 else None,
                "count": window[-1],
                **{name: quantile(q, window) for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
            },
        }

    async def close_all(self) -> None:
        for feed in list(self.feeds):
            await feed.ws.close(code=1001, message=b"server shutting down")


def _summary(event: Event) -> dict[str, Any]:
    return {"id": event.id, "type": event.type, "rooms": event.rooms, "bytes": len(event.data_json)}


async def _send(feed: Feed, message: dict[str, Any]) -> None:
    """A dashboard that cannot keep up loses messages, never slows the server: its socket's
    buffer is checked first (aiohttp's ``send`` would otherwise wait on a slow reader)."""
    if feed.ws.closed:
        return
    transport = feed.transport
    if isinstance(transport, asyncio.WriteTransport) and transport.get_write_buffer_size() > 1 << 20:
        return
    with contextlib.suppress(ConnectionError, RuntimeError):
        await feed.ws.send_str(_dumps(message))


def _dumps(message: Any) -> str:
    return orjson.dumps(message).decode()
