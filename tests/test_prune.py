"""History retention: ``bridge prune`` and the worker's ``BRIDGE_HISTORY_RETENTION``.

A chat goes through a registration's whole life (retried, delivered, blocked, back,
muted and unmuted with a retry, noise recorded on it) and another contact is erased;
91 days later pruning leaves each audit trail and takes the attempts. The clock is
the ``clock`` fixture's: nothing waits.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from bridge.config import ConfigError
from bridge.ledger.pruning import PRUNABLE
from bridge.models import Event
from bridge.retention import RetentionSchedule, prune
from tests.conftest import BACKEND, TOKENS_URL
from tests.helpers import chat_member, history, register, run_cli, table_rows, telegram_date

CHAT = "5551234"
MUTE_URL = TOKENS_URL.removesuffix("/tokens") + "/token/mute"
UNMUTE_URL = TOKENS_URL.removesuffix("/tokens") + "/token/unmute"
DAY = 86400
FAIL_THEN_OK = [{"status_code": 503, "json": {"error": "busy"}}, {"json": "OK"}]
sqlite_only = pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's file and pages")


def kinds(client, auth, token=CHAT):
    return [e["kind"] for e in history(client, auth, token)]


def every_kind(bridge):
    with bridge.db.read() as conn:
        return conn.execute(select(Event.kind).order_by(Event.id)).scalars().all()


def deliver(bridge, clock):
    """Drain the outbox twice, the clock moved past any backoff between."""
    bridge.deliver_once()
    clock.advance(600)
    bridge.deliver_once()


def noise(bridge, n, token=CHAT, size=0):
    """``n`` prunable events on ``token`` (retries of a call, as the outbox writes them)."""
    for i in range(n):
        bridge.ledger.record("retry", {"status": 503, "i": i, "pad": "x" * size}, token=token)


@pytest.fixture
def lived(client, auth, bridge, clock, requests_mock):
    """The chat's whole life, and an erased contact, 91 days ago; the history before."""
    requests_mock.post(TOKENS_URL, FAIL_THEN_OK)
    requests_mock.post(MUTE_URL, FAIL_THEN_OK)
    requests_mock.post(UNMUTE_URL, json="OK")
    register(client, auth, {"token": CHAT, "contactId": 7})
    deliver(bridge, clock)  # a retry, then delivered
    for new, old in (("kicked", "member"), ("member", "kicked")):  # blocked, then back
        clock.advance(60)
        update = chat_member(CHAT, new, old, telegram_date(clock))
        assert client.post("/telegram/webhook", json=update, headers=auth).status_code == 200
    assert client.post("/mute", json={"token": CHAT}, headers=auth).status_code == 202
    deliver(bridge, clock)  # a retry, then delivered
    assert client.post("/unmute", json={"token": CHAT}, headers=auth).status_code == 202
    deliver(bridge, clock)
    bridge.ledger.record("telegram_ignored", {"reason": "an update with no content"}, token=CHAT)
    bridge.ledger.record("status_unmatched", {"reason": "no registration"}, token=CHAT)
    register(client, auth, {"token": "999", "contactId": 8})
    bridge.ledger.record("retry", {"status": 503}, token="999")
    run_cli(client.application.test_cli_runner(), "erase", "--contact-id", "8", "--yes")
    before = kinds(client, auth)
    clock.advance(91 * DAY)
    return before


def test_pruning_keeps_each_audit_trail_and_takes_the_attempts(
    client, auth, bridge, clock, runner, lived
):
    assert lived == [
        "submitted",
        "retry",
        "delivered",
        "removed",
        "restored",
        "telegram_unblocked",
        "mute_requested",
        "mute_retry",
        "mute_delivered",
        "unmute_requested",
        "unmute_delivered",
        "telegram_ignored",
        "status_unmatched",
    ]
    noise(bridge, 2)  # today's: younger than 90 days
    result = run_cli(runner, "prune", "--older-than", "90d", "--yes")
    assert "deleted 4 events older than 90d in 1 chunk" in result.output
    assert kinds(client, auth) == [
        "submitted",
        "delivered",
        "removed",
        "restored",
        "telegram_unblocked",
        "mute_requested",
        "mute_delivered",
        "unmute_requested",
        "unmute_delivered",
        "retry",
        "retry",
    ]
    assert "erased" in every_kind(bridge)  # the tombstone of the erased contact
    # nothing else is old enough now: a second run deletes nothing
    again = run_cli(runner, "prune", "--older-than", "90d", "--yes")
    assert "nothing to prune" in again.output


