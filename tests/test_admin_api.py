"""The admin API (contract §6) over real sockets: every error answer, pass-through, idempotency, operators.

Every refused request is checked three ways: its status, the JSON error shape, and that a client of
each transport in every audience the event could have reached received nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import socketio

from server.config import Settings
from tests.clients import Live, make_token, no_message, recv, recv_close
from tests.conftest import StartServer
from tests.support import Watchers, assert_error, eventually, post_raw, request

ORDER = {"type": "order_updated", "data": {"orderId": "o1", "order": {"userId": "alice", "status": "ready"}}}
STORE = {"type": "store_updated", "data": {"storeId": "s1", "store": {"name": "Pizza"}}}
PRODUCT = {"type": "product_updated", "data": {"storeId": "s1", "product": {"id": "p1"}}}


def availability(store_id: str = "s1", active: Any = True) -> dict[str, Any]:
    return {"type": "store_availability_changed", "data": {"storeId": store_id, "isActive": active}}


@pytest.fixture
async def watchers(live: Live) -> AsyncIterator[Watchers]:
    """alice (the order's owner), bob, and carol viewing s1: together every audience of the events above."""
    opened = await Watchers.open(live, {"alice": [], "bob": [], "carol": ["s1"]})
    yield opened
    await opened.close()


async def refused(
    live: Live, watchers: Watchers, answer: tuple[int, dict[str, str], Any], status: int, code: str
) -> dict[str, Any]:
    body = assert_error(answer[0], answer[2], status, code)
    assert answer[1]["Content-Type"].startswith("application/json"), answer[1]
    await watchers.assert_nothing(live)
    return body


# --- 400, 401, 413, 415 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", [b'{"type": "store_updated", "data": {', b"", b"not json", b"{'single': 'quotes'}"]
)
async def test_malformed_json_is_400_and_delivers_nothing(live: Live, watchers: Watchers, raw: bytes) -> None:
    await refused(live, watchers, await post_raw(live, raw), 400, "malformed_json")


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong-key",
        "Bearer test-admin-key-and-more",
        "Basic test-admin-key",
        "Token test-admin-key",
        "test-admin-key",
    ],
)
async def test_missing_or_wrong_api_key_is_401_and_delivers_nothing(
    live: Live, watchers: Watchers, authorization: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    async with live.session.post(
        f"{live.base}/api/v1/events", data=orjson.dumps(STORE), headers=headers
    ) as resp:
        answer = (resp.status, dict(resp.headers), await resp.json())
    await refused(live, watchers, answer, 401, "unauthorized")
    assert answer[1].get("WWW-Authenticate", "").startswith("Bearer"), answer[1]


async def test_the_bearer_scheme_is_case_insensitive(live: Live) -> None:
    status, _, body = await post_raw(live, orjson.dumps(STORE), Authorization="bearer test-admin-key")
    assert status == 202, body


@pytest.mark.parametrize("path", ["/api/v1/stats", "/api/v1/presence/users/alice", "/api/v1/openapi.json"])
async def test_every_admin_route_needs_the_key(live: Live, path: str) -> None:
    status, _, body = await request(live, "GET", path, admin=False)
    assert_error(status, body, 401, "unauthorized")
    status, _, body = await request(live, "GET", path, headers={"Authorization": "Bearer nope"}, admin=False)
    assert_error(status, body, 401, "unauthorized")


async def test_disconnect_route_needs_the_key(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("alice"))
    status, _, body = await request(live, "POST", "/api/v1/users/alice/disconnect", admin=False)
    assert_error(status, body, 401, "unauthorized")
    await no_message(ws, 0.1)
    await ws.close()


def _big_body(size: int) -> bytes:
    """A valid event whose JSON is exactly ``size`` bytes."""
    empty = orjson.dumps({"type": "store_updated", "data": {"storeId": "s1", "store": {}, "pad": ""}})
    return orjson.dumps(
        {"type": "store_updated", "data": {"storeId": "s1", "store": {}, "pad": "x" * (size - len(empty))}}
    )


async def test_body_over_a_configured_limit_is_413_and_delivers_nothing(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(admin={"max_body_bytes": 300}))
    watchers = await Watchers.open(live, {"alice": [], "carol": ["s1"]})
    exact = _big_body(300)
    assert len(exact) == 300
    status, _, body = await post_raw(live, exact)
    assert status == 202, body  # the limit itself is allowed
    await watchers.drain(1)
    await refused(live, watchers, await post_raw(live, _big_body(301)), 413, "payload_too_large")

    # Without Content-Length (chunked), the limit holds all the same.
    async def chunks() -> AsyncIterator[bytes]:
        body = _big_body(1000)
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    async with live.session.post(
        f"{live.base}/api/v1/events",
        data=chunks(),
        headers={"Content-Type": "application/json", **live.headers()},
    ) as resp:
        answer = (resp.status, dict(resp.headers), await resp.json())
    await refused(live, watchers, answer, 413, "payload_too_large")
    await watchers.close()


async def test_body_over_the_default_one_mebibyte_is_413(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    # One event of 1 MiB: over the default admin.max_event_bytes, which is not what this tests.
    live = await start_server(settings_for(admin={"max_event_bytes": 2 * 1024 * 1024}))
    watchers = await Watchers.open(live, {"alice": [], "carol": ["s1"]})
    status, _, body = await post_raw(live, _big_body(1024 * 1024))
    assert status == 202, body  # the limit itself is allowed
    await watchers.drain(1)
    await refused(live, watchers, await post_raw(live, _big_body(1024 * 1024 + 1)), 413, "payload_too_large")
    await watchers.close()


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_body_that_is_not_json_is_415_and_delivers_nothing(
    live: Live, watchers: Watchers, content_type: str | None
) -> None:
    answer = await post_raw(live, orjson.dumps(STORE), content_type=content_type)
    await refused(live, watchers, answer, 415, "unsupported_media_type")


async def test_json_with_a_charset_parameter_is_accepted(live: Live) -> None:
    status, _, body = await post_raw(
        live, orjson.dumps(STORE), content_type="application/json; charset=utf-8"
    )
    assert status == 202, body


# --- 422 ------------------------------------------------------------------------------------------


def _fields(body: dict[str, Any], index: int = 0) -> dict[str, list[str]]:
    """The fields named for event ``index`` in a 422's details."""
    problems = body["details"]["events"]
    entry = next(p for p in problems if p["index"] == index)
    fields: dict[str, list[str]] = entry["fields"]
    return fields


INVALID_EVENTS: dict[str, tuple[Any, str]] = {
    # name: (event, field the details must name)
    "unknown type": ({"type": "pizza_baked", "data": {"storeId": "s1"}}, "type"),
    "empty type": ({"type": "", "data": {"storeId": "s1"}}, "type"),
    "type not a string": ({"type": 7, "data": {"storeId": "s1"}}, "type"),
    "missing type": ({"data": {"storeId": "s1", "store": {}}}, "type"),
    "missing data": ({"type": "store_updated"}, "data"),
    "data not an object": ({"type": "store_updated", "data": ["s1"]}, "data"),
    "missing orderId": ({"type": "order_updated", "data": {"order": {"userId": "alice"}}}, "data.orderId"),
    "missing order": ({"type": "order_updated", "data": {"orderId": "o1"}}, "data.order"),
    "missing storeId": ({"type": "store_updated", "data": {"store": {}}}, "data.storeId"),
    "missing isActive": ({"type": "store_availability_changed", "data": {"storeId": "s1"}}, "data.isActive"),
    "missing productId": (
        {"type": "product_availability_changed", "data": {"storeId": "s1", "available": True}},
        "data.productId",
    ),
    "orderId a number": (
        {"type": "order_updated", "data": {"orderId": 123, "order": {"userId": "alice"}}},
        "data.orderId",
    ),
    "order a string": ({"type": "order_updated", "data": {"orderId": "o1", "order": "alice"}}, "data.order"),
    "storeId a number": ({"type": "store_updated", "data": {"storeId": 12, "store": {}}}, "data.storeId"),
    "storeId with a space": (
        {"type": "store_updated", "data": {"storeId": "s 1", "store": {}}},
        "data.storeId",
    ),
    "isActive 'yes'": (availability(active="yes"), "data.isActive"),
    "isActive 'true'": (availability(active="true"), "data.isActive"),
    "isActive 1": (availability(active=1), "data.isActive"),
    "isActive null": (availability(active=None), "data.isActive"),
    "available 'no'": (
        {
            "type": "product_availability_changed",
            "data": {"storeId": "s1", "productId": "p1", "available": "no"},
        },
        "data.available",
    ),
    "unknown envelope field": ({**STORE, "priority": "high"}, "priority"),
    "idempotencyKey a number": ({**STORE, "idempotencyKey": 5}, "idempotencyKey"),
    "to not an object": ({**STORE, "to": "global"}, "to"),
    "to.users not a list": ({**STORE, "to": {"users": "alice"}}, "to.users"),
    "to.global 'yes'": ({**STORE, "to": {"global": "yes"}}, "to.global"),
    "to with an unknown key": ({**STORE, "to": {"everyone": True}}, "to.everyone"),
    "to with a misspelt key": ({**STORE, "to": {"user": ["alice"]}}, "to.user"),
    "to naming nobody": ({**STORE, "to": {}}, "to"),
    "to with empty lists": ({**STORE, "to": {"users": [], "stores": [], "roles": [], "global": False}}, "to"),
    "to an unknown role": ({**STORE, "to": {"roles": ["superuser"]}}, "to.roles"),
    "to a bad user id": ({**STORE, "to": {"users": ["a b"]}}, "to.users.0"),
    "order without a recipient": (
        {"type": "order_updated", "data": {"orderId": "o1", "order": {"status": "x"}}},
        "to",
    ),
    "order with a bad owner": (
        {"type": "order_updated", "data": {"orderId": "o1", "order": {"userId": "a b"}}},
        "to",
    ),
    "order to global": ({**ORDER, "to": {"global": True}}, "to"),
    "order to a user and global": ({**ORDER, "to": {"users": ["alice"], "global": True}}, "to"),
    "order to a store": ({**ORDER, "to": {"stores": ["s1"]}}, "to"),
    "order to a role": ({**ORDER, "to": {"roles": ["customer"]}}, "to"),
}


@pytest.mark.parametrize("case", list(INVALID_EVENTS))
async def test_invalid_event_is_422_naming_the_field_and_delivers_nothing(
    live: Live, watchers: Watchers, case: str
) -> None:
    event, field = INVALID_EVENTS[case]
    body = await refused(live, watchers, await post_raw(live, orjson.dumps(event)), 422, "validation_failed")
    fields = _fields(body)
    assert field in fields, (field, body)
    assert all(isinstance(m, str) and m for m in fields[field]), body


@pytest.mark.parametrize(
    "case", ["order to global", "unknown type", "isActive 'yes'", "order without a recipient"]
)
async def test_invalid_event_in_a_batch_of_one_is_422(live: Live, watchers: Watchers, case: str) -> None:
    event, field = INVALID_EVENTS[case]
    body = await refused(live, watchers, await live_post(live, {"events": [event]}), 422, "validation_failed")
    assert field in _fields(body, 0), body


async def live_post(live: Live, body: Any, **headers: str) -> tuple[int, dict[str, str], Any]:
    return await post_raw(live, orjson.dumps(body), **headers)


@pytest.mark.parametrize("body", [[STORE], "store_updated", 7, None, True])
async def test_body_that_is_not_an_object_is_422(live: Live, watchers: Watchers, body: Any) -> None:
    await refused(live, watchers, await live_post(live, body), 422, "validation_failed")


@pytest.mark.parametrize("events", [[], "x", {"0": STORE}, None])
async def test_batch_that_is_empty_or_not_a_list_is_422(live: Live, watchers: Watchers, events: Any) -> None:
    body = await refused(live, watchers, await live_post(live, {"events": events}), 422, "validation_failed")
    assert body["details"], body


async def test_batch_with_an_extra_key_is_422(live: Live, watchers: Watchers) -> None:
    await refused(
        live, watchers, await live_post(live, {"events": [STORE], "dryRun": True}), 422, "validation_failed"
    )


async def test_batch_of_1001_events_is_422_and_1000_are_accepted(live: Live, watchers: Watchers) -> None:
    event = {"type": "store_updated", "data": {"storeId": "s1", "store": {}}, "to": {"users": ["bob"]}}
    body = await refused(
        live, watchers, await live_post(live, {"events": [event] * 1001}), 422, "validation_failed"
    )
    assert "1000" in body["message"], body

    status, _, answer = await live_post(live, {"events": [event] * 1000})
    assert status == 202 and answer["accepted"] == 1000 and len(set(answer["ids"])) == 1000, answer
    bob_ws = watchers.ws[1]
    received = [(await recv(bob_ws))["id"] for _ in range(1000)]
    assert received == answer["ids"]


async def test_batch_is_all_or_nothing_and_names_the_bad_event_and_field(
    live: Live, watchers: Watchers
) -> None:
    good = [ORDER, STORE, PRODUCT]
    bad = availability(active="yes")
    batch = {"events": [*good, bad, availability("s2", False)]}
    body = await refused(live, watchers, await live_post(live, batch), 422, "validation_failed")
    problems = body["details"]["events"]
    assert [p["index"] for p in problems] == [3], body
    assert list(problems[0]["fields"]) == ["data.isActive"], body
    assert "3" in body["message"] and "isActive" in body["message"], body


async def test_batch_reports_every_bad_event(live: Live, watchers: Watchers) -> None:
    batch = {"events": [STORE, {"type": "nope", "data": {}}, STORE, {**ORDER, "to": {"global": True}}]}
    body = await refused(live, watchers, await live_post(live, batch), 422, "validation_failed")
    assert [p["index"] for p in body["details"]["events"]] == [1, 3], body
    assert "type" in _fields(body, 1) and "to" in _fields(body, 3), body


async def test_declared_event_types_check_their_field_kinds(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    declared = {
        "driver_location": {
            "fields": {"orderId": "string", "lat": "number", "n": "integer"},
            "audience": "user",
        }
    }
    live = await start_server(settings_for(event_types=declared))
    watchers = await Watchers.open(live, {"alice": [], "bob": []})
    data: dict[str, Any] = {"userId": "alice", "orderId": "o1", "lat": 1.5, "n": 3}
    good = {"type": "driver_location", "data": data}
    for field, value in (
        ("lat", "12.5"),
        ("lat", True),
        ("n", 1.5),
        ("n", "3"),
        ("orderId", 9),
        ("userId", None),
    ):
        bad = {**good, "data": {**data, field: value}}
        body = await refused(live, watchers, await live_post(live, bad), 422, "validation_failed")
        assert f"data.{field}" in _fields(body), body
    status, _, answer = await live_post(live, good)
    assert status == 202, answer
    assert (await recv(watchers.ws[0]))["data"] == good["data"]
    await no_message(watchers.ws[1], 0.1)
    await watchers.close()


async def test_long_idempotency_key_header_is_400(live: Live, watchers: Watchers) -> None:
    answer = await live_post(live, STORE, **{"Idempotency-Key": "k" * 256})
    await refused(live, watchers, answer, 400, "bad_request")


# --- accepted events ------------------------------------------------------------------------------


async def test_extra_data_fields_arrive_untouched_on_both_transports(live: Live) -> None:
    data = {
        "storeId": "s1",
        "product": {"id": "p1", "price": 12.5, "tags": ["vegan", "🌶"], "meta": None, "stock": 0},
        "extra": {"nested": {"deeper": [1, 2.25, -3, True, False, None, "", {"k": "v"}]}},
        "big": 2**63 - 1,
        "negative": -(2**53),
        "unicode": "caf\u00e9 \u2013 \u65e5\u672c \u2028",
        'quote"key': "back\\slash",
        "empty": {},
    }
    ws, _ = await live.ws_ready(token=make_token("carol"), storeId="s1")
    sio = await live.sio({"token": make_token("dave"), "stores": ["s1"]})
    status, answer = await live.post({"type": "product_updated", "data": data})
    assert status == 202, answer
    frame = await recv(ws)
    assert frame == {"type": "product_updated", "data": data, "id": answer["ids"][0]}
    events = await sio.wait_for(1)
    assert events == [("product_updated", (data, answer["ids"][0]))]
    await sio.close()


async def test_to_replaces_the_default_audience(live: Live, watchers: Watchers) -> None:
    alice, bob, carol = watchers.ws
    # product_updated goes to store:s1 by default; with ``to`` it goes to bob only.
    status, answer = await live.post({**PRODUCT, "to": {"users": ["bob"]}})
    assert status == 202, answer
    assert (await recv(bob))["id"] == answer["ids"][0]
    await no_message(carol, 0.1)
    await no_message(alice, 0.1)
    # An order goes to to.users, not to data.order.userId.
    status, answer = await live.post({**ORDER, "to": {"users": ["bob"]}})
    assert status == 202, answer
    assert (await recv(bob))["type"] == "order_updated"
    await no_message(alice, 0.1)
    # An order falls back to data.order.customerId.
    order = {"type": "order_updated", "data": {"orderId": "o2", "order": {"customerId": "carol"}}}
    status, answer = await live.post(order)
    assert status == 202, answer
    assert (await recv(carol))["data"] == order["data"]
    await no_message(alice, 0.1)
    await no_message(bob, 0.1)


async def test_to_roles_and_stores_reach_exactly_those_rooms(live: Live) -> None:
    driver, _ = await live.ws_ready(token=make_token("d1", "driver"))
    merchant, _ = await live.ws_ready(token=make_token("m1", "merchant"), storeId="s2")
    customer, _ = await live.ws_ready(token=make_token("c1"))
    driver_sio = await live.sio({"token": make_token("d2", "driver")})
    status, answer = await live.post({**STORE, "to": {"roles": ["driver"]}})
    assert status == 202, answer
    assert (await recv(driver))["id"] == answer["ids"][0]
    assert (await driver_sio.wait_for(1))[0][1][-1] == answer["ids"][0]
    status, answer = await live.post({**STORE, "to": {"stores": ["s2"], "roles": ["merchant"]}})
    assert status == 202, answer
    assert (await recv(merchant))["id"] == answer["ids"][0]
    await no_message(merchant, 0.1)  # in both rooms, and it arrives once
    await no_message(customer, 0.1)
    await no_message(driver, 0)
    assert len(driver_sio.events) == 1
    await driver_sio.close()


# --- idempotency ----------------------------------------------------------------------------------


async def test_idempotency_key_header_repeat_returns_the_first_answer_and_delivers_once(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("alice"))
    sio = await live.sio({"token": make_token("alice")})
    key = {"Idempotency-Key": "order-o1-v1"}
    first = await live_post(live, ORDER, **key)
    assert first[0] == 202, first
    again = await live_post(live, ORDER, **key)
    assert again[0] == 202 and again[2] == first[2], (first, again)
    assert (await recv(ws))["id"] == first[2]["ids"][0]
    await no_message(ws, 0.1)
    assert len(await sio.wait_for(1)) == 1
    # Another key is another event.
    other = await live_post(live, ORDER, **{"Idempotency-Key": "order-o1-v2"})
    assert other[0] == 202 and other[2]["ids"] != first[2]["ids"], other
    assert (await recv(ws))["id"] == other[2]["ids"][0]
    await no_message(ws, 0.1)
    assert len(await sio.wait_for(2)) == 2
    await asyncio.sleep(0.1)
    assert len(sio.events) == 2, sio.events
    await sio.close()


async def test_idempotency_key_header_on_a_batch_covers_the_whole_batch(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("alice"))
    batch = {"events": [ORDER, STORE]}
    first = await live_post(live, batch, **{"Idempotency-Key": "batch-1"})
    assert first[0] == 202 and first[2]["accepted"] == 2, first
    again = await live_post(live, batch, **{"Idempotency-Key": "batch-1"})
    assert again[0] == 202 and again[2] == first[2], (first, again)
    assert [(await recv(ws))["id"] for _ in range(2)] == first[2]["ids"]
    await no_message(ws, 0.1)


async def test_per_event_idempotency_keys_in_a_batch(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("alice"))

    def keyed(key: str, n: int) -> dict[str, Any]:
        return {
            "type": "store_updated",
            "data": {"storeId": "s1", "store": {}, "n": n},
            "idempotencyKey": key,
        }

    first = await live_post(live, {"events": [keyed("a", 1), keyed("b", 2)]})
    assert first[0] == 202, first
    second = await live_post(live, {"events": [keyed("b", 2), keyed("c", 3)]})
    assert second[0] == 202 and second[2]["accepted"] == 2, second
    # "b" is the same event as before: its first id; "c" is new.
    assert second[2]["ids"][0] == first[2]["ids"][1]
    assert second[2]["ids"][1] not in first[2]["ids"]
    frames = [await recv(ws) for _ in range(3)]
    assert [f["data"]["n"] for f in frames] == [1, 2, 3]
    assert [f["id"] for f in frames] == [*first[2]["ids"], second[2]["ids"][1]]
    await no_message(ws, 0.1)
    # A single event carrying its own key is deduplicated against the batch's.
    third = await live_post(live, keyed("a", 1))
    assert third[0] == 202 and third[2]["ids"] == [first[2]["ids"][0]], third
    await no_message(ws, 0.1)


async def test_refused_request_does_not_use_up_its_idempotency_key(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("alice"))
    key = {"Idempotency-Key": "retry-me"}
    status, _, body = await live_post(live, {"type": "order_updated", "data": {"orderId": "o1"}}, **key)
    assert_error(status, body, 422)
    status, _, body = await live_post(live, ORDER, **key)
    assert status == 202, body
    assert (await recv(ws))["id"] == body["ids"][0]


# --- operators ------------------------------------------------------------------------------------


async def test_stats_count_connections_by_transport_and_node_and_events(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("alice"))
    ws2, _ = await live.ws_ready(token=make_token("bob"))
    sio = await live.sio({"token": make_token("carol")})
    status, body = await live.get("/api/v1/stats")
    assert status == 200, body
    node = live.node.name
    assert body["connections"] == 3
    assert body["byTransport"] == {"websocket": 2, "socketio": 1}
    assert body["byNode"] == {node: 3}
    assert body["events"] == {"accepted": 0, "delivered": 0}

    status, answer = await live.post({"events": [STORE, ORDER]})
    assert status == 202, answer
    await recv(ws)
    await recv(ws)
    await recv(ws2)
    await sio.wait_for(1)

    async def counted() -> bool:
        _, stats = await live.get("/api/v1/stats")
        # store_updated reached 3 connections, the order 1.
        return bool(stats["events"] == {"accepted": 2, "delivered": 4})

    await eventually(counted)
    await ws2.close()
    await sio.close()

    async def one_left() -> bool:
        _, stats = await live.get("/api/v1/stats")
        return bool(stats["connections"] == 1 and stats["byTransport"].get("socketio", 0) == 0)

    await eventually(one_left)


async def test_presence_counts_one_users_connections_on_both_transports(live: Live) -> None:
    async def presence(user_id: str) -> Any:
        status, body = await live.get(f"/api/v1/presence/users/{user_id}")
        assert status == 200, body
        return body

    assert await presence("alice") == {"userId": "alice", "online": False, "connections": 0}
    ws, _ = await live.ws_ready(token=make_token("alice"))
    sio = await live.sio({"token": make_token("alice")})
    other, _ = await live.ws_ready(token=make_token("bob"))

    async def both() -> bool:
        return bool(await presence("alice") == {"userId": "alice", "online": True, "connections": 2})

    await eventually(both)
    await ws.close()

    async def one() -> bool:
        return bool(await presence("alice") == {"userId": "alice", "online": True, "connections": 1})

    await eventually(one)
    await sio.close()

    async def none() -> bool:
        return bool(await presence("alice") == {"userId": "alice", "online": False, "connections": 0})

    await eventually(none)
    assert (await presence("bob"))["connections"] == 1
    await other.close()


async def test_presence_of_an_invalid_user_id_is_400(live: Live) -> None:
    status, _, body = await request(live, "GET", "/api/v1/presence/users/a%20b")
    assert_error(status, body, 400, "bad_request")


async def test_admin_disconnect_closes_every_connection_of_that_user_only(live: Live) -> None:
    alice_ws, _ = await live.ws_ready(token=make_token("alice"))
    alice_sio = await live.sio({"token": make_token("alice")})
    bob_ws, _ = await live.ws_ready(token=make_token("bob"))
    bob_sio = await live.sio({"token": make_token("bob")})

    status, _, body = await request(live, "POST", "/api/v1/users/alice/disconnect")
    assert status == 200 and body == {"disconnected": 2}, body
    assert await recv_close(alice_ws) == 4001

    async def sio_gone() -> bool:
        return not alice_sio.client.connected and bool(alice_sio.disconnect_reasons)

    await eventually(sio_gone)
    # The Socket.IO client was told it is final (a DISCONNECT packet), not a transport loss.
    assert alice_sio.disconnect_reasons == [socketio.AsyncClient.reason.SERVER_DISCONNECT]

    status, answer = await live.post(STORE)
    assert status == 202
    assert (await recv(bob_ws))["id"] == answer["ids"][0]
    assert (await bob_sio.wait_for(1))[0][0] == "store_updated"
    assert bob_sio.client.connected and bob_sio.disconnect_reasons == []

    async def alice_offline() -> bool:
        _, presence = await live.get("/api/v1/presence/users/alice")
        return bool(presence["connections"] == 0)

    await eventually(alice_offline)
    status, _, body = await request(live, "POST", "/api/v1/users/alice/disconnect")
    assert status == 200 and body == {"disconnected": 0}, body
    await bob_sio.close()


async def test_openapi_document_is_valid_openapi_3_with_every_route(live: Live) -> None:
    status, headers, doc = await request(live, "GET", "/api/v1/openapi.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert doc["openapi"].startswith("3."), doc["openapi"]
    assert doc["info"]["title"] and doc["info"]["version"]
    assert {
        "/api/v1/events",
        "/api/v1/stats",
        "/api/v1/presence/users/{userId}",
        "/api/v1/users/{userId}/disconnect",
    } <= set(doc["paths"])
    assert set(doc["paths"]["/api/v1/events"]) == {"post"}
    responses = doc["paths"]["/api/v1/events"]["post"]["responses"]
    assert {"202", "400", "401", "413", "415", "422", "503"} <= set(responses)
    for path, operations in doc["paths"].items():
        assert path.startswith("/")
        for method, operation in operations.items():
            assert method in {"get", "post", "put", "patch", "delete"}, method
            assert operation["responses"], (path, method)
            for parameter in operation.get("parameters", []):
                assert parameter["in"] in {"path", "query", "header", "cookie"}
                if parameter["in"] == "path":
                    assert f"{{{parameter['name']}}}" in path and parameter["required"] is True
    # Security: a bearer scheme, required everywhere.
    schemes = doc["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    assert doc["security"] and all(set(req) <= set(schemes) for req in doc["security"])
    # Every $ref resolves inside the document.
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    refs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        target: Any = doc
        for part in ref[2:].split("/"):
            target = target[part]
    # The schemas are those that validate requests: the event's fields and each type's data.
    schemas = doc["components"]["schemas"]
    assert set(schemas["Event"]["properties"]) == {"type", "data", "to", "idempotencyKey", "version"}
    assert set(schemas["Event"]["required"]) == {"type", "data"}
    assert set(schemas["Audience"]["properties"]) == {"users", "stores", "staff", "roles", "global"}
    assert set(schemas["data_order_updated"]["required"]) == {"orderId", "order"}
    assert set(schemas["data_store_availability_changed"]["required"]) == {"storeId", "isActive"}
    assert schemas["data_store_availability_changed"]["properties"]["isActive"]["type"] == "boolean"


async def test_health_and_readiness_answer_without_a_key(live: Live) -> None:
    for path in ("/healthz", "/readyz"):
        status, _, body = await request(live, "GET", path, admin=False)
        assert status == 200, (path, body)


async def test_metrics_are_prometheus_text_with_connection_gauges(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("alice"))
    sio = await live.sio({"token": make_token("bob")})
    status, headers, text = await request(live, "GET", "/metrics", admin=False)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain"), headers
    lines = text.splitlines()
    assert "# TYPE realtime_connections gauge" in lines
    assert 'realtime_connections{transport="websocket"} 1.0' in lines
    assert 'realtime_connections{transport="socketio"} 1.0' in lines
    for line in lines:
        assert line.startswith("#") or len(line.split(" ")) == 2, line
    await ws.close()
    await sio.close()


async def test_unknown_admin_route_and_method_answer_in_the_error_shape(live: Live) -> None:
    status, _, body = await request(live, "GET", "/api/v1/nothing-here")
    assert_error(status, body, 404)
    status, _, body = await request(live, "GET", "/api/v1/events")
    assert_error(status, body, 405)
