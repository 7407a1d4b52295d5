"""The ledger service: the registration state machine and its queries.

This is the only module that writes a registration's ``state``. The states
and their moves::

    queued ──delivered──▶ delivered ──removed──▶ removed
      │  ▲                                          ▲
      │  └── retry / pause (stays queued) ──────────┤
      ├──dead (Reteno refused the token) ──▶ dead ──┘
      │                     └──requeue──▶ queued
      └──removed (user blocked the bot) ───────────▶ removed

Every move appends an :class:`~bridge.models.Event` in the same transaction.
Transactions are opened and committed here (``Database.write``), never in
the models or the views. The outbox is the set of ``queued`` rows; a worker
claims due rows by pushing their ``next_attempt_at`` past a lease and
stamping a ``lease_id``, so a crashed worker's rows come due again by
themselves and two workers never hold the same row at once.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import random
import re
import sqlite3
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import Database, pages
from .models import (
    DEAD,
    DELIVERED,
    IDENTIFIERS,
    QUEUED,
    REMOVED,
    STATES,
    BridgeState,
    Event,
    Registration,
    utcnow,
)

COLUMN_OF = dict(IDENTIFIERS)
LEASE_SECONDS = 120
BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
PAUSE_BASE = 15.0
PAUSE_CAP = 600.0
UPSTREAM = "upstream"
_EVENT_INSERT = insert(Event.__table__)
_LIVE_INSERT: dict[str, Any] = {}  # dialect name: the INSERT ... ON CONFLICT DO NOTHING
# A claim: lease the chosen rows and return what the upstream call needs (plain rows,
# not ORM objects: a batch is up to 1,000 of them). Built once, the ids passed as one
# expanding parameter.
_CLAIM = (
    update(Registration)
    .where(Registration.id.in_(bindparam("ids", expanding=True)))
    .values(
        lease_id=bindparam("lease_id"),
        next_attempt_at=bindparam("next_attempt_at"),
        attempts=Registration.attempts + 1,
        updated_at=bindparam("updated_at"),
    )
    .returning(
        Registration.id, Registration.token, Registration.contact_id,
        Registration.external_customer_id, Registration.phone, Registration.email,
        Registration.matched_by, Registration.attempts,
    )
    .execution_options(synchronize_session=False)
)
_PLAIN_INSERT = insert(Registration.__table__)


@functools.cache  # one per set of columns: _update_held is called with a few fixed ones
def _held_update(columns: frozenset):
    """The update of :meth:`Ledger._update_held` setting ``columns``, built once: the rows
    of ``ids`` still leased by ``held_by`` and queued; returns their ids."""
    return (
        update(Registration)
        .where(
            Registration.id.in_(bindparam("ids", expanding=True)),
            Registration.lease_id == bindparam("held_by"),
            Registration.state == QUEUED,
        )
        .values({name: bindparam(name) for name in columns})
        .returning(Registration.id)
        .execution_options(synchronize_session=False)
    )


@functools.cache  # one per page size of db.pages: a bounded set
def _live_join_sql(n: int) -> str:
    """SQLite: the live registrations of ``n`` (token, matched_by, match_value) keys. The
    keys are a VALUES table joined on the partial unique index's own columns and
    condition, so each is one index search (an ``IN`` of row values scans instead)."""
    t = Registration.__table__.name
    keys = ", ".join(["(?, ?, ?)"] * n)
    return (f"SELECT k.column1, k.column2, k.column3, r.id, r.state FROM (VALUES {keys}) "
            f"AS k JOIN {t} AS r ON r.token = k.column1 AND r.matched_by = k.column2 "
            "AND r.match_value = k.column3 AND r.state <> 'removed'")


@dataclass(frozen=True)
class Outcome:
    """What ``register`` did with one token object."""

    id: int
    token: str
    matchedBy: str
    state: str
    duplicate: bool


@dataclass(frozen=True)
class Claim:
    """Registrations a worker holds for one upstream call."""

    lease_id: str
    rows: tuple[Any, ...]  # rows with the columns of _CLAIM (id, token, identifiers, attempts)

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.rows]


def _live_key(item: dict) -> tuple[str, str, str]:
    return item["token"], item["matchedBy"], item["matchValue"]


class _GroupCommit:
    """Group commit for :meth:`Ledger.register` among the threads of one process.

    Every write transaction has a fixed cost (the write lock, which the writers
    of a SQLite file take in turns, the commit, a flush to disk) far above what
    one registration adds to it. Here the calls of concurrent threads queue up;
    one thread at a time, the leader, waits for the write lock and then runs one
    transaction for its call and every call queued by then. Once committed, it
    wakes the oldest call still queued, whose thread leads the next transaction
    while this one is being flushed to disk (``Database.sync``); when the flush
    is done it hands each call of its batch its outcomes, waking each thread
    once. Alone, a call runs at once. If a shared transaction fails, each of its
    calls is retried in a transaction of its own, so one call's failure is never
    another's; if the flush fails, every call of the batch fails with it.
    """

    MAX_ITEMS = 5000  # token objects per shared transaction

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self._lock = threading.Lock()
        self._queue: deque[_Call] = deque()
        self._busy = False  # a leader is running (or about to run) a transaction

    def run(self, items: list[dict], source: str) -> list[Outcome]:
        call = _Call(items, source)
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
        return call.outcomes

    def _lead(self, call: _Call) -> None:
        batch = [call]
        try:
            try:
                self._transact(batch)
            finally:
                for waiting in batch:
                    if not waiting.done:  # only after a BaseException
                        waiting.error, waiting.done = RuntimeError("not registered"), True
                # The next transaction may start while this one's flush is under way.
                with self._lock:
                    nxt = self._queue.popleft() if self._queue else None
                    if nxt is None:
                        self._busy = False
                if nxt is not None:
                    nxt.wake.release()  # not done: its thread leads the next transaction
            committed = [c for c in batch if c.error is None]
            if committed:
                try:
                    self.ledger.db.sync()
                except Exception as exc:  # the disk refused the flush: not stored for sure
                    for c in committed:
                        c.error = exc
            if any(not o.duplicate for c in committed for o in c.outcomes):
                self.ledger.on_queued()
        finally:
            for waiting in batch[1:]:
                waiting.wake.release()

    def _transact(self, batch: list[_Call]) -> None:
        """One transaction for ``batch`` and every call queued by the time it has the
        write lock; on failure, one transaction per call."""
        ledger = self.ledger
        call = batch[0]
        try:
            with ledger.db.write_connection(defer_sync=True) as conn:
                # The batch is made once the write lock is ours: it takes in every call
                # that came while this thread waited for it.
                with self._lock:
                    size = len(call.items)
                    while self._queue and size + len(self._queue[0].items) <= self.MAX_ITEMS:
                        batch.append(self._queue.popleft())
                        size += len(batch[-1].items)
                outcomes = ledger._register(
                    conn,
                    [item for c in batch for item in c.items],
                    [c.source for c in batch for _ in c.items],
                )
        except Exception as exc:
            if len(batch) == 1:
                call.error, call.done = exc, True
            else:
                for c in batch:  # on their own: a bad call fails alone
                    self._alone(c)
            return
        start = 0
        for c in batch:
            c.outcomes, c.done = outcomes[start : start + len(c.items)], True
            start += len(c.items)

    def _alone(self, call: _Call) -> None:
        try:
            with self.ledger.db.write_connection(defer_sync=True) as conn:
                call.outcomes = self.ledger._register(conn, call.items,
                                                      [call.source] * len(call.items))
        except Exception as exc:
            call.error = exc
        call.done = True


class _Call:
    __slots__ = ("items", "source", "outcomes", "error", "done", "wake")

    def __init__(self, items: list[dict], source: str):
        self.items, self.source = items, source
        self.outcomes: list[Outcome] = []
        self.error: BaseException | None = None
        self.done = False
        self.wake = threading.Lock()
        self.wake.acquire()


class Ledger:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime] = utcnow,
        on_queued: Callable[[], None] | None = None,
    ):
        self.db = db
        self.clock = clock
        self.on_queued = on_queued or (lambda: None)
        self._group = _GroupCommit(self)

    # --- events ----------------------------------------------------------

    def _events(self, session, rows: Iterable[dict]) -> None:
        # A Core insert on the table per run of rows with the same keys, in order (so ids
        # keep the order given); on SQLite as multi-row inserts on the driver. The ORM's
        # bulk insert costs far more per row, and this runs for every registration and
        # every delivered token.
        conn = session.connection() if isinstance(session, Session) else session
        for _keys, run in itertools.groupby(rows, key=dict.keys):
            self.db.insert_many(conn, _EVENT_INSERT, list(run))

    def record(self, kind: str, detail: dict, token: str | None = None, registration_id=None):
        """Append one event that moves nothing (e.g. a rejected deep link)."""
        with self.db.write() as session:
            self._events(
                session,
                [
                    {
                        "at": self.clock(),
                        "kind": kind,
                        "token": token,
                        "registration_id": registration_id,
                        "detail": detail,
                    }
                ],
            )

    # --- queued: new registrations ---------------------------------------

    def _insert_new(self, session, rows: list[dict]) -> dict[tuple, int]:
        """Insert rows whose live key is free; return {live key: id} of those inserted."""
        if not rows:
            return {}
        cols = (Registration.id, Registration.token, Registration.matched_by,
                Registration.match_value)
        dialect = self.db.dialect
        if dialect in ("sqlite", "postgresql"):
            # One statement built once, rows passed as parameters: SQLAlchemy caches its
            # compiled form (a ``.values(rows)`` statement is compiled anew on every call)
            # and sends many rows as multi-row VALUES pages ("insertmanyvalues").
            stmt = _LIVE_INSERT.get(dialect)
            if stmt is None:
                module = sqlite if dialect == "sqlite" else postgresql
                table = Registration.__table__
                stmt = _LIVE_INSERT[dialect] = (
                    module.insert(table)
                    .on_conflict_do_nothing(
                        index_elements=["token", "matched_by", "match_value"],
                        index_where=text("state <> 'removed'"),
                    )
                    .returning(table.c.id, table.c.token, table.c.matched_by,
                               table.c.match_value)
                )
            result = self.db.insert_rows(session, stmt, rows)
            return {(t, m, v): i for i, t, m, v in result}
        inserted = {}
        for row in rows:  # other backends: one savepoint per row
            try:
                with session.begin_nested():
                    rid = session.execute(insert(Registration).values(row).returning(cols[0]))
                    inserted[(row["token"], row["matched_by"], row["match_value"])] = (
                        rid.scalar_one()
                    )
            except IntegrityError:
                pass
        return inserted

    def _serialise_batches(self, session, keys: list[tuple]) -> None:
        """PostgreSQL: two transactions inserting the same live keys in different orders
        wait for each other's uncommitted rows (a deadlock, about one concurrent batch
        in fifty). A batch first takes a transaction-scoped advisory lock per key in
        one global order, so overlapping batches queue instead. A single row cannot
        close such a cycle and skips this."""
        if self.db.dialect != "postgresql" or len(keys) < 2:
            return
        session.execute(
            text("SELECT count(pg_advisory_xact_lock(h)) FROM (SELECT DISTINCT "
                 "hashtextextended(k, 0) AS h FROM unnest(CAST(:keys AS text[])) AS k "
                 "ORDER BY h) AS ordered"),
            {"keys": ["\x1f".join(map(str, key)) for key in keys]},
        )

    def _insert_alone(self, conn: sqlite3.Connection, rows: list[dict], keys: list[tuple]):
        """SQLite: ``rows`` (live keys ``keys``) inserted where their key is free; returns
        ({key: new id}, {key: (id, state) of the live registration that holds it}).

        Under SQLite's write lock nothing else writes meanwhile, so one look-up of the
        keys already taken and a plain insert of the rest suffice, and the new ids
        follow from the last one (``Database.insert_consecutive``): no RETURNING rows to
        fetch one at a time, each a step of SQLite that lets go of the GIL while the
        write lock is held."""
        existing = self._find_live(conn, keys)
        fresh = [(row, key) for row, key in zip(rows, keys, strict=True) if key not in existing]
        ids = self.db.insert_consecutive(conn, _PLAIN_INSERT, [row for row, _ in fresh])
        return {key: rid for (_, key), rid in zip(fresh, ids, strict=True)}, existing

    def _insert_concurrent(self, conn, rows: list[dict], keys: list[tuple]):
        """:meth:`_insert_alone` where other transactions insert and remove meanwhile
        (PostgreSQL): ``INSERT ... ON CONFLICT DO NOTHING``, then a look-up of the keys
        it skipped."""
        self._serialise_batches(conn, keys)
        row_of = dict(zip(keys, rows, strict=True))
        inserted = self._insert_new(conn, rows)
        existing: dict[tuple, tuple[int, str]] = {}
        pending = [k for k in keys if k not in inserted]
        # PostgreSQL (READ COMMITTED): the live row that made an insert a no-op can be
        # removed (a block) and committed before the look-up below finds it; its key
        # is then free, and the next pass inserts it.
        for _attempt in range(10):
            existing.update(self._find_live(conn, pending))
            gone = [k for k in pending if k not in existing]
            if not gone:
                break
            inserted.update(self._insert_new(conn, [row_of[k] for k in gone]))
            pending = [k for k in gone if k not in inserted]
        else:
            raise RuntimeError("a registration kept changing under concurrent removals")
        return inserted, existing

    def _find_live(self, conn, keys: list[tuple]) -> dict[tuple, tuple[int, str]]:
        """The live registrations of these live keys: {key: (id, state)}."""
        found: dict[tuple, tuple[int, str]] = {}
        if isinstance(conn, sqlite3.Connection):
            # SQLite, under the write lock: the keys as a VALUES table joined to the
            # partial unique index, one statement per page of keys (one SQLite step when
            # none is taken, the usual case).
            for page in pages(keys):  # a bounded set of statement shapes
                values = [v for key in page for v in key]
                for t, m, v, rid, state in self.db.fetch_driver(conn, _live_join_sql(len(page)),
                                                                values):
                    found[(t, m, v)] = (rid, state)
            return found
        for chunk_start in range(0, len(keys), 300):
            chunk = keys[chunk_start : chunk_start + 300]
            rows = conn.execute(
                select(
                    Registration.token,
                    Registration.matched_by,
                    Registration.match_value,
                    Registration.id,
                    Registration.state,
                ).where(
                    tuple_(
                        Registration.token, Registration.matched_by, Registration.match_value,
                    ).in_(chunk),
                    Registration.state != REMOVED,
                )
                # PostgreSQL: wait for a removal in progress (it holds the row) and
                # see its outcome, so that the history's order is the real one.
                .order_by(Registration.id)
                .with_for_update(read=True)
            )
            for t, m, v, rid, state in rows:
                found[(t, m, v)] = (rid, state)
        return found

    def register(self, items: Sequence[dict], source: str = "api") -> list[Outcome]:
        """Put validated token objects in the outbox, suppressing live duplicates.

        One transaction: either every item is in the ledger or none is. Calls made
        at the same time by threads of this process share that transaction (group
        commit, see :class:`_GroupCommit`), as if they had run one after the other.
        """
        return self._group.run(list(items), source)

    def _register(self, conn, items: Sequence[dict], sources: Sequence[str]) -> list[Outcome]:
        """:meth:`register` for ``items`` in the write transaction of ``conn`` (from
        ``Database.write_connection``); ``sources[i]`` is item i's."""
        now = self.clock()
        first: dict[tuple, int] = {}
        rows = []
        for index, item in enumerate(items):
            key = _live_key(item)
            if key in first:
                continue
            first[key] = index
            rows.append(
                {
                    "token": item["token"],
                    "contact_id": item.get("contactId"),
                    "external_customer_id": item.get("externalCustomerId"),
                    "phone": item.get("phone"),
                    "email": item.get("email"),
                    "matched_by": item["matchedBy"],
                    "match_value": item["matchValue"],
                    "state": QUEUED,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        if isinstance(conn, sqlite3.Connection):
            inserted, existing = self._insert_alone(conn, rows, list(first))
        else:
            inserted, existing = self._insert_concurrent(conn, rows, list(first))
        outcomes, events = [], []
        for index, item in enumerate(items):
            key = _live_key(item)
            if key in inserted and first[key] == index:
                outcome = Outcome(
                    inserted[key], item["token"], item["matchedBy"], QUEUED, False
                )
            else:
                rid, state = (inserted[key], QUEUED) if key in inserted else existing[key]
                outcome = Outcome(rid, item["token"], item["matchedBy"], state, True)
            outcomes.append(outcome)
            events.append(
                {
                    "at": now,
                    "registration_id": outcome.id,
                    "token": outcome.token,
                    "kind": "submitted",
                    "detail": {
                        "source": sources[index],
                        "matchedBy": outcome.matchedBy,
                        "duplicate": outcome.duplicate,
                        "state": outcome.state,
                    },
                }
            )
        self.db.insert_many(conn, _EVENT_INSERT, events)
        return outcomes

    # --- shared upstream state (pause, hold, last result) ------------------

    def upstream_state(self, session=None) -> dict[str, Any]:
        if session is None:
            with self.db.read() as s:
                return self.upstream_state(s)
        row = session.get(BridgeState, UPSTREAM)
        return dict(row.value) if row else {}

    def _set_upstream(self, session, **changes) -> dict:
        if self.db.dialect in ("sqlite", "postgresql"):
            # Make sure the row exists before locking it: two workers inserting it at
            # once would otherwise fail one delivered() transaction after Reteno took it.
            module = sqlite if self.db.dialect == "sqlite" else postgresql
            session.execute(
                module.insert(BridgeState)
                .values(name=UPSTREAM, value={}, updated_at=self.clock())
                .on_conflict_do_nothing(index_elements=["name"])
            )
        row = session.get(BridgeState, UPSTREAM, with_for_update=True, populate_existing=True)
        if row is None:
            row = BridgeState(name=UPSTREAM, value={})
            session.add(row)
        value = dict(row.value or {})
        value.update(changes)
        row.value = value
        return value

    def delivery_blocked_until(self, state: dict) -> datetime | None:
        """When a pause (bad credentials) or a hold (Retry-After) ends, if in force."""
        now = self.clock()
        ends = [
            datetime.fromisoformat(state[k])
            for k in ("paused_until", "hold_until")
            if state.get(k)
        ]
        ends = [e for e in ends if e > now]
        return max(ends) if ends else None

    # --- the outbox: claim, deliver, retry, pause, dead --------------------

    def claim(self, limit: int, lease_seconds: int = LEASE_SECONDS) -> Claim | None:
        """Take up to ``limit`` due queued registrations, oldest first."""
        now = self.clock()
        lease_id = uuid.uuid4().hex
        with self.db.write() as session:
            if self.delivery_blocked_until(self.upstream_state(session)):
                return None
            due = (
                select(Registration.id)
                .where(Registration.state == QUEUED, Registration.next_attempt_at <= now)
                .order_by(Registration.next_attempt_at, Registration.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            ids = list(session.scalars(due))
            if not ids:
                return None
            rows = session.execute(_CLAIM, {
                "ids": ids, "lease_id": lease_id, "updated_at": now,
                "next_attempt_at": now + timedelta(seconds=lease_seconds),
            }).all()
        return Claim(lease_id, tuple(sorted(rows, key=lambda r: r.id)))

    def _lock_in_order(self, session, ids: Sequence[int]) -> None:
        """PostgreSQL: lock these rows in id order before updating them, the order
        ``register`` takes its share locks in, so the two never wait on each other
        in a cycle (an UPDATE ... IN locks rows in whatever order it scans them)."""
        if self.db.dialect == "postgresql":
            session.execute(select(Registration.id).where(Registration.id.in_(list(ids)))
                            .order_by(Registration.id).with_for_update())

    def renew(self, claim: Claim, rows: Sequence[Registration],
              lease_seconds: int = LEASE_SECONDS) -> list[Registration]:
        """Extend the lease on ``rows`` before another upstream call of the same claim.

        Returns the rows still held: one whose lease ran out and that another
        worker claimed meanwhile is not ours to send any more.
        """
        ids = [r.id for r in rows]
        if not ids:
            return []
        with self.db.write() as session:
            until = self.clock() + timedelta(seconds=lease_seconds)
            held = self._update_held(session, claim, ids, {"next_attempt_at": until})
        return [r for r in rows if r.id in held]

    def _update_held(self, session, claim: Claim, ids: list[int], values: dict) -> set[int]:
        """Update the rows of ``ids`` this claim still holds; the ids it updated."""
        self._lock_in_order(session, ids)
        stmt = _held_update(frozenset(values))
        return set(session.scalars(stmt, {**values, "ids": ids, "held_by": claim.lease_id}))

    def _finish(self, session, claim: Claim, rows: Sequence[Any], values: dict,
                kind: str, detail: dict) -> int:
        now = self.clock()
        ids = [r.id for r in rows]
        if not ids:
            return 0
        moved = self._update_held(session, claim, ids,
                                  {"lease_id": None, "updated_at": now, **values})
        self._events(
            session,
            [
                {
                    "at": now,
                    "registration_id": r.id,
                    "token": r.token,
                    "kind": kind,
                    "detail": {"attempt": r.attempts, **detail},
                }
                for r in rows
                if r.id in moved
            ],
        )
        return len(moved)

    def _note_upstream(self, session, result: dict) -> None:
        self._set_upstream(session, last={**result, "at": self.clock().isoformat()})

    def delivered(self, claim: Claim, rows: Sequence[Registration], call: dict) -> int:
        with self.db.write() as session:
            now = self.clock()
            n = self._finish(
                session,
                claim,
                rows,
                {"state": DELIVERED, "delivered_at": now, "next_attempt_at": None,
                 "last_error": None},
                "delivered",
                call,
            )
            self._set_upstream(session, paused_until=None, pause_reason=None, pause_count=0)
            self._note_upstream(session, {"outcome": "delivered", **call})
        return n

    @staticmethod
    def backoff(attempts: int, retry_after: float | None = None) -> float:
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempts - 1))
        delay = random.uniform(delay / 2, delay)  # jitter
        return max(delay, retry_after or 0.0)

    def retry(self, claim: Claim, rows: Sequence[Registration], call: dict,
              retry_after: float | None = None) -> float:
        """A transient failure: the rows stay queued and come due after a backoff."""
        attempts = max((r.attempts for r in rows), default=1)
        delay = self.backoff(attempts, retry_after)
        with self.db.write() as session:
            now = self.clock()
            nxt = now + timedelta(seconds=delay)
            self._finish(
                session,
                claim,
                rows,
                {"next_attempt_at": nxt, "last_error": call.get("error")},
                "retry",
                {**call, "nextAttemptAt": nxt.isoformat()},
            )
            changes = {}
            if retry_after:
                changes["hold_until"] = (now + timedelta(seconds=retry_after)).isoformat()
            self._set_upstream(session, **changes)
            self._note_upstream(session, {"outcome": "retry", **call})
        return delay

    def pause(self, claim: Claim, rows: Sequence[Registration], call: dict) -> datetime:
        """Reteno refused our credentials or app id: hold everything, drop nothing."""
        with self.db.write() as session:
            now = self.clock()
            state = self.upstream_state(session)
            count = int(state.get("pause_count") or 0) + 1
            until = now + timedelta(seconds=min(PAUSE_CAP, PAUSE_BASE * 2 ** (count - 1)))
            self._finish(
                session,
                claim,
                rows,
                {"next_attempt_at": now, "last_error": call.get("error")},
                "paused",
                {**call, "pausedUntil": until.isoformat()},
            )
            self._set_upstream(
                session,
                paused_until=until.isoformat(),
                pause_reason=call.get("error"),
                pause_count=count,
            )
            self._note_upstream(session, {"outcome": "paused", **call})
        return until

    def dead(self, claim: Claim, row: Registration, call: dict) -> int:
        """Reteno refused this token for good (400 for it alone)."""
        with self.db.write() as session:
            n = self._finish(
                session,
                claim,
                [row],
                {"state": DEAD, "next_attempt_at": None, "last_error": call.get("error")},
                "dead",
                call,
            )
            self._note_upstream(session, {"outcome": "rejected", **call})
        return n

    def release(self, claim: Claim, rows: Sequence[Registration], detail: dict,
                delay: float | None = 0.0) -> int:
        """Rows of a claim that were not sent: back to the queue, due after ``delay``."""
        with self.db.write() as session:
            nxt = self.clock() + timedelta(seconds=delay or 0.0)
            return self._finish(session, claim, rows, {"next_attempt_at": nxt}, "not_sent",
                                detail)

    def resume(self) -> None:
        """Lift a delivery pause now (after fixing the credentials)."""
        with self.db.write() as session:
            self._set_upstream(session, paused_until=None, hold_until=None, pause_count=0)

    # --- removed / requeued ---------------------------------------------

    def remove(self, session, rows: Sequence[Registration], reason: str, cause: str,
               detail: dict | None = None) -> list[Registration]:
        """Move live registrations to ``removed`` inside the caller's write transaction."""
        now = self.clock()
        live = [r for r in rows if r.state != REMOVED]
        if not live:
            return []
        moved = set(
            session.scalars(
                update(Registration)
                .where(Registration.id.in_([r.id for r in live]), Registration.state != REMOVED)
                .values(state=REMOVED, removed_at=now, removal_reason=reason, lease_id=None,
                        next_attempt_at=None, updated_at=now)
                .returning(Registration.id)
                .execution_options(synchronize_session=False)
            )
        )
        live = [r for r in live if r.id in moved]  # a concurrent removal got there first
        self._events(
            session,
            (
                {
                    "at": now,
                    "registration_id": r.id,
                    "token": r.token,
                    "kind": "removed",
                    "detail": {"cause": cause, "reason": reason, "previousState": r.state,
                               **(detail or {})},
                }
                for r in live
            ),
        )
        return live

    def remove_many(self, session, removals: Sequence[tuple[Sequence[Registration], str, str,
                                                            dict | None]]
                    ) -> list[list[Registration]]:
        """:meth:`remove` for many ``(rows, reason, cause, detail)`` at once, in order.

        As if :meth:`remove` ran for each in turn (a row goes to the first removal
        that lists it; the list of rows moved is returned for each), with one
        ``UPDATE`` per distinct reason and one insert for all the events: a
        1,000-event status array is one statement, not a thousand.
        """
        now = self.clock()
        taken: dict[int, int] = {}  # row id -> index of the removal that moves it
        for index, (rows, _reason, _cause, _detail) in enumerate(removals):
            for r in rows:
                if r.state != REMOVED:
                    taken.setdefault(r.id, index)
        by_reason: dict[str, list[int]] = {}
        for rid, index in taken.items():
            by_reason.setdefault(removals[index][1], []).append(rid)
        moved: set[int] = set()
        for reason, ids in by_reason.items():
            for chunk in _chunks(ids):
                moved.update(session.scalars(
                    update(Registration)
                    .where(Registration.id.in_(chunk), Registration.state != REMOVED)
                    .values(state=REMOVED, removed_at=now, removal_reason=reason,
                            lease_id=None, next_attempt_at=None, updated_at=now)
                    .returning(Registration.id)
                    .execution_options(synchronize_session=False)
                ))
        done: list[list[Registration]] = []
        events: list[dict] = []
        for index, (rows, reason, cause, detail) in enumerate(removals):
            mine, seen = [], set()
            for r in rows:
                if r.id in moved and taken.get(r.id) == index and r.id not in seen:
                    seen.add(r.id)
                    mine.append(r)
                    events.append({
                        "at": now, "registration_id": r.id, "token": r.token, "kind": "removed",
                        "detail": {"cause": cause, "reason": reason, "previousState": r.state,
                                   **(detail or {})},
                    })
            done.append(mine)
        self._events(session, events)
        return done

    def requeue_dead(self, ids: Sequence[int] | None = None, error_contains: str | None = None,
                     token: str | None = None) -> int:
        """Dead letters back to the queue (all, or those matching the filters)."""
        now = self.clock()
        with self.db.write() as session:
            query = select(Registration).where(Registration.state == DEAD)
            if ids:
                query = query.where(Registration.id.in_(list(ids)))
            if error_contains:
                query = query.where(
                    Registration.last_error.contains(error_contains, autoescape=True))
            if token:
                query = query.where(Registration.token == token)
            rows = session.scalars(query).all()
            if not rows:
                return 0
            session.execute(
                update(Registration)
                .where(Registration.id.in_([r.id for r in rows]), Registration.state == DEAD)
                .values(state=QUEUED, next_attempt_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            self._events(
                session,
                (
                    {"at": now, "registration_id": r.id, "token": r.token, "kind": "requeued",
                     "detail": {"from": DEAD, "lastError": r.last_error}}
                    for r in rows
                ),
            )
        self.on_queued()
        return len(rows)

    # --- queries ----------------------------------------------------------

    def find(self, filters: dict, limit: int = 50, cursor: str | None = None):
        """Registrations matching ``filters``, newest first, keyset-paginated."""
        with self.db.read() as session:
            query = select(Registration)
            if filters.get("token"):
                query = query.where(Registration.token == filters["token"])
            for api_name, column in IDENTIFIERS:
                if filters.get(api_name) is not None:
                    query = query.where(getattr(Registration, column) == filters[api_name])
            if filters.get("state"):
                query = query.where(Registration.state == filters["state"])
            if cursor:
                query = query.where(Registration.id < decode_cursor(cursor))
            rows = session.scalars(query.order_by(Registration.id.desc()).limit(limit + 1)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (encode_cursor(rows[-1].id) if more and rows else None)

    def history(self, token: str) -> list[Event]:
        with self.db.read() as session:
            return list(
                session.scalars(select(Event).where(Event.token == token).order_by(Event.id))
            )

    def outbox(self) -> dict[str, Any]:
        """Depth and age of the outbox, dead letters, counts by state."""
        now = self.clock()
        with self.db.read() as session:
            counts = dict(
                session.execute(
                    select(Registration.state, func.count()).group_by(Registration.state)
                ).all()
            )
            oldest = session.scalar(
                select(func.min(Registration.created_at)).where(Registration.state == QUEUED)
            )
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=now.tzinfo)
        return {
            "states": {s: int(counts.get(s, 0)) for s in STATES},
            "depth": int(counts.get(QUEUED, 0)),
            "oldestAgeSeconds": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
            "dead": int(counts.get(DEAD, 0)),
        }

    def live_for(self, session, api_name: str, value) -> list[Registration]:
        """Live registrations of one token (``api_name == 'token'``) or identifier value."""
        column = Registration.token if api_name == "token" else getattr(
            Registration, COLUMN_OF[api_name]
        )
        return list(
            session.scalars(
                select(Registration).where(column == value, Registration.state != REMOVED)
            )
        )

    # --- statuses and Telegram ---------------------------------------------

    def append_events(self, session, rows: Iterable[dict]) -> None:
        """Append audit events inside the caller's write transaction."""
        self._events(session, rows)

    STATUS_LOCK_KEY = 0x62726964676573  # pg_advisory_xact_lock key of status bodies

    def serialise_statuses(self, session) -> None:
        """Apply status bodies one at a time, so a replay racing its original sees it.

        PostgreSQL: a transaction-scoped advisory lock. SQLite write transactions
        are serial already (``BEGIN IMMEDIATE``).
        """
        if self.db.dialect == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                            {"key": self.STATUS_LOCK_KEY})

    def registrations_by(self, session, api_name: str, values: Iterable,
                         lock: bool = False) -> list[Registration]:
        """Every registration, in any state, of these tokens or identifier values.

        ``api_name`` is ``"token"`` or an identifier name; one ``IN`` query per
        500 values, oldest first. ``lock`` takes row locks (PostgreSQL) so two
        writers do not act on the same rows at once.
        """
        column = Registration.token if api_name == "token" else getattr(
            Registration, COLUMN_OF[api_name]
        )
        values = list(dict.fromkeys(values))
        found: list[Registration] = []
        for start in range(0, len(values), 500):
            query = (
                select(Registration)
                .where(column.in_(values[start : start + 500]))
                .order_by(Registration.id)
            )
            if lock:
                query = query.with_for_update()
            found.extend(session.scalars(query))
        return found

    def seen_fingerprints(self, session, fingerprints: Iterable[str]) -> set[str]:
        """Those of ``fingerprints`` some earlier event was recorded with."""
        values = list(dict.fromkeys(fingerprints))
        seen: set[str] = set()
        for start in range(0, len(values), 500):
            seen.update(
                session.scalars(
                    select(Event.fingerprint)
                    .where(Event.fingerprint.in_(values[start : start + 500]))
                    .distinct()
                )
            )
        return seen

    def last_registration(self, token: str) -> Registration | None:
        """The token's most recent registration, in any state."""
        with self.db.read() as session:
            return session.scalars(
                select(Registration)
                .where(Registration.token == token)
                .order_by(Registration.id.desc())
                .limit(1)
            ).first()

    # --- operator queries and erasure ---------------------------------------
    #
    # Read-only summaries for ``bridge stats`` and the erasure of one contact's
    # personal data for ``bridge erase``. Nothing here moves a registration
    # between states.

    def stats(self, days: int = 7) -> dict[str, Any]:
        """Counts by state, the outbox, dead letters by error, and a per-day summary.

        ``days`` is the number of UTC calendar days (today included) of the
        per-day summary, counted from the registrations' ``delivered_at`` and
        ``removed_at``; every day appears, with zeros when nothing happened.
        """
        if days < 1:
            raise ValueError("days must be at least 1")
        outbox = self.outbox()
        today = self.clock().astimezone(UTC).date()
        first = today - timedelta(days=days - 1)
        since = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
        with self.db.read() as session:
            dead = session.execute(
                select(Registration.last_error, func.count())
                .where(Registration.state == DEAD)
                .group_by(Registration.last_error)
            ).all()
            delivered = self._per_day(session, Registration.delivered_at, since)
            removed = self._per_day(session, Registration.removed_at, since)
        by_error = sorted(
            ({"error": error, "count": int(count)} for error, count in dead),
            key=lambda item: (-item["count"], item["error"] or ""),
        )
        per_day = []
        for offset in range(days):
            day = (first + timedelta(days=offset)).isoformat()
            per_day.append(
                {"day": day, "delivered": delivered.get(day, 0), "removed": removed.get(day, 0)}
            )
        return {
            "states": outbox["states"],
            "outbox": {"depth": outbox["depth"], "oldestAgeSeconds": outbox["oldestAgeSeconds"]},
            "deadLetters": {"total": outbox["dead"], "byError": by_error},
            "perDay": per_day,
        }

    def _per_day(self, session, column, since: datetime) -> dict[str, int]:
        """``{"YYYY-MM-DD": count}`` of registrations whose ``column`` is at or after ``since``."""
        dialect = self.db.dialect
        if dialect == "sqlite":  # stored as naive UTC text: "YYYY-MM-DD HH:MM:SS.ffffff"
            day = func.substr(column, 1, 10)
        elif dialect == "postgresql":
            day = func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
        else:
            day = None
        if day is not None:
            rows = session.execute(
                select(day, func.count()).where(column >= since).group_by(day)
            ).all()
            return {str(d): int(n) for d, n in rows}
        counts: dict[str, int] = {}
        for (at,) in session.execute(select(column).where(column >= since)):
            key = at.astimezone(UTC).date().isoformat()
            counts[key] = counts.get(key, 0) + 1
        return counts

    def erase(self, api_name: str, value) -> dict[str, Any]:
        """Delete one contact's personal data; leave one audit event without any.

        ``api_name`` is ``token`` or an identifier name (``contactId``,
        ``externalCustomerId``, ``phone``, ``email``) and ``value`` its normal
        form. In one write transaction this deletes

        * the registrations holding that value, and every registration of
          their tokens (a Telegram chat is one person);
        * their events (by registration and by token), and any event of no
          registration and no token whose detail mentions the value, one of
          those tokens, or another identifier of the erased registrations
          that no remaining registration holds (status events of unmatched
          contacts carry raw payloads);

        replaces such mentions in the events and error texts of other
        registrations and in the shared upstream state by ``[erased]``
        (``scrubbed`` counts those rows), and appends one ``erased`` event
        ``{"by", "registrations", "events"}``. When nothing mentions the
        value, nothing is written and the counts are zero.
        """
        if api_name == "token":
            column = Registration.token
        elif api_name in COLUMN_OF:
            column = getattr(Registration, COLUMN_OF[api_name])
        else:
            raise ValueError(f"cannot erase by {api_name!r}")
        with self.db.write() as session:
            regs = {r.id: r for r in session.scalars(select(Registration).where(column == value))}
            tokens = {r.token for r in regs.values()}
            if api_name == "token":
                tokens.add(str(value))
            for chunk in _chunks(sorted(tokens)):
                for r in session.scalars(select(Registration).where(Registration.token.in_(chunk))):
                    regs.setdefault(r.id, r)
            needles = _Needles.of(api_name, value, tokens)
            for r in regs.values():
                needles.add_registration(r)
            needles.drop_kept(session, set(regs))

            doomed: set[int] = set()
            for chunk in _chunks(sorted(regs)):
                doomed.update(session.scalars(
                    select(Event.id).where(Event.registration_id.in_(chunk))))
            for chunk in _chunks(sorted(tokens)):
                doomed.update(session.scalars(select(Event.id).where(Event.token.in_(chunk))))
            # Other events that mention the contact: orphans (unmatched or ignored statuses,
            # rejected deep links) go; another contact's events keep their line, blanked.
            detail_text = func.lower(cast(Event.detail, Text))
            blank: dict[int, dict] = {}
            for clauses in _chunks(needles.like_clauses(detail_text), 40):
                for event_id, detail, registration_id, token in session.execute(
                    select(Event.id, Event.detail, Event.registration_id, Event.token)
                    .where(or_(*clauses))
                ):
                    if event_id in doomed or event_id in blank or not needles.in_json(detail):
                        continue
                    if registration_id is None and token is None:
                        doomed.add(event_id)
                    else:
                        blank[event_id] = needles.scrub(detail)
            for event_id, detail in blank.items():
                # the fingerprint is a hash of the raw object that held the data: it goes too
                session.execute(update(Event).where(Event.id == event_id)
                                .values(detail=detail, fingerprint=None)
                                .execution_options(synchronize_session=False))
            for chunk in _chunks(sorted(doomed)):
                session.execute(delete(Event).where(Event.id.in_(chunk))
                                .execution_options(synchronize_session=False))
            for chunk in _chunks(sorted(regs)):
                session.execute(delete(Registration).where(Registration.id.in_(chunk))
                                .execution_options(synchronize_session=False))
            scrubbed = len(blank) + self._scrub_elsewhere(session, needles)

            summary = {"by": api_name, "registrations": len(regs), "events": len(doomed)}
            if scrubbed:
                summary["scrubbed"] = scrubbed
            erased = bool(regs or doomed or scrubbed)
            if erased:
                self._events(session, [{"at": self.clock(), "kind": "erased", "token": None,
                                        "registration_id": None, "detail": dict(summary)}])
        return {**summary, "scrubbed": scrubbed, "erased": erased}

    @staticmethod
    def _scrub_elsewhere(session, needles: _Needles) -> int:
        """Mentions left in rows that are not the contact's own: replaced by ``[erased]``."""
        scrubbed = 0
        for name in ("last_error", "removal_reason"):
            col = getattr(Registration, name)
            for clauses in _chunks(needles.like_clauses(func.lower(col)), 40):
                for rid, textual in session.execute(
                    select(Registration.id, col).where(or_(*clauses))
                ):
                    if needles.in_text(textual):
                        session.execute(update(Registration).where(Registration.id == rid)
                                        .values({name: ERASED})
                                        .execution_options(synchronize_session=False))
                        scrubbed += 1
        for row in session.scalars(select(BridgeState)):
            if needles.in_json(row.value):
                row.value = needles.scrub(row.value)
                scrubbed += 1
        return scrubbed


def encode_cursor(last_id: int) -> str:
    raw = json.dumps({"before": last_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))["before"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
            raise ValueError
        return value
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError("Not a valid cursor.") from exc


# --- erasure helpers -------------------------------------------------------------

ERASED = "[erased]"
# Our own numeric bookkeeping in event details: never read as a chat id.
_COUNTER_KEYS = frozenset({
    "attempt", "attempts", "batch", "status", "ms", "retryAfter", "registrations", "events",
    "processed", "unmatched", "ignored", "code", "count", "scrubbed",
})
_CONTACT_KEYS = frozenset({"contactId", "contact_id"})
_PHONE_RUN = re.compile(r"\+?\d[\d ()\-]*\d")


def _chunks(items: Sequence, size: int = 500) -> Iterable[list]:
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _json_escaped(text: str) -> str:
    return json.dumps(text)[1:-1]


@dataclass
class _Needles:
    """The values an erasure looks for, and how each is recognised in stored JSON and text."""

    emails: set[str]
    phones: set[str]
    tokens: set[str]
    external_ids: set[str]
    contact_ids: set[int]
    asked: tuple[str, Any] = ("", None)

    @classmethod
    def of(cls, api_name: str, value, tokens: set[str]) -> _Needles:
        needles = cls(set(), set(), set(tokens), set(), set(), (api_name, value))
        needles._add(api_name, value)
        return needles

    def _add(self, api_name: str, value) -> None:
        if value is None:
            return
        if api_name == "token":
            self.tokens.add(str(value))
        elif api_name == "email":
            self.emails.add(str(value).lower())
        elif api_name == "phone":
            self.phones.add(str(value))
        elif api_name == "externalCustomerId":
            self.external_ids.add(str(value))
        elif api_name == "contactId":
            self.contact_ids.add(int(value))

    def add_registration(self, r: Registration) -> None:
        for api_name, column in IDENTIFIERS:
            self._add(api_name, getattr(r, column))

    def drop_kept(self, session, erased_ids: set[int]) -> None:
        """Forget identifiers (other than the one asked for) that remaining rows still hold."""
        for api_name, column in IDENTIFIERS:
            values = {
                "email": self.emails, "phone": self.phones,
                "externalCustomerId": self.external_ids, "contactId": self.contact_ids,
            }[api_name]
            col = getattr(Registration, column)
            for chunk in _chunks(sorted(values, key=str)):
                kept = session.execute(
                    select(col, Registration.id).where(col.in_(chunk))
                ).all()
                for held, rid in kept:
                    if rid not in erased_ids and (api_name, held) != self.asked:
                        values.discard(held)

    def like_clauses(self, lowered_text) -> list:
        """SQL conditions that pick candidate rows (refined by :meth:`in_json`/:meth:`in_text`)."""
        plain = set(self.tokens) | {str(c) for c in self.contact_ids} | set(self.phones)
        for text_value in (*self.emails, *self.external_ids):
            plain.update({text_value.lower(), _json_escaped(text_value).lower()})
        clauses = [lowered_text.contains(p, autoescape=True) for p in sorted(plain) if p]
        # a phone as the sender wrote it: "+380 (95) 649-09-55"
        clauses += [lowered_text.like("%" + "%".join(p) + "%") for p in sorted(self.phones)]
        return clauses

    def in_text(self, text_value: str | None) -> bool:
        if not text_value:
            return False
        lowered = text_value.lower()
        if any(re.search(rf"(?<![\w.!#$%&'*+/=?^`{{|}}~-]){re.escape(e)}(?![\w-]|\.[\w-])",
                         lowered) for e in self.emails):
            return True
        if self.phones and any(
            re.sub(r"\D", "", run) in self.phones for run in _PHONE_RUN.findall(text_value)
        ):
            return True
        # a chat id as a number of its own: not part of a longer number, a time or a decimal
        if any(re.search(rf"(?<![\d.:-]){re.escape(t)}(?!\d|[.:]\d)", text_value)
               for t in self.tokens):
            return True
        return text_value.strip() in self.external_ids

    def in_json(self, value, key: str | None = None) -> bool:
        if isinstance(value, dict):
            return any(self.in_json(v, str(k)) for k, v in value.items())
        if isinstance(value, list):
            return any(self.in_json(v, key) for v in value)
        if isinstance(value, bool) or value is None:
            return False
        if isinstance(value, int):
            if key in _CONTACT_KEYS and value in self.contact_ids:
                return True
            return key not in _COUNTER_KEYS and (
                str(value) in self.tokens or str(value) in self.phones
            )
        if isinstance(value, str):
            if key in _CONTACT_KEYS and re.fullmatch(r"[0-9]{1,19}", value.strip()):
                if int(value.strip()) in self.contact_ids:
                    return True
            return self.in_text(value)
        return False

    def scrub(self, value, key: str | None = None):
        """``value`` with every mentioning leaf replaced by ``[erased]``."""
        if isinstance(value, dict):
            return {k: self.scrub(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v, key) for v in value]
        return ERASED if self.in_json(value, key) else value
