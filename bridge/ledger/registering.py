"""Registration with duplicate suppression: new token requests into the outbox.

At most one live (not removed) registration holds a live key (token, matched_by,
match value): a partial unique index enforces it, an ``INSERT … ON CONFLICT DO
NOTHING`` skips a taken key, and the registration holding it is answered as a
duplicate. One path for SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select

from ..db import insert_unless_taken, lock_keys
from ..models import Registration
from .states import INITIAL, LIVE, append_events
from .types import Outcome, TokenRequest

_TABLE = Registration.__table__
_INSERT = {
    dialect: stmt.returning(_TABLE.c.id, _TABLE.c.token, _TABLE.c.matched_by,
                            _TABLE.c.match_value)
    for dialect, stmt in zip(
        ("sqlite", "postgresql"),
        insert_unless_taken(_TABLE, ["token", "matched_by", "match_value"],
                            "state <> 'removed'"),
        strict=True,
    )
}
def _row(request: TokenRequest, now: datetime) -> dict:
    return {
        "token": request.token,
        "contact_id": request.contact_id,
        "external_customer_id": request.external_customer_id,
        "phone": request.phone,
        "email": request.email,
        "matched_by": request.matched_by,
        "match_value": request.match_value,
        "state": INITIAL.value,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


def _insert_free(conn, rows: list[dict]) -> dict[tuple, int]:
    """Insert the rows whose live key is free; {live key: new id} of those inserted."""
    if not rows:
        return {}
    result = conn.execute(_INSERT[conn.dialect.name], rows)
    return {(t, m, v): i for i, t, m, v in result}


def _find_live(conn, keys: list[tuple]) -> dict[tuple, tuple[int, str]]:
    """The live registrations holding these keys: {key: (id, state)}."""
    wanted = set(keys)
    found: dict[tuple, tuple[int, str]] = {}
    tokens = sorted({key[0] for key in keys})
    for start in range(0, len(tokens), 500):
        rows = conn.execute(
            select(Registration.token, Registration.matched_by, Registration.match_value,
                   Registration.id, Registration.state)
            .where(Registration.token.in_(tokens[start:start + 500]),
                   Registration.state.in_([s.value for s in LIVE]))
            # PostgreSQL: wait for a removal in progress (it holds the row) and see its
            # outcome, so that the history's order is the real one.
            .order_by(Registration.id)
            .with_for_update(read=True)
        )
        for t, m, v, rid, state in rows:
            if (t, m, v) in wanted:
                found[(t, m, v)] = (rid, state)
    return found


def register(conn, requests: Sequence[TokenRequest], sources: Sequence[str],
             now: datetime) -> list[Outcome]:
    """Put ``requests`` in the outbox in the transaction of ``conn``, suppressing live
    duplicates (within the call too); one ``submitted`` event each (``sources[i]``
    is request i's). Returns one outcome per request, in order."""
    first: dict[tuple, int] = {}
    rows: list[dict] = []
    for index, request in enumerate(requests):
        key = request.live_key
        if key not in first:
            first[key] = index
            rows.append(_row(request, now))
    keys = list(first)
    row_of = dict(zip(keys, rows, strict=True))
    # PostgreSQL: two transactions inserting the same keys in different orders would wait
    # for each other's uncommitted rows; a single key cannot close such a cycle.
    if len(keys) > 1:
        lock_keys(conn, ["\x1f".join(key) for key in keys])
    inserted = _insert_free(conn, rows)
    existing: dict[tuple, tuple[int, str]] = {}
    pending = [k for k in keys if k not in inserted]
    # PostgreSQL (READ COMMITTED): the live row that made an insert a no-op can be
    # removed (a block) and committed before the look-up finds it; its key is then
    # free, and the next pass inserts it. SQLite's writers are serial: one pass.
    for _attempt in range(10):
        if not pending:
            break
        existing.update(_find_live(conn, pending))
        gone = [k for k in pending if k not in existing]
        inserted.update(_insert_free(conn, [row_of[k] for k in gone]))
        pending = [k for k in gone if k not in inserted]
    else:
        raise RuntimeError("a registration kept changing under concurrent removals")

    outcomes, events = [], []
    for index, request in enumerate(requests):
        key = request.live_key
        if key in inserted and first[key] == index:
            outcome = Outcome(inserted[key], request.token, request.matched_by,
                              INITIAL.value, False)
        else:
            rid, state = (inserted[key], INITIAL.value) if key in inserted else existing[key]
            outcome = Outcome(rid, request.token, request.matched_by, state, True)
        outcomes.append(outcome)
        events.append({
            "at": now, "registration_id": outcome.id, "token": outcome.token,
            "kind": "submitted",
            "detail": {"source": sources[index], "matchedBy": outcome.matched_by,
                       "duplicate": outcome.duplicate, "state": outcome.state},
        })
    append_events(conn, events)
    return outcomes
