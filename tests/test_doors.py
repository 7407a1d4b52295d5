"""Doors (figure 6): every route of the blueprint × missing / wrong / right credentials.

The table below is the contract's doors (bearer for ``/register`` and the
read API and ``/metrics``, HTTP Basic with the webhook credentials or bearer for
``POST /statuses``, the secret-token header or bearer for Telegram, public
operations; ``/healthz`` is open and shows its details only to a bearer key,
see tests/test_app.py). A blueprint route missing from the table, or a table entry the
blueprint lacks, fails the suite, so a new route cannot ship without its door
being decided here. A refused request (401) is in the
error shape, carries a challenge where HTTP wants one, and changes nothing
in the ledger. Comparisons are constant-time; the sandbox is not reachable
once credentials are set.
"""

from __future__ import annotations

import base64
import hmac

import pytest

from tests import fuzzing as fz
from tests.conftest import API_KEY

TG_SECRET = "doors-telegram-secret"
HOOK_USER, HOOK_PASSWORD = "reteno-hook", "doors-hook-password-123"
OTHER_KEY = "second-api-key-0123456789"


def basic(user: str, password: str) -> dict:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


TELEGRAM_UPDATE = {
    "update_id": 1,
    "message": {"message_id": 1, "text": "hello", "chat": {"id": 5, "type": "private"}},
}
# (method, rule) -> (door, request kwargs that succeed with the right credential)
TABLE = {
    ("POST", "/register"): ("bearer", {"json": {"token": 1, "contactId": 1}}),
    ("POST", "/mute"): ("bearer", {"json": {"token": 1, "duration": 60}}),
    ("POST", "/unmute"): ("bearer", {"json": {"token": 1}}),
    ("POST", "/events"): ("bearer", {"json": {"token": 1, "eventTypeKey": "k"}}),
    ("GET", "/tokens"): ("bearer", {}),
    ("GET", "/tokens/<token>/history"): ("bearer", {}),
    ("GET", "/healthz"): ("public", {}),
    ("GET", "/metrics"): ("bearer", {}),  # public with BRIDGE_METRICS_PUBLIC (test_metrics)
    ("GET", "/openapi.json"): ("public", {}),
    ("GET", "/statuses"): ("public", {}),
    ("POST", "/statuses"): ("webhook", {"json": [{"status": "SENT", "token": 1}]}),
    ("POST", "/telegram/webhook"): ("telegram", {"json": TELEGRAM_UPDATE}),
    ("POST", "/links"): ("bearer", {"json": {"contactId": 1}}),
    ("GET", "/links/<link_id>"): ("bearer", {}),
    ("DELETE", "/links/<link_id>"): ("bearer", {}),
    ("GET", "/links/<link_id>/qr.svg"): ("bearer", {}),
    ("GET", "/links/<link_id>/qr.png"): ("bearer", {}),
    ("POST", "/links/claims"): ("bearer", {"json": {"token": 1}}),
    ("POST", "/links/claims/<code>"): ("bearer", {"json": {"contactId": 1}}),
}
EXAMPLE_PATH = {"/tokens/<token>/history": "/tokens/1/history"}
NEEDS_A_REGISTRATION = {"/mute", "/unmute", "/events"}  # of chat 1, or they answer 404
# made (with the right key) before the request, or they answer 404
NEEDS_A_LINK, NEEDS_A_CODE = "<link_id>", "<code>"

