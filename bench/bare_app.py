"""The baselines of ``bench_register.py``: a bare Flask POST handler.

``gunicorn bench.bare_app:app`` serves ``POST /register`` answering 202 and
doing nothing else. With ``BENCH_BARE_SQLITE=/path/db.sqlite3`` the handler
also inserts one row into a SQLite WAL database per request (the
"one SQLite insert" reference figure of the issue).
"""

from __future__ import annotations

import os
import sqlite3
import threading

from flask import Flask, request

app = Flask(__name__)
_DB = os.environ.get("BENCH_BARE_SQLITE")
_local = threading.local()


def _conn() -> sqlite3.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(_DB, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={os.environ.get('BENCH_BARE_SYNC', 'FULL')}")
        conn.execute("CREATE TABLE IF NOT EXISTS hits (id INTEGER PRIMARY KEY, body BLOB)")
        _local.conn = conn
    return conn


@app.post("/register")
def register():
    if _DB:
        _conn().execute("INSERT INTO hits (body) VALUES (?)", (request.get_data(),))
    return "", 202
