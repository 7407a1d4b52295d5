"""Telegram: the bot's webhook updates and the signed ``/start`` deep links.

A Flask-free service (the HTTP layer authenticates the webhook and parses the
body). Owns two things:

**Deep links.** ``https://t.me/<bot>?start=<payload>`` where the payload
(Telegram allows at most 64 characters of ``[A-Za-z0-9_-]``) is the unpadded
base64url encoding of::

    header (1 byte) | value (0-35 bytes) | tag (12 bytes)

``header`` is ``version << 4 | type`` (version 1; type 1 contactId,
2 externalCustomerId, 3 phone, 4 email). ``value`` is the identifier's normal
form: contactId as a minimal big-endian unsigned integer (1-8 bytes), the
others as UTF-8 (phone: its digits). ``tag`` is the first 12 bytes (96 bits)
of HMAC-SHA256 keyed with ``BRIDGE_LINK_SECRET`` over a fixed domain string
plus ``header | value``. 48 bytes make 64 characters, so a value has at most
35 bytes: every contactId and phone fits; a longer externalCustomerId or
e-mail address is refused when the link is made. A payload is accepted only
if it is canonical base64url, its tag matches (``hmac.compare_digest``), and
its value passes the same normaliser ``/register`` uses. Links do not expire;
rotating ``BRIDGE_LINK_SECRET`` invalidates every link made with the old one.

**The webhook's updates** (``POST /telegram/webhook``):
``my_chat_member`` in a private chat moving to ``kicked`` removes the live
registrations of the token ``chat.id`` (the user blocked the bot); moving to
``member`` queues a new registration with the identifiers of that token's
last registration unless one is still live. ``/start <payload>`` in a private
chat registers ``chat.id`` with the payload's identifier; a payload that does
not verify registers nothing and is recorded (``link_rejected``, with the
reason, the payload's length and a hash prefix, never the payload itself).
Updates the bridge does not act on are answered 200 as well, so Telegram
never retries them; odd ones are recorded (``telegram_ignored``), ordinary
chatter (other messages) is only counted. Nothing here calls Telegram or
Reteno: the answer is a few database writes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import Any
from urllib.parse import quote

from marshmallow import ValidationError

from .ledger import TokenRequest
from .ledger.reports import TELEGRAM_CAUSE
from .ledger.types import COLUMN_OF
from .logs import get_logger
from .schemas import NORMALIZERS, normalize_token

log = get_logger("bridge.telegram")

PAYLOAD_MAX_CHARS = 64
TAG_BYTES = 12
VERSION = 1
MAX_VALUE_BYTES = PAYLOAD_MAX_CHARS * 3 // 4 - 1 - TAG_BYTES  # 35
TYPE_CODES = {"contactId": 1, "externalCustomerId": 2, "phone": 3, "email": 4}
TYPE_NAMES = {code: name for name, code in TYPE_CODES.items()}

_DOMAIN = b"reteno-telegram-bridge/start-link\x00"
_PAYLOAD = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BOT_MENTION = re.compile(r"@([A-Za-z0-9_]++)")


class LinkError(ValueError):
    """A deep link cannot be made; the message says why (and names the setting)."""


def parse_start(text: str) -> tuple[str | None, str | None] | None:
    """``/start[@bot][ payload]`` as ``(bot, payload)``, None for any other text.

    The payload is the rest after the whitespace that follows the command, without
    trailing whitespace. One pass over the text: a regular expression with a lazy
    payload before ``\\s*$`` took time quadratic in a long run of whitespace."""
    if not text.startswith("/start"):
        return None
    rest, bot = text[len("/start"):], None
    mention = _BOT_MENTION.match(rest)
    if mention:
        bot, rest = mention.group(1), rest[mention.end():]
    if rest and not rest[0].isspace():
        return None  # "/starting", "/start@", "/start@bot!"
    return bot, rest.strip() or None


# --- deep-link payloads ------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _tag(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), _DOMAIN + body, hashlib.sha256).digest()[:TAG_BYTES]


def _encode_value(name: str, value: Any) -> bytes:
    if name == "contactId":
        return value.to_bytes((value.bit_length() + 7) // 8, "big")
    return str(value).encode("utf-8")


def _decode_value(name: str, raw: bytes) -> Any:
    if name == "contactId":
        if not 1 <= len(raw) <= 8 or raw[0] == 0:
            raise ValueError("not a minimal contactId encoding")
        value: Any = int.from_bytes(raw, "big")
    else:
        value = raw.decode("utf-8")
    normal = NORMALIZERS[name](value)
    if normal != value:  # only normal forms are ever signed
        raise ValueError(f"{name} is not in its normal form")
    return normal


def make_payload(secret: str, name: str, value: Any) -> str:
    """The signed ``/start`` payload for one identifier (normalised first)."""
    if name not in TYPE_CODES:
        raise LinkError(f"Unknown identifier {name!r}: use one of {', '.join(TYPE_CODES)}.")
    try:
        value = NORMALIZERS[name](value)
    except ValidationError as exc:
        raise LinkError(f"{name}: {' '.join(exc.messages)}") from None
    encoded = _encode_value(name, value)
    if len(encoded) > MAX_VALUE_BYTES:
        raise LinkError(
            f"{name} is too long for a Telegram deep link: it takes {len(encoded)} bytes and "
            f"at most {MAX_VALUE_BYTES} fit in the {PAYLOAD_MAX_CHARS}-character start payload. "
            "Use the contactId, or a shorter externalCustomerId."
        )
    body = bytes([VERSION << 4 | TYPE_CODES[name]]) + encoded
    payload = _b64(body + _tag(secret, body))
    assert len(payload) <= PAYLOAD_MAX_CHARS and _PAYLOAD.match(payload)
    return payload


def make_link(settings, identifier_name: str, value: Any) -> str:
    """``https://t.me/<bot>?start=<payload>``; :class:`LinkError` names what is missing."""
    missing = [
        key
        for key, present in (
            ("BRIDGE_LINK_SECRET", settings.link_secret),
            ("TELEGRAM_BOT_USERNAME", settings.telegram_bot_username),
        )
        if not present
    ]
    if missing:
        raise LinkError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: "
            "deep links need the signing key (BRIDGE_LINK_SECRET) and the bot's @username "
            "(TELEGRAM_BOT_USERNAME)."
        )
    payload = make_payload(settings.link_secret, identifier_name, value)
    return f"https://t.me/{quote(settings.telegram_bot_username)}?start={payload}"


