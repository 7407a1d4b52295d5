"""Delivery to Reteno: body, auth, batching, retries, pauses, dead letters.

Every upstream call here is answered by ``requests_mock``.
"""

from __future__ import annotations

import base64

import pytest
import requests

from tests.conftest import APP_UUID, RETENO_KEY, TOKENS_URL


def register(client, auth, tokens):
    response = client.post("/register", json={"tokens": tokens}, headers=auth)
    assert response.status_code == 202, response.json
    return response.json["registrations"]


def states(client, auth):
    items = client.get("/tokens", query_string={"limit": 500}, headers=auth).json["items"]
    return {item["token"]: item for item in items}


def history_kinds(client, auth, token):
    events = client.get(f"/tokens/{token}/history", headers=auth).json["events"]
    return [e["kind"] for e in events]


def sent_tokens(requests_mock):
    return [t["token"] for r in requests_mock.request_history for t in r.json()["tokens"]]


def test_exact_body_and_reteno_header_auth(client, auth, bridge, requests_mock):
    requests_mock.post(TOKENS_URL, json="OK")
    register(
        client,
        auth,
        [
            {
                "token": 11,
                "email": "Ann@Example.com",
                "phone": "+380 95 649 09 55",
                "contactId": 5,
                "externalCustomerId": "C-5",
            },
            {"token": "-22", "phone": "(380) 95-649-09-56"},
        ],
    )
    bridge.deliver_once()
    [call] = requests_mock.request_history
    assert call.method == "POST"
    assert call.url == TOKENS_URL
    assert call.json() == {
        "tokens": [
            {
                "token": "11",
                "contactId": 5,
                "externalCustomerId": "C-5",
                "phone": "380956490955",
                "email": "ann@example.com",
            },
            {"token": "-22", "phone": "380956490956"},
        ]
    }
    assert call.headers["X-Reteno-Access-Key"] == RETENO_KEY
    assert "Authorization" not in call.headers
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["User-Agent"].startswith("reteno-telegram-bridge/")
    assert call.timeout == (3.05, 10.0)  # the documented connect and read time-outs
    assert {s["state"] for s in states(client, auth).values()} == {"delivered"}


@pytest.mark.parametrize(
    ("platform", "base"),
    [("esputnik", "https://esputnik.com"), ("yespo", "https://yespo.io")],
)
def test_esputnik_and_yespo_use_basic_auth(make_app, auth, requests_mock, platform, base):
    app = make_app(RETENO_PLATFORM=platform)
    url = f"{base}/api/v1/apps/{APP_UUID}/tokens"
    requests_mock.post(url, json="OK")
    register(app.test_client(), auth, [{"token": 1, "email": "a@b.co"}])
    app.extensions["reteno_bridge"].deliver_once()
    [call] = requests_mock.request_history
    scheme, value = call.headers["Authorization"].split()
    assert scheme == "Basic"
    user, password = base64.b64decode(value).decode().split(":", 1)
    assert user and password == RETENO_KEY
    assert "X-Reteno-Access-Key" not in call.headers


def test_base_url_and_auth_can_be_overridden(make_app, auth, requests_mock):
    app = make_app(RETENO_BASE_URL="https://api.yespo.io/", RETENO_AUTH="basic")
    requests_mock.post(f"https://api.yespo.io/api/v1/apps/{APP_UUID}/tokens", json="OK")
    register(app.test_client(), auth, [{"token": 1, "email": "a@b.co"}])
    app.extensions["reteno_bridge"].deliver_once()
    assert requests_mock.last_request.headers["Authorization"].startswith("Basic ")


def test_many_tokens_go_in_few_calls(make_app, auth, requests_mock):
    app = make_app(BRIDGE_BATCH_SIZE=200)
    requests_mock.post(TOKENS_URL, json="OK")
    register(
        app.test_client(),
        auth,
        [{"token": i, "externalCustomerId": f"c{i}"} for i in range(1, 501)],
    )
    app.extensions["reteno_bridge"].deliver_once()
    sizes = [len(r.json()["tokens"]) for r in requests_mock.request_history]
    assert sizes == [200, 200, 100]
    assert sorted(map(int, sent_tokens(requests_mock))) == list(range(1, 501))


