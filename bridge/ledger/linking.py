"""Links (``bridge_links``): the opaque ``/start`` links made for a customer a website
knows (``POST /links``, ``bridge link``), and the chat-first claim codes (``POST
/links/claims``) that the site claims with the customer's identifiers.

Owns issuing both, their look-up (one link, or the newest: :func:`recent`), their
states (through :data:`.states.LINKS`: pending, used, revoked; ``expired`` is a pending
row past ``expires_at`` by the bridge's clock), a link opened in a chat (:func:`use`), a
code claimed (:func:`claim`), and what erase does to a person's rows (:func:`erase`).

**What is kept.** Neither a payload nor a code is stored: a row holds the SHA-256 of
it (``secret_hash``), by which it is found. A link's payload is ``L`` followed by 32
characters of base64url of an HMAC-SHA256 of the link's public id under the bridge's
link key (192 bits; the key is made once, at random, and kept in ``bridge_state``), so
the QR code of a link can be drawn again from its id alone. A signed payload of the
old format (:mod:`bridge.links`) always starts with ``I`` (its header byte, version 2),
so the two never meet. A claim code is 22 characters of ``secrets.token_urlsafe``
(128 bits) and is never derived from anything: it exists once, in the answer.

**Binding.** The first chat that opens a link binds it: the move ``pending → used``
is conditional (``UPDATE … WHERE state = 'pending'``) and taken under the link's lock,
so of two chats racing exactly one binds and the other is told ``link_reused``. The
history events of a row go on its chat's history once it has one; they hold the
link's id, never its payload (a rejected unknown payload: a 16-character prefix of its
hash).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update

from ..db import in_pages, insert_unless_taken, lock_keys
from ..models import IDENTIFIERS, BridgeState, Event, Link
from . import registering
from .states import LINKS, LinkState, append_events
from .types import IssuedCode, IssuedLink, LinkRecord, TokenRequest

LINK, CLAIM = "link", "claim"
_ISSUED = LINKS.first("issued").value
LINK_ID = re.compile(r"^[0-9a-f]{32}$")  # a link's public id: secrets.token_hex(16)
PREFIX = "L"  # an opaque payload's first character; a signed one's is "I"
PAYLOAD_LENGTH = 1 + 32
CLAIM_TTL = timedelta(minutes=15)
KEY_ROW = "link_key"  # bridge_state: the key that derives payloads from link ids
_DOMAIN = b"reteno-telegram-bridge/opaque-link\x00"
_OPAQUE = re.compile(rf"^{PREFIX}[A-Za-z0-9_-]{{{PAYLOAD_LENGTH - 1}}}$")
_KEY_INSERT = {
    dialect: stmt
    for dialect, stmt in zip(
        ("sqlite", "postgresql"), insert_unless_taken(BridgeState.__table__, ["name"]), strict=True
    )
}
# Events that tell a chat blocked the bot, or came back (the latest decides).
_BLOCKS = ("removed", "telegram_blocked")
_COMEBACKS = ("telegram_unblocked", "restored", "submitted")


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def is_opaque(payload: Any) -> bool:
    """Whether ``payload`` has the form of an opaque link's (not whether it exists)."""
    return isinstance(payload, str) and bool(_OPAQUE.match(payload))


def _derive(key: bytes, link_id: str) -> str:
    tag = hmac.new(key, _DOMAIN + link_id.encode("ascii"), hashlib.sha256).digest()
    return PREFIX + base64.urlsafe_b64encode(tag).decode("ascii")[: PAYLOAD_LENGTH - 1]


def _key(conn, now: datetime, create: bool = False) -> bytes | None:
    """The link key (made at random the first time a link is issued)."""
    if create:
        run = _KEY_INSERT[conn.dialect.name].values(
            name=KEY_ROW, value={"key": secrets.token_hex(32)}, updated_at=now
        )
        conn.execute(run)
    value = conn.execute(select(BridgeState.value).where(BridgeState.name == KEY_ROW)).scalar()
    return bytes.fromhex(value["key"]) if value else None


def _expired(row: Any, now: datetime) -> bool:
    return row.expires_at is not None and row.expires_at <= now


def shown_state(row: Any, now: datetime) -> str:
    """The state the API shows: ``expired`` for a pending row past its expiry."""
    if row.state == LinkState.PENDING and _expired(row, now):
        return "expired"
    return row.state


