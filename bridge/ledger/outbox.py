"""The outbox: claiming due registrations, and what an upstream call did with them.

The outbox is the set of ``queued`` registrations (and of queued commands,
:mod:`.commands`, and outgoing events, :mod:`.events_out`, whose claims end the same
way). A worker claims due rows,
oldest first, by pushing their ``next_attempt_at`` past a lease and stamping a
``lease_id``: a crashed worker's rows come due again by themselves, and two
workers never hold the same row at once. Every outcome (delivered, retry,
paused, dead, not sent) moves only the rows the claim still holds, through
the state table. Delivery as a whole can be held (``Retry-After``) or paused
(Reteno refused our credentials); that shared upstream state lives in the
``bridge_state`` row ``upstream``, beside the last upstream result.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update

from ..db import insert_unless_taken
from ..models import BridgeState, Command, OutgoingEvent, Registration
from .states import COMMANDS, MACHINE_OF, REGISTRATIONS, State
from .types import Claim

# Delivery policy: backoff of a failing token, pause of the whole outbox.
BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
PAUSE_BASE = 15.0
PAUSE_CAP = 600.0
UPSTREAM = "upstream"  # the bridge_state row of the shared upstream state

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
        Registration.id,
        Registration.token,
        Registration.contact_id,
        Registration.external_customer_id,
        Registration.phone,
        Registration.email,
        Registration.matched_by,
        Registration.attempts,
    )
)
_RENEW = {
    model: update(model)
    .where(
        model.id.in_(bindparam("ids", expanding=True)),
        model.lease_id == bindparam("held_by"),
        model.state == State.QUEUED.value,
    )
    .values(next_attempt_at=bindparam("until"))
    .returning(model.id)
    for model in (Registration, Command, OutgoingEvent)
}
_UPSTREAM_ROW = {
    dialect: stmt
    for dialect, stmt in zip(
        ("sqlite", "postgresql"),
        (
            s.values(name=UPSTREAM, value={}, updated_at=bindparam("now"))
            for s in insert_unless_taken(BridgeState.__table__, ["name"])
        ),
        strict=True,
    )
}


def backoff(attempts: int, retry_after: float | None = None) -> float:
    """Seconds before a token that failed ``attempts`` times is tried again: doubling
    from 1 s up to 5 minutes, jittered, and never before ``retry_after``."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempts - 1))
    delay = random.uniform(delay / 2, delay)
    return max(delay, retry_after or 0.0)


# --- the shared upstream state ---------------------------------------------------------


def upstream_state(conn) -> dict[str, Any]:
    value = conn.execute(select(BridgeState.value).where(BridgeState.name == UPSTREAM)).scalar()
    return dict(value or {})


def set_upstream(
    conn, now: datetime, changes_of: Callable[[dict], dict] | None = None, **changes
) -> dict:
    """Merge ``changes``, and ``changes_of`` the state as it is, into the upstream state,
    under a row lock (PostgreSQL)."""
    # The row exists before it is locked: two workers inserting it at once would
    # otherwise fail a transaction after Reteno took the tokens.
    conn.execute(_UPSTREAM_ROW[conn.dialect.name], {"now": now})
    value = conn.execute(
        select(BridgeState.value).where(BridgeState.name == UPSTREAM).with_for_update()
    ).scalar()
    value = {**(value or {}), **changes}
    if changes_of is not None:
        value.update(changes_of(value))
    conn.execute(
        update(BridgeState).where(BridgeState.name == UPSTREAM).values(value=value, updated_at=now)
    )
    return value


def blocked_until(state: dict, now: datetime) -> datetime | None:
    """When a pause (bad credentials) or a hold (Retry-After) ends, if one is in force."""
    ends = [
        datetime.fromisoformat(state[k]) for k in ("paused_until", "hold_until") if state.get(k)
    ]
    ends = [e for e in ends if e > now]
    return max(ends) if ends else None


# --- claims ------------------------------------------------------------------------------


