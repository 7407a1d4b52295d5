"""The ``flask bridge`` commands, run through Flask's CliRunner."""

from __future__ import annotations

import json
import re
from datetime import UTC, timedelta

import pytest

from tests.conftest import TOKENS_URL
from tests.helpers import register, table_rows
from tests.helpers import run_cli as run


@pytest.fixture
def ann(client, auth):
    return register(
        client,
        auth,
        {
            "token": 123456789,
            "contactId": 42,
            "phone": "+380 (95) 649-09-55",
            "email": "Ann@Example.com",
        },
        {"token": 987654321, "email": "bob@example.com"},
    )


# --- tokens -----------------------------------------------------------------------------


def test_tokens_prints_an_aligned_table(runner, ann):
    result = run(runner, "tokens")
    lines = result.output.splitlines()
    header, rule = lines[0], lines[1]
    assert header.split() == [
        "ID",
        "TOKEN",
        "STATE",
        "MATCHED",
        "BY",
        "CONTACT",
        "ID",
        "PHONE",
        "EMAIL",
        "ATTEMPTS",
        "CREATED",
    ]
    assert set(rule.replace(" ", "")) == {"-"}
    # every column starts where its header starts
    for line in lines[2:4]:
        assert line[header.index("TOKEN") :].startswith(("123456789", "987654321"))
        assert line[header.index("STATE") :].startswith("queued")
        assert line[header.index("EMAIL") :].split()[0] in ("ann@example.com", "bob@example.com")
    rows = table_rows(result.output)
    assert [r[1] for r in rows[1:]] == ["987654321", "123456789"]  # newest first
    assert "2 registrations; no more pages" in result.output


def test_tokens_filters_are_normalised(runner, ann):
    for args in (
        ["--email", " ANN@example.COM "],
        ["--phone", "+380 (95) 649-09-55"],
        ["--contact-id", "42"],
        ["--token", "00123456789"],
    ):
        rows = table_rows(run(runner, "tokens", *args).output)
        assert [r[1] for r in rows[1:]] == ["123456789"], args
    assert "no registrations match" in run(runner, "tokens", "--email", "x@example.com").output


@pytest.mark.parametrize(
    "args,option",
    [
        (["--email", "nope"], "--email"),
        (["--phone", "12"], "--phone"),
        (["--contact-id", "-4"], "--contact-id"),
        (["--token", "abc"], "--token"),
        (["--external-customer-id", "  "], "--external-customer-id"),
        (["--state", "lost"], "--state"),
        (["--limit", "0"], "--limit"),
        (["--limit", "501"], "--limit"),
        (["--cursor", "garbage"], "--cursor"),
    ],
)
def test_tokens_rejects_bad_values(runner, ann, args, option):
    result = run(runner, "tokens", *args, code=2)
    assert f"Invalid value for '{option}'" in result.output


def test_tokens_json_is_the_http_read_api(runner, client, auth, ann):
    result = run(runner, "tokens", "--email", "ann@example.com", "--json")
    http = client.get("/tokens", query_string={"email": "ann@example.com"}, headers=auth)
    assert json.loads(result.output) == http.get_json()
    assert json.loads(result.output)["items"][0]["phone"] == "380956490955"


def test_tokens_pages_with_limit_and_cursor(runner, client, auth):
    register(client, auth, *[{"token": str(1000 + i), "contactId": i + 1} for i in range(5)])
    seen, cursor = [], None
    while True:
        args = ["tokens", "--limit", "2", "--json"] + (["--cursor", cursor] if cursor else [])
        page = json.loads(run(runner, *args).output)
        seen += [item["token"] for item in page["items"]]
        cursor = page["next"]
        if not cursor:
            break
    assert seen == [str(1000 + i) for i in reversed(range(5))]

    first = run(runner, "tokens", "--limit", "2").output
    assert "2 registrations shown; next page: --cursor " in first
    cursor = first.rsplit("--cursor ", 1)[1].strip()
    second = table_rows(run(runner, "tokens", "--limit", "2", "--cursor", cursor).output)
    assert [r[1] for r in second[1:]] == ["1002", "1001"]


def test_tokens_state_filter_and_notes(runner, client, auth, bridge, requests_mock):
    register(client, auth, {"token": 111111111, "email": "a@example.com"})
    requests_mock.post(TOKENS_URL, status_code=400, json={"message": "token is invalid"})
    bridge.deliver_once()
    register(client, auth, {"token": 222222222, "email": "b@example.com"})
    result = run(runner, "tokens", "--state", "dead")
    rows = table_rows(result.output)
    assert len(rows) == 2 and rows[1][1] == "111111111" and rows[1][2] == "dead"
    assert rows[0][-1] == "NOTE" and "token is invalid" in rows[1][-1]
    assert "222222222" not in result.output


