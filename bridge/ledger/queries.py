"""Read-only questions to the ledger: registrations by filter (keyset pages), a token's
history, the outbox's depth and age, and the operator's statistics."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Integer, and_, bindparam, func, or_, select

from ..models import Command, Event, Registration
from . import commands, events_out
from .states import LIVE, LIVE_VALUES, State
from .types import COLUMN_OF, HistoryEvent, RegistrationRecord, removal_reason

STALE_REASON = "stale: no sign of life"  # the removal reason of the stale-token report
STALE_DAYS = 30  # quiet this long, a live chat is stale (FCM's measure): /metrics counts them

_RECORD_COLUMNS = [
    getattr(Registration, name)
    for name in RegistrationRecord.__dataclass_fields__
    if name not in ("muted", "muted_until")
]
# Built once: a query refines it (where, order, limit). Each registration with its chat's
# mute row, if any, in the same query.
_RECORDS = (
    select(*_RECORD_COLUMNS, Command.action, Command.muted_until)
    .select_from(Registration)
    .outerjoin(Command, commands.MUTE_OF_CHAT)
)


def _records(rows, now: datetime) -> list[RegistrationRecord]:
    return [
        RegistrationRecord(*row[:-2], *commands.mute_state(row[-2], row[-1], now)) for row in rows
    ]


def encode_cursor(last) -> str:
    """A page's cursor: the last id shown, or for the stale-token report (oldest first)
    the last registration's (last seen, id)."""
    key = (
        {"before": last}
        if isinstance(last, int)
        else {"quietAfter": [last[0].isoformat(), last[1]]}
    )
    raw = json.dumps(key).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _valid_id(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
        raise ValueError
    return value


def decode_cursor(cursor: str, quiet: bool = False):
    """The id of ``encode_cursor``, or with ``quiet`` its (last seen, id)."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not quiet:
            return _valid_id(key["before"])
        seen, last_id = key["quietAfter"]
        seen = datetime.fromisoformat(seen)
        if seen.tzinfo is None:
            raise ValueError
        return seen.astimezone(UTC), _valid_id(last_id)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise ValueError("Not a valid cursor.") from exc


def quiet_since(now: datetime, days: int) -> datetime:
    return now - timedelta(days=days)


_SEEN = func.coalesce(Registration.last_seen_at, Registration.created_at)


def quiet(query, since):
    """Live registrations with no sign of life since ``since`` (a time, or a parameter):
    the stale-token report."""
    return query.where(Registration.state.in_(LIVE_VALUES), _SEEN < since)


@cache
def _find_query(names: frozenset[str], conflict: bool | None, quiet_report: bool, paged: bool):
    """The select of :func:`find` for one shape of filters (which are given, the conflict
    flag, report or not, a later page or not), its values as parameters. Built once a
    shape: SQLAlchemy reuses a compiled statement's result layout only for the same
    statement object (a new one per request was matched column by column, a third of
    a look-up's time)."""
    query = _RECORDS
    if "token" in names:
        query = query.where(Registration.token == bindparam("token"))
    for api_name, column in COLUMN_OF.items():
        if api_name in names:
            query = query.where(getattr(Registration, column) == bindparam(api_name))
    if "state" in names:
        query = query.where(Registration.state == bindparam("state"))
    if conflict is not None:
        query = query.where(Registration.conflict.is_(conflict))
    if quiet_report:  # the stale-token report: the longest quiet first
        query = quiet(query, bindparam("quiet_since")).order_by(_SEEN, Registration.id)
        if paged:
            query = query.where(
                or_(
                    _SEEN > bindparam("seen"),
                    and_(_SEEN == bindparam("seen"), Registration.id > bindparam("last_id")),
                )
            )
    else:
        query = query.order_by(Registration.id.desc())
        if paged:
            query = query.where(Registration.id < bindparam("before"))
    return query.limit(bindparam("limit", type_=Integer))


def find(
    conn, filters: dict, limit: int, cursor: str | None, now: datetime
) -> tuple[list[RegistrationRecord], str | None]:
    """Registrations matching ``filters`` (``token``, identifiers by API name,
    ``state``, ``conflict``, ``quietDays``), newest first; and the cursor of the next
    page, if any."""
    values: dict[str, Any] = {}  # the filters given, by parameter name
    if filters.get("token"):
        values["token"] = filters["token"]
    for api_name in COLUMN_OF:
        if filters.get(api_name) is not None:
            values[api_name] = filters[api_name]
    if filters.get("state"):
        values["state"] = filters["state"]
    conflict = None if filters.get("conflict") is None else bool(filters["conflict"])
    quiet_days = filters.get("quietDays")
    query = _find_query(frozenset(values), conflict, quiet_days is not None, bool(cursor))
    params = {**values, "limit": limit + 1}
    if quiet_days is not None:
        params["quiet_since"] = quiet_since(now, quiet_days)
        if cursor:
            params["seen"], params["last_id"] = decode_cursor(cursor, quiet=True)
    elif cursor:
        params["before"] = decode_cursor(cursor)
    rows = conn.execute(query, params).all()
    more = len(rows) > limit
    records = _records(rows[:limit], now)
    if not (more and records):
        return records, None
    last = records[-1]
    return records, encode_cursor(
        last.id if quiet_days is None else (last.last_seen_at or last.created_at, last.id)
    )


def stale(conn, now: datetime, days: int, limit: int | None = None) -> list[RegistrationRecord]:
    """Live registrations quiet for ``days`` days, the longest quiet first."""
    query = quiet(_RECORDS, quiet_since(now, days)).order_by(_SEEN, Registration.id)
    rows = conn.execute(query.limit(limit) if limit else query).all()
    return _records(rows, now)


def quiet_counts(conn, now: datetime, days: int) -> dict[str, int]:
    """Live registrations quiet for ``days`` days, by state."""
    counts = dict(
        conn.execute(
            quiet(select(Registration.state, func.count()), quiet_since(now, days)).group_by(
                Registration.state
            )
        ).all()
    )
    return {s.value: int(counts.get(s.value, 0)) for s in State if s in LIVE}


def history(conn, token: str) -> list[HistoryEvent]:
    rows = conn.execute(
        select(Event.at, Event.kind, Event.detail, Event.registration_id)
        .where(Event.token == token)
        .order_by(Event.id)
    )
    return [HistoryEvent(*row) for row in rows]


def outbox(conn, now: datetime) -> dict[str, Any]:
    """Depth and age of the outbox, dead letters, counts by state."""
    counts = dict(
        conn.execute(select(Registration.state, func.count()).group_by(Registration.state)).all()
    )
    oldest = conn.execute(
        select(func.min(Registration.created_at)).where(Registration.state == State.QUEUED.value)
    ).scalar()
    stale = conn.execute(
        select(func.count()).where(
            Registration.state == State.REMOVED.value, Registration.removal_reason == STALE_REASON
        )
    ).scalar()
    removed: dict[str, int] = {}
    for reason, count in conn.execute(
        select(Registration.removal_reason, func.count())
        .where(Registration.state == State.REMOVED.value)
        .group_by(Registration.removal_reason)
    ).all():
        # the stored reason is what was reported (a status's text): its code, never the text
        code = "stale" if reason == STALE_REASON else (removal_reason(reason or "") or "other")
        removed[code] = removed.get(code, 0) + int(count)
    return {
        "states": {s.value: int(counts.get(s.value, 0)) for s in State},
        "removedStale": int(stale or 0),
        "removedByReason": removed,
        "commands": commands.counts(conn),
        "events": events_out.counts(conn),
        "depth": int(counts.get(State.QUEUED.value, 0)),
        "oldestAgeSeconds": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
        "dead": int(counts.get(State.DEAD.value, 0)),
    }


def delivery_delays(conn, ids: list[int], now: datetime) -> list[float]:
    """Seconds from submission to delivery of the registrations among ``ids`` delivered
    at ``now``."""
    created = conn.execute(
        select(Registration.created_at).where(
            Registration.id.in_(ids), Registration.delivered_at == now
        )
    ).scalars()
    return [max(0.0, (now - at).total_seconds()) for at in created]


def _per_day(conn, column, since: datetime, *where) -> dict[str, int]:
    """``{"YYYY-MM-DD": count}`` of the rows (registrations, or events) whose ``column``
    is at or after ``since`` and that meet ``where``."""
    if conn.dialect.name == "postgresql":
        day = func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    else:  # SQLite keeps naive UTC text: "YYYY-MM-DD HH:MM:SS.ffffff"
        day = func.substr(column, 1, 10)
    rows = conn.execute(
        select(day, func.count()).where(column >= since, *where).group_by(day)
    ).all()
    return {str(d): int(n) for d, n in rows}


def _days(now: datetime, days: int) -> tuple[list[str], datetime]:
    """The last ``days`` UTC calendar days (today included) as ``YYYY-MM-DD``, and when
    the first began."""
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    names = [(first + timedelta(days=offset)).isoformat() for offset in range(days)]
    return names, datetime.combine(first, datetime.min.time(), tzinfo=UTC)


def activity(conn, now: datetime, days: int) -> list[dict[str, Any]]:
    """Per UTC day of the last ``days`` (every day, zeros too): ``registered``
    (registrations made), ``removed`` (registrations removed) and ``cameBack`` (chats
    live again after a block: an unblock that made a registration)."""
    names, since = _days(now, days)
    registered = _per_day(conn, Registration.created_at, since)
    removed = _per_day(conn, Registration.removed_at, since)
    came_back = _per_day(
        conn,
        Event.at,
        since,
        Event.kind == "telegram_unblocked",
        Event.registration_id.is_not(None),
    )
    return [
        {
            "day": day,
            "registered": registered.get(day, 0),
            "removed": removed.get(day, 0),
            "cameBack": came_back.get(day, 0),
        }
        for day in names
    ]


def stats(conn, now: datetime, days: int, quiet_days: int = 30) -> dict[str, Any]:
    """Counts by state, the outbox, dead letters by error, and a per-day summary of
    ``days`` UTC calendar days (today included) from ``delivered_at`` and
    ``removed_at``; every day appears, with zeros when nothing happened."""
    if days < 1:
        raise ValueError("days must be at least 1")
    box = outbox(conn, now)
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    dead = conn.execute(
        select(Registration.last_error, func.count())
        .where(Registration.state == State.DEAD.value)
        .group_by(Registration.last_error)
    ).all()
    delivered = _per_day(conn, Registration.delivered_at, since)
    removed = _per_day(conn, Registration.removed_at, since)
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
        "states": box["states"],
        "outbox": {"depth": box["depth"], "oldestAgeSeconds": box["oldestAgeSeconds"]},
        "stale": {
            "quietDays": quiet_days,
            "states": quiet_counts(conn, now, quiet_days),
            "removed": box["removedStale"],
        },
        "commands": box["commands"],
        "events": box["events"],
        "deadLetters": {"total": box["dead"], "byError": by_error},
        "perDay": per_day,
    }