def test_429_retries_after_retry_after(client, auth, bridge, clock, requests_mock):
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
    register(client, auth, [{"token": 1, "email": "a@b.co"}])
    bridge.deliver_once()
    assert states(client, auth)["1"]["state"] == "queued"
    assert "429" in states(client, auth)["1"]["lastError"]
    clock.advance(29)
    bridge.deliver_once()
    assert requests_mock.call_count == 1, "sent again before Retry-After"
    clock.advance(2)
    bridge.deliver_once()
    assert requests_mock.call_count == 2
    row = states(client, auth)["1"]
    assert row["state"] == "delivered" and row["attempts"] == 2
    assert history_kinds(client, auth, "1") == ["submitted", "retry", "delivered"]


def test_5xx_and_network_errors_back_off_exponentially(client, auth, bridge, clock, requests_mock):
    requests_mock.post(
        TOKENS_URL,
        [
            {"status_code": 503, "text": "unavailable"},
            {"exc": requests.exceptions.ConnectTimeout},
            {"exc": requests.exceptions.ConnectionError},
            {"exc": requests.exceptions.ReadTimeout},
            {"status_code": 500, "text": "boom"},
            {"status_code": 200, "json": "OK"},
        ],
    )
    register(client, auth, [{"token": 1, "email": "a@b.co"}])
    waits = []
    for _ in range(6):
        bridge.deliver_once()
        row = states(client, auth)["1"]
        if row["state"] == "delivered":
            break
        from datetime import datetime

        due = datetime.fromisoformat(row["nextAttemptAt"])
        waits.append((due - clock.now).total_seconds())
        clock.advance(waits[-1] + 0.001)
    assert states(client, auth)["1"]["state"] == "delivered"
    assert requests_mock.call_count == 6
    # each wait is jittered within [base/2, base] and the base doubles
    for n, wait in enumerate(waits):
        assert 2**n / 2 <= wait <= 2**n
    assert history_kinds(client, auth, "1").count("retry") == 5


@pytest.mark.parametrize("status", [401, 403, 404])
def test_auth_errors_pause_delivery_and_drop_nothing(
    client, auth, bridge, clock, requests_mock, status
):
    requests_mock.post(
        TOKENS_URL,
        [
            {"status_code": status, "json": {"message": "Not registered application"}},
            {"status_code": 200, "json": "OK"},
        ],
    )
    register(client, auth, [{"token": i, "contactId": i} for i in (1, 2, 3)])
    bridge.deliver_once()
    health = client.get("/healthz", headers=auth).json
    assert health["delivery"]["paused"] is True
    assert (
        health["delivery"]["pauseReason"]
        == {401: "unauthorized", 403: "forbidden", 404: "not_found"}[status]
    )
    assert health["lastUpstream"]["status"] == status
    assert health["outbox"]["depth"] == 3
    bridge.deliver_once()
    assert requests_mock.call_count == 1, "no calls while paused"
    clock.advance(16)
    bridge.deliver_once()
    assert requests_mock.call_count == 2
    assert {s["state"] for s in states(client, auth).values()} == {"delivered"}
    assert client.get("/healthz", headers=auth).json["delivery"]["paused"] is False


def test_400_splits_the_batch_and_kills_only_the_bad_token(client, auth, bridge, requests_mock):
    def answer(request, context):
        tokens = [t["token"] for t in request.json()["tokens"]]
        if "13" in tokens:
            context.status_code = 400
            return {"message": "Invalid token"}
        context.status_code = 200
        return "OK"

    requests_mock.post(TOKENS_URL, json=answer)
    register(client, auth, [{"token": i, "contactId": i} for i in range(1, 21)])
    stats = bridge.deliver_once()
    assert stats["dead"] == 1 and stats["delivered"] == 19
    rows = states(client, auth)
    assert rows["13"]["state"] == "dead"
    assert "Invalid token" in rows["13"]["lastError"]
    assert {t: r["state"] for t, r in rows.items() if t != "13"} == {
        str(i): "delivered" for i in range(1, 21) if i != 13
    }
    accepted = [
        t["token"]
        for r in requests_mock.request_history
        if "13" not in {t["token"] for t in r.json()["tokens"]}
        for t in r.json()["tokens"]
    ]
    assert sorted(accepted, key=int) == [str(i) for i in range(1, 21) if i != 13]
    assert client.get("/healthz", headers=auth).json["deadLetters"] == 1
    assert history_kinds(client, auth, "13")[-1] == "dead"


