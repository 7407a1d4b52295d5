"""The stale-token report: live registrations with no sign of life for N days.

What is tested, through the HTTP API, the ``flask bridge`` commands and ``/metrics``:

* ``GET /tokens?quietDays=N`` (and ``bridge tokens --quiet-days``) lists only live
  registrations (queued, delivered, dead, held) whose ``lastSeenAt`` is more than N days
  old, the longest quiet first; removed ones never; a sign of life (a SENT / DELIVERED /
  CLICKED status, a repeated submission, a Telegram /start or unblock) takes a chat out
  of it; its pages (``limit``, ``next``) walk the whole report in order without
  repeats; a bad ``quietDays`` or a cursor of another listing is a 422 in the bridge's
  error shape;
* ``bridge stale --days N`` lists the same registrations (a table, or ``--json``) and
  says so when there are none; with ``--remove`` it asks first (``--yes`` does not),
  removes them with reason ``stale`` (state, ``removalReason``, a ``removed`` history
  event with cause ``stale``), more than one chunk of them too, and leaves every other
  registration as it was (a held identity whose other one goes is released);
* ``bridge stats`` (text and ``--json``) counts the quiet registrations by state and
  those removed as stale; ``/metrics`` has the latter as ``bridge_removed_stale``.

A report cursor whose time leaves datetime's range in UTC is a 422 (it was a 500), and
the counts by state come in one order in every process (they followed a set's hash).

Time is the ``clock`` fixture's: a test sets the ledger's clock back to register a chat
"N days ago" instead of waiting.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import API_KEY, APP_UUID, RETENO_KEY, TOKENS_URL
from tests.helpers import assert_error_shape, history, register, rows, table_rows
from tests.helpers import run_cli as run

DAY = 24 * 3600
LIVE_STATES = ("queued", "delivered", "dead", "held")  # the order of ``State``

# The chats of the ``aged`` ledger: token -> (days since its last sign of life, state).
# 1003 is one chat under two identities: the second one is held (BRIDGE_ON_CONFLICT=hold).
QUIET = [
    ("1001", 100, "delivered"),
    ("1002", 90, "dead"),
    ("1003", 80, "queued"),
    ("1003", 70, "held"),
    ("1005", 60, "queued"),
    ("1006", 60, "queued"),
]
QUIET_TOKENS = [token for token, _days, _state in QUIET]
REMOVED_TOKEN = "1004"  # quiet for 40 days, but removed (blocked): never in the report
FRESH_TOKEN = "1007"  # seen 5 days ago


TELEGRAM_SECRET = "tg-webhook-secret_0123456789"


@pytest.fixture
def app(make_app):
    """The bridge holds a chat's second identity, so that every live state can be quiet;
    it takes Telegram's webhook (a /start and an unblock are signs of life)."""
    return make_app(BRIDGE_ON_CONFLICT="hold", TELEGRAM_WEBHOOK_SECRET=TELEGRAM_SECRET)


def report(client, auth, days=30, **query):
    """``GET /tokens?quietDays=days``: the items of one page of up to 500."""
    return rows(client, auth, quietDays=days, **query)


