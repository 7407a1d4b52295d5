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
  process share one transaction (group commit, the batch formed once the
  leader holds the write lock), writers of both workers take turns on an
  ``flock``, and the WAL is flushed (``fdatasync``) after the lock is let go
  and before any request of the transaction is answered, while the next
  transaction may already run.
"""

from __future__ import annotations

import collections
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


class _Call:
    __slots__ = ("body", "done", "error", "wake")

    def __init__(self, body: bytes):
        self.body, self.done, self.error = body, False, None
        self.wake = threading.Lock()
        self.wake.acquire()  # released when the call is done or is to lead


class _Group:
    """Group commit pipelined as ``bridge.storage.GroupCommit`` does it: one thread
    at a time (the leader) takes the write lock, then commits every call queued by
    then; it hands the lead to the oldest call still queued before it flushes, and
    wakes its batch once the flush is done."""

    def __init__(self):
        self.lock = threading.Lock()
        self.queue: collections.deque[_Call] = collections.deque()
        self.busy = False
        self.conn: sqlite3.Connection | None = None

    def insert(self, body: bytes) -> None:
        call = _Call(body)
        with self.lock:
            if self.busy:
                self.queue.append(call)
                lead = False
            else:
                self.busy = lead = True
        if not lead:
            call.wake.acquire()
        if not call.done:
            self._lead(call)
        if call.error is not None:
            raise call.error

    def _lead(self, call: _Call) -> None:
        batch = [call]
        try:
            try:
                self._commit(batch)
            except Exception as exc:
                for c in batch:
                    c.error = exc
            finally:
                with self.lock:
                    nxt = self.queue.popleft() if self.queue else None
                    if nxt is None:
                        self.busy = False
                if nxt is not None:
                    nxt.wake.release()  # leads the next transaction during this flush
            if call.error is None:
                try:
                    _flush(_DB + "-wal")
                except Exception as exc:
                    for c in batch:
                        c.error = exc
        finally:
            for c in batch:
                c.done = True
            for c in batch[1:]:
                c.wake.release()

    def _commit(self, batch: list[_Call]) -> None:
        if self.conn is None:
            self.conn = _connect()
        conn = self.conn
        lock = os.open(_DB + "-writelock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with self.lock:  # the batch: every call queued while the lock was awaited
                batch.extend(self.queue)
                self.queue.clear()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT INTO hits (body) VALUES (?)", [(c.body,) for c in batch])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
        finally:
            os.close(lock)


def _flush(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # checkpointed and removed: SQLite synced the database file
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


_group = _Group() if _DB and _SYNC == "GROUP" else None


@app.post("/register")
def register():
    if _group is not None:
        _group.insert(request.get_data())
    elif _DB:
        _conn().execute("INSERT INTO hits (body) VALUES (?)", (request.get_data(),))
    return "", 202
