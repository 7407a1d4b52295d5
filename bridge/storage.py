"""The write fast path behind :class:`bridge.db.Database`: SQLite's engine set-up, the
write queue, the WAL flush outside the lock, and group commit.

Nothing here knows what a registration is; the ledger never sees any of it.
Each piece is kept because a paired run measured it (BENCHMARKS.md):

* **SQLite engine**: WAL mode, ``BEGIN IMMEDIATE`` for write transactions (two
  writers queue for the lock instead of failing half-way), a busy timeout.
  ``secure_delete``: what a delete or an update frees is overwritten with zeros,
  so an erased contact leaves no copy in free space (the bridge frees pages only
  when it erases or prunes the history, so this costs nothing in ordinary work); :func:`checkpoint`
  then moves the WAL into the database file and empties it. A database file and
  folder the bridge creates are its owner's only (0600, 0700); SQLite gives the
  ``-wal`` and ``-shm`` files the database file's mode. A database the bridge
  creates is in ``auto_vacuum=INCREMENTAL`` mode: what pruning the history frees
  can be given back to the file system (:mod:`bridge.ledger.pruning`).
* **Write queue**: writers of one SQLite file on this machine queue on an
  ``flock`` of ``<database>-writelock`` before ``BEGIN IMMEDIATE``. SQLite's own
  busy handler polls a held lock with sleeps of 1, 2, 5, 10 … ms, far longer
  than a write transaction; a blocked ``flock`` wakes the next writer as soon as
  the lock is let go, and the kernel lets go of it when a process dies.
* **WAL flush outside the lock**: commits run with ``synchronous=NORMAL`` and
  the writer flushes the WAL itself (``fdatasync``) after letting go of the write
  lock and before it reports the transaction done: the guarantee of
  ``synchronous=FULL`` (a commit survives a power cut), without making the next
  writer wait for the disk; one flush covers every commit made before it.
* **Group commit**: concurrent calls of one process share one transaction.
* **Statements on the driver** (:func:`run`): a few statements on the hot path of
  ``/register`` are compiled once and run on the SQLite driver's cursor; going
  through SQLAlchemy's execution machinery costs several times what SQLite needs
  for them (BENCHMARKS.md: about half the CPU of a single-token registration).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError

WRITE_OPTION = "bridge_write"  # execution option: this connection runs a write transaction


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL, or None (another database, memory, a ``file:`` URI)."""
    if not url.startswith("sqlite") or "///" not in url:
        return None
    path = url.split("///", 1)[-1].split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return os.path.abspath(path)


def sqlite_engine(url: str, flushed_by_caller: bool) -> Engine:
    """An engine for a SQLite URL: WAL, a busy timeout, ``BEGIN IMMEDIATE`` for writes.

    ``flushed_by_caller``: commits do not wait for the disk (``synchronous=NORMAL``)
    because the caller flushes the WAL itself (:meth:`WriteQueue.sync`); otherwise
    every commit does (``FULL``).
    """
    path = sqlite_path(url)
    engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
    sync = "NORMAL" if flushed_by_caller else "FULL"

    @event.listens_for(engine, "do_connect")
    def _folder(_dialect, _record, _cargs, _cparams):
        if path:  # made on first use: building an engine does no I/O
            create_private(path)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # the "begin" listener below starts them
        cursor = dbapi_connection.cursor()
        # a new database only (an existing one keeps its mode until a VACUUM): pruned
        # history's pages can go back to the file system (bridge.ledger.pruning)
        cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={sync}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        write = conn.get_execution_options().get(WRITE_OPTION)
        _driver_execute(
            conn.connection.driver_connection, "BEGIN IMMEDIATE" if write else "BEGIN", ()
        )

    return engine


def create_private(path: str) -> None:
    """The folder (0700) and an empty database file (0600) at ``path``, unless they
    exist; SQLite would make the file 0644, and its ``-wal``/``-shm`` files after it."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        os.makedirs(folder, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)  # an empty file is an empty SQLite database


def checkpoint(engine: Engine) -> bool:
    """Copy every page of the WAL into the database file and truncate the WAL to zero
    bytes (after an erase: the WAL holds the pages as they were before). False if a
    reader kept part of it (it is truncated at a later checkpoint)."""
    raw = engine.raw_connection()  # outside any transaction: one would keep the WAL
    try:
        busy, _, _ = raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        raw.close()
    return not busy


class WriteQueue:
    """An exclusive ``flock`` of ``<database>-writelock`` (re-entrant per thread), and
    the flush of the database's WAL."""

    def __init__(self, database: str):
        self.path = database + "-writelock"
        self.wal = database + "-wal"
        self._local = threading.local()

    @contextmanager
    def hold(self) -> Iterator[bool]:
        """Hold the lock; yields True for the outermost hold of this thread."""
        local = self._local
        if getattr(local, "depth", 0):
            local.depth += 1
            try:
                yield False
            finally:
                local.depth -= 1
            return
        try:  # a descriptor of its own per transaction: threads exclude each other too
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:  # e.g. a read-only directory: SQLite's busy timeout alone
            yield True
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            local.depth = 1
            try:
                yield True
            finally:
                local.depth = 0
        finally:
            os.close(fd)  # lets go of the lock

    def sync(self) -> None:
        """Make every transaction committed so far durable: a flush of the WAL."""
        try:
            fd = os.open(self.wal, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # checkpointed and removed on close: SQLite synced the database file
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)