def test_what_goes_is_named_once_and_every_kind_there_is_written_by_the_code():
    from bridge.ledger.states import COMMANDS, EVENTS, REGISTRATIONS

    attempts = {"retry", "paused", "not_sent", "superseded"}
    written = (
        {k for k in REGISTRATIONS.transitions if k in attempts}
        | {f"event_{k}" for k in EVENTS.transitions if k in attempts}
        | {f"{a}_{k}" for a in ("mute", "unmute", "replay") for k in COMMANDS.transitions}
        | {"status_ignored", "status_unmatched", "telegram_ignored"}
    )
    assert written >= PRUNABLE
    kept = {"submitted", "delivered", "removed", "restored", "conflict", "erased", "dead"}
    assert not kept & PRUNABLE
    assert not {"mute_requested", "mute_delivered", "link_used", "status"} & PRUNABLE


def test_a_dry_run_counts_and_deletes_nothing(client, auth, bridge, clock, runner, lived):
    result = run_cli(runner, "prune", "--older-than", "90d", "--dry-run")
    assert table_rows(result.output)[:5] == [
        ["kind", "events"],
        ["mute_retry", "1"],
        ["retry", "1"],
        ["status_unmatched", "1"],
        ["telegram_ignored", "1"],
    ]
    assert "would delete 4 events older than 90d" in result.output
    assert "nothing deleted (--dry-run)" in result.output
    assert kinds(client, auth) == lived


def test_without_yes_it_asks_first(client, auth, bridge, clock, runner):
    noise(bridge, 3)
    clock.advance(100 * DAY)
    declined = run_cli(runner, "prune", "--older-than", "90d", input="n\n", code=1)
    assert "Delete 3 attempt-level events older than 90d" in declined.output
    assert "Aborted" in declined.output
    assert kinds(client, auth) == ["retry"] * 3
    accepted = run_cli(runner, "prune", "--older-than", "90d", input="y\n")
    assert "deleted 3 events" in accepted.output
    assert kinds(client, auth) == []


@pytest.mark.parametrize("age", ["12h", "90", "ninety days", "0"])
def test_an_age_under_a_day_or_not_a_duration_is_refused(runner, age):
    result = run_cli(runner, "prune", "--older-than", age, "--yes", code=2)
    assert "--older-than" in result.output


def test_events_go_in_chunks_each_its_own_transaction(client, auth, bridge, clock):
    noise(bridge, 5)
    clock.advance(2 * DAY)
    noise(bridge, 1)  # too young
    chunks = []
    report = prune(bridge.ledger, DAY, chunk=2, progress=chunks.append)
    assert chunks == [2, 2, 1]
    assert (report.deleted, report.chunks, report.complete) == (5, 3, True)
    assert kinds(client, auth) == ["retry"]


def test_a_run_limited_in_chunks_says_more_is_left(client, auth, bridge, clock):
    noise(bridge, 5)
    clock.advance(2 * DAY)
    first = prune(bridge.ledger, DAY, chunk=2, max_chunks=2)
    assert (first.deleted, first.complete) == (4, False)
    second = prune(bridge.ledger, DAY, chunk=2, max_chunks=2)
    assert (second.deleted, second.complete) == (1, True)


# --- the worker's automatic run -----------------------------------------------------------


def test_the_setting_is_a_duration_of_a_day_or_more_and_off_by_default(make_app):
    assert make_app().extensions["reteno_bridge"].worker.retention is None
    schedule = make_app(BRIDGE_HISTORY_RETENTION="90d").extensions["reteno_bridge"].worker.retention
    assert isinstance(schedule, RetentionSchedule) and schedule.retention == 90 * DAY
    for bad in ("12h", "90", "soon"):
        with pytest.raises(ConfigError, match="BRIDGE_HISTORY_RETENTION"):
            make_app(BRIDGE_HISTORY_RETENTION=bad)


def test_retention_zero_never_prunes(client, auth, bridge, clock):
    noise(bridge, 2)
    clock.advance(1000 * DAY)
    assert RetentionSchedule(bridge.ledger, 0)() is None
    assert kinds(client, auth) == ["retry", "retry"]


