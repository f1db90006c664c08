"""Fuzzing the admin API: random bodies and headers to ``POST /api/v1/events``, random methods and
path segments on the other routes.

Never a 5xx; every 4xx in the contract's one JSON shape ``{"error", "message", "details"}``; every
202 the contract's answer; nothing logged as an error, no traceback; clients stay served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from server.config import Settings
from tests.clients import ADMIN_KEY
from tests.conftest import StartServer
from tests.fuzzing import assert_log_clean, fuzz_settings, json_values
from tests.support import ERROR_KEYS, request
from tests.test_fuzz_frames import Bystanders

EVENT_TYPES = [
    "order_updated",
    "store_updated",
    "product_updated",
    "store_availability_changed",
    "product_availability_changed",
]
FIELDS = ["orderId", "order", "storeId", "store", "product", "productId", "isActive", "available"]


@pytest.fixture
def backplane() -> str:
    return "memory"


@pytest.fixture
async def served(
    start_server: StartServer, settings_for: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Bystanders]:
    live = await start_server(settings_for(admin={"max_body_bytes": 64 * 1024, "max_batch": 20}))
    bystanders = await Bystanders.open(live)
    yield bystanders
    await bystanders.close()
    assert_log_clean(caplog)


# --- bodies ---------------------------------------------------------------------------------------

ids = st.sampled_from(["s1", "o1", "p1", "u1", "", " ", "a" * 129, "é", "s1\x00"]) | st.text(max_size=8)
field_values = (
    ids
    | json_values
    | st.fixed_dictionaries(
        {}, optional={"id": ids, "userId": ids, "customerId": ids, "storeId": ids, "driverId": ids}
    )
)


NESTED = "\u2063nested\u2063"  # stands for the nested JSON in an event, until it is encoded


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    """JSON nested hundreds of levels deep (orjson encodes 254 levels at most; it decodes 1024)."""
    depth = draw(st.sampled_from([200, 254, 255, 300, 1000, 1023, 1100]))
    lists = draw(st.booleans())
    inner = draw(st.sampled_from([b"1", b'"x"', b"null", b"{}"]))
    if lists:
        return b"[" * depth + inner + b"]" * depth
    return b'{"k":' * depth + inner + b"}" * depth


def encode(value: Any, deep: bytes | None) -> bytes:
    body = orjson.dumps(value)
    return body.replace(orjson.dumps(NESTED), deep) if deep is not None else body


VALID_EVENTS = [
    {"type": "order_updated", "data": {"orderId": "o1", "order": {"userId": "u1", "storeId": "s1"}}},
    {"type": "store_updated", "data": {"storeId": "s1", "store": {}}},
    {"type": "product_updated", "data": {"storeId": "s1", "product": {"id": "p1"}}},
    {"type": "store_availability_changed", "data": {"storeId": "s1", "isActive": True}},
    {
        "type": "product_availability_changed",
        "data": {"storeId": "s1", "productId": "p1", "available": False},
    },
]


@st.composite
def events(draw: st.DrawFn) -> Any:
    """An event object, close enough to valid that validation runs deep, often not quite."""
    if draw(st.booleans()):
        # A valid event with one thing changed: a field of data, the audience, the version.
        valid: dict[str, Any] = orjson.loads(orjson.dumps(draw(st.sampled_from(VALID_EVENTS))))
        place = draw(st.sampled_from(["data", "top"]))
        target = valid["data"] if place == "data" else valid
        key = draw(st.sampled_from([*FIELDS, "userId", "to", "version", "idempotencyKey"]))
        target[key] = draw(field_values | st.just(NESTED))
        if key == "order" and draw(st.booleans()):
            target[key] = {
                k: draw(ids)
                for k in draw(st.sets(st.sampled_from(["userId", "customerId", "storeId", "driverId"])))
            }
        return valid
    event: dict[str, Any] = {
        "type": draw(st.sampled_from(EVENT_TYPES) | st.text(max_size=10) | json_values),
    }
    if draw(st.integers(0, 9)):
        data = draw(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), field_values, max_size=5))
        if draw(st.integers(0, 9)) == 0:
            data[draw(st.sampled_from(["store", "order", "product", "extra"]))] = NESTED
        event["data"] = data
    if draw(st.booleans()):
        event["to"] = draw(
            st.dictionaries(
                st.sampled_from(["users", "stores", "staff", "roles", "global", "x"]),
                st.lists(ids, max_size=3) | json_values,
                max_size=4,
            )
            | json_values
        )
    if draw(st.booleans()):
        event["version"] = draw(st.integers(-2, 2**64 - 1) | json_values)
    if draw(st.integers(0, 4)) == 0:
        event["idempotencyKey"] = draw(st.text(max_size=300) | json_values)
    return event


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["event", "event", "batch", "json", "bytes", "big", "deep"]))
    deep = draw(nested())
    if kind == "event":
        return encode(draw(events()), deep)
    if kind == "batch":
        batch = draw(st.lists(events(), max_size=25) | json_values)
        extra = draw(st.dictionaries(st.text(max_size=3), json_values, max_size=2))
        return encode({**extra, "events": batch}, deep)
    if kind == "json":
        return orjson.dumps(draw(json_values))
    if kind == "deep":  # valid but for its depth
        return b'{"type":"store_updated","data":{"storeId":"s1","store":{"x":' + deep + b"}}}"
    if kind == "big":
        return b'{"type":"store_updated","data":{"storeId":"s1","store":{"x":"' + b"x" * 70_000 + b'"}}}'
    return draw(st.binary(max_size=80))


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``common`` nine times in ten, else ``rare``: most requests must get past the first checks."""
    # (hypothesis draws small integers more often: the rare case is the largest)
    return st.integers(0, 9).flatmap(lambda n: rare if n == 9 else common)


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
headers = st.fixed_dictionaries(
    {
        "Content-Type": mostly(
            st.sampled_from(["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"]),
            st.sampled_from(["text/plain", ""]) | header_text,
        ),
        "Authorization": mostly(
            st.sampled_from([f"Bearer {ADMIN_KEY}", f"bearer  {ADMIN_KEY} "]),
            st.sampled_from(["", "Bearer", f"Bearer {ADMIN_KEY}x"]) | header_text,
        ),
    },
    optional={"Idempotency-Key": header_text | st.just("K#0"), "X-Fuzz": header_text},
)


