"""The bridge's bot-facing endpoints, each once: what is sent, whether a repeat is safe,
and how the answer is read. The sync and the async client make these calls.

Every call here is safe to repeat, which is why the client may retry them:

* ``register``: the bridge suppresses duplicates (the same token with the same
  identifier is answered ``duplicate: true`` and not queued again);
* ``mute`` / ``unmute``: the last request wins; a repeated mute with a ``duration``
  counts it from the repeat, so it may end up to one deadline later;
* ``forward_update``: the bridge acts on a repeated update as on the first and ends in
  the same state (a second block finds nothing live, a second unblock finds the chat
  live, the same deep link again from the same chat is a duplicate); its history
  records the repeat;
* ``tokens`` and ``history`` only read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from .errors import BridgeError
from .results import HistoryEvent, MuteResult, Registration, TokenPage

IDENTIFIERS = {
    "contact_id": "contactId",
    "external_customer_id": "externalCustomerId",
    "phone": "phone",
    "email": "email",
}
FILTERS = {
    **IDENTIFIERS,
    "token": "token",
    "state": "state",
    "conflict": "conflict",
    "quiet_days": "quietDays",
    "limit": "limit",
    "cursor": "cursor",
}

Token = int | str
T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request to the bridge and how its answer becomes a result."""

    method: str
    path: str
    read: Callable[[Any], T]
    repeatable: bool = True
    json: Any = None
    params: Mapping[str, str] | None = None

    def result(self, outcome: httpx.Response | httpx.TransportError) -> T:
        """The result of the last attempt, or :class:`BridgeError`."""
        if isinstance(outcome, httpx.ReadTimeout):
            raise BridgeError(
                None,
                f"the bridge did not answer {self.method} {self.path} in "
                "time (ReadTimeout); it may have carried it out",
            ) from outcome
        if isinstance(outcome, httpx.TransportError):
            raise BridgeError(
                None,
                f"the bridge did not answer {self.method} {self.path}: {type(outcome).__name__}",
            ) from outcome
        if outcome.is_success:
            return self.read(outcome.json() if outcome.content else None)
        try:
            body = outcome.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise BridgeError(
                outcome.status_code, f"{self.method} {self.path}: {outcome.reason_phrase}"
            )
        errors = body.get("errors") if isinstance(body.get("errors"), dict) else {}
        raise BridgeError(
            outcome.status_code, str(body.get("message", outcome.reason_phrase)), errors
        )


def _token_object(token: Token, identifiers: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(identifiers) - set(IDENTIFIERS)
    if unknown:
        raise TypeError(f"unknown identifier(s) {sorted(unknown)}: use {list(IDENTIFIERS)}")
    return {"token": token, **{IDENTIFIERS[k]: v for k, v in identifiers.items() if v is not None}}


def register(token: Token, **identifiers: Any) -> Call[Registration]:
    return Call(
        "POST",
        "/register",
        lambda body: Registration.from_json(body["registrations"][0]),
        json=_token_object(token, identifiers),
    )


def register_many(contacts: Iterable[Mapping[str, Any]]) -> Call[list[Registration]]:
    objects = [
        _token_object(c["token"], {k: v for k, v in c.items() if k != "token"}) for c in contacts
    ]
    return Call(
        "POST",
        "/register",
        lambda body: [Registration.from_json(r) for r in body["registrations"]],
        json={"tokens": objects},
    )


def mute(token: Token, duration: int | timedelta | None = None) -> Call[MuteResult]:
    body: dict[str, Any] = {"token": token}
    if duration is not None:
        body["duration"] = int(
            duration.total_seconds() if isinstance(duration, timedelta) else duration
        )
    return Call("POST", "/mute", MuteResult.from_json, json=body)


def unmute(token: Token) -> Call[MuteResult]:
    return Call("POST", "/unmute", MuteResult.from_json, json={"token": token})


def forward_update(update: Mapping[str, Any]) -> Call[None]:
    return Call("POST", "/telegram/webhook", lambda body: None, json=dict(update))


def tokens(**filters: Any) -> Call[TokenPage]:
    unknown = set(filters) - set(FILTERS)
    if unknown:
        raise TypeError(f"unknown filter(s) {sorted(unknown)}: use {list(FILTERS)}")
    params = {
        FILTERS[k]: (str(v).lower() if isinstance(v, bool) else str(v))
        for k, v in filters.items()
        if v is not None
    }
    return Call("GET", "/tokens", TokenPage.from_json, params=params)


def history(token: Token) -> Call[list[HistoryEvent]]:
    return Call(
        "GET",
        f"/tokens/{quote(str(token), safe='')}/history",
        lambda body: [HistoryEvent.from_json(e) for e in body["events"]],
    )
