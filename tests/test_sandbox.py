"""Tests for bridge.sandbox, the built-in Reteno API simulator."""

import base64
import inspect
import json
import logging
import threading
import time

import pytest
import requests
from werkzeug.serving import make_server

from bridge.sandbox import (
    DROP_CONNECTION,
    DROP_FALLBACK_HEADER,
    Simulator,
    SimulatorOptions,
    create_app,
    create_blueprint,
)
from bridge.sandbox.cli import describe, options_from, sandbox_command

APP = "0b7a1c52-6c1e-4f6e-9a55-3d2f7f1a9b10"
OTHER_APP = "11111111-2222-3333-4444-555555555555"
KEY = "s3cret-key"
URL = f"/api/v1/apps/{APP}/tokens"


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(status_sink=None, clock=None, sleep=None, **overrides):
    options = SimulatorOptions(**{"app_uuid": APP, "api_key": KEY, "rps": 0, **overrides})
    simulator = Simulator(
        options,
        status_sink=status_sink,
        clock=clock or FakeClock(),
        sleep=sleep or (lambda seconds: None),
    )
    app = create_app(simulator=simulator)
    return simulator, app.test_client()


def post_tokens(client, tokens, key=KEY, url=URL, **kwargs):
    headers = {"X-Reteno-Access-Key": key} if key is not None else {}
    return client.post(url, json={"tokens": tokens}, headers=headers, **kwargs)


def basic(user: str, password: str) -> dict:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


# ------------------------------------------------------------------ success & auth


def test_success_answers_json_string_ok():
    simulator, client = make()
    response = post_tokens(client, [{"token": "100", "externalCustomerId": "u1"}])
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == "OK"
    assert simulator.received_counts() == {"100": 1}


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Access key is missing"),
        ({"X-Reteno-Access-Key": ""}, "Access key is missing"),
        ({"X-Reteno-Access-Key": "wrong"}, "Invalid access key"),
        (basic("bridge", KEY), "Access key is missing"),  # wrong scheme
    ],
)
def test_header_auth_rejects(headers, message):
    simulator, client = make()
    response = client.post(URL, json={"tokens": [{"token": "1", "phone": "+1"}]}, headers=headers)
    assert response.status_code == 401
    assert response.get_json() == {"status": 401, "message": message}
    assert simulator.contacts() == []
    assert simulator.stats()["unauthorized"] == 1


