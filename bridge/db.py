"""The bridge's own database: engine, transactions and Alembic migrations.

The bridge never touches the host application's database: it builds its own
engine from ``BRIDGE_DATABASE_URL``. :class:`Database` is the interface the
ledger writes through: ``write()`` (a write transaction on a Core connection,
committed and durable when the block returns), ``read()``, and
``group_commit(work)`` (calls of concurrent threads sharing one write
transaction). SQLite's fast path behind it lives in :mod:`bridge.storage`. A long
``IN`` list is split into pages by :func:`in_pages`, everywhere.
Schema changes only come from the Alembic revisions in ``migrations/``.
"""

from __future__ import annotations

import importlib.resources
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, bindparam, create_engine, inspect, make_url, text
from sqlalchemy.exc import InterfaceError, OperationalError

from .config import StartupError
from .storage import (
    WRITE_OPTION,
    GroupCommit,
    WriteQueue,
    checkpoint,
    page_bounds,
    run,
    sqlite_engine,
    sqlite_path,
)


def migrations_dir() -> str:
    """The Alembic scripts: ``migrations/`` of the repository, shipped in the package as
    ``bridge.migrations`` (an installed wheel has them there, a checkout maps them)."""
    return str(importlib.resources.files("bridge.migrations"))


VERSION_TABLE = "bridge_alembic_version"


__all__ = ["Database", "run"]  # run: the hot path's (bridge.storage)


class SchemaBehind(StartupError):
    """The database's schema is older than the code: run ``bridge migrate``."""


class DatabaseUnavailable(StartupError):
    """The bridge's database cannot be reached or opened."""


def describe(url: str) -> str:
    """Where a database URL points, without its credentials."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite file {parsed.database}" if parsed.database else "SQLite in memory"
    return (
        f"{parsed.get_backend_name()} at {parsed.host or 'localhost'}"
        f"{':' + str(parsed.port) if parsed.port else ''}/{parsed.database or ''}"
    )


@contextmanager
def reachable(url: str) -> Iterator[None]:
    """Turn a failure to connect into :class:`DatabaseUnavailable`, naming where."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise DatabaseUnavailable(
            f"BRIDGE_DATABASE_URL: cannot open the bridge database ({describe(url)}): "
            f"{type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__}"
        ) from None


def make_engine(url: str, flushed_by_caller: bool = False) -> Engine:
    """An engine for ``url`` (SQLite: see :func:`bridge.storage.sqlite_engine`)."""
    if url.startswith("sqlite"):
        return sqlite_engine(url, flushed_by_caller)
    # hide_parameters: bound values (tokens, emails, phones) stay out of error messages
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True
    )


