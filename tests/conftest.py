"""Fixtures: servers on real sockets, with the memory or a real Redis backplane."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from server.app import create_app
from server.config import Settings, load_settings
from tests.clients import ADMIN_KEY, JWT_SECRET, Live
from tests.redis_server import RedisServer
from tests.session_service import log_watch, session_service  # noqa: F401 (fixtures)

BASE_ENV = {"JWT_SECRET": JWT_SECRET, "ADMIN_API_KEYS": ADMIN_KEY, "CONFIG_FILE": os.devnull}


@dataclass(frozen=True)
class ExternalRedis:
    url: str


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | ExternalRedis]:
    """A private redis-server for the whole run (tests that stop it start their own).

    Without any redis-server binary, ``REDIS_URL`` is used instead (fault tests need a binary).
    """
    try:
        server = RedisServer()
    except (RuntimeError, ImportError):
        if not os.environ.get("REDIS_URL"):
            raise
        yield ExternalRedis(os.environ["REDIS_URL"])
        return
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own: fault tests stop, pause and restart it."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
def backplane(request: pytest.FixtureRequest) -> str:
    """Run the test on each backplane, as encode/broadcaster runs its cases on every backend."""
    kind: str = request.param
    return kind


def make_settings(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    return load_settings(env={**BASE_ENV, **(env or {})}, overrides=overrides)


@pytest.fixture
def settings_for(backplane: str, request: pytest.FixtureRequest) -> Callable[..., Settings]:
    """Settings on this test's backplane; each test gets its own Redis key prefix."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"

    def build(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        if backplane == "redis":
            redis: RedisServer | ExternalRedis = request.getfixturevalue("redis_server")
            overrides.setdefault("redis", {})
            overrides["redis"] = {"url": redis.url, "key_prefix": prefix, **overrides["redis"]}
        return make_settings(env, **overrides)

    return build


StartServer = Callable[..., Awaitable[Live]]


@pytest.fixture
async def start_server(aiohttp_server: Any) -> AsyncIterator[StartServer]:
    """``await start_server(settings)`` → a running app on a free port, with an HTTP session."""
    sessions: list[aiohttp.ClientSession] = []

    async def start(settings: Settings) -> Live:
        server = await aiohttp_server(create_app(settings), host="127.0.0.1")
        session = aiohttp.ClientSession()
        sessions.append(session)
        key = settings.admin.api_keys[0] if settings.admin.api_keys else None
        return Live(base=str(server.make_url("")).rstrip("/"), app=server.app, session=session, admin_key=key)

    yield start
    for session in sessions:
        await session.close()


@pytest.fixture
async def live(start_server: StartServer, settings_for: Callable[..., Settings]) -> Live:
    """One server with the default test settings, on each backplane."""
    return await start_server(settings_for())
