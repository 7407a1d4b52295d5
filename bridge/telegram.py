"""Telegram: the bot's webhook updates (``POST /telegram/webhook``).

A Flask-free service (the HTTP layer authenticates the webhook and parses the
body). ``my_chat_member`` in a private chat moving to ``kicked`` removes the
live registrations of the token ``chat.id`` (the user blocked the bot); moving
to ``member`` queues the token's last registration again unless one is still
live. The update's ``date`` decides the order, as for statuses: an update older
than the chat's latest sign of life changes nothing and is recorded as stale.
Telegram dates in whole seconds, and the ledger compares at that resolution (a
``kicked`` dated 10:00:00 removes a registration made at 10:00:00.4); a date later
than the update's receipt counts as the receipt (:mod:`bridge.ledger.times`).
``/start <payload>`` in a private chat, with an opaque link's payload
(:mod:`bridge.ledger.linking`) or one signed by the bridge in the old format
(:mod:`bridge.links`), registers ``chat.id`` with the link's identifiers; the
link binds to the first chat that uses it; its expiry is judged by the bridge's
clock, never the update's ``date`` (which the sender writes). A payload that is
unknown, expired, revoked or does not verify registers nothing and is recorded
(``link_rejected``, with the reason and the link's id or a hash prefix of the
payload, never the payload itself). Any ``/start``
is a sign of life of the chat. Updates the bridge does not act on are answered
200 as well, so Telegram never retries them; odd ones are recorded
(``telegram_ignored``), ordinary chatter (other messages) is only counted.
Nothing here calls Telegram or Reteno: the answer is a few database writes.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from .identifiers import IdentifierError, normalize_token
from .ledger import TokenRequest
from .ledger.chats import TELEGRAM_CAUSE
from .ledger.linking import is_opaque
from .ledger.times import SECOND, received
from .ledger.types import COLUMN_OF
from .links import inspect_payload
from .logs import get_logger

log = get_logger("bridge.telegram")

_BOT_MENTION = re.compile(r"@([A-Za-z0-9_]++)")


def parse_start(text: str) -> tuple[str | None, str | None] | None:
    """``/start[@bot][ payload]`` as ``(bot, payload)``, None for any other text.

    The payload is the rest after the whitespace that follows the command, without
    trailing whitespace. One pass over the text: a regular expression with a lazy
    payload before ``\\s*$`` took time quadratic in a long run of whitespace."""
    if not text.startswith("/start"):
        return None
    rest, bot = text[len("/start") :], None
    mention = _BOT_MENTION.match(rest)
    if mention:
        bot, rest = mention.group(1), rest[mention.end() :]
    if rest and not rest[0].isspace():
        return None  # "/starting", "/start@", "/start@bot!"
    return bot, rest.strip() or None


def _date(value: Any) -> datetime | None:
    """An update's ``date`` (Unix seconds, so :data:`SECOND` is its resolution); None
    when absent or odd: then the ledger takes the time it was received, as it does for
    a date later than that."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**32:
        return datetime.fromtimestamp(value, UTC)
    return None


def _record(ledger, kind: str, update_id, detail: dict, token: str | None = None) -> None:
    ledger.record(kind, {"updateId": update_id, **detail}, token=token)


def _private_chat(container: Any) -> tuple[str | None, str | None]:
    """(token, None) for a private chat, else (None, why not)."""
    chat = container.get("chat") if isinstance(container, dict) else None
    if not isinstance(chat, dict):
        return None, "no chat"
    if chat.get("type") != "private":
        return None, f"not a private chat ({str(chat.get('type'))[:20]})"
    try:
        return normalize_token(chat.get("id")), None
    except IdentifierError:
        return None, "chat.id is not a Telegram chat id"


def handle_update(ledger, settings, update: Any, metrics=None) -> str:
    """Act on one Telegram ``Update``; returns what it was (a metrics label)."""
    if not isinstance(update, dict):
        _record(ledger, "telegram_ignored", None, {"reason": "not an Update object"})
        return "odd"
    update_id = update.get("update_id") if isinstance(update.get("update_id"), int) else None
    if "my_chat_member" in update:
        return _chat_member(ledger, update_id, update["my_chat_member"], metrics)
    message = update.get("message")
    if isinstance(message, dict) and isinstance(message.get("text"), str):
        start = parse_start(message["text"])
        if start is not None:
            return _start(ledger, settings, update_id, message, *start)
        return "message"
    kinds = [k for k in update if k != "update_id"]
    if not kinds:
        _record(ledger, "telegram_ignored", update_id, {"reason": "an update with no content"})
        return "odd"
    return "other"