def test_the_worker_prunes_at_most_once_an_hour(make_app, auth, clock, requests_mock):
    app = make_app(BRIDGE_HISTORY_RETENTION="30d")
    bridge = app.extensions["reteno_bridge"]
    bridge.ledger.clock = clock
    client = app.test_client()
    start = clock.now
    noise(bridge, 2, token="1")
    clock.advance(30 * DAY + 600)
    ran_at = clock.now
    run_once(bridge.worker)  # the loop's first turn: due at once
    assert kinds(client, auth, "1") == []
    clock.now = start + timedelta(minutes=30)
    noise(bridge, 2, token="2")  # 30 days old half an hour after that run
    clock.now = ran_at + timedelta(minutes=30)
    run_once(bridge.worker)
    assert kinds(client, auth, "2") == ["retry", "retry"]  # the last run is not an hour old
    clock.now = ran_at + timedelta(minutes=61)
    run_once(bridge.worker)
    assert kinds(client, auth, "2") == []


def test_a_large_backlog_goes_a_few_chunks_a_turn(client, auth, bridge, clock):
    noise(bridge, 3)
    clock.advance(2 * DAY)
    schedule = RetentionSchedule(bridge.ledger, DAY, chunk=2, chunks=1)
    assert schedule().deleted == 2
    assert schedule.next_at == clock.now  # more may be left: the next turn goes on
    assert schedule().deleted == 1
    assert schedule().deleted == 0
    assert schedule.next_at == clock.now + schedule.interval
    assert schedule() is None
    assert kinds(client, auth) == []


def run_once(worker):
    """One turn of ``DeliveryWorker.run``: drain, housekeeping, then the wait stops it."""
    stop = threading.Event()

    class Wake:
        def wait(self, _seconds):
            stop.set()

        def clear(self):
            pass

    worker.run(stop, Wake())


def test_a_failing_run_is_logged_and_delivery_goes_on(bridge, clock, monkeypatch, caplog):
    schedule = RetentionSchedule(bridge.ledger, 30 * DAY)

    def broken(*args):
        raise RuntimeError("the database is restarting")

    monkeypatch.setattr(bridge.ledger, "prune_chunk", broken)
    assert schedule() is None
    assert "history pruning failed (RuntimeError)" in caplog.text
    assert schedule.next_at == clock.now + schedule.interval


# --- space given back ------------------------------------------------------------------------


@sqlite_only
def test_sqlite_gives_the_space_back_to_the_file_system(bridge, clock, runner):
    noise(bridge, 300, size=2000)
    clock.advance(100 * DAY)
    report = prune(bridge.ledger, 90 * DAY)
    assert report.before.incremental
    assert report.given_back > 300 * 2000 * 0.8
    assert report.after.free == 0
    path = bridge.settings.database_url.split("///", 1)[1]
    assert os.path.getsize(path) == report.after.size  # the WAL went into the file


@sqlite_only
def test_sqlite_not_in_incremental_mode_says_what_is_free_and_how_to_switch(bridge, clock, runner):
    bridge.db.dispose()
    path = bridge.settings.database_url.split("///", 1)[1]
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA auto_vacuum=NONE")
    raw.execute("VACUUM")
    raw.close()
    noise(bridge, 300, size=2000)
    clock.advance(100 * DAY)
    result = run_cli(runner, "prune", "--older-than", "90d", "--yes")
    assert "free inside the database file" in result.output
    assert "not in incremental auto-vacuum mode" in result.output
    assert f"sqlite3 {path} 'PRAGMA auto_vacuum=INCREMENTAL; VACUUM;'" in result.output


@pytest.mark.skipif(BACKEND != "postgres", reason="PostgreSQL's table size")
def test_postgresql_reports_the_table_size_before_and_after(bridge, clock, runner):
    noise(bridge, 50, size=2000)
    clock.advance(100 * DAY)
    result = run_cli(runner, "prune", "--older-than", "90d", "--yes")
    assert "deleted 50 events" in result.output
    assert "bridge_events: " in result.output and " before, " in result.output
    assert "VACUUM FULL bridge_events" in result.output


@sqlite_only
def test_the_cli_says_what_it_gave_back(bridge, clock, runner):
    noise(bridge, 20, size=2000)
    clock.advance(100 * DAY)
    result = run_cli(runner, "prune", "--older-than", "90d", "--yes")
    assert "deleted 20 events older than 90d in 1 chunk" in result.output
    assert "gave back " in result.output and "KiB to the file system" in result.output
