"""Migrations that change data, not only the schema: what they keep."""

from __future__ import annotations

import sqlite3

import pytest
from alembic import command
from sqlalchemy import text

from bridge.db import alembic_config, head_revision, make_engine, migrate
from tests.helpers import register, rows


def test_an_erased_registrations_id_is_never_given_again(client, auth, runner):
    first = register(client, auth, {"token": 1001, "email": "ann@example.com"})[0]["id"]
    newest = register(client, auth, {"token": 1002, "email": "bob@example.com"})[0]["id"]
    erased = runner.invoke(args=["bridge", "erase", "--email", "bob@example.com", "--yes"])
    assert erased.exit_code == 0, erased.output
    again = register(client, auth, {"token": 1003, "email": "cleo@example.com"})[0]["id"]
    assert again not in (first, newest) and again > newest
    assert [r["id"] for r in rows(client, auth)] == [again, first]


def test_upgrading_an_0003_sqlite_database_keeps_rows_links_and_duplicate_suppression(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = make_engine(url)
    cfg = alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        conn.execute(
            text(
                "INSERT INTO bridge_registrations (id, token, email, matched_by, match_value, "
                "state, attempts, created_at, updated_at) VALUES "
                "(7, '55', 'a@b.co', 'email', 'a@b.co', 'delivered', 1, '2026-11-01 00:00:00', "
                "'2026-11-01 00:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO bridge_events (at, registration_id, token, kind, detail) "
                "VALUES ('2026-11-01 00:00:00', 7, '55', 'submitted', '{}')"
            )
        )
    engine.dispose()
    assert migrate(url) == ("0003", head_revision())

    path = url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        assert conn.execute(
            "SELECT id, token, state, conflict, last_seen_at FROM bridge_registrations"
        ).fetchall() == [(7, "55", "delivered", 0, "2026-11-01 00:00:00")]
        assert conn.execute("SELECT registration_id FROM bridge_events").fetchall() == [(7,)]
        # the live key is still unique among live rows only
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO bridge_registrations (token, email, matched_by, "
                "match_value, state, attempts, created_at, updated_at) VALUES ('55', "
                "'a@b.co', 'email', 'a@b.co', 'queued', 0, 'x', 'x')"
            )
        conn.execute("UPDATE bridge_registrations SET state = 'removed' WHERE id = 7")
        conn.execute(
            "INSERT INTO bridge_registrations (token, email, matched_by, match_value, "
            "state, attempts, created_at, updated_at) VALUES ('55', 'a@b.co', "
            "'email', 'a@b.co', 'queued', 0, 'x', 'x')"
        )
        conn.execute("DELETE FROM bridge_registrations WHERE id = 8")
        conn.execute(
            "INSERT INTO bridge_registrations (token, email, matched_by, match_value, "
            "state, attempts, created_at, updated_at) VALUES ('56', 'c@d.co', "
            "'email', 'c@d.co', 'queued', 0, 'x', 'x')"
        )
        assert conn.execute("SELECT max(id) FROM bridge_registrations").fetchone() == (9,)