WRONG = {
    "bearer": {
        "wrong key": bearer("not-the-key-0123456789"),
        "key with a suffix": bearer(API_KEY + "x"),
        "key prefix": bearer(API_KEY[:-1]),
        "empty bearer": {"Authorization": "Bearer "},
        "key without scheme": {"Authorization": API_KEY},
        "key as Basic": basic("bridge", API_KEY),
        "webhook Basic": basic(HOOK_USER, HOOK_PASSWORD),
        "telegram secret": {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET},
        "key in another header": {"X-Api-Key": API_KEY},
    },
    "webhook": {
        "wrong password": basic(HOOK_USER, "not-the-password"),
        "wrong user": basic("someone", HOOK_PASSWORD),
        "password as user": basic(HOOK_PASSWORD, HOOK_USER),
        "no colon": {
            "Authorization": "Basic "
            + base64.b64encode((HOOK_USER + HOOK_PASSWORD).encode()).decode()
        },
        "not base64": {"Authorization": "Basic %%%not-base64"},
        "wrong bearer": bearer("not-the-key-0123456789"),
        "telegram secret": {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET},
    },
    "telegram": {
        "wrong secret": {"X-Telegram-Bot-Api-Secret-Token": "not-the-secret"},
        "secret prefix": {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET[:-1]},
        "empty secret": {"X-Telegram-Bot-Api-Secret-Token": ""},
        "wrong bearer": bearer("not-the-key-0123456789"),
        "webhook Basic": basic(HOOK_USER, HOOK_PASSWORD),
    },
    "public": {},
}
RIGHT = {
    "bearer": {
        "bearer": bearer(API_KEY),
        "second key": bearer(OTHER_KEY),
        "lower-case scheme": {"Authorization": f"bearer {API_KEY}"},
    },
    "webhook": {"basic": basic(HOOK_USER, HOOK_PASSWORD), "bearer": bearer(API_KEY)},
    "telegram": {
        "secret": {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET},
        "bearer (a bot forwarding its updates)": bearer(API_KEY),
    },
    "public": {"nothing": {}},
}
CASES = [
    pytest.param(method, rule, door, kind, name, headers, id=f"{method} {rule} {kind}: {name}")
    for (method, rule), (door, _) in TABLE.items()
    for kind, cases in (
        ("missing", {"no credential": {}} if door != "public" else {}),
        ("wrong", WRONG[door]),
        ("right", RIGHT[door]),
    )
    for name, headers in cases.items()
]


@pytest.fixture
def app(make_app):
    return make_app(
        BRIDGE_API_KEYS=f"{API_KEY},{OTHER_KEY}",
        TELEGRAM_WEBHOOK_SECRET=TG_SECRET,
        TELEGRAM_BOT_USERNAME="doors_test_bot",
        BRIDGE_WEBHOOK_USERNAME=HOOK_USER,
        BRIDGE_WEBHOOK_PASSWORD=HOOK_PASSWORD,
    )


def blueprint_routes(app) -> set[tuple[str, str]]:
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("bridge.")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def test_every_blueprint_route_has_a_door_in_the_table(app):
    routes = blueprint_routes(app)
    assert routes - set(TABLE) == set(), "a route without a decided door: add it to TABLE"
    assert set(TABLE) - routes == set(), "TABLE names a route the blueprint does not have"


@pytest.mark.parametrize(("method", "rule", "door", "kind", "name", "headers"), CASES)
def test_door(bridge, client, method, rule, door, kind, name, headers):
    _, kwargs = TABLE[(method, rule)]
    if rule in NEEDS_A_REGISTRATION:
        client.post("/register", json={"token": 1, "contactId": 1}, headers=bearer(API_KEY))
    path = EXAMPLE_PATH.get(rule, rule)
    if NEEDS_A_LINK in rule:
        made = client.post("/links", json={"contactId": 1}, headers=bearer(API_KEY))
        path = path.replace(NEEDS_A_LINK, made.get_json()["id"])
    if NEEDS_A_CODE in rule:
        made = client.post("/links/claims", json={"token": 1}, headers=bearer(API_KEY))
        path = path.replace(NEEDS_A_CODE, made.get_json()["code"])
    before = fz.ledger_counts(bridge)
    response = client.open(path, method=method, headers=headers, **kwargs)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    if response.is_json:
        assert response.headers["Cache-Control"] == "no-store"
    if kind == "right":
        assert 200 <= response.status_code < 300, (response.status_code, response.data[:300])
        return
    assert response.status_code == 401, (response.status_code, response.data[:300])
    assert fz.error_shape_problem(401, response.get_data(), response.content_type) is None
    assert fz.ledger_counts(bridge) == before, "a refused request changed the ledger"
    if door in ("bearer", "webhook"):
        challenge = response.headers.get("WWW-Authenticate", "")
        assert "Bearer" in challenge
        if door == "webhook":
            assert "Basic" in challenge
    body = response.get_data(as_text=True)
    for secret in (API_KEY, OTHER_KEY, HOOK_PASSWORD, TG_SECRET):
        assert secret not in body