def test_header_auth_is_case_insensitive_on_the_name():
    _, client = make()
    response = client.post(
        URL, json={"tokens": [{"token": "1", "phone": "+1"}]}, headers={"x-reteno-access-key": KEY}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-Reteno-Access-Key": KEY}, 401),  # header scheme not accepted in basic mode
        (basic("anyone", "wrong"), 401),
        ({"Authorization": "Basic !!!not-base64"}, 401),
        (basic("anyone", KEY), 200),
        (basic("", KEY), 200),
    ],
)
def test_basic_auth(headers, status):
    _, client = make(auth="basic")
    response = client.post(URL, json={"tokens": [{"token": "1", "phone": "+1"}]}, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.get_json()["status"] == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_no_configured_key_accepts_any_non_empty_key():
    _, client = make(api_key=None)
    assert post_tokens(client, [{"token": "1", "phone": "+1"}], key="whatever").status_code == 200
    assert post_tokens(client, [{"token": "1", "phone": "+1"}], key="").status_code == 401
    assert post_tokens(client, [{"token": "1", "phone": "+1"}], key=None).status_code == 401

    _, basic_client = make(api_key=None, auth="basic")
    body = {"tokens": [{"token": "1", "phone": "+1"}]}
    assert basic_client.post(URL, json=body, headers=basic("u", "k")).status_code == 200
    assert basic_client.post(URL, json=body, headers=basic("u", "")).status_code == 401


def test_non_ascii_key_does_not_crash():
    _, client = make()
    response = client.post(
        URL,
        json={"tokens": [{"token": "1", "phone": "+1"}]},
        headers=basic("u", "ключ") | {"X-Reteno-Access-Key": "k\u00e9y"},
    )
    assert response.status_code == 401


# ------------------------------------------------------------- app uuid & body


def test_unknown_app_uuid_is_404():
    _, client = make()
    response = post_tokens(
        client, [{"token": "1", "phone": "+1"}], url=f"/api/v1/apps/{OTHER_APP}/tokens"
    )
    assert response.status_code == 404
    assert response.get_json() == {"status": 404, "message": "Not registered application"}


def test_malformed_app_uuid_is_400():
    _, client = make()
    response = post_tokens(client, [{"token": "1", "phone": "+1"}], url="/api/v1/apps/nope/tokens")
    assert response.status_code == 400
    assert response.get_json() == {"status": 400, "message": "Wrong app uuid"}


def test_any_app_uuid_when_not_configured():
    _, client = make(app_uuid=None)
    response = post_tokens(
        client, [{"token": "1", "phone": "+1"}], url="/api/v1/apps/my-app/tokens"
    )
    assert response.status_code == 200


def test_non_uuid_configured_app_id_matches_exactly():
    _, client = make(app_uuid="test-app")
    ok = post_tokens(client, [{"token": "1", "phone": "+1"}], url="/api/v1/apps/test-app/tokens")
    assert ok.status_code == 200


@pytest.mark.parametrize("body", [{}, {"tokens": []}, {"tokens": None}])
def test_tokens_must_be_specified(body):
    simulator, client = make()
    response = client.post(URL, json=body, headers={"X-Reteno-Access-Key": KEY})
    assert response.status_code == 400
    assert response.get_json() == {"status": 400, "message": "Tokens must be specified"}
    assert simulator.stats()["rejected"] == 1


def test_malformed_json_is_400():
    _, client = make()
    response = client.post(
        URL,
        data="{not json",
        content_type="application/json",
        headers={"X-Reteno-Access-Key": KEY},
    )
    assert response.status_code == 400
    assert response.get_json()["status"] == 400


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"phone": "+1"}, "tokens[2]: token is required"),
        ({"token": "9"}, "tokens[2]: at least one identifier is required"),
        ({"token": "9", "email": None}, "tokens[2]: at least one identifier is required"),
        ({"token": 9, "phone": "+1"}, "tokens[2]: token must be a non-empty string"),
        ({"token": "9", "contactId": "12"}, "tokens[2]: contactId must be an integer"),
        ({"token": "9", "contactId": True}, "tokens[2]: contactId must be an integer"),
        ({"token": "9", "email": ""}, "tokens[2]: email must be a non-empty string"),
        ("9", "tokens[2]: must be an object"),
    ],
)
def test_malformed_token_object_names_its_index_and_stores_nothing(bad, message):
    simulator, client = make()
    tokens = [{"token": "1", "phone": "+1"}, {"token": "2", "phone": "+2"}, bad]
    response = post_tokens(client, tokens)
    assert response.status_code == 400
    assert response.get_json() == {"status": 400, "message": message}
    assert simulator.contacts() == []
    assert simulator.received_counts() == {}


# -------------------------------------------------------------------- matching


def test_new_contact_gets_all_identifiers_and_the_token():
    simulator, client = make()
    token = {
        "token": "100",
        "contactId": 7,
        "externalCustomerId": "ext-1",
        "phone": "+380501112233",
        "email": "a@example.com",
    }
    assert post_tokens(client, [token]).status_code == 200
    assert simulator.contacts() == [
        {
            "id": 1,
            "contactId": 7,
            "externalCustomerId": "ext-1",
            "phone": "+380501112233",
            "email": "a@example.com",
            "tokens": ["100"],
        }
    ]


