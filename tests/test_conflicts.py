"""Identity conflicts: one chat submitted under a second identity. Reteno would put the
chat on two contact cards, so the bridge flags it, and with BRIDGE_ON_CONFLICT=hold keeps
it back until it is released or the other identity is gone."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TOKENS_URL
from tests.helpers import history, register, rows

ANN = {"token": 4100, "email": "ann@example.com"}
BOB = {"token": 4100, "email": "bob@example.com"}  # the same chat, another person's e-mail


def kinds(client, auth, token=4100):
    return [e["kind"] for e in history(client, auth, token)]


def test_a_second_identity_is_flagged_and_names_the_first(client, auth, bridge, requests_mock):
    [first] = register(client, auth, ANN)
    [second] = register(client, auth, BOB)
    assert (first["conflict"], second["conflict"]) == (False, True)
    assert second["state"] == "queued"  # the default: sent anyway, like Reteno would
    conflict = [e for e in history(client, auth, 4100) if e["kind"] == "conflict"]
    assert [(e["registrationId"], e["detail"]["with"], e["detail"]["held"]) for e in conflict] == [
        (second["id"], [first["id"]], False)
    ]
    assert [r["id"] for r in rows(client, auth, conflict="true")] == [second["id"]]
    assert [r["id"] for r in rows(client, auth, conflict="false")] == [first["id"]]
    requests_mock.post(TOKENS_URL, json="OK")
    assert bridge.deliver_once()["delivered"] == 2
    body = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'bridge_conflicts_total{state="queued"} 1.0' in body


def test_a_duplicate_is_not_a_conflict(client, auth):
    register(client, auth, ANN)
    [again] = register(client, auth, ANN)
    assert again["duplicate"] is True and again["conflict"] is False
    assert "conflict" not in kinds(client, auth)


def test_two_identities_in_one_batch_conflict_with_each_other(client, auth):
    first, second = register(client, auth, ANN, BOB)
    assert (first["conflict"], second["conflict"]) == (False, True)
    events = history(client, auth, 4100)
    assert [(e["kind"], e["detail"]["matchedBy"]) for e in events] == [
        ("submitted", "email"),
        ("submitted", "email"),
        ("conflict", "email"),
    ]
    assert events[-1]["detail"]["with"] == [first["id"]]  # the earlier one of the same call


def test_a_conflict_in_a_batch_names_the_live_registrations_then_the_earlier_new_ones(client, auth):
    [live] = register(client, auth, ANN)
    cat, other_chat, bob, cat_again, dan = register(
        client,
        auth,
        {"token": 4100, "email": "cat@example.com"},
        {"token": 4200, "email": "eve@example.com"},
        BOB,
        {"token": 4100, "email": "cat@example.com"},
        {"token": 4100, "phone": "+380951234567"},
    )
    assert [r["conflict"] for r in (cat, other_chat, bob, cat_again, dan)] == [
        True,
        False,
        True,
        True,
        True,
    ]
    assert cat_again["duplicate"] and cat_again["id"] == cat["id"]
    named = {
        e["registrationId"]: e["detail"]["with"]
        for e in history(client, auth, 4100)
        if e["kind"] == "conflict"
    }
    assert named == {
        cat["id"]: [live["id"]],
        bob["id"]: [live["id"], cat["id"]],
        dan["id"]: [live["id"], cat["id"], bob["id"]],
    }
    assert "conflict" not in kinds(client, auth, token=4200)


@pytest.fixture
def holding(make_app):
    return make_app(BRIDGE_ON_CONFLICT="hold")


def test_hold_keeps_the_second_identity_back_until_released(holding, auth, requests_mock):
    client, bridge = holding.test_client(), holding.extensions["reteno_bridge"]
    requests_mock.post(TOKENS_URL, json="OK")
    [first] = register(client, auth, ANN)
    [second] = register(client, auth, BOB)
    assert (second["state"], second["conflict"]) == ("held", True)
    [conflict] = [e for e in history(client, auth, 4100) if e["kind"] == "conflict"]
    assert (conflict["detail"]["with"], conflict["detail"]["held"]) == ([first["id"]], True)
    bridge.deliver_once()
    assert [t["email"] for r in requests_mock.request_history for t in r.json()["tokens"]] == [
        "ann@example.com"
    ]
    runner = holding.test_cli_runner()
    listed = runner.invoke(args=["bridge", "conflicts", "--json"])
    assert [(r["id"], r["state"]) for r in json.loads(listed.output)["items"]] == [
        (second["id"], "held")
    ]
    assert runner.invoke(args=["bridge", "conflicts", "release", str(first["id"])]).exit_code == 1
    released = runner.invoke(args=["bridge", "conflicts", "release", str(second["id"])])
    assert released.exit_code == 0, released.output
    bridge.deliver_once()
    assert requests_mock.request_history[-1].json()["tokens"][0]["email"] == "bob@example.com"
    assert kinds(client, auth)[-2:] == ["released", "delivered"]


def test_hold_ends_when_the_other_identity_is_removed(holding, auth, requests_mock):
    client = holding.test_client()
    [first] = register(client, auth, ANN)
    [second] = register(client, auth, BOB)
    response = client.post(
        "/statuses",
        headers=auth,
        json={
            "status": "FAILED",
            "error": "Forbidden",
            "email": "ann@example.com",
            "time": "2099-01-01T00:00:00",
        },
    )
    assert response.get_json()["removed"] == ["4100"]
    states = {r["id"]: r["state"] for r in rows(client, auth, token=4100)}
    # a block is about the chat: both identities go; a held one with them
    assert states == {first["id"]: "removed", second["id"]: "removed"}


def test_a_hold_is_released_when_the_other_identity_alone_is_removed(make_app, auth):
    # A block takes the whole chat (above); one registration alone goes when an operator
    # removes it through the ledger, as the stale-token report does.
    app = make_app(BRIDGE_ON_CONFLICT="hold")
    client = app.test_client()
    ledger = app.extensions["reteno_bridge"].ledger
    [first] = register(client, auth, ANN)
    [second] = register(client, auth, BOB)
    with app.app_context():
        from bridge.ledger import reports

        with ledger.db.write() as conn:
            rows_ = reports.registrations_by(conn, "token", ["4100"], lock=True)
            reports.remove(
                conn,
                ledger.clock(),
                [([r for r in rows_ if r.id == first["id"]], "test", "test", {}, ledger.clock())],
            )
    states = {r["id"]: r["state"] for r in rows(client, auth, token=4100)}
    assert states == {first["id"]: "removed", second["id"]: "queued"}
    assert kinds(client, auth)[-1] == "released"


def test_the_wrong_on_conflict_setting_stops_start_up(make_app):
    from bridge.config import ConfigError

    with pytest.raises(ConfigError, match="BRIDGE_ON_CONFLICT"):
        make_app(BRIDGE_ON_CONFLICT="maybe")
