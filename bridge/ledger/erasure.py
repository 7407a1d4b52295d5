"""Erasure: one contact's personal data out of the ledger, leaving one audit line
without any (``bridge erase``).

**What counts as a mention.** Stored JSON is read key by key, at any depth
(inside a status's ``raw`` too). Under an identifier key (``contactId``,
``externalCustomerId``, ``phone``/``sms``, ``email``, ``token``/``chat_id``/
``candidates``) a value is compared with the erased values of that kind, in
their normal forms. Anywhere else — error texts, comments, unknown fields, the
keys of a raw object — a value is free text, and an erased value is found there
only as a bounded word (not part of a longer word, number, address, time or
decimal) that cannot be an ordinary word: an e-mail address, a phone number
(7-15 digits, as written or as digits), or a chat id, contactId or
externalCustomerId of at least :data:`MIN_FREE_TEXT` characters that holds
something other than letters and spaces. A value of fewer characters (``1``,
``api``) or of letters alone (``SENT``, ``telegram``) is found only under its
identifier key: in free text it is every contact's vocabulary. JSON numbers
outside identifier keys are the bridge's counters and ids, never a mention.
The bridge's own bookkeeping keys (:data:`BOOKKEEPING_KEYS`) are never read or
rewritten.

**Links.** Erase revokes the person's links and claim codes (``bridge_links``, by
their chats and their identifiers: :func:`.linking.erase`): the pending ones are
revoked (reason ``erased``) and every row of theirs, used ones too, keeps no
identifier and no chat. For the signed links of the old format it keeps tombstones
(``link_revoked`` events, no token, no registration, ``{"reason": "erased"}``)
that hold no personal data:

* a link a chat of theirs used: its link id (``fingerprint``), the SHA-256 of the
  whole payload including its 96-bit HMAC tag, which nobody without
  ``BRIDGE_LINK_SECRET`` can compute, so the id cannot be traced back to the
  identifier it carries;
* the links nobody used yet, which cannot be listed (a signed link is
  stateless): for each erased identifier and each link secret configured at the
  erase, an HMAC-SHA256 of the identifier keyed with that secret
  (:func:`bridge.links.identifier_mark`). A signed link verifies under one
  secret, and one carrying a tombstoned identifier under that secret is
  refused (``link_rejected``, reason ``revoked``). A signed link does not say
  when it was made, so this refuses the erased identifier's signed links made
  after the erase too: a person who comes back registers through ``/register``,
  or a link signed by a key put first in ``BRIDGE_LINK_SECRET`` after the erase.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy import Text, cast, delete, func, or_, select, update

from ..db import in_pages
from ..models import IDENTIFIERS, BridgeState, Command, Event, OutgoingEvent, Registration
from . import linking
from .states import append_events
from .types import COLUMN_OF


def erase(
    conn,
    now: datetime,
    api_name: str,
    value,
    marks: Callable[[str, Any], Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Delete one contact's personal data; leave one audit event without any.

    ``api_name`` is ``token`` or an identifier name (``contactId``,
    ``externalCustomerId``, ``phone``, ``email``) and ``value`` its normal
    form; ``marks(name, value)`` gives an identifier's link tombstones, one per
    configured link secret (none without it). In one write transaction this deletes

    * the registrations holding that value, and every registration of
      their tokens (a Telegram chat is one person), with those chats'
      mutes, replays and custom events;
    * their events (by registration and by token: a plain ``/start``, a
      rejected or reused link, a block of a chat with nothing live), and any
      event of no registration and no token that mentions the value, one of
      those tokens, or another identifier of the erased registrations that no
      remaining registration holds (status events of unmatched contacts carry
      raw payloads);

    replaces such mentions in the events and error texts of other
    registrations and in the shared upstream state by ``[erased]``
    (``scrubbed`` counts those rows), revokes the person's links (``revoked``
    counts the link rows erased and the new tombstones), and appends one ``erased`` event ``{"by",
    "registrations", "events"}`` (with ``scrubbed``, ``revoked`` when not 0).
    When nothing mentions the value and its tombstones exist, nothing is
    written and the counts are zero.
    """
    regs, tokens = _registrations_of(conn, api_name, value)
    needles = _Needles.of(api_name, value, tokens)
    for r in regs.values():
        needles.add_registration(r)
    needles.drop_kept(conn, set(regs))
    doomed = _own_events(conn, regs, tokens)
    revoked = _revoke_links(conn, now, doomed, needles, marks)
    revoked += linking.erase(conn, now, tokens, needles.identifiers())
    blank = _mentions(conn, needles, doomed)
    for event_id, detail in blank.items():
        # the fingerprint is a hash of the raw object that held the data: it goes too
        conn.execute(
            update(Event).where(Event.id == event_id).values(detail=detail, fingerprint=None)
        )
    for page in in_pages(sorted(doomed)):
        conn.execute(delete(Event).where(Event.id.in_(page)))
    for page in in_pages(sorted(tokens)):  # the chats' mutes, replays and events
        conn.execute(delete(Command).where(Command.token.in_(page)))
        conn.execute(delete(OutgoingEvent).where(OutgoingEvent.token.in_(page)))
    for page in in_pages(sorted(regs)):
        conn.execute(delete(Registration).where(Registration.id.in_(page)))
    scrubbed = len(blank) + _scrub_elsewhere(conn, needles)

    summary = {"by": api_name, "registrations": len(regs), "events": len(doomed)}
    if scrubbed:
        summary["scrubbed"] = scrubbed
    if revoked:
        summary["revoked"] = revoked
    erased = bool(regs or doomed or scrubbed or revoked)
    if erased:
        append_events(
            conn,
            [
                {
                    "at": now,
                    "kind": "erased",
                    "token": None,
                    "registration_id": None,
                    "detail": dict(summary),
                }
            ],
        )
    return {**summary, "scrubbed": scrubbed, "revoked": revoked, "erased": erased}