# --- history ----------------------------------------------------------------------------


def test_history_table_and_json(runner, client, auth, bridge, requests_mock, ann):
    requests_mock.post(TOKENS_URL, json="OK")
    bridge.deliver_once()
    result = run(runner, "history", "123456789")
    rows = table_rows(result.output)
    assert rows[0] == ["AT", "KIND", "REGISTRATION", "DETAIL"]
    assert [r[1] for r in rows[1:]] == ["submitted", "delivered"]
    assert json.loads(rows[2][3])["status"] == 200
    assert "2 events for token 123456789" in result.output

    as_json = json.loads(run(runner, "history", "00123456789", "--json").output)
    assert as_json == client.get("/tokens/123456789/history", headers=auth).get_json()


def test_history_of_a_negative_chat_id_and_of_nothing(runner, client, auth):
    register(client, auth, {"token": -1001234567890, "email": "group@example.com"})
    assert (
        "1 event for token -1001234567890" in run(runner, "history", "--", "-1001234567890").output
    )
    assert "no events for token 5" in run(runner, "history", "5").output
    assert json.loads(run(runner, "history", "5", "--json").output) == {"token": "5", "events": []}
    assert "Invalid value for 'TOKEN'" in run(runner, "history", "abc", code=2).output


# --- stats ------------------------------------------------------------------------------


@pytest.fixture
def known_ledger(client, auth, bridge, requests_mock, clock):
    """Two days ago: 2 delivered. Today: 1 dead, 1 removed (delivered earlier), 1 queued."""
    today = clock.now
    clock.now = today - timedelta(days=2)
    register(
        client,
        auth,
        {"token": 1001001, "email": "a@example.com"},
        {"token": 1001002, "email": "b@example.com"},
    )
    requests_mock.post(TOKENS_URL, json="OK")
    bridge.deliver_once()
    clock.now = today
    register(client, auth, {"token": 1001003, "email": "c@example.com"})
    requests_mock.post(
        TOKENS_URL, status_code=400, reason="Bad Request", json={"message": "token is invalid"}
    )
    bridge.deliver_once()
    response = client.post(
        "/statuses",
        headers=auth,
        json={
            "status": "FAILED",
            "error": "Forbidden: bot was blocked by the user",
            "token": "1001001",
        },
    )
    assert response.get_json()["removed"] == ["1001001"]
    clock.advance(90)
    register(client, auth, {"token": 1001004, "email": "d@example.com"})
    clock.advance(30)
    return today


def test_stats_json(runner, known_ledger):
    stats = json.loads(run(runner, "stats", "--json").output)
    assert stats["states"] == {"queued": 1, "delivered": 1, "removed": 1, "dead": 1, "held": 0}
    assert stats["outbox"] == {"depth": 1, "oldestAgeSeconds": 30.0}
    assert stats["deadLetters"] == {
        "total": 1,
        "byError": [{"error": "400 Bad Request: token is invalid", "count": 1}],
    }
    days = stats["perDay"]
    assert len(days) == 7
    today = known_ledger.astimezone(UTC).date()
    assert days[-1] == {"day": today.isoformat(), "delivered": 0, "removed": 1}
    assert days[-3] == {
        "day": (today - timedelta(days=2)).isoformat(),
        "delivered": 2,
        "removed": 0,
    }
    assert sum(d["delivered"] for d in days) == 2
    assert [d["day"] for d in days] == sorted(d["day"] for d in days)

    two = json.loads(run(runner, "stats", "--days", "2", "--json").output)["perDay"]
    assert [d["delivered"] for d in two] == [0, 0]


def test_stats_tables(runner, known_ledger):
    output = run(runner, "stats").output
    assert "Registrations by state" in output
    rows = table_rows(output)
    assert rows == [
        ["STATE", "COUNT"],
        ["queued", "1"],
        ["delivered", "1"],
        ["removed", "1"],
        ["dead", "1"],
        ["held", "0"],
    ]
    assert "Outbox: 1 registration queued, oldest queued 30 s ago" in output
    assert "Dead letters: 1" in output
    assert "1  400 Bad Request: token is invalid" in output
    day = (known_ledger.astimezone(UTC).date() - timedelta(days=2)).isoformat()
    assert any(line.split() == [day, "2", "0"] for line in output.splitlines())
    assert "Per day (UTC), last 7 days" in output
    assert "Invalid value for '--days'" in run(runner, "stats", "--days", "0", code=2).output


def test_stats_of_an_empty_ledger(runner):
    output = run(runner, "stats").output
    assert "Outbox: 0 registrations queued\n" in output
    assert "Dead letters: 0\n" in output


# --- requeue ----------------------------------------------------------------------------


