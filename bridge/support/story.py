"""One customer, found by one identifier, and each of their chats' story in plain words:
what happened, newest first, each line with its exact time and the raw event, and at
the top one sentence that answers "why doesn't this customer get our messages?".

Flask-free: it reads the ledger (``find`` and ``history``) and words what it finds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..identifiers import NORMALIZERS, IdentifierError, normalize_token
from ..ledger import HistoryEvent, RegistrationRecord
from .overview import PAUSE_REASONS

#: What a look-up can be by: (form value, label, normaliser), in the form's order.
KINDS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("token", "Telegram chat id", normalize_token),
    ("email", "E-mail", NORMALIZERS["email"]),
    ("phone", "Phone", NORMALIZERS["phone"]),
    ("externalCustomerId", "externalCustomerId", NORMALIZERS["externalCustomerId"]),
    ("contactId", "contactId", NORMALIZERS["contactId"]),
)
LABEL = {kind: label for kind, label, _ in KINDS}
MAX_CHATS = 20  # chats shown for one identifier (one person rarely has more than a few)
MAX_REGISTRATIONS = 200  # registrations read for one look-up
MAX_VALUE = 1000  # characters of a look-up value read at all

NOT_FOUND = (
    "Nothing is known of this {what}: either the bridge never received it, or the "
    "customer's data was erased (an erasure keeps nothing that could find them)."
)


class BadLookup(ValueError):
    """A look-up value that breaks its identifier's rule; the message says why."""


@dataclass(frozen=True)
class Line:
    at: datetime
    text: str
    kind: str
    raw: str  # the event as the history API shows it, as indented JSON


@dataclass(frozen=True)
class Story:
    token: str
    answer: str
    registrations: list[RegistrationRecord]
    lines: list[Line]  # newest first


def normalize(kind: str, value: str) -> Any:
    """``value`` in the normal form of ``kind``; :class:`BadLookup` when it is not one."""
    normalizers = {k: fn for k, _, fn in KINDS}
    if kind not in normalizers:
        raise BadLookup("Choose what to search by.")
    if len(value) > MAX_VALUE:  # no identifier is this long: not worth reading
        raise BadLookup(f"That is not a valid {LABEL[kind]}: it is far too long.")
    if not value.strip():
        raise BadLookup(f"Enter a {LABEL[kind]} to search for.")
    try:
        return normalizers[kind](value)
    except IdentifierError as exc:
        raise BadLookup(f"That is not a valid {LABEL[kind]}: {' '.join(exc.messages)}") from None


def look_up(ledger, kind: str, value: Any, now: datetime) -> tuple[list[Story], str | None]:
    """The stories of the chats registered under ``kind`` = ``value`` (a normal form, an
    exact match), newest chat first; with none, the sentence that says so."""
    filters = {kind: value}
    records, _next = ledger.find(filters, limit=MAX_REGISTRATIONS)
    tokens = list(dict.fromkeys(r.token for r in records))[:MAX_CHATS]
    if not tokens:
        what = "chat" if kind == "token" else LABEL[kind]
        return [], NOT_FOUND.format(what=what)
    return [chat_story(ledger, token, now) for token in tokens], None


def chat_story(ledger, token: str, now: datetime) -> Story:
    records, _next = ledger.find({"token": token}, limit=MAX_REGISTRATIONS)
    events = ledger.history(token)
    paused = _paused(ledger, now)
    return Story(
        token=token,
        answer=answer(records, events, now, paused),
        registrations=records,
        lines=[line(e) for e in reversed(events)],
    )


def _paused(ledger, now: datetime) -> str | None:
    state, until = ledger.upstream()
    if until is None:
        return None
    reason = state.get("pause_reason") if state.get("paused_until") else "Retry-After"
    why = PAUSE_REASONS.get(reason, reason) or "Reteno refused the bridge"
    return f"until {when(until, now)} ({why})"


# --- words -------------------------------------------------------------------------


def when(at: datetime, now: datetime) -> str:
    """``3 Dec at 14:02`` (UTC; the year too when it is not this one)."""
    at, now = at.astimezone(UTC), now.astimezone(UTC)
    day = f"{at.day} {at:%b}" + (f" {at.year}" if at.year != now.year else "")
    return f"{day} at {at:%H:%M}"


