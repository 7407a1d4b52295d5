"""The dashboard and the alert rules shipped in ``deploy/``: the rules pass their
``promtool`` unit tests, the dashboard is importable and provisionable as it is, and
every series either one uses is one the bridge's ``/metrics`` really exports."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.common import free_port
from tests.conftest import TOKENS_URL
from tests.test_processes import BIN, environment, wait_until_listening

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "reteno-bridge-rules.yml"
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "reteno-bridge.json"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
SERIES = re.compile(r"\b(bridge_[a-z0-9_]+)\b")  # recorded series (bridge:…) are no metric

needs_promtool = pytest.mark.skipif(
    not Path(PROMTOOL).exists(),
    reason="promtool is absent (Debian's prometheus package: apt-get install prometheus)",
)


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_expressions(board: dict) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


@needs_promtool
def test_the_rules_are_valid_and_pass_their_unit_tests():
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert RULE_TESTS
    for tests in RULE_TESTS:
        result = subprocess.run(
            [PROMTOOL, "test", "rules", tests.name],
            cwd=tests.parent,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested():
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tested = {
        case["alertname"]
        for tests in RULE_TESTS
        for test in yaml.safe_load(tests.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts and alerts == tested


def test_the_dashboard_names_no_data_source_of_its_own():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    uids = {
        t["datasource"]["uid"]
        for p in board["panels"]
        if p["type"] != "row"
        for t in [p, *p["targets"]]
    }
    assert uids == {"${datasource}"}
    assert "id" not in board or board["id"] is None  # importable and provisionable as is
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def exported(client, auth) -> set[str]:
    body = client.get("/metrics", headers=auth).get_data(as_text=True)
    return {s.name for family in text_string_to_metric_families(body) for s in family.samples}


def test_every_series_of_the_dashboard_and_the_rules_is_exported(
    client, auth, bridge, requests_mock, clock
):
    # traffic: registrations, a delivery, a mute, a removing status, a Telegram update, a
    # refused webhook call
    a = {"token": 111111111, "email": "a@example.com"}
    b = {"token": 222222222, "email": "b@example.com"}
    assert client.post("/register", json={"tokens": [a, b]}, headers=auth).status_code == 202
    assert client.post("/register", json={"token": "x"}, headers=auth).status_code == 422
    requests_mock.post(TOKENS_URL, json="OK")
    bridge.deliver_once()
    assert client.post("/mute", json={"token": 222222222}, headers=auth).status_code == 202
    clock.advance(1)
    blocked = {"status": "FAILED", "error": "Forbidden: bot was blocked by the user"}
    answer = client.post("/statuses", json={**blocked, "token": "111111111"}, headers=auth)
    assert answer.get_json()["removed"] == ["111111111"]
    assert client.post("/telegram/webhook", json={"update_id": 1}, headers=auth).status_code == 200
    assert client.post("/statuses", json=[], auth=("reteno", "wrong")).status_code == 401

    names = exported(client, auth)
    for where, expressions in (
        ("deploy/grafana/reteno-bridge.json", panel_expressions(dashboard())),
        ("deploy/prometheus/reteno-bridge-rules.yml", rule_expressions()),
    ):
        used = {name for expr in expressions for name in SERIES.findall(expr)}
        assert used, where
        assert not used - names, f"{where} uses series /metrics does not export"


@pytest.mark.real_http
def test_a_delivery_worker_serves_its_own_metrics(tmp_path, db_url):
    """``bridge deliver --metrics-port``: the process that delivers (the Procfile's worker)
    is scraped too, or the dashboard's deliveries would stay empty."""
    port = free_port()
    worker = subprocess.Popen(
        [str(BIN / "reteno-bridge"), "deliver", "--metrics-port", str(port)],
        cwd=ROOT,
        env=environment(tmp_path, BRIDGE_DATABASE_URL=db_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_listening(port, worker)
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        names = {s.name for f in text_string_to_metric_families(body) for s in f.samples}
        assert {"bridge_delivery_delay_seconds_count", "bridge_outbox_depth"} <= names
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert "delivery worker stopped" in worker.communicate()[1]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
