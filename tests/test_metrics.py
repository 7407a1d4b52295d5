"""``GET /metrics``: names and values after a known sequence of actions."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from bridge import reteno
from tests.conftest import TOKENS_URL
from tests.helpers import assert_error_shape, step_perf_counter


def scrape(client, auth) -> tuple[str, dict[tuple[str, tuple], float]]:
    response = client.get("/metrics", headers=auth)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    body = response.get_data(as_text=True)
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return body, samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_after_a_known_sequence(client, auth, bridge, requests_mock, clock, monkeypatch):
    step_perf_counter(monkeypatch, reteno, 0.25)  # every upstream call takes 0.25 s
    a = {"token": 111111111, "email": "a@example.com"}
    b = {"token": 222222222, "email": "b@example.com"}
    assert client.post("/register", json={"tokens": [a, b]}, headers=auth).status_code == 202
    assert client.post("/register", json=a, headers=auth).status_code == 202  # duplicate
    assert client.post("/register", json={"token": "x"}, headers=auth).status_code == 422
    requests_mock.post(TOKENS_URL, json="OK")
    bridge.deliver_once()

    body, samples = scrape(client, auth)
    assert 'bridge_registrations_total{result="queued"} 2.0' in body
    assert 'bridge_registrations_total{result="duplicate"} 1.0' in body
    assert 'bridge_registrations_total{result="invalid"} 1.0' in body
    assert 'bridge_deliveries_total{outcome="delivered"} 2.0' in body
    assert 'bridge_upstream_calls_total{outcome="delivered",status="200"} 1.0' in body
    assert "bridge_upstream_latency_seconds_count 1.0" in body
    assert 'bridge_upstream_latency_seconds_bucket{le="+Inf"} 1.0' in body
    assert value(samples, "bridge_upstream_latency_seconds_sum") == 0.25
    assert "bridge_outbox_depth 0.0" in body
    assert "bridge_outbox_oldest_age_seconds 0.0" in body
    assert "bridge_dead_letters 0.0" in body
    assert 'bridge_ledger_registrations{state="delivered"} 2.0' in body
    assert 'bridge_ledger_registrations{state="queued"} 0.0' in body

    # statuses: one block, one plain match, one for nobody, one unusable object; received
    # a second after the registrations (a block is no older than the chat's last sign of life)
    clock.advance(1)
    response = client.post(
        "/statuses",
        headers=auth,
        json=[
            {
                "status": "FAILED",
                "error": "Forbidden: bot was blocked by the user",
                "token": "111111111",
            },
            {"status": "SENT", "token": "222222222"},
            {"status": "SENT", "email": "nobody@example.com"},
            {"hello": "world"},
        ],
    )
    assert response.get_json() == {
        "processed": 4,
        "removed": ["111111111"],
        "unmatched": 1,
        "ignored": 1,
        "stale": 0,
        "ambiguous": 0,
    }
    # Reteno refuses the next token for good; another one waits in the outbox
    requests_mock.post(TOKENS_URL, status_code=400, json={"message": "bad token"})
    client.post("/register", json={"token": 333333333, "email": "c@example.com"}, headers=auth)
    bridge.deliver_once()
    client.post("/register", json={"token": 444444444, "email": "d@example.com"}, headers=auth)
    clock.advance(30)

    body, samples = scrape(client, auth)
    assert 'bridge_removals_total{cause="status_blocked"} 1.0' in body
    for kind, n in (("blocked", 1), ("matched", 1), ("unmatched", 1), ("ignored", 1)):
        assert value(samples, "bridge_status_events_total", kind=kind) == n, kind
    assert value(samples, "bridge_deliveries_total", outcome="dead") == 1
    assert value(samples, "bridge_upstream_calls_total", outcome="reject", status="400") == 1
    assert value(samples, "bridge_upstream_latency_seconds_count") == 2
    assert value(samples, "bridge_upstream_latency_seconds_sum") == 0.5
    assert value(samples, "bridge_registrations_total", result="queued") == 4
    assert "bridge_outbox_depth 1.0" in body
    assert "bridge_outbox_oldest_age_seconds 30.0" in body
    assert "bridge_dead_letters 1.0" in body
    for state, n in (("queued", 1), ("delivered", 1), ("removed", 1), ("dead", 1)):
        assert value(samples, "bridge_ledger_registrations", state=state) == n, state


def test_a_retry_and_a_pause_are_counted_by_outcome(client, auth, bridge, requests_mock):
    client.post("/register", json={"token": 111111111, "email": "a@example.com"}, headers=auth)
    requests_mock.post(TOKENS_URL, status_code=503)
    bridge.deliver_once()
    _, samples = scrape(client, auth)
    assert value(samples, "bridge_upstream_calls_total", outcome="retry", status="503") == 1
    assert value(samples, "bridge_deliveries_total", outcome="retry") == 1
    assert value(samples, "bridge_outbox_depth") == 1


def test_every_app_counts_for_itself(make_app, auth):
    first, second = make_app(), make_app()
    first.test_client().post("/register", json={"token": 1, "contactId": 1}, headers=auth)
    _, samples = scrape(second.test_client(), auth)
    assert value(samples, "bridge_registrations_total", result="queued") == 0


def test_metrics_needs_a_bearer_key(client, auth):
    for headers in ({}, {"Authorization": "Bearer not-the-key-0123456789"}):
        response = client.get("/metrics", headers=headers)
        assert_error_shape(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body, _ = scrape(client, auth)
    assert "# TYPE bridge_upstream_latency_seconds histogram" in body
    assert "# TYPE bridge_registrations_total counter" in body


def test_metrics_are_open_with_bridge_metrics_public(make_app):
    response = make_app(BRIDGE_METRICS_PUBLIC=True).test_client().get("/metrics")
    assert response.status_code == 200
    assert "# TYPE bridge_registrations_total counter" in response.get_data(as_text=True)


def test_the_ledger_counts_are_made_once_per_cache_period(make_app, auth, monkeypatch):
    """/healthz (open or with a key) and /metrics share counts made at most once per
    BRIDGE_HEALTH_CACHE_SECONDS (default 5): no table-wide count per request."""
    app = make_app(BRIDGE_HEALTH_CACHE_SECONDS=None)
    runtime = app.extensions["reteno_bridge"]
    assert runtime.settings.health_cache_seconds == 5
    now = [1000.0]
    monkeypatch.setattr(runtime.metrics.counts, "clock", lambda: now[0])
    counted = []
    real = runtime.ledger.outbox
    monkeypatch.setattr(runtime.ledger, "outbox", lambda: counted.append(1) or real())
    client = app.test_client()

    def depth():
        return client.get("/healthz", headers=auth).get_json()["outbox"]["depth"]

    for _ in range(3):
        assert client.get("/healthz").status_code == 200
        assert depth() == 0
        scrape(client, auth)
    assert len(counted) == 1
    client.post("/register", json={"token": 1, "contactId": 1}, headers=auth)
    now[0] += 4.9
    assert depth() == 0 and len(counted) == 1  # a few seconds behind, by design
    now[0] += 0.1
    assert depth() == 1 and len(counted) == 2
    _, samples = scrape(client, auth)
    assert value(samples, "bridge_outbox_depth") == 1 and len(counted) == 2


def test_what_the_dashboard_and_alerts_read(client, auth, bridge, requests_mock, clock):
    """A delivery's delay since submission, a pause and its reason, removals by reason,
    quiet chats and refused credentials per door."""
    client.post("/register", json={"token": 111111111, "email": "a@example.com"}, headers=auth)
    clock.advance(3)
    requests_mock.post(TOKENS_URL, json="OK")
    bridge.deliver_once()
    _, samples = scrape(client, auth)
    assert value(samples, "bridge_delivery_delay_seconds_count") == 1
    assert value(samples, "bridge_delivery_delay_seconds_sum") == 3
    assert value(samples, "bridge_delivery_paused", reason="") == 0
    assert value(samples, "bridge_quiet_registrations") == 0

    blocked = {"status": "FAILED", "error": "Forbidden: bot was blocked by the user"}
    client.post("/statuses", json={**blocked, "token": "111111111"}, headers=auth)
    client.post("/register", json={"token": 222222222, "email": "b@example.com"}, headers=auth)
    requests_mock.post(TOKENS_URL, status_code=401, json={"message": "Unauthorized"})
    bridge.deliver_once()
    client.post("/statuses", json=[], auth=("reteno", "wrong-password-0123"))
    client.post("/telegram/webhook", json={"update_id": 1})
    client.get("/tokens")
    _, samples = scrape(client, auth)
    assert value(samples, "bridge_delivery_paused", reason="unauthorized") == 1
    assert ("bridge_delivery_paused", (("reason", ""),)) not in samples
    assert value(samples, "bridge_removed_registrations", reason="blocked") == 1
    for door in ("statuses", "telegram", "api"):
        assert value(samples, "bridge_auth_failures_total", door=door) == 1

    clock.advance(31 * 86400)  # a month without a sign of life: the waiting one is stale
    assert bridge.metrics.registry.get_sample_value("bridge_quiet_registrations") == 0  # cached
    assert bridge.ledger.quiet(30) == 1  # what the next count, 5 minutes on, will say
