"""Outgoing events: the bots' custom events for Reteno (``bridge_outgoing_events``), in
an outbox of their own (claimed, leased and finished like registrations,
:mod:`.outbox`).

Owns what an event is sent with and when. An event is taken only for a chat with a
live registration (queued or delivered); it goes out once Reteno has the chat (a
registration of it delivered: a workflow the event starts can then reach the chat),
one call each, with the contact identifier of the chat's newest delivered
registration added to its params, the highest it carries in Reteno's order for
events (:data:`EVENT_IDENTIFIERS`). The identifier is chosen when the event is sent,
so it is the one Reteno holds the chat under then. An event whose chat has no live
registration any more when it comes due (the chat blocked the bot) is ``dropped``:
not sent, with the reason in ``last_error``.

A claim leases many due events at once (the worker asks for as many as it has calls
in flight); the worker sends them one call each and records the claim's outcomes in
one transaction (:func:`.outbox.record_each`): a transaction per event, not per call
to Reteno, was what bounded the events a second.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import bindparam, func, insert, literal, select, tuple_, update

from ..db import in_pages
from ..models import OutgoingEvent, Registration
from .outbox import blocked_until, upstream_state
from .states import EVENTS, State, append_events, sql_constant
from .times import received
from .types import Claim, EventRecord, EventRequest

#: Reteno's order of contact identifiers in an event's params (not the registrations':
#: email comes before phone), as (param name, registration column).
EVENT_IDENTIFIERS = (
    ("contactId", "contact_id"),
    ("externalCustomerId", "external_customer_id"),
    ("email", "email"),
    ("phone", "phone"),
)
#: Why a dropped event was not sent (its ``last_error``).
DROPPED = "not sent: the chat has no live registration (it blocked the bot, or was removed)"
# the registrations an event can be sent for: what Reteno has or is about to have
_SENDABLE = (State.QUEUED.value, State.DELIVERED.value)
_REQUESTED = EVENTS.first("requested").value
_PAGE = 200  # due events read at once by a claim (more when it claims more)
_INSERT = insert(OutgoingEvent).returning(OutgoingEvent.id, sort_by_parameter_order=True)
_SET_REGISTRATION = (
    update(OutgoingEvent)
    .where(OutgoingEvent.id == bindparam("row_id"))
    .values(registration_id=bindparam("reg"))
    .execution_options(synchronize_session=False)
)


class EventRow(NamedTuple):
    """A claimed event: what the upstream call needs, and what finishing it needs."""

    id: int
    token: str
    attempts: int
    registration_id: int
    event_type_key: str
    params: dict[str, Any]
    identifier: str  # the param name of the contact identifier added (contactId, …)
    identifier_value: str


def _sendable_of(conn, tokens: Sequence[str]) -> dict[str, int]:
    """The newest queued or delivered registration of each of these chats that has one."""
    found: dict[str, int] = {}
    for page in in_pages(sorted(set(tokens))):
        for token, reg_id in conn.execute(
            select(Registration.token, func.max(Registration.id))
            .where(Registration.token.in_(page), Registration.state.in_(_SENDABLE))
            .group_by(Registration.token)
        ):
            found[token] = int(reg_id)
    return found


def request(
    conn, now: datetime, requests: Sequence[EventRequest], source: str
) -> tuple[list[EventRecord], list[str]]:
    """Queue ``requests``: (their records, in order; ``[]``) or, when some chat has no
    live registration, (``[]``, those chats, in order) and nothing stored."""
    live = _sendable_of(conn, [r.token for r in requests])
    missing = list(dict.fromkeys(r.token for r in requests if r.token not in live))
    if missing:
        return [], missing
    times = [received(r.time, now) for r in requests]
    ids = (
        conn.execute(
            _INSERT,
            [
                {
                    "token": r.token,
                    "registration_id": live[r.token],
                    "event_type_key": r.event_type_key,
                    "params": r.params,
                    "occurred_at": at,
                    "state": _REQUESTED,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
                for r, (at, _, _) in zip(requests, times, strict=True)
            ],
        )
        .scalars()
        .all()
    )
    append_events(
        conn,
        [
            {
                "at": now,
                "registration_id": live[r.token],
                "token": r.token,
                "kind": EVENTS.event("requested", r),
                # the names only: the values stay in the event's row
                "detail": {
                    "id": row_id,
                    "source": source,
                    "eventTypeKey": r.event_type_key,
                    "params": sorted(r.params),
                    "time": at.isoformat(),
                    **note,
                },
            }
            for row_id, r, (at, _, note) in zip(ids, requests, times, strict=True)
        ],
    )
    return [
        EventRecord(row_id, r.token, r.event_type_key, _REQUESTED, at, now)
        for row_id, r, (at, _, _) in zip(ids, requests, times, strict=True)
    ], []


def _identifier(reg: Any) -> tuple[str, str] | None:
    for name, column in EVENT_IDENTIFIERS:
        value = getattr(reg, column)
        if value is not None:
            return name, str(value)
    return None


def _chats(conn, tokens: Sequence[str]) -> tuple[set[str], set[str]]:
    """Of these chats: those Reteno has (a registration delivered), and those with a live
    registration (queued or delivered)."""
    known: set[str] = set()
    live: set[str] = set()
    for page in in_pages(sorted(set(tokens))):
        for token, state in conn.execute(
            select(Registration.token, Registration.state)
            .where(Registration.token.in_(page), Registration.state.in_(_SENDABLE))
            .distinct()
        ):
            live.add(token)
            if state == State.DELIVERED.value:
                known.add(token)
    return known, live


def claim(conn, now: datetime, limit: int, lease_seconds: int) -> Claim | None:
    """Lease up to ``limit`` due events of chats Reteno has (a registration delivered),
    oldest due first; an event due whose chat has no live registration is dropped here,
    and one waiting for its chat's registration stays out of the way. None: none due,
    or delivery held or paused.

    The due events are read a page at a time in the outbox's order (its partial index;
    the look-up of their chats is one query a page, not a subquery a row, so the
    planner cannot make a claim's cost grow with the queue)."""
    if blocked_until(upstream_state(conn), now):
        return None
    size = max(limit, _PAGE)
    due_rows = (
        select(OutgoingEvent.id, OutgoingEvent.token, OutgoingEvent.next_attempt_at)
        .where(
            OutgoingEvent.state == sql_constant(State.QUEUED),  # the outbox's partial index
            OutgoingEvent.next_attempt_at <= now,
        )
        .order_by(OutgoingEvent.next_attempt_at, OutgoingEvent.id)
        .limit(size)
        .with_for_update(skip_locked=True, of=OutgoingEvent)
    )
    ids: list[int] = []
    query = due_rows
    while len(ids) < limit:
        due = conn.execute(query).all()
        if not due:
            break
        known, live = _chats(conn, [r.token for r in due])
        EVENTS.move(
            conn,
            "dropped",
            [r for r in due if r.token not in live],
            now,
            {"next_attempt_at": None, "lease_id": None, "last_error": DROPPED},
            {"reason": DROPPED},
        )
        ids.extend(r.id for r in due if r.token in known)
        if len(due) < size:
            break
        last = due[-1]
        query = due_rows.where(
            tuple_(OutgoingEvent.next_attempt_at, OutgoingEvent.id)
            > tuple_(literal(last.next_attempt_at, OutgoingEvent.next_attempt_at.type), last.id)
        )
    ids = ids[:limit]
    if not ids:
        return None
    lease_id = uuid.uuid4().hex
    rows = conn.execute(
        update(OutgoingEvent)
        .where(OutgoingEvent.id.in_(ids))
        .values(
            lease_id=lease_id,
            next_attempt_at=now + timedelta(seconds=lease_seconds),
            attempts=OutgoingEvent.attempts + 1,
            updated_at=now,
        )
        .returning(
            OutgoingEvent.id,
            OutgoingEvent.token,
            OutgoingEvent.attempts,
            OutgoingEvent.event_type_key,
            OutgoingEvent.params,
        )
        .execution_options(synchronize_session=False)
    ).all()
    newest: dict[str, Any] = {}
    for reg in conn.execute(
        select(
            Registration.id,
            Registration.token,
            *(getattr(Registration, column) for _, column in EVENT_IDENTIFIERS),
        )
        .where(
            Registration.token.in_({r.token for r in rows}),
            Registration.state == State.DELIVERED.value,
        )
        .order_by(Registration.id)
    ):
        newest[reg.token] = reg
    gone = [r for r in rows if r.token not in newest]  # removed since it was found due
    EVENTS.move(
        conn, "not_sent", gone, now, {"lease_id": None, "next_attempt_at": now}, held_by=lease_id
    )
    claimed = []
    for r in sorted(rows, key=lambda r: r.id):
        if r.token not in newest:
            continue
        reg = newest[r.token]
        name, value = _identifier(reg)
        claimed.append(
            EventRow(r.id, r.token, r.attempts, reg.id, r.event_type_key, r.params, name, value)
        )
    if not claimed:
        return None
    conn.execute(_SET_REGISTRATION, [{"row_id": r.id, "reg": r.registration_id} for r in claimed])
    return Claim(lease_id, tuple(claimed), OutgoingEvent)


