"""Custom events: ``POST /events`` and their way to Reteno's ``/api/v2/event``.

What a bot sees (202, 404, 422 with field-keyed errors, the chat's history) and what
Reteno receives (one call per event, the chat's contact identifier added to the
params), with retries, a pause on a refused key, a dead letter with Reteno's text,
requeue, a chat that blocks the bot before its event is sent, erase and metrics. Every
upstream call is answered by ``requests_mock``.
"""

from __future__ import annotations

import json

import httpx
import pytest
from reteno_bridge_client import BridgeClient, BridgeError

from tests.conftest import API_KEY, TOKENS_URL
from tests.helpers import assert_error_shape, history, register, run_cli

EVENT_URL = "https://reteno.com/api/v2/event"
CHAT = "5551234"
BLOCKED = "Forbidden: bot was blocked by the user"
PARAMS_TEXT = "The event should have the following params: [orderId]"


@pytest.fixture
def upstream(requests_mock):
    """Reteno answering 200 to registrations and events."""
    requests_mock.post(TOKENS_URL, json="OK")
    requests_mock.post(EVENT_URL, status_code=200, text="")
    return requests_mock


def event_calls(requests_mock) -> list[dict]:
    return [r.json() for r in requests_mock.request_history if r.url == EVENT_URL]


def send(client, auth, body, code=202):
    response = client.post("/events", json=body, headers=auth)
    assert response.status_code == code, response.get_json()
    return response.get_json()


def kinds(client, auth, token=CHAT) -> list[str]:
    return [e["kind"] for e in history(client, auth, token)]


@pytest.fixture
def delivered_chat(client, auth, bridge, upstream):
    """A chat whose registration Reteno has (an email and a phone: email goes first)."""
    register(client, auth, {"token": CHAT, "phone": "+380956490955", "email": "Ann@Example.com"})
    bridge.deliver_once()
    upstream.reset_mock()
    return CHAT


def event(token=CHAT, key="subscribed_to_sales", **more):
    return {"token": token, "eventTypeKey": key, **more}


# --- the API ---------------------------------------------------------------------------


def test_an_event_is_queued_then_sent_with_the_chats_identifier(
    client, auth, bridge, delivered_chat, upstream
):
    body = send(client, auth, event(params={"plan": "premium", "cart": {"total": "12.50"}}))
    [item] = body["events"]
    assert item["token"] == CHAT and item["state"] == "queued"
    assert item["eventTypeKey"] == "subscribed_to_sales"
    assert event_calls(upstream) == []  # 202: in the ledger, not yet sent
    bridge.deliver_once()
    # Reteno's order for events: email before phone
    assert event_calls(upstream) == [
        {
            "eventTypeKey": "subscribed_to_sales",
            "params": [
                {"name": "email", "value": "ann@example.com"},
                {"name": "plan", "value": "premium"},
                {"name": "cart", "value": {"total": "12.50"}},
            ],
        }
    ]
    assert kinds(client, auth)[-2:] == ["event_requested", "event_delivered"]
    requested = history(client, auth, CHAT)[-2]["detail"]
    assert requested["eventTypeKey"] == "subscribed_to_sales"
    assert requested["params"] == ["cart", "plan"]  # names only: the values stay in the row
    bridge.deliver_once()
    assert len(event_calls(upstream)) == 1  # sent once


def test_the_highest_identifier_goes_contact_id_first(client, auth, bridge, upstream):
    register(
        client,
        auth,
        {"token": "42", "contactId": 7, "externalCustomerId": "c-1", "email": "a@b.co"},
    )
    register(client, auth, {"token": "43", "externalCustomerId": "c-2", "phone": "380956490955"})
    register(client, auth, {"token": "44", "phone": "+44 20 7946 0958"})
    bridge.deliver_once()
    send(client, auth, {"events": [event("42"), event("43"), event("44")]})
    bridge.deliver_once()
    assert [c["params"] for c in event_calls(upstream)] == [
        [{"name": "contactId", "value": "7"}],
        [{"name": "externalCustomerId", "value": "c-2"}],
        [{"name": "phone", "value": "442079460958"}],
    ]


def test_reteno_s_own_list_of_params_is_taken(client, auth, bridge, delivered_chat, upstream):
    send(client, auth, event(params=[{"name": "orderId", "value": "A-1"}]))
    bridge.deliver_once()
    assert event_calls(upstream)[0]["params"][1:] == [{"name": "orderId", "value": "A-1"}]


def test_an_event_waits_until_reteno_has_the_chat(client, auth, bridge, requests_mock):
    requests_mock.post(TOKENS_URL, status_code=503)
    requests_mock.post(EVENT_URL, text="")
    register(client, auth, {"token": CHAT, "contactId": 7})
    send(client, auth, event())
    bridge.deliver_once()  # the registration fails: the event waits, unsent
    assert event_calls(requests_mock) == []
    assert kinds(client, auth)[-1] == "retry"


