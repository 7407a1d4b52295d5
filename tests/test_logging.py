"""Logs: one structured line per request and per upstream call, with no secret or
personal data in clear."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading

import pytest

from bridge import logs as bridge_logs
from bridge import views
from bridge.config import MAX_LOG_CHARS, MAX_LOGGED_PATH_CHARS
from bridge.logs import flush_request_log
from tests.conftest import API_KEY, RETENO_KEY, TOKENS_URL
from tests.helpers import linear_shape_problem, step_perf_counter

WEBHOOK_USER, WEBHOOK_PASSWORD = "reteno-hook", "hook-password-4242"
EMAIL, PHONE = "Ann.Lee@Example.com", "+380 (95) 649-09-55"
PHONE_DIGITS = "380956490955"
KEY_ID = "key#1"  # the first of BRIDGE_API_KEYS


@pytest.fixture
def app(make_app):
    return make_app(BRIDGE_WEBHOOK_USERNAME=WEBHOOK_USER, BRIDGE_WEBHOOK_PASSWORD=WEBHOOK_PASSWORD)


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("bridge", "werkzeug", "flask.app", "urllib3", "requests"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def logged(caplog) -> str:
    """Everything logged so far, request-log lines included (they are written by a
    thread of their own)."""
    flush_request_log()
    return caplog.text


def request_lines(caplog) -> list[dict[str, str]]:
    flush_request_log()
    lines = []
    for record in caplog.records:
        if record.name == "bridge.request":
            message = record.getMessage()
            assert message.startswith("request ")
            lines.append(dict(re.findall(r'(\w+)=("[^"]*"|\S+)', message)))
    return lines


def test_a_full_scenario_logs_no_secret_and_no_personal_data(
    app, client, auth, runner, bridge, requests_mock, logs, monkeypatch
):
    step_perf_counter(monkeypatch, views, 0.25)  # every request takes 250 ms
    basic = "Basic " + base64.b64encode(f"{WEBHOOK_USER}:{WEBHOOK_PASSWORD}".encode()).decode()
    response = client.post(
        "/register", headers=auth, json={"token": 123456789, "email": EMAIL, "phone": PHONE}
    )
    assert response.status_code == 202
    requests_mock.post(TOKENS_URL, json="OK")
    assert bridge.deliver_once()["delivered"] == 1
    assert requests_mock.last_request.headers["X-Reteno-Access-Key"] == RETENO_KEY
    response = client.post(
        "/statuses",
        headers={"Authorization": basic},
        json=[
            {
                "activityStatus": "UNDELIVERED",
                "statusDescription": "Forbidden",
                "email": EMAIL,
                "sms": PHONE,
                "mediaType": "TELEGRAM",
            },
            {"activityStatus": "SENT", "email": "other@example.com", "mediaType": "TELEGRAM"},
        ],
    )
    assert response.get_json()["removed"] == ["123456789"]
    assert client.get("/tokens", headers=auth, query_string={"email": EMAIL}).get_json()["items"]
    assert client.get(
        "/tokens", headers=auth, query_string={"phone": PHONE, "limit": 5}
    ).get_json()["items"]
    assert client.get("/tokens/123456789/history", headers=auth).status_code == 200
    assert client.get(f"/tokens/{EMAIL}/history", headers=auth).status_code == 422
    assert (
        client.get(
            "/tokens",
            headers={"Authorization": "Bearer wrong-key-987"},
            query_string={"email": EMAIL},
        ).status_code
        == 401
    )
    result = runner.invoke(args=["bridge", "erase", "--email", EMAIL, "--yes"])
    assert result.exit_code == 0 and "erased 1 registration" in result.output

    text = logged(logs)
    # what the checks below search: the lines of every step that handles personal data
    assert text.count(" request method=") == 7
    assert "upstream call outcome=delivered status=200 reason=ok batch=1" in text
    assert (
        "statuses: 2 event(s): blocked 1, unmatched 1; 1 registration(s) of 1 token(s) removed"
    ) in text
    for secret in (API_KEY, RETENO_KEY, WEBHOOK_PASSWORD, basic.split()[1], "wrong-key-987"):
        assert secret not in text, secret
    lowered = text.lower()
    for personal in (EMAIL.lower(), "other@example.com", PHONE, "649-09-55", PHONE_DIGITS):
        assert personal.lower() not in lowered, personal
    assert "123456789" not in text  # the chat id in a path is masked too

    lines = request_lines(logs)
    assert [(line["method"], line["status"]) for line in lines] == [
        ("POST", "202"),
        ("POST", "200"),
        ("GET", "200"),
        ("GET", "200"),
        ("GET", "200"),
        ("GET", "422"),
        ("GET", "401"),
    ]
    assert [line["caller"] for line in lines] == [
        KEY_ID,
        "basic",
        KEY_ID,
        KEY_ID,
        KEY_ID,
        KEY_ID,
        lines[-1]["caller"],
    ]
    assert lines[-1]["caller"] == "key#unknown"
    assert lines[0]["path"] == "/register" and lines[0]["query"] == "-"
    assert lines[2]["path"] == "/tokens" and lines[2]["query"] == "email"
    assert lines[3]["query"] == "limit,phone"
    assert lines[4]["path"] == "/tokens/<number>/history"
    assert lines[5]["path"] == "/tokens/<email>/history"
    assert [line["ms"] for line in lines] == ["250.0"] * 7

    upstream = [
        r.getMessage()
        for r in logs.records
        if r.name == "bridge.worker" and r.getMessage().startswith("upstream call")
    ]
    assert len(upstream) == 1
    assert re.fullmatch(
        r"upstream call outcome=delivered status=200 reason=ok batch=1 ms=[\d.]+", upstream[0]
    )


def test_a_failed_upstream_call_is_one_line_with_its_error_masked(
    client, auth, bridge, requests_mock, logs
):
    client.post("/register", headers=auth, json={"token": 123456789, "email": EMAIL})
    requests_mock.post(
        TOKENS_URL, status_code=400, json={"message": f"contact {EMAIL.lower()} is invalid"}
    )
    bridge.deliver_once()
    upstream = [
        r.getMessage()
        for r in logs.records
        if r.name == "bridge.worker" and r.getMessage().startswith("upstream call")
    ]
    assert len(upstream) == 1
    assert "outcome=reject status=400 reason=rejected batch=1" in upstream[0]
    assert "<email>" in upstream[0] and EMAIL.lower() not in logged(logs).lower()


def test_anonymous_and_telegram_callers(make_app, logs):
    app = make_app(TELEGRAM_WEBHOOK_SECRET="tg-secret-value-1")
    client = app.test_client()
    client.get("/healthz")
    client.post(
        "/telegram/webhook",
        json={"update_id": 1},
        headers={"X-Telegram-Bot-Api-Secret-Token": "tg-secret-value-1"},
    )
    lines = request_lines(logs)
    assert [(line["path"], line["caller"]) for line in lines] == [
        ("/healthz", "anonymous"),
        ("/telegram/webhook", "telegram"),
    ]
    assert "tg-secret-value-1" not in logged(logs)


def test_the_caller_is_the_keys_place_never_a_digest_of_it(make_app, logs):
    """An unsalted digest of a key in every log line lets anyone who reads the logs test
    guesses at the key offline; its place in BRIDGE_API_KEYS tells nothing of it, and is
    the same in every worker and after a restart."""
    second = "second-api-key-0123456789"
    keys = f"{API_KEY},{second}"
    for _restart in range(2):
        client = make_app(BRIDGE_API_KEYS=keys).test_client()
        for key in (second, API_KEY, "not-a-key-0123456789", "key=with=params"):
            client.get("/tokens", headers={"Authorization": f"Bearer {key}"})
    assert [line["caller"] for line in request_lines(logs)] == [
        "key#2",
        "key#1",
        "key#unknown",
        "key#unknown",
    ] * 2
    text = logged(logs)
    for key in (API_KEY, second):
        digest = hashlib.sha256(key.encode()).hexdigest()
        assert digest[:6] not in text and key not in text


def test_query_values_and_odd_argument_names_stay_out(client, auth, logs):
    client.get(
        "/tokens",
        headers=auth,
        query_string={"email": "x@example.com", "ann@example.com": "1", "cursor": "abc"},
    )
    line = request_lines(logs)[-1]
    assert line["query"] == "?,cursor,email"
    assert "example.com" not in logged(logs) and "abc" not in logged(logs)


class Handed(logging.Handler):
    """Notes each record that reaches the handlers, with the thread that handed it over;
    ``event`` is set at the first."""

    def __init__(self):
        super().__init__()
        self.event = threading.Event()
        self.handed = []

    def emit(self, record):
        self.handed.append((threading.current_thread().name, record.getMessage().split()[1]))
        self.event.set()


def test_request_lines_are_written_without_being_asked(client, auth, logs):
    # ``logs`` turns INFO on: with it off no request line is made at all
    handed = Handed()
    request_logger = logging.getLogger("bridge.request")
    request_logger.addHandler(handed)
    try:
        client.get("/tokens", headers=auth)
        # the log thread hands lines over every 50 ms; 5 s only bounds a hang
        assert handed.event.wait(5), "no request line was written without a flush"
    finally:
        request_logger.removeHandler(handed)
    assert handed.handed == [("bridge-request-log", "method=GET")]


# --- hostile lines: long, quadratic-shaped, forged ------------------------------------


def test_every_redaction_pattern_scans_a_line_in_linear_time():
    """No backtracking over an unbounded run (SECURITY.md finding 1): every unbounded
    repeat is possessive, and a pattern that starts with a run starts only where the run
    does (a lookbehind), so no character is scanned once per start position. The time it
    saves is in bench/bench_hostile.py; here the shape of each pattern is checked."""
    patterns = [p for p, _ in bridge_logs._PATTERNS] + [bridge_logs._NUMBER_RUN, bridge_logs._MAYBE]
    for pattern in patterns:
        assert linear_shape_problem(pattern) is None, (
            pattern.pattern,
            linear_shape_problem(pattern),
        )


def test_redaction_reads_at_most_a_capped_line(monkeypatch):
    seen = []

    class Spy:
        def __init__(self, pattern):
            self.pattern = pattern

        def sub(self, replacement, text):
            seen.append(len(text))
            return self.pattern.sub(replacement, text)

    monkeypatch.setattr(bridge_logs, "_PATTERNS", [(Spy(p), r) for p, r in bridge_logs._PATTERNS])
    line = "GET /tokens/" + "ann@example.com/" * 70_000  # about 1 MB
    clean = bridge_logs.redact(line)
    assert seen and max(seen) <= MAX_LOG_CHARS
    assert len(clean) <= MAX_LOG_CHARS
    assert clean.startswith("GET /tokens/<email>/<email>/")
    assert clean.endswith("more characters not logged]")
    assert "example" not in clean


@pytest.mark.parametrize("value", [EMAIL.lower(), PHONE, PHONE_DIGITS, "Bearer " + API_KEY])
def test_a_value_cut_in_two_by_the_cap_is_left_out(value):
    for shift in range(1, len(value)):  # the cap falls after `shift` characters of it
        line = (
            "x " * ((MAX_LOG_CHARS - shift) // 2)
            + " " * ((MAX_LOG_CHARS - shift) % 2)
            + value
            + " tail" * 100
        )
        clean = bridge_logs.redact(line)
        assert len(clean) < len(line)
        assert value not in clean
        assert value[:shift] not in clean.replace("x ", "") or shift < 3, (shift, clean[-80:])


def test_numbers_and_addresses_are_masked_as_before():
    cases = {
        "call +380 (95) 649-09-55 now": "call <number> now",
        "1234567 89a": "<number> 89a",
        "+380 95 649 09 55abc": "<number> 55abc",
        "ids 123456 and 1234567.5 and v1.2345678": "ids 123456 and 1234567.5 and v1.2345678",
        "path=/tokens/-1001234567890/history": "path=/tokens/-<number>/history",
        "to Ann.Lee@Example.com, cc a@b.co.uk.": "to <email>, cc <email>.",
        "Authorization: Bearer abc.def-ghi": "Authorization: Bearer ***",
        "api_key=abc&x=1": "api_key=***&x=1",
    }
    for line, expected in cases.items():
        assert bridge_logs.redact(line) == expected, line


def test_a_served_address_and_its_pid_are_no_phone_number():
    """gunicorn's error log goes through the redaction too: the line that says where it
    listens keeps its port and pid, while a number after a word's colon is masked."""
    cases = {
        "Listening at: http://127.0.0.1:5000 (12345)": (
            "Listening at: http://127.0.0.1:5000 (12345)"
        ),
        "Listening at: http://[::1]:8000 (4242)": "Listening at: http://[::1]:8000 (4242)",
        "tel:+380501234567": "tel:<number>",
        "at 10:30 380501234567": "at 10:30 <number>",
    }
    for line, expected in cases.items():
        assert bridge_logs.redact(line) == expected, line


