"""Status events (Reteno's activity webhook, the bot backend's reports) and how a
registration is removed: :func:`remove` is the one way, for statuses, for
Telegram's blocks (:mod:`.chats`) and for the stale-token report.

The ledger mirrors Reteno, which drops exactly the chat that failed, so:

* **a block is about the chat**: it removes every live registration of that token;
* **time decides**: a block removes only registrations whose latest sign of life
  (``last_seen_at``) is not later than the block; a late report (Reteno retries its
  webhook for hours, Telegram's updates can queue up) changes nothing and is
  recorded as ``stale``. Reported times go through :mod:`.times`: none counts as
  later than its receipt, and each is compared at the resolution it was given in
  (a block dated to the second applies to a sign of life within that second);
* **no guessing**: a block that names no token and whose identifier matches more
  than one live chat removes none and is recorded as ``ambiguous`` with the
  candidates.

Removing a chat's other identity releases a registration held for the conflict
with it. Reteno keeps a delivered token until one of its own sends fails with
Forbidden, so only a Reteno status drops what Reteno holds (``reteno_holds``), never
a Telegram block: an unblock sends the chat again only if Reteno dropped it, and a
muted chat's mute is queued again, for when it comes back, only then. Every
report is recorded in the audit history, matched or not. The stale-token report's
removals (registrations quiet for a number of days) go through here too.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from ..db import in_pages, lock_keys
from ..models import Event, Registration
from . import commands, queries, registering
from .states import LIVE_VALUES, REGISTRATIONS, State, append_events
from .times import later, received
from .types import COLUMN_OF, PRIORITY, StatusEvent, StatusResult

_MAX_TEXT = 1000
STATUS_CAUSE = "status_blocked"
STALE_CAUSE = "stale"
STALE_REASON = queries.STALE_REASON
# A body's ignored objects are one summary event: counts by reason (at most this many
# reasons named) and the first few objects as they came.
_IGNORED_REASONS = 20
_IGNORED_SAMPLES = 5


def registrations_by(conn, api_name: str, values: Iterable, lock: bool = False) -> list[Any]:
    """Every registration, in any state, of these tokens (``api_name == "token"``) or
    identifier values; oldest first. ``lock`` takes row locks (PostgreSQL) so two
    writers do not act on the same rows at once."""
    column = (
        Registration.token if api_name == "token" else getattr(Registration, COLUMN_OF[api_name])
    )
    values = list(dict.fromkeys(values))
    found: list[Any] = []
    for page in in_pages(values):
        query = select(Registration.__table__).where(column.in_(page)).order_by(Registration.id)
        if lock:
            query = query.with_for_update()
        found.extend(conn.execute(query))
    return found


def seen(row: Any) -> datetime:
    return row.last_seen_at or row.created_at


def remove(
    conn, now: datetime, removals: Sequence[tuple[Sequence[Any], str, str, dict, datetime]]
) -> list[list[Any]]:
    """Remove live registrations: ``removals`` is a list of ``(rows, reason, cause,
    detail, at)`` (``reason``: what was reported, kept as ``removal_reason``; ``detail``
    holds the ``reason`` code; ``at``: when the block happened, kept as ``removed_at``), applied
    as if in turn (a row goes to the first removal that lists it). Returns the rows
    each one moved; one UPDATE per distinct (reason, time). Then releases what was
    held for a conflict with a removed identity."""
    owner: dict[int, int] = {}  # row id -> index of the removal that moves it
    for index, (rows, *_rest) in enumerate(removals):
        for r in rows:
            if r.state in LIVE_VALUES:
                owner.setdefault(r.id, index)
    groups: dict[tuple[str, datetime], list[Any]] = defaultdict(list)
    for index, (rows, reason, _cause, _detail, at) in enumerate(removals):
        groups[(reason, at)].extend(r for r in rows if owner.get(r.id) == index)

    def detail(r) -> dict:
        _rows, reason, cause, extra, _at = removals[owner[r.id]]
        return {"cause": cause, "removalReason": reason, "previousState": r.state, **(extra or {})}

    moved: dict[int, Any] = {}
    for (reason, at), rows in groups.items():
        moved.update(
            (r.id, r)
            for r in REGISTRATIONS.move(
                conn,
                "removed",
                rows,
                now,
                {
                    "removed_at": at,
                    "removal_reason": reason,
                    "lease_id": None,
                    "next_attempt_at": None,
                },
                detail,
            )
        )
    release_held(conn, now, {r.token for r in moved.values()})
    done: list[list[Any]] = []
    for index, (rows, *_rest) in enumerate(removals):
        mine = {r.id: r for r in rows if r.id in moved and owner.get(r.id) == index}
        done.append(list(mine.values()))
    return done


def remove_quiet(conn, now: datetime, days: int, limit: int) -> int:
    """Remove up to ``limit`` live registrations quiet for ``days`` days, the longest
    quiet first, with reason ``stale``; how many."""
    ids = [r.id for r in queries.stale(conn, now, days, limit)]
    if not ids:
        return 0
    rows = list(
        conn.execute(
            select(Registration.__table__)
            .where(Registration.id.in_(ids))
            .order_by(Registration.id)
            .with_for_update()
        )
    )
    since = queries.quiet_since(now, days)
    rows = [r for r in rows if r.state in LIVE_VALUES and seen(r) < since]
    [done] = remove(
        conn,
        now,
        [(rows, STALE_REASON, STALE_CAUSE, {"reason": STALE_CAUSE, "quietDays": days}, now)],
    )
    return len(done)


def release_held(
    conn,
    now: datetime,
    tokens: Iterable[str],
    by: str = "conflict gone",
    ids: Iterable[int] | None = None,
) -> list[Any]:
    """Held registrations of these chats back to the queue: each that is now its chat's
    only live registration (the other identity is gone), or, with ``ids``, those."""
    tokens = sorted(set(tokens))
    if not tokens:
        return []
    live = registering.live_of_tokens(conn, tokens)
    wanted = set(ids) if ids is not None else None
    held = [
        r
        for rows in live.values()
        for r in rows
        if r.state == State.HELD.value and (len(rows) == 1 if wanted is None else r.id in wanted)
    ]
    return REGISTRATIONS.move(conn, "released", held, now, {"next_attempt_at": now}, {"by": by})


def remember_block(conn, token: str, at: datetime) -> None:
    """A block of a chat that had nothing live: the chat's latest removal now dates from
    ``at`` if that is later, so that an unblock older than this block stays stale."""
    latest = conn.execute(
        select(Registration.id, Registration.removed_at)
        .where(Registration.token == token, Registration.state == State.REMOVED.value)
        .order_by(Registration.removed_at.desc(), Registration.id.desc())
        .limit(1)
    ).first()
    if latest is not None and latest.removed_at is not None and latest.removed_at < at:
        conn.execute(update(Registration).where(Registration.id == latest.id).values(removed_at=at))


def drop_holds(conn, now: datetime, drops: dict[str, datetime]) -> list[str]:
    """Reteno reported a Forbidden for each chat at its time: Reteno dropped the token
    from every identity it had it under since a delivery no later than that (a delivery
    after the failure gave it back). Those registrations no longer hold it; a delivered
    one (the chat came back before the news arrived) is queued to be sent again, and a
    mute in force is queued again (Reteno forgets a dropped token's mute). The chats
    whose token Reteno dropped."""
    if not drops:
        return []
    held = [r for r in registrations_by(conn, "token", list(drops), lock=True) if r.reteno_holds]
    latest: dict[tuple, datetime | None] = {}  # chat and identity -> its latest delivery
    for r in held:
        key = (r.token, r.matched_by, r.match_value)
        latest[key] = max(filter(None, (latest.get(key), r.delivered_at)), default=None)

    def dropped(r) -> bool:
        last = latest[(r.token, r.matched_by, r.match_value)]
        # whole seconds, as Reteno dates its events: a send in the same second counts
        return last is None or last.replace(microsecond=0) <= drops[r.token]

    rows = [r for r in held if dropped(r)]
    if not rows:
        return []
    for page in in_pages([r.id for r in rows]):
        conn.execute(
            update(Registration).where(Registration.id.in_(page)).values(reteno_holds=False)
        )
    back = [r for r in rows if r.state == State.DELIVERED.value]
    REGISTRATIONS.move(
        conn,
        "reteno_dropped",
        back,
        now,
        {"next_attempt_at": now},
        lambda r: {
            "cause": STATUS_CAUSE,
            "at": drops[r.token].isoformat(),
            "reason": "Reteno reported a Forbidden for the chat after "
            "this delivery; the chat is back, so it is sent "
            "again",
        },
    )
    tokens = sorted({r.token for r in rows})
    commands.resend_mutes(conn, now, tokens)
    return tokens


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
    for page in in_pages(values):
        seen.update(
            conn.execute(
                select(Event.fingerprint).distinct().where(Event.fingerprint.in_(page))
            ).scalars()
        )
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
    return {
        "at": now,
        "kind": "status_ignored",
        "registration_id": None,
        "token": next(iter(tokens)) if len(tokens) == 1 else None,
        "fingerprint": fingerprint,
        "detail": {
            "count": len(ignored),
            "reasons": reasons,
            "samples": [e.raw for e in ignored[:_IGNORED_SAMPLES]],
        },
    }


def apply_statuses(conn, now: datetime, events: list[StatusEvent]) -> StatusResult:
    """Record a body's status events and act on them, in order.

    An event names registrations through its token, else through its first
    identifier that matches any. A block removes its chat's live registrations that
    are older than it (``stale`` when none is); one naming no token whose live
    matches are several chats removes none (``ambiguous``). A SENT, DELIVERED or
    CLICKED event is a sign of life of its chat (when it names one chat). Each event
    is recorded — ``status`` on each registration it matched (live ones; if none is
    live, the latest registration of each token it names), ``status_unmatched``, or
    ``status_ambiguous`` on each candidate. An event whose fingerprint is in the
    ledger already, or earlier in the body, is counted but neither recorded nor
    applied again: replaying a body changes nothing. The objects the bridge cannot
    use (no recognisable status or identifier) are recorded together, as one
    ``status_ignored`` event per body (:func:`_ignored`): a body of 250,000 of them
    wrote 250,000 rows.
    """
    lock_keys(conn, ["statuses"])  # one body at a time: a replay racing its original sees it
    rows_of, chat_rows = _look_up(conn, events)
    body = _Body(now, events, rows_of, chat_rows)
    body.fingerprints = _seen_fingerprints(
        conn,
        [e.fingerprint for e in events if e.reason is None]
        + [body.ignored_fingerprint] * bool(body.ignored),
    )
    for event in events:
        body.apply(event)
    return body.write(conn)


def _look_up(
    conn, events: list[StatusEvent]
) -> tuple[dict[tuple[str, Any], list[Any]], dict[str, list[Any]]]:
    """The registrations the events name, by (selector, value), row-locked; and every
    live registration of the chats among them, by token: a block is about the chat."""
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
    # A chat looked up by its token above has every registration in rows_of already.
    chats = {r.token for rows in rows_of.values() for r in rows if r.state in LIVE_VALUES}
    known = chats & wanted.get("token", set())
    chat_rows: dict[str, list[Any]] = defaultdict(list)
    for row in itertools.chain(
        (r for t in sorted(known) for r in rows_of[("token", t)]),
        registrations_by(conn, "token", chats - known, lock=True),
    ):
        if row.state in LIVE_VALUES:
            chat_rows[row.token].append(row)
    return rows_of, chat_rows


def _candidates(via: str, rows: list[Any], live: list[Any]) -> list[str]:
    """The chats an event may be about: those of its live matches and, named by an
    identifier, the removed chats whose token Reteno still holds: Reteno sends to every
    token on the contact card, that of a chat that blocked the bot through Telegram
    among them."""
    held = (
        {r.token for r in rows if r.reteno_holds and r.state == State.REMOVED.value}
        if via != "token"
        else set()
    )
    return sorted({r.token for r in live} | held)


class _Body:
    """One body of status events: what each event does, gathered in order, then
    written (:meth:`write`)."""

    def __init__(
        self,
        now: datetime,
        events: list[StatusEvent],
        rows_of: dict[tuple[str, Any], list[Any]],
        chat_rows: dict[str, list[Any]],
    ):
        self.now, self.events, self.rows_of, self.chat_rows = now, events, rows_of, chat_rows
        self.seen_at = {r.id: seen(r) for rows in chat_rows.values() for r in rows}
        self.ignored = [e for e in events if e.reason is not None]
        self.ignored_fingerprint = _ignored_fingerprint(self.ignored)
        self.fingerprints: set[str] = set()  # in the ledger, or earlier in the body
        self.outcomes: dict[str, int] = defaultdict(int)
        self.counts = {"unmatched": 0, "ignored": 0, "stale": 0, "ambiguous": 0}
        self.records: list[dict] = []
        self.removals: list[tuple[list[Any], str, str, dict, datetime]] = []
        self.gone: set[int] = set()  # ids removed earlier in this body
        self.touched: dict[int, datetime] = {}
        self.later_blocks: dict[str, datetime] = {}  # blocks of chats with nothing live
        self.drops: dict[str, datetime] = {}  # chats Reteno reported a Forbidden for: when

    def record(
        self,
        kind: str,
        event: StatusEvent,
        detail: dict,
        token: str | None = None,
        registration_id: int | None = None,
    ) -> None:
        self.records.append(
            {
                "at": self.now,
                "kind": kind,
                "token": token,
                "registration_id": registration_id,
                "fingerprint": event.fingerprint,
                "detail": {**detail, "raw": event.raw},
            }
        )

    def apply(self, event: StatusEvent) -> None:
        """Count, record and act on one event."""
        duplicate = event.fingerprint in self.fingerprints
        self.fingerprints.add(event.fingerprint)
        if event.reason is not None:
            self.counts["ignored"] += 1
            self.outcomes[
                "duplicate" if self.ignored_fingerprint in self.fingerprints else "ignored"
            ] += 1
            return
        via, rows = event.selectors[0][0], []
        for name, value in event.selectors:
            if self.rows_of.get((name, value)):
                via, rows = name, self.rows_of[(name, value)]
                break
        live = [r for r in rows if r.state in LIVE_VALUES and r.id not in self.gone]
        targets = live or _latest_per_token(rows)
        if not targets:
            self.counts["unmatched"] += 1
            self.outcomes["duplicate" if duplicate else "unmatched"] += 1
            if not duplicate:
                self.record(
                    "status_unmatched",
                    event,
                    {"reason": f"no registration matches its {via}", "via": via, **event.summary()},
                    token=event.token,
                )
        elif duplicate:
            self.outcomes["duplicate"] += 1
        else:
            self._act(event, via, rows, live, targets)

    def _act(
        self, event: StatusEvent, via: str, rows: list[Any], live: list[Any], targets: list[Any]
    ) -> None:
        """A new event that matched ``targets``: a block, a sign of life, or a record."""
        at, resolution, clamped = received(event.at, self.now, event.resolution)
        removal = event.removal  # worked out once
        blocked = removal is not None
        candidates = _candidates(via, rows, live)
        summary = {
            **event.summary(),
            "at": at.isoformat(),
            **clamped,
            "blocked": blocked,
            "via": via,
            **({"reason": removal} if blocked else {}),
        }
        if blocked and len(candidates) > 1:
            # A block of one chat among several (Reteno dropped exactly the chat that
            # failed): not ours to guess. Nor is a sign of life, below.
            self.counts["ambiguous"] += 1
            self.outcomes["ambiguous"] += 1
            for row in targets:
                self.record(
                    "status_ambiguous",
                    event,
                    {**summary, "candidates": candidates},
                    token=row.token,
                    registration_id=row.id,
                )
            return
        chat = (
            [r for r in self.chat_rows.get(candidates[0], []) if r.id not in self.gone]
            if len(candidates) == 1
            else []
        )
        if blocked:
            self._failed(candidates, targets, live, at)
        outcome, removed_now, stale_rows = self._on_chat(event, blocked, chat, at, resolution)
        self.outcomes[outcome] += 1
        stale_ids = {r.id for r in stale_rows}
        for row in targets:
            state = State.REMOVED.value if row.id in self.gone else row.state
            self.record(
                "status_stale" if row.id in stale_ids else "status",
                event,
                {**summary, "registrationState": state},
                token=row.token,
                registration_id=row.id,
            )
        if removed_now:
            reason = f"{event.status}: {event.error or event.description}"[:_MAX_TEXT]
            self.removals.append(
                (
                    removed_now,
                    reason,
                    STATUS_CAUSE,
                    {
                        "reason": removal,
                        "source": "statuses",
                        "status": event.status,
                        "via": via,
                        "at": at.isoformat(),
                        **clamped,
                        "messageId": event.raw.get("messageId"),
                        "fingerprint": event.fingerprint,
                    },
                    at,
                )
            )
            self.gone.update(r.id for r in removed_now)

    def _on_chat(
        self,
        event: StatusEvent,
        blocked: bool,
        chat: list[Any],
        at: datetime,
        resolution: timedelta,
    ) -> tuple[str, list[Any], list[Any]]:
        """What the event does to its one chat's live registrations (``chat``): a block
        removes those not seen alive later (``stale`` when none is), a sign of life
        moves their last one on. (The outcome, the rows removed, the rows newer.)"""
        if blocked and chat:
            removed_now = [r for r in chat if not later(self.seen_at[r.id], at, resolution)]
            stale_rows = [r for r in chat if later(self.seen_at[r.id], at, resolution)]
            if not removed_now:
                self.counts["stale"] += 1
            return "blocked" if removed_now else "stale", removed_now, stale_rows
        if event.alive and chat:
            for r in chat:
                if self.seen_at[r.id] < at:
                    self.seen_at[r.id] = self.touched[r.id] = at
        return "matched", [], []

    def _failed(
        self, candidates: list[str], targets: list[Any], live: list[Any], at: datetime
    ) -> None:
        """A block at ``at``: Reteno dropped the token of the chat that failed (stale or
        not: the failure happened): the one candidate (named by an identifier, the chat
        of its contact whose token Reteno still held), or the one chat of the rows it
        names; with nothing live, the block is remembered for that chat."""
        failed = (
            candidates[0]
            if len(candidates) == 1
            else (targets[0].token if len({r.token for r in targets}) == 1 else None)
        )
        if failed is None:
            return
        if not live:
            self.later_blocks[failed] = max(at, self.later_blocks.get(failed, at))
        self.drops[failed] = max(at, self.drops.get(failed, at))

    def write(self, conn) -> StatusResult:
        """Write what the body did: its records, signs of life, remembered blocks,
        removals and dropped holds; the result."""
        if self.ignored and self.ignored_fingerprint not in self.fingerprints:
            self.records.append(_ignored(self.now, self.ignored, self.ignored_fingerprint))
        append_events(conn, self.records)
        for row_id, at in self.touched.items():
            registering.touch(conn, [row_id], at)
        for token, at in self.later_blocks.items():
            remember_block(conn, token, at)
        removed_tokens: dict[str, None] = {}
        removed = 0
        for done in remove(conn, self.now, self.removals):
            removed += len(done)
            removed_tokens.update((row.token, None) for row in done)
        drop_holds(conn, self.now, self.drops)
        return StatusResult(
            len(self.events),
            list(removed_tokens),
            self.counts["unmatched"],
            self.counts["ignored"],
            self.counts["stale"],
            self.counts["ambiguous"],
            dict(self.outcomes),
            removed,
        )
