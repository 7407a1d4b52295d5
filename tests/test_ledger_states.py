"""The state table's lease guard on the outbox inputs ``not_sent`` and ``dead``: a
worker whose lease on a row ran out, and which another worker claimed meanwhile, moves
nothing when its split batch ends (RELIABILITY.md, "Mutation testing").

Two workers race here, so the test drives them directly (``worker.deliver_batch`` and a
second app's ``ledger.claim`` on the same database and fake clock); what it checks is
what a user sees: the upstream calls, ``GET /tokens``, the history and ``/healthz``.
"""

from __future__ import annotations

import types
from datetime import datetime

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
    tokens,
)


@pytest.fixture
def app(make_app):
    return make_app(BRIDGE_LEASE_SECONDS=LEASE)


@pytest.mark.parametrize("b_lease_sorts", ["after", "before"])
@pytest.mark.parametrize(
    "late_answer",
    [
        {"status_code": 200, "json": "OK"},  # delivered
        {"status_code": 503, "text": "down"},  # retry
        {"status_code": 401, "json": {"message": "Unauthorized"}},  # paused
    ],
)
def test_a_late_answer_moves_nothing_another_worker_holds(
    make_app, client, auth, bridge, clock, requests_mock, monkeypatch, late_answer, b_lease_sorts
):
    # A's call outlasts its lease; B claims the rows (and has not sent them yet) before
    # Reteno answers A. Whatever A heard, the rows stay as B's claim left them, whether
    # B's lease id sorts after A's or before it.
    low, high = "0" * 32, "f" * 32
    leases = iter([low, high] if b_lease_sorts == "after" else [high, low])
    monkeypatch.setattr(
        "bridge.ledger.outbox.uuid",
        types.SimpleNamespace(uuid4=lambda: types.SimpleNamespace(hex=next(leases))),
    )
    other = second_worker(make_app, clock)
    register(client, auth, *tokens(1, 2))
    seen_by_b = {}

    def answer(request, context):
        clock.advance(LEASE + 1)
        assert len(other.ledger.claim(10, LEASE).rows) == 2
        seen_by_b["rows"] = by_token(client, auth)
        context.status_code = late_answer["status_code"]
        return late_answer.get("json", late_answer.get("text"))

    requests_mock.post(TOKENS_URL, json=answer)
    bridge.worker.deliver_batch()
    assert by_token(client, auth) == seen_by_b["rows"]
    assert {r["state"] for r in seen_by_b["rows"].values()} == {"queued"}
    for token in "12":
        assert [e["kind"] for e in history(client, auth, token)] == ["submitted"]


def test_a_batch_of_more_than_500_is_delivered_whole(make_app, auth, requests_mock):
    # the state table updates rows 500 at a time; a batch may hold up to 1000
    app = make_app(BRIDGE_BATCH_SIZE=1000)
    client = app.test_client()
    requests_mock.post(TOKENS_URL, json="OK")
    for first in (1, 401, 801):
        register(client, auth, *tokens(*range(first, first + 400)))
    app.extensions["reteno_bridge"].deliver_once()
    assert [len(c) for c in calls(requests_mock)] == [1000, 200]
    assert rows(client, auth, state="queued") == [], "rows past the 500th of a batch were not moved"
    health = client.get("/healthz", headers={"Authorization": f"Bearer {API_KEY}"})
    assert health.get_json()["outbox"]["depth"] == 0


def test_the_unsent_half_another_worker_took_is_left_to_it(
    make_app, client, auth, bridge, clock, requests_mock
):
    # A's batch 1-4 is refused as a whole (400) a second before its lease ends; A renews
    # 1-2 and sends them. During that call the lease of 3-4 runs out and B claims them.
    # Reteno answers A 503: A backs off 1-2 and must not release 3-4, which B holds.
    other = second_worker(make_app, clock)
    register(client, auth, *tokens(1, 2, 3, 4))
    held_by_b = {}

    def answer(request, context):
        if requests_mock.call_count == 1:
            clock.advance(LEASE - 1)
            context.status_code = 400
            return {"message": "Invalid token"}
        if requests_mock.call_count == 2:
            clock.advance(2)
            claim = other.ledger.claim(10, LEASE)
            held_by_b.update(tokens=[r.token for r in claim.rows], at=clock.now)
            context.status_code = 503
            return "unavailable"
        context.status_code = 200
        return "OK"

    requests_mock.post(TOKENS_URL, json=answer)
    bridge.worker.deliver_batch()
    assert calls(requests_mock) == [["1", "2", "3", "4"], ["1", "2"]]
    assert held_by_b["tokens"] == ["3", "4"]
    after = by_token(client, auth)
    for token in "34":
        assert [e["kind"] for e in history(client, auth, token)] == ["submitted"], (
            "A released rows B holds"
        )
        due = datetime.fromisoformat(after[token]["nextAttemptAt"])
        assert (due - held_by_b["at"]).total_seconds() == LEASE, "B's lease was cut short"
    bridge.deliver_once()  # no time passed: 1-2 back off, 3-4 are B's
    assert requests_mock.call_count == 2, "A sent rows B holds"


def test_a_token_refused_after_another_worker_took_it_is_not_dead_lettered(
    make_app, client, auth, bridge, clock, requests_mock
):
    # A's batch 1-2 is refused as a whole and split; A sends 1 alone, and during that
    # call the lease runs out and B claims 1 and 2. Reteno refuses 1 (400) to A: B holds
    # it, so it stays B's, queued, not dead.
    other = second_worker(make_app, clock)
    register(client, auth, *tokens(1, 2))
    held_by_b = []

    def answer(request, context):
        if requests_mock.call_count == 2:
            clock.advance(LEASE + 1)
            held_by_b.extend(r.token for r in other.ledger.claim(10, LEASE).rows)
        context.status_code = 400
        return {"message": "Invalid token"}

    requests_mock.post(TOKENS_URL, json=answer)
    bridge.worker.deliver_batch()
    assert calls(requests_mock) == [["1", "2"], ["1"]]
    assert held_by_b == ["1", "2"]
    assert {t: r["state"] for t, r in by_token(client, auth).items()} == {
        "1": "queued",
        "2": "queued",
    }
    assert [e["kind"] for e in history(client, auth, "1")] == ["submitted"]
    health = client.get("/healthz", headers={"Authorization": f"Bearer {API_KEY}"})
    assert health.get_json()["deadLetters"] == 0
