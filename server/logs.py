"""Logging: ``LOG_LEVEL``, and ``LOG_FORMAT=json`` for one JSON object per line on stdout/stderr."""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import Any

import orjson

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        return f"{line} {extras}" if extras else line


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request its parser refuses (a client's fault, already answered 400) as an
    error with a traceback: any client could fill the logs with them. One info line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        record.msg, record.args = "malformed HTTP request refused (%s): %s", (error.code, error.message)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-packet chatter from the protocol libraries is never wanted above debug.
    for noisy in ("engineio", "socketio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())
    logging.captureWarnings(True)

    # What the interpreter would print to stderr by itself goes through the log format too, so
    # that with LOG_FORMAT=json even that is one JSON object per line.
    def log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        logging.getLogger("server").critical("uncaught exception", exc_info=(kind, exc, tb))

    def log_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
        exc = unraisable.exc_value
        info = (type(exc), exc, unraisable.exc_traceback) if exc is not None else None
        where = unraisable.err_msg or "Exception ignored in"
        logging.getLogger("server").error("%s: %r", where, unraisable.object, exc_info=info)

    def log_thread_exception(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        thread = args.thread.name if args.thread is not None else "?"
        info = (args.exc_type, args.exc_value, args.exc_traceback) if args.exc_value is not None else None
        logging.getLogger("server").critical("uncaught exception in thread %s", thread, exc_info=info)

    sys.excepthook = log_uncaught
    sys.unraisablehook = log_unraisable
    threading.excepthook = log_thread_exception