def test_missing_identifiers_are_none_on_a_new_contact():
    simulator, client = make()
    post_tokens(client, [{"token": "5", "email": "x@example.com"}])
    (contact,) = simulator.contacts()
    assert contact["contactId"] is None
    assert contact["externalCustomerId"] is None
    assert contact["phone"] is None
    assert contact["email"] == "x@example.com"


def test_matching_priority_contact_id_first():
    simulator, client = make()
    post_tokens(
        client,
        [
            {"token": "a", "contactId": 1},
            {"token": "b", "externalCustomerId": "ext"},
            {"token": "c", "phone": "+1"},
            {"token": "d", "email": "d@example.com"},
        ],
    )
    # carries all four identifiers, each matching a different contact: contactId wins
    post_tokens(
        client,
        [
            {
                "token": "x",
                "contactId": 1,
                "externalCustomerId": "ext",
                "phone": "+1",
                "email": "d@example.com",
            }
        ],
    )
    # without contactId: externalCustomerId wins over phone and email
    post_tokens(
        client,
        [{"token": "y", "externalCustomerId": "ext", "phone": "+1", "email": "d@example.com"}],
    )
    # without contactId/externalCustomerId: phone wins over email
    post_tokens(client, [{"token": "z", "phone": "+1", "email": "d@example.com"}])
    tokens = {c["id"]: c["tokens"] for c in simulator.contacts()}
    assert tokens == {1: ["a", "x"], 2: ["b", "y"], 3: ["c", "z"], 4: ["d"]}
    assert simulator.stats()["contacts"] == 4


def test_unmatched_higher_identifier_falls_through_to_a_lower_one():
    simulator, client = make()
    post_tokens(client, [{"token": "a", "email": "e@example.com"}])
    post_tokens(client, [{"token": "b", "contactId": 99, "email": "E@Example.com"}])
    (contact,) = simulator.contacts()
    assert contact["tokens"] == ["a", "b"]
    # the other identifiers of the matching call are ignored, not merged
    assert contact["contactId"] is None


def test_top_identifier_match_ignores_the_others():
    simulator, client = make()
    post_tokens(client, [{"token": "a", "externalCustomerId": "ext", "phone": "+1"}])
    post_tokens(client, [{"token": "b", "externalCustomerId": "ext", "phone": "+999"}])
    (contact,) = simulator.contacts()
    assert contact["phone"] == "+1"
    assert contact["tokens"] == ["a", "b"]


def test_no_match_creates_a_new_contact():
    simulator, client = make()
    post_tokens(client, [{"token": "a", "phone": "+1"}])
    post_tokens(client, [{"token": "b", "phone": "+2"}])
    assert [c["tokens"] for c in simulator.contacts()] == [["a"], ["b"]]


def test_later_token_in_the_same_call_matches_an_earlier_one():
    simulator, client = make()
    post_tokens(client, [{"token": "a", "phone": "+1"}, {"token": "b", "phone": "+1"}])
    assert [c["tokens"] for c in simulator.contacts()] == [["a", "b"]]


def test_duplicate_token_is_appended_and_counted():
    simulator, client = make()
    post_tokens(client, [{"token": "100", "externalCustomerId": "u1"}])
    post_tokens(client, [{"token": "100", "externalCustomerId": "u1"}])
    post_tokens(client, [{"token": "200", "externalCustomerId": "u2"}])
    assert simulator.find_by_token("100")[0]["tokens"] == ["100", "100"]
    assert simulator.received_counts() == {"100": 2, "200": 1}
    stats = simulator.stats()
    assert stats["tokens_received"] == 3
    assert stats["distinct_tokens"] == 2
    assert stats["duplicate_tokens"] == 1
    assert stats["accepted_requests"] == 3
    assert stats["requests"] == 3


def test_add_tokens_can_be_called_directly():
    simulator = Simulator(SimulatorOptions(api_key=KEY, rps=0))
    status, payload, headers = simulator.add_tokens(
        "any", {"X-Reteno-Access-Key": KEY}, b'{"tokens": [{"token": "1", "phone": "+1"}]}'
    )
    assert (status, payload, headers) == (200, "OK", {})
    status, payload, _ = simulator.add_tokens(
        "any", {"X-Reteno-Access-Key": KEY}, {"tokens": [{"token": "2", "phone": "+1"}]}
    )
    assert status == 200
    assert simulator.find_by_token("2")[0]["tokens"] == ["1", "2"]