def post_statuses(client, auth, body):
    response = client.post("/statuses", json=body, headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.fixture
def aged(client, auth, bridge, requests_mock, clock):
    """A ledger of known ages (``QUIET``, ``REMOVED_TOKEN``, ``FRESH_TOKEN``); the clock
    back at "today", which it returns."""
    today = clock.now

    def days_ago(days):
        clock.now = today - timedelta(days=days)

    days_ago(100)
    register(client, auth, {"token": 1001, "email": "a@example.com"})
    requests_mock.post(TOKENS_URL, json="OK")
    assert bridge.deliver_once()["delivered"] == 1
    days_ago(90)
    register(client, auth, {"token": 1002, "email": "b@example.com"})
    requests_mock.post(TOKENS_URL, status_code=400, json={"message": "token is invalid"})
    bridge.deliver_once()
    days_ago(80)
    register(client, auth, {"token": 1003, "email": "c@example.com"})
    days_ago(70)
    [held] = register(client, auth, {"token": 1003, "email": "c2@example.com"})
    assert held["state"] == "held"
    days_ago(60)  # two in one request: the same last sign of life
    register(client, auth, {"token": 1005, "contactId": 5}, {"token": 1006, "contactId": 6})
    days_ago(40)
    register(client, auth, {"token": 1004, "email": "e@example.com"})
    clock.advance(1)
    assert post_statuses(
        client,
        auth,
        {"status": "FAILED", "token": "1004", "error": "Forbidden: bot was blocked by the user"},
    )["removed"] == ["1004"]
    days_ago(5)
    register(client, auth, {"token": 1007, "email": "f@example.com"})
    clock.now = today
    return today


def state_of(client, auth):
    """{(token, email or contactId): registration} of every registration."""
    return {(r["token"], r["email"] or r["contactId"]): r for r in rows(client, auth)}


# --- GET /tokens?quietDays=N ------------------------------------------------------------


def test_the_report_is_the_live_registrations_quiet_for_n_days_longest_quiet_first(
    client, auth, aged
):
    items = report(client, auth, 30)
    assert [(r["token"], r["state"]) for r in items] == [(t, s) for t, _d, s in QUIET]
    for item, (_token, days, _state) in zip(items, QUIET, strict=True):
        seen = datetime.fromisoformat(item["lastSeenAt"])
        assert (aged - seen).total_seconds() == pytest.approx(days * DAY, abs=2)
    assert REMOVED_TOKEN not in {r["token"] for r in items}
    assert FRESH_TOKEN not in {r["token"] for r in items}
    # the two of one request (same last sign of life): in the order they were made
    assert items[-2]["id"] < items[-1]["id"]


def test_the_number_of_days_decides(client, auth, aged):
    assert [r["token"] for r in report(client, auth, 85)] == ["1001", "1002"]
    assert [r["token"] for r in report(client, auth, 65)] == QUIET_TOKENS[:4]
    assert [r["token"] for r in report(client, auth, 1)] == QUIET_TOKENS + [FRESH_TOKEN]
    assert report(client, auth, 100) == []  # 1001 is exactly 100 days quiet: not more
    assert report(client, auth, 36500) == []


def test_quiet_means_more_than_n_days(client, auth, clock):
    register(client, auth, {"token": 2001, "contactId": 1})
    clock.advance(30 * DAY)
    assert report(client, auth, 30) == []
    clock.advance(1)
    assert [r["token"] for r in report(client, auth, 30)] == ["2001"]


def test_removed_registrations_are_never_in_the_report(client, auth, aged):
    assert report(client, auth, 30, state="removed") == []
    assert [r["token"] for r in rows(client, auth, state="removed")] == [REMOVED_TOKEN]
    assert [r["token"] for r in report(client, auth, 30, state="dead")] == ["1002"]
    assert [r["token"] for r in report(client, auth, 30, state="held")] == ["1003"]
    assert [r["token"] for r in report(client, auth, 30, token="1003")] == ["1003", "1003"]


@pytest.mark.parametrize("status", ["SENT", "DELIVERED", "CLICKED"])
def test_a_status_of_life_takes_the_whole_chat_out_of_the_report(client, auth, aged, status):
    result = post_statuses(client, auth, {"status": status, "token": "1003"})
    assert result["removed"] == []
    items = report(client, auth, 30)
    assert [r["token"] for r in items] == ["1001", "1002", "1005", "1006"]
    # both identities of the chat were seen now; nothing else changed
    chat = [r for r in rows(client, auth, token="1003")]
    assert [r["lastSeenAt"] for r in chat] == [aged.isoformat()] * 2
    assert [r["state"] for r in chat] == ["held", "queued"]


def test_a_sent_status_for_a_token_as_in_the_issue(client, auth, aged):
    post_statuses(client, auth, {"status": "SENT", "token": "1001"})
    assert "1001" not in [r["token"] for r in report(client, auth, 30)]
    assert [r["token"] for r in report(client, auth, 30)] == QUIET_TOKENS[1:]


def test_a_status_dated_in_the_past_counts_from_its_own_time(client, auth, aged):
    # SENT 50 days ago: 1001 is still quiet for 30 days, but for less long than 1003
    sent = (aged - timedelta(days=50)).replace(microsecond=0)
    post_statuses(client, auth, {"status": "SENT", "token": "1001", "time": sent.isoformat()})
    items = report(client, auth, 30)
    assert [r["token"] for r in items] == ["1002", "1003", "1003", "1005", "1006", "1001"]
    assert datetime.fromisoformat(items[-1]["lastSeenAt"]) == sent
    assert [r["token"] for r in report(client, auth, 55)] == [
        "1002",
        "1003",
        "1003",
        "1005",
        "1006",
    ]


def test_a_failed_status_that_is_no_block_is_no_sign_of_life(client, auth, aged):
    post_statuses(
        client,
        auth,
        {"status": "FAILED", "token": "1005", "error": "Too Many Requests: retry after 5"},
    )
    assert [r["token"] for r in report(client, auth, 30)] == QUIET_TOKENS


def test_a_repeated_submission_takes_the_registration_out_of_the_report(client, auth, aged):
    [again] = register(client, auth, {"token": 1001, "email": "a@example.com"})
    assert again["duplicate"] is True
    assert [r["token"] for r in report(client, auth, 30)] == QUIET_TOKENS[1:]
    [row] = rows(client, auth, token="1001")
    assert row["lastSeenAt"] == aged.isoformat() and row["state"] == "delivered"


def test_repeated_submissions_in_one_request_are_signs_of_life(client, auth, aged, clock):
    clock.advance(60)
    outcomes = register(
        client,
        auth,
        {"token": 1005, "contactId": 5},
        {"token": 1006, "contactId": 6},
        {"token": 1008, "contactId": 8},
    )
    assert [o["duplicate"] for o in outcomes] == [True, True, False]
    assert [r["token"] for r in report(client, auth, 30)] == QUIET_TOKENS[:4]
    seen = {r["token"]: r["lastSeenAt"] for r in rows(client, auth) if r["contactId"]}
    assert seen == {t: clock.now.isoformat() for t in ("1005", "1006", "1008")}
    # and they are quiet again, in the order of their ids, once 30 days have passed
    clock.advance(30 * DAY + 1)
    assert [r["token"] for r in report(client, auth, 30)][-3:] == ["1005", "1006", "1008"]


def test_a_repeated_submission_of_a_dead_registration_is_a_sign_of_life(client, auth, aged):
    [again] = register(client, auth, {"token": 1002, "email": "b@example.com"})
    assert again["duplicate"] is True
    assert "1002" not in [r["token"] for r in report(client, auth, 30)]


def telegram(client, update):
    response = client.post(
        "/telegram/webhook",
        json={"update_id": 700_000_001, **update},
        headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET},
    )
    assert response.status_code == 200, response.get_json()