def test_a_url_cannot_forge_a_log_line():
    """%0A in a URL, once decoded, is written as \\n: the access line stays one line."""
    record = logging.LogRecord(
        "werkzeug",
        logging.INFO,
        __file__,
        1,
        '%s - - "%s" %s',
        (
            "127.0.0.1",
            "GET /x%0D%0AMon level=ERROR logger=bridge.worker FORGED%1B[2J HTTP/1.1",
            401,
        ),
        None,
    )
    bridge_logs.RedactingFilter().filter(record)
    line = logging.Formatter(bridge_logs.LOG_FORMAT).format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "/x\\r\\nMon level=ERROR logger=bridge.worker FORGED\\x1b[2J" in line


def test_a_value_cannot_reorder_a_log_line_with_bidirectional_controls(caplog):
    # U+202E shows the rest of a line right to left: "erase\u202etoken=1" would read
    # as something else in a terminal or a log viewer
    log = bridge_logs.get_logger("bridge.test")
    log.warning("name %s", "a\u202eb\u2066c\u2069d\u200fe\u061cf")
    [message] = [r.getMessage() for r in caplog.records if r.name == "bridge.test"]
    assert message == "name a\\u202eb\\u2066c\\u2069d\\u200fe\\u061cf"


def test_the_bridges_own_lines_escape_control_characters(caplog):
    log = bridge_logs.get_logger("bridge.test")
    log.warning(
        "upstream said %s", "no\nlevel=ERROR logger=bridge.worker FORGED\x1b]0;x\x07\x9b31m\u2028"
    )
    try:
        raise ValueError("bad\nlevel=ERROR logger=bridge.worker FORGED")
    except ValueError:
        log.exception("failed")
    messages = [r.getMessage() for r in caplog.records if r.name == "bridge.test"]
    assert messages[0] == (
        "upstream said no\\nlevel=ERROR logger=bridge.worker FORGED\\x1b]0;x\\x07\\x9b31m\\u2028"
    )
    formatted = logging.Formatter(bridge_logs.LOG_FORMAT).format(caplog.records[-1])
    lines = formatted.split("\n")
    assert lines[0].endswith("failed")
    assert all(line.startswith("  ") for line in lines[1:])  # the traceback, indented
    # a line break in the exception's text stays a break, but the line after it is
    # indented like the rest of the traceback: it cannot pass for a record of its own
    assert lines[-2:] == ["  ValueError: bad", "  level=ERROR logger=bridge.worker FORGED"]


def test_a_long_path_is_logged_cut(client, logs):
    path = "/tokens/" + "a" * 65_000 + "/history"
    assert client.get(path).status_code == 401
    logged_path = json.loads(request_lines(logs)[-1]["path"])
    assert len(logged_path) <= MAX_LOGGED_PATH_CHARS
    assert logged_path == "/tokens/...[65008 more characters not logged]"


def test_a_claim_code_in_a_path_is_not_logged(client, auth, logs):
    """A claim code registers a chat for whoever holds it: the request log shows its
    route with the code masked."""
    made = client.post("/links/claims", json={"token": 333}, headers=auth)
    assert made.status_code == 201, made.get_json()
    code = made.get_json()["code"]
    claimed = client.post(f"/links/claims/{code}", json={"email": EMAIL}, headers=auth)
    assert claimed.status_code == 202, claimed.get_json()
    assert code not in logged(logs)
    paths = [(line["method"], line["path"]) for line in request_lines(logs)]
    assert ("POST", "/links/claims/…") in paths
    assert ("POST", "/links/claims") in paths