# ------------------------------------------------------------ rate limit, faults


def test_rate_limit():
    clock = FakeClock()
    simulator, client = make(clock=clock, rps=2)
    codes = [post_tokens(client, [{"token": str(i), "phone": "+1"}]).status_code for i in range(5)]
    assert codes == [200, 200, 429, 429, 429]
    limited = post_tokens(client, [{"token": "x", "phone": "+1"}])
    assert limited.get_json() == {"status": 429, "message": "Too many requests"}
    assert limited.headers["Retry-After"] == "1"
    stats = simulator.stats()
    assert stats["rate_limited"] == 4
    assert stats["accepted_requests"] == 2
    assert simulator.received_counts() == {"0": 1, "1": 1}

    clock.now += 1.0  # the window has moved on
    assert post_tokens(client, [{"token": "y", "phone": "+1"}]).status_code == 200


def test_unauthenticated_calls_do_not_count_against_the_rate_limit():
    simulator, client = make(clock=FakeClock(), rps=2)
    for _ in range(3):
        assert post_tokens(client, [{"token": "1", "phone": "+1"}], key="bad").status_code == 401
    codes = [post_tokens(client, [{"token": "1", "phone": "+1"}]).status_code for _ in range(5)]
    # the three refused calls took no slot of the window: the first two authenticated ones pass
    assert codes == [200, 200, 429, 429, 429]
    assert simulator.stats()["rate_limited"] == 3


def test_the_rate_limit_reads_the_monotonic_clock_unless_given_another():
    # the tests inject a FakeClock; a served simulator uses these defaults
    parameters = inspect.signature(Simulator).parameters
    assert parameters["clock"].default is time.monotonic
    assert parameters["sleep"].default is time.sleep


def test_fractional_rps_allows_one_call_per_longer_window():
    clock = FakeClock()
    _, client = make(clock=clock, rps=0.5)
    assert post_tokens(client, [{"token": "1", "phone": "+1"}]).status_code == 200
    clock.now += 1.5
    assert post_tokens(client, [{"token": "2", "phone": "+1"}]).status_code == 429
    clock.now += 0.5
    assert post_tokens(client, [{"token": "3", "phone": "+1"}]).status_code == 200


@pytest.mark.parametrize(
    ("kind", "status", "retry_after"),
    [("500", 500, None), ("503", 503, None), ("429", 429, None), ("429-retry-after", 429, "1")],
)
def test_injected_faults(kind, status, retry_after):
    simulator, client = make(failure_rate=1.0, failures=(kind,))
    response = post_tokens(client, [{"token": "1", "phone": "+1"}])
    assert response.status_code == status
    assert response.get_json()["status"] == status
    assert response.headers.get("Retry-After") == retry_after
    assert simulator.contacts() == []
    assert simulator.received_counts() == {}
    stats = simulator.stats()
    assert stats["faults"][kind] == 1
    assert stats["accepted_requests"] == 0
    assert stats["requests"] == 1


def test_timeout_fault_sleeps_then_answers_504():
    slept = []
    simulator, client = make(
        failure_rate=1.0, failures=("timeout",), timeout_seconds=7.5, sleep=slept.append
    )
    response = post_tokens(client, [{"token": "1", "phone": "+1"}])
    assert response.status_code == 504
    assert slept == [7.5]
    assert simulator.contacts() == []
    assert simulator.stats()["faults"]["timeout"] == 1


def test_fault_happens_before_validation():
    simulator, client = make(failure_rate=1.0, failures=("503",))
    response = client.post(URL, json={}, headers={"X-Reteno-Access-Key": KEY})
    assert response.status_code == 503


