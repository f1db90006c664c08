"""Each metric moves when what it counts happens, read from ``GET /metrics`` over HTTP."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from server.config import Settings
from tests.clients import Live, make_token, recv, recv_close
from tests.conftest import StartServer, make_settings
from tests.redis_server import RedisServer
from tests.support import eventually, request, sio_refusal

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
STORE_EVENT = {"type": "store_updated", "data": {"storeId": "s1", "store": {}}}


async def scrape(live: Live) -> Samples:
    async with live.session.get(f"{live.base}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Delta:
    """``after - before`` of chosen samples, around what a test does."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.before: Samples = {}

    async def __aenter__(self) -> Delta:
        self.before = await scrape(self.live)
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def of(self, name: str, **labels: str) -> float:
        return value(await scrape(self.live), name, **labels) - value(self.before, name, **labels)


async def test_connections_by_transport_follow_clients(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("u1"))
    sio = await live.sio({"token": make_token("u2")})
    samples = await scrape(live)
    assert value(samples, "realtime_connections", transport="websocket") == 1
    assert value(samples, "realtime_connections", transport="socketio") == 1
    await ws.close()
    await sio.close()

    async def none_left() -> bool:
        samples = await scrape(live)
        return value(samples, "realtime_connections", transport="websocket") == 0 and (
            value(samples, "realtime_connections", transport="socketio") == 0
        )

    await eventually(none_left)


async def test_refused_connects_are_counted_by_transport_and_reason(live: Live) -> None:
    async with Delta(live) as delta:
        forged = make_token("u1", secret="another-secret-that-is-long-enough-for-hs256")
        refused = await live.ws(token=forged)
        assert await recv_close(refused) == 4401
        refused = await live.ws(token=make_token("u1", role="pirate"))
        assert await recv_close(refused) == 4403
        assert (await sio_refusal(live, {"token": forged}))["message"] == "unauthorized"
        assert (await sio_refusal(live, {"token": 7}))["message"] == "bad_request"
        counted = "realtime_connects_refused_total"
        assert await delta.of(counted, transport="websocket", reason="unauthorized") == 1
        assert await delta.of(counted, transport="websocket", reason="forbidden") == 1
        assert await delta.of(counted, transport="socketio", reason="unauthorized") == 1
        assert await delta.of(counted, transport="socketio", reason="bad_request") == 1


async def test_events_accepted_are_counted_by_type(live: Live) -> None:
    async with Delta(live) as delta:
        order = {"type": "order_updated", "data": {"orderId": "o1", "order": {"userId": "u1"}}}
        status, _ = await live.post({"events": [STORE_EVENT, STORE_EVENT, order]})
        assert status == 202
        status, _ = await live.post({"type": "store_updated", "data": {}})  # refused: not counted
        assert status == 422
        assert await delta.of("realtime_events_accepted_total", type="store_updated") == 2
        assert await delta.of("realtime_events_accepted_total", type="order_updated") == 1


async def test_stale_events_are_counted_by_type_and_not_as_accepted(live: Live) -> None:
    text = await (await live.session.get(f"{live.base}/metrics")).text()
    assert "# TYPE realtime_events_stale_dropped_total counter" in text

    def versioned(version: int) -> dict[str, object]:
        data = {"orderId": "o-stale", "order": {"userId": "u1"}}
        return {"type": "order_updated", "data": data, "version": version}

    async with Delta(live) as delta:
        status, answer = await live.post({"events": [versioned(2), versioned(1), versioned(2)]})
        assert status == 202 and answer["stale"] == [1, 2], answer
        assert await delta.of("realtime_events_stale_dropped_total", type="order_updated") == 2
        assert await delta.of("realtime_events_accepted_total", type="order_updated") == 1


async def test_deliveries_count_every_client_and_latency_is_observed_once_per_event(live: Live) -> None:
    clients = [(await live.ws_ready(token=make_token(f"u{i}")))[0] for i in range(3)]
    async with Delta(live) as delta:
        status, _ = await live.post({"events": [STORE_EVENT, STORE_EVENT]})
        assert status == 202
        for ws in clients:
            await recv(ws)
            await recv(ws)
        assert await delta.of("realtime_deliveries_total") == 6
        # Two events written to three sockets: two observations, not six.
        assert await delta.of("realtime_delivery_latency_seconds_count") == 2
        assert await delta.of("realtime_delivery_latency_seconds_bucket", le="+Inf") == 2
        assert await delta.of("realtime_delivery_latency_seconds_bucket", le="10.0") == 2
    async with Delta(live) as delta:  # an event that reaches no one here is not observed
        status, _ = await live.post({**STORE_EVENT, "to": {"users": ["nobody"]}})
        assert status == 202
        assert await delta.of("realtime_delivery_latency_seconds_count") == 0
    for ws in clients:
        await ws.close()


