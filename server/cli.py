"""``python -m server [COMMAND]``: serve (the default), publish, token, check-config.

Every bad input ends with one line on stderr and a non-zero exit, never a traceback:
2 for a bad command line or configuration, 1 when the command itself failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from server.config import ConfigError, Settings, load_settings

EXIT_FAILED = 1
EXIT_USAGE = 2
_TTL = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class CommandError(Exception):
    """The command cannot do what was asked; the message is the one line printed."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{self.prog}: {message} (see --help)", EXIT_USAGE)


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m server",
        description="The realtime server. With no command it serves (as the Procfile runs it).",
        epilog="Settings come from config.yaml (or CONFIG_FILE) and the environment; see the README.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.add_parser("serve", help="serve clients and the admin API until SIGTERM (the default)")

    publish = commands.add_parser(
        "publish",
        help="publish one event through the admin API and print its id",
        description="Publish one event through a running server's admin API; prints its id "
        "('stale' if the server dropped it as stale). Retries on 503 and connection errors "
        "with one idempotency key, so it is never delivered twice.",
    )
    publish.add_argument("type", help="the event type, e.g. store_updated")
    publish.add_argument("--data", required=True, help="the event's data, a JSON object")
    publish.add_argument("--user", action="append", default=[], help="to.users (repeatable)")
    publish.add_argument("--store", action="append", default=[], help="to.stores (repeatable)")
    publish.add_argument("--staff", action="append", default=[], help="to.staff: store ids (repeatable)")
    publish.add_argument("--role", action="append", default=[], help="to.roles (repeatable)")
    publish.add_argument("--global", dest="global_", action="store_true", help="to.global: everyone")
    publish.add_argument(
        "--url", help="the server's base URL (default: REALTIME_URL, else http://127.0.0.1:$PORT)"
    )
    publish.add_argument(
        "--key", help="admin API key (default: REALTIME_API_KEY, else the first of ADMIN_API_KEYS)"
    )
    publish.add_argument("--idempotency-key", help="the event's idempotency key (default: a new one)")
    publish.add_argument("--version", type=int, help="the entity's version (an integer >= 0)")
    publish.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer")

    token = commands.add_parser(
        "token",
        help="print a development token signed with the configured JWT_SECRET",
        description="Print a client token (HS256) signed with the configured JWT_SECRET.",
    )
    token.add_argument("--user", required=True, help="the user id (the token's sub)")
    token.add_argument("--role", help="the role claim (default: auth.default_role)")
    token.add_argument("--stores", help="the stores claim: comma-separated store ids")
    token.add_argument("--ttl", default="1h", help="lifetime: 3600, 90s, 30m, 1h, 7d (default 1h)")

    commands.add_parser(
        "check-config",
        help="load the settings as serve would and print them, secrets masked",
        description="Load the settings as serve would; print them with secrets masked. "
        "Exit 0 when they are good, 1 with the reason when not.",
    )
    return parser