def check_answer(status: int, answer_headers: dict[str, str], body: Any) -> None:
    assert status < 500, (status, body)
    if status >= 400:
        assert answer_headers.get("Content-Type", "").startswith("application/json"), answer_headers
        assert isinstance(body, dict) and set(body) == ERROR_KEYS, body
        assert isinstance(body["error"], str) and body["error"], body
        assert isinstance(body["message"], str) and body["message"], body
        assert isinstance(body["details"], dict), body
    elif status == 202:
        assert isinstance(body["accepted"], int) and isinstance(body["ids"], list), body


@given(body=bodies(), sent=headers)
@fuzz_settings(400)
async def test_random_event_posts_get_the_contracts_answers(
    served: Bystanders, body: bytes, sent: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    status, answer_headers, answer = await request(
        served.live, "POST", "/api/v1/events", body=body, headers=sent, admin=False
    )
    check_answer(status, answer_headers, answer)
    if status == 202:
        served.sio.events.clear()  # an accepted global event reached the bystanders too
    assert_log_clean(caplog)


segments = st.sampled_from(["u1", "bystander-not", "", "..", "%", "a" * 200, "é", "x y"]) | st.text(
    max_size=12
)


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    route=st.sampled_from(
        ["stats", "presence/users/{}", "users/{}/disconnect", "openapi.json", "{}", "events/{}"]
    ),
    segment=segments,
    body=st.none() | bodies(),
    sent=headers,
)
@fuzz_settings(300)
async def test_random_requests_to_the_other_admin_routes_get_the_contracts_answers(
    served: Bystanders,
    method: str,
    route: str,
    segment: str,
    body: bytes | None,
    sent: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    if segment == "bystander":
        segment = "someone-else"  # the bystanders must stay connected
    # A dot segment is resolved by the client (RFC 3986 §5.2.4): "/api/v1/.." is "/api/", no
    # admin route, whose 404 is aiohttp's own.
    assume(segment not in (".", ".."))
    path = "/api/v1/" + route.format(quote(segment, safe=""))
    status, answer_headers, answer = await request(
        served.live, method, path, body=body, headers=sent, admin=False
    )
    check_answer(status, answer_headers, answer)
    if status == 202:
        served.sio.events.clear()
    assert_log_clean(caplog)
