"""Status events: what Reteno and the bot backend report about sent messages.

Owns the logic behind ``POST /statuses``:

* **normalising** both vocabularies into one :class:`StatusEvent` — the simple
  one (``status``, ``error``, ``token`` and/or identifiers) that a bot backend
  sends, and Reteno's activity webhook objects (``activityStatus``,
  ``statusDescription``, ``contactId``, ``externalCustomerId``, ``email``,
  ``sms``/``phone``, ``mediaType``, ``messageId``, ...); unknown fields are kept
  in the raw copy and otherwise ignored;
* **classifying**: a failure is ``FAILED``, ``UNDELIVERED`` or
  ``BOT_SEND_ERROR``; a failure whose error or description matches
  ``forbidden|blocked|403`` (any case) means the user blocked the bot;
* **resolving** the registrations an event is about: by its ``token`` when it
  has one, else by its identifiers in Reteno's priority order (contactId →
  externalCustomerId → phone → email), each normalised as ``/register`` does;
  the first identifier that names any registration decides. Identifier values
  that do not normalise are passed over (and noted); an event left with no
  usable token or identifier, or with no recognisable status, is *ignored*;
* **applying** a whole body in one write transaction: a "blocked" event
  removes the live registrations it resolved to (through
  :meth:`bridge.ledger.Ledger.remove`, the state machine), and every event is
  recorded in the audit history — kind ``status`` on each registration it
  matched (live ones; if none is live, the latest registration of each token
  it names, so a late status about a removed token still lands on that token's
  history), ``status_unmatched`` or ``status_ignored`` otherwise — with the
  normalised fields and the raw object (minus anything that looks like a
  credential).

Replay: every recorded event carries the sha256 *fingerprint* of its raw
object (canonical JSON). An event whose fingerprint is already in the ledger,
or earlier in the same body, is counted as before but neither recorded nor
applied again, so replaying a body changes nothing and adds nothing. Two
genuinely distinct reports with byte-identical content (no ``messageId``, no
time) are therefore kept once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from marshmallow import ValidationError

from .http import APIError, basic_ok, bearer_ok
from .models import IDENTIFIERS, REMOVED, Registration
from .schemas import NORMALIZERS, normalize_token

log = logging.getLogger("bridge.statuses")

FAILURES = frozenset({"FAILED", "UNDELIVERED", "BOT_SEND_ERROR"})
REMOVAL_CAUSE = "status_blocked"
KIND_MATCHED = "status"
KIND_UNMATCHED = "status_unmatched"
KIND_IGNORED = "status_ignored"

_BLOCKED = re.compile(r"forbidden|blocked|403", re.IGNORECASE)
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


@dataclass
class StatusEvent:
    """One received event, normalised."""

    raw: dict[str, Any]
    fingerprint: str
    status: str | None = None
    error: str | None = None
    description: str | None = None
    token: str | None = None
    # (identifier name, normalised value), in priority order
    identifiers: list[tuple[str, Any]] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)
    reason: str | None = None  # why the event is ignored; None when usable

    @property
    def failure(self) -> bool:
        return self.status in FAILURES

    @property
    def blocked(self) -> bool:
        """A failure that says the user blocked the bot."""
        return self.failure and any(
            _BLOCKED.search(text) for text in (self.error, self.description) if text
        )

    @property
    def selectors(self) -> list[tuple[str, Any]]:
        """How to find its registrations, best first."""
        return [("token", self.token)] if self.token is not None else list(self.identifiers)

    def summary(self) -> dict[str, Any]:
        """The normalised fields recorded in the history."""
        out: dict[str, Any] = {"status": self.status, "error": self.error or self.description}
        if self.error and self.description and self.description != self.error:
            out["statusDescription"] = self.description
        for key in ("messageId", "activityDateTime", "mediaType"):
            if self.raw.get(key) is not None:
                out[key] = self.raw[key]
        if self.invalid:
            out["invalid"] = dict(self.invalid)
        return out


# --- authentication and parsing ----------------------------------------------------


def require_auth(settings) -> None:
    """HTTP Basic with the webhook credentials, or a bearer API key; else 401."""
    # Both checks always run (constant-time each), so the timing tells nothing.
    ok = basic_ok(settings.webhook_username, settings.webhook_password)
    ok |= bearer_ok(settings.api_keys)
    if ok:
        return
    challenges = ['Bearer realm="reteno-telegram-bridge"']
    if settings.webhook_username:
        challenges.insert(0, 'Basic realm="reteno-telegram-bridge"')
    raise APIError(
        401,
        "Credentials are required: HTTP Basic with the webhook user name and password "
        "(BRIDGE_WEBHOOK_USERNAME / BRIDGE_WEBHOOK_PASSWORD), or Authorization: Bearer <key>.",
        headers={"WWW-Authenticate": ", ".join(challenges)},
    )



def events_from_body(data: Any) -> list[dict]:
    """The event objects of a body: one object or an array of objects.

    Raises :class:`marshmallow.ValidationError` (answered 422) for anything else.
    """
    if isinstance(data, dict):
        return [data]
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


def _is_telegram(media_type: Any) -> bool:
    return media_type is None or "telegram" in str(media_type).lower()


def normalise(obj: dict) -> StatusEvent:
    """One event object as a :class:`StatusEvent` (never raises)."""
    raw = without_credentials(obj)
    event = StatusEvent(raw=raw, fingerprint=fingerprint(raw))
    event.error = _text(raw.get("error"))
    event.description = _text(raw.get("statusDescription"))
    event.status, reason = _status(raw)

    token = raw.get("token")
    if token not in (None, ""):
        try:
            event.token = normalize_token(token)
        except ValidationError as exc:
            event.invalid["token"] = " ".join(exc.messages)
    for name, _column in IDENTIFIERS:
        for key in _SOURCES[name]:
            value = raw.get(key)
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            try:
                event.identifiers.append((name, NORMALIZERS[name](value)))
            except ValidationError as exc:
                event.invalid[key] = " ".join(exc.messages)
            break

    if reason:
        event.reason = reason
    elif not _is_telegram(raw.get("mediaType")):
        event.reason = f"mediaType {str(raw['mediaType'])[:60]!r} is not Telegram"
    elif "token" in event.invalid:
        event.reason = f"token: {event.invalid['token']}"
    elif event.token is None and not event.identifiers:
        event.reason = "no token or identifier" + (
            " that is valid (" + "; ".join(f"{k}: {v}" for k, v in event.invalid.items()) + ")"
            if event.invalid
            else ": expected token, contactId, externalCustomerId, phone/sms or email"
        )
    return event


# --- applying -----------------------------------------------------------------------


def _value_of(row: Registration, api_name: str) -> Any:
    return row.token if api_name == "token" else getattr(row, dict(IDENTIFIERS)[api_name])


def _latest_per_token(rows: list[Registration]) -> list[Registration]:
    latest: dict[str, Registration] = {}
    for row in rows:
        if row.token not in latest or row.id > latest[row.token].id:
            latest[row.token] = row
    return sorted(latest.values(), key=lambda r: r.id)


def apply(ledger, objects: list[dict], metrics=None) -> dict[str, Any]:
    """Record (and act on) a body's events in one write transaction.

    Returns ``{"processed", "removed", "unmatched", "ignored"}``: ``processed``
    counts every object of the body; ``removed`` lists the tokens this call
    removed, in order.
    """
    events = [normalise(obj) for obj in objects]
    wanted: dict[str, set] = defaultdict(set)
    for event in events:
        if event.reason is None:
            for name, value in event.selectors:
                wanted[name].add(value)

    outcomes: dict[str, int] = defaultdict(int)
    removed_tokens: dict[str, None] = {}
    with ledger.db.write() as session:
        ledger.serialise_statuses(session)
        now = ledger.clock()
        rows_of: dict[tuple[str, Any], list[Registration]] = defaultdict(list)
        for name in ("token", *(n for n, _ in IDENTIFIERS)):  # one lock order for all writers
            if name not in wanted:
                continue
            for row in ledger.registrations_by(session, name, wanted[name], lock=True):
                rows_of[(name, _value_of(row, name))].append(row)
        seen = ledger.seen_fingerprints(session, (e.fingerprint for e in events))

        records: list[dict] = []
        removals: list[tuple[StatusEvent, str, list[Registration]]] = []
        gone: set[int] = set()  # ids removed earlier in this body
        counts = {"unmatched": 0, "ignored": 0}

        def record(kind, event, detail, token=None, registration_id=None):
            records.append({"at": now, "kind": kind, "token": token,
                            "registration_id": registration_id, "fingerprint": event.fingerprint,
                            "detail": {**detail, "raw": event.raw}})

        for event in events:
            duplicate = event.fingerprint in seen
            seen.add(event.fingerprint)
            if event.reason is not None:
                counts["ignored"] += 1
                outcomes["duplicate" if duplicate else "ignored"] += 1
                if not duplicate:
                    record(KIND_IGNORED, event, {"reason": event.reason, **event.summary()},
                           token=event.token)
                continue
            via, rows = event.selectors[0][0], []
            for name, value in event.selectors:
                if rows_of.get((name, value)):
                    via, rows = name, rows_of[(name, value)]
                    break
            live = [r for r in rows if r.state != REMOVED and r.id not in gone]
            targets = live or _latest_per_token(rows)
            if not targets:
                counts["unmatched"] += 1
                outcomes["duplicate" if duplicate else "unmatched"] += 1
                if not duplicate:
                    record(KIND_UNMATCHED, event,
                           {"reason": f"no registration matches its {via}", "via": via,
                            **event.summary()}, token=event.token)
                continue
            if duplicate:
                outcomes["duplicate"] += 1
                continue
            removes = event.blocked and bool(live)
            outcomes["blocked" if removes else "matched"] += 1
            for row in targets:
                record(KIND_MATCHED, event,
                       {**event.summary(), "blocked": event.blocked, "via": via,
                        "registrationState": REMOVED if row.id in gone else row.state},
                       token=row.token, registration_id=row.id)
            if removes:
                removals.append((event, via, live))
                gone.update(r.id for r in live)

        ledger.append_events(session, records)
        # A block is about the chat: an event matched through an identifier removes every
        # live registration of the chats it found, whatever identifier those carry.
        by_identifier = {r.token for _e, via, live in removals if via != "token" for r in live}
        siblings: dict[str, list[Registration]] = defaultdict(list)
        if by_identifier:
            for row in ledger.registrations_by(session, "token", by_identifier, lock=True):
                if row.state != REMOVED:
                    siblings[row.token].append(row)
        removed_count = 0
        batch = []
        for event, via, live in removals:
            if via != "token":
                held = {r.id for r in live}
                live = live + [s for t in dict.fromkeys(r.token for r in live)
                               for s in siblings[t] if s.id not in held]
            reason = f"{event.status}: {event.error or event.description}"[:_MAX_TEXT]
            batch.append((live, reason, REMOVAL_CAUSE, {
                "source": "statuses", "status": event.status, "via": via,
                "messageId": event.raw.get("messageId"), "fingerprint": event.fingerprint,
            }))
        # One UPDATE per distinct reason, not one per event (Ledger.remove_many).
        for done in ledger.remove_many(session, batch):
            removed_count += len(done)
            for row in done:
                removed_tokens[row.token] = None

    if metrics is not None:
        for kind, n in outcomes.items():
            metrics.status_events.labels(kind).inc(n)
        if removed_count:
            metrics.removals.labels(REMOVAL_CAUSE).inc(removed_count)
    log.info(
        "statuses: %d event(s): %s; %d registration(s) of %d token(s) removed",
        len(events), ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "none",
        removed_count, len(removed_tokens),
    )
    return {
        "processed": len(events),
        "removed": list(removed_tokens),
        "unmatched": counts["unmatched"],
        "ignored": counts["ignored"],
    }