async def test_a_slow_consumer_close_is_counted(start_server: StartServer) -> None:
    live = await start_server(make_settings(websocket={"send_buffer_bytes": 65536}))
    slow, _ = await live.ws_ready(token=make_token("slow"))  # never reads again
    pad = {"storeId": "s1", "store": {"pad": "x" * 20_000}}
    async with Delta(live) as delta:
        for _ in range(500):
            if not any(not conn.closed for conn in live.node.hub.connections):
                break
            status, _ = await live.post({"events": [{"type": "store_updated", "data": pad}] * 10})
            assert status == 202
        assert await delta.of("realtime_slow_consumer_closes_total", transport="websocket") == 1
        assert await delta.of("realtime_slow_consumer_closes_total", transport="socketio") == 0
    await slow.close()


async def test_admin_requests_are_counted_by_route_pattern_and_status(live: Live) -> None:
    async with Delta(live) as delta:
        assert (await live.get("/api/v1/stats"))[0] == 200
        assert (await live.get("/api/v1/presence/users/alice"))[0] == 200
        assert (await live.get("/api/v1/presence/users/bob"))[0] == 200
        status, _, _ = await request(live, "GET", "/api/v1/stats", admin=False)
        assert status == 401
        status, _, _ = await request(live, "GET", "/api/v1/nowhere")
        assert status == 404
        counted = "realtime_admin_requests_total"
        assert await delta.of(counted, route="/api/v1/stats", status="200") == 1
        assert await delta.of(counted, route="/api/v1/stats", status="401") == 1
        # The pattern, never the raw path: one series for every user id.
        assert await delta.of(counted, route="/api/v1/presence/users/{userId}", status="200") == 2
        assert await delta.of(counted, route="unmatched", status="404") == 1


async def test_post_events_is_counted_like_every_admin_route(live: Live) -> None:
    """``POST /api/v1/events`` is a main-app route (issue 18); its other methods are the
    sub-application's: the same series, the same 401 before 405, as every admin route."""
    async with Delta(live) as delta:
        assert (await live.post(STORE_EVENT))[0] == 202
        assert (await live.post({"type": "store_updated", "data": {}}))[0] == 422
        status, _, _ = await request(live, "POST", "/api/v1/events", body=b"{}", admin=False)
        assert status == 401
        status, _, _ = await request(live, "GET", "/api/v1/events", admin=False)
        assert status == 401
        status, _, _ = await request(live, "GET", "/api/v1/events")
        assert status == 405
        counted = "realtime_admin_requests_total"
        assert await delta.of(counted, route="/api/v1/events", status="202") == 1
        assert await delta.of(counted, route="/api/v1/events", status="422") == 1
        assert await delta.of(counted, route="/api/v1/events", status="401") == 1
        assert await delta.of(counted, route="unmatched", status="401") == 1  # no route for GET
        assert await delta.of(counted, route="unmatched", status="405") == 1


async def test_session_service_metrics_are_defined() -> None:
    """Moved by the session-service code (AUTH_SESSION_URL, another branch); defined here."""
    from server.metrics import Metrics

    text = Metrics().render().decode()
    assert "# TYPE realtime_session_lookups_total counter" in text
    assert "# TYPE realtime_session_cache_hits_total counter" in text


async def test_backplane_lag_and_reconnects_move_with_redis(
    start_server: StartServer, redis: RedisServer
) -> None:
    settings: Settings = make_settings(redis={"url": redis.url, "retry_after_seconds": 1})
    live = await start_server(settings)
    ws, _ = await live.ws_ready(token=make_token("u1"))
    async with Delta(live) as delta:
        status, _ = await live.post(STORE_EVENT)
        assert status == 202
        await recv(ws)
        assert await delta.of("realtime_backplane_lag_seconds_count") >= 1
        assert await delta.of("realtime_backplane_reconnects_total") == 0

        redis.stop()

        async def ready(expected: int) -> bool:
            async with live.session.get(f"{live.base}/readyz") as resp:
                return resp.status == expected

        await eventually(lambda: ready(503), within=15)
        redis.start()
        await eventually(lambda: ready(200), within=15)
        assert await delta.of("realtime_backplane_reconnects_total") == 1
    await ws.close()