def _chat_member(ledger, update_id, change: Any, metrics) -> str:
    token, why = _private_chat(change)
    new = change.get("new_chat_member") if isinstance(change, dict) else None
    status = new.get("status") if isinstance(new, dict) else None
    if token is None or not isinstance(status, str):
        reason = why or "no new_chat_member.status"
        _record(
            ledger, "telegram_ignored", update_id, {"update": "my_chat_member", "reason": reason}
        )
        return "ignored"
    old = change.get("old_chat_member")
    detail = {
        "source": "telegram",
        "updateId": update_id,
        "from": old.get("status") if isinstance(old, dict) else None,
        "to": status,
        "date": change.get("date"),
    }
    at = _date(change.get("date"))
    if status == "kicked":
        removed, stale = ledger.block_chat(token, detail, at, SECOND)
        if metrics is not None and removed:
            metrics.removals.labels(TELEGRAM_CAUSE).inc(removed)
        log.info(
            "telegram: update %s blocked the bot; %d registration(s) removed, %d newer",
            update_id,
            removed,
            stale,
        )
        return "blocked" if removed or not stale else "stale"
    if status == "member":
        new_id, previous_id, queued = ledger.unblock_chat(token, detail, at, SECOND)
        if new_id is not None:
            log.info(
                "telegram: update %s unblocked the bot; registration %s %s (was %s)",
                update_id,
                new_id,
                "queued" if queued else "live again (Reteno holds the token)",
                previous_id,
            )
        return "unblocked"
    # the status under "to", never in the reason: a reason is the bridge's own words,
    # which erase leaves as they are; "to" is read for personal data like any value
    _record(
        ledger,
        "telegram_ignored",
        update_id,
        {"update": "my_chat_member", "reason": "a status that is not acted on", "to": status[:64]},
        token=token,
    )
    return "ignored"


def _start(ledger, settings, update_id, message: dict, bot: str | None, payload: str | None) -> str:
    if (
        bot
        and settings.telegram_bot_username
        and (bot.lower() != settings.telegram_bot_username.lower())
    ):
        return "other"  # a command for another bot in the same chat
    token, why = _private_chat(message)
    if token is None:
        _record(ledger, "telegram_ignored", update_id, {"update": "/start", "reason": why})
        return "ignored"
    now = ledger.clock()  # judges the link's expiry: the update's date never does
    at, _resolution, clamped = received(_date(message.get("date")), now)
    ledger.sign_of_life(token, at)
    if payload is None:
        _record(
            ledger,
            "telegram_ignored",
            update_id,
            {"update": "/start", "reason": "/start without a deep-link payload", **clamped},
            token=token,
        )
        return "start"
    if is_opaque(payload):
        return _opaque(ledger, token, update_id, payload, at, clamped)
    if settings.link_secrets:
        found, reason = inspect_payload(settings.link_secrets, payload, now)
    else:
        found, reason = None, "BRIDGE_LINK_SECRET is not set: no deep link can be verified"
    if found is None:
        _record(
            ledger,
            "link_rejected",
            update_id,
            {
                "reason": reason,
                "payloadLength": len(payload),
                "payloadSha256": hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16],
                **clamped,
            },
            token=token,
        )
        log.warning("telegram: update %s: deep link rejected (%s)", update_id, reason)
        return "link_rejected"
    request = TokenRequest(token, **{COLUMN_OF[found.name]: found.value})
    outcome = ledger.use_link(token, request, found.link_id, at, found.mark)
    if isinstance(outcome, str):
        log.warning("telegram: update %s: deep link refused (%s)", update_id, outcome)
        return outcome
    log.info(
        "telegram: update %s: deep link registered %s as registration %s%s",
        update_id,
        found.name,
        outcome.id,
        " (duplicate)" if outcome.duplicate else "",
    )
    return "start_link"


def _opaque(ledger, token: str, update_id, payload: str, at: datetime, clamped: dict) -> str:
    outcome = ledger.open_link(token, payload, at, {"updateId": update_id, **clamped})
    if isinstance(outcome, str):
        log.warning("telegram: update %s: link refused (%s)", update_id, outcome)
        return outcome
    log.info(
        "telegram: update %s: link registered the chat as registration %s%s",
        update_id,
        outcome.id,
        " (duplicate)" if outcome.duplicate else "",
    )
    return "start_link"
