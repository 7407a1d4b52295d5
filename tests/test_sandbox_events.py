"""The simulator's custom events (``POST /api/v2/event``): Reteno's checks and 400s, the
contact identifier the params must carry, its own limit of 350 requests a second, the
page's list; and a sandbox bridge's events reaching it."""

import pytest

from bridge.sandbox import Simulator, SimulatorOptions, create_app
from tests.test_sandbox import APP, KEY, FakeClock, post_tokens

EVENT = "/api/v2/event"


def make(clock=None, **overrides):
    options = SimulatorOptions(**{"app_uuid": APP, "api_key": KEY, "rps": 0, **overrides})
    simulator = Simulator(options, clock=clock or FakeClock(), sleep=lambda seconds: None)
    return simulator, create_app(simulator=simulator).test_client()


def send(client, body, key=KEY):
    headers = {"X-Reteno-Access-Key": key} if key is not None else {}
    return client.post(EVENT, json=body, headers=headers)


def event(key="order_placed", *params):
    return {"eventTypeKey": key, "params": [{"name": n, "value": v} for n, v in params]}


def test_an_event_is_matched_to_its_contact_and_listed():
    simulator, client = make()
    post_tokens(client, [{"token": "100", "email": "ann@example.com"}])
    response = send(client, event("order_placed", ("email", "Ann@Example.com"), ("total", "5")))
    assert response.status_code == 200
    response = send(client, event("visit", ("externalCustomerId", "nobody")))
    assert response.status_code == 200
    [second, first] = simulator.events()
    assert first["eventTypeKey"] == "order_placed" and first["identifier"] == "email"
    assert first["contact"] == 1 and first["params"] == ["total"]
    assert second["contact"] is None  # no contact holds it
    assert simulator.stats()["events_received"] == 2
    page = client.get("/").get_data(as_text=True)
    assert "Recent events" in page and "order_placed" in page
    assert client.get("/events").get_json()["events"][0]["eventTypeKey"] == "visit"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (event("x", ("plan", "gold")), "contact identifier"),
        (event("x", ("externalCustomerId", "null")), "contact identifier"),
        (event("x", ("externalCustomerId", " ")), "contact identifier"),
        (event("a!b", ("email", "a@b.co")), "forbidden characters"),
        (event("k" * 101, ("email", "a@b.co")), "at most 100"),
        ({"params": [{"name": "email", "value": "a@b.co"}]}, "eventTypeKey"),
        (event("x", ("email", "a@b.co"), ("email", "c@d.co")), "Duplicate"),
        ({"eventTypeKey": "x", "params": [{"name": "email", "value": 5}]}, "string or an object"),
        (event("x", ("email", "a@b.co"), ("big", "x" * 21_000)), "exceeds 20 KB"),
    ],
)
def test_what_reteno_refuses_is_a_400(body, message):
    simulator, client = make()
    response = send(client, body)
    assert response.status_code == 400
    assert message in response.get_json()["message"]
    assert simulator.events() == []


def test_an_event_needs_the_key():
    _, client = make()
    assert send(client, event("x", ("email", "a@b.co")), key=None).status_code == 401
    assert send(client, event("x", ("email", "a@b.co")), key="wrong").status_code == 401


def test_events_have_a_limit_of_their_own():
    clock = FakeClock()
    simulator, client = make(clock=clock, rps=1, event_rps=3)
    body = event("x", ("email", "a@b.co"))
    assert [send(client, body).status_code for _ in range(4)] == [200, 200, 200, 429]
    # the tokens' limit is not spent by events
    assert post_tokens(client, [{"token": "1", "email": "a@b.co"}]).status_code == 200
    clock.now += 1.0
    assert send(client, body).status_code == 200
    assert simulator.stats()["rate_limited"] == 1


def test_the_default_event_limit_is_reteno_s():
    assert SimulatorOptions().event_rps == 350
    with pytest.raises(ValueError, match="event_rps"):
        SimulatorOptions(event_rps=-1).validate()


@pytest.mark.real_http
def test_a_sandbox_bridge_s_event_reaches_the_simulator(make_app, auth):
    app = make_app(
        BRIDGE_SANDBOX=True, RETENO_APP_UUID=None, RETENO_API_KEY=None, BRIDGE_BATCH_SIZE=100
    )
    client = app.test_client()
    runtime = app.extensions["reteno_bridge"]
    response = client.post(
        "/register", json={"token": "700", "externalCustomerId": "cust-7"}, headers=auth
    )
    assert response.status_code == 202
    response = client.post(
        "/events",
        json={"token": "700", "eventTypeKey": "welcome", "params": {"plan": "gold"}},
        headers=auth,
    )
    assert response.status_code == 202, response.get_json()
    runtime.deliver_once()
    [seen] = runtime.simulator.events()
    assert seen["eventTypeKey"] == "welcome" and seen["identifier"] == "externalCustomerId"
    assert seen["contact"] is not None and seen["params"] == ["plan"]
    events = client.get("/tokens/700/history", headers=auth).get_json()["events"]
    assert events[-1]["kind"] == "event_delivered"