def inspect_payload(secret: str, payload: Any) -> tuple[tuple[str, Any] | None, str | None]:
    """``((identifier name, value), None)`` for a genuine payload, else ``(None, reason)``."""
    if not isinstance(payload, str) or not _PAYLOAD.match(payload):
        return None, "not a deep-link payload (1-64 characters of A-Z a-z 0-9 _ -)"
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError):
        return None, "not base64url"
    if _b64(raw) != payload:
        return None, "not canonical base64url"
    if len(raw) < 1 + TAG_BYTES + 1:
        return None, "too short to carry an identifier and a signature"
    body, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(secret, body)):
        return None, "bad signature"
    version, code = body[0] >> 4, body[0] & 0x0F
    if version != VERSION:
        return None, f"unknown payload version {version}"
    name = TYPE_NAMES.get(code)
    if name is None:
        return None, f"unknown identifier type {code}"
    try:
        return (name, _decode_value(name, body[1:])), None
    except (ValueError, ValidationError):
        return None, f"the {name} it carries is not valid"


def verify_payload(secret: str, payload: Any) -> tuple[str, Any] | None:
    """``(identifier name, value)`` for a genuine payload signed with ``secret``, else None."""
    return inspect_payload(secret, payload)[0]


# --- the webhook ---------------------------------------------------------------------


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
    except ValidationError:
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
        _record(ledger, "telegram_ignored", update_id,
                {"update": "my_chat_member", "reason": reason})
        return "ignored"
    old = change.get("old_chat_member")
    detail = {
        "source": "telegram",
        "updateId": update_id,
        "from": old.get("status") if isinstance(old, dict) else None,
        "to": status,
        "date": change.get("date"),
    }
    if status == "kicked":
        removed = ledger.block_chat(token, detail)
        if metrics is not None and removed:
            metrics.removals.labels(TELEGRAM_CAUSE).inc(removed)
        log.info("telegram: update %s blocked the bot; %d registration(s) removed",
                 update_id, removed)
        return "blocked"
    if status == "member":
        new_id, previous_id = ledger.unblock_chat(token, detail)
        if new_id is not None:
            log.info("telegram: update %s unblocked the bot; registration %s queued (was %s)",
                     update_id, new_id, previous_id)
        return "unblocked"
    _record(ledger, "telegram_ignored", update_id,
            {"update": "my_chat_member", "reason": f"status {status[:20]!r} is not acted on"},
            token=token)
    return "ignored"


def _start(ledger, settings, update_id, message: dict, bot: str | None,
           payload: str | None) -> str:
    if bot and settings.telegram_bot_username and (
        bot.lower() != settings.telegram_bot_username.lower()
    ):
        return "other"  # a command for another bot in the same chat
    token, why = _private_chat(message)
    if token is None:
        _record(ledger, "telegram_ignored", update_id, {"update": "/start", "reason": why})
        return "ignored"
    if payload is None:
        _record(ledger, "telegram_ignored", update_id,
                {"update": "/start", "reason": "/start without a deep-link payload"}, token=token)
        return "start"
    if settings.link_secret:
        found, reason = inspect_payload(settings.link_secret, payload)
    else:
        found, reason = None, "BRIDGE_LINK_SECRET is not set: no deep link can be verified"
    if found is None:
        _record(ledger, "link_rejected", update_id, {
            "reason": reason,
            "payloadLength": len(payload),
            "payloadSha256": hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16],
        }, token=token)
        log.warning("telegram: update %s: deep link rejected (%s)", update_id, reason)
        return "link_rejected"
    name, value = found
    request = TokenRequest(token, **{COLUMN_OF[name]: value})
    outcome = ledger.register([request], source="telegram_link")[0]
    log.info("telegram: update %s: deep link registered %s as registration %s%s",
             update_id, name, outcome.id, " (duplicate)" if outcome.duplicate else "")
    return "start_link"
