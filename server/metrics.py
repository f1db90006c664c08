"""Prometheus metrics, read from the node when scraped: nothing is counted twice on the hot path."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from server.node import Node


class NodeCollector(Collector):
    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        hub = self.node.hub
        connections = GaugeMetricFamily(
            "realtime_connections", "Open client connections", labels=["transport"]
        )
        for transport in ("websocket", "socketio"):
            connections.add_metric([transport], hub.by_transport().get(transport, 0))
        yield connections
        yield GaugeMetricFamily(
            "realtime_rooms", "Rooms with at least one local connection", value=len(hub.rooms)
        )
        yield CounterMetricFamily(
            "realtime_events_accepted",
            "Events accepted by this process's admin API",
            value=self.node.events_accepted,
        )
        yield CounterMetricFamily(
            "realtime_deliveries", "Events handed to local connections", value=hub.delivered
        )
        yield GaugeMetricFamily(
            "realtime_backplane_ready",
            "1 when the backplane accepts and carries events",
            value=int(self.node.backplane.ready),
        )


def make_registry(node: Node) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(NodeCollector(node))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