def test_events_waiting_for_their_chat_do_not_hold_up_the_others_behind_them(
    client, auth, bridge, delivered_chat, upstream, monkeypatch
):
    monkeypatch.setattr("bridge.ledger.events_out._PAGE", 2)  # a claim reads two at a time
    register(client, auth, {"token": "777", "contactId": 7})  # not yet delivered
    send(client, auth, {"events": [*(event("777") for _ in range(3)), event(), event()]})
    claim = bridge.ledger.claim_events(5, 60)
    assert [row.token for row in claim.rows] == [CHAT, CHAT]  # found past three waiting
    bridge.ledger.release(claim, list(claim.rows), {"sent": False})
    bridge.deliver_once()  # the chat's registration first, then all five
    assert len(event_calls(upstream)) == 5


def test_a_chat_without_a_live_registration_is_404_and_nothing_is_stored(
    client, auth, bridge, delivered_chat, upstream
):
    body = assert_error_shape(client.post("/events", json=event("777"), headers=auth), 404)
    assert body["errors"] == {"token": ["No live registration."]}
    # in a batch: every such event is named, and nothing of the body is stored
    response = client.post(
        "/events", json={"events": [event(), event("777"), event("778")]}, headers=auth
    )
    body = assert_error_shape(response, 404)
    assert set(body["errors"]) == {"events.1.token", "events.2.token"}
    bridge.deliver_once()
    assert event_calls(upstream) == []
    assert "event_requested" not in kinds(client, auth)


def test_a_batch_is_answered_in_order(client, auth, bridge, delivered_chat, upstream):
    body = send(client, auth, {"events": [event(key=f"k{i}") for i in range(5)]})
    assert [e["eventTypeKey"] for e in body["events"]] == [f"k{i}" for i in range(5)]
    assert len({e["id"] for e in body["events"]}) == 5
    bridge.deliver_once()
    assert [c["eventTypeKey"] for c in event_calls(upstream)] == [f"k{i}" for i in range(5)]


def test_events_are_claimed_together_and_sent_one_call_each_recorded_once(
    client, auth, bridge, upstream, monkeypatch
):
    register(client, auth, *({"token": str(t), "contactId": t} for t in (42, 43, 44)))
    bridge.deliver_once()
    bridge.worker.in_flight = 8  # the tests' app has one
    claims = []
    real = bridge.ledger.claim_events

    def claim_events(limit, lease_seconds):
        claim = real(limit, lease_seconds)
        claims.append(claim and len(claim.rows))
        return claim

    monkeypatch.setattr(bridge.ledger, "claim_events", claim_events)
    send(client, auth, {"events": [event(str(t), key=f"k{t}{i}") for t in (42, 43, 44)
                                   for i in range(2)]})  # fmt: skip
    stats = bridge.deliver_once()
    assert claims[0] == 6  # one claim (of up to BRIDGE_IN_FLIGHT), one lease
    assert stats["delivered"] == 6 and len(event_calls(upstream)) == 6  # one call each
    for t in ("42", "43", "44"):
        assert kinds(client, auth, t).count("event_delivered") == 2
    bridge.deliver_once()
    assert len(event_calls(upstream)) == 6  # none twice


def test_a_time_is_kept_in_the_history(client, auth, delivered_chat, clock):
    body = send(client, auth, event(time="2026-01-02T03:04:05Z"))
    assert body["events"][0]["occurredAt"].startswith("2026-01-02T03:04:05")
    assert history(client, auth, CHAT)[-1]["detail"]["time"].startswith("2026-01-02T03:04:05")
    later = int(clock.now.timestamp()) + 3600  # a future time counts as the time received
    detail = send(client, auth, event(time=later)) and history(client, auth, CHAT)[-1]["detail"]
    assert detail["clamped"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (event(key="k" * 101), "eventTypeKey"),
        (event(key=""), "eventTypeKey"),
        *((event(key=f"a{c}b"), "eventTypeKey") for c in "<;'\\/|\"`^?!,>"),
        (event(key=7), "eventTypeKey"),
        ({"token": CHAT}, "eventTypeKey"),
        ({"eventTypeKey": "k"}, "token"),
        (event(token="abc"), "token"),
        (event(params={"n" * 101: "v"}), "params." + "n" * 101),
        (event(params={"": "v"}), "params."),
        (event(params={"n": 1}), "params.n"),
        (event(params={"n": ["a"]}), "params.n"),
        (event(params={"n": None}), "params.n"),
        (event(params={"email": "x@y.co"}), "params.email"),
        (event(params={"contactId": "1"}), "params.contactId"),
        (event(params={"externalCustomerId": "1"}), "params.externalCustomerId"),
        (event(params={"Phone": "1"}), "params.Phone"),
        (event(params=[{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]), "params.1.name"),
        (event(params=[{"name": "a"}]), "params.0"),
        (event(params="a=1"), "params"),
        (event(params={"big": "x" * 20_000}), "params"),
        (event(time="yesterday"), "time"),
        (event(extra=1), "extra"),
        ({"events": []}, "events"),
        ({"events": [event()] * 1001}, "events"),
        ({"events": [event(), event(key="a!")]}, "events.1.eventTypeKey"),
    ],
)
def test_what_reteno_refuses_is_a_422_and_nothing_is_stored(
    client, auth, bridge, delivered_chat, upstream, body, field
):
    response = client.post("/events", json=body, headers=auth)
    errors = assert_error_shape(response, 422)["errors"]
    assert field in errors, errors
    bridge.deliver_once()
    assert event_calls(upstream) == []
    assert "event_requested" not in kinds(client, auth)