def main(serve: Callable[[], int], argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` asks for; ``serve`` is server/__main__.py's ``run_server``."""
    try:
        args = build_parser().parse_args(argv)
        command = args.command or "serve"
        if command == "serve":
            return serve()
        if command == "publish":
            code = publish(args)
        elif command == "token":
            code = token(args)
        else:
            code = check_config()
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except CommandError as exc:
        print(" ".join(str(exc).split()), file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever read the output stopped early (``| head``): not an error, and no traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# --- publish -------------------------------------------------------------------------------


def publish(args: argparse.Namespace) -> int:
    from realtime_client import Publisher, PublishError, RetryPolicy

    try:
        data = json.loads(args.data)
    except ValueError as exc:
        raise CommandError(f"--data: not valid JSON: {exc}", EXIT_USAGE) from None
    if not isinstance(data, dict):
        raise CommandError("--data: must be a JSON object", EXIT_USAGE)
    if args.version is not None and args.version < 0:
        raise CommandError("--version: must be an integer >= 0", EXIT_USAGE)
    if args.idempotency_key is not None and not 0 < len(args.idempotency_key) <= 255:
        raise CommandError("--idempotency-key: must be 1-255 characters", EXIT_USAGE)
    to: dict[str, Any] = {}
    for name, values in (("users", args.user), ("stores", args.store), ("staff", args.staff)):
        if values:
            to[name] = values
    if args.role:
        to["roles"] = args.role
    if args.global_:
        to["global"] = True
    url = args.url or os.environ.get("REALTIME_URL") or f"http://127.0.0.1:{os.environ.get('PORT') or 3000}"
    key = args.key or os.environ.get("REALTIME_API_KEY") or _first_admin_key()
    try:
        publisher = Publisher(url, key, read_timeout=args.timeout, retry=RetryPolicy(attempts=4))
    except ValueError as exc:
        raise CommandError(f"--url: {exc}", EXIT_USAGE) from None
    with publisher:
        try:
            event_id = publisher.publish(
                args.type, data, to or None, args.version, idempotency_key=args.idempotency_key
            )
        except PublishError as exc:
            raise CommandError(_describe(exc)) from None
    print(event_id if event_id is not None else "stale")
    return 0


def _first_admin_key() -> str | None:
    keys = [key.strip() for key in os.environ.get("ADMIN_API_KEYS", "").split(",") if key.strip()]
    return keys[0] if keys else None


def _describe(exc: Any) -> str:
    """A failed publish in one line: status, code, message and, for a 422, the first field."""
    where = f"{exc.status} {exc.code}".strip() if exc.status else "no answer"
    line = f"publish failed ({where}): {exc.message}"
    problems = exc.details.get("events") or []
    if problems and not any(field in exc.message for field in problems[0].get("fields", {})):
        field, messages = next(iter(problems[0]["fields"].items()))
        line += f" [{field}: {messages[0]}]"
    return line


# --- token ---------------------------------------------------------------------------------


def parse_ttl(text: str) -> int:
    match = _TTL.match(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise CommandError(f"--ttl: {text!r} is not a lifetime like 3600, 90s, 30m, 1h or 7d", EXIT_USAGE)
    return int(match.group(1)) * _UNITS[match.group(2)]


def token(args: argparse.Namespace) -> int:
    import jwt

    from handlers.subscriptions import valid_id

    ttl = parse_ttl(args.ttl)
    # The secret is read as serve reads it; the admin-key rule of serve does not apply here.
    settings = _settings(overrides={"auth": {"insecure": True}})
    secret = settings.auth.jwt_secret
    if not secret:
        raise CommandError("token: no JWT_SECRET configured (set it, or auth.jwt_secret in the config file)")
    role = args.role or settings.auth.default_role
    if not valid_id(args.user):
        raise CommandError("--user: must be 1-128 letters, digits or _.:@-", EXIT_USAGE)
    if role not in settings.auth.roles:
        raise CommandError(f"--role: {role!r} is not one of {', '.join(settings.auth.roles)}", EXIT_USAGE)
    claims: dict[str, Any] = {"sub": args.user, "role": role, "iat": int(time.time())}
    claims["exp"] = claims["iat"] + ttl
    if args.stores is not None:
        stores = [store.strip() for store in args.stores.split(",") if store.strip()]
        bad = [store for store in stores if not valid_id(store)]
        if bad or not stores:
            raise CommandError(f"--stores: {bad[0] if bad else args.stores!r} is not a store id", EXIT_USAGE)
        claims["stores"] = stores
    if settings.auth.audience:
        claims["aud"] = settings.auth.audience
    if settings.auth.issuer:
        claims["iss"] = settings.auth.issuer
    if len(secret.encode()) < 32:
        print("warning: JWT_SECRET is shorter than 32 bytes (RFC 7518 asks for at least 32)", file=sys.stderr)
    with warnings.catch_warnings():  # PyJWT's own multi-line warning says the same as the line above
        warnings.simplefilter("ignore")
        print(jwt.encode(claims, secret, algorithm="HS256"))
    return 0


# --- check-config --------------------------------------------------------------------------

_SECRET_FIELDS = frozenset({"jwt_secret", "jwt_public_key", "api_keys"})


def _settings(overrides: dict[str, Any] | None = None) -> Settings:
    try:
        return load_settings(overrides=overrides)
    except ConfigError as exc:
        raise CommandError(f"configuration error: {exc}", EXIT_USAGE) from None


def check_config() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILED
    for name, value in flatten(settings):
        print(f"{name} = {json.dumps(value)}")
    print("configuration OK", file=sys.stderr)
    return 0


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every setting as (dotted name, printable value), secrets masked."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        rows: list[tuple[str, Any]] = []
        for item in dataclasses.fields(value):
            name, setting = f"{prefix}{item.name}", getattr(value, item.name)
            if item.name in _SECRET_FIELDS or item.name == "url":  # redis.url may hold a password
                rows.append((name, mask(item.name, setting)))
            else:
                rows += flatten(setting, name + ".")
        return rows
    if isinstance(value, dict):
        if not value:
            return [(prefix.rstrip("."), {})]
        return [row for key, item in value.items() for row in flatten(item, f"{prefix}{key}.")]
    if isinstance(value, tuple):
        value = list(value)
    return [(prefix.rstrip("."), value)]


def mask(name: str, value: Any) -> Any:
    """A secret is shown as whether it is set (and how many keys), never its value."""
    if value in (None, "", ()):
        return None
    if name == "url":
        parts = urlsplit(str(value))
        if parts.password:
            host = parts.hostname or ""
            netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
        return value
    if isinstance(value, tuple):
        return f"*** ({len(value)} keys)"
    return "***"