def private_chat(chat_id):
    return {"id": chat_id, "first_name": "Ann", "type": "private"}


def start(chat_id, date):
    return {
        "message": {
            "message_id": 17,
            "date": date,
            "text": "/start",
            "chat": private_chat(chat_id),
            "from": {"id": chat_id, "is_bot": False, "first_name": "Ann"},
            "entities": [{"offset": 0, "length": len("/start"), "type": "bot_command"}],
        }
    }


def unblocked(chat_id, date):
    bot = {"id": 7000000001, "is_bot": True, "first_name": "Test bot"}
    return {
        "my_chat_member": {
            "chat": private_chat(chat_id),
            "date": date,
            "from": {"id": chat_id, "is_bot": False, "first_name": "Ann"},
            "old_chat_member": {"user": bot, "status": "kicked", "until_date": 0},
            "new_chat_member": {"user": bot, "status": "member"},
        }
    }


@pytest.mark.parametrize("update", [start, unblocked], ids=["start", "unblock"])
def test_a_start_or_an_unblock_takes_the_chat_out_of_the_report(client, auth, aged, update):
    date = int(aged.timestamp())
    telegram(client, update(1003, date))
    assert [r["token"] for r in report(client, auth, 30)] == ["1001", "1002", "1005", "1006"]
    chat = rows(client, auth, token="1003")
    assert {datetime.fromisoformat(r["lastSeenAt"]).timestamp() for r in chat} == {date}
    assert [r["state"] for r in chat] == ["held", "queued"]


def test_a_sign_of_life_of_a_removed_chat_brings_nothing_back(client, auth, aged):
    post_statuses(client, auth, {"status": "SENT", "token": REMOVED_TOKEN})
    assert [r["token"] for r in report(client, auth, 30)] == QUIET_TOKENS
    [row] = rows(client, auth, token=REMOVED_TOKEN)
    assert row["state"] == "removed"