def test_answers_holding_personal_data_are_never_stored_by_a_cache(client):
    """Every answer that can hold a chat id, an address or a phone number (and every
    error) says no-store and nosniff."""
    key = bearer(API_KEY)
    person = {"token": 5550001, "email": "ann@example.com", "phone": "+380956490955"}
    answers = {
        "register": client.post("/register", json=person, headers=key),
        "tokens": client.get("/tokens", query_string={"email": "ann@example.com"}, headers=key),
        "history": client.get("/tokens/5550001/history", headers=key),
        "mute": client.post("/mute", json={"token": 5550001}, headers=key),
        "unmute": client.post("/unmute", json={"token": 5550001}, headers=key),
        "events": client.post("/events", json={"token": 5550001, "eventTypeKey": "k"}, headers=key),
        "statuses": client.post(
            "/statuses", headers=key, json=[{"status": "SENT", "email": "ann@example.com"}]
        ),
        "422": client.post("/register", json={"token": 1, "email": "ann@"}, headers=key),
        "400": client.post("/register", data="{", content_type="application/json", headers=key),
        "415": client.post("/register", data="x", headers=key),
        "404": client.get("/tokens/1/nothing", headers=key),
        "healthz": client.get("/healthz", headers=key),
    }
    for name, response in answers.items():
        assert response.is_json, name
        assert response.headers["Cache-Control"] == "no-store", name
        assert response.headers["X-Content-Type-Options"] == "nosniff", name
    assert answers["tokens"].get_json()["items"][0]["email"] == "ann@example.com"


def test_webhook_basic_is_refused_when_no_webhook_credentials_are_set(make_app):
    client = make_app().test_client()
    for user, password in ((HOOK_USER, HOOK_PASSWORD), ("", ""), (":", "")):
        response = client.post("/statuses", json=[], headers=basic(user, password))
        assert response.status_code == 401


class Spy:
    def __init__(self):
        self.calls = 0
        self.real = hmac.compare_digest

    def __call__(self, a, b):
        self.calls += 1
        return self.real(a, b)


@pytest.mark.parametrize("key", [API_KEY, OTHER_KEY, "wrong-key-0123456789"])
def test_bearer_keys_are_compared_in_constant_time_against_every_key(client, monkeypatch, key):
    spy = Spy()
    monkeypatch.setattr(hmac, "compare_digest", spy)
    client.get("/tokens", headers=bearer(key))
    assert spy.calls == 2  # both configured keys, whichever matched (or none)


@pytest.mark.parametrize(
    "headers", [basic(HOOK_USER, HOOK_PASSWORD), basic("x", "y"), bearer(API_KEY)]
)
def test_webhook_credentials_are_compared_in_constant_time(client, monkeypatch, headers):
    spy = Spy()
    monkeypatch.setattr(hmac, "compare_digest", spy)
    client.post("/statuses", json=[], headers=headers)
    # Basic: user name and password both compared, whichever is wrong (no short cut);
    # Bearer: every configured key.
    assert spy.calls == 2


@pytest.mark.parametrize("secret", [TG_SECRET, "wrong", ""])
def test_telegram_secret_is_compared_in_constant_time(client, monkeypatch, secret):
    spy = Spy()
    monkeypatch.setattr(hmac, "compare_digest", spy)
    client.post(
        "/telegram/webhook",
        json=TELEGRAM_UPDATE,
        headers={"X-Telegram-Bot-Api-Secret-Token": secret},
    )
    assert spy.calls == 1


