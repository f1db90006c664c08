"""Settings: config.yaml (or CONFIG_FILE), overridden by environment variables, validated once.

Every shape is a marshmallow schema with ``unknown=RAISE``, so a misspelt key is an error, not a
silently ignored setting. ``load_settings`` raises ``ConfigError`` with one line that names the
setting; ``python -m server`` prints that line and exits non-zero.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate

from handlers.catalogue import BUILT_IN

DEFAULT_CONFIG_FILE = Path(__file__).resolve().parent.parent / "config.yaml"
FIELD_TYPES = ("string", "number", "integer", "boolean", "object", "array")
AUDIENCES = ("global", "store", "user", "explicit")
# Names a declared event type may not take: the messages the server itself sends on the plain
# WebSocket, and the event names Socket.IO reserves (clients would take them for those).
RESERVED_EVENT_TYPES = frozenset(
    {"connected", "subscribed", "unsubscribed", "pong", "error", "resync"}
    | {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)

# The contract's environment variables and the setting each one overrides.
ENV_SETTINGS = {
    "HOST": "host",
    "PORT": "port",
    "LOG_LEVEL": "log_level",
    "LOG_FORMAT": "log_format",
    "REDIS_URL": "redis.url",
    "JWT_SECRET": "auth.jwt_secret",
    "JWT_PUBLIC_KEY": "auth.jwt_public_key",
    "AUTH_INSECURE": "auth.insecure",
    "ADMIN_API_KEYS": "admin.api_keys",
    "AUTH_SESSION_URL": "auth.session_url",
    "CORS_ALLOWED_ORIGINS": "cors_allowed_origins",
}


class ConfigError(Exception):
    """A setting is missing or wrong; the message is one line naming it.

    ``log_format`` is the format the error should be logged in ("text" or "json"), when the
    settings got far enough to say.
    """

    def __init__(self, message: str, log_format: str | None = None) -> None:
        super().__init__(message)
        self.log_format = log_format


@dataclass(frozen=True)
class AuthSettings:
    insecure: bool = False
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key: str | None = field(default=None, repr=False)
    audience: str | None = None
    issuer: str | None = None
    cookie_name: str | None = None
    default_role: str = "customer"
    roles: tuple[str, ...] = ("customer", "merchant", "driver", "admin")
    require_exp: bool = True
    # Platform sessions (contract §8): identify token-less clients by the site's own session.
    session_url: str | None = field(default=None, repr=False)
    session_timeout_seconds: float = 2.0
    session_cache_seconds: float = 60.0
    session_cache_max_entries: int = 100_000
    session_recheck_seconds: float = 300.0
    session_max_concurrency: int = 32
    staff_roles: tuple[str, ...] = ("merchant",)


@dataclass(frozen=True)
class AdminSettings:
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    max_body_bytes: int = 1024 * 1024
    max_batch: int = 1000
    idempotency_ttl_seconds: int = 24 * 3600
    requests_per_second: float = 1000.0
    requests_burst: int = 2000
    max_event_bytes: int = 64 * 1024


@dataclass(frozen=True)
class WebSocketSettings:
    heartbeat_seconds: float = 25.0
    heartbeat_timeout_seconds: float = 20.0
    max_message_bytes: int = 64 * 1024
    send_buffer_bytes: int = 4 * 1024 * 1024
    compression: bool = False
    client_messages_per_second: float = 20.0
    client_messages_burst: int = 40
    max_stores_per_connection: int = 100
    connect_timeout_seconds: float = 45.0
    max_connections: int = 50_000
    max_connections_per_user: int = 20
    max_connecting: int = 64  # connects admitted at once; the rest wait their turn (transports/gate.py)
    max_queued_packets: int = 10_000


@dataclass(frozen=True)
class HistorySettings:
    max_events: int = 10_000
    max_age_seconds: int = 600
    resume_window_seconds: int = 120


@dataclass(frozen=True)
class RedisSettings:
    url: str | None = field(default=None, repr=False)
    tls_verify: bool = True
    key_prefix: str = "rt"
    presence_ttl_seconds: float = 15.0
    retry_after_seconds: int = 2


@dataclass(frozen=True)
class EventTypeSettings:
    """An extra event type declared in config.yaml: its required data fields and default audience."""

    fields: Mapping[str, str]
    audience: str = "explicit"


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 3000
    node_name: str = ""
    log_level: str = "info"
    log_format: str = "text"
    shutdown_timeout_seconds: float = 10.0
    # Connections the kernel queues before the server accepts them (listen(2)); aiohttp's 128
    # overflowed in reconnect storms. The kernel caps it at net.core.somaxconn.
    backlog: int = 4096
    http_idle_timeout_seconds: float = 15.0
    cors_allowed_origins: tuple[str, ...] = ()
    auth: AuthSettings = field(default_factory=AuthSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    websocket: WebSocketSettings = field(default_factory=WebSocketSettings)
    history: HistorySettings = field(default_factory=HistorySettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    event_types: Mapping[str, EventTypeSettings] = field(default_factory=dict)


# --- schemas: one per section, unknown keys refused -------------------------------------------

_positive = validate.Range(min=0, min_inclusive=False)


class _Section(Schema):
    class Meta:
        unknown = RAISE


def _check_http_url(url: str | None) -> None:
    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ValidationError("has a port that is not a number from 0 to 65535") from None
    if parts.username is not None or parts.password is not None:
        # The client's own Authorization header is what is forwarded: no second credential.
        raise ValidationError("must not carry a user name or password")


class _AuthSchema(_Section):
    insecure = fields.Boolean()
    jwt_secret = fields.String(allow_none=True)
    jwt_public_key = fields.String(allow_none=True)
    audience = fields.String(allow_none=True)
    issuer = fields.String(allow_none=True)
    cookie_name = fields.String(allow_none=True)
    default_role = fields.String()
    roles = fields.List(fields.String(validate=validate.Length(min=1)), validate=validate.Length(min=1))
    require_exp = fields.Boolean()
    session_url = fields.String(allow_none=True, validate=_check_http_url)
    session_timeout_seconds = fields.Float(validate=_positive)
    session_cache_seconds = fields.Float(validate=validate.Range(min=0))
    session_cache_max_entries = fields.Integer(validate=_positive)
    session_recheck_seconds = fields.Float(validate=validate.Range(min=0))
    session_max_concurrency = fields.Integer(validate=_positive)
    staff_roles = fields.List(fields.String(validate=validate.Length(min=1)))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> AuthSettings:
        for name in ("roles", "staff_roles"):
            if name in data:
                data[name] = tuple(data[name])
        return AuthSettings(**data)


class _AdminSchema(_Section):
    api_keys = fields.List(fields.String(validate=validate.Length(min=1)))
    max_body_bytes = fields.Integer(validate=_positive)
    max_batch = fields.Integer(validate=_positive)
    idempotency_ttl_seconds = fields.Integer(validate=_positive)
    requests_per_second = fields.Float(validate=_positive)
    requests_burst = fields.Integer(validate=_positive)
    max_event_bytes = fields.Integer(validate=_positive)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> AdminSettings:
        if "api_keys" in data:
            data["api_keys"] = tuple(data["api_keys"])
        return AdminSettings(**data)


class _WebSocketSchema(_Section):
    heartbeat_seconds = fields.Float(validate=_positive)
    heartbeat_timeout_seconds = fields.Float(validate=_positive)
    max_message_bytes = fields.Integer(validate=_positive)
    send_buffer_bytes = fields.Integer(validate=_positive)
    compression = fields.Boolean()
    client_messages_per_second = fields.Float(validate=_positive)
    client_messages_burst = fields.Integer(validate=_positive)
    max_stores_per_connection = fields.Integer(validate=_positive)
    connect_timeout_seconds = fields.Float(validate=_positive)
    max_connections = fields.Integer(validate=_positive)
    max_connections_per_user = fields.Integer(validate=_positive)
    max_connecting = fields.Integer(validate=_positive)
    max_queued_packets = fields.Integer(validate=_positive)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> WebSocketSettings:
        return WebSocketSettings(**data)


class _HistorySchema(_Section):
    max_events = fields.Integer(validate=validate.Range(min=0))
    max_age_seconds = fields.Integer(validate=validate.Range(min=0))
    resume_window_seconds = fields.Integer(validate=validate.Range(min=0))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> HistorySettings:
        return HistorySettings(**data)


def _check_redis_url(url: str | None) -> None:
    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValidationError("must be a redis:// or rediss:// URL with a host")


class _RedisSchema(_Section):
    url = fields.String(allow_none=True, validate=_check_redis_url)
    tls_verify = fields.Boolean()
    key_prefix = fields.String(validate=validate.Length(min=1))
    presence_ttl_seconds = fields.Float(validate=_positive)
    retry_after_seconds = fields.Integer(validate=_positive)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> RedisSettings:
        return RedisSettings(**data)


class _EventTypeSchema(_Section):
    fields_ = fields.Dict(
        data_key="fields",
        keys=fields.String(),
        values=fields.String(validate=validate.OneOf(FIELD_TYPES)),
        load_default=dict,
    )
    audience = fields.String(validate=validate.OneOf(AUDIENCES))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> EventTypeSettings:
        return EventTypeSettings(fields=data.pop("fields_"), **data)


class _SettingsSchema(_Section):
    host = fields.String(validate=validate.Length(min=1))
    port = fields.Integer(validate=validate.Range(min=0, max=65535))
    node_name = fields.String(allow_none=True)
    log_level = fields.String(validate=validate.OneOf(["debug", "info", "warning", "error", "critical"]))
    log_format = fields.String(validate=validate.OneOf(["text", "json"]))
    shutdown_timeout_seconds = fields.Float(validate=_positive)
    backlog = fields.Integer(validate=validate.Range(min=1, max=65535))
    http_idle_timeout_seconds = fields.Float(validate=_positive)
    cors_allowed_origins = fields.List(fields.String(validate=validate.Length(min=1)))
    auth = fields.Nested(_AuthSchema)
    admin = fields.Nested(_AdminSchema)
    websocket = fields.Nested(_WebSocketSchema)
    history = fields.Nested(_HistorySchema)
    redis = fields.Nested(_RedisSchema)
    event_types = fields.Dict(keys=fields.String(), values=fields.Nested(_EventTypeSchema))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Settings:
        if "cors_allowed_origins" in data:
            data["cors_allowed_origins"] = tuple(data["cors_allowed_origins"])
        if not data.get("node_name"):
            data["node_name"] = ""
        return Settings(**data)


# --- loading -------------------------------------------------------------------------------

_SECTIONS = ("auth", "admin", "websocket", "history", "redis", "event_types")


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Map the contract's environment variables onto the config tree (as raw, unvalidated values)."""
    tree: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        *parents, leaf = path.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value

    simple = (
        "HOST",
        "PORT",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "REDIS_URL",
        "JWT_SECRET",
        "JWT_PUBLIC_KEY",
        "AUTH_SESSION_URL",
    )
    for var in simple:
        path = ENV_SETTINGS[var]
        if env.get(var):
            value: Any = env[var]
            if var in ("LOG_LEVEL", "LOG_FORMAT"):
                value = value.lower()
            put(path, value)
    if "AUTH_INSECURE" in env:
        put("auth.insecure", env["AUTH_INSECURE"].strip().lower() in ("1", "true", "yes"))
    if env.get("ADMIN_API_KEYS"):
        put("admin.api_keys", _csv(env["ADMIN_API_KEYS"]))
    if env.get("CORS_ALLOWED_ORIGINS"):
        put("cors_allowed_origins", _csv(env["CORS_ALLOWED_ORIGINS"]))
    return tree


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            merged[key] = _merge(current, value)
        elif isinstance(value, dict) and current is not None:
            continue  # the file has something other than a section here: keep it, validation names it
        else:
            merged[key] = value
    return merged


