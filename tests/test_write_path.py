"""The fast write path of /register: group commit, the SQLite write queue and the
driver-level inserts. Behaviour only; speed is measured by ``bench/``, never here."""

from __future__ import annotations

import errno
import gc
import json
import os
import sqlite3
import threading

import pytest
from sqlalchemy import literal_column, select, text

from bridge.db import Database, in_pages, run
from bridge.ledger import Ledger, TokenRequest
from tests.helpers import assert_error_shape, rows


def item(token, email):
    return TokenRequest(str(token), email=email)


@pytest.fixture
def ledger(db_url):
    database = Database(db_url)
    yield Ledger(database)
    database.dispose()


def run_threads(target, count):
    errors = []

    def guarded(n):
        try:
            target(n)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


def test_concurrent_calls_each_get_their_own_outcomes_in_order(ledger):
    results = {}

    def work(n):
        # every thread registers its own tokens and one token all threads share
        for i in range(20):
            items = [item(n * 1000 + i, f"t{n}-{i}@example.com"), item(999, "shared@example.com")]
            results.setdefault(n, []).append((items, ledger.register(items)))

    run_threads(work, 8)
    ids = set()
    shared_new = 0
    for calls in results.values():
        assert len(calls) == 20
        for items, outcomes in calls:
            assert [o.token for o in outcomes] == [i.token for i in items]
            own, shared = outcomes
            assert not own.duplicate and own.state == "queued"
            assert own.id not in ids
            ids.add(own.id)
            shared_new += not shared.duplicate
    assert shared_new == 1  # one registration of the shared key, the rest duplicates
    with ledger.db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM bridge_registrations")).scalar() == 161
        submitted = conn.execute(
            text("SELECT count(*) FROM bridge_events WHERE kind = 'submitted'")
        ).scalar()
    assert submitted == 8 * 20 * 2  # one audit event per token object


def test_a_failing_call_in_a_shared_transaction_fails_alone(ledger, monkeypatch):
    real = ledger._register_work
    gate = threading.Barrier(6)

    def flaky(conn, items):
        if any(request.token == "666" for request, *_ in items) and len(items) == 1:
            raise RuntimeError("this one is bad")
        if any(request.token == "666" for request, *_ in items):
            raise RuntimeError("a shared transaction with the bad call")
        return real(conn, items)

    monkeypatch.setattr(ledger._register, "_work", flaky)
    outcome = {}

    def work(n):
        gate.wait()
        token = 666 if n == 0 else n
        try:
            outcome[n] = ledger.register([item(token, f"x{n}@example.com")])
        except RuntimeError as exc:
            outcome[n] = exc

    run_threads(work, 6)
    assert isinstance(outcome[0], RuntimeError) and str(outcome[0]) == "this one is bad"
    for n in range(1, 6):
        assert outcome[n][0].token == str(n) and not outcome[n][0].duplicate


def test_sources_stay_per_call_in_a_shared_transaction(ledger):
    def work(n):
        ledger.register([item(n, f"s{n}@example.com")], source="telegram" if n % 2 else "api")

    run_threads(work, 6)
    with ledger.db.engine.connect() as conn:
        events = conn.execute(text("SELECT token, detail FROM bridge_events")).all()
    for token, detail in events:
        expected = "telegram" if int(token) % 2 else "api"
        detail = detail if isinstance(detail, dict) else json.loads(detail)  # SQLite: text
        assert detail["source"] == expected


def test_timestamps_are_stored_as_sqlalchemy_stores_them(ledger, db_url):
    if not db_url.startswith("sqlite"):
        pytest.skip("the driver-level insert is SQLite's")
    ledger.register([item(1, "a@example.com")])
    ledger.register([item(2, "b@example.com"), item(3, "c@example.com")])
    with ledger.db.engine.connect() as conn:
        stamps = (
            conn.execute(
                text(
                    "SELECT created_at FROM bridge_registrations UNION ALL "
                    "SELECT at FROM bridge_events"
                )
            )
            .scalars()
            .all()
        )
    # SQLAlchemy's SQLite DATETIME: always six digits of microseconds, a space, no zone
    assert stamps and all(len(s) == 26 and s[10] == " " and s[19] == "." for s in stamps)


def test_each_statement_runs_its_own_sql_after_others_are_dropped(db_url):
    # Statements built, run once and dropped: a new one may live where an old one did.
    database = Database(db_url)
    try:
        with database.read() as conn:
            for n in range(200):
                statement = select(literal_column(str(n)))
                assert run(conn, statement, {}) == [(n,)]
                del statement
                if n % 20 == 0:
                    gc.collect()
    finally:
        database.dispose()


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 256, 257, 500, 1000, 1001])
def test_a_list_for_in_goes_in_pages_of_few_sizes_each_value_once_in_order(count):
    values = list(range(count))
    pages = list(in_pages(values))
    assert [v for page in pages for v in page] == values
    assert all(len(page) in (256, 64, 16) for page in pages[:-1])
    assert all(0 < len(page) <= 256 for page in pages)