class GroupCommit:
    """Concurrent calls of one process share one write transaction.

    Every write transaction has a fixed cost (the write lock, the commit, a flush
    to disk) far above what one small call adds to it. Calls of concurrent
    threads queue up; one thread at a time, the leader, opens a transaction
    (``transaction()``, yielding a connection) and runs ``work(conn, items)`` for
    its call and every call queued by the time it holds the lock. Once
    committed it wakes the oldest call still queued, whose thread leads the
    next transaction while this one is flushed (``sync()``); then it hands each
    call its results. Alone, a call runs at once. If a shared transaction fails,
    each of its calls is retried alone, so one call's failure is never
    another's; if the flush fails, every call of the batch fails with it.
    """

    MAX_ITEMS = 5000  # items per shared transaction

    def __init__(
        self,
        transaction: Callable[[], Any],
        sync: Callable[[], None],
        work: Callable[[Any, list], list],
    ):
        self._transaction = transaction  # a context manager: the write transaction
        self._sync = sync
        self._work = work  # work(conn, items) -> one result per item
        self._lock = threading.Lock()
        self._queue: deque[_Call] = deque()
        self._busy = False  # a leader is running (or about to run) a transaction

    def run(self, items: list) -> list:
        """``work(conn, items)`` committed and on disk, maybe in one transaction with
        other threads' calls; its results."""
        call = _Call(items)
        with self._lock:
            if self._busy:
                self._queue.append(call)
                lead = False
            else:
                self._busy = lead = True
        if not lead:
            call.wake.acquire()  # released when the call is done or is to lead
        if not call.done:
            self._lead(call)
        if call.error is not None:
            raise call.error
        return call.results

    def _lead(self, call: _Call) -> None:
        batch = [call]
        try:
            try:
                self._transact(batch)
            finally:
                for waiting in batch:
                    if not waiting.done:  # only after a BaseException
                        waiting.error, waiting.done = RuntimeError("not committed"), True
                # The next transaction may start while this one's flush is under way.
                with self._lock:
                    nxt = self._queue.popleft() if self._queue else None
                    if nxt is None:
                        self._busy = False
                if nxt is not None:
                    nxt.wake.release()  # not done: its thread leads the next transaction
            if any(c.error is None for c in batch):
                try:
                    self._sync()
                except Exception as exc:  # the disk refused the flush: not stored for sure
                    for c in batch:
                        if c.error is None:
                            c.error = exc
        finally:
            for waiting in batch[1:]:
                waiting.wake.release()

    def _transact(self, batch: list[_Call]) -> None:
        """One transaction for ``batch`` and every call queued by the time it holds the
        write lock; on failure, one transaction per call."""
        call = batch[0]
        try:
            with self._transaction() as conn:
                with self._lock:  # the batch is made once the write lock is ours
                    size = len(call.items)
                    while self._queue and size + len(self._queue[0].items) <= self.MAX_ITEMS:
                        batch.append(self._queue.popleft())
                        size += len(batch[-1].items)
                results = self._work(conn, [item for c in batch for item in c.items])
        except Exception as exc:
            if len(batch) == 1:
                call.error, call.done = exc, True
            else:
                for c in batch:  # on their own: a bad call fails alone
                    self._alone(c)
            return
        start = 0
        for c in batch:
            c.results, c.done = results[start : start + len(c.items)], True
            start += len(c.items)

    def _alone(self, call: _Call) -> None:
        try:
            with self._transaction() as conn:
                call.results = self._work(conn, call.items)
        except Exception as exc:
            call.error = exc
        call.done = True


class _Call:
    __slots__ = ("items", "results", "error", "done", "wake")

    def __init__(self, items: list):
        self.items = items
        self.results: list = []
        self.error: BaseException | None = None
        self.done = False
        self.wake = threading.Lock()
        self.wake.acquire()


# --- statements on the driver ---------------------------------------------------------------


def _driver_execute(raw: sqlite3.Connection, sql: str, values, many: bool = False):
    """``sql`` on the sqlite3 connection, errors wrapped as SQLAlchemy wraps them (without
    the parameters: they hold tokens and identifiers)."""
    try:
        return raw.executemany(sql, values) if many else raw.execute(sql, values)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, (), exc, sqlite3.Error, hide_parameters=True) from exc


