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
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
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


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and explicit BEGINs."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1] if "///" in url else ""
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record):
            # Let SQLAlchemy's "begin" event below decide how transactions start.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on a power
            # cut or OS crash, and a 2xx promises the registration is durably stored.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            sql = "BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN"
            # Straight on the driver: a full SQLAlchemy execution of BEGIN costs more
            # than the rest of a small write transaction. Errors are wrapped as usual.
            try:
                conn.connection.driver_connection.execute(sql)
            except sqlite3.Error as exc:
                raise DBAPIError.instance(sql, (), exc, sqlite3.Error) from exc

        return engine
    # hide_parameters: bound values (tokens, emails, phones) stay out of error messages
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                         hide_parameters=True)


class _WriteQueue:
    """An exclusive ``flock`` of one lock file, re-entrant per thread (see the top)."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()

    @contextmanager
    def hold(self) -> Iterator[None]:
        local = self._local
        if getattr(local, "depth", 0):
            local.depth += 1
            try:
                yield
            finally:
                local.depth -= 1
            return
        try:  # a descriptor of its own per transaction: threads exclude each other too
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:  # e.g. a read-only directory: SQLite's busy timeout alone
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            local.depth = 1
            try:
                yield
            finally:
                local.depth = 0
        finally:
            os.close(fd)  # lets go of the lock


class _DriverInsert:
    """A Core INSERT compiled once for one set of column keys, run on the driver's cursor.

    SQLAlchemy's execution machinery costs several times what SQLite itself needs
    for a one-row insert; this keeps the compiled SQL and the columns' bind
    processors (UTC timestamps, JSON) and hands the values straight to sqlite3.
    """

    def __init__(self, stmt, keys: frozenset, dialect):
        compiled = stmt.compile(dialect=dialect, column_keys=sorted(keys))
        names = compiled.positiontup or []
        binds = [compiled.binds[name] for name in names]
        # Usable only if every parameter is one of the given values (no Python-side
        # default that SQLAlchemy would have to compute).
        self.usable = bool(names) and all(b.key in keys for b in binds)
        self.sql = compiled.string
        self.params = [(b.key, b.type.dialect_impl(dialect).bind_processor(dialect))
                       for b in binds]
        # "INSERT ... VALUES (?, ..., ?) <rest>": the multi-row form repeats the group.
        head, sep, tail = self.sql.partition(" VALUES (")
        group, close, rest = tail.partition(")")
        self._multi = (head + sep[:-1], sep[-1] + group + close, rest) if (
            sep and close and set(group) <= set("?, ")) else None
        self._multi_sql: dict[int, str] = {}

    def values(self, row: dict) -> list:
        return [row[key] if proc is None else proc(row[key]) for key, proc in self.params]

    # Rows per multi-row statement: a few fixed sizes and any size under 16, so that at
    # most 18 statements are ever built and prepared (memory stays flat whatever the
    # batch sizes) and a small batch is one statement.
    PAGES = (256, 64, 16)

    def execute_rows(self, conn: Connection, rows: list[dict]) -> list[tuple]:
        """Many rows in multi-row statements (RETURNING works, unlike executemany)."""
        if self._multi is None or len(rows) == 1:
            return [r for row in rows for r in self.execute(conn, row)]
        out: list[tuple] = []
        start = 0
        while start < len(rows):
            size = next((p for p in self.PAGES if p <= len(rows) - start), len(rows) - start)
            chunk = rows[start : start + size]
            start += size
            sql = self._multi_sql.get(size)
            if sql is None:
                head, group, rest = self._multi
                sql = self._multi_sql.setdefault(
                    size, f"{head} {', '.join([group] * size)}{rest}")
            values = [v for row in chunk for v in self.values(row)]
            try:
                out.extend(conn.connection.driver_connection.execute(sql, values).fetchall())
            except sqlite3.Error as exc:
                raise DBAPIError.instance(sql, values[:len(self.params)], exc,
                                          sqlite3.Error) from exc
        return out

    def execute(self, conn: Connection, row: dict) -> list[tuple]:
        values = self.values(row)
        try:
            return conn.connection.driver_connection.execute(self.sql, values).fetchall()
        except sqlite3.Error as exc:
            raise DBAPIError.instance(self.sql, values, exc, sqlite3.Error) from exc

    def executemany(self, conn: Connection, rows: list[dict]) -> None:
        params = self.params
        values = [[r[key] if proc is None else proc(r[key]) for key, proc in params]
                  for r in rows]
        try:
            conn.connection.driver_connection.executemany(self.sql, values)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(self.sql, values[:1], exc, sqlite3.Error) from exc


def _write_queue(url: str) -> _WriteQueue | None:
    if not url.startswith("sqlite") or "///" not in url:
        return None
    path = url.split("///", 1)[-1].split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return _WriteQueue(os.path.abspath(path) + "-writelock")


class Database:
    """Sessions on the bridge's engine. ``write()`` commits, ``read()`` never does."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._queue = _write_queue(url)
        self._driver_inserts: dict[tuple[int, frozenset], tuple[Any, _DriverInsert]] = {}
        # A forked child (gunicorn --preload) must not reuse the parent's connections.
        ref = weakref.ref(self)

        def _after_fork() -> None:
            db = ref()
            if db is not None:
                db.engine.dispose(close=False)
                db._driver_inserts.clear()

        os.register_at_fork(after_in_child=_after_fork)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that takes the write lock up front and commits on success."""
        if self._queue is not None:
            with self._queue.hold(), self._write() as session:
                yield session
        else:
            with self._write() as session:
                yield session

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """Like :meth:`write`, as a Core connection: no ORM session to set up and tear
        down, for the hot path (``Ledger.register``) that runs only Core statements."""
        with self._queue.hold() if self._queue is not None else nullcontext():
            with self.engine.connect() as conn:
                conn = conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    yield conn

    def insert_one(self, conn: Connection, stmt, row: dict) -> list[tuple]:
        """Run a Core INSERT (maybe with RETURNING) for one row; its returned rows.

        On SQLite the statement goes straight to the driver (see ``_DriverInsert``);
        elsewhere, or if that cannot take it, through ``conn.execute``.
        """
        driver = self._driver_insert(stmt, row)
        if driver is not None:
            return driver.execute(conn, row)
        result = conn.execute(stmt, row)
        return [tuple(r) for r in result] if result.returns_rows else []

    def insert_rows(self, conn: Connection, stmt, rows: list[dict]) -> list[tuple]:
        """:meth:`insert_one` for many rows with the same keys; all their returned rows.

        On SQLite as few multi-row statements on the driver; elsewhere one
        ``conn.execute`` (SQLAlchemy's "insertmanyvalues" for RETURNING)."""
        if not rows:
            return []
        driver = self._driver_insert(stmt, rows[0])
        if driver is not None and all(r.keys() == rows[0].keys() for r in rows):
            return driver.execute_rows(conn, rows)
        if len(rows) == 1:
            return self.insert_one(conn, stmt, rows[0])
        result = conn.execute(stmt, rows)
        return [tuple(r) for r in result] if result.returns_rows else []

    def insert_many(self, conn: Connection, stmt, rows: list[dict]) -> None:
        """Run a Core INSERT without RETURNING for rows that all have the same keys;
        on SQLite as one ``executemany`` on the driver (see ``_DriverInsert``)."""
        driver = self._driver_insert(stmt, rows[0]) if rows else None
        if driver is not None and all(r.keys() == rows[0].keys() for r in rows):
            driver.executemany(conn, rows)
        elif rows:
            conn.execute(stmt, rows)

    def _driver_insert(self, stmt, row: dict) -> _DriverInsert | None:
        if self.engine.dialect.name != "sqlite":
            return None
        key = (id(stmt), frozenset(row))
        cached = self._driver_inserts.get(key)
        if cached is None:
            cached = self._driver_inserts[key] = (
                stmt, _DriverInsert(stmt, key[1], self.engine.dialect))
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
