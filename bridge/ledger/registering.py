"""Registration: new token requests into the outbox, with duplicate suppression and
identity conflicts.

At most one live (not removed) registration holds a live key (token, matched_by,
match value): a partial unique index enforces it, and a request whose key is
live is answered as a duplicate of the registration holding it (a repeated
submission is a sign of life: its ``last_seen_at`` moves on). A new key for a chat
that has a live registration under another identity is an identity conflict:
Reteno would put the one chat on two contact cards. It is registered with
``conflict`` set, a ``conflict`` history event names the other registrations,
and with ``hold`` it starts ``held`` instead of ``queued``. One path for SQLite
and PostgreSQL.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import NamedTuple

from sqlalchemy import bindparam, literal_column, select, update

from ..db import insert_unless_taken, lock_keys, page_bounds, run
from ..models import Registration, utcnow
from .states import State, append_events
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
_TOUCH = (update(Registration)
          .where(Registration.id.in_(bindparam("ids", expanding=True)),
                 Registration.last_seen_at < bindparam("seen"))
          .values(last_seen_at=bindparam("seen")))
_TOUCH_ONE = (update(Registration)
              .where(Registration.id == bindparam("row_id"),
                     Registration.last_seen_at < bindparam("seen"))
              .values(last_seen_at=bindparam("seen"), updated_at=bindparam("changed")))


def _row(request: TokenRequest, now: datetime, seen: datetime, state: State,
         conflict: bool) -> dict:
    return {
        "token": request.token,
        "contact_id": request.contact_id,
        "external_customer_id": request.external_customer_id,
        "phone": request.phone,
        "email": request.email,
        "matched_by": request.matched_by,
        "match_value": request.match_value,
        "state": state.value,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
        "last_seen_at": seen,
        "conflict": conflict,
    }


_LIVE_COLUMNS = (Registration.token, Registration.matched_by, Registration.match_value,
                 Registration.id, Registration.state)
@cache
def _live_of_page(size: int):
    """The live registrations of ``size`` chats (parameters ``t0`` …), oldest first; on
    the driver (``run``), a statement shape per page size (``page_bounds``), each built
    once: SQLAlchemy's expanding ``IN`` costs more than SQLite's work."""
    return (select(*_LIVE_COLUMNS)
            .where(Registration.token.in_([bindparam(f"t{i}") for i in range(size)]),
                   Registration.state != literal_column(f"'{State.REMOVED.value}'"))
            .order_by(Registration.id).with_for_update(read=True))


class LiveRow(NamedTuple):
    token: str
    matched_by: str
    match_value: str
    id: int
    state: str


def live_of_tokens(conn, tokens: Sequence[str]) -> dict[str, list[LiveRow]]:
    """The live registrations of these chats, oldest first: {token: [rows]}. On
    PostgreSQL the rows are share-locked: a removal in progress is waited for, and
    none can start before this transaction ends."""
    found: dict[str, list[LiveRow]] = defaultdict(list)
    tokens = sorted(set(tokens))
    for start, size in page_bounds(len(tokens)):  # a chat's rows come from one page
        page = {f"t{i}": token for i, token in enumerate(tokens[start:start + size])}
        for row in run(conn, _live_of_page(size), page):
            found[row[0]].append(LiveRow(*row))
    return found


def touch(conn, ids: Sequence[int], seen: datetime) -> None:
    """A sign of life at ``seen`` for these registrations (a later one is kept)."""
    ids = list(ids)
    if len(ids) == 1:  # a repeated single registration: on the driver
        run(conn, _TOUCH_ONE, {"row_id": ids[0], "seen": seen, "changed": utcnow()})
        return
    for start in range(0, len(ids), 500):
        conn.execute(_TOUCH, {"ids": ids[start:start + 500], "seen": seen})


def register(conn, requests: Sequence[TokenRequest], sources: Sequence[str], now: datetime,
             hold_conflicts: bool = False,
             seen: Sequence[datetime | None] | None = None) -> list[Outcome]:
    """Put ``requests`` in the outbox in the transaction of ``conn``, suppressing live
    duplicates (within the call too) and flagging identity conflicts; one
    ``submitted`` event each (``sources[i]`` is request i's), one ``conflict`` event
    per conflicting new registration. ``seen[i]``: when request i's chat was last
    seen alive (default ``now``). Returns one outcome per request, in order."""
    seen = [s or now for s in seen] if seen is not None else [now] * len(requests)
    tokens = sorted({r.token for r in requests})
    # PostgreSQL: one chat's registrations are decided one transaction at a time, so two
    # identities submitted at once for the same chat see each other.
    lock_keys(conn, [f"chat:{t}" for t in tokens])
    live = live_of_tokens(conn, tokens)
    existing = {(r.token, r.matched_by, r.match_value): r for rows in live.values()
                for r in rows}

    first: dict[tuple, int] = {}  # new key -> index of its first request
    rows: dict[tuple, dict] = {}  # new key -> its row
    # new key -> the chat's live registrations, and its new keys earlier in this call
    others: dict[tuple, tuple[list[int], list[tuple]]] = {}
    new_keys_of: dict[str, list[tuple]] = defaultdict(list)
    for index, request in enumerate(requests):
        key = request.live_key
        if key in existing or key in first:
            continue
        first[key] = index
        others[key] = ([r.id for r in live.get(request.token, ())],
                       list(new_keys_of[request.token]))
        conflict = bool(others[key][0] or others[key][1])
        state = State.HELD if conflict and hold_conflicts else State.QUEUED
        rows[key] = _row(request, now, seen[index], state, conflict)
        new_keys_of[request.token].append(key)
    inserted = {}
    if rows:
        inserted = {(t, m, v): i
                    for i, t, m, v in run(conn, _INSERT[conn.dialect.name], list(rows.values()))}
    if len(inserted) != len(rows):  # only without the chat lock: cannot happen here
        raise RuntimeError("a registration was inserted concurrently")
    touched: dict[datetime, list[int]] = defaultdict(list)
    for index, request in enumerate(requests):
        if request.live_key in existing:
            touched[seen[index]].append(existing[request.live_key].id)
    for at, ids in touched.items():
        touch(conn, ids, at)

    outcomes, events = [], []
    for index, request in enumerate(requests):
        key = request.live_key
        if key in rows:
            rid, state, duplicate = inserted[key], rows[key]["state"], first[key] != index
            conflict = rows[key]["conflict"]
        else:
            rid, state, duplicate, conflict = existing[key].id, existing[key].state, True, False
        outcome = Outcome(rid, request.token, request.matched_by, state, duplicate, conflict)
        outcomes.append(outcome)
        events.append({
            "at": now, "registration_id": outcome.id, "token": outcome.token,
            "kind": "submitted",
            "detail": {"source": sources[index], "matchedBy": outcome.matched_by,
                       "duplicate": outcome.duplicate, "state": outcome.state},
        })
        if conflict and not duplicate:
            live_ids, earlier = others[key]
            events.append({
                "at": now, "registration_id": outcome.id, "token": outcome.token,
                "kind": "conflict",
                "detail": {"with": live_ids + [inserted[k] for k in earlier],
                           "matchedBy": outcome.matched_by,
                           "held": state == State.HELD.value},
            })
    append_events(conn, events)
    return outcomes