def test_an_event_of_20_kb_less_the_identifier_s_room_is_taken(client, auth, delivered_chat):
    from bridge.event_views import IDENTIFIER_ROOM, body_bytes

    params = {"big": ""}
    params["big"] = "x" * (20 * 1024 - IDENTIFIER_ROOM - body_bytes("k", params))
    send(client, auth, event(key="k", params=params))
    params["big"] += "x"
    response = client.post("/events", json=event(key="k", params=params), headers=auth)
    assert_error_shape(response, 422)


def test_an_event_taken_near_the_limit_goes_out_as_the_bytes_measured(
    client, auth, bridge, delivered_chat, upstream
):
    from bridge.event_views import IDENTIFIER_ROOM, body_bytes

    room = 20 * 1024 - IDENTIFIER_ROOM - body_bytes("k", {"big": ""})
    params = {"big": "ж" * (room // 2)}  # two bytes each in UTF-8, six as \uXXXX
    send(client, auth, event(key="k", params=params))
    bridge.deliver_once()
    [request] = [r for r in upstream.request_history if r.url == EVENT_URL]
    assert request.headers["Content-Type"] == "application/json"
    assert len(request.body) <= 20 * 1024
    sent = json.loads(request.body.decode())
    assert request.body == json.dumps(sent, ensure_ascii=False, separators=(",", ":")).encode()
    assert sent["params"][-1] == {"name": "big", "value": params["big"]}
    assert kinds(client, auth)[-1] == "event_delivered"


def test_events_need_a_bearer_key(client):
    assert_error_shape(client.post("/events", json=event()), 401)


# --- Reteno's answers ------------------------------------------------------------------


def test_a_transient_failure_is_retried(client, auth, bridge, clock, delivered_chat, requests_mock):
    requests_mock.post(EVENT_URL, [{"status_code": 429}, {"status_code": 503}, {"text": ""}])
    send(client, auth, event())
    bridge.deliver_once()
    clock.advance(60)
    bridge.deliver_once()
    clock.advance(60)
    bridge.deliver_once()
    assert len(event_calls(requests_mock)) == 3
    assert kinds(client, auth)[-3:] == ["event_retry", "event_retry", "event_delivered"]


def test_a_refused_key_pauses_events_and_registrations_alike(
    client, auth, bridge, delivered_chat, requests_mock
):
    requests_mock.post(EVENT_URL, status_code=403, json={"message": "Forbidden"})
    send(client, auth, event())
    bridge.deliver_once()
    register(client, auth, {"token": "999", "contactId": 9})
    bridge.deliver_once()
    assert [r.url for r in requests_mock.request_history] == [EVENT_URL]
    response = client.get("/healthz", headers=auth)
    health = response.get_json()
    assert "delivery_paused" in health["reasons"], (response.status_code, health)
    assert kinds(client, auth)[-1] == "event_paused"


def test_reteno_s_400_is_a_dead_letter_with_its_text_and_requeue_brings_it_back(
    client, auth, bridge, clock, delivered_chat, requests_mock, runner
):
    requests_mock.post(EVENT_URL, status_code=400, json={"status": 400, "message": PARAMS_TEXT})
    send(client, auth, event(key="order_placed"))
    bridge.deliver_once()
    bridge.deliver_once()
    assert len(event_calls(requests_mock)) == 1  # not retried
    assert kinds(client, auth)[-1] == "event_dead"
    assert PARAMS_TEXT in history(client, auth, CHAT)[-1]["detail"]["error"]
    health = client.get("/healthz", headers=auth).get_json()
    assert "delivery_paused" not in health["reasons"]
    assert "dead_commands" in health["reasons"] and health["deadCommands"] == {"event": 1}
    assert PARAMS_TEXT not in str(health)  # Reteno's text can quote personal data
    metrics = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'bridge_ledger_events{state="dead"} 1.0' in metrics
    assert 'bridge_commands_total{lane="events",outcome="dead"} 1.0' in metrics
    requests_mock.post(EVENT_URL, text="")
    run_cli(runner, "requeue", "--error-contains", "following params")
    bridge.deliver_once()
    assert kinds(client, auth)[-2:] == ["event_requeued", "event_delivered"]
    assert client.get("/healthz", headers=auth).get_json()["deadCommands"] == {}


def test_an_event_of_a_chat_that_blocks_before_it_is_sent_is_not_sent(
    client, auth, bridge, delivered_chat, upstream, runner
):
    send(client, auth, event())
    response = client.post(
        "/statuses", json=[{"status": "FAILED", "error": BLOCKED, "token": CHAT}], headers=auth
    )
    assert response.get_json()["removed"] == [CHAT]
    bridge.deliver_once()
    assert event_calls(upstream) == []
    dropped = history(client, auth, CHAT)[-1]
    assert dropped["kind"] == "event_dropped"
    assert "no live registration" in dropped["detail"]["reason"]
    metrics = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'bridge_ledger_events{state="dropped"} 1.0' in metrics
    # the user's choice, not a fault: no dead letter for an operator
    assert client.get("/healthz", headers=auth).get_json()["deadCommands"] == {}
    # requeued while the chat is still gone: dropped again, never sent
    run_cli(runner, "requeue")
    bridge.deliver_once()
    assert kinds(client, auth)[-2:] == ["event_requeued", "event_dropped"]
    assert event_calls(upstream) == []


def test_the_identifier_is_the_one_reteno_holds_when_the_event_is_sent(
    client, auth, bridge, delivered_chat, upstream
):
    send(client, auth, event())
    # the chat registered again under a new identity before the event went out
    register(client, auth, {"token": CHAT, "contactId": 99})
    bridge.deliver_once()
    assert event_calls(upstream)[0]["params"] == [{"name": "contactId", "value": "99"}]


def test_erase_removes_a_chat_s_events(client, auth, bridge, delivered_chat, upstream, runner):
    send(client, auth, event(params={"note": "ann@example.com"}))
    run_cli(runner, "erase", "--email", "ann@example.com", "--yes")
    assert history(client, auth, CHAT) == []
    bridge.deliver_once()
    assert event_calls(upstream) == []
    metrics = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'bridge_ledger_events{state="queued"} 0.0' in metrics


def test_metrics_count_events_by_outcome(client, auth, bridge, delivered_chat, upstream):
    send(client, auth, {"events": [event(), event()]})
    client.post("/events", json=event("777"), headers=auth)
    client.post("/events", json=event(key="a!"), headers=auth)
    bridge.deliver_once()
    text = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'bridge_events_total{result="queued"} 2.0' in text
    assert 'bridge_events_total{result="not_found"} 1.0' in text
    assert 'bridge_events_total{result="invalid"} 1.0' in text
    assert 'bridge_commands_total{lane="events",outcome="delivered"} 2.0' in text
    assert 'bridge_ledger_events{state="delivered"} 2.0' in text


def test_bridge_stats_counts_events(client, auth, bridge, delivered_chat, upstream, runner):
    assert "Custom events" not in run_cli(runner, "stats").output
    send(client, auth, {"events": [event(), event()]})
    bridge.deliver_once()
    send(client, auth, event())
    output = run_cli(runner, "stats").output
    assert "Custom events: queued 1, delivered 2, dead 0, dropped 0" in output
    stats = json.loads(run_cli(runner, "stats", "--json").output)
    assert stats["events"] == {"queued": 1, "delivered": 2, "dead": 0, "dropped": 0}


def test_the_openapi_document_declares_the_route(client):
    spec = client.get("/openapi.json").get_json()
    operation = spec["paths"]["/events"]["post"]
    assert {"202", "401", "404", "422"} <= set(operation["responses"])


def test_the_client_s_send_event_against_the_bridge(app, bridge, delivered_chat, upstream):
    transport = httpx.WSGITransport(app=app)
    with BridgeClient("http://bridge.test", API_KEY, transport=transport) as client:
        result = client.send_event(int(CHAT), "welcome", {"plan": "gold"})
        with pytest.raises(BridgeError) as raised:
            client.send_event(777, "welcome")
    assert (result.token, result.event_type_key, result.state) == (CHAT, "welcome", "queued")
    assert result.occurred_at is not None and result.requested_at is not None
    assert raised.value.status == 404
    assert raised.value.errors == {"token": ["No live registration."]}
    bridge.deliver_once()
    assert event_calls(upstream)[0]["params"][1:] == [{"name": "plan", "value": "gold"}]
