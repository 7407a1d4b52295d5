"""The ledger's domain values: what goes in and what comes out of :class:`Ledger`.

Plain dataclasses with snake_case fields; the schemas (``bridge.schemas``) map
them to and from the API's JSON.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..models import IDENTIFIERS, Registration
from .times import EXACT

#: Identifier names in Reteno's priority order, and their columns.
COLUMN_OF = dict(IDENTIFIERS)
PRIORITY = tuple(name for name, _column in IDENTIFIERS)


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One token to register: the chat id and at least one identifier (normal forms)."""

    token: str
    contact_id: int | None = None
    external_customer_id: str | None = None
    phone: str | None = None
    email: str | None = None
    #: (token, matched_by, match_value): at most one live registration holds a key
    #: (duplicate suppression). Worked out once, on creation: a batch asks for it
    #: several times, and slots keep a batch's requests small (fewer objects for the
    #: garbage collector to walk).
    live_key: tuple[str, str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, column in IDENTIFIERS:
            value = getattr(self, column)
            if value is not None:
                object.__setattr__(self, "live_key", (self.token, name, str(value)))
                return
        raise ValueError("a token request needs an identifier")

    def identifiers(self) -> dict[str, Any]:
        """The identifiers present, by API name, in priority order."""
        return {
            name: getattr(self, column)
            for name, column in IDENTIFIERS
            if getattr(self, column) is not None
        }

    @property
    def matched_by(self) -> str:
        """The highest-priority identifier present (Reteno matches the contact by it)."""
        return self.live_key[1]

    @property
    def match_value(self) -> str:
        return self.live_key[2]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``Ledger.register`` did with one token request."""

    id: int
    token: str
    matched_by: str
    state: str
    duplicate: bool
    conflict: bool  # the chat has a live registration under another identity


@dataclass(frozen=True)
class Claim:
    """Registrations (or commands) a worker holds for one upstream call, under
    ``lease_id``."""

    lease_id: str
    rows: tuple[Any, ...]  # id, token, the identifiers, matched_by, attempts (commands: more)
    model: type = Registration  # the table of the rows: Registration or Command
    shared: bool = True  # its answers are this app's (False: a replay into another app)
    #: when it was made: a success clears a pause only if claimed after it (a call sent
    #: before a 401 says nothing of the credentials since)
    claimed_at: datetime | None = None

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.rows]


@dataclass(frozen=True)
class RegistrationRecord:
    """A registration as the read API and the CLI show it."""

    id: int
    token: str
    contact_id: int | None
    external_customer_id: str | None
    phone: str | None
    email: str | None
    matched_by: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    removed_at: datetime | None
    removal_reason: str | None
    last_seen_at: datetime | None
    conflict: bool
    reteno_holds: bool  # Reteno still has the token (delivered, and no Forbidden since)
    muted: bool = False
    muted_until: datetime | None = None


@dataclass(frozen=True)
class MuteRequest:
    """Mute a chat's marketing messages for ``duration`` seconds (None: until unmuted),
    or with ``mute`` false unmute it."""

    token: str
    mute: bool = True
    duration: int | None = None


@dataclass(frozen=True)
class MuteRecord:
    """Where a chat's mute stands: what was asked last and whether Reteno has it."""

    token: str
    action: str  # mute | unmute
    muted: bool  # muted now (a mute asked for whose time has not run out)
    muted_until: datetime | None  # None while muted: until unmuted
    state: str  # queued (to send), delivered (sent), dead
    requested_at: datetime


@dataclass(frozen=True)
class EventRequest:
    """A bot's custom event for Reteno about chat ``token``: the event type key, its
    params (name: a string or a JSON object; no contact identifier, which the ledger
    adds) and when it happened (``None``: when it was received)."""

    token: str
    event_type_key: str
    params: dict[str, Any]
    time: datetime | None = None


@dataclass(frozen=True)
class EventRecord:
    """An event in the ledger's outbox (``POST /events`` answers with these)."""

    id: int
    token: str
    event_type_key: str
    state: str  # queued
    time: datetime  # when it happened (as given, else when received)
    requested_at: datetime


@dataclass(frozen=True)
class ReplayTarget:
    """Another Reteno app (or platform) that registrations are replayed into."""

    app_uuid: str
    base_url: str


@dataclass(frozen=True)
class HistoryEvent:
    at: datetime
    kind: str
    detail: dict[str, Any]
    registration_id: int | None


FAILURES = frozenset({"FAILED", "UNDELIVERED", "BOT_SEND_ERROR"})
SIGNS_OF_LIFE = frozenset({"SENT", "DELIVERED", "CLICKED"})
# Telegram's own words for a chat the bot can no longer reach (the Bot API's 403
# descriptions: "Forbidden: bot was blocked by the user", ...), first match wins; then
# any other Forbidden or 403.
_REMOVING = (
    ("blocked", re.compile(r"\bblocked\b", re.IGNORECASE)),
    ("deactivated", re.compile(r"\buser is deactivated\b", re.IGNORECASE)),
    (
        "kicked",
        re.compile(r"\bbot was kicked from the (?:group|supergroup|channel) chat\b", re.IGNORECASE),
    ),
    ("forbidden", re.compile(r"\bforbidden\b|\b403\b", re.IGNORECASE)),
)


def removal_reason(*texts: str | None) -> str | None:
    """Whether a failure's error or description says the bot can no longer reach the
    chat, and why: ``blocked`` (the user blocked the bot: Telegram's ``bot was blocked
    by the user``, or any text saying blocked), ``deactivated`` (the account
    was deleted), ``kicked`` (from a group, supergroup or channel), ``forbidden`` (any
    other Forbidden or 403: a bare code says no more, and Reteno drops the token on
    it); None for any other failure (``Bad Request: chat not found`` is a 400), which
    is recorded only. Reads Telegram's description, not only the code (Telegram says
    codes may change)."""
    for reason, pattern in _REMOVING:
        if any(pattern.search(text) for text in texts if text):
            return reason
    return None


@dataclass
class StatusEvent:
    """One received status event, normalised (``bridge.statuses`` makes them)."""

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
    at: datetime | None = None  # when it happened (activityDateTime / time); None: received
    resolution: timedelta = EXACT  # what ``at`` was given to: SECOND for 10:00:00, 1 ms for .000

    @property
    def alive(self) -> bool:
        """A sign of life of the chat it was sent to (a message reached it)."""
        return self.status in SIGNS_OF_LIFE

    @property
    def failure(self) -> bool:
        return self.status in FAILURES

    @property
    def removal(self) -> str | None:
        """Why it removes its chat (:func:`removal_reason`), for a failure that says the
        bot can no longer reach the chat; else None."""
        return removal_reason(self.error, self.description) if self.failure else None

    @property
    def blocked(self) -> bool:
        """A failure that removes its chat (the user blocked the bot, or as good as)."""
        return self.removal is not None

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


@dataclass(frozen=True)
class StatusResult:
    """What ``Ledger.apply_statuses`` did with a body of status events."""

    processed: int
    removed: list[str]  # tokens removed now, in order
    unmatched: int
    ignored: int
    stale: int  # blocks older than the chat's latest sign of life: nothing removed
    ambiguous: int  # blocks naming no token whose identifier matched several live chats
    outcomes: dict[str, int]  # per kind: blocked, matched, unmatched, ignored, duplicate, ...
    removed_registrations: int


@dataclass(frozen=True)
class IssuedLink:
    """A new link: its public id, its ``/start`` payload, its expiry (None: never)."""

    id: str
    payload: str
    expires_at: datetime | None


@dataclass(frozen=True)
class IssuedCode:
    """A new claim code for a chat, and its expiry."""

    code: str
    expires_at: datetime


@dataclass(frozen=True)
class LinkRecord:
    """A link as ``GET /links/<id>`` shows it (``state`` ``expired`` derived)."""

    id: str
    state: str
    expires_at: datetime | None
    used_at: datetime | None
    token: str | None
