"""What Telegram says about a chat: the user blocked the bot, unblocked it, pressed
/start (a sign of life), or opened a deep link.

A block goes through :func:`.reports.remove`, like a Reteno status's, under the same
rules (time decides, no guessing), but never drops what Reteno holds: only a Reteno
Forbidden does that (:mod:`.reports`). An unblock therefore makes the chat live again
without a call while Reteno still holds its token under its last identity
(``restored``), and queues it again otherwise. Telegram dates its updates to the
second; times go through :mod:`.times`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from ..db import lock_keys
from ..models import Event
from . import erasure, registering
from .reports import registrations_by, remember_block, remove, seen
from .states import LIVE_VALUES, append_events
from .times import EXACT, later, received
from .types import TokenRequest

TELEGRAM_CAUSE = "telegram_blocked"
TELEGRAM_REASON = "Telegram: the user blocked the bot (my_chat_member: kicked)"
TELEGRAM_REMOVAL = "blocked"  # the reason code of Telegram's kicked (types.removal_reason)


def block_chat(
    conn,
    now: datetime,
    token: str,
    detail: dict,
    at: datetime | None = None,
    resolution: timedelta = EXACT,
) -> tuple[int, int]:
    """The user blocked the bot at ``at`` (given to ``resolution``): remove the chat's
    live registrations that are not newer; (how many were removed, how many were newer
    and stay: ``stale``). Telegram dates its updates to the second, so a block in the
    same second as the sign of life before it still removes."""
    at, resolution, clamped = received(at, now, resolution)
    detail = {**detail, "at": at.isoformat(), **clamped}
    live = [
        r for r in registrations_by(conn, "token", [token], lock=True) if r.state in LIVE_VALUES
    ]
    older = [r for r in live if not later(seen(r), at, resolution)]
    newer = [r for r in live if later(seen(r), at, resolution)]
    [done] = remove(
        conn,
        now,
        [(older, TELEGRAM_REASON, TELEGRAM_CAUSE, {"reason": TELEGRAM_REMOVAL, **detail}, at)],
    )
    if newer:
        append_events(
            conn,
            [
                {
                    "at": now,
                    "kind": "telegram_stale",
                    "token": token,
                    "registration_id": r.id,
                    "detail": {**detail, "reason": "the chat was seen alive after this update"},
                }
                for r in newer
            ],
        )
    if not live:
        remember_block(conn, token, at)
        append_events(
            conn,
            [
                {
                    "at": now,
                    "kind": "telegram_blocked",
                    "token": token,
                    "registration_id": None,
                    "detail": {**detail, "removed": 0, "reason": "no live registration"},
                }
            ],
        )
    return len(done), len(newer)


def unblock_chat(
    conn,
    now: datetime,
    token: str,
    detail: dict,
    at: datetime | None = None,
    hold_conflicts: bool = False,
    resolution: timedelta = EXACT,
) -> tuple[int | None, int | None, bool]:
    """The user unblocked the bot at ``at`` (given to ``resolution``): a sign of life of
    a live registration, or the chat live again with its last registration's
    identifiers — without a call while Reteno still holds the token under them
    (``restored``), else queued again — unless the chat was blocked after ``at``
    (``stale``; a block within the same second is not after it). (New registration id
    or None, previous registration id or None, whether something was queued)."""
    at, resolution, clamped = received(at, now, resolution)
    detail = {**detail, "at": at.isoformat(), **clamped}
    lock_keys(conn, [f"chat:{token}"])  # as registering does: nothing live appears meanwhile
    rows = registrations_by(conn, "token", [token], lock=True)
    live = [r for r in rows if r.state in LIVE_VALUES]
    last = rows[-1] if rows else None
    blocked_at = max((r.removed_at for r in rows if r.removed_at is not None), default=None)
    new_id, kind, queued = None, "telegram_unblocked", False
    if live:
        registering.touch(conn, [r.id for r in live], at)
        result = {"result": "a registration is still live", "registrationIds": [r.id for r in live]}
    elif last is None:
        result = {"result": "no earlier registration with an identifier"}
    elif blocked_at is not None and later(blocked_at, at, resolution):
        kind = "telegram_stale"
        result = {
            "result": "the chat was blocked after this update",
            "previousRegistrationId": last.id,
        }
    else:
        identity = (last.matched_by, last.match_value)
        delivered_at = max(
            (
                r.delivered_at
                for r in rows
                if r.reteno_holds
                and r.delivered_at is not None
                and (r.matched_by, r.match_value) == identity
            ),
            default=None,
        )
        if delivered_at is not None:
            new_id = registering.restore(conn, now, last, at, delivered_at)
            result = {"result": "live again without a call", "retenoHolds": True}
        else:
            request = TokenRequest(
                token, last.contact_id, last.external_customer_id, last.phone, last.email
            )
            new_id = registering.register(conn, [request], ["telegram"], now, hold_conflicts, [at])[
                0
            ].id
            result, queued = {"result": "queued again", "retenoHolds": False}, True
        result.update(registrationId=new_id, previousRegistrationId=last.id)
    append_events(
        conn,
        [
            {
                "at": now,
                "kind": kind,
                "token": token,
                "registration_id": new_id,
                "detail": {**detail, **result},
            }
        ],
    )
    return new_id, last.id if last else None, queued


def sign_of_life(conn, now: datetime, token: str, at: datetime | None) -> int:
    """The chat was seen alive at ``at`` (a /start; never later than ``now``): its live
    registrations' latest sign of life moves on; how many it had."""
    live = [r for r in registrations_by(conn, "token", [token]) if r.state in LIVE_VALUES]
    registering.touch(conn, [r.id for r in live], received(at, now)[0])
    return len(live)


def use_link(
    conn,
    now: datetime,
    token: str,
    request: TokenRequest,
    link_id: str,
    seen: datetime,
    hold_conflicts: bool = False,
    mark: str | None = None,
):
    """A signed deep link opened in chat ``token``: the link binds to the first chat that
    uses it. That chat registers (again: a duplicate); any other chat registers nothing
    and is recorded (``link_reused``), as is any chat once erase revoked the link (by
    its id, or by ``mark``, its identifier's tombstone: ``link_rejected``, reason
    ``revoked``). The outcome, or the kind of event a refusal recorded."""
    lock_keys(conn, [f"link:{link_id}"])
    if erasure.revoked(conn, [link_id, mark]):
        append_events(
            conn,
            [
                {
                    "at": now,
                    "kind": "link_rejected",
                    "token": token,
                    "registration_id": None,
                    "detail": {"link": link_id[:16], "reason": "revoked"},
                }
            ],
        )
        return "link_rejected"
    first = conn.execute(
        select(Event.token)
        .where(Event.fingerprint == link_id, Event.kind == "link_used")
        .order_by(Event.id)
        .limit(1)
    ).scalar()
    if first is not None and first != token:
        append_events(
            conn,
            [
                {
                    "at": now,
                    "kind": "link_reused",
                    "token": token,
                    "registration_id": None,
                    "detail": {
                        "link": link_id[:16],
                        "reason": "the link was opened in another chat first",
                    },
                }
            ],
        )
        return "link_reused"
    outcome = registering.register(conn, [request], ["telegram_link"], now, hold_conflicts, [seen])[
        0
    ]
    if first is None:
        append_events(
            conn,
            [
                {
                    "at": now,
                    "kind": "link_used",
                    "token": token,
                    "registration_id": outcome.id,
                    "fingerprint": link_id,
                    "detail": {"link": link_id[:16], "matchedBy": outcome.matched_by},
                }
            ],
        )
    return outcome