@pytest.fixture
def dead_letters(client, auth, bridge, requests_mock):
    """Three dead letters: two refused for the token, one for the phone."""
    requests_mock.post(TOKENS_URL, status_code=400, json={"message": "token is invalid"})
    register(
        client,
        auth,
        {"token": 3000001, "email": "a@example.com"},
        {"token": 3000002, "email": "b@example.com"},
    )
    bridge.deliver_once()
    requests_mock.post(TOKENS_URL, status_code=400, json={"message": "phone 50% wrong"})
    outcome = register(client, auth, {"token": 3000003, "phone": "+1 202 555 0100"})
    bridge.deliver_once()
    assert bridge.ledger.outbox()["dead"] == 3
    return outcome[0]["id"]


def states(client, auth):
    items = client.get("/tokens", headers=auth).get_json()["items"]
    return {item["token"]: item["state"] for item in items}


def test_requeue_by_error_text(runner, client, auth, dead_letters):
    result = run(runner, "requeue", "--error-contains", "50% wrong")
    assert "requeued 1 dead letter;" in result.output
    assert states(client, auth) == {"3000001": "dead", "3000002": "dead", "3000003": "queued"}
    history = client.get("/tokens/3000003/history", headers=auth).get_json()["events"]
    assert history[-1]["kind"] == "requeued"
    assert "no dead letters match" in run(runner, "requeue", "--error-contains", "50%").output


def test_requeue_by_id_and_by_token(runner, client, auth, dead_letters):
    assert json.loads(
        run(runner, "requeue", "--id", str(dead_letters), "--id", "999", "--json").output
    ) == {"requeued": 1}
    assert json.loads(run(runner, "requeue", "--token", "03000002", "--json").output) == {
        "requeued": 1
    }
    assert states(client, auth) == {"3000001": "dead", "3000002": "queued", "3000003": "queued"}
    assert "Invalid value for '--id'" in run(runner, "requeue", "--id", "x", code=2).output


def test_requeue_all_then_deliver(runner, client, auth, bridge, requests_mock, dead_letters):
    assert "requeued 3 dead letters" in run(runner, "requeue").output
    assert json.loads(run(runner, "requeue", "--json").output) == {"requeued": 0}
    requests_mock.post(TOKENS_URL, json="OK")
    result = run(runner, "deliver", "--once")
    assert "delivery finished: delivered 3" in result.output
    assert set(states(client, auth).values()) == {"delivered"}


# --- deliver --once -----------------------------------------------------------------------


def test_deliver_once_drains_a_large_queue_with_a_progress_bar(runner, client, auth, requests_mock):
    register(client, auth, *[{"token": str(10_000 + i), "contactId": i + 1} for i in range(250)])
    requests_mock.post(TOKENS_URL, json="OK")
    result = run(runner, "deliver", "--once")
    assert "delivering" in result.stderr  # the progress bar goes to stderr
    assert "delivery finished: delivered 250" in result.stdout
    assert requests_mock.call_count == 3  # BRIDGE_BATCH_SIZE is 100 in the tests
    assert json.loads(run(runner, "stats", "--json").output)["states"]["delivered"] == 250
    assert "nothing due" in run(runner, "deliver", "--once").output


def test_deliver_once_reports_what_stays_queued(runner, client, auth, requests_mock):
    register(client, auth, {"token": 777777777, "email": "a@example.com"})
    requests_mock.post(TOKENS_URL, status_code=503, text="down")
    result = run(runner, "deliver", "--once")
    assert "delivery finished: retry 1" in result.output
    assert "1 registration(s) still queued" in result.output


# --- erase (the whole behaviour is in test_erase.py) -----------------------------------------


def test_erase_asks_first(runner, client, auth, ann):
    result = run(runner, "erase", "--email", "ann@example.com", input="n\n", code=1)
    assert "Erase every registration and event of email ann@example.com?" in result.stderr
    assert "Aborted" in result.output
    assert len(client.get("/tokens", headers=auth).get_json()["items"]) == 2

    result = run(runner, "erase", "--email", " ANN@example.com", input="y\n")
    assert "erased 1 registration and 1 event of email ann@example.com" in result.stdout
    assert "recorded an 'erased' audit event" in result.stdout
    assert [i["token"] for i in client.get("/tokens", headers=auth).get_json()["items"]] == [
        "987654321"
    ]


def test_erase_twice_says_the_second_time_erases_nothing(runner, ann):
    first = json.loads(
        run(runner, "erase", "--phone", "+380 95 649 09 55", "--yes", "--json").output
    )
    assert first == {
        "by": "phone",
        "registrations": 1,
        "events": 1,
        "scrubbed": 0,
        "revoked": 0,
        "erased": True,
    }
    second = run(runner, "erase", "--phone", "380956490955", "--yes")
    assert "nothing to erase: no registration or event mentions phone 380956490955" in (
        second.output
    )
    assert (
        json.loads(run(runner, "erase", "--phone", "380956490955", "--yes", "--json").output)[
            "erased"
        ]
        is False
    )


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--email", "ann@example.com", "--token", "123456789"],
        ["--yes"],
    ],
)
def test_erase_needs_exactly_one_identifier(runner, ann, args):
    result = run(runner, "erase", *args, code=2)
    assert (
        "Name exactly one of --token, --contact-id, --external-customer-id, --phone, "
        "--email" in result.output
    )