def _registrations_of(conn, api_name: str, value) -> tuple[dict[int, Any], set[str]]:
    """The registrations holding the value and every registration of their chats
    ({id: row}), and those chats' tokens."""
    if api_name == "token":
        column = Registration.token
    elif api_name in COLUMN_OF:
        column = getattr(Registration, COLUMN_OF[api_name])
    else:
        raise ValueError(f"cannot erase by {api_name!r}")
    regs = {r.id: r for r in conn.execute(select(Registration.__table__).where(column == value))}
    tokens = {r.token for r in regs.values()}
    if api_name == "token":
        tokens.add(str(value))
    for page in in_pages(sorted(tokens)):
        for r in conn.execute(select(Registration.__table__).where(Registration.token.in_(page))):
            regs.setdefault(r.id, r)
    return regs, tokens


def _own_events(conn, regs: dict[int, Any], tokens: set[str]) -> set[int]:
    """The ids of the events of these registrations and of these chats."""
    doomed: set[int] = set()
    for page in in_pages(sorted(regs)):
        doomed.update(conn.scalars(select(Event.id).where(Event.registration_id.in_(page))))
    for page in in_pages(sorted(tokens)):
        doomed.update(conn.scalars(select(Event.id).where(Event.token.in_(page))))
    return doomed


def _mentions(conn, needles: _Needles, doomed: set[int]) -> dict[int, dict]:
    """Other events that mention the contact: orphans (unmatched or ignored statuses)
    join ``doomed``; another contact's events keep their line, blanked: {id: detail}."""
    detail_text = func.lower(cast(Event.detail, Text))
    blank: dict[int, dict] = {}
    for clauses in _groups_of(needles.like_clauses(detail_text), 40):
        for event_id, detail, registration_id, token in conn.execute(
            select(Event.id, Event.detail, Event.registration_id, Event.token).where(or_(*clauses))
        ):
            if event_id in doomed or event_id in blank or not needles.in_json(detail):
                continue
            if registration_id is None and token is None:
                doomed.add(event_id)
            else:
                blank[event_id] = needles.scrub(detail)
    return blank


LINK_REVOKED = "link_revoked"


def _revoke_links(
    conn,
    now: datetime,
    doomed: set[int],
    needles: _Needles,
    marks: Callable[[str, Any], Sequence[str]] | None,
) -> int:
    """Tombstones for the links the erased chats used (their link ids) and for the erased
    identifiers (their marks); the new ones, how many."""
    wanted: set[str] = set()
    for page in in_pages(sorted(doomed)):
        wanted.update(
            conn.scalars(
                select(Event.fingerprint).where(
                    Event.id.in_(page), Event.kind == "link_used", Event.fingerprint.is_not(None)
                )
            )
        )
    if marks is not None:
        for name, value in needles.identifiers():
            wanted.update(marks(name, value))
    for page in in_pages(sorted(wanted)):
        wanted.difference_update(
            conn.scalars(
                select(Event.fingerprint).where(
                    Event.fingerprint.in_(page), Event.kind == LINK_REVOKED
                )
            )
        )
    append_events(
        conn,
        [
            {
                "at": now,
                "kind": LINK_REVOKED,
                "token": None,
                "registration_id": None,
                "fingerprint": fingerprint,
                "detail": {"reason": "erased"},
            }
            for fingerprint in sorted(wanted)
        ],
    )
    return len(wanted)


