"""Read-only questions to the ledger: registrations by filter (keyset pages), a token's
history, the outbox's depth and age, and the operator's statistics."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from ..models import Event, Registration
from .states import State
from .types import COLUMN_OF, HistoryEvent, RegistrationRecord

_RECORD_COLUMNS = [getattr(Registration, name)
                   for name in RegistrationRecord.__dataclass_fields__]


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


def find(conn, filters: dict, limit: int, cursor: str | None
         ) -> tuple[list[RegistrationRecord], str | None]:
    """Registrations matching ``filters`` (``token``, identifiers by API name,
    ``state``, ``conflict``), newest first; and the cursor of the next page, if any."""
    query = select(*_RECORD_COLUMNS)
    if filters.get("token"):
        query = query.where(Registration.token == filters["token"])
    for api_name, column in COLUMN_OF.items():
        if filters.get(api_name) is not None:
            query = query.where(getattr(Registration, column) == filters[api_name])
    if filters.get("state"):
        query = query.where(Registration.state == filters["state"])
    if filters.get("conflict") is not None:
        query = query.where(Registration.conflict.is_(bool(filters["conflict"])))
    if cursor:
        query = query.where(Registration.id < decode_cursor(cursor))
    rows = conn.execute(query.order_by(Registration.id.desc()).limit(limit + 1)).all()
    more = len(rows) > limit
    records = [RegistrationRecord(*row) for row in rows[:limit]]
    return records, (encode_cursor(records[-1].id) if more and records else None)


def history(conn, token: str) -> list[HistoryEvent]:
    rows = conn.execute(select(Event.at, Event.kind, Event.detail, Event.registration_id)
                        .where(Event.token == token).order_by(Event.id))
    return [HistoryEvent(*row) for row in rows]


def outbox(conn, now: datetime) -> dict[str, Any]:
    """Depth and age of the outbox, dead letters, counts by state."""
    counts = dict(conn.execute(
        select(Registration.state, func.count()).group_by(Registration.state)).all())
    oldest = conn.execute(select(func.min(Registration.created_at))
                          .where(Registration.state == State.QUEUED.value)).scalar()
    return {
        "states": {s.value: int(counts.get(s.value, 0)) for s in State},
        "depth": int(counts.get(State.QUEUED.value, 0)),
        "oldestAgeSeconds": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
        "dead": int(counts.get(State.DEAD.value, 0)),
    }


def _per_day(conn, column, since: datetime) -> dict[str, int]:
    """``{"YYYY-MM-DD": count}`` of registrations whose ``column`` is at or after ``since``."""
    if conn.dialect.name == "postgresql":
        day = func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    else:  # SQLite keeps naive UTC text: "YYYY-MM-DD HH:MM:SS.ffffff"
        day = func.substr(column, 1, 10)
    rows = conn.execute(select(day, func.count()).where(column >= since).group_by(day)).all()
    return {str(d): int(n) for d, n in rows}


def stats(conn, now: datetime, days: int) -> dict[str, Any]:
    """Counts by state, the outbox, dead letters by error, and a per-day summary of
    ``days`` UTC calendar days (today included) from ``delivered_at`` and
    ``removed_at``; every day appears, with zeros when nothing happened."""
    if days < 1:
        raise ValueError("days must be at least 1")
    box = outbox(conn, now)
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    dead = conn.execute(select(Registration.last_error, func.count())
                        .where(Registration.state == State.DEAD.value)
                        .group_by(Registration.last_error)).all()
    delivered = _per_day(conn, Registration.delivered_at, since)
    removed = _per_day(conn, Registration.removed_at, since)
    by_error = sorted(({"error": error, "count": int(count)} for error, count in dead),
                      key=lambda item: (-item["count"], item["error"] or ""))
    per_day = []
    for offset in range(days):
        day = (first + timedelta(days=offset)).isoformat()
        per_day.append({"day": day, "delivered": delivered.get(day, 0),
                        "removed": removed.get(day, 0)})
    return {
        "states": box["states"],
        "outbox": {"depth": box["depth"], "oldestAgeSeconds": box["oldestAgeSeconds"]},
        "deadLetters": {"total": box["dead"], "byError": by_error},
        "perDay": per_day,
    }
