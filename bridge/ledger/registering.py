"""Registration: new token requests into the outbox, with duplicate suppression and
identity conflicts.

At most one live (not removed) registration holds a live key (token, matched_by,
match value): a partial unique index enforces it, and a request whose key is
live is answered as a duplicate of the registration holding it (a repeated
submission is a sign of life: its ``last_seen_at`` moves on). A new key for a chat
that has a live registration under another identity is an identity conflict:
Reteno would put the one chat on two contact cards. It is registered with
``conflict`` set, a ``conflict`` history event names the other registrations,
and with ``hold`` it starts ``held`` instead of ``queued``. A new registration
inherits ``reteno_holds`` from an earlier one of the same chat and identity: Reteno's
contact card keeps a delivered token until one of its own sends fails with Forbidden.
One path for SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import NamedTuple

from sqlalchemy import bindparam, or_, select, update

from ..db import in_pages, in_params, insert_unless_taken, lock_keys, page_params, run
from ..models import Registration, utcnow
from .states import REGISTRATIONS, State, append_events, sql_constant
from .times import received
from .types import Outcome, TokenRequest

_TABLE = Registration.__table__
_INSERT = {
    dialect: stmt.returning(_TABLE.c.id, _TABLE.c.token, _TABLE.c.matched_by, _TABLE.c.match_value)
    for dialect, stmt in zip(
        ("sqlite", "postgresql"),
        insert_unless_taken(_TABLE, ["token", "matched_by", "match_value"], "state <> 'removed'"),
        strict=True,
    )
}
# where a registration starts (the state table's inserts)
_SUBMITTED, _HELD, _RESTORED = (
    REGISTRATIONS.first(kind).value for kind in ("submitted", "held", "restored")
)
_TOUCH = (
    update(Registration)
    .where(
        Registration.id.in_(bindparam("ids", expanding=True)),
        Registration.last_seen_at < bindparam("seen"),
    )
    .values(last_seen_at=bindparam("seen"))
)
_TOUCH_ONE = (
    update(Registration)
    .where(Registration.id == bindparam("row_id"), Registration.last_seen_at < bindparam("seen"))
    .values(last_seen_at=bindparam("seen"), updated_at=bindparam("changed"))
)


def _row(
    request: TokenRequest, now: datetime, seen: datetime, state: str, conflict: bool, holds: bool
) -> dict:
    return {
        "token": request.token,
        "contact_id": request.contact_id,
        "external_customer_id": request.external_customer_id,
        "phone": request.phone,
        "email": request.email,
        "matched_by": request.matched_by,
        "match_value": request.match_value,
        "state": state,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
        "last_seen_at": seen,
        "conflict": conflict,
        "reteno_holds": holds,
    }


_LIVE_COLUMNS = (
    Registration.token,
    Registration.matched_by,
    Registration.match_value,
    Registration.id,
    Registration.state,
    Registration.reteno_holds,
)


@cache
def _live_of_page(size: int, held: bool = False):
    """The live registrations of ``size`` chats (parameters ``t0`` …), with ``held``
    also the removed ones Reteno still holds, oldest first; on the driver (``run``), a
    statement shape per page size (``in_params``), each built once: SQLAlchemy's
    expanding ``IN`` costs more than SQLite's work."""
    live = Registration.state != sql_constant(State.REMOVED)
    return (
        select(*_LIVE_COLUMNS)
        .where(
            in_params(Registration.token, "t", size),
            or_(live, Registration.reteno_holds) if held else live,
        )
        .order_by(Registration.id)
        .with_for_update(read=True)
    )


class LiveRow(NamedTuple):
    token: str
    matched_by: str
    match_value: str
    id: int
    state: str
    reteno_holds: bool


def live_of_tokens(conn, tokens: Sequence[str], held: bool = False) -> dict[str, list[LiveRow]]:
    """The live registrations of these chats (with ``held`` also the removed ones Reteno
    still holds), oldest first: {token: [rows]}. On PostgreSQL the rows are
    share-locked: a removal in progress is waited for, and none can start before this
    transaction ends."""
    found: dict[str, list[LiveRow]] = defaultdict(list)
    for page in in_pages(sorted(set(tokens))):  # a chat's rows: one page
        for row in run(conn, _live_of_page(len(page), held), page_params(page, "t")):
            found[row[0]].append(LiveRow(*row))
    return found


