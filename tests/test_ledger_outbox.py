"""The outbox's delivery policy, where the mutation run (RELIABILITY.md, "Mutation
testing") found it unpinned: the back-off and pause schedules up to their caps, a
Retry-After hold outliving another worker's success, a removed registration never
claimed, renewal between split calls when another worker holds the rows or a chat was
blocked meanwhile, when the unsent half of a split batch comes due, requeue by token.

Seen through ``GET /tokens``, ``/healthz`` and the upstream calls ``requests_mock``
answered; only the races between two workers drive a worker (or a claim) directly.
"""

from __future__ import annotations

import json
import types

import pytest

from tests.conftest import API_KEY, TOKENS_URL
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


def delivery(client):
    response = client.get("/healthz", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200
    return response.get_json()["delivery"]


def ok(context):
    context.status_code = 200
    return "OK"


# --- back-off and pause schedules -------------------------------------------------------


@pytest.mark.parametrize(("end", "scale"), [("low", 0.5), ("high", 1.0)])
def test_the_back_off_doubles_from_1_s_to_5_minutes_jittered_down_to_half(
    client, auth, bridge, clock, requests_mock, monkeypatch, end, scale
):
    # the jitter drawn at one end of its range: the waits are exactly the bounds
    pick = (lambda lo, hi: lo) if end == "low" else (lambda lo, hi: hi)
    monkeypatch.setattr("bridge.ledger.outbox.random", types.SimpleNamespace(uniform=pick))
    requests_mock.post(TOKENS_URL, status_code=503, text="down")
    register(client, auth, *tokens(1))
    waits = []
    for _ in range(11):
        bridge.deliver_once()
        waits.append(seconds_from_now(clock, by_token(client, auth)["1"]["nextAttemptAt"]))
        clock.advance(waits[-1])
    assert waits == [scale * s for s in (1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300)]
    assert requests_mock.call_count == 11


def test_pauses_double_from_15_s_to_10_minutes_and_resume_starts_them_over(
    client, auth, bridge, clock, requests_mock
):
    requests_mock.post(TOKENS_URL, status_code=401, json={"message": "Unauthorized"})
    register(client, auth, *tokens(1))
    pauses = []
    for _ in range(8):
        bridge.deliver_once()
        pauses.append(seconds_from_now(clock, delivery(client)["pausedUntil"]))
        clock.advance(pauses[-1])
    assert pauses == [15, 30, 60, 120, 240, 480, 600, 600]
    assert requests_mock.call_count == 8

    bridge.ledger.resume()  # the credentials were fixed
    assert delivery(client)["paused"] is False
    bridge.deliver_once()  # ... but not quite
    assert requests_mock.call_count == 9
    assert seconds_from_now(clock, delivery(client)["pausedUntil"]) == 15


# --- a hold outlives another worker's success --------------------------------------------


def test_a_retry_after_hold_outlives_another_workers_success(
    make_app, client, auth, bridge, clock, requests_mock
):
    # B sends batch 1; while its call is in flight, A sends batch 2 and Reteno answers A
    # 429 + Retry-After: 30. B's call then succeeds. Batch 3 must still wait the 30 s.
    other = second_worker(make_app, clock)

    def answer(request, context):
        if requests_mock.call_count == 1:  # B's call
            assert bridge.worker.deliver_batch() == 100  # A's call, inside it
            return ok(context)
        if requests_mock.call_count == 2:  # A's call
            context.status_code = 429
            context.headers["Retry-After"] = "30"
            return {"message": "slow down"}
        return ok(context)

    requests_mock.post(TOKENS_URL, json=answer)
    register(client, auth, *tokens(*range(1, 301)))  # three batches of 100
    assert other.worker.deliver_batch() == 100
    assert requests_mock.call_count == 2
    held = delivery(client)
    assert held["heldUntil"] is not None, "B's success lifted A's hold"
    assert seconds_from_now(clock, held["heldUntil"]) == 30

    clock.advance(29)
    bridge.deliver_once()
    assert requests_mock.call_count == 2, "batch 3 was sent before Retry-After passed"
    clock.advance(2)
    bridge.deliver_once()
    assert {r["state"] for r in rows(client, auth)} == {"delivered"}


# --- a removed registration is never claimed ---------------------------------------------


def test_a_registration_removed_before_delivery_is_never_sent(client, auth, bridge, requests_mock):
    requests_mock.post(TOKENS_URL, json="OK")
    register(client, auth, *tokens(1, 2))
    response = client.post(
        "/statuses",
        headers=auth,
        json=[
            {
                "status": "FAILED",
                "error": "Forbidden: bot was blocked by the user",
                "messageId": 1,
                "token": "1",
            }
        ],
    )
    assert response.get_json()["removed"] == ["1"]
    bridge.deliver_once()
    assert calls(requests_mock) == [["2"]]
    assert by_token(client, auth)["1"]["state"] == "removed"
    assert [e["kind"] for e in history(client, auth, "1")] == ["submitted", "status", "removed"]


# --- renewal between the calls of a split batch -------------------------------------------


@pytest.mark.parametrize("b_lease_sorts", ["after", "before"])
def test_a_split_sends_nothing_another_worker_claimed_whatever_the_lease_ids(
    make_app, client, auth, bridge, clock, requests_mock, monkeypatch, b_lease_sorts
):
    # A's batch is refused as a whole and split; meanwhile A's lease ran out and B claimed
    # the rows. A's renewal must keep none of them, however B's lease id compares to A's.
    low, high = "0" * 32, "f" * 32
    leases = iter([low, high] if b_lease_sorts == "after" else [high, low])
    monkeypatch.setattr(
        "bridge.ledger.outbox.uuid",
        types.SimpleNamespace(uuid4=lambda: types.SimpleNamespace(hex=next(leases))),
    )
    other = second_worker(make_app, clock)
    register(client, auth, *tokens(1, 2, 3, 4))

    def answer(request, context):
        if requests_mock.call_count == 1:  # A's whole batch: slower than the lease
            clock.advance(LEASE + 1)
            claim = other.ledger.claim(10, LEASE)  # B holds the rows, not sent yet
            assert claim is not None and len(claim.rows) == 4
            context.status_code = 400
            return {"message": "Invalid token"}
        return ok(context)

    requests_mock.post(TOKENS_URL, json=answer)
    bridge.worker.deliver_batch()
    assert calls(requests_mock) == [["1", "2", "3", "4"]], "A sent rows B holds"
    assert {r["state"] for r in rows(client, auth)} == {"queued"}


def test_a_chat_blocked_while_its_batch_is_split_is_not_sent(client, auth, bridge, requests_mock):
    def answer(request, context):
        if requests_mock.call_count == 1:  # the whole batch, refused: it will be split
            response = client.post(
                "/statuses",
                headers=auth,
                json=[
                    {
                        "status": "FAILED",
                        "error": "Forbidden: bot was blocked by the user",
                        "messageId": 1,
                        "token": "1",
                    }
                ],
            )
            assert response.get_json()["removed"] == ["1"]
            context.status_code = 400
            return {"message": "Invalid token"}
        return ok(context)

    requests_mock.post(TOKENS_URL, json=answer)
    register(client, auth, *tokens(1, 2, 3, 4))
    bridge.worker.deliver_batch()
    assert calls(requests_mock) == [["1", "2", "3", "4"], ["2"], ["3", "4"]]
    states = {t: r["state"] for t, r in by_token(client, auth).items()}
    assert states == {"1": "removed", "2": "delivered", "3": "delivered", "4": "delivered"}


# --- when the unsent half of a split batch comes due --------------------------------------


@pytest.mark.parametrize(
    ("answer", "wait"),
    [
        ({"status_code": 503, "text": "down"}, 0),
        ({"status_code": 401, "json": {"message": "Unauthorized"}}, 0),
        ({"status_code": 429, "headers": {"Retry-After": "30"}, "json": {"message": "wait"}}, 30),
    ],
)
def test_the_unsent_half_of_a_split_batch_waits_exactly_the_retry_after(
    client, auth, bridge, clock, requests_mock, answer, wait
):
    requests_mock.post(
        TOKENS_URL, [{"status_code": 400, "json": {"message": "Invalid token"}}, answer]
    )
    register(client, auth, *tokens(1, 2, 3, 4))
    bridge.deliver_once()
    assert calls(requests_mock) == [["1", "2", "3", "4"], ["1", "2"]]
    rest = by_token(client, auth)
    events = history(client, auth, "3")
    assert [e["kind"] for e in events] == ["submitted", "not_sent"]
    assert events[1]["detail"]["sent"] is False
    assert [seconds_from_now(clock, rest[t]["nextAttemptAt"]) for t in "34"] == [wait, wait]


# --- requeue ---------------------------------------------------------------------------


def test_requeue_by_token_moves_that_dead_letter_only(runner, client, auth, bridge, requests_mock):
    requests_mock.post(TOKENS_URL, status_code=400, json={"message": "Invalid token"})
    register(client, auth, *tokens(1, 2, 3))
    bridge.deliver_once()
    assert {r["state"] for r in rows(client, auth)} == {"dead"}
    result = runner.invoke(args=["bridge", "requeue", "--token", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"requeued": 1}
    states = {t: r["state"] for t, r in by_token(client, auth).items()}
    assert states == {"1": "dead", "2": "queued", "3": "dead"}


def test_requeue_by_error_text_takes_the_text_literally(
    runner, client, auth, bridge, requests_mock
):
    requests_mock.post(
        TOKENS_URL,
        [
            {"status_code": 400, "json": {"message": "Invalid token"}},
            {"status_code": 400, "json": {"message": "phone 50% wrong"}},
        ],
    )
    register(client, auth, *tokens(1))
    bridge.deliver_once()
    register(client, auth, *tokens(2))
    bridge.deliver_once()
    # "%" and "_" are LIKE wildcards; here they are only characters of the error text
    for text in ("%", "_"):
        result = runner.invoke(args=["bridge", "requeue", "--error-contains", text, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == {"requeued": 1 if text == "%" else 0}
    states = {t: r["state"] for t, r in by_token(client, auth).items()}
    assert states == {"1": "dead", "2": "queued"}
