"""Delivery guarantees of the outbox, each pinned by a test that fails if it is broken.

An audit changed the delivery code one line at a time (claim order, the lease check
on finishing, the Retry-After hold, pause back-off and reset, releasing the unsent
half of a split batch, lease renewal between split calls, the classification of
408 and of whole-request 400s, statuses removed earlier in the same body) and the
rest of the suite stayed green for most changes. Each test here passes on the
intended behaviour and fails on one such change.

Checked through what a user sees where possible: the upstream calls (every one is
answered by ``requests_mock``), ``GET /tokens``, ``GET /tokens/<token>/history``,
``/healthz``, ``/metrics`` and the ``/statuses`` response. Only where a guarantee is
about two workers does a test drive a worker directly (``worker.deliver_batch``),
with a second app on the same database and the same fake clock (``ledger.clock``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from tests.conftest import TOKENS_URL
from tests.helpers import (
    LEASE,
    by_token,
    calls,
    history,
    register,
    rows,
    second_worker,
    seconds_from_now,
    tokens,
)


@pytest.fixture
def app(make_app):
    return make_app(BRIDGE_LEASE_SECONDS=LEASE)


def names(numbers):
    return [str(n) for n in numbers]


def health(client, auth):
    response = client.get("/healthz", headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


# --- 1. claims: oldest due first --------------------------------------------------------


def test_claims_take_the_oldest_due_registrations_first(client, auth, bridge, clock, requests_mock):
    requests_mock.post(
        TOKENS_URL,
        [
            {"status_code": 503, "text": "down"},
            {"status_code": 200, "json": "OK"},
            {"status_code": 200, "json": "OK"},
        ],
    )
    register(client, auth, *tokens(*range(1, 101)))
    clock.advance(0.1)
    register(client, auth, *tokens(*range(101, 201)))

    bridge.deliver_once()
    assert calls(requests_mock) == [names(range(1, 101))], "the first registered go first"

    # 1-100 now come due again after their back-off (0.5-1 s), later than 101-200 (0.1 s):
    # the rows waiting longest go first, whatever their ids.
    clock.advance(2)
    bridge.deliver_once()
    assert calls(requests_mock)[1:] == [names(range(101, 201)), names(range(1, 101))]


# --- 2. a worker whose lease ran out changes nothing when it finishes -------------------


def test_a_worker_whose_lease_expired_changes_nothing_when_it_finishes(
    make_app, client, auth, bridge, clock, requests_mock
):
    other = second_worker(make_app, clock)
    register(client, auth, *tokens(1, 2, 3))
    seen_by_b = {}

    def answer(request, context):
        if requests_mock.call_count == 1:  # worker A's call: slower than its lease
            clock.advance(LEASE + 1)
            assert other.worker.deliver_batch() == 3, "B re-claims the expired rows"
            seen_by_b["rows"] = by_token(client, auth)
            seen_by_b["history"] = {t: history(client, auth, t) for t in "123"}
            context.status_code = 200
            return "OK"
        if requests_mock.call_count == 2:  # worker B's call: Reteno is down for it
            context.status_code = 503
            return {"message": "unavailable"}
        context.status_code = 200
        return "OK"

    requests_mock.post(TOKENS_URL, json=answer)
    assert bridge.worker.deliver_batch() == 3
    # A's late answer changed nothing: everything is as B left it (queued for a retry,
    # B's attempt, B's error, B's next attempt).
    after = by_token(client, auth)
    assert {t: r["state"] for t, r in after.items()} == dict.fromkeys("123", "queued"), (
        "A's late answer moved rows B holds"
    )
    assert after == seen_by_b["rows"]
    assert {t: history(client, auth, t) for t in "123"} == seen_by_b["history"]
    assert {(r["state"], r["attempts"]) for r in seen_by_b["rows"].values()} == {("queued", 2)}
    assert all("503" in r["lastError"] for r in seen_by_b["rows"].values())

    clock.advance(5)
    bridge.deliver_once()
    assert requests_mock.call_count == 3
    for token in "123":
        assert [e["kind"] for e in history(client, auth, token)] == [
            "submitted",
            "retry",
            "delivered",
        ]
        assert by_token(client, auth)[token]["attempts"] == 3


# --- 3. a 429 with Retry-After holds the whole outbox ------------------------------------


def test_a_429_with_retry_after_holds_every_batch(
    make_app, client, auth, bridge, clock, requests_mock
):
    requests_mock.post(
        TOKENS_URL,
        [
            {
                "status_code": 429,
                "headers": {"Retry-After": "30"},
                "json": {"message": "slow down"},
            },
            {"status_code": 200, "json": "OK"},
        ],
    )
    register(client, auth, *tokens(*range(1, 301)))  # three batches of 100
    bridge.deliver_once()
    assert requests_mock.call_count == 1
    bridge.deliver_once()
    assert requests_mock.call_count == 1, "tokens 101-300 are due, but Reteno asked to wait"

    held = health(client, auth)["delivery"]
    assert held["paused"] is False and held["heldUntil"] is not None
    assert seconds_from_now(clock, held["heldUntil"]) == 30
    clock.advance(29)
    bridge.deliver_once()
    second_worker(make_app, clock).deliver_once()
    assert requests_mock.call_count == 1, "sent before Retry-After passed"

    clock.advance(2)
    bridge.deliver_once()
    assert requests_mock.call_count == 4
    accepted = [t for c in calls(requests_mock)[1:] for t in c]
    assert sorted(accepted, key=int) == names(range(1, 301))
    assert {r["state"] for r in rows(client, auth)} == {"delivered"}


# --- 4. pauses back off, and start over after a success ----------------------------------


def test_repeated_pauses_back_off_and_a_success_resets_them(
    client, auth, bridge, clock, requests_mock
):
    refused = {"status_code": 401, "json": {"message": "Unauthorized"}}
    requests_mock.post(TOKENS_URL, [refused, refused, {"status_code": 200, "json": "OK"}, refused])
    register(client, auth, *tokens(1))

    bridge.deliver_once()
    delivery = health(client, auth)["delivery"]
    assert delivery["paused"] is True
    assert seconds_from_now(clock, delivery["pausedUntil"]) == 15

    clock.advance(16)
    bridge.deliver_once()
    assert requests_mock.call_count == 2
    assert seconds_from_now(clock, health(client, auth)["delivery"]["pausedUntil"]) == 30
    clock.advance(29)
    bridge.deliver_once()
    assert requests_mock.call_count == 2, "the second pause is longer than the first"

    clock.advance(2)
    bridge.deliver_once()
    assert requests_mock.call_count == 3
    assert by_token(client, auth)["1"]["state"] == "delivered"
    assert health(client, auth)["delivery"]["paused"] is False

    register(client, auth, *tokens(2))
    bridge.deliver_once()
    assert requests_mock.call_count == 4
    assert seconds_from_now(clock, health(client, auth)["delivery"]["pausedUntil"]) == 15, (
        "a pause after a success starts again from 15 s"
    )


# --- 5. the unsent half of a split batch is due at once ---------------------------------


def test_the_unsent_half_of_a_split_batch_is_due_at_once(
    client, auth, bridge, clock, requests_mock
):
    requests_mock.post(
        TOKENS_URL,
        [
            {"status_code": 400, "json": {"message": "Invalid token"}},  # split the batch
            {"status_code": 503, "text": "down"},  # the first half: transient, backs off
            {"status_code": 200, "json": "OK"},
            {"status_code": 200, "json": "OK"},
        ],
    )
    register(client, auth, *tokens(1, 2, 3, 4))
    bridge.deliver_once()
    assert calls(requests_mock) == [names([1, 2, 3, 4]), names([1, 2])]
    assert [e["kind"] for e in history(client, auth, "3")] == ["submitted", "not_sent"]

    bridge.deliver_once()  # no time has passed: not the lease, not even the back-off
    assert calls(requests_mock)[2:] == [names([3, 4])]
    assert {t: r["state"] for t, r in by_token(client, auth).items()} == {
        "1": "queued",
        "2": "queued",
        "3": "delivered",
        "4": "delivered",
    }

    clock.advance(2)  # past the first half's back-off (at most 1 s)
    bridge.deliver_once()
    assert calls(requests_mock)[3:] == [names([1, 2])]
    assert {r["state"] for r in rows(client, auth)} == {"delivered"}


# --- 6. the lease is renewed between the calls of a split batch ---------------------------


def test_the_lease_is_renewed_between_split_calls(
    make_app, client, auth, bridge, clock, requests_mock
):
    # A's batch is refused as a whole (400) and split; the split calls succeed. The first
    # call ends a second before the lease does, the second ends past it: unless A renewed
    # the lease of the half it sends, B can claim that half while A is sending it. (B may
    # take 3 and 4, not sent yet and not renewed; A then skips them.)
    other = second_worker(make_app, clock)
    register(client, auth, *tokens(1, 2, 3, 4))
    in_flight = {}

    def answer(request, context):
        sent = [t["token"] for t in request.json()["tokens"]]
        if requests_mock.call_count == 1:  # A: the whole batch, refused; it will split
            clock.advance(LEASE - 1)
            context.status_code = 400
            return {"message": "Invalid token"}
        if requests_mock.call_count == 2:  # A: the first half, past the first lease's end
            clock.advance(2)
            in_flight["A"] = sent
            other.worker.deliver_batch()  # B looks for due rows meanwhile
        elif "A" in in_flight and "B" not in in_flight:
            in_flight["B"] = sent
        context.status_code = 200
        return "OK"

    requests_mock.post(TOKENS_URL, json=answer)
    bridge.worker.deliver_batch()
    assert in_flight["A"] == names([1, 2])
    assert not set(in_flight.get("B", [])) & set(in_flight["A"]), (
        "B claimed rows A was sending: A's lease was not renewed before the call"
    )
    accepted = [t for c in calls(requests_mock)[1:] for t in c]
    assert sorted(accepted) == names([1, 2, 3, 4]), "each token sent once after the split"
    for token in "1234":
        assert [e["kind"] for e in history(client, auth, token)].count("delivered") == 1


# --- 7. 408 is retried; a 400 about the whole request pauses ------------------------------


def test_a_408_is_retried_not_dead_lettered(client, auth, bridge, clock, requests_mock):
    requests_mock.post(
        TOKENS_URL,
        [{"status_code": 408, "text": "Request Timeout"}, {"status_code": 200, "json": "OK"}],
    )
    register(client, auth, *tokens(1))
    bridge.deliver_once()
    row = by_token(client, auth)["1"]
    assert row["state"] == "queued" and "408" in row["lastError"]
    assert [e["kind"] for e in history(client, auth, "1")] == ["submitted", "retry"]
    clock.advance(2)
    bridge.deliver_once()
    assert by_token(client, auth)["1"]["state"] == "delivered"
    assert health(client, auth)["deadLetters"] == 0


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("Wrong app uuid", "wrong_app_uuid"),
        ("Tokens must be specified", "tokens_missing"),
        ("Not registered application", "app_not_registered"),
    ],
)
def test_a_400_about_the_whole_request_pauses_instead_of_splitting(
    client, auth, bridge, requests_mock, message, reason
):
    requests_mock.post(TOKENS_URL, status_code=400, json={"message": message})
    register(client, auth, *tokens(1, 2, 3))
    bridge.deliver_once()
    assert requests_mock.call_count == 1, "the batch was split"
    body = health(client, auth)
    assert body["delivery"]["paused"] is True
    assert body["delivery"]["pauseReason"] == reason  # a code: Reteno's text stays out
    assert body["lastUpstream"]["status"] == 400
    assert body["deadLetters"] == 0
    assert {r["state"] for r in rows(client, auth)} == {"queued"}
    assert all(message in r["lastError"] for r in rows(client, auth))  # the ledger has it


# --- 8. /statuses: a registration removed earlier in the body is not live again ---------


def forbidden(message_id, **selector):
    return {
        "status": "FAILED",
        "error": "Forbidden: bot was blocked by the user",
        "messageId": message_id,
        **selector,
    }


def test_a_second_block_in_the_same_body_does_not_remove_again(client, auth):
    register(client, auth, {"token": "1001", "contactId": 5})
    response = client.post(
        "/statuses", headers=auth, json=[forbidden(1, contactId=5), forbidden(2, contactId=5)]
    )
    assert response.status_code == 200
    assert response.get_json() == {
        "processed": 2,
        "removed": ["1001"],
        "unmatched": 0,
        "ignored": 0,
        "stale": 0,
        "ambiguous": 0,
    }
    events = history(client, auth, "1001")
    assert [e["kind"] for e in events] == ["submitted", "status", "status", "removed"]
    assert [e["detail"]["registrationState"] for e in events[1:3]] == ["queued", "removed"]
    metrics = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'bridge_status_events_total{kind="blocked"} 1.0' in metrics, (
        "the second event counted as a block of a live registration"
    )
    assert 'bridge_status_events_total{kind="matched"} 1.0' in metrics
    assert 'bridge_removals_total{cause="status_blocked"} 1.0' in metrics


def test_a_later_event_lands_only_on_registrations_still_live(client, auth):
    # contact 5 has two chats; the first event removes chat 1001, the second is about
    # the contact: it is recorded on the chat still live, not on the one just removed.
    register(client, auth, {"token": "1001", "contactId": 5}, {"token": "1002", "contactId": 5})
    response = client.post(
        "/statuses",
        headers=auth,
        json=[forbidden(1, token="1001"), {"status": "DELIVERED", "messageId": 2, "contactId": 5}],
    )
    assert response.get_json()["removed"] == ["1001"]
    assert [e["kind"] for e in history(client, auth, "1001")] == ["submitted", "status", "removed"]
    assert [e["kind"] for e in history(client, auth, "1002")] == ["submitted", "status"]


# --- 9. Retry-After as an HTTP date is read against the bridge's clock -------------------


def test_retry_after_as_an_http_date_is_read_against_the_bridge_clock(
    client, auth, bridge, clock, requests_mock
):
    clock.now = datetime(2030, 1, 1, tzinfo=UTC)  # far from the real time
    later = format_datetime(clock.now + timedelta(seconds=60), usegmt=True)
    requests_mock.post(
        TOKENS_URL,
        [
            {"status_code": 429, "headers": {"Retry-After": later}, "json": {"message": "wait"}},
            {"status_code": 200, "json": "OK"},
        ],
    )
    register(client, auth, *tokens(1))
    bridge.deliver_once()
    held_until = health(client, auth)["delivery"]["heldUntil"]
    assert held_until is not None
    assert seconds_from_now(clock, held_until) == 60
    clock.advance(59)
    bridge.deliver_once()
    assert requests_mock.call_count == 1
    clock.advance(2)
    bridge.deliver_once()
    assert requests_mock.call_count == 2
    assert by_token(client, auth)["1"]["state"] == "delivered"
