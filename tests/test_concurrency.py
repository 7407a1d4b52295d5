"""Concurrency (figure 4), over real HTTP against the served app and on the
suite's backend (SQLite, or PostgreSQL with ``BRIDGE_TEST_DATABASE=postgres``).

* 50 simultaneous identical registrations → one registration, one upstream send.
* 50 simultaneous batches of the same tokens in different orders → one
  registration per token (and no deadlock on PostgreSQL).
* a block (``POST /statuses`` FAILED Forbidden) racing a registration of the
  same token ends in a state that the token's history explains.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import event, func, select

from bridge.ledger import TokenRequest
from bridge.models import Registration
from bridge.sandbox import Simulator, SimulatorOptions
from bridge.sandbox import create_app as create_simulator_app
from tests.conftest import API_KEY, APP_UUID, BACKEND, RETENO_KEY
from tests.helpers import Tally
from tests.test_end_to_end import Server

pytestmark = pytest.mark.real_http
AUTH = {"Authorization": f"Bearer {API_KEY}"}
THREADS = 50


@pytest.fixture
def served(make_app, monkeypatch):
    """(bridge URL, simulator, delivered): the bridge served over HTTP with background
    delivery to a simulator served over HTTP; ``delivered`` tallies the registrations
    its delivery thread has marked delivered (made while the outbox is still empty)."""
    servers = []
    simulator = Simulator(SimulatorOptions(app_uuid=APP_UUID, api_key=RETENO_KEY, rps=0))
    servers.append(Server(create_simulator_app(simulator=simulator)))
    app = make_app(RETENO_BASE_URL=servers[0].url, BRIDGE_BACKGROUND_DELIVERY=True)
    delivered = Tally(monkeypatch, app, "delivered")
    servers.append(Server(app))
    yield servers[1].url, simulator, delivered
    for server in reversed(servers):
        server.stop()


def all_at_once(n: int, call):
    """Run ``call(i)`` in ``n`` threads released together by a barrier."""
    barrier = threading.Barrier(n)

    def run(i):
        session = requests.Session()
        barrier.wait(timeout=60)
        return call(session, i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def registrations(url: str, **filters) -> list[dict]:
    response = requests.get(
        f"{url}/tokens", headers=AUTH, timeout=30, params={"limit": 500, **filters}
    )
    assert response.status_code == 200
    return response.json()["items"]


def history(url: str, token: str) -> list[dict]:
    response = requests.get(f"{url}/tokens/{token}/history", headers=AUTH, timeout=30)
    assert response.status_code == 200
    return response.json()["events"]


def test_fifty_identical_registrations_make_one_registration_and_one_send(served):
    url, simulator, delivered = served
    body = {"token": 424242, "email": "Race@Example.com"}
    responses = all_at_once(
        THREADS, lambda s, i: s.post(f"{url}/register", json=body, headers=AUTH, timeout=60)
    )
    assert [r.status_code for r in responses] == [202] * THREADS
    answers = [r.json()["registrations"][0] for r in responses]
    assert len({a["id"] for a in answers}) == 1
    assert sorted(a["duplicate"] for a in answers) == [False] + [True] * (THREADS - 1)
    delivered.wait_for(1, timeout=60)
    [row] = registrations(url)
    assert row["state"] == "delivered"
    assert simulator.received_counts() == {"424242": 1}
    assert simulator.stats()["accepted_requests"] == 1
    submitted = [e for e in history(url, "424242") if e["kind"] == "submitted"]
    assert len(submitted) == THREADS


def test_fifty_batches_of_the_same_tokens_in_any_order(served):
    url, simulator, delivered = served
    tokens = [{"token": 9100 + n, "contactId": 500 + n} for n in range(20)]

    def post(session, i):
        batch = list(tokens)
        random.Random(i).shuffle(batch)
        return session.post(f"{url}/register", json={"tokens": batch}, headers=AUTH, timeout=60)

    responses = all_at_once(THREADS, post)
    assert [r.status_code for r in responses] == [202] * THREADS, [
        r.text for r in responses if r.status_code != 202
    ][:1]
    ids: dict[str, set[int]] = {}
    for response in responses:
        for answer in response.json()["registrations"]:
            ids.setdefault(answer["token"], set()).add(answer["id"])
    assert all(len(v) == 1 for v in ids.values()) and len(ids) == 20
    delivered.wait_for(20, timeout=60)
    final = registrations(url)
    assert len(final) == 20 and {r["state"] for r in final} == {"delivered"}
    assert simulator.received_counts() == {str(9100 + n): 1 for n in range(20)}


def explain(events: list[dict], final: list[dict], answer: dict) -> None:
    """Assert that the final registrations of a token follow from its history."""
    removed = {e["registrationId"] for e in events if e["kind"] == "removed"}
    created = [e for e in events if e["kind"] == "submitted" and not e["detail"]["duplicate"]]
    for row in final:
        assert (row["state"] == "removed") == (row["id"] in removed), (row, events)
    assert {e["registrationId"] for e in created} == {row["id"] for row in final}
    order = {e["registrationId"]: n for n, e in enumerate(events) if e["kind"] == "removed"}
    racing = next(e for e in reversed(events) if e["kind"] == "submitted")
    position = events.index(racing)
    if answer["duplicate"] and any(e["kind"] == "status_stale" for e in events):
        # the block was received before this repeated submission, a sign of life that
        # came later (time decides): the block is stale and the chat stays, sent again
        # (Reteno dropped the token)
        assert answer["id"] not in removed
        assert any(e["kind"] == "reteno_dropped" for e in events)
        assert [row["id"] for row in final if row["state"] != "removed"] == [answer["id"]]
    elif answer["duplicate"]:
        # registered onto the live one first; then the block removed it: nothing live
        assert answer["id"] in removed and order[answer["id"]] > position
        assert all(row["state"] == "removed" for row in final)
    else:
        # the block came first; the registration is a new one, live and delivered again
        assert answer["id"] not in removed
        assert all(order[r] < position for r in removed)
        assert [row["id"] for row in final if row["state"] != "removed"] == [answer["id"]]


def test_block_racing_register_ends_in_a_state_the_history_explains(served):
    url, simulator, delivered = served
    outcomes = []
    sends = 0  # registrations delivered so far
    for n in range(12):
        token = str(7700 + n)
        body = {"token": token, "externalCustomerId": f"racer-{n}"}
        first = requests.post(f"{url}/register", json=body, headers=AUTH, timeout=30)
        assert first.status_code == 202
        sends += 1
        delivered.wait_for(sends, timeout=60)
        assert [r["state"] for r in registrations(url, token=token)] == ["delivered"]
        block = [
            {
                "status": "FAILED",
                "error": "Forbidden: bot was blocked by the user",
                "token": token,
                "messageId": n,
            }
        ]

        def call(session, i, body=body, block=block):
            if i == 0:
                return session.post(f"{url}/statuses", json=block, headers=AUTH, timeout=60)
            return session.post(f"{url}/register", json=body, headers=AUTH, timeout=60)

        blocked, registered = all_at_once(2, call)
        assert blocked.status_code == 200 and registered.status_code == 202
        answer = registered.json()["registrations"][0]
        outcomes.append(answer["duplicate"])
        # a duplicate joined the live row, which the block removed; a new row is sent; a
        # block that came out stale still says Reteno dropped the token: sent again
        stale = any(e["kind"] == "status_stale" for e in history(url, token))
        expected_sends = 1 if answer["duplicate"] and not stale else 2
        sends += expected_sends - 1
        delivered.wait_for(sends, timeout=60)
        final = registrations(url, token=token)
        assert all(r["state"] in ("delivered", "removed") for r in final), final
        explain(history(url, token), final, answer)
        assert simulator.received_counts()[token] == expected_sends


@pytest.mark.skipif(BACKEND != "postgres", reason="SQLite serialises writers (BEGIN IMMEDIATE)")
def test_a_block_committed_between_insert_and_lookup_makes_a_new_registration(
    app, bridge, client, auth
):
    """The narrowest interleaving on PostgreSQL, forced: /register's insert is a no-op
    because the token is live, then a block removes it and commits before /register
    looks the live row up. The registration must become a new one, not a 500."""
    assert (
        client.post("/register", json={"token": 5151, "contactId": 51}, headers=auth).status_code
        == 202
    )
    armed = {"on": True}

    def block():
        assert bridge.ledger.block_chat("5151", {"source": "test"}) == (1, 0)

    @event.listens_for(bridge.db.engine, "before_cursor_execute")
    def interleave(conn, cursor, statement, parameters, context, executemany):
        if (
            armed["on"]
            and statement.lstrip().upper().startswith("SELECT")
            and "bridge_registrations.match_value, bridge_registrations.id" in statement
        ):
            armed["on"] = False
            thread = threading.Thread(target=block)
            thread.start()
            thread.join(timeout=30)
            assert not thread.is_alive()

    try:
        response = client.post("/register", json={"token": 5151, "contactId": 51}, headers=auth)
    finally:
        event.remove(bridge.db.engine, "before_cursor_execute", interleave)
    assert armed["on"] is False, "the look-up statement was not seen"
    assert response.status_code == 202, response.json
    [answer] = response.json["registrations"]
    assert answer["duplicate"] is False and answer["state"] == "queued"
    states = {
        r["id"]: r["state"]
        for r in client.get("/tokens", query_string={"token": 5151}, headers=auth).json["items"]
    }
    assert sorted(states.values()) == ["queued", "removed"] and states[answer["id"]] == "queued"


def test_concurrent_batches_in_different_orders_never_deadlock(bridge):
    """Eight writers, each registering the same 40 tokens shuffled, round after round.
    On PostgreSQL, inserting the same keys in different orders deadlocked (about one
    batch in fifty) until the ledger inserted in one global order."""
    errors: list[str] = []

    def write(seed: int, round_: int) -> None:
        items = [TokenRequest(str(30_000 + round_ * 100 + n), contact_id=n + 1) for n in range(40)]
        random.Random(seed).shuffle(items)
        try:
            outcomes = bridge.ledger.register(items)
            assert len(outcomes) == 40
        except Exception as exc:  # collected, so every thread finishes
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    for round_ in range(25):
        threads = [
            threading.Thread(target=write, args=(i * 1000 + round_, round_)) for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    with bridge.db.read() as conn:
        assert conn.scalar(select(func.count()).select_from(Registration)) == 25 * 40
