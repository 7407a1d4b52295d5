"""The bridge's own database: engine, sessions and Alembic migrations.

The bridge never touches the host application's database: it builds its own
engine from ``BRIDGE_DATABASE_URL``. SQLite runs in WAL mode with a busy
timeout, and write transactions start with ``BEGIN IMMEDIATE`` so that two
writers queue for the lock instead of failing half-way. Schema changes only
come from the Alembic revisions in ``migrations/``.

Writers of one SQLite file on this machine also queue on an ``flock`` of a
``<database>-writelock`` file beside it before ``BEGIN IMMEDIATE``: SQLite's
own busy handler polls a held lock with sleeps of 1, 2, 5, 10, ... ms, far
longer than a write transaction lasts, so under load (two gunicorn workers and
a delivery worker) writers spent most of their time asleep. A blocked
``flock`` wakes the next writer as soon as the lock is let go, and the kernel
lets go of it when a process dies.

Durability on SQLite: a transaction of :meth:`Database.write` (and
:meth:`Database.write_connection`) is on disk when the block returns, as with
``synchronous=FULL``, but the flush of the WAL happens after the write lock is
let go (:meth:`Database.sync`), so the next writer does not wait for the disk
and one flush serves every commit made before it, whichever process made it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
VERSION_TABLE = "bridge_alembic_version"
_WRITE = "bridge_write"


class SchemaBehind(RuntimeError):
    """The database's schema is older than the code: run ``bridge migrate``."""


def make_engine(url: str, wal_synced_by_caller: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and explicit BEGINs.

    ``wal_synced_by_caller``: SQLite commits do not flush the WAL to disk
    (``synchronous=NORMAL``); the caller does, after letting go of the write lock
    (see :meth:`Database.write`). Otherwise every commit flushes it (``FULL``).
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1] if "///" in url else ""
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        sync = "NORMAL" if wal_synced_by_caller else "FULL"

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record):
            # Let SQLAlchemy's "begin" event below decide how transactions start.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL may lose the last commits on a power cut or OS crash,
            # and a 2xx promises the registration is durably stored: with NORMAL, the
            # caller flushes the WAL itself before it says a transaction is done.
            cursor.execute(f"PRAGMA synchronous={sync}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            sql = "BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN"
            # Straight on the driver: a full SQLAlchemy execution of BEGIN costs more
            # than the rest of a small write transaction. Errors are wrapped as usual.
            _driver(conn.connection.driver_connection, sql)

        return engine
    # hide_parameters: bound values (tokens, emails, phones) stay out of error messages
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                         hide_parameters=True)


class _WriteQueue:
    """An exclusive ``flock`` of ``<database>-writelock``, re-entrant per thread (see
    the top)."""

    def __init__(self, database: str):
        self.database = database
        self.path = database + "-writelock"
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


# Rows per multi-row statement: a few fixed sizes and any size under 16, so that at
# most 18 statements are ever built and prepared (memory stays flat whatever the
# batch sizes) and a small batch is one statement.
PAGES = (256, 64, 16)


def pages(items: list) -> Iterator[list]:
    """``items`` cut into consecutive pages of the sizes of :data:`PAGES` (the largest
    that fits) and a last one under 16."""
    start = 0
    while start < len(items):
        size = next((p for p in PAGES if p <= len(items) - start), len(items) - start)
        yield items[start : start + size]
        start += size


def _shared_memo(sqltype, dialect, memos: dict):
    """The bind processor of ``sqltype`` remembering its last input, shared (through
    ``memos``, one engine's) by every column of that type: the timestamps of a row and
    of a batch are one value, so the UTC conversion and formatting run once, not once
    per column and row."""
    key = (type(sqltype), repr(sqltype))
    if key not in memos:
        process = sqltype.dialect_impl(dialect).bind_processor(dialect)
        memos[key] = None if process is None else _last_value_memo(process)
    return memos[key]


def _last_value_memo(process):
    cell = [(object(), None)]  # (input, output), replaced whole: safe between threads

    def memo(value):
        seen, out = cell[0]
        if value is seen:
            return out
        out = process(value)
        if isinstance(value, datetime):  # immutable, and kept alive by the cell: its
            cell[0] = (value, out)       # identity cannot be another value's
        return out

    return memo


