"""``python -m server``: the command line (server/cli.py); with no command, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import gc
import logging
import sys
from typing import TYPE_CHECKING

from server.config import ConfigError, Settings, load_settings
from server.logs import configure_logging

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("server")


def run_server() -> int:
    """Read the settings, then serve until SIGTERM/SIGINT (exit 0)."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        # One line, in the log format asked for (json: one JSON object), and no traceback.
        configure_logging("info", exc.log_format or "text")
        log.critical("configuration error: %s", " ".join(str(exc).split()))
        return 2
    configure_logging(settings.log_level, settings.log_format)
    return serve(settings)


def serve(settings: Settings) -> int:
    # Imported only once the settings are good, so that a configuration error is reported fast.
    import uvloop
    from aiohttp import web

    from server.app import create_app
    from server.transports.listen import listen_backlog

    if settings.auth.insecure:
        log.warning("AUTH_INSECURE=1: userId and role are trusted from the query; development only")
    app = create_app(settings)
    log.info(
        "server starting",
        extra={"host": settings.host, "port": settings.port, "node": settings.node_name},
    )
    stage = "starting"

    async def started(_app: web.Application) -> None:
        nonlocal stage
        stage = "binding"

    def listening(*_: object) -> None:  # run_app calls its ``print`` once every socket listens
        nonlocal stage
        stage = "listening"
        log.info("server listening", extra={"host": settings.host, "port": settings.port})

    app.on_startup.append(started)
    # Everything built so far (modules, schemas, the app) lives as long as the process: keep it
    # out of the collector's full passes, which otherwise scan it all and stall delivery for
    # tens of milliseconds now and then (measured: 35 ms for the ~63,000 objects here).
    gc.collect()
    gc.freeze()
    # A full pass at most every 100 middle-generation passes, not 10: while thousands of clients
    # connect at once the heap keeps growing, and each growth of a quarter cost a full pass over
    # every connection (3 passes, 0.07-0.25 s of CPU, in a 5,000-client storm; none with 100).
    # The young generations are collected as often as before, so garbage that is freed by them
    # (most of it) is freed as soon as before.
    gc.set_threshold(700, 10, 100)
    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            print=listening,
            access_log=None,
            backlog=listen_backlog(settings.backlog),
            keepalive_timeout=settings.http_idle_timeout_seconds,
            shutdown_timeout=settings.shutdown_timeout_seconds / 2,
            loop=uvloop.new_event_loop(),
        )
    except OSError as exc:
        if stage != "binding":
            raise
        # HOST/PORT cannot be used (in use, no such address): one line, not a traceback.
        log.critical(
            "HOST/PORT: cannot listen on %s:%s: %s", settings.host, settings.port, exc.strerror or exc
        )
        return 1
    log.info("server stopped")
    return 0


if __name__ == "__main__":
    from server.cli import main

    sys.exit(main(run_server))