def revoked(conn, fingerprints: Iterable[str | None]) -> bool:
    """Whether erase revoked a link by one of these fingerprints (link id, identifier mark)."""
    return (
        conn.execute(
            select(Event.id)
            .where(
                Event.fingerprint.in_([f for f in fingerprints if f]), Event.kind == LINK_REVOKED
            )
            .limit(1)
        ).first()
        is not None
    )


def _scrub_elsewhere(conn, needles: _Needles) -> int:
    """Mentions left in rows that are not the contact's own: replaced by ``[erased]``."""
    scrubbed = 0
    for name in ("last_error", "removal_reason"):
        col = getattr(Registration, name)
        for clauses in _groups_of(needles.like_clauses(func.lower(col)), 40):
            for rid, textual in conn.execute(select(Registration.id, col).where(or_(*clauses))):
                if needles.in_text(textual):
                    conn.execute(
                        update(Registration).where(Registration.id == rid).values({name: ERASED})
                    )
                    scrubbed += 1
    for name, value in conn.execute(select(BridgeState.name, BridgeState.value)):
        if needles.in_json(value):
            conn.execute(
                update(BridgeState)
                .where(BridgeState.name == name)
                .values(value=needles.scrub(value))
            )
            scrubbed += 1
    return scrubbed


ERASED = "[erased]"
# Shorter values, and values of letters and spaces alone, are found in free text never.
MIN_FREE_TEXT = 6
# The bridge's own bookkeeping in event details: never read as personal data, never rewritten.
BOOKKEEPING_KEYS = frozenset({"source", "kind", "status", "state", "matchedBy", "via", "reason"})
# Keys under which an identifier is written (the bridge's, Reteno's, a bot backend's).
_KIND_OF_KEY = {
    "contactId": "contactId",
    "contact_id": "contactId",
    "externalCustomerId": "externalCustomerId",
    "external_customer_id": "externalCustomerId",
    "phone": "phone",
    "sms": "phone",
    "email": "email",
    "token": "token",
    "tokens": "token",
    "chat_id": "token",
    "chatId": "token",
    "candidates": "token",
}
_PHONE_RUN = re.compile(r"(?<![\w+])\+?\d[\d ()\-]*\d(?!\w)")
_PHONE_SHAPED = re.compile(r"\+?[\d ()\-]+")
_INTEGER = re.compile(r"-?\d{1,19}")


def _groups_of(items: Sequence, size: int) -> Iterable[list]:
    """``items`` ``size`` at a time: LIKE clauses joined by OR, a statement per group
    (the values of an ``IN`` list are paged by :func:`bridge.db.in_pages`)."""
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _json_escaped(text: str) -> str:
    return json.dumps(text)[1:-1]


