"""Status events: what Reteno and the bot backend report about sent messages.

A Flask-free service behind ``POST /statuses``. It owns:

* **normalising** both vocabularies into one :class:`~bridge.ledger.StatusEvent` —
  the simple one (``status``, ``error``, ``token`` and/or identifiers) that a bot
  backend sends, and Reteno's activity webhook objects (``activityStatus``,
  ``statusDescription``, ``contactId``, ``externalCustomerId``, ``email``,
  ``sms``/``phone``, ``mediaType``, ``messageId``, ...); unknown fields are kept
  in the raw copy (minus anything that looks like a credential) and otherwise
  ignored. Identifiers are normalised as ``/register`` does; values that do not
  normalise are passed over (and noted); an event left with no usable token or
  identifier, or with no recognisable status, is *ignored*;
* **times**: ``activityDateTime`` (Reteno) or ``time`` (simple), ISO 8601 or epoch
  seconds, with the resolution it was given in (whole seconds, mostly). Reteno writes
  its times without an offset, in the account's zone: such a time is read in
  ``BRIDGE_STATUS_TIMEZONE``; one with an offset, or in epoch seconds, is taken as it
  is. The ledger takes a time later than the body's receipt as the receipt
  (:mod:`bridge.ledger.times`);
* **fingerprinting**: the sha256 of the raw object's canonical JSON, by which the
  ledger recognises a replay (so two genuinely distinct reports with
  byte-identical content, no ``messageId`` and no time, are kept once);
* handing the body to :meth:`bridge.ledger.Ledger.apply_statuses` (one
  transaction: what a block removes, what each event is recorded as), and
  counting the outcome in the metrics.

A failure is ``FAILED``, ``UNDELIVERED`` or ``BOT_SEND_ERROR``. Whether it removes
its chat is read from Telegram's own words in its error or description
(:func:`bridge.ledger.types.removal_reason`): ``bot was blocked by the user``
(reason ``blocked``), ``user is deactivated`` (``deactivated``), ``bot was kicked
from the group/supergroup/channel chat`` (``kicked``), any other Forbidden or a bare
403 (``forbidden``); anything else (``Bad Request: chat not found`` is a 400) is
recorded only.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from marshmallow import ValidationError

from .identifiers import NORMALIZERS, IdentifierError, normalize_token
from .ledger import Ledger, StatusEvent
from .ledger.reports import STATUS_CAUSE
from .ledger.times import EXACT, SECOND
from .logs import get_logger
from .models import IDENTIFIERS

log = get_logger("bridge.statuses")

_STATUS = re.compile(r"^[A-Z][A-Z0-9_]{0,39}$")
_CREDENTIAL = re.compile(
    r"password|passwd|secret|api[_-]?key|access[_-]?key|authori[sz]ation|credential",
    re.IGNORECASE,
)
# Where each identifier may be found in an event, first name first.
_SOURCES = {
    "contactId": ("contactId",),
    "externalCustomerId": ("externalCustomerId",),
    "phone": ("phone", "sms"),
    "email": ("email",),
}
_MAX_TEXT = 1000


# --- parsing ------------------------------------------------------------------------


class TooManyEvents(ValueError):
    """A body with more events than ``BRIDGE_MAX_STATUS_EVENTS`` (answered 413)."""


def events_from_body(data: Any, limit: int | None = None) -> list[dict]:
    """The event objects of a body: one object or an array of at most ``limit``.

    Raises :class:`marshmallow.ValidationError` (answered 422) for anything else, and
    :class:`TooManyEvents` for a longer array.
    """
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list) and limit is not None and len(data) > limit:
        # Reteno would retry this body and hold later events: say so loudly.
        log.error(
            "statuses: a body of %d events refused (BRIDGE_MAX_STATUS_EVENTS=%d)", len(data), limit
        )
        raise TooManyEvents(
            f"The body holds {len(data)} status events; at most {limit} are "
            "taken in one request (BRIDGE_MAX_STATUS_EVENTS)."
        )
    if isinstance(data, list):
        errors = {
            str(index): ["Must be a status event object."]
            for index, item in enumerate(data)
            if not isinstance(item, dict)
        }
        if errors:
            raise ValidationError(errors)
        return data
    raise ValidationError(
        "Must be a status event object or a JSON array of status event objects.", "_body"
    )


def without_credentials(value: Any) -> Any:
    """A copy of ``value`` without keys that look like credentials (at any depth)."""
    if isinstance(value, dict):
        return {
            k: without_credentials(v) for k, v in value.items() if not _CREDENTIAL.search(str(k))
        }
    if isinstance(value, list):
        return [without_credentials(v) for v in value]
    return value


def fingerprint(raw: dict) -> str:
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False)
    value = value.strip()
    return value[:_MAX_TEXT] or None


def _status(event: dict) -> tuple[str | None, str | None]:
    """(status, None) or (None, why not)."""
    given = [event[k] for k in ("status", "activityStatus") if event.get(k) not in (None, "")]
    if not given:
        return None, "no status: expected 'status' or 'activityStatus'"
    for value in given:
        if isinstance(value, str) and _STATUS.match(value.strip().upper()):
            return value.strip().upper(), None
    return None, f"unrecognised status {str(given[0])[:60]!r}"


# Epoch seconds beyond this are milliseconds (year 2286 in seconds): Reteno's API
# documents seconds, some exports use milliseconds.
_EPOCH_MS = 10**10
_MILLISECOND = timedelta(milliseconds=1)
# The time of day of an ISO 8601 time, for the resolution it was given in: hours, then
# minutes, seconds and a fraction, each present only if the one before it is.
_TIME_OF_DAY = re.compile(
    r"[Tt ]\d\d(?P<minute>:?\d\d(?P<second>:?\d\d(?P<fraction>[.,]\d{1,9})?)?)?"
)


def event_time(value: Any, zone: tzinfo = UTC) -> tuple[datetime, timedelta]:
    """An event's time and the resolution it was given in: ISO 8601 (without an offset:
    a time of day in ``zone``, ``BRIDGE_STATUS_TIMEZONE``) or epoch seconds (a number
    or a string of one; milliseconds past 10^10). ``ValueError`` for anything else.

    Whole epoch seconds, and ISO times to the second, are :data:`SECOND`; a fraction is
    as fine as its digits; a time to the minute (or hour, or a date alone) is that."""
    if isinstance(value, bool):
        raise ValueError("not a time")
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", value):
        value = float(value) if "." in value else int(value)
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError("not a time")
        if value >= _EPOCH_MS:
            seconds, resolution = value / 1000, _MILLISECOND
        else:
            seconds, resolution = value, SECOND
        if value != int(value):
            resolution = EXACT
        return datetime.fromtimestamp(seconds, UTC), resolution
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError("not a time")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    moment = parsed.replace(tzinfo=zone) if parsed.tzinfo is None else parsed
    return moment.astimezone(UTC), _resolution(text)


def _resolution(iso: str) -> timedelta:
    clock = _TIME_OF_DAY.search(iso)
    if clock is None:
        return timedelta(days=1)
    if clock["fraction"]:
        return max(EXACT, timedelta(seconds=10 ** -(len(clock["fraction"]) - 1)))
    if clock["second"]:
        return SECOND
    return timedelta(minutes=1) if clock["minute"] else timedelta(hours=1)


def _is_telegram(media_type: Any) -> bool:
    return media_type is None or "telegram" in str(media_type).lower()


def normalise(obj: dict, zone: tzinfo = UTC) -> StatusEvent:
    """One event object as a :class:`StatusEvent` (never raises); offset-less times are
    read in ``zone``."""
    raw = without_credentials(obj)
    event = StatusEvent(raw=raw, fingerprint=fingerprint(raw))
    event.error = _text(raw.get("error"))
    event.description = _text(raw.get("statusDescription"))
    event.status, reason = _status(raw)
    _read_time(event, raw, zone)
    _read_identifiers(event, raw)
    event.reason = _unusable(event, raw, reason)
    return event


def _read_time(event: StatusEvent, raw: dict, zone: tzinfo) -> None:
    """The event's time (its first time field), read in ``zone`` when offset-less."""
    for key in ("activityDateTime", "time"):
        if raw.get(key) not in (None, ""):
            try:
                event.at, event.resolution = event_time(raw[key], zone)
            except (ValueError, OverflowError, OSError):
                event.invalid[key] = (
                    "not an ISO 8601 time or epoch seconds: the time it was received counts"
                )
            break


