"""The bridge's bot-facing endpoints, each once: what is sent, whether a repeat is safe,
and how the answer is read. The sync and the async client make these calls.

Every call here but ``claim`` is safe to repeat, which is why the client may retry them:

* ``register``: the bridge suppresses duplicates (the same token with the same
  identifier is answered ``duplicate: true`` and not queued again);
* ``mute`` / ``unmute``: the last request wins; a repeated mute with a ``duration``
  counts it from the repeat, so it may end up to one deadline later;
* ``forward_update``: the bridge acts on a repeated update as on the first and ends in
  the same state (a second block finds nothing live, a second unblock finds the chat
  live, the same deep link again from the same chat is a duplicate); its history
  records the repeat;
* ``create_link`` and ``create_claim``: a repeat makes another link or code; only the
  one answered reaches the caller, and the others expire unused;
* ``revoke_link``: a repeat cannot do more than the first (the link ends revoked);
* ``tokens``, ``history`` and ``link_status`` only read.

``claim`` is not repeated: its code is single use, so a repeat after a lost answer
would find the code used (410) although the chat was registered. Nor is
``send_event``: a repeat after a lost answer would queue the event again, and Reteno
would start its workflows twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from .errors import BridgeError
from .results import (
    ClaimCode,
    EventResult,
    HistoryEvent,
    Link,
    LinkStatus,
    MuteResult,
    Registration,
    TokenPage,
)

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


def _identifiers(identifiers: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword identifiers (``contact_id`` …) as the bridge names them; None is absent."""
    unknown = set(identifiers) - set(IDENTIFIERS)
    if unknown:
        raise TypeError(f"unknown identifier(s) {sorted(unknown)}: use {list(IDENTIFIERS)}")
    return {IDENTIFIERS[k]: v for k, v in identifiers.items() if v is not None}


def _token_object(token: Token, identifiers: Mapping[str, Any]) -> dict[str, Any]:
    return {"token": token, **_identifiers(identifiers)}


def _seconds(value: int | timedelta) -> int:
    return int(value.total_seconds() if isinstance(value, timedelta) else value)


def _first_registration(body: Any) -> Registration:
    return Registration.from_json(body["registrations"][0])


def register(token: Token, **identifiers: Any) -> Call[Registration]:
    return Call("POST", "/register", _first_registration, json=_token_object(token, identifiers))


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
        body["duration"] = _seconds(duration)
    return Call("POST", "/mute", MuteResult.from_json, json=body)


def unmute(token: Token) -> Call[MuteResult]:
    return Call("POST", "/unmute", MuteResult.from_json, json={"token": token})


def send_event(
    token: Token,
    event_type_key: str,
    params: Mapping[str, Any] | None = None,
    time: datetime | float | str | None = None,
) -> Call[EventResult]:
    body: dict[str, Any] = {"token": token, "eventTypeKey": event_type_key}
    if params:
        body["params"] = dict(params)
    if time is not None:
        body["time"] = time.isoformat() if isinstance(time, datetime) else time
    return Call(
        "POST",
        "/events",
        lambda answer: EventResult.from_json(answer["events"][0]),
        repeatable=False,
        json=body,
    )


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


def create_link(*, ttl: int | str | timedelta | None = None, **identifiers: Any) -> Call[Link]:
    body = _identifiers(identifiers)
    if ttl is not None:
        body["ttl"] = ttl if isinstance(ttl, str) else _seconds(ttl)
    return Call("POST", "/links", Link.from_json, json=body)


def _link_path(link_id: int | str) -> str:
    return f"/links/{quote(str(link_id), safe='')}"


def link_status(link_id: int | str) -> Call[LinkStatus]:
    return Call("GET", _link_path(link_id), LinkStatus.from_json)


def revoke_link(link_id: int | str) -> Call[None]:
    return Call("DELETE", _link_path(link_id), lambda body: None)


def create_claim(token: Token) -> Call[ClaimCode]:
    return Call("POST", "/links/claims", ClaimCode.from_json, json={"token": token})


def claim(code: str, **identifiers: Any) -> Call[Registration]:
    return Call(
        "POST",
        f"/links/claims/{quote(code, safe='')}",
        _first_registration,
        repeatable=False,
        json=_identifiers(identifiers),
    )
