"""What the bridge answers, as typed values: one dataclass per answer shape.

Each field is the bridge's camelCase JSON name in snake_case; fields ending in
``_at`` or ``_until`` are aware datetimes. A field the bridge does not send (an
older bridge) is None; one it sends that is not listed here is left out."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

_UPPER = re.compile(r"_([a-z])")


def _json_name(field: str) -> str:
    return _UPPER.sub(lambda m: m.group(1).upper(), field)


class _FromJson:
    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        values = {}
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            value = data.get(_json_name(field.name))
            if isinstance(value, str) and field.name.endswith(("_at", "_until")):
                value = datetime.fromisoformat(value)
            values[field.name] = value
        return cls(**values)


@dataclass(frozen=True)
class Registration(_FromJson):
    """One token object of ``POST /register``, as the ledger took it."""

    id: int
    token: str
    matched_by: str
    state: str  # queued, delivered, removed, dead, held
    duplicate: bool  # already registered with the same identifier: not queued again
    conflict: bool  # the chat has a live registration under another identity


@dataclass(frozen=True)
class MuteResult(_FromJson):
    """``POST /mute`` or ``/unmute``: the chat's mute as the ledger holds it now."""

    token: str
    muted: bool
    muted_until: datetime | None
    state: str  # of the call to Reteno: queued until Reteno has it
    requested_at: datetime | None


@dataclass(frozen=True)
class EventResult(_FromJson):
    """``POST /events``: a custom event in the bridge's outbox, on its way to Reteno."""

    id: int
    token: str
    event_type_key: str
    state: str  # queued: sent once Reteno has the chat
    occurred_at: datetime | None  # ``time``, else when the bridge received it
    requested_at: datetime | None


@dataclass(frozen=True)
class RegistrationRecord(_FromJson):
    """One registration as ``GET /tokens`` shows it."""

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
    muted: bool
    muted_until: datetime | None
    reteno_holds: bool | None


@dataclass(frozen=True)
class TokenPage:
    """One page of ``GET /tokens``; ``next`` is the cursor of the following page."""

    items: list[RegistrationRecord]
    next: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls([RegistrationRecord.from_json(i) for i in data["items"]], data.get("next"))


@dataclass(frozen=True)
class HistoryEvent(_FromJson):
    """One event of ``GET /tokens/<token>/history``."""

    at: datetime
    kind: str
    detail: dict[str, Any]
    registration_id: int | None


@dataclass(frozen=True)
class Link(_FromJson):
    """``POST /links``: a deep link that registers the chat that opens it."""

    id: int | str
    url: str  # https://t.me/<bot>?start=<payload>
    payload: str  # opaque, no personal data
    expires_at: datetime
    qr: str  # the path of the link's QR code (SVG) under the bridge's mount


@dataclass(frozen=True)
class LinkStatus(_FromJson):
    """``GET /links/<id>``: where a link stands."""

    id: int | str
    state: str  # pending, used, expired, revoked
    expires_at: datetime
    used_at: datetime | None
    token: str | None  # the chat that used it


@dataclass(frozen=True)
class ClaimCode(_FromJson):
    """``POST /links/claims``: a single-use code a chat shows its user, to be entered on
    the website, which then claims it with the person's identifiers."""

    code: str
    expires_at: datetime
