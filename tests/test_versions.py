"""Stale updates are dropped (contract §6 ``version``/``stale``), and the admin API defects that
live in the same code: idempotency keys of a header and of an event never answer for each other,
data too deep to encode or too big is a 422, replay from Redis is read in pages and capped."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import orjson

from server.config import Settings
from server.events import parse_event_id
from tests.clients import Live, make_token, no_message, recv
from tests.conftest import StartServer
from tests.support import assert_error, post_raw


def order(n: int, version: int | None = None, order_id: str = "o1", **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "order_updated",
        "data": {"orderId": order_id, "order": {"userId": "alice"}, "n": n},
        **extra,
    }
    if version is not None:
        event["version"] = version
    return event


async def accepted(live: Live, body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    status, answer = await live.post(body, headers)
    assert status == 202, answer
    result: dict[str, Any] = answer
    return result


async def received_ns(ws: Any, count: int) -> list[int]:
    ns = [(await recv(ws))["data"]["n"] for _ in range(count)]
    await no_message(ws)
    return ns


# --- version ------------------------------------------------------------------------------------


async def test_stale_and_fresh_versions_within_one_batch(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("alice"))
    answer = await accepted(
        live,
        {
            "events": [
                order(0, 2),
                order(1, 1),
                order(2, 2),
                order(3, 3),
                order(4, 1, order_id="o2"),
                order(5),
            ]
        },
    )
    ids = answer["ids"]
    assert answer["stale"] == [1, 2] and ids[1] is None and ids[2] is None
    assert answer["accepted"] == 4 and all(isinstance(ids[i], str) for i in (0, 3, 4, 5))
    assert await received_ns(ws, 4) == [0, 3, 4, 5]  # o2 is another entity; no version: as today
    await ws.close()


async def test_a_version_not_above_the_last_accepted_one_is_stale_in_later_requests(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("alice"))
    first = await accepted(live, order(0, 5))
    assert "stale" not in first and first["accepted"] == 1
    for n, version in ((1, 5), (2, 4), (3, 0)):
        answer = await accepted(live, order(n, version))
        assert answer == {"accepted": 0, "ids": [None], "stale": [0]}, answer
    assert (await accepted(live, order(4, 6)))["accepted"] == 1
    assert (await accepted(live, order(5)))["accepted"] == 1  # no version: always delivered
    assert await received_ns(ws, 3) == [0, 4, 5]
    await ws.close()


async def test_versions_count_per_type_and_entity_as_the_contract_lists_them(live: Live) -> None:
    store = {"storeId": "s1", "store": {}}
    answer = await accepted(
        live,
        {
            "events": [
                {"type": "store_updated", "data": store, "version": 3},
                {
                    "type": "store_availability_changed",
                    "data": {"storeId": "s1", "isActive": True},
                    "version": 3,
                },
                {"type": "product_updated", "data": {"storeId": "s1", "product": {"id": "p1"}}, "version": 3},
                {"type": "product_updated", "data": {"storeId": "s2", "product": {"id": "p1"}}, "version": 3},
                {"type": "product_updated", "data": {"storeId": "s1", "product": {"id": 7}}, "version": 3},
                {
                    "type": "product_availability_changed",
                    "data": {"storeId": "s1", "productId": "p1", "available": True},
                    "version": 3,
                },
                {"type": "store_updated", "data": {"storeId": "s2", "store": {}}, "version": 1},
            ]
        },
    )
    # p1 is one entity whatever its store: the second product_updated of p1 is stale.
    assert answer["stale"] == [3], answer


async def test_bad_versions_are_refused_with_422_naming_the_field(live: Live) -> None:
    for bad in (-1, "3", True, 1.5, None):
        status, _, body = await post_raw(live, orjson.dumps(order(0) | {"version": bad}))
        assert_error(status, body, 422, "validation_failed")
        assert "version" in body["details"]["events"][0]["fields"], body
    no_product_id = {"type": "product_updated", "data": {"storeId": "s1", "product": {}}, "version": 1}
    status, _, body = await post_raw(live, orjson.dumps({"events": [order(0, 1), no_product_id]}))
    assert_error(status, body, 422, "validation_failed")
    assert body["details"]["events"] == [
        {"index": 1, "fields": {"data.product.id": ["a string id is required when the event has a version"]}}
    ]
    # All or nothing: event 0's version was not taken either.
    assert (await accepted(live, order(0, 1)))["accepted"] == 1


async def test_declared_types_take_the_first_of_order_product_and_store_ids(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    declared = {"ping_store": {"fields": {"storeId": "string"}, "audience": "global"}}
    live = await start_server(settings_for(event_types=declared))
    event = {"type": "ping_store", "data": {"storeId": "s1"}, "version": 2}
    assert (await accepted(live, event))["accepted"] == 1
    assert (await accepted(live, event))["stale"] == [0]
    other = {"type": "ping_store", "data": {"storeId": "s1", "productId": "p9"}, "version": 2}
    assert (await accepted(live, other))["accepted"] == 1  # productId comes before storeId
    lost = {"type": "ping_store", "data": {"storeId": 5}, "version": 2}
    status, _, body = await post_raw(live, orjson.dumps(lost))
    assert_error(status, body, 422, "validation_failed")


async def test_versions_with_idempotency_keys_repeat_the_first_answer(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("alice"))
    first = await accepted(live, order(0, 1, idempotencyKey="k1"))
    assert await accepted(live, order(0, 1, idempotencyKey="k1")) == first  # a retry, not stale
    stale = await accepted(live, order(1, 1, idempotencyKey="k2"))
    assert stale == {"accepted": 0, "ids": [None], "stale": [0]}
    assert await accepted(live, order(1, 1, idempotencyKey="k2")) == stale
    batch = {"events": [order(2, 2), order(3, 0)]}
    answer = await accepted(live, batch, {"Idempotency-Key": "b1"})
    assert answer["stale"] == [1]
    assert await accepted(live, batch, {"Idempotency-Key": "b1"}) == answer
    assert await received_ns(ws, 2) == [0, 2]
    await ws.close()


async def test_versions_are_decided_once_across_two_processes(
    start_server: StartServer, settings_for: Callable[..., Settings], backplane: str
) -> None:
    if backplane == "memory":
        return  # one process by definition
    nodes = [await start_server(settings_for(node_name=f"n{i}")) for i in range(2)]
    assert (await accepted(nodes[0], order(0, 2)))["accepted"] == 1
    assert (await accepted(nodes[1], order(1, 2)))["stale"] == [0]
    versions = list(range(3, 43))
    random.Random(5).shuffle(versions)

    async def post(version: int) -> tuple[int, str | None]:
        answer = await accepted(nodes[version % 2], order(version, version))
        return version, answer["ids"][0]

    results = await asyncio.gather(*(post(version) for version in versions))
    kept = sorted(
        (parse_event_id(event_id), version) for version, event_id in results if event_id is not None
    )
    # In the order Redis accepted them, each version is above every one accepted before it.
    kept_versions = [version for _, version in kept]
    assert kept_versions == sorted(kept_versions) and len(set(kept_versions)) == len(kept_versions)
    assert kept_versions[-1] == 42  # the newest is never stale


async def test_openapi_documents_version_and_stale(live: Live) -> None:
    status, doc = await live.get("/api/v1/openapi.json")
    assert status == 200
    schemas = doc["components"]["schemas"]
    assert schemas["Event"]["properties"]["version"]["type"] == "integer"
    assert schemas["Accepted"]["properties"]["stale"]["type"] == "array"


# --- idempotency keys: a header's never answer for an event's own key (defect a) -------------------


async def test_a_header_key_of_a_batch_never_answers_for_an_events_own_key(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("alice"))
    batch = await accepted(live, {"events": [order(0), order(1)]}, {"Idempotency-Key": "K"})
    single = await accepted(live, order(2, idempotencyKey="K#0"))
    assert single["ids"][0] not in batch["ids"]
    header_single = await accepted(live, order(3), {"Idempotency-Key": "K#0"})
    assert header_single["ids"][0] not in (*batch["ids"], *single["ids"])
    own = await accepted(live, order(4, idempotencyKey="K"))
    assert own["ids"][0] not in batch["ids"]
    assert await received_ns(ws, 5) == [0, 1, 2, 3, 4]
    # Each still answers for itself.
    assert await accepted(live, order(2, idempotencyKey="K#0")) == single
    assert await accepted(live, {"events": [order(0), order(1)]}, {"Idempotency-Key": "K"}) == batch
    await no_message(ws)
    await ws.close()


# --- data that cannot be sent (defect d) -----------------------------------------------------------


def nested(depth: int) -> bytes:
    """JSON text nested ``depth`` levels (written by hand: orjson would refuse to encode it)."""
    return b'{"a":' * depth + b'"leaf"' + b"}" * depth


async def test_data_nested_too_deep_to_encode_is_a_422_not_a_500(live: Live) -> None:
    ws, _ = await live.ws_ready(token=make_token("alice"))
    for depth in (300, 1000):
        deep = b'{"type":"order_updated","data":{"orderId":"o1","order":{"userId":"alice"},"deep":%s}}'
        body_bytes = b'{"events":[' + orjson.dumps(order(1)) + b"," + deep % nested(depth) + b"]}"
        status, _, body = await post_raw(live, body_bytes)
        assert_error(status, body, 422, "validation_failed")
        assert body["details"]["events"] == [{"index": 1, "fields": {"data": ["nested too deep to encode"]}}]
    await no_message(ws)
    await ws.close()


async def test_data_over_max_event_bytes_is_a_422_naming_the_event(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(admin={"max_event_bytes": 1000}))
    ws, _ = await live.ws_ready(token=make_token("alice"))
    big = order(1) | {"data": {"orderId": "o1", "order": {"userId": "alice"}, "pad": "x" * 1000}}
    status, _, body = await post_raw(live, orjson.dumps({"events": [order(0), big]}))
    assert_error(status, body, 422, "validation_failed")
    (problem,) = body["details"]["events"]
    assert problem["index"] == 1 and "admin.max_event_bytes (1000)" in problem["fields"]["data"][0], body
    assert body["message"].startswith("event 1: data:"), body
    await no_message(ws)  # all or nothing
    fits = order(2) | {"data": {"orderId": "o1", "order": {"userId": "alice"}, "n": 2, "pad": "x" * 900}}
    assert (await accepted(live, fits))["accepted"] == 1
    await ws.close()


# --- replay is read in pages and capped (defect c) -------------------------------------------------


def store_event(n: int) -> dict[str, Any]:
    return {"type": "store_updated", "data": {"storeId": "s1", "store": {}, "n": n}}


async def test_a_long_replay_crosses_pages_in_order_and_complete(
    start_server: StartServer, settings_for: Callable[..., Settings], backplane: str
) -> None:
    settings = settings_for(history={"max_events": 3000})
    live = await start_server(settings)
    ws, connected = await live.ws_ready(token=make_token("alice"))
    position = connected["data"]["lastEventId"]
    await ws.close()
    for start in range(0, 2500, 1000):  # 2,500 events: three pages of Redis's XRANGE
        batch = [store_event(n) for n in range(start, min(start + 1000, 2500))]
        batch[0]["to"] = {"users": ["bob"]}  # some for someone else: filtered out
        await accepted(live, {"events": batch})
    # With Redis, a process started now: it kept none of these events, so Redis's history answers.
    reader = await start_server(settings) if backplane == "redis" else live
    again, _ = await reader.ws_ready(token=make_token("alice"), lastEventId=position)
    ns = [(await recv(again))["data"]["n"] for _ in range(2497)]
    assert ns == [n for n in range(2500) if n not in (0, 1000, 2000)]
    await no_message(again)
    await again.close()


async def test_a_position_further_back_than_max_events_is_a_resync_whatever_redis_kept(
    start_server: StartServer, settings_for: Callable[..., Settings]
) -> None:
    live = await start_server(settings_for(history={"max_events": 50}))
    ws, connected = await live.ws_ready(token=make_token("alice"))
    position = connected["data"]["lastEventId"]
    await ws.close()
    # 60 events: Redis's approximate trimming (MAXLEN ~) keeps them all, but replaying them
    # would read more than the history's 50: the client refetches instead.
    await accepted(live, {"events": [store_event(n) for n in range(60)]})
    again, connected = await live.ws_ready(token=make_token("alice"), lastEventId=position)
    assert connected["data"]["resumed"] is False
    assert await recv(again) == {"type": "resync", "data": {"reason": "history_expired"}}
    await again.close()
