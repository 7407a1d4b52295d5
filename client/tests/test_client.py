"""BridgeClient and AsyncBridgeClient against a mocked bridge: what they send, the typed
results, BridgeError, and the retry policy (which failures, how long, the deadline)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from conftest import KEY, URL, Bridge, error
from reteno_bridge_client import (
    AsyncBridgeClient,
    BridgeClient,
    BridgeError,
    MuteResult,
    Registration,
    RetryPolicy,
)

REGISTERED = {
    "registrations": [
        {
            "id": 7,
            "token": "555001",
            "matchedBy": "email",
            "state": "queued",
            "duplicate": False,
            "conflict": False,
        }
    ]
}
MUTED = {
    "token": "555001",
    "muted": True,
    "mutedUntil": "2026-12-07T10:00:00+00:00",
    "state": "queued",
    "requestedAt": "2026-12-07T09:00:00+00:00",
}


def sync_client(bridge, policy=None, **options):
    return BridgeClient(URL, KEY, transport=httpx.MockTransport(bridge), retry=policy, **options)


def test_register_sends_the_token_object_with_the_bearer_key(policy):
    bridge = Bridge((202, REGISTERED))
    with sync_client(bridge, policy) as client:
        result = client.register(
            555001, email="ann@example.com", contact_id=None, external_customer_id="c-1"
        )
    assert result == Registration(7, "555001", "email", "queued", False, False)
    [request] = bridge.requests
    assert (request.method, request.url.path) == ("POST", "/register")
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert bridge.bodies() == [
        {"token": 555001, "email": "ann@example.com", "externalCustomerId": "c-1"}
    ]


def test_register_many_sends_one_batch_and_reads_every_registration(policy):
    second = {**REGISTERED["registrations"][0], "id": 8, "token": "555002", "duplicate": True}
    bridge = Bridge((202, {"registrations": [REGISTERED["registrations"][0], second]}))
    with sync_client(bridge, policy) as client:
        results = client.register_many(
            [
                {"token": 555001, "email": "a@example.com"},
                {"token": "555002", "phone": "+380956490955"},
            ]
        )
    assert [(r.id, r.duplicate) for r in results] == [(7, False), (8, True)]
    assert bridge.bodies() == [
        {
            "tokens": [
                {"token": 555001, "email": "a@example.com"},
                {"token": "555002", "phone": "+380956490955"},
            ]
        }
    ]


def test_an_unknown_identifier_is_refused_before_any_call(policy):
    bridge = Bridge((202, REGISTERED))
    with sync_client(bridge, policy) as client, pytest.raises(TypeError, match="emial"):
        client.register(1, emial="ann@example.com")
    assert bridge.requests == []


def test_mute_takes_a_duration_in_seconds_or_a_timedelta_and_reads_times(policy):
    bridge = Bridge((202, MUTED))
    with sync_client(bridge, policy) as client:
        result = client.mute(555001, timedelta(hours=1))
        client.mute(555001)
        client.unmute(555001)
    assert result == MuteResult(
        "555001",
        True,
        datetime(2026, 12, 7, 10, tzinfo=UTC),
        "queued",
        datetime(2026, 12, 7, 9, tzinfo=UTC),
    )
    assert [r.url.path for r in bridge.requests] == ["/mute", "/mute", "/unmute"]
    assert bridge.bodies() == [
        {"token": 555001, "duration": 3600},
        {"token": 555001},
        {"token": 555001},
    ]


def test_tokens_filters_pages_and_history(policy):
    item = {
        "id": 7,
        "token": "555001",
        "email": "ann@example.com",
        "matchedBy": "email",
        "state": "delivered",
        "attempts": 1,
        "createdAt": "2026-12-07T09:00:00+00:00",
        "conflict": False,
        "muted": False,
        "retenoHolds": True,
        "unknownLater": 1,
    }
    bridge = Bridge(
        (200, {"items": [item], "next": "c2"}),
        (200, {"items": [{**item, "id": 6}], "next": None}),
        (
            200,
            {
                "token": "555001",
                "events": [
                    {
                        "at": "2026-12-07T09:00:00+00:00",
                        "kind": "submitted",
                        "detail": {},
                        "registrationId": 7,
                    }
                ],
            },
        ),
    )
    with sync_client(bridge, policy) as client:
        records = list(client.iter_tokens(email="ann@example.com", conflict=False, quiet_days=30))
        [event] = client.history(555001)
    assert [r.id for r in records] == [7, 6]
    assert records[0].created_at == datetime(2026, 12, 7, 9, tzinfo=UTC)
    assert records[0].reteno_holds is True and records[0].removed_at is None
    first, second, third = bridge.requests
    assert dict(first.url.params) == {
        "email": "ann@example.com",
        "conflict": "false",
        "quietDays": "30",
    }
    assert dict(second.url.params)["cursor"] == "c2"
    assert third.url.path == "/tokens/555001/history"
    assert (event.kind, event.registration_id) == ("submitted", 7)


def test_a_422_is_one_bridge_error_with_the_field_errors_and_is_not_repeated(policy):
    bridge = Bridge(error(422, "The body is invalid.", {"email": ["Not a valid email."]}))
    with sync_client(bridge, policy) as client, pytest.raises(BridgeError) as raised:
        client.register(1, email="ann@")
    assert (raised.value.status, raised.value.message) == (422, "The body is invalid.")
    assert raised.value.errors == {"email": ["Not a valid email."]}
    assert "email: Not a valid email." in str(raised.value)
    assert len(bridge.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 413, 415])
def test_answers_that_a_repeat_cannot_change_are_not_repeated(policy, status):
    bridge = Bridge(error(status, "no"))
    with sync_client(bridge, policy) as client, pytest.raises(BridgeError):
        client.mute(1)
    assert len(bridge.requests) == 1


@pytest.mark.parametrize(
    "failure",
    [
        error(503, "down"),
        error(500, "oops"),
        error(502, "bad gateway"),
        error(408, "slow"),
        (429, {}),
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("no SYN-ACK"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
)
def test_failures_that_may_pass_on_another_try_are_repeated(clock, policy, failure):
    bridge = Bridge(failure, failure, (202, REGISTERED))
    with sync_client(bridge, policy) as client:
        assert client.register(555001, email="a@example.com").id == 7
    assert len(bridge.requests) == 3
    assert clock.waits == [0.25, 0.5]  # exponential steps (the top of each jitter range)


def test_waits_are_full_jitter_within_the_exponential_step(clock):
    ranges = []
    policy = RetryPolicy(clock=clock, jitter=lambda low, high: ranges.append((low, high)) or 0)
    bridge = Bridge(error(503, "down"))
    with sync_client(bridge, policy) as client, pytest.raises(BridgeError) as raised:
        client.unmute(1)
    assert ranges == [(0.0, 0.25), (0.0, 0.5), (0.0, 1.0)]
    assert len(bridge.requests) == 4 and raised.value.status == 503


def test_retry_after_is_the_least_wait(clock, policy):
    bridge = Bridge((429, {}, {"Retry-After": "3"}), (202, REGISTERED))
    with sync_client(bridge, policy) as client:
        client.register(1, email="a@example.com")
    assert clock.waits == [3.0]


def test_a_retry_after_past_the_deadline_gives_up_at_once(clock, policy):
    bridge = Bridge(
        (429, {"code": 429, "message": "slow down", "errors": {}}, {"Retry-After": "60"})
    )
    with sync_client(bridge, policy) as client, pytest.raises(BridgeError) as raised:
        client.register(1, email="a@example.com")
    assert raised.value.status == 429 and clock.waits == [] and len(bridge.requests) == 1


def test_the_deadline_bounds_the_whole_call_and_cuts_each_attempts_timeouts(clock):
    policy = RetryPolicy(deadline=10.0, attempts=100, clock=clock, jitter=lambda low, high: high)
    timeouts = []

    def slow_and_failing(request):  # every answer takes 4 s, when the read timeout allows
        timeouts.append(request.extensions["timeout"])
        clock.now += min(4.0, timeouts[-1]["read"])
        if timeouts[-1]["read"] < 4.0:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(503, json={"message": "down"})

    started = clock.now
    with (
        BridgeClient(
            URL, KEY, transport=httpx.MockTransport(slow_and_failing), retry=policy
        ) as client,
        pytest.raises(BridgeError),
    ):
        client.mute(1)
    assert clock.now - started == 10.0  # 4 s, a wait, 4 s, a wait, the 1.25 s left
    assert timeouts[0] == {"connect": 3.0, "read": 5.0, "write": 5.0, "pool": 5.0}
    assert timeouts[-1] == {"connect": 1.25, "read": 1.25, "write": 1.25, "pool": 1.25}


def test_a_read_timeout_is_not_repeated_and_says_the_call_may_have_been_done(policy):
    bridge = Bridge(httpx.ReadTimeout("timed out"))
    with sync_client(bridge, policy) as client, pytest.raises(BridgeError) as raised:
        client.mute(1)
    assert raised.value.status is None and "may have carried it out" in raised.value.message
    assert len(bridge.requests) == 1


def test_no_answer_at_all_is_a_bridge_error_without_a_status(policy):
    bridge = Bridge(httpx.ConnectError("[Errno 111] Connection refused"))
    with sync_client(bridge, policy) as client, pytest.raises(BridgeError) as raised:
        client.forward_update({"update_id": 1})
    assert raised.value.status is None and "ConnectError" in raised.value.message
    assert len(bridge.requests) == 4


def test_an_error_answer_that_is_not_the_bridges_json_keeps_its_status(policy):
    def html(request):
        return httpx.Response(404, text="<html>not here</html>")

    with BridgeClient(URL, KEY, transport=httpx.MockTransport(html), retry=policy) as client:
        with pytest.raises(BridgeError) as raised:
            client.history(1)
    assert raised.value.status == 404 and raised.value.errors == {}


def test_the_async_client_makes_the_same_calls_under_the_same_policy(clock, policy):
    bridge = Bridge(httpx.ConnectError("refused"), error(503, "down"), (202, MUTED))

    async def go():
        async with AsyncBridgeClient(
            URL, KEY, transport=httpx.MockTransport(bridge), retry=policy
        ) as client:
            return await client.mute(555001, 60)

    assert asyncio.run(go()).muted is True
    assert bridge.bodies()[-1] == {"token": 555001, "duration": 60}
    assert clock.waits == [0.25, 0.5]


def test_the_async_client_pages_tokens():
    pages = Bridge((200, {"items": [], "next": "c2"}), (200, {"items": [], "next": None}))

    async def go():
        async with AsyncBridgeClient(URL, KEY, transport=httpx.MockTransport(pages)) as client:
            return [r async for r in client.iter_tokens(state="queued")]

    assert asyncio.run(go()) == [] and len(pages.requests) == 2
