"""End to end over real HTTP on 127.0.0.1: the served app, its background
delivery and the Reteno simulator (in-process in sandbox mode, or standalone
as the upstream of a bridge with credentials)."""

from __future__ import annotations

import threading

import pytest
import requests
from werkzeug.serving import make_server

from bridge.sandbox import Simulator, SimulatorOptions
from bridge.sandbox import create_app as create_simulator_app
from tests.conftest import API_KEY, APP_UUID, RETENO_KEY, Clock
from tests.helpers import Tally, chat_member

pytestmark = pytest.mark.real_http
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class Server:
    """A WSGI app served by werkzeug on a free local port, in a thread."""

    def __init__(self, wsgi_app):
        self.server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(wsgi_app):
        servers.append(Server(wsgi_app))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_sandbox_register_to_simulator_over_http(make_app, serve, monkeypatch):
    app = make_app(
        RETENO_APP_UUID=None,
        RETENO_API_KEY=None,
        BRIDGE_SANDBOX=True,
        BRIDGE_BACKGROUND_DELIVERY=True,
    )
    delivered = Tally(monkeypatch, app, "delivered")
    bridge = serve(app)
    url = bridge.url
    response = requests.post(
        f"{url}/register",
        headers=AUTH,
        timeout=5,
        json={"token": 123456789, "email": "Ann@Example.com"},
    )
    assert response.status_code == 202
    assert response.json()["registrations"][0]["matchedBy"] == "email"

    delivered.wait_for(1)
    held = requests.get(f"{url}/sandbox/reteno/contacts", timeout=5).json()["contacts"]
    assert held[0]["email"] == "ann@example.com" and held[0]["tokens"] == ["123456789"]
    [item] = requests.get(f"{url}/tokens", headers=AUTH, timeout=5).json()["items"]
    assert item["state"] == "delivered"

    again = requests.post(
        f"{url}/register",
        headers=AUTH,
        timeout=5,
        json={"token": 123456789, "email": "ann@example.com"},
    )
    assert again.json()["registrations"][0]["duplicate"] is True

    batch = {"tokens": [{"token": i, "externalCustomerId": f"c-{i}"} for i in range(1, 501)]}
    assert requests.post(f"{url}/register", headers=AUTH, json=batch, timeout=10).status_code == 202
    delivered.wait_for(501)
    stats = requests.get(f"{url}/sandbox/reteno/stats", timeout=5).json()
    assert stats["tokens_received"] == 501
    # batch size is 100 in the tests: one call for the first token, five for the 500
    assert stats["accepted_requests"] == 1 + 500 // 100
    assert stats["duplicate_tokens"] == 0


def test_restart_with_a_failing_upstream_delivers_each_token_once(make_app, serve, monkeypatch):
    """Credentials set, RETENO_BASE_URL at a simulator that fails every call; the server
    stops and starts again; the upstream recovers: every acknowledged token arrives once."""
    simulator = Simulator(
        SimulatorOptions(
            app_uuid=APP_UUID,
            api_key=RETENO_KEY,
            auth="header",
            rps=0,
            failure_rate=1.0,
            failures=("503",),
        )
    )
    upstream = serve(create_simulator_app(simulator=simulator))
    config = {"RETENO_BASE_URL": upstream.url, "BRIDGE_BACKGROUND_DELIVERY": True}

    first_app = make_app(**config)
    retried = Tally(monkeypatch, first_app, "retry", amount=lambda delay: 1)
    first = serve(first_app)
    tokens = [{"token": i, "contactId": i} for i in range(1, 201)]
    for start in range(0, 200, 50):
        response = requests.post(
            f"{first.url}/register",
            headers=AUTH,
            timeout=10,
            json={"tokens": tokens[start : start + 50]},
        )
        assert response.status_code == 202
    retried.wait_for(1)
    assert simulator.stats()["faults"]["503"] >= 1
    first.stop()  # the server goes away with everything still queued
    first_app.extensions["reteno_bridge"].background.stop()

    simulator.configure(failure_rate=0.0)  # the upstream is back
    # Queued rows are waiting: the delivery thread is started by hand, as creating the app
    # with BRIDGE_BACKGROUND_DELIVERY on would, once the clock is moved and the tally is on.
    second_app = make_app(**{**config, "BRIDGE_BACKGROUND_DELIVERY": False})
    second_bridge = second_app.extensions["reteno_bridge"]
    second_bridge.ledger.resume()
    clock = Clock()
    clock.advance(3600)  # an hour on: past any backoff of the first run (capped at 300 s)
    second_bridge.ledger.clock = clock
    delivered = Tally(monkeypatch, second_app, "delivered")
    second_bridge.start_background()
    second = serve(second_app)
    assert requests.get(f"{second.url}/healthz", timeout=5).status_code == 200
    delivered.wait_for(200)
    counts = simulator.received_counts()
    assert sorted(map(int, counts)) == list(range(1, 201))
    assert set(counts.values()) == {1}, "a token was delivered twice"
    items = requests.get(
        f"{second.url}/tokens", headers=AUTH, params={"limit": 500}, timeout=5
    ).json()["items"]
    assert len(items) == 200
    assert {i["state"] for i in items} == {"delivered"}