# --- pages ------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2, 4, 5, 6, 7])
def test_pages_walk_the_whole_report_in_order_without_repeats(client, auth, aged, limit):
    whole = [r["id"] for r in report(client, auth, 30)]
    seen, cursor, pages = [], None, 0
    while True:
        query = {"quietDays": 30, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = client.get("/tokens", query_string=query, headers=auth)
        assert response.status_code == 200, response.get_json()
        page = response.get_json()
        assert 0 < len(page["items"]) <= limit
        seen += [r["id"] for r in page["items"]]
        pages += 1
        cursor = page["next"]
        if not cursor:
            break
        assert pages < 10
    assert seen == whole
    assert len(set(seen)) == len(QUIET)
    assert pages == -(-len(QUIET) // limit)


def test_a_page_of_many_with_the_same_last_sign_of_life(client, auth, clock):
    register(client, auth, *[{"token": 3000 + n, "contactId": n + 1} for n in range(7)])
    clock.advance(31 * DAY)
    register(client, auth, {"token": 3100, "contactId": 100})  # not quiet
    seen, cursor = [], None
    while True:
        query = {"quietDays": 30, "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/tokens", query_string=query, headers=auth).get_json()
        seen += [r["token"] for r in page["items"]]
        cursor = page["next"]
        if not cursor:
            break
    assert seen == [str(3000 + n) for n in range(7)]


def test_a_cursor_of_the_ordinary_listing_is_refused_with_quiet_days(client, auth, aged):
    page = client.get("/tokens", query_string={"limit": 2}, headers=auth).get_json()
    assert page["next"]
    response = client.get(
        "/tokens", headers=auth, query_string={"quietDays": 30, "limit": 2, "cursor": page["next"]}
    )
    body = assert_error_shape(response, 422)
    assert "cursor" in body["errors"]


def test_a_cursor_of_the_report_is_refused_without_quiet_days(client, auth, aged):
    page = client.get(
        "/tokens", query_string={"quietDays": 30, "limit": 2}, headers=auth
    ).get_json()
    assert page["next"]
    response = client.get(
        "/tokens", headers=auth, query_string={"limit": 2, "cursor": page["next"]}
    )
    body = assert_error_shape(response, 422)
    assert "cursor" in body["errors"]


def cursor_of(key) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        cursor_of({"quietAfter": [1, 2]}),
        cursor_of({"quietAfter": ["2020-01-01T00:00:00", 2]}),  # no time zone
        cursor_of({"quietAfter": ["2020-01-01T00:00:00+00:00", 0]}),
        cursor_of({"quietAfter": ["2020-01-01T00:00:00+00:00"]}),
        cursor_of({"before": 5}),
        *(
            pytest.param(cursor_of({"quietAfter": [seen, 2]}), id=name)
            for name, seen in (
                ("before-year-1-in-utc", "0001-01-01T00:00:00+05:00"),
                ("after-year-9999-in-utc", "9999-12-31T23:00:00-05:00"),
            )
        ),
    ],
)
def test_a_broken_report_cursor_is_refused(client, auth, aged, cursor):
    response = client.get("/tokens", headers=auth, query_string={"quietDays": 30, "cursor": cursor})
    assert "cursor" in assert_error_shape(response, 422)["errors"]


@pytest.mark.parametrize("days", ["0", "-1", "x", "36501", "1.5", ""])
def test_an_invalid_quiet_days_is_422(client, auth, days):
    response = client.get("/tokens", query_string={"quietDays": days}, headers=auth)
    body = assert_error_shape(response, 422)
    assert "quietDays" in body["errors"]


def test_the_report_needs_the_bearer_key(client):
    assert_error_shape(client.get("/tokens", query_string={"quietDays": 30}), 401)


# --- bridge stale -----------------------------------------------------------------------