def _read_identifiers(event: StatusEvent, raw: dict) -> None:
    """The event's token and its identifiers (each one's first field), normalised; an
    invalid one noted in ``invalid``."""
    token = raw.get("token")
    if token not in (None, ""):
        try:
            event.token = normalize_token(token)
        except IdentifierError as exc:
            event.invalid["token"] = " ".join(exc.messages)
    for name, _column in IDENTIFIERS:
        for key in _SOURCES[name]:
            value = raw.get(key)
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            try:
                event.identifiers.append((name, NORMALIZERS[name](value)))
            except IdentifierError as exc:
                event.invalid[key] = " ".join(exc.messages)
            break


def _unusable(event: StatusEvent, raw: dict, reason: str | None) -> str | None:
    """Why the bridge cannot use the event (its status's ``reason`` first), or None."""
    if reason:
        return reason
    if not _is_telegram(raw.get("mediaType")):
        return f"mediaType {str(raw['mediaType'])[:60]!r} is not Telegram"
    if "token" in event.invalid:
        return f"token: {event.invalid['token']}"
    if event.token is None and not event.identifiers:
        return "no token or identifier" + (
            " that is valid (" + "; ".join(f"{k}: {v}" for k, v in event.invalid.items()) + ")"
            if event.invalid
            else ": expected token, contactId, externalCustomerId, phone/sms or email"
        )
    return None


# --- handling ---------------------------------------------------------------------------


def handle(ledger: Ledger, objects: list[dict], metrics=None, zone: tzinfo = UTC) -> dict[str, Any]:
    """Normalise a body's events (offset-less times in ``zone``) and apply them in one
    ledger transaction.

    Returns ``{"processed", "removed", "unmatched", "ignored", "stale", "ambiguous"}``:
    ``processed`` counts every object of the body; ``removed`` lists the tokens
    removed now.
    """
    result = ledger.apply_statuses([normalise(obj, zone) for obj in objects])
    if metrics is not None:
        for kind, n in result.outcomes.items():
            metrics.status_events.labels(kind).inc(n)
        if result.removed_registrations:
            metrics.removals.labels(STATUS_CAUSE).inc(result.removed_registrations)
    log.info(
        "statuses: %d event(s): %s; %d registration(s) of %d token(s) removed",
        result.processed,
        ", ".join(f"{k} {v}" for k, v in sorted(result.outcomes.items())) or "none",
        result.removed_registrations,
        len(result.removed),
    )
    return {
        "processed": result.processed,
        "removed": result.removed,
        "unmatched": result.unmatched,
        "ignored": result.ignored,
        "stale": result.stale,
        "ambiguous": result.ambiguous,
    }