def touch(conn, ids: Sequence[int], seen: datetime) -> None:
    """A sign of life at ``seen`` for these registrations (a later one is kept)."""
    ids = list(ids)
    if len(ids) == 1:  # a repeated single registration: on the driver
        run(conn, _TOUCH_ONE, {"row_id": ids[0], "seen": seen, "changed": utcnow()})
        return
    for page in in_pages(ids):
        conn.execute(_TOUCH, {"ids": page, "seen": seen})


def _conflicting(
    key: tuple,
    live: dict[str, list[LiveRow]],
    new_keys: dict[str, list[tuple]],
    inserted: dict[tuple, int],
) -> list[int]:
    """The registrations a new ``key`` conflicts with: its chat's live ones, then those of
    the chat's new keys that came before it in the same call (``new_keys``: a chat's new
    keys in order, for the chats that have several)."""
    chat = new_keys.get(key[0], [])
    earlier = chat[: chat.index(key)] if key in chat else []
    return [r.id for r in live.get(key[0], ())] + [inserted[k] for k in earlier]


def register(
    conn,
    requests: Sequence[TokenRequest],
    sources: Sequence[str],
    now: datetime,
    hold_conflicts: bool = False,
    seen: Sequence[datetime | None] | None = None,
) -> list[Outcome]:
    """Put ``requests`` in the outbox in the transaction of ``conn``, suppressing live
    duplicates (within the call too) and flagging identity conflicts; one
    ``submitted`` event each (``sources[i]`` is request i's), one ``conflict`` event
    per conflicting new registration. ``seen[i]``: when request i's chat was last
    seen alive (default, and at the latest, ``now``). Returns one outcome per request,
    in order."""
    seen = [received(s, now)[0] for s in seen] if seen is not None else [now] * len(requests)
    tokens = sorted({r.token for r in requests})
    # PostgreSQL: one chat's registrations are decided one transaction at a time, so two
    # identities submitted at once for the same chat see each other.
    lock_keys(conn, [f"chat:{t}" for t in tokens])
    live, held = _live_and_held(conn, tokens)
    existing = {(r.token, r.matched_by, r.match_value): r for rows in live.values() for r in rows}
    keys = [r.live_key for r in requests]
    new = _new_rows(requests, keys, existing, live, held, now, seen, hold_conflicts)
    inserted = {}
    if new.rows:
        inserted = {
            (t, m, v): i
            for i, t, m, v in run(conn, _INSERT[conn.dialect.name], list(new.rows.values()))
        }
    if len(inserted) != len(new.rows):  # only without the chat lock: cannot happen here
        raise RuntimeError("a registration was inserted concurrently")
    touched: dict[datetime, list[int]] = defaultdict(list)  # the duplicates' signs of life
    for index, key in enumerate(keys):
        if key in existing:
            touched[seen[index]].append(existing[key].id)
    for at, ids in touched.items():
        touch(conn, ids, at)
    outcomes, events = _history(now, requests, sources, keys, new, inserted, existing, live)
    append_events(conn, events)
    return outcomes


def _live_and_held(conn, tokens: Sequence[str]) -> tuple[dict[str, list[LiveRow]], set[tuple]]:
    """The chats' live registrations ({token: [rows]}, oldest first), and the keys
    (token, matched_by, match_value) under which Reteno holds a chat's token."""
    live: dict[str, list[LiveRow]] = defaultdict(list)
    held: set[tuple] = set()
    for token, found in live_of_tokens(conn, tokens, held=True).items():
        for r in found:
            if r.reteno_holds:
                held.add((r.token, r.matched_by, r.match_value))
            if r.state != State.REMOVED.value:
                live[token].append(r)
    return live, held