def test_stale_lists_them_as_a_table(runner, aged):
    result = run(runner, "stale", "--days", "30")
    table = table_rows(result.output)
    assert table[0][:3] == ["ID", "TOKEN", "STATE"]
    assert "LAST SEEN" in table[0]
    assert [(r[1], r[2]) for r in table[1:]] == [(t, s) for t, _d, s in QUIET]
    last_seen = table[0].index("LAST SEEN")
    expected = (aged - timedelta(days=100)).strftime("%Y-%m-%d %H:%M")
    assert table[1][last_seen].startswith(expected)
    assert REMOVED_TOKEN not in result.output and FRESH_TOKEN not in result.output
    assert "6 registrations quiet for 30 days" in result.output
    for state, n in (("queued", 3), ("delivered", 1), ("dead", 1), ("held", 1)):
        assert f"{state} {n}" in result.output
    assert "6 shown, the longest quiet first" in result.output


def test_stale_limit_shows_the_longest_quiet_and_counts_them_all(runner, aged):
    result = run(runner, "stale", "--days", "30", "--limit", "2")
    assert [r[1] for r in table_rows(result.output)[1:]] == ["1001", "1002"]
    assert "6 registrations quiet for 30 days" in result.output
    assert "2 shown" in result.output


def test_stale_json_is_the_report_of_the_http_api(runner, client, auth, aged):
    as_json = json.loads(run(runner, "stale", "--days", "30", "--json").stdout)
    assert as_json["quietDays"] == 30
    assert as_json["counts"] == {"queued": 3, "delivered": 1, "dead": 1, "held": 1}
    assert as_json["items"] == report(client, auth, 30)


def test_stale_shows_which_quiet_chats_are_muted(runner, client, auth, aged):
    run(runner, "mute", "1005")  # an operator's mute is no sign of life of the chat
    table = table_rows(run(runner, "stale", "--days", "30").output)
    assert table[0][-1] == "MUTED"
    assert [(r[1], r[-1]) for r in table[1:] if r[-1] == "yes"] == [("1005", "yes")]
    items = report(client, auth, 30)
    assert [r["token"] for r in items] == QUIET_TOKENS
    assert [r["token"] for r in items if r["muted"]] == ["1005"]


def test_tokens_quiet_days_pages_through_the_report(runner, client, auth, aged):
    as_json = json.loads(run(runner, "tokens", "--quiet-days", "30", "--json").stdout)
    assert as_json == client.get("/tokens", query_string={"quietDays": 30}, headers=auth).get_json()
    first = run(runner, "tokens", "--quiet-days", "30", "--limit", "4").output
    assert [r[1] for r in table_rows(first)[1:]] == QUIET_TOKENS[:4]
    cursor = first.rsplit("--cursor ", 1)[1].strip()
    rest = run(runner, "tokens", "--quiet-days", "30", "--limit", "4", "--cursor", cursor)
    assert [r[1] for r in table_rows(rest.output)[1:]] == QUIET_TOKENS[4:]
    # the cursor belongs to the report: without --quiet-days it is refused
    refused = run(runner, "tokens", "--limit", "4", "--cursor", cursor, code=2)
    assert "Invalid value for '--cursor'" in refused.output
    assert (
        "Invalid value for '--quiet-days'"
        in run(runner, "tokens", "--quiet-days", "0", code=2).output
    )


def test_stale_says_so_when_nothing_is_quiet(runner, aged):
    result = run(runner, "stale", "--days", "365")
    assert "no live registration has been quiet for 365 days" in result.output
    as_json = json.loads(run(runner, "stale", "--days", "365", "--json").stdout)
    assert as_json["items"] == [] and sum(as_json["counts"].values()) == 0
    one = run(runner, "stale", "--days", "365", "--remove", "--yes")
    assert "nothing removed" in one.output


@pytest.mark.parametrize(
    "args",
    [[], ["--days", "0"], ["--days", "36501"], ["--days", "x"], ["--days", "30", "--limit", "0"]],
)
def test_stale_rejects_bad_values(runner, args):
    result = run(runner, "stale", *args, code=2)
    assert "--days" in result.output or "--limit" in result.output


def test_stale_remove_asks_first_and_no_removes_nothing(runner, client, auth, aged):
    before = state_of(client, auth)
    result = run(runner, "stale", "--days", "30", "--remove", input="n\n", code=1)
    assert "Remove 6 registrations quiet for 30 days" in result.output
    assert "Aborted" in result.output
    assert state_of(client, auth) == before
    assert [r["token"] for r in report(client, auth, 30)] == QUIET_TOKENS