def _integer(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    return None


def _distinctive(value: str) -> bool:
    """Long enough, and not a word or phrase of letters: safe to look for in free text."""
    return len(value) >= MIN_FREE_TEXT and any(not (c.isalpha() or c.isspace()) for c in value)


@dataclass
class _Needles:
    """The values an erasure looks for, and how each is recognised in stored JSON and text."""

    emails: set[str]
    phones: set[str]
    tokens: set[str]
    external_ids: set[str]
    contact_ids: set[int]
    asked: tuple[str, Any] = ("", None)

    @classmethod
    def of(cls, api_name: str, value, tokens: set[str]) -> _Needles:
        needles = cls(set(), set(), set(tokens), set(), set(), (api_name, value))
        needles._add(api_name, value)
        return needles

    def _add(self, api_name: str, value) -> None:
        if value is None:
            return
        if api_name == "token":
            self.tokens.add(str(value))
        elif api_name == "email":
            self.emails.add(str(value).lower())
        elif api_name == "phone":
            self.phones.add(str(value))
        elif api_name == "externalCustomerId":
            self.external_ids.add(str(value))
        elif api_name == "contactId":
            self.contact_ids.add(int(value))

    def _of_kind(self) -> dict[str, set]:
        return {
            "email": self.emails,
            "phone": self.phones,
            "externalCustomerId": self.external_ids,
            "contactId": self.contact_ids,
        }

    def add_registration(self, r: Any) -> None:
        for api_name, column in IDENTIFIERS:
            self._add(api_name, getattr(r, column))

    def identifiers(self) -> list[tuple[str, Any]]:
        """The erased identifier values (not chat ids), as ``(name, normal form)``."""
        return [
            (name, v) for name, values in self._of_kind().items() for v in sorted(values, key=str)
        ]

    def drop_kept(self, conn, erased_ids: set[int]) -> None:
        """Forget identifiers (other than the one asked for) that remaining rows still hold."""
        for api_name, column in IDENTIFIERS:
            values = self._of_kind()[api_name]
            col = getattr(Registration, column)
            for page in in_pages(sorted(values, key=str)):
                kept = conn.execute(select(col, Registration.id).where(col.in_(page))).all()
                for held, rid in kept:
                    if rid not in erased_ids and (api_name, held) != self.asked:
                        values.discard(held)

    def like_clauses(self, lowered_text) -> list:
        """SQL conditions that pick candidate rows (refined by :meth:`in_json`/:meth:`in_text`)."""
        plain = set(self.tokens) | {str(c) for c in self.contact_ids} | set(self.phones)
        for text_value in (*self.emails, *self.external_ids):
            plain.update(
                {
                    text_value.lower(),
                    _json_escaped(text_value).lower(),
                    quote(text_value, safe="").lower(),
                    quote(text_value).lower(),
                }
            )
        clauses = [lowered_text.contains(p, autoescape=True) for p in sorted(plain) if p]
        # a phone as the sender wrote it: "+380 (95) 649-09-55"
        clauses += [lowered_text.like("%" + "%".join(p) + "%") for p in sorted(self.phones)]
        return clauses

    def in_text(self, text_value: str | None) -> bool:
        """Free text: whether it holds an erased value as a bounded, distinctive word."""
        if not text_value:
            return False
        if self._in_text(text_value):
            return True
        # a URL or a form body keeps it percent-encoded: ann%40example.com, %2B380…
        return "%" in text_value and self._in_text(unquote(text_value))

    def _in_text(self, text_value: str) -> bool:
        lowered = text_value.lower()
        if any(
            re.search(rf"(?<![\w.!#$%&'*+/=?^`{{|}}~-]){re.escape(e)}(?![\w-]|\.[\w-])", lowered)
            for e in self.emails
        ):
            return True
        if self.phones and any(
            re.sub(r"\D", "", run) in self.phones for run in _PHONE_RUN.findall(text_value)
        ):
            return True
        # a number of its own: not part of a longer number, word, time or decimal
        numbers = {*self.tokens, *(str(c) for c in self.contact_ids)}
        if any(
            re.search(rf"(?<![\w.:+-]){re.escape(n)}(?!\w|[.:]\d)", text_value)
            for n in numbers
            if len(n.lstrip("-")) >= MIN_FREE_TEXT
        ):
            return True
        return any(
            re.search(rf"(?<![\w@.+-]){re.escape(x)}(?![\w@+-]|\.\w)", text_value)
            for x in self.external_ids
            if _distinctive(x)
        )

    def _is_identifier(self, kind: str, value) -> bool:
        """A value written under an identifier key of ``kind``, in its normal form."""
        if kind == "contactId":
            return _integer(value) in self.contact_ids
        if kind == "token":
            number = _integer(value)
            return number is not None and str(number) in self.tokens
        if not isinstance(value, str | int) or isinstance(value, bool):
            return False
        text_value = str(value).strip()
        if kind == "phone":
            return bool(_PHONE_SHAPED.fullmatch(text_value)) and (
                re.sub(r"\D", "", text_value) in self.phones
            )
        if kind == "email":
            return text_value.lower() in self.emails
        return text_value in self.external_ids

    def in_json(self, value, key: str | None = None) -> bool:
        if key in BOOKKEEPING_KEYS:
            return False
        kind = _KIND_OF_KEY.get(key or "")
        if isinstance(value, dict):
            return any(self.in_text(str(k)) or self.in_json(v, str(k)) for k, v in value.items())
        if isinstance(value, list):
            return any(self.in_json(v, key) for v in value)
        if kind is not None and self._is_identifier(kind, value):
            return True
        # numbers outside identifier keys are the bridge's counters and ids
        return isinstance(value, str) and self.in_text(value)

    def scrub(self, value, key: str | None = None):
        """``value`` with every mentioning leaf and key replaced by ``[erased]`` (keys
        made unique: ``[erased]``, ``[erased]#2`` …); bookkeeping left as it is."""
        if key in BOOKKEEPING_KEYS:
            return value
        if isinstance(value, dict):
            out: dict = {}
            for k, v in value.items():
                new_key = k
                if k not in BOOKKEEPING_KEYS and self.in_text(str(k)):
                    new_key, n = ERASED, 1
                    while new_key in out or new_key in value:
                        n += 1
                        new_key = f"{ERASED}#{n}"
                out[new_key] = self.scrub(v, str(k))
            return out
        if isinstance(value, list):
            return [self.scrub(v, key) for v in value]
        return ERASED if self.in_json(value, key) else value
