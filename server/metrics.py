"""Prometheus metrics: every metric name is in this module, and nothing else defines one.

Each process has one ``Metrics`` (its own registry, so that apps built in one test process do not
share counts). Call sites are one short line each. The hot path is never counted per delivery
per connection: deliveries are the hub's own bulk count, read when scraped, and delivery latency
is observed once per event per batch, not once per client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from server.events import Event, OutgoingEvent
    from server.node import Node

TRANSPORTS = ("websocket", "socketio")
# Seconds, from acceptance to the write into the socket: from a millisecond to a stalled loop.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The metrics one process updates as things happen (the node's state is read at scrape)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.connects_refused = Counter(
            "realtime_connects_refused",
            "Client connects refused, by transport and reason (bad_request, unauthorized, forbidden...)",
            ["transport", "reason"],
            registry=registry,
        )
        self.events_accepted = Counter(
            "realtime_events_accepted",
            "Events accepted by this process's admin API",
            ["type"],
            registry=registry,
        )
        self._accepted_by_type: dict[str, Any] = {}  # events_accepted's child per type
        self.events_stale = Counter(
            "realtime_events_stale_dropped",
            "Events not delivered because a newer version of their entity was accepted before",
            ["type"],
            registry=registry,
        )
        self.delivery_latency = Histogram(
            "realtime_delivery_latency_seconds",
            "From an event's acceptance (its id's time) to its write into this process's sockets",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.slow_consumer_closes = Counter(
            "realtime_slow_consumer_closes",
            "Connections closed with 1008 because their send buffer overflowed",
            ["transport"],
            registry=registry,
        )
        self.backplane_lag = Histogram(
            "realtime_backplane_lag_seconds",
            "From an event's acceptance to this process reading it from the backplane (per read)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.backplane_reconnects = Counter(
            "realtime_backplane_reconnects",
            "Times this process's backplane tail reconnected",
            registry=registry,
        )
        self.backplane_events_lost = Counter(
            "realtime_backplane_events_lost",
            "Events trimmed from the Redis stream before this process read them (its clients resync)",
            registry=registry,
        )
        # Wired by the session-service code (AUTH_SESSION_URL): defined here so the name has one home.
        self.session_lookups = Counter(
            "realtime_session_lookups",
            "Requests to the session service, by result (ok, unauthorized, forbidden, unavailable)",
            ["result"],
            registry=registry,
        )
        self.session_cache_hits = Counter(
            "realtime_session_cache_hits",
            "Connections identified from the session cache without a request",
            registry=registry,
        )
        self.admin_requests = Counter(
            "realtime_admin_requests",
            "Admin API requests, by route and status",
            ["route", "status"],
            registry=registry,
        )
        self.dashboard_feeds = Gauge(
            "realtime_dashboard_feeds", "Open dashboard live feeds", registry=registry
        )

    # --- one-line call sites ----------------------------------------------------------------

    def accepted(self, events: Sequence[OutgoingEvent], ids: Sequence[str | None]) -> None:
        """A publish went through: count it by type (a stale event's id is ``None``)."""
        if None not in ids:
            counts: dict[str, int] = {}  # not collections.Counter: its constructor's ABC check costs more
            for event in events:
                counts[event.type] = counts.get(event.type, 0) + 1
            for event_type, count in counts.items():
                child = self._accepted_by_type.get(event_type)
                if child is None:  # labels() takes a lock and checks its arguments: once per type
                    child = self._accepted_by_type[event_type] = self.events_accepted.labels(event_type)
                child.inc(count)
            return
        for event, event_id in zip(events, ids, strict=True):
            (self.events_stale if event_id is None else self.events_accepted).labels(event.type).inc()

    def delivered(self, events: Sequence[Event]) -> None:
        """``events`` were just written to this process's sockets: once per event, not per client."""
        now_ms = time.time() * 1000
        observe = self.delivery_latency.observe
        for event in events:
            observe(max(0.0, now_ms - event.sort_key[0]) / 1000)

    def read_from_backplane(self, newest: Event) -> None:
        self.backplane_lag.observe(max(0.0, time.time() * 1000 - newest.sort_key[0]) / 1000)

    def refused(self, transport: str, reason: str) -> None:
        self.connects_refused.labels(transport, reason).inc()

    def slow_consumer(self, transport: str) -> None:
        self.slow_consumer_closes.labels(transport).inc()

    def latency_counts(self) -> list[float]:
        """The delivery latency histogram's cumulative bucket counts (``LATENCY_BUCKETS``, then +Inf)."""
        return [
            sample.value
            for family in self.delivery_latency.collect()
            for sample in family.samples
            if sample.name.endswith("_bucket")
        ]

    def watch(self, node: Node) -> None:
        """Also report ``node``'s state (connections, deliveries...) when scraped."""
        self.registry.register(NodeCollector(node))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class NodeCollector(Collector):
    """What the node already counts, read at scrape time: nothing is counted twice on the hot path."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        hub = self.node.hub
        connections = GaugeMetricFamily(
            "realtime_connections", "Open client connections", labels=["transport"]
        )
        by_transport = hub.by_transport()
        for transport in TRANSPORTS:
            connections.add_metric([transport], by_transport.get(transport, 0))
        yield connections
        yield GaugeMetricFamily(
            "realtime_rooms", "Rooms with at least one local connection", value=len(hub.rooms)
        )
        yield CounterMetricFamily(
            "realtime_deliveries", "Events handed to local connections", value=hub.delivered
        )
        yield GaugeMetricFamily(
            "realtime_backplane_ready",
            "1 when the backplane accepts and carries events",
            value=int(self.node.backplane.ready),
        )