def test_stale_remove_removes_them_with_reason_stale(runner, client, auth, aged):
    before = state_of(client, auth)
    result = run(runner, "stale", "--days", "30", "--remove", input="y\n")
    assert "Remove 6 registrations quiet for 30 days" in result.output
    assert "removed 6 registrations (reason stale)" in result.stdout
    assert "removing" in result.stderr  # the progress bar
    assert report(client, auth, 30) == []
    after = state_of(client, auth)
    quiet_keys = {
        key for key, r in before.items() if r["token"] in QUIET_TOKENS and r["state"] != "removed"
    }
    assert len(quiet_keys) == len(QUIET)
    for key in quiet_keys:
        row = after[key]
        assert row["state"] == "removed", key
        assert "stale" in row["removalReason"]
        assert row["removedAt"] == aged.isoformat()
    for key in set(before) - quiet_keys:  # the removed one and the fresh one: untouched
        assert after[key] == before[key]
    assert after[(FRESH_TOKEN, "f@example.com")]["state"] == "queued"
    assert "stale" not in after[(REMOVED_TOKEN, "e@example.com")]["removalReason"]
    for token, _days, state in QUIET:
        events = [e for e in history(client, auth, token) if e["kind"] == "removed"]
        assert events, token
        assert all(e["detail"]["cause"] == "stale" for e in events)
        assert all(e["detail"]["quietDays"] == 30 for e in events)
        assert state in {e["detail"]["previousState"] for e in events}


def test_stale_remove_yes_does_not_ask(runner, client, auth, aged):
    result = run(runner, "stale", "--days", "85", "--remove", "--yes")
    assert "Remove" not in result.output
    assert "removed 2 registrations (reason stale)" in result.output
    assert [r["token"] for r in report(client, auth, 30)] == QUIET_TOKENS[2:]
    removed = {r["token"] for r in rows(client, auth, state="removed")}
    assert removed == {"1001", "1002", REMOVED_TOKEN}


def test_stale_remove_json(runner, client, auth, aged):
    result = run(runner, "stale", "--days", "30", "--remove", "--yes", "--json")
    assert json.loads(result.stdout) == {"quietDays": 30, "removed": 6}


def test_removing_a_quiet_identity_releases_the_chats_held_one(runner, client, auth, clock):
    # a held registration waits until the chat's other identity is gone: a stale removal
    # is such a going
    register(client, auth, {"token": 4100, "email": "ann@example.com"})
    clock.advance(60 * DAY)
    [held] = register(client, auth, {"token": 4100, "email": "bob@example.com"})
    assert held["state"] == "held"
    assert (
        "removed 1 registration (reason stale)"
        in run(runner, "stale", "--days", "30", "--remove", "--yes").output
    )
    states = {r["email"]: r["state"] for r in rows(client, auth, token=4100)}
    assert states == {"ann@example.com": "removed", "bob@example.com": "queued"}
    assert [e["kind"] for e in history(client, auth, 4100)][-2:] == ["removed", "released"]


def test_stale_remove_removes_more_than_one_chunk(runner, client, auth, clock):
    # the ledger removes 500 at a time, one transaction each; the bar counts them all
    register(client, auth, *[{"token": 5000 + n, "contactId": n + 1} for n in range(503)])
    clock.advance(31 * DAY)
    register(client, auth, {"token": 6000, "contactId": 6000})
    result = run(runner, "stale", "--days", "30", "--remove", "--yes", "--json")
    assert json.loads(result.stdout) == {"quietDays": 30, "removed": 503}
    assert report(client, auth, 30) == []
    assert json.loads(run(runner, "stats", "--json").stdout)["stale"]["removed"] == 503
    assert [r["token"] for r in rows(client, auth, state="queued")] == ["6000"]


def test_a_chat_seen_after_the_report_was_read_is_not_removed(runner, client, auth, aged):
    # the report is read again as it removes: a sign of life in between counts
    post_statuses(client, auth, {"status": "SENT", "token": "1001"})
    result = run(runner, "stale", "--days", "30", "--remove", "--yes")
    assert "removed 5 registrations" in result.output
    [row] = rows(client, auth, token="1001")
    assert row["state"] == "delivered"