def claim(conn, now: datetime, limit: int, lease_seconds: int) -> Claim | None:
    """Lease up to ``limit`` due queued registrations, oldest due first; None when none
    is due or delivery is held or paused."""
    if blocked_until(upstream_state(conn), now):
        return None
    due = (
        select(Registration.id)
        .where(Registration.state == State.QUEUED.value, Registration.next_attempt_at <= now)
        .order_by(Registration.next_attempt_at, Registration.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(conn.execute(due).scalars())
    if not ids:
        return None
    lease_id = uuid.uuid4().hex
    rows = conn.execute(
        _CLAIM,
        {
            "ids": ids,
            "lease_id": lease_id,
            "updated_at": now,
            "next_attempt_at": now + timedelta(seconds=lease_seconds),
        },
    ).all()
    return Claim(lease_id, tuple(sorted(rows, key=lambda r: r.id)))


def lock_in_order(conn, ids: Sequence[int], model: type = Registration) -> None:
    """PostgreSQL: lock these rows in id order before updating them, the order
    registration takes its share locks in, so the two never wait on each other in a
    cycle (an ``UPDATE … IN`` locks rows in whatever order it scans them)."""
    if conn.dialect.name == "postgresql" and ids:
        conn.execute(
            select(model.id).where(model.id.in_(list(ids))).order_by(model.id).with_for_update()
        )


def renew(conn, now: datetime, held: Claim, rows: Sequence[Any], lease_seconds: int) -> list[Any]:
    """Extend the lease of ``rows`` before another upstream call of the same claim; the
    rows still held (one whose lease ran out and that another worker took is not)."""
    ids = [r.id for r in rows]
    if not ids:
        return []
    lock_in_order(conn, ids, held.model)
    kept = set(
        conn.execute(
            _RENEW[held.model],
            {"ids": ids, "held_by": held.lease_id, "until": now + timedelta(seconds=lease_seconds)},
        ).scalars()
    )
    return [r for r in rows if r.id in kept]


def _finish(
    conn,
    now: datetime,
    kind: str,
    held: Claim,
    rows: Sequence[Any],
    values: dict,
    detail: dict,
    each: dict[int, dict] | None = None,
) -> int:
    """Move the ``rows`` a claim still holds; each gets ``detail`` in its history, or its
    own call's (``each``: by row id) when the rows were sent one call each."""
    lock_in_order(conn, [r.id for r in rows], held.model)
    if held.model is Command:
        rows = _superseded(conn, now, held, rows)
    moved = MACHINE_OF[held.model].move(
        conn,
        kind,
        rows,
        now,
        {"lease_id": None, **values},
        lambda r: {"attempt": r.attempts, **(each[r.id] if each else detail)},
        held_by=held.lease_id,
    )
    return len(moved)


def _superseded(conn, now: datetime, held: Claim, rows: Sequence[Any]) -> list[Any]:
    """Commands asked for again while this call was under way (a mute's ``version``
    moved on) go back to the queue, due at once, to send the latest request; the
    rest, whose outcome this call decides."""
    if all(r.action == "replay" for r in rows):  # one request each: never superseded
        return list(rows)
    versions = dict(
        conn.execute(
            select(Command.id, Command.version).where(Command.id.in_([r.id for r in rows]))
        ).all()
    )
    newer = [r for r in rows if versions.get(r.id, r.version) != r.version]
    if newer:
        COMMANDS.move(
            conn,
            "superseded",
            newer,
            now,
            {"lease_id": None, "next_attempt_at": now, "attempts": 0},
            lambda r: {"attempt": r.attempts},
            held_by=held.lease_id,
        )
    return [r for r in rows if r not in newer]


def _note(conn, now: datetime, held: Claim, outcome: str, call: dict, **changes) -> None:
    # Reteno's own text ("error") stays in the rows' history: it can quote personal data,
    # and the shared state is what /healthz shows (status and reason code only). A replay
    # into another app leaves the shared state alone: its answers are not this app's.
    if held.shared:
        last = {k: v for k, v in call.items() if k != "error"}
        set_upstream(conn, now, last={"outcome": outcome, **last, "at": now.isoformat()}, **changes)


def delivered(
    conn,
    now: datetime,
    held: Claim,
    rows: Sequence[Any],
    call: dict,
    each: dict[int, dict] | None = None,
) -> int:
    values = {"delivered_at": now, "next_attempt_at": None, "last_error": None}
    if held.model is Registration:  # Reteno holds the token from now on
        values["reteno_holds"] = True
    n = _finish(conn, now, "delivered", held, rows, values, call, each)

    def lifted(state: dict) -> dict:
        paused_at = state.get("paused_at")
        if held.claimed_at and paused_at and held.claimed_at <= datetime.fromisoformat(paused_at):
            return {}  # sent before another call's pause: says nothing of the credentials since
        return {"paused_until": None, "paused_at": None, "pause_reason": None, "pause_count": 0}

    _note(conn, now, held, "delivered", call, changes_of=lifted)
    return n


def retry(
    conn, now: datetime, held: Claim, rows: Sequence[Any], call: dict, retry_after: float | None
) -> float:
    """A transient failure: the rows stay queued and come due after a backoff; a
    ``retry_after`` holds the whole outbox that long."""
    delay = backoff(max((r.attempts for r in rows), default=1), retry_after)
    nxt = now + timedelta(seconds=delay)
    _finish(
        conn,
        now,
        "retry",
        held,
        rows,
        {"next_attempt_at": nxt, "last_error": call.get("error")},
        {**call, "nextAttemptAt": nxt.isoformat()},
    )
    hold = {"hold_until": (now + timedelta(seconds=retry_after)).isoformat()} if retry_after else {}
    _note(conn, now, held, "retry", call, **hold)
    return delay


def pause(
    conn,
    now: datetime,
    held: Claim,
    rows: Sequence[Any],
    call: dict,
    each: dict[int, dict] | None = None,
) -> datetime:
    """Reteno refused our credentials or the request itself: hold everything, drop
    nothing; each pause in a row lasts twice the one before (15 s to 10 minutes)."""
    count = int(upstream_state(conn).get("pause_count") or 0) + 1 if held.shared else 1
    until = now + timedelta(seconds=min(PAUSE_CAP, PAUSE_BASE * 2 ** (count - 1)))
    _finish(
        conn,
        now,
        "paused",
        held,
        rows,
        {"next_attempt_at": now, "last_error": call.get("error")},
        {**call, "pausedUntil": until.isoformat()},
        each and {i: {**c, "pausedUntil": until.isoformat()} for i, c in each.items()},
    )
    _note(
        conn,
        now,
        held,
        "paused",
        call,
        paused_until=until.isoformat(),
        paused_at=now.isoformat(),
        pause_reason=call.get("reason"),
        pause_count=count,
    )
    return until


def dead(conn, now: datetime, held: Claim, row: Any, call: dict) -> int:
    """Reteno refused this token for good (a 400 for it alone)."""
    n = _finish(
        conn,
        now,
        "dead",
        held,
        [row],
        {"next_attempt_at": None, "last_error": call.get("error")},
        call,
    )
    _note(conn, now, held, "rejected", call)
    return n


def release(
    conn, now: datetime, held: Claim, rows: Sequence[Any], detail: dict, delay: float | None
) -> int:
    """Rows of a claim that were not sent: back to the queue, due after ``delay``."""
    return _finish(
        conn,
        now,
        "not_sent",
        held,
        rows,
        {"next_attempt_at": now + timedelta(seconds=delay or 0.0)},
        detail,
    )


#: What :func:`record_each` takes for a row: its call's outcome, in the order recorded (a
#: pause last, so the shared upstream state ends with it).
EACH_OUTCOMES = ("delivered", "dead", "retry", "not_sent", "paused")


def record_each(
    conn, now: datetime, held: Claim, outcomes: Sequence[tuple[Any, str, dict, float | None]]
) -> tuple[Counter, datetime | None]:
    """What the calls of a claim sent one row each did, all in this one transaction:
    ``outcomes`` are ``(row, outcome, call detail, seconds)`` with an outcome of
    :data:`EACH_OUTCOMES` (``seconds``: a retry's ``Retry-After``, or how long a row not
    sent waits). The rows moved by outcome, and when a pause among them ends."""
    by: dict[str, list] = {kind: [] for kind in EACH_OUTCOMES}
    for outcome in outcomes:
        by[outcome[1]].append(outcome)
    moved: Counter = Counter()
    until = None
    if by["delivered"]:
        rows = [row for row, *_ in by["delivered"]]
        calls = {row.id: call for row, _, call, _ in by["delivered"]}
        moved["delivered"] = delivered(conn, now, held, rows, by["delivered"][-1][2], calls)
    for row, _, call, _ in by["dead"]:
        moved["dead"] += dead(conn, now, held, row, call)
    for row, _, call, retry_after in by["retry"]:  # each its own backoff
        retry(conn, now, held, [row], call, retry_after)
        moved["retry"] += 1
    for row, _, call, delay in by["not_sent"]:
        moved["not_sent"] += release(conn, now, held, [row], call, delay)
    if by["paused"]:
        rows = [row for row, *_ in by["paused"]]
        calls = {row.id: call for row, _, call, _ in by["paused"]}
        until = pause(conn, now, held, rows, by["paused"][0][2], calls)
        moved["paused"] = len(rows)
    return moved, until


def resume(conn, now: datetime) -> None:
    """Lift a delivery pause or hold now (after fixing the credentials)."""
    set_upstream(conn, now, paused_until=None, paused_at=None, hold_until=None, pause_count=0)


def requeue_dead(
    conn, now: datetime, ids: Sequence[int] | None, error_contains: str | None, token: str | None
) -> int:
    """Dead letters back to the queue (all, or those matching the filters)."""
    query = select(Registration.id, Registration.token, Registration.last_error).where(
        Registration.state == State.DEAD.value
    )
    if ids:
        query = query.where(Registration.id.in_(list(ids)))
    if error_contains:
        query = query.where(Registration.last_error.contains(error_contains, autoescape=True))
    if token:
        query = query.where(Registration.token == token)
    rows = conn.execute(query.order_by(Registration.id)).all()
    return len(
        REGISTRATIONS.move(
            conn,
            "requeued",
            rows,
            now,
            {"next_attempt_at": now},
            lambda r: {"from": State.DEAD.value, "lastError": r.last_error},
        )
    )