class _New(NamedTuple):
    """The new keys of a call: each one's first request, its row, and how many new keys
    each chat has."""

    first: dict[tuple, int]  # new key -> index of its first request
    rows: dict[tuple, dict]  # new key -> its row
    in_chat: dict[str, int]  # token -> its new keys


def _new_rows(
    requests: Sequence[TokenRequest],
    keys: list[tuple],
    existing: dict,
    live: dict[str, list[LiveRow]],
    held: set[tuple],
    now: datetime,
    seen: list[datetime],
    hold_conflicts: bool,
) -> _New:
    """A row for each key not live, from its first request: a conflict when its chat
    is live under another identity or has an earlier new key, held if conflicts are."""
    new = _New({}, {}, {})
    for index, (request, key) in enumerate(zip(requests, keys, strict=True)):
        if key in existing or key in new.first:
            continue
        new.first[key] = index
        earlier = new.in_chat.get(request.token, 0)
        new.in_chat[request.token] = earlier + 1
        conflict = earlier > 0 or request.token in live
        state = _HELD if conflict and hold_conflicts else _SUBMITTED
        new.rows[key] = _row(request, now, seen[index], state, conflict, key in held)
    return new


def _history(
    now: datetime,
    requests: Sequence[TokenRequest],
    sources: Sequence[str],
    keys: list[tuple],
    new: _New,
    inserted: dict[tuple, int],
    existing: dict,
    live: dict[str, list[LiveRow]],
) -> tuple[list[Outcome], list[dict]]:
    """One outcome per request, and the history: a ``submitted`` event each, a
    ``conflict`` event for each new conflicting registration."""
    new_keys: dict[str, list[tuple]] = defaultdict(list)  # only chats with several
    for key in new.rows:
        if new.in_chat[key[0]] > 1:
            new_keys[key[0]].append(key)
    outcomes, events = [], []
    for index, (request, key) in enumerate(zip(requests, keys, strict=True)):
        row = new.rows.get(key)
        if row is not None:
            rid, state, duplicate, conflict = (
                inserted[key],
                row["state"],
                new.first[key] != index,
                row["conflict"],
            )
        else:
            rid, state, duplicate, conflict = existing[key].id, existing[key].state, True, False
        outcomes.append(Outcome(rid, request.token, key[1], state, duplicate, conflict))
        events.append(
            {
                "at": now,
                "registration_id": rid,
                "token": request.token,
                "kind": "submitted",
                "detail": {
                    "source": sources[index],
                    "matchedBy": key[1],
                    "duplicate": duplicate,
                    "state": state,
                },
            }
        )
        if conflict and not duplicate:
            events.append(
                {
                    "at": now,
                    "registration_id": rid,
                    "token": request.token,
                    "kind": "conflict",
                    "detail": {
                        "with": _conflicting(key, live, new_keys, inserted),
                        "matchedBy": key[1],
                        "held": state == _HELD,
                    },
                }
            )
    return outcomes, events


def restore(conn, now: datetime, last, seen: datetime, delivered_at: datetime) -> int:
    """The chat came back (an unblock) while Reteno still holds its token under the
    identity of ``last`` (its latest registration): a registration with those
    identifiers, live and delivered with nothing to send; its id. It was never sent
    itself, so it has no ``delivered_at`` of its own (a day's deliveries count each
    call once); when Reteno got the token goes to its history. The caller holds the
    chat's lock and has seen nothing live."""
    request = TokenRequest(
        last.token, last.contact_id, last.external_customer_id, last.phone, last.email
    )
    row = {**_row(request, now, seen, _RESTORED, False, True), "next_attempt_at": None}
    [(rid, *_key)] = run(conn, _INSERT[conn.dialect.name], [row])
    append_events(
        conn,
        [
            {
                "at": now,
                "registration_id": rid,
                "token": last.token,
                "kind": "restored",
                "detail": {
                    "source": "telegram",
                    "matchedBy": request.matched_by,
                    "previousRegistrationId": last.id,
                    "deliveredAt": delivered_at.isoformat(),
                },
            }
        ],
    )
    return rid