def test_a_chat_removed_as_stale_can_register_again(runner, client, auth, aged):
    run(runner, "stale", "--days", "30", "--remove", "--yes")
    [again] = register(client, auth, {"token": 1001, "email": "a@example.com"})
    assert again["state"] == "queued" and again["duplicate"] is False
    assert report(client, auth, 30) == []


# --- bridge stats and /metrics ----------------------------------------------------------


def test_stats_counts_the_quiet_by_state_and_the_removed_as_stale(runner, aged):
    stale = json.loads(run(runner, "stats", "--json").stdout)["stale"]
    assert stale == {
        "quietDays": 30,
        "removed": 0,
        "states": {"queued": 3, "delivered": 1, "dead": 1, "held": 1},
    }
    text = run(runner, "stats").output
    line = next(ln for ln in text.splitlines() if ln.startswith("Quiet for 30 days"))
    assert "(bridge stale)" in line and "removed as stale so far: 0" in line
    for state, n in (("queued", 3), ("delivered", 1), ("dead", 1), ("held", 1)):
        assert f"{state} {n}" in line

    other = json.loads(run(runner, "stats", "--quiet-days", "85", "--json").stdout)["stale"]
    assert other["quietDays"] == 85
    assert other["states"] == {"queued": 0, "delivered": 1, "dead": 1, "held": 0}
    line = next(
        ln
        for ln in run(runner, "stats", "--quiet-days", "85").output.splitlines()
        if ln.startswith("Quiet for 85 days")
    )
    assert "delivered 1" in line and "dead 1" in line and "queued" not in line

    run(runner, "stale", "--days", "30", "--remove", "--yes")
    stale = json.loads(run(runner, "stats", "--json").stdout)["stale"]
    assert stale["removed"] == 6 and sum(stale["states"].values()) == 0
    assert (
        "Quiet for 30 days (bridge stale): none; removed as stale so far: 6"
        in run(runner, "stats").output
    )


def test_stats_rejects_a_bad_quiet_days(runner):
    for days in ("0", "36501"):
        assert "--quiet-days" in run(runner, "stats", "--quiet-days", days, code=2).output


def test_metrics_show_the_number_removed_as_stale(runner, client, auth, aged):
    def gauge():
        response = client.get("/metrics", headers=auth)
        assert response.status_code == 200
        return [
            ln
            for ln in response.get_data(as_text=True).splitlines()
            if ln.startswith("bridge_removed_stale")
        ]

    assert gauge() == ["bridge_removed_stale 0.0"]
    run(runner, "stale", "--days", "85", "--remove", "--yes")
    assert gauge() == ["bridge_removed_stale 2.0"]
    run(runner, "stale", "--days", "30", "--remove", "--yes")
    assert gauge() == ["bridge_removed_stale 6.0"]  # the blocked one is not counted


# --- the order of the counts by state ---------------------------------------------------

_STATS_IN_A_FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    from app import create_app
    app = create_app(json.loads(sys.argv[1]))
    for args in (["stats", "--json"], ["stale", "--days", "30", "--json"]):
        result = app.test_cli_runner().invoke(args=["bridge", *args])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        print(json.dumps(list((data.get("stale") or {}).get("states") or data["counts"])))
    app.extensions["reteno_bridge"].db.dispose()
""")


def test_the_counts_by_state_come_in_one_order_in_every_process(aged, db_url, tmp_path):
    config = {
        "TESTING": True,
        "RETENO_APP_UUID": APP_UUID,
        "RETENO_API_KEY": RETENO_KEY,
        "BRIDGE_API_KEYS": API_KEY,
        "BRIDGE_DATABASE_URL": db_url,
        "BRIDGE_BACKGROUND_DELIVERY": False,
    }
    root = Path(__file__).resolve().parent.parent
    orders = set()
    for seed in ("0", "1", "2", "3"):
        env = {
            **os.environ,
            "PYTHONHASHSEED": seed,
            "BRIDGE_INSTANCE_PATH": str(tmp_path / "instance"),
        }
        done = subprocess.run(
            [sys.executable, "-c", _STATS_IN_A_FRESH_PROCESS, json.dumps(config)],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(done.stderr)  # not the failure this test expects
        orders.update(done.stdout.splitlines())
    assert orders == {json.dumps(list(LIVE_STATES))}