def _first_error(messages: Any) -> tuple[list[str], str]:
    """The first of marshmallow's nested errors: the path of the setting and what is wrong."""
    path: list[str] = []
    while isinstance(messages, dict):
        key, messages = next(iter(messages.items()))
        if key == "_schema":
            continue
        if messages == ["Unknown field."]:
            return [*path, str(key)], "unknown setting"
        path.append(str(key))
        if _is_dict_entry(path) and isinstance(messages, dict):
            # A dict setting nests each entry's errors under "key" (its name) or "value".
            messages = next(iter(messages.values()))
    if isinstance(messages, list) and messages:
        messages = messages[0]
    return path, str(messages)


def _is_dict_entry(path: list[str]) -> bool:
    """``event_types.NAME`` and ``event_types.NAME.fields.FIELD``: entries of a dict setting."""
    return path[0] == "event_types" and (len(path) == 2 or (len(path) == 4 and path[2] == "fields"))


def _setting_name(path: list[str], env: Mapping[str, str]) -> str:
    """How to name a setting in an error: its environment variable when that is what set it."""
    dotted = ".".join(path)
    for var, setting in ENV_SETTINGS.items():
        overridden = var in env if var == "AUTH_INSECURE" else bool(env.get(var))
        if overridden and (dotted == setting or dotted.startswith(setting + ".")):
            return var
    return dotted


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"CONFIG_FILE: cannot read {path}: {exc.strerror}") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"CONFIG_FILE: {path} is not valid YAML{where}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"CONFIG_FILE: {path} must hold a mapping of settings")
    # A section whose keys are all commented out is YAML null: read it as an empty section.
    return {key: {} if value is None and key in _SECTIONS else value for key, value in tree.items()}


