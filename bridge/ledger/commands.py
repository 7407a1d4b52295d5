"""Commands: calls to Reteno other than a registration's, each a row of
``bridge_commands`` with an outbox of its own (claimed, leased and finished like
registrations, :mod:`.outbox`).

* **Mute and unmute** (``/token/mute``, ``/token/unmute``): one row per chat,
  holding the latest request; a new request replaces it, even while an older one
  is under way (the older call's outcome then moves nothing, and the latest is
  sent next). A mute goes out only once the chat's registration has reached
  Reteno, with the time it has left; one whose time ran out before it could be
  sent ``lapsed``. When Reteno drops a chat's token (a Forbidden on one of its
  sends) its mute is sent again once the chat is back, so a muted chat that comes
  back stays muted until unmuted; while Reteno still holds the token (the bridge
  heard of the block from Telegram), the mute is still in force there.
* **Replay**: every live registration (queued or delivered) queued once for
  another app (a target: app uuid and base URL); running it again queues only
  what that target has not had.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import NamedTuple

from sqlalchemy import and_, exists, func, insert, literal, select, update

from ..db import in_pages, insert_unless_taken
from ..models import Command, Registration
from . import registering
from .outbox import blocked_until, upstream_state
from .states import COMMANDS, State, append_events
from .types import Claim, MuteRecord, MuteRequest, ReplayTarget

MIN_MUTE_SECONDS = 5  # Reteno's shortest mute
MAX_MUTE_SECONDS = 31_536_000  # and its longest (a year)
MUTES = ("mute", "unmute")
REPLAY = "replay"
# what a chat's live registrations are for Reteno: queued or delivered (not dead, held)
_REPLAYED_STATES = (State.QUEUED.value, State.DELIVERED.value)

# where a command starts (the state table's inserts)
_REQUESTED, _REPLAY_QUEUED = (COMMANDS.first(kind).value for kind in ("requested", "queued"))
_MUTE_ROW = dict(
    zip(
        ("sqlite", "postgresql"),
        insert_unless_taken(Command.__table__, ["token"], "action IN ('mute', 'unmute')"),
        strict=True,
    )
)


class CommandRow(NamedTuple):
    """A claimed command: what the upstream call needs, and what finishing it needs."""

    id: int
    token: str
    action: str
    version: int
    attempts: int
    registration_id: int | None
    muted_until: datetime | None
    # the replayed registration's identifiers (None for a mute)
    contact_id: int | None = None
    external_customer_id: str | None = None
    phone: str | None = None
    email: str | None = None


# --- mute and unmute -------------------------------------------------------------------


def request_mute(conn, now: datetime, request: MuteRequest, source: str) -> MuteRecord | None:
    """Queue ``request`` for its chat, replacing the chat's previous one; None (nothing
    written) when the chat has no live registration."""
    live = registering.live_of_tokens(conn, [request.token]).get(request.token)
    if not live:
        return None
    registration_id = live[-1].id  # the newest
    action = "mute" if request.mute else "unmute"
    conn.execute(
        _MUTE_ROW[conn.dialect.name],
        {
            "action": action,
            "token": request.token,
            "version": 0,
            "state": _REQUESTED,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "next_attempt_at": now,
        },
    )
    row = conn.execute(
        select(Command.id, Command.version, Command.lease_id, Command.next_attempt_at)
        .where(Command.token == request.token, Command.action.in_(MUTES))
        .with_for_update()
    ).one()
    until = now + timedelta(seconds=request.duration) if request.mute and request.duration else None
    # A call for the previous request under way keeps its lease: this one goes out after
    # it, never beside it, so Reteno sees them in order.
    in_flight = row.lease_id is not None and row.next_attempt_at and row.next_attempt_at > now
    target = SimpleNamespace(
        id=row.id, token=request.token, action=action, registration_id=registration_id
    )
    COMMANDS.move(
        conn,
        "requested",
        [target],
        now,
        {
            "action": action,
            "duration": request.duration if request.mute else None,
            "muted_until": until,
            "version": row.version + 1,
            "attempts": 0,
            "last_error": None,
            "registration_id": registration_id,
            "next_attempt_at": row.next_attempt_at if in_flight else now,
        },
        {
            "source": source,
            **(
                {"duration": request.duration, "mutedUntil": until.isoformat() if until else None}
                if request.mute
                else {}
            ),
        },
    )
    return MuteRecord(request.token, action, request.mute, until, _REQUESTED, now)


def _muted(action: str, until: datetime | None, now: datetime) -> bool:
    return action == "mute" and (until is None or until > now)


def mute_state(
    action: str | None, until: datetime | None, now: datetime
) -> tuple[bool, datetime | None]:
    """(muted now, muted until) of a chat's mute row (``action`` None: it has none);
    ``muted until`` is None when not muted or muted until unmuted."""
    muted = _muted(action, until, now)
    return muted, until if muted else None


#: A registration's chat's mute row, if any (at most one: ``uq_bridge_commands_mute``).
MUTE_OF_CHAT = and_(Command.token == Registration.token, Command.action.in_(MUTES))


def resend_mutes(conn, now: datetime, tokens: Iterable[str]) -> int:
    """Reteno dropped the chats' tokens: a mute still in force that Reteno had is
    queued again, to go out once the chat is back (Reteno forgets a dropped token's
    mute). It waits, unsent, until a registration of the chat is delivered."""
    tokens = sorted(set(tokens))
    rows = []
    for page in in_pages(tokens):
        rows.extend(
            r
            for r in conn.execute(
                select(
                    Command.id,
                    Command.token,
                    Command.action,
                    Command.registration_id,
                    Command.muted_until,
                ).where(
                    Command.token.in_(page),
                    Command.action == "mute",
                    Command.state == State.DELIVERED.value,
                )
            )
            if _muted(r.action, r.muted_until, now + timedelta(seconds=MIN_MUTE_SECONDS))
        )
    return len(
        COMMANDS.move(
            conn,
            "resend",
            rows,
            now,
            {"next_attempt_at": now, "attempts": 0},
            {"after": "Reteno dropped the token"},
        )
    )


# --- claims ------------------------------------------------------------------------------


def _claim_rows(conn, now: datetime, ids: list[int], lease_seconds: int) -> tuple[str, list]:
    lease_id = uuid.uuid4().hex
    rows = conn.execute(
        update(Command)
        .where(Command.id.in_(ids))
        .values(
            lease_id=lease_id,
            next_attempt_at=now + timedelta(seconds=lease_seconds),
            attempts=Command.attempts + 1,
            updated_at=now,
        )
        .returning(
            Command.id,
            Command.token,
            Command.action,
            Command.version,
            Command.attempts,
            Command.registration_id,
            Command.muted_until,
        )
        .execution_options(synchronize_session=False)
    ).all()
    return lease_id, sorted(rows, key=lambda r: r.id)


def claim_mutes(conn, now: datetime, limit: int, lease_seconds: int) -> Claim | None:
    """Lease up to ``limit`` due mutes and unmutes of chats that Reteno knows (a
    registration delivered); a mute whose time has run out lapses here, unsent."""
    if blocked_until(upstream_state(conn), now):
        return None
    known = exists().where(
        Registration.token == Command.token, Registration.state == State.DELIVERED.value
    )
    ids = list(
        conn.execute(
            select(Command.id)
            .where(
                Command.state == State.QUEUED.value,
                Command.next_attempt_at <= now,
                Command.action.in_(MUTES),
                known,
            )
            .order_by(Command.next_attempt_at, Command.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=Command)
        ).scalars()
    )
    if not ids:
        return None
    lease_id, rows = _claim_rows(conn, now, ids, lease_seconds)
    soon = now + timedelta(seconds=MIN_MUTE_SECONDS)
    lapsed = [
        r for r in rows if r.action == "mute" and r.muted_until is not None and r.muted_until < soon
    ]
    COMMANDS.move(
        conn,
        "lapsed",
        lapsed,
        now,
        {"lease_id": None, "next_attempt_at": None, "delivered_at": now},
        lambda r: {"mutedUntil": r.muted_until.isoformat(), "sent": False},
        held_by=lease_id,
    )
    rows = [CommandRow(*r) for r in rows if r not in lapsed]
    return Claim(lease_id, tuple(rows), Command) if rows else None


# --- replay ------------------------------------------------------------------------------


def _unreplayed(target: ReplayTarget):
    """Live registrations the target has no replay row for, oldest first."""
    done = exists().where(
        Command.action == REPLAY,
        Command.registration_id == Registration.id,
        Command.target_app == target.app_uuid,
        Command.target_url == target.base_url,
    )
    return Registration.state.in_(_REPLAYED_STATES), ~done


def plan_replay(conn, target: ReplayTarget) -> int:
    """How many registrations a replay into ``target`` would queue now."""
    return int(
        conn.execute(
            select(func.count()).select_from(Registration).where(*_unreplayed(target))
        ).scalar()
    )


def queue_replay(conn, now: datetime, target: ReplayTarget) -> int:
    """Queue every live registration the target has not had; how many (one history event
    for the lot; each registration's own comes with its delivery)."""
    source = (
        select(
            literal(REPLAY),
            Registration.token,
            Registration.id,
            literal(target.app_uuid),
            literal(target.base_url),
            literal(0),
            literal(_REPLAY_QUEUED),
            literal(0),
            literal(now, Command.created_at.type),
            literal(now, Command.created_at.type),
            literal(now, Command.created_at.type),
        )
        .where(*_unreplayed(target))
        .order_by(Registration.id)
    )
    columns = [
        "action",
        "token",
        "registration_id",
        "target_app",
        "target_url",
        "version",
        "state",
        "attempts",
        "next_attempt_at",
        "created_at",
        "updated_at",
    ]
    count = conn.execute(
        insert(Command).from_select(columns, source).execution_options(preserve_rowcount=True)
    ).rowcount
    if count:
        append_events(
            conn,
            [
                {
                    "at": now,
                    "kind": "replay_queued",
                    "token": None,
                    "registration_id": None,
                    "detail": {
                        "targetApp": target.app_uuid,
                        "targetUrl": target.base_url,
                        "count": count,
                    },
                }
            ],
        )
    return count


def claim_replay(
    conn, now: datetime, target: ReplayTarget, limit: int, lease_seconds: int
) -> Claim | None:
    """Lease up to ``limit`` due replays into ``target``, with their registrations'
    identifiers. A replay whose registration is no longer live (removed, dead or held
    since it was queued) is dropped, not sent. A replay's answers are the target's:
    they leave the bridge's own upstream state (pause, hold, last result) alone."""
    live = exists().where(
        Registration.id == Command.registration_id, Registration.state.in_(_REPLAYED_STATES)
    )
    due_rows = (
        select(
            Command.id, Command.token, Command.action, Command.registration_id, live.label("live")
        )
        .where(
            Command.state == State.QUEUED.value,
            Command.next_attempt_at <= now,
            Command.action == REPLAY,
            Command.target_app == target.app_uuid,
            Command.target_url == target.base_url,
        )
        .order_by(Command.next_attempt_at, Command.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=Command)
    )
    while True:
        due = conn.execute(due_rows).all()
        if not due:
            return None
        COMMANDS.move(
            conn,
            "dropped",
            [r for r in due if not r.live],
            now,
            {"next_attempt_at": None, "lease_id": None},
            {"reason": "the registration is no longer live (removed, dead or held)"},
        )
        ids = [r.id for r in due if r.live]
        if ids:
            break
    lease_id, rows = _claim_rows(conn, now, ids, lease_seconds)
    identifiers = {
        r.id: r
        for r in conn.execute(
            select(
                Registration.id,
                Registration.contact_id,
                Registration.external_customer_id,
                Registration.phone,
                Registration.email,
            ).where(Registration.id.in_([r.registration_id for r in rows]))
        )
    }
    claimed = []
    for r in rows:
        i = identifiers.get(r.registration_id)
        claimed.append(
            CommandRow(*r, *((i.contact_id, i.external_customer_id, i.phone, i.email) if i else ()))
        )
    return Claim(lease_id, tuple(claimed), Command, shared=False)


def replay_summary(conn, target: ReplayTarget) -> dict:
    """Replays into ``target`` by state, and when the next queued one is due."""
    mine = (
        Command.action == REPLAY,
        Command.target_app == target.app_uuid,
        Command.target_url == target.base_url,
    )
    counts = dict(
        conn.execute(select(Command.state, func.count()).where(*mine).group_by(Command.state)).all()
    )
    due = conn.execute(
        select(func.min(Command.next_attempt_at)).where(*mine, Command.state == State.QUEUED.value)
    ).scalar()
    return {
        **{
            s: int(counts.get(s, 0))
            for s in (State.QUEUED.value, State.DELIVERED.value, State.DEAD.value)
        },
        "next_due": due,
    }


def replay_preview(conn, target: ReplayTarget, limit: int) -> list:
    """The first registrations a replay into ``target`` would queue."""
    return conn.execute(
        select(Registration.id, Registration.token, Registration.matched_by)
        .where(*_unreplayed(target))
        .order_by(Registration.id)
        .limit(limit)
    ).all()


def requeue_dead(conn, now: datetime, token: str | None) -> int:
    """Dead commands (all, or one chat's) back to the queue."""
    query = select(
        Command.id, Command.token, Command.action, Command.registration_id, Command.last_error
    ).where(Command.state == State.DEAD.value)
    if token:
        query = query.where(Command.token == token)
    rows = conn.execute(query.order_by(Command.id)).all()
    return len(
        COMMANDS.move(
            conn,
            "requeued",
            rows,
            now,
            {"next_attempt_at": now},
            lambda r: {"from": State.DEAD.value, "lastError": r.last_error},
        )
    )


def counts(conn) -> dict[str, dict[str, int]]:
    """Commands by action and state (``bridge stats``)."""
    out: dict[str, dict[str, int]] = {}
    for action, state, n in conn.execute(
        select(Command.action, Command.state, func.count()).group_by(Command.action, Command.state)
    ):
        out.setdefault(action, {})[state] = int(n)
    return out