def test_drop_without_a_socket_falls_back_to_502():
    simulator, client = make(failure_rate=1.0, failures=("drop",))
    response = post_tokens(client, [{"token": "1", "phone": "+1"}])
    assert response.status_code == 502
    assert response.headers[DROP_FALLBACK_HEADER] == "drop"
    assert simulator.contacts() == []
    assert simulator.stats()["faults"]["drop"] == 1


def test_add_tokens_reports_a_drop():
    simulator = Simulator(SimulatorOptions(failure_rate=1.0, failures=("drop",)))
    status, payload, _ = simulator.add_tokens("a", {"X-Reteno-Access-Key": "k"}, b"{}")
    assert status == DROP_CONNECTION
    assert payload is None


def test_latency_is_added_to_tokens_calls():
    slept = []
    _, client = make(latency_ms=250, sleep=slept.append)
    assert post_tokens(client, [{"token": "1", "phone": "+1"}]).status_code == 200
    assert slept == [0.25]


def test_seeded_fault_mix_is_reproducible():
    def run():
        simulator, client = make(failure_rate=0.5, seed=42, failures=("500", "503"))
        codes = [
            post_tokens(client, [{"token": "t", "phone": "+1"}]).status_code for _ in range(30)
        ]
        return codes, simulator.stats()["faults"]

    first, second = run(), run()
    assert first == second
    codes, faults = first
    assert set(codes) == {200, 500, 503}  # half the calls fail, with both kinds
    assert faults == {
        "500": codes.count(500),
        "503": codes.count(503),
        "429": 0,
        "429-retry-after": 0,
        "timeout": 0,
        "drop": 0,
    }


def test_invalid_options_are_refused():
    with pytest.raises(ValueError):
        Simulator(SimulatorOptions(auth="token"))
    with pytest.raises(ValueError):
        Simulator(SimulatorOptions(failures=("boom",)))
    with pytest.raises(ValueError):
        Simulator(SimulatorOptions(failure_rate=1.5))
    with pytest.raises(ValueError):
        Simulator(SimulatorOptions(failure_rate=0.1, failures=()))


def test_configure_changes_options_at_run_time():
    simulator, client = make()
    simulator.configure(failure_rate=1.0, failures=["500"])
    assert post_tokens(client, [{"token": "1", "phone": "+1"}]).status_code == 500
    simulator.configure(failure_rate=0.0)
    assert post_tokens(client, [{"token": "1", "phone": "+1"}]).status_code == 200
    with pytest.raises(ValueError):
        simulator.configure(rps=-1)
    with pytest.raises(TypeError):
        simulator.configure(nope=1)


# ----------------------------------------------------------------------- block


def test_block_removes_the_token_and_calls_the_sink():
    received = []
    simulator, client = make(status_sink=received.append)
    post_tokens(
        client,
        [
            {"token": "100", "contactId": 5, "externalCustomerId": "ext", "email": "a@b.c"},
            {"token": "100", "contactId": 5},
            {"token": "200", "contactId": 5},
            {"token": "100", "phone": "+1"},
        ],
    )
    events = simulator.block("100")
    assert simulator.find_by_token("100") == []
    assert [c["tokens"] for c in simulator.contacts()] == [["200"], []]
    assert received == [events]
    assert len(events) == 2
    first, second = events
    assert first["status"] == "FAILED"
    assert first["error"] == "Forbidden: bot was blocked by the user"
    assert first["token"] == "100"
    assert first["activityStatus"] == "UNDELIVERED"
    assert first["statusDescription"] == "403: Forbidden: bot was blocked by the user"
    assert first["mediaType"] == "telegrambot"
    assert first["contactId"] == 5
    assert first["externalCustomerId"] == "ext"
    assert first["email"] == "a@b.c"
    assert first["activityDateTime"].endswith("Z")
    assert isinstance(first["messageId"], int)
    # identifiers that are None are omitted; phone is never part of the event
    assert "contactId" not in second
    assert "email" not in second
    assert "phone" not in second
    assert second["messageId"] != first["messageId"]
    assert simulator.stats()["blocked"] == 1