def _insert(conn, now: datetime, kind: str, secret: str, expires_at, token=None, **identifiers):
    link_id = identifiers.pop("id")
    row = {
        "id": link_id,
        "kind": kind,
        "secret_hash": secret_hash(secret),
        "token": token,
        "state": _ISSUED,
        "created_at": now,
        "updated_at": now,
        "expires_at": expires_at,
        **identifiers,
    }
    conn.execute(insert(Link), [row])
    detail = {"link": link_id, "kind": kind}
    if expires_at is not None:
        detail["expiresAt"] = expires_at.isoformat()
    append_events(
        conn,
        [
            {
                "at": now,
                "kind": "link_issued",
                "token": token,
                "registration_id": None,
                "detail": detail,
            }
        ],
    )


def issue(
    conn, now: datetime, identifiers: dict[str, Any], expires_at: datetime | None
) -> IssuedLink:
    """A new link for the customer of ``identifiers`` (API names, normal forms)."""
    key = _key(conn, now, create=True)
    link_id = secrets.token_hex(16)
    payload = _derive(key, link_id)
    columns = {column: identifiers.get(name) for name, column in IDENTIFIERS}
    _insert(conn, now, LINK, payload, expires_at, id=link_id, **columns)
    return IssuedLink(link_id, payload, expires_at)


def issue_code(conn, now: datetime, token: str) -> IssuedCode:
    """A claim code for chat ``token``, valid :data:`CLAIM_TTL`, used once."""
    code = secrets.token_urlsafe(16)
    expires_at = now + CLAIM_TTL
    _insert(conn, now, CLAIM, code, expires_at, token=token, id=secrets.token_hex(16))
    return IssuedCode(code, expires_at)


def _row(conn, *where):
    return conn.execute(select(Link.__table__).where(*where)).first()


def _record(row: Any, now: datetime) -> LinkRecord:
    return LinkRecord(row.id, shown_state(row, now), row.expires_at, row.used_at, row.token)


def record(conn, now: datetime, link_id: str) -> LinkRecord | None:
    row = _row(conn, Link.id == link_id, Link.kind == LINK)
    return None if row is None else _record(row, now)


def recent(conn, now: datetime, limit: int) -> list[LinkRecord]:
    """The ``limit`` newest links (not claim codes), newest first."""
    rows = conn.execute(
        select(Link.__table__)
        .where(Link.kind == LINK)
        .order_by(Link.created_at.desc(), Link.id.desc())
        .limit(limit)
    ).all()
    return [_record(row, now) for row in rows]


def url_payload(conn, now: datetime, link_id: str) -> str | None:
    """A link's payload, drawn again from its id (for its QR code); None: no such link."""
    if _row(conn, Link.id == link_id, Link.kind == LINK) is None:
        return None
    key = _key(conn, now)
    return _derive(key, link_id) if key else None


def revoke(conn, now: datetime, link_id: str) -> bool:
    """``DELETE /links/<id>``: the link is revoked (now or before; a used one too: its
    chat opening it again registers nothing); False when there is no such link."""
    lock_keys(conn, [f"link:{link_id}"])
    row = _row(conn, Link.id == link_id, Link.kind == LINK)
    if row is None:
        return False
    if row.state != LinkState.REVOKED:
        values = {"revoked_at": now, "reason": "deleted"}
        LINKS.move(conn, "revoked", [row], now, values, {"link": row.id})
    return True


def _refused(conn, now: datetime, kind: str, token: str, detail: dict) -> str:
    append_events(
        conn,
        [{"at": now, "kind": kind, "token": token, "registration_id": None, "detail": detail}],
    )
    return kind


@dataclass(frozen=True)
class _Chat:
    """A link row as :meth:`.states.Machine.move` takes it: its id, and the chat whose
    history gets the event (None: no chat's)."""

    id: str
    token: str | None


def _request(token: str, row: Any) -> TokenRequest:
    return TokenRequest(token, row.contact_id, row.external_customer_id, row.phone, row.email)