class _DriverInsert:
    """A Core INSERT compiled once for one set of column keys, run on the driver's cursor.

    SQLAlchemy's execution machinery costs several times what SQLite itself needs
    for a one-row insert; this keeps the compiled SQL and the columns' bind
    processors (UTC timestamps, JSON) and hands the values straight to sqlite3.
    """

    def __init__(self, stmt, keys: frozenset, dialect, memos: dict):
        compiled = stmt.compile(dialect=dialect, column_keys=sorted(keys))
        names = compiled.positiontup or []
        binds = [compiled.binds[name] for name in names]
        # Usable only if every parameter is one of the given values (no Python-side
        # default that SQLAlchemy would have to compute).
        self.usable = bool(names) and all(b.key in keys for b in binds)
        self.sql = compiled.string
        self.params = [(b.key, _shared_memo(b.type, dialect, memos)) for b in binds]
        # "INSERT ... VALUES (?, ..., ?) <rest>": the multi-row form repeats the group.
        head, sep, tail = self.sql.partition(" VALUES (")
        group, close, rest = tail.partition(")")
        self._multi = (head + sep[:-1], sep[-1] + group + close, rest) if (
            sep and close and set(group) <= set("?, ")) else None
        self._multi_sql: dict[int, str] = {}

    def values(self, row: dict) -> list:
        return [row[key] if proc is None else proc(row[key]) for key, proc in self.params]

    def _pages(self, rows: list[dict]) -> Iterator[tuple[str, list, int]]:
        """(SQL, values, number of rows) of the statements that insert ``rows``."""
        if self._multi is None:
            for row in rows:
                yield self.sql, self.values(row), 1
            return
        for chunk in pages(rows):
            size = len(chunk)
            sql = self._multi_sql.get(size)
            if sql is None:
                head, group, rest = self._multi
                sql = self._multi_sql.setdefault(
                    size, f"{head} {', '.join([group] * size)}{rest}")
            yield sql, [v for row in chunk for v in self.values(row)], size

    def _run(self, raw: sqlite3.Connection, sql: str, values: list, fetch: bool = False):
        # An error shows the first row's values only.
        return _driver(raw, sql, values, values[:len(self.params)], fetch)

    def execute_rows(self, raw: sqlite3.Connection, rows: list[dict]) -> list[tuple]:
        """Many rows in multi-row statements; the rows they return (RETURNING)."""
        out: list[tuple] = []
        for sql, values, _n in self._pages(rows):
            out.extend(self._run(raw, sql, values, fetch=True))
        return out

    def execute_all(self, raw: sqlite3.Connection, rows: list[dict]) -> None:
        """Many rows in multi-row statements, nothing returned: one step of SQLite per
        statement (``executemany`` takes one per row, each letting go of the GIL)."""
        for sql, values, _n in self._pages(rows):
            self._run(raw, sql, values)

    def execute_consecutive(self, raw: sqlite3.Connection, rows: list[dict]) -> list[int]:
        """Insert ``rows`` (every one must go in) and return their new rowids, in order.

        The rows of one INSERT statement on a table with an integer primary key get
        consecutive rowids, one above the table's largest, in the order given; so
        the last rowid and the number of rows tell them all, without fetching a
        RETURNING row at a time. Checked: a statement that did not insert every one
        of its rows is an error."""
        ids: list[int] = []
        for sql, values, n in self._pages(rows):
            before = raw.total_changes
            cursor = self._run(raw, sql, values)
            if raw.total_changes - before != n:
                raise RuntimeError(f"inserted {raw.total_changes - before} of {n} rows")
            last = cursor.lastrowid
            ids.extend(range(last - n + 1, last + 1))
        return ids


def _raw(conn) -> sqlite3.Connection:
    """The sqlite3 connection under ``conn`` (a Core connection or the driver's own)."""
    return conn if isinstance(conn, sqlite3.Connection) else conn.connection.driver_connection


def _driver(raw: sqlite3.Connection, sql: str, values=(), shown=(), fetch: bool = False):
    """``sql`` run on the sqlite3 connection ``raw``: its cursor, or (``fetch``) all its
    rows; errors wrapped as SQLAlchemy wraps them, with the parameters ``shown``."""
    try:
        cursor = raw.execute(sql, values)
        return cursor.fetchall() if fetch else cursor
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, shown, exc, sqlite3.Error) from exc