def test_block_custom_reason():
    received = []
    simulator, client = make(status_sink=received.extend)
    post_tokens(client, [{"token": "1", "phone": "+1"}])
    (event,) = simulator.block("1", reason="Forbidden: user is deactivated")
    assert event["statusDescription"] == "403: Forbidden: user is deactivated"
    assert received == [event]


def test_block_unknown_token_sends_nothing():
    received = []
    simulator, _ = make(status_sink=received.append)
    assert simulator.block("404") == []
    assert received == []


def test_failing_sink_is_logged_not_raised(caplog):
    def sink(events):
        raise RuntimeError("boom")

    simulator, client = make(status_sink=sink)
    post_tokens(client, [{"token": "1", "phone": "+1"}])
    with caplog.at_level(logging.ERROR, logger="bridge.sandbox"):
        events = simulator.block("1")
    assert len(events) == 1
    assert "status sink failed" in caplog.text


def test_block_posts_to_the_webhook_with_basic_auth(requests_mock):
    hook = requests_mock.post("http://bridge.test/statuses", status_code=200)
    simulator, client = make(
        webhook_url="http://bridge.test/statuses",
        webhook_username="reteno",
        webhook_password="hook-pass",
    )
    post_tokens(client, [{"token": "1", "phone": "+1"}])
    events = simulator.block("1")
    assert hook.call_count == 1
    sent = hook.last_request
    assert sent.json() == events
    assert sent.headers["Authorization"] == basic("reteno", "hook-pass")["Authorization"]


def test_block_posts_to_the_webhook_with_a_bearer(requests_mock):
    hook = requests_mock.post("http://bridge.test/statuses", status_code=204)
    simulator, client = make(webhook_url="http://bridge.test/statuses", webhook_bearer="tok")
    post_tokens(client, [{"token": "1", "phone": "+1"}])
    simulator.block("1")
    assert hook.last_request.headers["Authorization"] == "Bearer tok"


def test_webhook_failures_are_logged_not_raised(requests_mock, caplog):
    url = "http://user:pw@bridge.test/statuses?key=hidden"
    hook = requests_mock.post(url, exc=requests.exceptions.ConnectionError("refused"))
    simulator, client = make(
        webhook_url=url,
        webhook_username="u",
        webhook_password="hook-pass",
    )
    post_tokens(client, [{"token": "1", "phone": "+1"}])
    with caplog.at_level(logging.WARNING, logger="bridge.sandbox"):
        assert len(simulator.block("1")) == 1
    assert hook.call_count == 1
    assert "ConnectionError" in caplog.text
    assert "hook-pass" not in caplog.text
    assert "hidden" not in caplog.text
    assert "pw@" not in caplog.text


def test_webhook_error_status_is_logged(requests_mock, caplog):
    requests_mock.post("http://bridge.test/statuses", status_code=500)
    simulator, client = make(webhook_url="http://bridge.test/statuses")
    post_tokens(client, [{"token": "1", "phone": "+1"}])
    with caplog.at_level(logging.WARNING, logger="bridge.sandbox"):
        simulator.block("1")
    assert "answered 500" in caplog.text