def exact(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _removal(events: list[HistoryEvent], registration_id: int) -> dict:
    for event in reversed(events):
        if event.kind == "removed" and event.registration_id == registration_id:
            return event.detail or {}
    return {}


def _conflicts_with(events: list[HistoryEvent], record: RegistrationRecord, by_id) -> str:
    for event in reversed(events):
        if event.kind == "conflict" and event.registration_id == record.id:
            others = event.detail.get("with") or []
            return ", ".join(
                f"registration #{i}" + (f" (by {by_id[i].matched_by})" if i in by_id else "")
                for i in others
            )
    return "another registration"


def _removed_answer(record: RegistrationRecord, detail: dict, now: datetime) -> str:
    at = when(record.removed_at or record.created_at, now)
    cause, reason = detail.get("cause", ""), detail.get("reason", "")
    start_again = "until the customer presses Start again"
    if cause.startswith("telegram"):
        return (
            f"Blocked the bot on {at} (Telegram); Reteno will not message this chat {start_again}"
        )
    if cause.startswith("status"):
        said = {
            "blocked": "the customer blocked the bot",
            "deactivated": "the customer's Telegram account is deleted",
            "kicked": "the bot was removed from this group chat",
        }.get(reason, "Telegram refused the message")
        return (
            f"Reteno's message on {at} failed with Forbidden ({said}); Reteno dropped this "
            f"chat and will not message it {start_again}"
        )
    if cause == "stale":
        return (
            f"Removed on {at} by the stale-token report (no sign of life for a long time); "
            "a new registration or the customer pressing Start brings it back"
        )
    return f"Removed on {at}: {record.removal_reason or 'no reason recorded'}"


def answer(
    records: list[RegistrationRecord],
    events: list[HistoryEvent],
    now: datetime,
    paused: str | None = None,
) -> str:
    """The one sentence at the top of a chat's story (``records``: newest first)."""
    if not records:
        return NOT_FOUND.format(what="chat")
    live = [r for r in records if r.state != "removed"]
    if not live:
        return _removed_answer(records[0], _removal(events, records[0].id), now) + "."
    record = live[0]
    by_id = {r.id: r for r in records}
    if record.state == "held":
        return (
            f"Kept back since {when(record.created_at, now)}: this chat is also registered "
            f"as {_conflicts_with(events, record, by_id)}, so nothing is sent to Reteno until "
            f"someone reviews it (bridge conflicts release {record.id})."
        )
    if record.state == "dead":
        return (
            f"Reteno refused this chat's registration for good "
            f"({record.last_error or 'no reason given'}); it is not sent again unless an "
            "operator requeues it (bridge requeue)."
        )
    if record.state == "queued":
        sentence = f"Not with Reteno yet: waiting to be sent since {when(record.created_at, now)}"
        if record.attempts:
            sentence += f", {record.attempts} attempt(s) so far"
        if paused:
            sentence += f"; delivery is paused {paused}"
        return sentence + "."
    return _delivered_answer(record, events, by_id, now)


def _delivered_answer(record, events, by_id, now: datetime) -> str:
    since = when(record.delivered_at or record.created_at, now)
    if record.muted:
        until = f"until {when(record.muted_until, now)}" if record.muted_until else "until unmuted"
        sentence = (
            f"Muted {until}: Reteno sends this chat no marketing messages meanwhile "
            "(transactional ones still arrive)"
        )
    else:
        sentence = (
            f"With Reteno since {since} (matched by {record.matched_by}); Reteno can message "
            "this chat"
        )
    if record.conflict:
        sentence += (
            f". Identity conflict: the chat is also registered as "
            f"{_conflicts_with(events, record, by_id)}, so the other contact's messages "
            "reach it too"
        )
    return sentence + "."


_SOURCES = {
    "api": "the bot's backend (POST /register)",
    "telegram": "Telegram (the customer unblocked the bot)",
    "telegram_link": "a /start link the customer opened",
}
_REASONS = {
    "blocked": "the customer blocked the bot",
    "deactivated": "the customer's Telegram account is deleted",
    "kicked": "the bot was removed from the group chat",
    "forbidden": "Telegram refused the message",
}


def _words(event: HistoryEvent) -> str:  # noqa: C901 - one table, read top to bottom
    d, kind = event.detail or {}, event.kind
    if kind == "submitted":
        text = (
            f"Registered by {d.get('matchedBy', '?')} from "
            f"{_SOURCES.get(d.get('source'), d.get('source') or 'somewhere unknown')}"
        )
        return text + (" — kept back: identity conflict" if d.get("state") == "held" else "")
    if kind == "conflict":
        others = ", ".join(f"#{i}" for i in d.get("with") or []) or "another one"
        held = "; kept back for review" if d.get("held") else ""
        return f"Identity conflict: the chat is also registered as registration {others}{held}"
    if kind == "delivered":
        return f"Delivered to Reteno (attempt {d.get('attempt', '?')}, HTTP {d.get('status', '?')})"
    if kind == "removed":
        cause, reason = d.get("cause", ""), _REASONS.get(d.get("reason"), d.get("reason"))
        if cause.startswith("telegram"):
            return "Removed: the customer blocked the bot (Telegram said so)"
        if cause.startswith("status"):
            return f"Removed: Reteno's message failed with Forbidden ({reason})"
        return f"Removed: {d.get('removalReason') or cause or 'no reason recorded'}"
    simple = {
        "retry": "Reteno did not take it this time ({reason}); it is tried again later",
        "paused": "Reteno refused the bridge ({reason}); delivery paused",
        "not_sent": "Claimed but not sent; back in the queue",
        "dead": "Reteno refused it for good ({reason})",
        "requeued": "An operator put it back in the queue",
        "released": "Released for delivery",
        "restored": "Came back: Reteno still held the token, so nothing had to be sent",
        "reteno_dropped": "Reteno dropped the token (an older message failed with "
        "Forbidden); it is sent again",
        "telegram_blocked": "Blocked the bot (Telegram); nothing was live to remove",
        "telegram_stale": "A Telegram update older than the chat's latest sign of life: "
        "changed nothing",
        "link_used": "Opened a /start link",
        "link_reused": "Opened a /start link that another chat had used: nothing registered",
        "link_rejected": "Opened a /start link that was refused ({reason})",
        "status_stale": "Reteno reported {status} from before the chat's latest sign of "
        "life: changed nothing",
    }
    if kind in simple:
        return simple[kind].format(
            reason=d.get("reason") or d.get("error") or "no reason given",
            status=d.get("status", "a status"),
        )
    if kind == "telegram_unblocked":
        return f"Unblocked the bot (Telegram): {d.get('result', 'recorded')}"
    if kind == "status":
        text = f"Reteno reported {d.get('status', 'a status')}"
        if d.get("error"):
            text += f": {d['error']}"
        return text
    if kind == "telegram_ignored":
        if d.get("update") == "/start":
            return "Pressed Start (a sign of life)"
        return f"A Telegram update the bridge does not act on ({d.get('reason', '')})"
    action, _, step = kind.partition("_")
    if action in ("mute", "unmute") and step in ("requested", "delivered"):
        if step == "delivered":
            return f"Reteno took the {action}"
        if action == "unmute":
            return "Unmute asked for: marketing messages may reach the chat again"
        until = d.get("mutedUntil")
        until = f"until {exact(datetime.fromisoformat(until))}" if until else "until unmuted"
        return f"Mute asked for, {until}"
    if action in ("mute", "unmute", "replay") and step:
        return f"{action.capitalize()}: {step.replace('_', ' ')}"
    return kind.replace("_", " ").capitalize()


def line(event: HistoryEvent) -> Line:
    """One line of a story: the event in words, and as the history API shows it."""
    raw = json.dumps(
        {
            "at": event.at.isoformat(),
            "kind": event.kind,
            "registrationId": event.registration_id,
            "detail": event.detail,
        },
        indent=2,
        ensure_ascii=False,
        default=str,
    )
    return Line(event.at, _words(event), event.kind, raw)
