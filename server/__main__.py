"""``python -m server``: read settings, then serve until SIGTERM/SIGINT (exit 0)."""

from __future__ import annotations

import logging
import os
import sys

import orjson
import uvloop
from aiohttp import web

from server.app import create_app
from server.config import ConfigError, load_settings
from server.logs import configure_logging

log = logging.getLogger("server")


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        line = f"configuration error: {exc}"
        if os.environ.get("LOG_FORMAT", "").lower() == "json":
            line = orjson.dumps({"level": "critical", "message": line}).decode()
        print(line, file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.auth.insecure:
        log.warning("AUTH_INSECURE=1: userId and role are trusted from the query; development only")
    app = create_app(settings)
    log.info(
        "server starting",
        extra={"host": settings.host, "port": settings.port, "node": settings.node_name},
    )
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=None,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout_seconds / 2,
        loop=uvloop.new_event_loop(),
    )
    log.info("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