class Database:
    """Transactions on the bridge's engine. ``write()`` commits, ``read()`` never does."""

    def __init__(self, url: str):
        self.url = url
        path = sqlite_path(url)
        self._queue = WriteQueue(path) if path else None
        self.engine = make_engine(url, flushed_by_caller=self._queue is not None)
        self._kept: Connection | None = None  # SQLite: the group commit's own connection
        # A forked child (gunicorn --preload) must not reuse the parent's connections.
        ref = weakref.ref(self)

        def _after_fork() -> None:
            db = ref()
            if db is not None:
                db._kept = None  # the parent's; neither used nor closed here
                db.engine.dispose(close=False)

        os.register_at_fork(after_in_child=_after_fork)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, committed on success; when the block is left without an
        error the commit is on disk."""
        hold = self._queue.hold() if self._queue is not None else nullcontext(False)
        with hold as outermost, self.engine.connect() as conn:
            conn = conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn
        if outermost:  # SQLite: the WAL flush, after the write lock is let go
            self.sync()

    def sync(self) -> None:
        """Make every transaction committed so far durable (a flush of SQLite's WAL;
        nothing to do elsewhere, where a commit is durable when it returns)."""
        if self._queue is not None:
            self._queue.sync()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def group_commit(self, work: Callable[[Connection, list], list]) -> GroupCommit:
        """Run ``work(conn, items)`` for concurrent callers in shared transactions
        (:class:`bridge.storage.GroupCommit`)."""
        return GroupCommit(self._group_transaction, self.sync, work)

    @contextmanager
    def _group_transaction(self) -> Iterator[Connection]:
        """A group commit's transaction. On SQLite its leaders, one at a time under the
        write lock, share one connection kept for them: a pool check-out per small
        transaction costs more than SQLite's work in it (BENCHMARKS.md)."""
        if self._queue is None:
            with self.write() as conn:  # a commit is durable when it returns
                yield conn
            return
        with self._queue.hold():
            if self._kept is None:
                self._kept = self.engine.connect().execution_options(**{WRITE_OPTION: True})
            with self._kept.begin():
                yield self._kept

    def purge_freed(self) -> bool:
        """After an erase: no copy of deleted data left in the database's files. SQLite
        zeroes what it frees (``secure_delete``); this moves the WAL into the database
        file and empties it (False: a reader kept part of it, emptied later).
        PostgreSQL keeps dead rows until VACUUM, and WAL segments and backups for their
        retention: docs/operating.md, "Erasure", says what to run."""
        if self._queue is None:  # not a SQLite file
            return True
        return checkpoint(self.engine)

    def dispose(self) -> None:
        if self._kept is not None:
            self._kept.close()
            self._kept = None
        self.engine.dispose()


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", migrations_dir())
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
        with engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:  # a table rebuilt by a migration must not cascade to its children
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            try:
                with conn.begin():
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
                    if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first():
                        raise RuntimeError("a migration left a broken foreign key")
            finally:
                if sqlite:
                    conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")
        return before, current_revision(engine)
    finally:
        if owned:
            engine.dispose()


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaBehind` unless the database is at the head revision
    (:class:`DatabaseUnavailable` if it cannot be reached)."""
    with reachable(engine.url.render_as_string(hide_password=True)):
        current = current_revision(engine)
    head = head_revision()
    if current != head:
        raise SchemaBehind(
            f"the bridge database schema is at {current or 'nothing (empty database)'}, "
            f"this code needs {head}: run `bridge migrate` first (`flask --app <your app> "
            "bridge migrate`, `reteno-bridge migrate` or `make migrate`)"
        )


# --- what differs between the two databases, in one place ------------------------------


def insert_unless_taken(table, index_elements: list[str], index_where: str | None = None):
    """``INSERT … ON CONFLICT (<unique index>) DO NOTHING`` for this table, on SQLite and
    PostgreSQL alike (the SQL is the same, its construct each dialect's own). Returns
    ``(sqlite statement, postgresql statement)``."""
    from sqlalchemy.dialects import postgresql, sqlite

    where = text(index_where) if index_where else None
    return tuple(
        module.insert(table).on_conflict_do_nothing(
            index_elements=index_elements, index_where=where
        )
        for module in (sqlite, postgresql)
    )


def lock_keys(conn: Connection, keys: list[str]) -> None:
    """Serialise transactions that touch the same keys: PostgreSQL takes a
    transaction-scoped advisory lock per key, in one global order (so two such
    transactions queue instead of deadlocking); SQLite's write transactions are
    serial already."""
    if conn.dialect.name != "postgresql" or not keys:
        return
    conn.execute(
        text(
            "SELECT count(pg_advisory_xact_lock(h)) FROM (SELECT DISTINCT "
            "hashtextextended(k, 0) AS h FROM unnest(CAST(:keys AS text[])) AS k "
            "ORDER BY h) AS ordered"
        ),
        {"keys": list(keys)},
    )


# --- long IN lists ---------------------------------------------------------------------------


def in_pages(items: Sequence) -> Iterator[list]:
    """``items`` in pages for ``column IN (…)``, the one way the bridge splits a long list
    of values: 256, 64 or 16 at a time and a last one under 16
    (:func:`bridge.storage.page_bounds`). Every page is under each database's limit on
    parameters, and page sizes are few, so a statement built once per size
    (:func:`in_params`) has few shapes."""
    for start, size in page_bounds(len(items)):
        yield list(items[start : start + size])


def in_params(column, prefix: str, size: int):
    """``column IN (:<prefix>0, …)`` with ``size`` parameters, for a page of
    :func:`in_pages` (its values: :func:`page_params`): one statement shape per page size,
    where SQLAlchemy's expanding ``IN`` would render and process the list on every
    execution."""
    return column.in_([bindparam(f"{prefix}{i}") for i in range(size)])


def page_params(page: Sequence, prefix: str) -> dict:
    """A page's values as the parameters ``<prefix>0`` … of :func:`in_params`."""
    return {f"{prefix}{i}": item for i, item in enumerate(page)}
