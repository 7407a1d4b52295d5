"""What the outside world reports about chats: status events (Reteno's activity
webhook, the bot backend) and Telegram's blocks and unblocks. The only ways a
registration is removed.

A block is about the chat: removing a registration because the user blocked the
bot removes every live registration of that token. Every report is recorded in
the audit history, matched or not.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select

from ..db import lock_keys
from ..models import Event, Registration
from . import registering
from .states import LIVE, State, append_events, move
from .types import COLUMN_OF, PRIORITY, StatusEvent, StatusResult, TokenRequest

_MAX_TEXT = 1000
STATUS_CAUSE = "status_blocked"
TELEGRAM_CAUSE = "telegram_blocked"
TELEGRAM_REASON = "Telegram: the user blocked the bot (my_chat_member: kicked)"
_LIVE = [s.value for s in LIVE]
# A body's ignored objects are one summary event: counts by reason (at most this many
# reasons named) and the first few objects as they came.
_IGNORED_REASONS = 20
_IGNORED_SAMPLES = 5


def registrations_by(conn, api_name: str, values: Iterable, lock: bool = False) -> list[Any]:
    """Every registration, in any state, of these tokens (``api_name == "token"``) or
    identifier values; oldest first. ``lock`` takes row locks (PostgreSQL) so two
    writers do not act on the same rows at once."""
    column = Registration.token if api_name == "token" else getattr(
        Registration, COLUMN_OF[api_name])
    values = list(dict.fromkeys(values))
    found: list[Any] = []
    for start in range(0, len(values), 500):
        query = (select(Registration.__table__).where(column.in_(values[start:start + 500]))
                 .order_by(Registration.id))
        if lock:
            query = query.with_for_update()
        found.extend(conn.execute(query))
    return found


def remove(conn, now: datetime, removals: Sequence[tuple[Sequence[Any], str, str, dict]]
           ) -> list[list[Any]]:
    """Remove live registrations: ``removals`` is a list of ``(rows, reason, cause,
    detail)``, applied as if in turn (a row goes to the first removal that lists it).
    Returns the rows each one moved; one UPDATE per distinct reason."""
    owner: dict[int, int] = {}  # row id -> index of the removal that moves it
    for index, (rows, _reason, _cause, _detail) in enumerate(removals):
        for r in rows:
            if r.state in _LIVE:
                owner.setdefault(r.id, index)
    by_reason: dict[str, list[Any]] = defaultdict(list)
    for index, (rows, reason, _cause, _detail) in enumerate(removals):
        by_reason[reason].extend(r for r in rows if owner.get(r.id) == index)

    def detail(r) -> dict:
        _rows, reason, cause, extra = removals[owner[r.id]]
        return {"cause": cause, "reason": reason, "previousState": r.state, **(extra or {})}

    moved: set[int] = set()
    for reason, rows in by_reason.items():
        moved.update(r.id for r in move(
            conn, "removed", rows, now,
            {"removed_at": now, "removal_reason": reason, "lease_id": None,
             "next_attempt_at": None}, detail))
    done: list[list[Any]] = []
    for index, (rows, _reason, _cause, _detail) in enumerate(removals):
        mine = {r.id: r for r in rows if r.id in moved and owner.get(r.id) == index}
        done.append(list(mine.values()))
    return done


# --- status events ----------------------------------------------------------------------


def _value_of(row: Any, api_name: str) -> Any:
    return row.token if api_name == "token" else getattr(row, COLUMN_OF[api_name])


def _latest_per_token(rows: list[Any]) -> list[Any]:
    latest: dict[str, Any] = {}
    for row in rows:
        if row.token not in latest or row.id > latest[row.token].id:
            latest[row.token] = row
    return sorted(latest.values(), key=lambda r: r.id)


def _seen_fingerprints(conn, fingerprints: Iterable[str]) -> set[str]:
    values = list(dict.fromkeys(fingerprints))
    seen: set[str] = set()
    for start in range(0, len(values), 500):
        seen.update(conn.execute(select(Event.fingerprint).distinct().where(
            Event.fingerprint.in_(values[start:start + 500]))).scalars())
    return seen


def _ignored_fingerprint(ignored: list[StatusEvent]) -> str:
    """The summary's fingerprint: the same ignored objects in the same order (a replay
    of the body) are recorded once."""
    digest = hashlib.sha256(b"status_ignored")
    for event in ignored:
        digest.update(event.fingerprint.encode("ascii"))
    return digest.hexdigest()


def _ignored(now: datetime, ignored: list[StatusEvent], fingerprint: str) -> dict:
    """One ``status_ignored`` event for a body's unusable objects: ``count``, ``reasons``
    (count by reason) and ``samples`` (the first objects, credentials removed); on the
    token they name if they all name the same one."""
    by_reason = Counter(e.reason for e in ignored)
    reasons = dict(by_reason.most_common(_IGNORED_REASONS))
    if len(by_reason) > _IGNORED_REASONS:
        reasons["(other reasons)"] = sum(by_reason.values()) - sum(reasons.values())
    tokens = {e.token for e in ignored}
    return {"at": now, "kind": "status_ignored", "registration_id": None,
            "token": next(iter(tokens)) if len(tokens) == 1 else None,
            "fingerprint": fingerprint,
            "detail": {"count": len(ignored), "reasons": reasons,
                       "samples": [e.raw for e in ignored[:_IGNORED_SAMPLES]]}}


def apply_statuses(conn, now: datetime, events: list[StatusEvent]) -> StatusResult:
    """Record a body's status events and remove what the blocks among them name.

    An event names registrations through its token, else through its first
    identifier that matches any. Each is recorded — kind ``status`` on each live
    registration it matched (if none is live, on the latest registration of each
    token it names), ``status_unmatched`` otherwise. An event whose fingerprint
    is in the ledger already, or earlier in the body, is counted but neither
    recorded nor applied again: replaying a body changes nothing. The objects
    the bridge cannot use (no recognisable status or identifier) are recorded
    together, as one ``status_ignored`` event per body (:func:`_ignored`): a body
    of 250,000 of them wrote 250,000 rows.
    """
    lock_keys(conn, ["statuses"])  # one body at a time: a replay racing its original sees it
    wanted: dict[str, set] = defaultdict(set)
    for event in events:
        if event.reason is None:
            for name, value in event.selectors:
                wanted[name].add(value)
    rows_of: dict[tuple[str, Any], list[Any]] = defaultdict(list)
    for name in ("token", *PRIORITY):  # one lock order for all writers
        if name in wanted:
            for row in registrations_by(conn, name, wanted[name], lock=True):
                rows_of[(name, _value_of(row, name))].append(row)
    ignored = [e for e in events if e.reason is not None]
    ignored_fingerprint = _ignored_fingerprint(ignored)
    seen = _seen_fingerprints(conn, [e.fingerprint for e in events if e.reason is None]
                              + [ignored_fingerprint] * bool(ignored))

    outcomes: dict[str, int] = defaultdict(int)
    counts = {"unmatched": 0, "ignored": 0}
    records: list[dict] = []
    removals: list[tuple[StatusEvent, str, list[Any]]] = []
    gone: set[int] = set()  # ids removed earlier in this body

    def record(kind, event, detail, token=None, registration_id=None):
        records.append({"at": now, "kind": kind, "token": token,
                        "registration_id": registration_id, "fingerprint": event.fingerprint,
                        "detail": {**detail, "raw": event.raw}})

    for event in events:
        duplicate = event.fingerprint in seen
        seen.add(event.fingerprint)
        if event.reason is not None:
            counts["ignored"] += 1
            outcomes["duplicate" if ignored_fingerprint in seen else "ignored"] += 1
            continue
        via, rows = event.selectors[0][0], []
        for name, value in event.selectors:
            if rows_of.get((name, value)):
                via, rows = name, rows_of[(name, value)]
                break
        live = [r for r in rows if r.state in _LIVE and r.id not in gone]
        targets = live or _latest_per_token(rows)
        if not targets:
            counts["unmatched"] += 1
            outcomes["duplicate" if duplicate else "unmatched"] += 1
            if not duplicate:
                record("status_unmatched", event,
                       {"reason": f"no registration matches its {via}", "via": via,
                        **event.summary()}, token=event.token)
            continue
        if duplicate:
            outcomes["duplicate"] += 1
            continue
        removes = event.blocked and bool(live)
        outcomes["blocked" if removes else "matched"] += 1
        for row in targets:
            record("status", event,
                   {**event.summary(), "blocked": event.blocked, "via": via,
                    "registrationState": State.REMOVED.value if row.id in gone else row.state},
                   token=row.token, registration_id=row.id)
        if removes:
            removals.append((event, via, live))
            gone.update(r.id for r in live)
    if ignored and ignored_fingerprint not in seen:
        records.append(_ignored(now, ignored, ignored_fingerprint))
    append_events(conn, records)

    # A block is about the chat: an event matched through an identifier removes every
    # live registration of the chats it found, whatever identifier those carry.
    by_identifier = {r.token for _e, via, live in removals if via != "token" for r in live}
    siblings: dict[str, list[Any]] = defaultdict(list)
    if by_identifier:
        for row in registrations_by(conn, "token", by_identifier, lock=True):
            if row.state in _LIVE:
                siblings[row.token].append(row)
    batch = []
    for event, via, live in removals:
        if via != "token":
            held = {r.id for r in live}
            live = live + [s for t in dict.fromkeys(r.token for r in live)
                           for s in siblings[t] if s.id not in held]
        reason = f"{event.status}: {event.error or event.description}"[:_MAX_TEXT]
        batch.append((live, reason, STATUS_CAUSE, {
            "source": "statuses", "status": event.status, "via": via,
            "messageId": event.raw.get("messageId"), "fingerprint": event.fingerprint,
        }))
    removed_tokens: dict[str, None] = {}
    removed = 0
    for done in remove(conn, now, batch):
        removed += len(done)
        removed_tokens.update((row.token, None) for row in done)
    return StatusResult(len(events), list(removed_tokens), counts["unmatched"],
                        counts["ignored"], dict(outcomes), removed)


# --- Telegram: the user blocked or unblocked the bot -----------------------------------


def block_chat(conn, now: datetime, token: str, detail: dict) -> int:
    """Remove the chat's live registrations; how many."""
    live = [r for r in registrations_by(conn, "token", [token], lock=True) if r.state in _LIVE]
    [done] = remove(conn, now, [(live, TELEGRAM_REASON, TELEGRAM_CAUSE, detail)])
    if not done:
        append_events(conn, [{"at": now, "kind": "telegram_blocked", "token": token,
                              "registration_id": None,
                              "detail": {**detail, "removed": 0,
                                         "reason": "no live registration"}}])
    return len(done)


def unblock_chat(conn, now: datetime, token: str, detail: dict) -> tuple[int | None, int | None]:
    """Queue the chat's last registration again unless one is live: (new registration
    id or None, previous registration id or None)."""
    rows = registrations_by(conn, "token", [token], lock=True)
    live = [r for r in rows if r.state in _LIVE]
    last = rows[-1] if rows else None
    new_id = None
    if live:
        result = {"result": "a registration is still live",
                  "registrationIds": [r.id for r in live]}
    elif last is None:
        result = {"result": "no earlier registration with an identifier"}
    else:
        request = TokenRequest(token, last.contact_id, last.external_customer_id, last.phone,
                               last.email)
        new_id = registering.register(conn, [request], ["telegram"], now)[0].id
        result = {"result": "queued again", "registrationId": new_id,
                  "previousRegistrationId": last.id}
    append_events(conn, [{"at": now, "kind": "telegram_unblocked", "token": token,
                          "registration_id": new_id, "detail": {**detail, **result}}])
    return new_id, last.id if last else None
