"""``send_event``: what BridgeClient, AsyncBridgeClient and OrderedBridge send to
``POST /events``, the typed result, the 404 and 422 as BridgeError, and that a call is
never repeated (a repeat would send the event twice)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest

from conftest import KEY, URL, Bridge, error
from reteno_bridge_client import AsyncBridgeClient, BridgeClient, BridgeError, EventResult
from reteno_bridge_client.ordering import OrderedBridge

QUEUED = {
    "events": [
        {
            "id": 3,
            "token": "555001",
            "eventTypeKey": "order_placed",
            "state": "queued",
            "occurredAt": "2026-12-07T08:00:00+00:00",
            "requestedAt": "2026-12-07T09:00:00+00:00",
        }
    ]
}
RESULT = EventResult(
    3,
    "555001",
    "order_placed",
    "queued",
    datetime(2026, 12, 7, 8, tzinfo=UTC),
    datetime(2026, 12, 7, 9, tzinfo=UTC),
)


def sync_client(bridge, policy=None):
    return BridgeClient(URL, KEY, transport=httpx.MockTransport(bridge), retry=policy)


def test_send_event_posts_the_event_and_reads_the_result(policy):
    bridge = Bridge((202, QUEUED))
    with sync_client(bridge, policy) as client:
        result = client.send_event(
            555001,
            "order_placed",
            {"orderId": "A-1", "cart": {"total": "5"}},
            time=datetime(2026, 12, 7, 8, tzinfo=UTC),
        )
        client.send_event(555001, "visit")
        client.send_event(555001, "visit", time=1_780_000_000)
    assert result == RESULT
    assert [(r.method, r.url.path) for r in bridge.requests] == [("POST", "/events")] * 3
    assert bridge.bodies() == [
        {
            "token": 555001,
            "eventTypeKey": "order_placed",
            "params": {"orderId": "A-1", "cart": {"total": "5"}},
            "time": "2026-12-07T08:00:00+00:00",
        },
        {"token": 555001, "eventTypeKey": "visit"},
        {"token": 555001, "eventTypeKey": "visit", "time": 1_780_000_000},
    ]


@pytest.mark.parametrize(
    "answer",
    [
        error(404, "A chat has no live registration.", {"token": ["No live registration."]}),
        error(422, "The event is not valid.", {"eventTypeKey": ["None of these characters"]}),
    ],
)
def test_a_refusal_is_one_bridge_error_with_the_field_errors(policy, answer):
    bridge = Bridge(answer)
    with sync_client(bridge, policy) as client, pytest.raises(BridgeError) as raised:
        client.send_event(555001, "a!b")
    assert raised.value.status == answer[0]
    assert raised.value.errors == answer[1]["errors"]
    assert len(bridge.requests) == 1


@pytest.mark.parametrize("failure", [error(503, "down"), httpx.ConnectError("refused")])
def test_an_event_is_never_repeated(clock, policy, failure):
    bridge = Bridge(failure, (202, QUEUED))
    with sync_client(bridge, policy) as client, pytest.raises(BridgeError):
        client.send_event(555001, "order_placed")
    assert len(bridge.requests) == 1 and clock.waits == []


def test_the_async_client_and_the_ordered_bridge_send_it_in_the_chats_order():
    arrived = []

    async def bridge(request: httpx.Request) -> httpx.Response:
        arrived.append(request.url.path)
        await asyncio.sleep(0.05 if request.url.path == "/register" else 0)
        if request.url.path == "/events":
            return httpx.Response(202, json=QUEUED)
        registered = {"id": 7, "token": "555001", "matchedBy": "email", "state": "queued"}
        return httpx.Response(202, json={"registrations": [registered]})

    async def go():
        client = AsyncBridgeClient(URL, KEY, transport=httpx.MockTransport(bridge))
        ordered = OrderedBridge(client)
        first = ordered.register(555001, email="ann@example.com")
        result = await ordered.send_event(555001, "welcome", {"plan": "gold"})
        await first
        direct = await client.send_event(555001, "welcome")
        await client.aclose()
        return result, direct

    result, direct = asyncio.run(go())
    assert result == direct == RESULT
    assert arrived == ["/register", "/events", "/events"]