def use(
    conn,
    now: datetime,
    token: str,
    payload: str,
    seen: datetime,
    hold_conflicts: bool = False,
    detail: dict | None = None,
):
    """An opaque link opened in chat ``token`` at ``seen`` (its expiry judged by ``now``,
    the bridge's clock): the first chat binds it and registers with its identifiers; the
    same chat again before its expiry registers again (a live one: a duplicate). Otherwise
    nothing is registered and the refusal is recorded: ``link_rejected`` (reason ``unknown``,
    ``expired``, ``revoked``) or ``link_reused`` (another chat bound it). The outcome, or
    the kind of event recorded."""
    detail = dict(detail or {})
    digest = secret_hash(payload)
    lock_keys(conn, [f"link:{digest}"])
    row = _row(conn, Link.secret_hash == digest, Link.kind == LINK)
    if row is None:
        unknown = {**detail, "reason": "unknown", "payloadSha256": digest[:16]}
        return _refused(conn, now, "link_rejected", token, unknown)
    detail["link"] = row.id
    if row.state != LinkState.REVOKED and _expired(row, now):  # used ones too
        return _refused(conn, now, "link_rejected", token, {**detail, "reason": "expired"})
    state, bound_to = row.state, row.token
    if state == LinkState.PENDING:
        values = {"token": token, "used_at": now}
        if LINKS.move(conn, "used", [_Chat(row.id, token)], now, values, detail):
            state, bound_to = LinkState.USED.value, token
        else:  # moved by another transaction meanwhile (the lock makes it rare)
            row = _row(conn, Link.id == row.id)
            state, bound_to = row.state, row.token
    if state != LinkState.USED or row.reason == "erased":
        return _refused(conn, now, "link_rejected", token, {**detail, "reason": "revoked"})
    if bound_to != token:
        return _refused(
            conn,
            now,
            "link_reused",
            token,
            {**detail, "reason": "the link was opened in another chat first"},
        )
    return registering.register(
        conn, [_request(token, row)], ["telegram_link"], now, hold_conflicts, [seen]
    )[0]


def _blocked_since(conn, token: str, since: datetime) -> bool:
    """Whether the chat blocked the bot after ``since`` (Telegram's ``kicked``, a Reteno
    Forbidden; not the stale-token report's removal) and has not come back since."""
    rows = conn.execute(
        select(Event.kind, Event.detail)
        .where(Event.token == token, Event.at >= since, Event.kind.in_(_BLOCKS + _COMEBACKS))
        .order_by(Event.id)
    ).all()
    latest = None
    for kind, detail in rows:
        if kind in _BLOCKS and (detail or {}).get("cause") != "stale":
            latest = "block"
        elif kind in _COMEBACKS:
            latest = "comeback"
    return latest == "block"


def claim(
    conn, now: datetime, code: str, identifiers: dict[str, Any], hold_conflicts: bool = False
):
    """The site claims code ``code`` for the customer of ``identifiers`` (API names,
    normal forms): the code's chat registers with them (source ``link_claim``). The
    outcome, or why nothing was registered: ``unknown``, ``used``, ``expired``,
    ``revoked`` (erase), ``blocked`` (the chat blocked the bot since the code was made)."""
    digest = secret_hash(code)
    lock_keys(conn, [f"link:{digest}"])
    row = _row(conn, Link.secret_hash == digest, Link.kind == CLAIM)
    if row is None:
        return "unknown"
    if row.state != LinkState.PENDING:
        return row.state  # used, revoked
    if _expired(row, now):
        return "expired"
    if _blocked_since(conn, row.token, row.created_at):
        return "blocked"
    columns = {column: identifiers.get(name) for name, column in IDENTIFIERS}
    LINKS.move(
        conn, "used", [row], now, {"used_at": now, **columns}, {"link": row.id, "kind": CLAIM}
    )
    request = TokenRequest(row.token, *columns.values())
    return registering.register(conn, [request], ["link_claim"], now, hold_conflicts)[0]


def erase(conn, now: datetime, tokens: set[str], identifiers: list[tuple[str, Any]]) -> int:
    """Erase of a person (their chats ``tokens``, their identifiers as ``(API name,
    normal form)``): their pending links and codes are revoked (reason ``erased``), and
    every row of theirs, used ones too, loses its identifiers and chat (a tombstone: id,
    kind, state, times). How many rows were erased; the events of the revocations name
    no chat."""
    column_of = dict(IDENTIFIERS)
    ids: set[str] = set()
    for page in in_pages(sorted(tokens)):
        ids.update(conn.scalars(select(Link.id).where(Link.token.in_(page))))
    for name, value in identifiers:
        ids.update(conn.scalars(select(Link.id).where(getattr(Link, column_of[name]) == value)))
    rows = []
    for page in in_pages(sorted(ids)):
        rows += conn.execute(
            select(Link.id, Link.state).where(
                Link.id.in_(page), Link.reason.is_distinct_from("erased")
            )
        ).all()
    if not rows:
        return 0
    ids = {r.id for r in rows}
    # pending ones are revoked (used ones stay used tombstones); the events name no chat
    pending = [_Chat(r.id, None) for r in rows if r.state == LinkState.PENDING]
    LINKS.move(
        conn,
        "revoked",
        pending,
        now,
        {"revoked_at": now, "reason": "erased"},
        lambda r: {"link": r.id, "reason": "erased"},
    )
    blank = {column: None for _name, column in IDENTIFIERS}
    for page in in_pages(sorted(ids)):
        conn.execute(
            update(Link)
            .where(Link.id.in_(page))
            .values(token=None, reason="erased", updated_at=now, **blank)
        )
    return len(ids)