def requeue_dead(conn, now: datetime, error_contains: str | None, token: str | None) -> int:
    """Dead events (all, or those matching the filters) back to the queue."""
    query = select(
        OutgoingEvent.id,
        OutgoingEvent.token,
        OutgoingEvent.registration_id,
        OutgoingEvent.last_error,
    ).where(OutgoingEvent.state == State.DEAD.value)
    if error_contains:
        query = query.where(OutgoingEvent.last_error.contains(error_contains, autoescape=True))
    if token:
        query = query.where(OutgoingEvent.token == token)
    rows = conn.execute(query.order_by(OutgoingEvent.id)).all()
    return len(
        EVENTS.move(
            conn,
            "requeued",
            rows,
            now,
            {"next_attempt_at": now},
            lambda r: {"from": State.DEAD.value, "lastError": r.last_error},
        )
    )


def counts(conn) -> dict[str, int]:
    """Events by state, the dropped ones apart from the other dead letters."""
    out = {s: 0 for s in (*_SENDABLE, State.DEAD.value, "dropped")}
    for state, n in conn.execute(
        select(OutgoingEvent.state, func.count()).group_by(OutgoingEvent.state)
    ):
        out[state] = int(n)
    dropped = conn.execute(
        select(func.count()).where(
            OutgoingEvent.state == State.DEAD.value, OutgoingEvent.last_error == DROPPED
        )
    ).scalar()
    out["dropped"] = int(dropped or 0)
    out[State.DEAD.value] -= out["dropped"]
    return out