def test_block_endpoint_json():
    received = []
    simulator, client = make(status_sink=received.append)
    post_tokens(client, [{"token": "1", "contactId": 3}])
    response = client.post("/block/1", headers={"Accept": "application/json"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["token"] == "1"
    assert body["events"] == received[0]
    missing = client.post("/block/1", headers={"Accept": "application/json"})
    assert missing.status_code == 404
    assert missing.get_json()["status"] == 404


def test_block_form_post_redirects_to_the_page():
    received = []
    simulator, client = make(status_sink=received.append)
    post_tokens(client, [{"token": "777", "phone": "+1"}])
    response = client.post("/block/777", data={"from": "page"})
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/?")
    assert "blocked=777" in response.headers["Location"]
    assert simulator.find_by_token("777") == []
    assert len(received) == 1
    page = client.get(response.headers["Location"])
    assert "Blocked token 777: 1 status event(s) sent." in page.get_data(as_text=True)

    again = client.post("/block/777", data={"from": "page"})
    assert again.status_code == 303
    assert "unknown=777" in again.headers["Location"]


# ------------------------------------------------------------------- inspection


def test_html_page_lists_contacts_escaped():
    _, client = make()
    post_tokens(
        client,
        [{"token": "42", "externalCustomerId": "<script>alert(1)</script>", "email": "a&b@x.io"}],
    )
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    text = response.get_data(as_text=True)
    assert "<title>Reteno sandbox</title>" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script>" not in text
    assert "a&amp;b@x.io" in text
    assert 'action="/block/42"' in text
    assert "Block (send FAILED Forbidden)" in text
    assert "requests: 1" in text
    assert KEY not in text


def test_blueprint_under_a_prefix_builds_prefixed_urls():
    from flask import Flask

    simulator = Simulator(SimulatorOptions(rps=0))
    app = Flask(__name__)
    app.register_blueprint(create_blueprint(simulator), url_prefix="/sandbox")
    client = app.test_client()
    ok = client.post(
        "/sandbox/api/v1/apps/x/tokens",
        json={"tokens": [{"token": "9", "phone": "+1"}]},
        headers={"X-Reteno-Access-Key": "k"},
    )
    assert ok.status_code == 200
    text = client.get("/sandbox/").get_data(as_text=True)
    assert 'action="/sandbox/block/9"' in text
    response = client.post("/sandbox/block/9", data={"from": "page"})
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/sandbox/?")


def test_contacts_stats_and_reset_endpoints():
    simulator, client = make()
    post_tokens(client, [{"token": "1", "phone": "+1"}, {"token": "2", "phone": "+2"}])
    body = client.get("/contacts").get_json()
    assert [c["tokens"] for c in body["contacts"]] == [["1"], ["2"]]
    assert body["stats"]["contacts"] == 2
    filtered = client.get("/contacts?token=2").get_json()
    assert [c["phone"] for c in filtered["contacts"]] == ["+2"]
    stats = client.get("/stats").get_json()
    assert stats["tokens_received"] == 2
    assert set(stats) >= {
        "requests",
        "accepted_requests",
        "tokens_received",
        "distinct_tokens",
        "duplicate_tokens",
        "rate_limited",
        "faults",
        "contacts",
    }
    assert client.post("/reset").status_code == 200
    assert simulator.contacts() == []
    assert simulator.stats()["requests"] == 0
    assert client.post("/reset", data={"from": "page"}).status_code == 303


def test_cli_parsing_and_the_banner_hide_secrets():
    ctx = sandbox_command.make_context(
        "sandbox",
        [
            "--port", "0", "--api-key", "top-secret", "--auth", "basic", "--failures",
            "500, drop", "--failure-rate", "0.1", "--webhook-url",
            "http://u:pw@localhost:8000/statuses", "--webhook-username", "u",
            "--webhook-password", "hook-pass",
        ],
    )  # fmt: skip
    params = dict(ctx.params)
    host = params.pop("host")
    params.pop("port")
    options = options_from(params)
    assert options.failures == ("500", "drop")
    assert options.auth == "basic"
    assert options.api_key == "top-secret"
    line = describe(host, 8025, options)
    assert "127.0.0.1:8025" in line
    assert "api_key=set" in line
    assert "top-secret" not in line
    assert "hook-pass" not in line
    assert "pw@" not in line


# ---------------------------------------------------------------- real server


@pytest.mark.real_http
def test_real_server_success_and_dropped_connection():
    simulator = Simulator(SimulatorOptions(app_uuid=APP, api_key=KEY, rps=0))
    server = make_server("127.0.0.1", 0, create_app(simulator=simulator), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    body = {"tokens": [{"token": "555", "externalCustomerId": "u-555"}]}
    headers = {"X-Reteno-Access-Key": KEY}
    try:
        with requests.Session() as session:
            response = session.post(f"{base}{URL}", json=body, headers=headers, timeout=10)
            assert response.status_code == 200
            assert response.json() == "OK"
            assert simulator.received_counts() == {"555": 1}

            simulator.configure(failure_rate=1.0, failures=("drop",))
            with pytest.raises(requests.exceptions.ConnectionError):
                session.post(f"{base}{URL}", json=body, headers=headers, timeout=10)
        assert simulator.stats()["faults"]["drop"] == 1
        assert simulator.received_counts() == {"555": 1}
        page = requests.get(f"{base}/contacts?token=555", timeout=10)
        assert json.loads(page.text)["contacts"][0]["externalCustomerId"] == "u-555"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


CROSS_SITE = [
    {"Origin": "https://attacker.example"},
    {"Origin": "null"},
    {"Origin": "https://localhost"},  # another scheme is another origin
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain is not this page either
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"},
]


@pytest.mark.parametrize("headers", CROSS_SITE)
@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data", "text/plain"]
)
def test_block_and_reset_refuse_a_cross_site_post(headers, content_type):
    """Another site's page cannot make a visitor's browser block a token or wipe the
    simulator (a form post, or a text/plain one, needs no CORS preflight)."""
    received = []
    simulator, client = make(status_sink=received.append)
    post_tokens(client, [{"token": "777", "phone": "+1"}])
    for path in ("/block/777", "/reset"):
        response = client.post(path, data="from=page", content_type=content_type, headers=headers)
        assert response.status_code == 403, (path, response.status_code)
        assert response.get_json() == {
            "status": 403,
            "message": (
                "Cross-site requests are refused: use the sandbox page itself, or a client that "
                "is not a browser"
            ),
        }
    assert [c["tokens"] for c in simulator.contacts()] == [["777"]]
    assert received == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "http://localhost"},
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},
    ],
)
def test_block_and_reset_from_the_page_itself_still_work(headers):
    simulator, client = make()
    post_tokens(client, [{"token": "777", "phone": "+1"}])
    response = client.post("/block/777", data={"from": "page"}, headers=headers)
    assert response.status_code == 303 and "blocked=777" in response.headers["Location"]
    assert client.post("/reset", data={"from": "page"}, headers=headers).status_code == 303


