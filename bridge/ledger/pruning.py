"""History retention: which history events are attempt-level noise, and their deletion.

Owns :data:`PRUNABLE`, the one list of the ``bridge_events`` kinds that may go once
they are old enough: an attempt that decided nothing for good (a retry, a pause, a
call not sent, a mute call superseded by a later request) and an update or status
that matched nothing or could not be read. Every other kind stays for ever: each
registration's audit trail (submitted, conflicts, delivered, dead, removed and why,
restored, released, requeued), the statuses and Telegram updates that changed
something or were refused on time (``status``, ``status_stale``, ``telegram_*``
blocks and unblocks), the consent-related events (mutes and unmutes requested and
delivered, erase tombstones, links issued, used, reused, rejected, revoked) — and a
kind added later, until it is listed here.

The statements take an open connection, as the ledger's other modules do: the chunk
to delete is found in a read (:func:`next_chunk`), then deleted by its id range in a
short write transaction (:func:`delete_chunk`), so pruning a large history never holds
SQLite's write lock for long. :func:`space` and :func:`give_back` are the database's
side: SQLite's free pages given back to the file system by an incremental vacuum (in
``auto_vacuum=INCREMENTAL`` mode; a database in another mode says how much it would
free and how to switch), PostgreSQL's table size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, text

from ..models import Event

# <action>_<input> of a command (states.Machine.event): mutes, unmutes and replays
_COMMAND_ACTIONS = ("mute", "unmute", "replay")
_ATTEMPTS = ("retry", "paused", "not_sent", "superseded")  # the inputs that decide nothing

PRUNABLE = frozenset(
    {
        # registrations and the bots' custom events (states.REGISTRATIONS, states.EVENTS)
        *("retry", "paused", "not_sent"),
        *("event_retry", "event_paused", "event_not_sent"),
        # commands (states.COMMANDS); superseded: the latest request went out after it
        *(f"{action}_{kind}" for action in _COMMAND_ACTIONS for kind in _ATTEMPTS),
        # what matched nothing or could not be read (reports.py, telegram.py)
        "status_ignored",
        "status_unmatched",
        "telegram_ignored",
    }
)

AUTO_VACUUM_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


@dataclass(frozen=True)
class Space:
    """What the history takes on disk. SQLite: the database file (``size``) and its free
    pages (``free``), ``incremental`` whether an incremental vacuum can give those back;
    PostgreSQL: ``bridge_events`` with its indexes and TOAST (``free`` unknown: 0)."""

    dialect: str
    size: int
    free: int = 0
    incremental: bool = False


def _prunable(cutoff: datetime):
    return (Event.kind.in_(sorted(PRUNABLE)), Event.at < cutoff)


def counts(conn, cutoff: datetime) -> dict[str, int]:
    """The prunable events older than ``cutoff``, by kind."""
    rows = conn.execute(
        select(Event.kind, func.count()).where(*_prunable(cutoff)).group_by(Event.kind)
    )
    return {kind: n for kind, n in sorted(rows)}


def next_chunk(conn, cutoff: datetime, after: int, limit: int) -> tuple[int, int] | None:
    """The id range (first, last) of the next ``limit`` prunable events older than
    ``cutoff`` with ids above ``after`` (None: none left). Ids grow with time, so a
    scan from the last chunk on reads the table once in all."""
    ids = (
        conn.execute(
            select(Event.id)
            .where(Event.id > after, *_prunable(cutoff))
            .order_by(Event.id)
            .limit(limit)
        )
        .scalars()
        .all()
    )
    return (ids[0], ids[-1]) if ids else None


def delete_chunk(conn, cutoff: datetime, first: int, last: int) -> int:
    """Delete the prunable events older than ``cutoff`` with ids from ``first`` to
    ``last``; how many. The same test as :func:`next_chunk`'s, so an event written
    meanwhile (a new one: never old enough) is left alone."""
    result = conn.execute(
        delete(Event).where(Event.id >= first, Event.id <= last, *_prunable(cutoff))
    )
    return result.rowcount


def space(conn) -> Space:
    """What the history takes on disk now (:class:`Space`)."""
    if conn.dialect.name == "sqlite":
        page = conn.exec_driver_sql("PRAGMA page_size").scalar()
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
        free = conn.exec_driver_sql("PRAGMA freelist_count").scalar()
        mode = conn.exec_driver_sql("PRAGMA auto_vacuum").scalar()
        return Space("sqlite", pages * page, free * page, mode == AUTO_VACUUM_INCREMENTAL)
    size = conn.execute(text("SELECT pg_total_relation_size('bridge_events')")).scalar()
    return Space(conn.dialect.name, int(size))


def give_back(conn, pages: int) -> int:
    """SQLite in incremental mode: up to ``pages`` free pages back to the file system
    (the file shrinks at the next checkpoint); how many free pages are left. Elsewhere
    nothing: 0."""
    if conn.dialect.name != "sqlite":
        return 0
    free = conn.exec_driver_sql("PRAGMA freelist_count").scalar()
    driver = conn.connection.driver_connection
    for _ in range(min(pages, free)):
        # Python's driver steps a statement once, and each step frees one page
        driver.execute("PRAGMA incremental_vacuum")
    return conn.exec_driver_sql("PRAGMA freelist_count").scalar()