def _write_queue(url: str) -> _WriteQueue | None:
    if not url.startswith("sqlite") or "///" not in url:
        return None
    path = url.split("///", 1)[-1].split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return _WriteQueue(os.path.abspath(path))


class Database:
    """Sessions on the bridge's engine. ``write()`` commits, ``read()`` never does."""

    def __init__(self, url: str):
        self.url = url
        self._queue = _write_queue(url)
        # SQLite file: commits leave the WAL flush to sync(), after the write lock.
        self._wal = self._queue.database + "-wal" if self._queue is not None else None
        self.engine = make_engine(url, wal_synced_by_caller=self._wal is not None)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._driver_inserts: dict[tuple[int, frozenset], tuple[Any, _DriverInsert]] = {}
        self._memos: dict[tuple, Any] = {}  # bind processors of _DriverInsert, by type
        self._raw: Any = None  # the pooled connection of write_connection() (SQLite)
        self._raw_lock = threading.Lock()
        self._inherited: list = []
        # A forked child (gunicorn --preload) must not reuse the parent's connections.
        ref = weakref.ref(self)

        def _after_fork() -> None:
            db = ref()
            if db is not None:
                db.engine.dispose(close=False)
                db._driver_inserts.clear()
                # The parent's connection: kept (never used, nor closed, nor collected).
                db._inherited.append(db._raw)
                db._raw = None
                db._raw_lock = threading.Lock()

        os.register_at_fork(after_in_child=_after_fork)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that takes the write lock up front and commits on success;
        when the block is left without an error, the commit is on disk."""
        if self._queue is None:
            with self._write() as session:
                yield session
            return
        with self._queue.hold() as outermost, self._write() as session:
            yield session
        if outermost:
            self.sync()

    def sync(self) -> None:
        """Make every transaction committed so far durable (SQLite files: a flush of the
        WAL; nothing to do elsewhere).

        Commits to a SQLite file run with ``synchronous=NORMAL``: they write the WAL
        but do not wait for the disk, so the write lock is held only for the work.
        This flush, after the lock is let go, is what ``synchronous=FULL`` would do
        before letting go of it: once it returns, the commit survives a power cut.
        One flush covers every commit made before it, by any process, so writers of
        several processes share them. (Other connections may read a commit before it
        is flushed; nobody is told it is stored before it is.)
        """
        if self._wal is None:
            return
        try:
            fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # checkpointed and removed on close: SQLite synced the database file
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    @contextmanager
    def write_connection(self, defer_sync: bool = False
                         ) -> Iterator[Connection | sqlite3.Connection]:
        """Like :meth:`write`, for the hot path (``Ledger.register``) that runs only Core
        statements: no ORM session to set up and tear down.

        On SQLite it yields the driver's own ``sqlite3.Connection``, one kept open for
        these transactions (a SQLAlchemy connection, its pool check-out and its events
        cost more than SQLite needs for a small insert); the statements go through
        :meth:`insert_rows` and :meth:`insert_many`, which take either kind, and the
        SQLite-only :meth:`insert_consecutive` and :meth:`fetch_driver`. Elsewhere it
        yields a Core connection. Commits on success.
        ``defer_sync``: the caller calls :meth:`sync` itself before it reports the
        transaction done (so that it can let another transaction start first).
        """
        if self._queue is None:
            with self.engine.connect() as conn:
                conn = conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    yield conn
            return
        with self._raw_lock, self._queue.hold() as outermost:
            raw = self._raw_writer()
            _driver(raw, "BEGIN IMMEDIATE")
            try:
                yield raw
                _driver(raw, "COMMIT")
            except BaseException:
                if raw.in_transaction:
                    raw.rollback()
                raise
        if outermost and not defer_sync:
            self.sync()

    def _raw_writer(self) -> sqlite3.Connection:
        """The driver connection of :meth:`write_connection`, from the engine's pool (so
        it has the same pragmas) and kept checked out; a forked child starts afresh
        (``__init__``'s fork hook)."""
        if self._raw is None:
            self._raw = self.engine.raw_connection()
        return self._raw.driver_connection

    def insert_one(self, conn, stmt, row: dict) -> list[tuple]:
        """Run a Core INSERT (maybe with RETURNING) for one row; its returned rows.

        On SQLite the statement goes straight to the driver (see ``_DriverInsert``);
        elsewhere, or if that cannot take it, through ``conn.execute``.
        """
        driver = self._driver_insert(stmt, row)
        if driver is not None:
            return driver.execute_rows(_raw(conn), [row])
        result = conn.execute(stmt, row)
        return [tuple(r) for r in result] if result.returns_rows else []

    def insert_rows(self, conn, stmt, rows: list[dict]) -> list[tuple]:
        """:meth:`insert_one` for many rows with the same keys; all their returned rows.

        On SQLite as few multi-row statements on the driver; elsewhere one
        ``conn.execute`` (SQLAlchemy's "insertmanyvalues" for RETURNING)."""
        if not rows:
            return []
        driver = self._driver_insert(stmt, rows[0])
        if driver is not None and all(r.keys() == rows[0].keys() for r in rows):
            return driver.execute_rows(_raw(conn), rows)
        if len(rows) == 1:
            return self.insert_one(conn, stmt, rows[0])
        result = conn.execute(stmt, rows)
        return [tuple(r) for r in result] if result.returns_rows else []

    def insert_many(self, conn, stmt, rows: list[dict]) -> None:
        """Run a Core INSERT without RETURNING for rows that all have the same keys;
        on SQLite as few multi-row statements on the driver (see ``_DriverInsert``)."""
        driver = self._driver_insert(stmt, rows[0]) if rows else None
        if driver is not None and all(r.keys() == rows[0].keys() for r in rows):
            driver.execute_all(_raw(conn), rows)
        elif rows:
            conn.execute(stmt, rows)

    def insert_consecutive(self, conn: sqlite3.Connection, stmt, rows: list[dict]
                           ) -> list[int]:
        """SQLite, inside a write transaction: insert ``rows`` (same keys, none may be
        refused) with a plain Core INSERT; their new ids in order (see
        ``_DriverInsert.execute_consecutive``)."""
        if not rows:
            return []
        driver = self._driver_insert(stmt, rows[0])
        if driver is None or any(r.keys() != rows[0].keys() for r in rows):
            raise ValueError("insert_consecutive needs SQLite and rows with the same keys")
        return driver.execute_consecutive(_raw(conn), rows)

    @staticmethod
    def fetch_driver(conn: sqlite3.Connection, sql: str, values: list) -> list[tuple]:
        """SQLite: run ``sql`` on the driver connection; its rows (errors wrapped as
        SQLAlchemy wraps them)."""
        return _driver(conn, sql, values, values[:3], fetch=True)

    def _driver_insert(self, stmt, row: dict) -> _DriverInsert | None:
        if self.engine.dialect.name != "sqlite":
            return None
        key = (id(stmt), frozenset(row))
        cached = self._driver_inserts.get(key)
        if cached is None:
            cached = self._driver_inserts[key] = (
                stmt, _DriverInsert(stmt, key[1], self.engine.dialect, self._memos))
        return cached[1] if cached[1].usable else None

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._sessions() as session:
            session.connection(execution_options={_WRITE: True})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def read(self) -> Iterator[Session]:
        # Closing (not rolling back) keeps loaded objects readable after the block.
        with self._sessions() as session:
            yield session

    def dispose(self) -> None:
        with self._raw_lock:
            if self._raw is not None:
                self._raw.close()  # back to the pool, which closes it below
            self._raw = None
        self.engine.dispose()


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def migrate(url: str, engine: Engine | None = None) -> tuple[str | None, str]:
    """Apply every pending migration; safe to run again. Returns (before, after)."""
    owned = engine is None
    engine = engine or make_engine(url)
    try:
        before = current_revision(engine)
        cfg = alembic_config(url)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        return before, current_revision(engine)
    finally:
        if owned:
            engine.dispose()


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaBehind` unless the database is at the head revision."""
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        raise SchemaBehind(
            f"the bridge database schema is at {current or 'nothing (empty database)'}, "
            f"this code needs {head}: run `flask --app app bridge migrate` "
            "(or `make migrate`) first"
        )