@pytest.mark.parametrize(
    "host",
    [
        "rebound.example",
        "rebound.example:8025",
        "127.0.0.1.rebound.example",
        "[::2]:8025",
        "0.0.0.0:8025",
        "localhost.:8025",
    ],
)
def test_the_standalone_simulator_answers_only_for_a_loopback_host(host):
    simulator, client = make()
    base = f"http://{host}"
    for response in (
        post_tokens(client, [{"token": "777", "phone": "+1"}], base_url=base),
        client.get("/contacts", base_url=base),
        client.get("/", base_url=base),
        client.post("/reset", base_url=base),
    ):
        assert response.status_code == 421
        assert response.get_json()["code"] == 421
        assert "DNS rebinding" in response.get_json()["message"]
    assert simulator.stats()["requests"] == 0


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST:8025", "127.0.0.1:8025", "127.3.2.1", "[::1]", "[::1]:8025"]
)
def test_the_standalone_simulator_answers_for_every_loopback_name(host):
    simulator, client = make()
    response = post_tokens(client, [{"token": "777", "phone": "+1"}], base_url=f"http://{host}")
    assert response.status_code == 200
    assert client.get("/", base_url=f"http://{host}").status_code == 200


def test_the_sandbox_forbids_framing():
    simulator, client = make()
    for response in (
        client.get("/"),
        client.get("/contacts"),
        client.get("/", base_url="http://rebound.example"),
    ):
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