def test_transient_failure_while_splitting_keeps_the_rest_queued(
    client, auth, bridge, clock, requests_mock
):
    requests_mock.post(
        TOKENS_URL,
        [
            {"status_code": 400, "json": {"message": "bad"}},
            {"status_code": 503, "text": "down"},
            {"status_code": 200, "json": "OK"},
            {"status_code": 200, "json": "OK"},
        ],
    )
    register(client, auth, [{"token": i, "contactId": i} for i in range(1, 5)])
    bridge.deliver_once()
    assert requests_mock.call_count == 2
    assert {r["state"] for r in states(client, auth).values()} == {"queued"}
    clock.advance(400)
    bridge.deliver_once()
    assert {r["state"] for r in states(client, auth).values()} == {"delivered"}


def test_two_workers_never_send_the_same_registration(make_app, auth, requests_mock):
    first = make_app(BRIDGE_BATCH_SIZE=10)
    second = make_app(BRIDGE_BATCH_SIZE=10)
    requests_mock.post(TOKENS_URL, json="OK")
    register(first.test_client(), auth, [{"token": i, "contactId": i} for i in range(1, 101)])
    a = first.extensions["reteno_bridge"].worker
    b = second.extensions["reteno_bridge"].worker
    while a.deliver_batch() + b.deliver_batch():
        pass
    sent = sent_tokens(requests_mock)
    assert len(sent) == 100 and len(set(sent)) == 100


def test_a_crashed_workers_claim_comes_due_again(client, auth, bridge, clock, requests_mock):
    requests_mock.post(TOKENS_URL, json="OK")
    register(client, auth, [{"token": 1, "contactId": 1}])
    # a worker takes the row, then dies before sending
    claim = bridge.ledger.claim(10, bridge.settings.lease_seconds)
    assert claim is not None
    bridge.deliver_once()
    assert requests_mock.call_count == 0
    clock.advance(121)
    bridge.deliver_once()
    assert requests_mock.call_count == 1
    assert states(client, auth)["1"]["state"] == "delivered"


def test_acknowledged_tokens_survive_a_restart(make_app, auth, requests_mock):
    """Upstream down, server stopped, started again, upstream back: each token once."""
    requests_mock.post(TOKENS_URL, status_code=503)
    first = make_app()
    register(first.test_client(), auth, [{"token": i, "contactId": i} for i in range(1, 51)])
    first.extensions["reteno_bridge"].deliver_once()
    first.extensions["reteno_bridge"].db.dispose()  # the server stops

    requests_mock.post(TOKENS_URL, json="OK")  # upstream is back
    second = make_app()  # the server starts again on the same database
    rt = second.extensions["reteno_bridge"]
    from tests.conftest import Clock

    clock = Clock()
    rt.ledger.clock = clock
    clock.advance(3600)
    rt.deliver_once()
    ok_calls = [r for r in requests_mock.request_history[1:]]
    sent = [t["token"] for r in ok_calls for t in r.json()["tokens"]]
    assert sorted(map(int, sent)) == list(range(1, 51))
    client = second.test_client()
    assert {s["state"] for s in states(client, auth).values()} == {"delivered"}


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_pauses_delivery(
    client, auth, bridge, requests_mock, status
):
    """Followed, a 307/308 would resend the body (personal data) and X-Reteno-Access-Key
    to the host the answer names (requests strips only Authorization)."""
    elsewhere = "https://collector.example/api/v1/apps/x/tokens"
    requests_mock.post(TOKENS_URL, status_code=status, headers={"Location": elsewhere})
    requests_mock.post(elsewhere, json="OK")
    requests_mock.get(elsewhere, json="OK")
    register(client, auth, [{"token": i, "email": f"u{i}@example.com"} for i in (1, 2)])
    stats = bridge.deliver_once()
    assert [r.url for r in requests_mock.request_history] == [TOKENS_URL]
    assert stats["paused"] == 2 and stats["delivered"] == 0
    assert {s["state"] for s in states(client, auth).values()} == {"queued"}
    health = client.get("/healthz", headers=auth).json
    assert health["delivery"]["paused"] is True
    assert health["delivery"]["pauseReason"] == "redirect"
    assert health["lastUpstream"]["status"] == status
    assert health["lastUpstream"]["reason"] == "redirect"
    assert history_kinds(client, auth, "1")[-1] == "paused"