def default_node_name(env: Mapping[str, str]) -> str:
    return env.get("DYNO") or f"{socket.gethostname()}-{os.getpid()}"


def load_settings(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Read the config file, apply environment variables, then ``overrides`` (for tests)."""
    env = os.environ if env is None else env
    tree: dict[str, Any] = {}
    try:
        path = Path(env["CONFIG_FILE"]) if env.get("CONFIG_FILE") else DEFAULT_CONFIG_FILE
        tree = _read_file(path) if (env.get("CONFIG_FILE") or path.exists()) else {}
        tree = _merge(tree, _env_overrides(env))
        if overrides:
            tree = _merge(tree, dict(overrides))
        try:
            settings: Settings = _SettingsSchema().load(tree)
        except ValidationError as exc:
            where, what = _first_error(exc.messages)
            raise ConfigError(f"{_setting_name(where, env)}: {what}") from None
        if not settings.node_name:
            settings = replace(settings, node_name=default_node_name(env))
        check_settings(settings)
    except ConfigError as exc:
        # Log the error as the operator asked for logs, if the settings got far enough to say.
        log_format = tree.get("log_format") or env.get("LOG_FORMAT", "").lower()
        exc.log_format = log_format if log_format in ("text", "json") else None
        raise
    return settings


def check_settings(settings: Settings) -> None:
    """Rules across settings: what must be configured before the server may start."""
    auth = settings.auth
    if auth.default_role not in auth.roles:
        raise ConfigError(f"auth.default_role: {auth.default_role!r} is not one of auth.roles")
    if not auth.insecure:
        if not (auth.jwt_secret or auth.jwt_public_key or auth.session_url):
            raise ConfigError(
                "JWT_SECRET, JWT_PUBLIC_KEY or AUTH_SESSION_URL: required to identify clients "
                "(or set AUTH_INSECURE=1 for development)"
            )
        if not settings.admin.api_keys:
            raise ConfigError(
                "ADMIN_API_KEYS: required to protect the admin API (or set AUTH_INSECURE=1 for development)"
            )
        if "*" in settings.cors_allowed_origins:
            raise ConfigError("CORS_ALLOWED_ORIGINS: '*' is allowed only with AUTH_INSECURE=1")
    built_in = {event_type.name for event_type in BUILT_IN}
    for name in settings.event_types:
        if name in built_in:
            raise ConfigError(f"event_types.{name}: a built-in event type cannot be redefined")
        if name in RESERVED_EVENT_TYPES:
            raise ConfigError(f"event_types.{name}: reserved, the server or Socket.IO uses this name")
    if auth.jwt_public_key:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            load_pem_public_key(auth.jwt_public_key.encode())
        except ValueError:
            raise ConfigError("JWT_PUBLIC_KEY: not a PEM public key") from None