SANDBOX = [
    ("GET", "/sandbox/reteno/", None),
    ("GET", "/sandbox/reteno/contacts", None),
    ("GET", "/sandbox/reteno/stats", None),
    ("POST", "/sandbox/reteno/reset", None),
    ("POST", "/sandbox/reteno/block/1", None),
    (
        "POST",
        "/sandbox/reteno/api/v1/apps/sandbox-app/tokens",
        {"tokens": [{"token": "1", "contactId": 1}]},
    ),
]


@pytest.mark.parametrize(("method", "path", "body"), SANDBOX)
def test_the_sandbox_is_unreachable_when_credentials_are_set(client, auth, method, path, body):
    response = client.open(
        path,
        method=method,
        json=body,
        headers={"X-Reteno-Access-Key": "sandbox-reteno-key", **auth},
    )
    assert response.status_code == 404
    assert fz.error_shape_problem(404, response.get_data(), response.content_type) is None


@pytest.mark.real_http
@pytest.mark.parametrize(("method", "path", "body"), SANDBOX)
def test_the_sandbox_is_there_in_sandbox_mode(make_app, method, path, body):
    """The counterpart: the same paths answer when no credentials are set."""
    client = make_app(RETENO_APP_UUID=None, RETENO_API_KEY=None, BRIDGE_SANDBOX=True).test_client()
    response = client.open(
        path, method=method, json=body, headers={"X-Reteno-Access-Key": "sandbox-reteno-key"}
    )
    if path.endswith("/block/1"):  # the simulator answers: it holds no token 1
        assert response.status_code == 404
        assert response.get_json() == {
            "status": 404,
            "message": "Token 1 is not held by any contact",
        }
    else:
        assert response.status_code == 200, response.get_data()[:300]


@pytest.mark.real_http
@pytest.mark.parametrize(("method", "path", "body"), SANDBOX)
def test_the_sandbox_answers_only_for_a_loopback_host(make_app, method, path, body):
    """DNS rebinding: a page of another site re-pointed at 127.0.0.1 sends its own name
    as the Host, and gets a 421 in the bridge's error shape; nothing is changed."""
    app = make_app(RETENO_APP_UUID=None, RETENO_API_KEY=None, BRIDGE_SANDBOX=True)
    client = app.test_client()
    headers = {"X-Reteno-Access-Key": "sandbox-reteno-key"}
    for base in (
        "http://rebound.example:5000",
        "http://127.0.0.1.rebound.example",
        "http://localhost.rebound.example",
    ):
        response = client.open(path, method=method, json=body, headers=headers, base_url=base)
        assert response.status_code == 421, (base, response.status_code)
        assert fz.error_shape_problem(421, response.get_data(), response.content_type) is None
    assert app.extensions["reteno_bridge"].simulator.stats()["requests"] == 0
    for base in (
        "http://localhost",
        "http://127.0.0.1:5000",
        "http://127.0.0.2",
        "http://[::1]:5000",
    ):
        response = client.open(path, method=method, json=body, headers=headers, base_url=base)
        assert response.status_code != 421, base


def test_the_blueprint_protects_its_answers_in_any_host_app(config, tmp_path):
    from flask import Flask

    from bridge import Bridge

    app = Flask("host", instance_path=str(tmp_path / "host"))
    app.config.from_mapping(config)
    Bridge(app, url_prefix="/reteno")

    @app.get("/own")
    def own():
        return {"host": "page"}

    try:
        client = app.test_client()
        for response in (
            client.get("/reteno/tokens", headers=bearer(API_KEY)),
            client.get("/reteno/tokens"),
        ):
            assert response.headers["Cache-Control"] == "no-store"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "Cache-Control" not in client.get("/own").headers  # the host's own stay its own
    finally:
        app.extensions["reteno_bridge"].db.dispose()