def test_write_queue_is_reentrant_and_serialises_threads(db_url):
    if not db_url.startswith("sqlite"):
        pytest.skip("the write queue is SQLite's")
    database = Database(db_url)
    try:
        inside = []
        overlap = []

        def work(_n):
            for _ in range(20):
                with database.write():
                    with database._queue.hold():  # re-entrant: no wait in the same thread
                        pass
                    inside.append(1)
                    if len(inside) > 1:
                        overlap.append(1)
                    inside.pop()

        run_threads(work, 4)
        assert not overlap
    finally:
        database.dispose()


def test_a_batch_mixing_new_and_registered_tokens_gets_the_right_ids(client, auth):
    first = client.post(
        "/register",
        headers=auth,
        json={
            "tokens": [
                {"token": 1, "email": "one@example.com"},
                {"token": 3, "email": "three@example.com"},
            ]
        },
    )
    old = {r["token"]: r["id"] for r in first.get_json()["registrations"]}
    response = client.post(
        "/register",
        headers=auth,
        json={
            "tokens": [
                {"token": 1, "email": "one@example.com"},
                {"token": 2, "email": "two@example.com"},
                {"token": 3, "email": "three@example.com"},
                {"token": 4, "email": "four@example.com"},
                {"token": 2, "email": "two@example.com"},
            ]
        },
    )
    assert response.status_code == 202
    regs = response.get_json()["registrations"]
    assert [(r["token"], r["duplicate"]) for r in regs] == [
        ("1", True),
        ("2", False),
        ("3", True),
        ("4", False),
        ("2", True),
    ]
    assert regs[0]["id"] == old["1"] and regs[2]["id"] == old["3"]
    assert regs[4]["id"] == regs[1]["id"]
    # every id answered is the ledger's own row of that token
    for reg in regs:
        assert [item["id"] for item in rows(client, auth, token=reg["token"])] == [reg["id"]]


def test_every_connection_of_the_ledger_runs_in_wal_mode(ledger, db_url):
    """The bridge's own flush of the WAL makes every commit before it durable: every
    SQLite connection of the ledger (the group commit's kept one too) runs in WAL mode."""
    if not db_url.startswith("sqlite"):
        pytest.skip("journal_mode is SQLite's; a PostgreSQL commit is durable when it returns")
    ledger.register([item(1, "a@b.co")], None)  # the group commit's connection
    with ledger.db.read() as conn, ledger.db.write() as other:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert other.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def _wal_flushes(monkeypatch, db_url, on_flush):
    """Call ``on_flush()`` whenever the SQLite WAL of ``db_url`` is flushed to disk."""
    wal = db_url.split("///", 1)[1] + "-wal"
    real = os.fdatasync

    def spy(fd):
        if os.readlink(f"/proc/self/fd/{fd}") == wal:
            on_flush()
        return real(fd)

    monkeypatch.setattr(os, "fdatasync", spy)


def test_an_acknowledged_registration_was_flushed_to_disk_first(client, auth, db_url, monkeypatch):
    if not db_url.startswith("sqlite") or not os.path.exists("/proc/self/fd"):
        pytest.skip("the WAL flush is SQLite's (and this test reads /proc)")
    path = db_url.split("///", 1)[1]
    flushed_with_it = []

    def check():
        with sqlite3.connect(path) as conn:
            flushed_with_it.append(
                conn.execute(
                    "SELECT count(*) FROM bridge_registrations WHERE token = '4242'"
                ).fetchone()[0]
            )

    _wal_flushes(monkeypatch, db_url, check)
    response = client.post("/register", headers=auth, json={"token": 4242, "email": "a@b.co"})
    assert response.status_code == 202
    # the commit was in the WAL when it was flushed, and both before the answer
    assert 1 in flushed_with_it


def test_a_registration_whose_flush_failed_is_not_acknowledged(client, auth, db_url, monkeypatch):
    if not db_url.startswith("sqlite") or not os.path.exists("/proc/self/fd"):
        pytest.skip("the WAL flush is SQLite's (and this test reads /proc)")

    def fail():
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patch:
        _wal_flushes(patch, db_url, fail)
        response = client.post("/register", headers=auth, json={"token": 77, "email": "a@b.co"})
    assert_error_shape(response, 500)
    # The row may be there (committed, not known to be on disk): sending it again is safe.
    again = client.post("/register", headers=auth, json={"token": 77, "email": "a@b.co"})
    assert again.status_code == 202
    assert again.get_json()["registrations"][0]["duplicate"] is True
