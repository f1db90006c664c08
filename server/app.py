"""The app factory: ``create_app(settings)`` wires everything; nothing happens at import time."""

from __future__ import annotations

import asyncio
import functools
import logging

from aiohttp import web

from handlers.catalogue import Catalogue
from server.api.admin import EVENTS_ROUTE, AdminApi, error_middleware, json_response
from server.api.dashboard import Dashboard
from server.api.openapi import build_openapi
from server.backplane.base import Backplane
from server.backplane.memory import MemoryBackplane
from server.config import Settings
from server.hub import CLOSE_RESTART
from server.identity.auth import Authenticator
from server.metrics import Metrics
from server.node import Node
from server.transports.front_door import FrontDoorServer
from server.transports.front_door import install as install_front_door
from server.transports.plain_ws import WebSocketEndpoint
from server.transports.socketio import SocketIOEndpoint

log = logging.getLogger(__name__)

NODE = web.AppKey("node", Node)
SETTINGS = web.AppKey("settings", Settings)
SIO = web.AppKey("sio", SocketIOEndpoint)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
WEBSOCKET = web.AppKey("websocket", WebSocketEndpoint)


def make_backplane(settings: Settings, metrics: Metrics) -> Backplane:
    if settings.redis.url:
        from server.backplane.redis import RedisBackplane

        return RedisBackplane(settings, metrics)
    return MemoryBackplane(settings.history, settings.admin.idempotency_ttl_seconds)


def create_app(settings: Settings) -> web.Application:
    metrics = Metrics()
    node = Node(settings, make_backplane(settings, metrics), metrics)
    authenticator = Authenticator(settings.auth, settings.cors_allowed_origins)
    if authenticator.sessions is not None:
        sessions, metrics = authenticator.sessions, node.metrics
        sessions.on_lookup = lambda result: metrics.session_lookups.labels(result).inc()
        sessions.on_cache_hit = metrics.session_cache_hits.inc
    catalogue = Catalogue.from_config(settings.event_types)
    admin = AdminApi(node, catalogue, settings)

    # client_max_size: aiohttp's own cap is 1 MiB; ours is the admin body limit, checked by us.
    app = web.Application(client_max_size=settings.admin.max_body_bytes)
    # The admin API is a sub-application, so its middlewares (API key, error shape) cost nothing
    # to the client connections, which hold a handler frame each for their whole life.
    api = web.Application(middlewares=[admin.metrics_middleware, error_middleware, admin.auth_middleware])
    app[NODE] = node
    app[SETTINGS] = settings
    app[AUTHENTICATOR] = authenticator

    websocket = WebSocketEndpoint(node, authenticator, settings.websocket)
    app.router.add_get("/api/ws", websocket.handle)
    app[WEBSOCKET] = websocket
    sio = SocketIOEndpoint(node, authenticator, settings)
    sio.attach(app)
    app[SIO] = sio
    admin.add_routes(api)
    dashboard = Dashboard(node, authenticator, settings)
    dashboard.add_routes(app)

    openapi = build_openapi(catalogue)

    async def openapi_json(_: web.Request) -> web.Response:
        return json_response(openapi)

    async def healthz(_: web.Request) -> web.Response:
        return json_response({"status": "ok", "node": node.name})

    async def readyz(_: web.Request) -> web.Response:
        ready = node.backplane.ready
        return json_response({"ready": ready, "backplane": node.backplane.name}, status=200 if ready else 503)

    async def prometheus(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    api.router.add_get("/openapi.json", openapi_json)
    # Found before the sub-application (the router tries the longest path first); its other
    # methods fall through to the sub-application's route, and its 401/405 answers.
    app.router.add_post(EVENTS_ROUTE, admin.post_events_direct)
    # Plain, whole single POSTs to that route, plain upgrades to /api/ws and new Socket.IO
    # sessions on WebSocket are taken before aiohttp sees them (its request handling was most of
    # their cost); the routes take the rest.
    front_door = functools.partial(
        FrontDoorServer,
        admin=admin,
        websocket=websocket,
        engine=sio.server.eio,
        idle_timeout=settings.http_idle_timeout_seconds,
        cookie_auth=bool(settings.auth.cookie_name),
    )
    install_front_door(app, front_door)
    app.add_subapp("/api/v1", api)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)

    async def start(_: web.Application) -> None:
        await authenticator.start()
        await node.start()

    async def close_clients(_app: web.Application) -> None:
        """Shutdown: every client is told 1012 (service restart) and reconnects elsewhere, where
        it is resumed from the point saved here first (in one round trip for all)."""
        count = len(node.hub.connections)
        await dashboard.close_all()
        saved = await node.resume_book.save_all()
        node.hub.close_all(CLOSE_RESTART, "server restarting")
        # Let the close frames reach the wire before aiohttp cancels the handlers.
        for _ in range(20):
            if not node.hub.connections:
                break
            await asyncio.sleep(0.05)
        log.info("clients closed for shutdown", extra={"connections": count, "resume_points": saved})

    async def stop(_: web.Application) -> None:
        websocket.heartbeat.stop()
        sio.server.eio.pings.stop()
        sio.server.connect_deadlines.stop()
        await authenticator.stop()
        await node.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(close_clients)
    app.on_cleanup.append(stop)
    return app