def _last_value_memo(process, cell: list):
    """A bind processor that remembers its last timestamp in ``cell``: the timestamps of a
    row, and of a batch, are one value, so the UTC conversion and formatting run once,
    not once per column and row. Columns of one type share a cell (their processing is
    the same), so a request's timestamps convert once across its statements."""
    if process is None:
        return None

    def memo(value):
        seen, out = cell[0]  # (input, output), replaced whole: safe between threads
        if value is seen:
            return out
        out = process(value)
        if isinstance(value, datetime):  # immutable, kept alive by the cell: its identity
            cell[0] = (value, out)  # cannot be another value's
        return out

    return memo


_MEMO_CELLS: dict[type, list] = {}  # a column type -> the last value it converted


class _Compiled:
    """A Core statement compiled for SQLite with one set of parameter names: its SQL and
    each positional parameter's name and bind processor (UTC timestamps, JSON). Every
    parameter must be given (no ``IN`` list of constants: write those in the SQL)."""

    def __init__(self, stmt, dialect, keys: frozenset):
        compiled = stmt.compile(dialect=dialect, column_keys=sorted(keys))
        binds = [compiled.binds[name] for name in compiled.positiontup or []]
        missing = [b.key for b in binds if b.key not in keys or b.expanding]
        if missing:
            raise ValueError(f"parameters {missing} are not given one value each")
        self.sql = compiled.string
        self.returns_rows = bool(compiled.returning) or stmt.is_select
        self.params = [
            (
                b.key,
                _last_value_memo(
                    b.type.dialect_impl(dialect).bind_processor(dialect),
                    _MEMO_CELLS.setdefault(type(b.type), [(object(), None)]),
                ),
            )
            for b in binds
        ]
        # "INSERT ... VALUES (?, ..., ?) <rest>": many rows go in multi-row statements
        head, sep, tail = self.sql.partition(" VALUES (")
        group, close, rest = tail.partition(")")
        self._multi = (
            (head + sep[:-1], sep[-1] + group + close, rest)
            if (stmt.is_insert and sep and close and set(group) <= set("?, "))
            else None
        )
        self._multi_sql: dict[int, str] = {}

    def values(self, row: dict) -> list:
        return [row[key] if process is None else process(row[key]) for key, process in self.params]

    def pages(self, rows: list[dict]) -> Iterator[tuple[str, list]]:
        """(SQL, values) of multi-row INSERTs for ``rows``, a page (:func:`page_bounds`)
        each."""
        for start, size in page_bounds(len(rows)):
            sql = self._multi_sql.get(size)
            if sql is None:
                head, group, rest = self._multi
                sql = self._multi_sql.setdefault(size, f"{head} {', '.join([group] * size)}{rest}")
            yield sql, [v for row in rows[start : start + size] for v in self.values(row)]


def page_bounds(count: int) -> Iterator[tuple[int, int]]:
    """(start, size) of the pages that cover ``count`` items: 256, 64 or 16 at a time and
    a last one under 16, so that few statement shapes are ever prepared."""
    start = 0
    while start < count:
        size = next((p for p in (256, 64, 16) if p <= count - start), count - start)
        yield start, size
        start += size


# A statement -> {its parameter names -> it compiled}. Keyed on the statement itself,
# weakly: an entry lives as long as its statement (a statement dropped by its caller
# takes its SQL with it; an ``id()`` could be another statement's afterwards).
_COMPILED: weakref.WeakKeyDictionary[Any, dict[frozenset, _Compiled]] = weakref.WeakKeyDictionary()


def run(conn, stmt, params: dict | list[dict]) -> list[tuple] | None:
    """Execute ``stmt`` with ``params`` (one dict, or a list of dicts with the same keys for
    many rows) in the transaction of the Core connection ``conn``; the rows it returns
    (all of them, for many rows with RETURNING), or None. On SQLite it runs on the
    driver (many rows: one ``executemany``, or with RETURNING one statement per row)
    and returns plain tuples, unprocessed: use it for statements whose result columns
    are plain strings and integers. Elsewhere it is ``conn.execute``."""
    if conn.dialect.name != "sqlite":
        result = conn.execute(stmt, params)
        return [tuple(r) for r in result] if result.returns_rows else None
    many = isinstance(params, list)
    if many and not params:
        return None
    keys = frozenset(params[0] if many else params)
    shapes = _COMPILED.get(stmt)
    if shapes is None:
        shapes = _COMPILED.setdefault(stmt, {})
    compiled = shapes.get(keys)
    if compiled is None:
        compiled = shapes.setdefault(keys, _Compiled(stmt, conn.dialect, keys))
    raw = conn.connection.driver_connection
    if not many:
        cursor = _driver_execute(raw, compiled.sql, compiled.values(params))
        return cursor.fetchall() if cursor.description is not None else None
    if compiled._multi is not None and len(params) > 1:  # one SQLite step per page of rows
        found = [
            r
            for sql, values in compiled.pages(params)
            for r in _driver_execute(raw, sql, values).fetchall()
        ]
        return found if compiled.returns_rows else None
    if not compiled.returns_rows:
        _driver_execute(raw, compiled.sql, [compiled.values(row) for row in params], many=True)
        return None
    return [
        found
        for row in params
        for found in _driver_execute(raw, compiled.sql, compiled.values(row)).fetchall()
    ]
