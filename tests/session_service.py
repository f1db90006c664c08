"""A real session service for tests (contract §8): an aiohttp app on a free port that answers by
the client's ``session`` cookie and counts the requests it gets.

Every cookie value used in tests contains ``CANARY``, and every token starts with ``eyJ``: the
``log_watch`` fixture fails a test whose logs contain either.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from server.logs import JsonFormatter, TextFormatter

COOKIE = "session"
SECRET_MARKERS = ("CANARY", "eyJ")  # in every session cookie value / at the start of every JWT


@dataclass
class Answer:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes
    delay: float = 0.0


@dataclass
class SessionService:
    """``answers[cookie value]`` says what to answer; an unknown session is a 401."""

    answers: dict[str, Answer] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)  # by cookie value ("" = none)
    headers: list[dict[str, str]] = field(default_factory=list)  # Cookie/Authorization as received
    url: str = ""

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def user(
        self, cookie: str, user_id: str, role: str | None = None, stores: list[str] | None = None
    ) -> None:
        body: dict[str, Any] = {"userId": user_id}
        if role is not None:
            body["role"] = role
        if stores is not None:
            body["stores"] = stores
        self.answers[cookie] = Answer(200, body)

    async def handle(self, request: web.Request) -> web.Response:
        cookie = request.cookies.get(COOKIE, "")
        self.requests[cookie] += 1
        self.headers.append({k: v for k, v in request.headers.items() if k in ("Cookie", "Authorization")})
        answer = self.answers.get(cookie, Answer(401, {"error": "no session"}))
        if answer.delay:
            await asyncio.sleep(answer.delay)
        body = answer.body if isinstance(answer.body, bytes) else orjson.dumps(answer.body)
        return web.Response(status=answer.status, body=body, content_type="application/json")


@pytest.fixture
async def session_service(aiohttp_server: Any) -> AsyncIterator[SessionService]:
    service = SessionService()
    app = web.Application()
    app.router.add_get("/api/auth/realtime", service.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    service.url = str(server.make_url("/api/auth/realtime"))
    yield service


def cookie_header(value: str, *others: str) -> dict[str, str]:
    """A browser's Cookie header: the session cookie among the site's others."""
    return {"Cookie": "; ".join(["theme=dark", f"{COOKIE}={value}", *others])}


def assert_no_secrets(text: str) -> None:
    for marker in SECRET_MARKERS:
        assert marker not in text, (
            f"a credential reached the logs: ...{text[max(0, text.find(marker) - 200) :][:400]}"
        )


@pytest.fixture(autouse=False)
def log_watch(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture every log line the server writes during the test (as production logs them: the
    aiohttp access log off) and fail if one contains a cookie or token value, in text or JSON."""
    caplog.set_level(logging.INFO)  # first: the last call sets the capturing handler's level
    caplog.set_level(logging.DEBUG, logger="handlers")
    caplog.set_level(logging.DEBUG, logger="server")
    access = logging.getLogger("aiohttp.access")
    level = access.level
    access.setLevel(logging.WARNING)  # as server.logs.configure_logging does
    yield caplog
    access.setLevel(level)
    text, json = TextFormatter(), JsonFormatter()
    # In a fixture's teardown, ``caplog.records`` holds only the teardown's: read every phase.
    for record in [r for when in ("setup", "call", "teardown") for r in caplog.get_records(when)]:
        assert_no_secrets(text.format(record))
        assert_no_secrets(json.format(record))
