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
import json
import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from .db import Database
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
    rows: tuple[Registration, ...]

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.rows]


def _live_key(item: dict) -> tuple[str, str, str]:
    return item["token"], item["matchedBy"], item["matchValue"]


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

    # --- events ----------------------------------------------------------

    @staticmethod
    def _events(session, rows: Iterable[dict]) -> None:
        rows = list(rows)
        if rows:
            session.execute(insert(Event), rows)

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
            module = sqlite if dialect == "sqlite" else postgresql
            stmt = (
                module.insert(Registration)
                .values(rows)
                .on_conflict_do_nothing(
                    index_elements=["token", "matched_by", "match_value"],
                    index_where=text("state <> 'removed'"),
                )
                .returning(*cols)
            )
            return {(t, m, v): i for i, t, m, v in session.execute(stmt)}
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

    def register(self, items: Sequence[dict], source: str = "api") -> list[Outcome]:
        """Put validated token objects in the outbox, suppressing live duplicates.

        One transaction: either every item is in the ledger or none is.
        """
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
        with self.db.write() as session:
            inserted = self._insert_new(session, rows)
            missing = [k for k in first if k not in inserted]
            existing: dict[tuple, tuple[int, str]] = {}
            for chunk_start in range(0, len(missing), 300):
                chunk = missing[chunk_start : chunk_start + 300]
                found = session.execute(
                    select(
                        Registration.token,
                        Registration.matched_by,
                        Registration.match_value,
                        Registration.id,
                        Registration.state,
                    ).where(
                        tuple_(
                            Registration.token, Registration.matched_by, Registration.match_value
                        ).in_(chunk),
                        Registration.state != REMOVED,
                    )
                )
                for t, m, v, rid, state in found:
                    existing[(t, m, v)] = (rid, state)
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
                            "source": source,
                            "matchedBy": outcome.matchedBy,
                            "duplicate": outcome.duplicate,
                            "state": outcome.state,
                        },
                    }
                )
            self._events(session, events)
        if inserted:
            self.on_queued()
        return outcomes

    # --- shared upstream state (pause, hold, last result) ------------------

    def upstream_state(self, session=None) -> dict[str, Any]:
        if session is None:
            with self.db.read() as s:
                return self.upstream_state(s)
        row = session.get(BridgeState, UPSTREAM)
        return dict(row.value) if row else {}

    def _set_upstream(self, session, **changes) -> dict:
        row = session.get(BridgeState, UPSTREAM, with_for_update=True)
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
            session.execute(
                update(Registration)
                .where(Registration.id.in_(ids))
                .values(
                    lease_id=lease_id,
                    next_attempt_at=now + timedelta(seconds=lease_seconds),
                    attempts=Registration.attempts + 1,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            rows = session.scalars(
                select(Registration).where(Registration.id.in_(ids)).order_by(Registration.id)
            ).all()
            session.expunge_all()
        return Claim(lease_id, tuple(rows))

    def _finish(self, session, claim: Claim, rows: Sequence[Registration], values: dict,
                kind: str, detail: dict) -> int:
        now = self.clock()
        ids = [r.id for r in rows]
        if not ids:
            return 0
        moved = set(
            session.scalars(
                update(Registration)
                .where(
                    Registration.id.in_(ids),
                    Registration.lease_id == claim.lease_id,
                    Registration.state == QUEUED,
                )
                .values(lease_id=None, updated_at=now, **values)
                .returning(Registration.id)
                .execution_options(synchronize_session=False)
            )
        )
        self._events(
            session,
            (
                {
                    "at": now,
                    "registration_id": r.id,
                    "token": r.token,
                    "kind": kind,
                    "detail": {"attempt": r.attempts, **detail},
                }
                for r in rows
                if r.id in moved
            ),
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
        session.execute(
            update(Registration)
            .where(Registration.id.in_([r.id for r in live]), Registration.state != REMOVED)
            .values(state=REMOVED, removed_at=now, removal_reason=reason, lease_id=None,
                    next_attempt_at=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
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

    def requeue_dead(self, ids: Sequence[int] | None = None, error_contains: str | None = None,
                     ) -> int:
        """Dead letters back to the queue (all, or those matching the filters)."""
        now = self.clock()
        with self.db.write() as session:
            query = select(Registration).where(Registration.state == DEAD)
            if ids:
                query = query.where(Registration.id.in_(list(ids)))
            if error_contains:
                query = query.where(Registration.last_error.contains(error_contains))
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


def encode_cursor(last_id: int) -> str:
    raw = json.dumps({"before": last_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))["before"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError
        return value
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError("Not a valid cursor.") from exc