def test_erase_rejects_a_bad_value(runner, ann):
    assert (
        "Invalid value for '--email'"
        in run(runner, "erase", "--email", "ann", "--yes", code=2).output
    )


# --- migrate and a database that is behind -------------------------------------------------


def test_migrate_is_safe_to_run_again(runner):
    assert "already at revision" in run(runner, "migrate").output


@pytest.mark.parametrize(
    "command",
    [["tokens"], ["history", "1"], ["stats"], ["requeue"], ["erase", "--token", "1", "--yes"]],
)
def test_commands_on_an_unmigrated_database_name_bridge_migrate(
    make_app, tmp_path, monkeypatch, command
):
    monkeypatch.setenv("FLASK_RUN_FROM_CLI", "true")  # as under `flask --app app bridge ...`
    app = make_app(BRIDGE_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    result = app.test_cli_runner().invoke(args=["bridge", *command])
    assert result.exit_code == 1
    assert "bridge migrate" in result.output


HOSTILE = "bad \x1b[2J\x1b]0;owned\x07 token\x9b31m\x7f\u2028end"
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # all but the line feed


def test_control_characters_from_the_ledger_never_reach_the_terminal(
    client, auth, bridge, requests_mock, runner
):
    """An error text Reteno (or whoever answers on its URL) sent, and a status event's
    text, are printed with their control characters escaped: no terminal escape codes."""
    requests_mock.post(TOKENS_URL, status_code=400, json={"message": HOSTILE})
    register(client, auth, {"token": 4242, "contactId": 42})
    bridge.deliver_once()
    response = client.post(
        "/statuses",
        headers=auth,
        json=[{"status": "FAILED", "token": 4242, "error": "x" + HOSTILE}],
    )
    assert response.status_code == 200
    outputs = {}
    for args in (
        ["tokens"],
        ["tokens", "--json"],
        ["history", "4242"],
        ["history", "4242", "--json"],
        ["stats"],
        ["stats", "--json"],
    ):
        output = run(runner, *args).output
        assert not CONTROL.search(output), (args, output)
        outputs[" ".join(args)] = output
    assert "bad \\x1b[2J\\x1b]0;owned\\x07 token\\x9b31m\\x7f end" in outputs["tokens"]
    # the JSON stays JSON and says exactly what is stored
    [item] = json.loads(outputs["tokens --json"])["items"]
    assert item["lastError"].endswith(" ".join(HOSTILE.split()))  # as stored
    events = json.loads(outputs["history 4242 --json"])["events"]
    assert any(e["detail"].get("error") == "x" + HOSTILE for e in events)


# bidi override and isolate, zero-width space, byte-order mark, a tag beyond U+FFFF
INVISIBLE = "pay \u202eevil\u202c to \u2066x\u2069\u200b\ufeff\U000e0041 end"
FORMAT = re.compile("[\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff\U000e0000-\U000e007f]")


def test_format_characters_from_the_ledger_are_printed_as_escapes(
    client, auth, bridge, requests_mock, runner
):
    """Identifiers refuse bidi controls now, but texts others wrote (Reteno's error
    text, a status's) can still hold them: a table shows them as \\u escapes, and JSON
    as \\u escapes that read back as what is stored."""
    requests_mock.post(TOKENS_URL, status_code=400, json={"message": INVISIBLE})
    register(client, auth, {"token": 4343, "contactId": 43})
    bridge.deliver_once()
    client.post(
        "/statuses", headers=auth, json=[{"status": "FAILED", "token": 4343, "error": INVISIBLE}]
    )
    outputs = {}
    for args in (
        ["tokens"],
        ["tokens", "--json"],
        ["history", "4343"],
        ["history", "4343", "--json"],
    ):
        output = run(runner, *args).output
        assert not FORMAT.search(output), (args, output)
        outputs[" ".join(args)] = output
    escaped = "pay \\u202eevil\\u202c to \\u2066x\\u2069\\u200b\\ufeff\\U000e0041 end"
    assert escaped in outputs["tokens"] and escaped in outputs["history 4343"]
    [item] = json.loads(outputs["tokens --json"])["items"]
    assert item["lastError"].endswith(INVISIBLE)
    events = json.loads(outputs["history 4343 --json"])["events"]
    assert any(e["detail"].get("error") == INVISIBLE for e in events)
