"""The baselines of ``bench_register.py``: a bare Flask POST handler.

``gunicorn bench.bare_app:app`` serves ``POST /register`` answering 202 and
doing nothing else. With ``BENCH_BARE_SQLITE=/path/db.sqlite3`` the handler
also inserts the request body as one row into a SQLite WAL database (the "one
SQLite insert" reference figure of the issue), as ``BENCH_BARE_SYNC`` says:

* ``FULL`` (default) or ``NORMAL``: one transaction per request, SQLite's
  ``synchronous`` setting as named (``NORMAL`` is not durable: the commit is
  not flushed to disk before the 202);
* ``GROUP``: the floor of a durable write, done as the bridge does it with
  nothing else around it: ``synchronous=NORMAL``, concurrent requests of a
  process share one transaction (group commit), writers of both workers take
  turns on an ``flock``, and the WAL is flushed (``fdatasync``) after the lock
  is let go and before any request of the transaction is answered.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading

from flask import Flask, request

app = Flask(__name__)
_DB = os.environ.get("BENCH_BARE_SQLITE")
_SYNC = os.environ.get("BENCH_BARE_SYNC", "FULL")
_local = threading.local()


def _connect() -> sqlite3.Connection:
    conn = sqlite3.connect(_DB, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'NORMAL' if _SYNC == 'GROUP' else _SYNC}")
    conn.execute("CREATE TABLE IF NOT EXISTS hits (id INTEGER PRIMARY KEY, body BLOB)")
    return conn


def _conn() -> sqlite3.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = _connect()
    return conn


class _Group:
    """Group commit: the first waiting thread commits everything queued so far."""

    def __init__(self):
        self.cond = threading.Condition()
        self.queue: list[tuple[bytes]] = []
        self.busy = False
        self.started = self.finished = 0  # transactions begun / flushed
        self.conn: sqlite3.Connection | None = None
        self.error: BaseException | None = None  # a failed transaction fails every later call

    def insert(self, body: bytes) -> None:
        with self.cond:
            self.queue.append((body,))
            mine = self.started + 1  # the first transaction to begin after this
            while self.busy and self.finished < mine:
                self.cond.wait()
            if self.error is not None:
                raise self.error
            if self.finished >= mine:
                return
            self.busy = True
            rows, self.queue = self.queue, []
            self.started += 1
        try:
            if self.conn is None:
                self.conn = _connect()
            lock = os.open(_DB + "-writelock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany("INSERT INTO hits (body) VALUES (?)", rows)
                self.conn.execute("COMMIT")
            finally:
                os.close(lock)
            wal = os.open(_DB + "-wal", os.O_RDONLY)
            try:
                os.fdatasync(wal)
            finally:
                os.close(wal)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            with self.cond:
                self.busy = False
                self.finished += 1
                self.cond.notify_all()


_group = _Group() if _DB and _SYNC == "GROUP" else None


@app.post("/register")
def register():
    if _group is not None:
        _group.insert(request.get_data())
    elif _DB:
        _conn().execute("INSERT INTO hits (body) VALUES (?)", (request.get_data(),))
    return "", 202