def test_mute_unmute_block_unblock_against_the_simulator(make_app, serve, monkeypatch):
    """Sandbox mode over HTTP: the simulator holds the mute; a block drops it there (as
    Reteno drops a blocked token) and the bridge sends it again once the chat is back."""
    from tests.test_telegram import SECRET

    app = make_app(
        RETENO_APP_UUID=None,
        RETENO_API_KEY=None,
        BRIDGE_SANDBOX=True,
        BRIDGE_BACKGROUND_DELIVERY=True,
        TELEGRAM_WEBHOOK_SECRET=SECRET,
    )
    runtime = app.extensions["reteno_bridge"]
    delivered = Tally(monkeypatch, app, "delivered")
    url = serve(app).url
    chat = 123456789

    def post(path, body, headers=AUTH):
        response = requests.post(f"{url}{path}", json=body, headers=headers, timeout=5)
        assert response.status_code in (200, 202), response.text
        return response.json()

    def muted_there():
        body = requests.get(f"{url}/sandbox/reteno/muted", timeout=5).json()
        return [m["token"] for m in body["muted"]]

    def mine():
        return requests.get(
            f"{url}/tokens", params={"token": chat}, headers=AUTH, timeout=5
        ).json()["items"]

    post("/register", {"token": chat, "contactId": 77})
    delivered.wait_for(1)
    post("/mute", {"token": chat, "duration": 3600})
    delivered.wait_for(2)
    assert muted_there() == [str(chat)]
    post("/unmute", {"token": chat})
    delivered.wait_for(3)
    assert muted_there() == []
    post("/mute", {"token": chat})
    delivered.wait_for(4)
    assert muted_there() == [str(chat)]

    runtime.simulator.block(str(chat))  # Reteno reports FAILED (Forbidden) to /statuses
    assert muted_there() == []
    assert [i["state"] for i in mine()] == ["removed"]
    assert mine()[0]["muted"] is True  # the bridge remembers the mute

    telegram = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    date = int(runtime.ledger.clock().timestamp()) + 1  # on the clock this bridge runs on
    post(
        "/telegram/webhook", chat_member(chat, "kicked", "member", date), telegram
    )  # Telegram says so as well
    post(
        "/telegram/webhook", chat_member(chat, "member", "kicked", date), telegram
    )  # the user is back
    delivered.wait_for(6)  # the registration again, then the mute again
    assert muted_there() == [str(chat)]
    assert [i["state"] for i in mine()] == ["delivered", "removed"]
    assert all(i["muted"] for i in mine())
    post("/unmute", {"token": chat})
    delivered.wait_for(7)
    assert muted_there() == []
    kinds = [
        e["kind"]
        for e in requests.get(f"{url}/tokens/{chat}/history", headers=AUTH, timeout=5).json()[
            "events"
        ]
    ]
    assert kinds.count("mute_delivered") == 3 and kinds.count("unmute_delivered") == 2
