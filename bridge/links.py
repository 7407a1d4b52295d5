"""Signed ``/start`` deep links of the old format: ``https://t.me/<bot>?start=<payload>``.

No new link is signed: links are opaque now (:mod:`bridge.ledger.linking`). The
signed payloads already handed out keep working until they expire, verified here
(:func:`inspect_payload`); :func:`make_payload` stays as the format's definition (the
tests make old payloads with it), and nothing in the bridge calls it.

Telegram allows at most 64 characters of ``[A-Za-z0-9_-]`` in a start payload,
so the payload is the unpadded base64url of at most 48 bytes::

    header (1) | key id (1) | expires (4) | value (0-30) | tag (12)

``header`` is ``version << 4 | type`` (version 2; type 1 contactId,
2 externalCustomerId, 3 phone, 4 email). ``key id`` is the first byte of the
SHA-256 of the secret that signed it, so several secrets can verify
(``BRIDGE_LINK_SECRET`` is a comma-separated list: the first signs, every one
verifies, and rotating keeps the links already handed out working).
``expires`` is a big-endian Unix time in seconds, 0 for never
(``BRIDGE_LINK_TTL`` when it was made). ``value`` is the identifier's normal
form: contactId as a minimal big-endian unsigned integer (1-8 bytes), the others
as UTF-8 (phone: its digits), at most 30 bytes. ``tag`` is the first 12 bytes
(96 bits) of HMAC-SHA256 keyed with the secret over a fixed domain string plus
everything before it. A payload is accepted only if it is canonical base64url,
one configured secret with its key id gives the same tag
(``hmac.compare_digest``), it has not expired, and its value passes the same
normaliser ``/register`` uses. A link binds to the first chat that uses it (see
``bridge.ledger.chats.use_link``); erase revokes a person's links through
:func:`identifier_mark` (see ``bridge.ledger.erasure``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .identifiers import NORMALIZERS, IdentifierError

PAYLOAD_MAX_CHARS = 64
TAG_BYTES = 12
VERSION = 2
HEAD_BYTES = 1 + 1 + 4  # header, key id, expires
MAX_VALUE_BYTES = PAYLOAD_MAX_CHARS * 3 // 4 - HEAD_BYTES - TAG_BYTES  # 30
TYPE_CODES = {"contactId": 1, "externalCustomerId": 2, "phone": 3, "email": 4}
TYPE_NAMES = {code: name for name, code in TYPE_CODES.items()}

_DOMAIN = b"reteno-telegram-bridge/start-link\x00"
_MARK_DOMAIN = b"reteno-telegram-bridge/erased-identifier\x00"
_PAYLOAD = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class LinkError(ValueError):
    """A deep link cannot be made; the message says why (and names the setting)."""


@dataclass(frozen=True)
class Link:
    """A verified payload: the identifier it carries and the link's identity."""

    name: str
    value: Any
    expires: datetime | None
    link_id: str  # sha256 of the payload: how the ledger knows a link used before
    mark: str  # identifier_mark under the secret that signed it: how erase revokes it


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def key_id(secret: str) -> int:
    return hashlib.sha256(secret.encode("utf-8")).digest()[0]


def _tag(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), _DOMAIN + body, hashlib.sha256).digest()[:TAG_BYTES]


def identifier_mark(secret: str, name: str, value: Any) -> str:
    """The tombstone erase keeps for an identifier (normal form) under one link secret:
    HMAC-SHA256 keyed with the secret (hex, 64 characters). Without the secret it
    cannot be traced back to the identifier; the links that secret signed for that
    identifier are refused (``bridge.ledger.erasure``)."""
    body = bytes([TYPE_CODES[name]]) + _encode_value(name, value)
    return hmac.new(secret.encode("utf-8"), _MARK_DOMAIN + body, hashlib.sha256).hexdigest()


def marks(secrets: Sequence[str]) -> Callable[[str, Any], list[str]]:
    """``(name, value) -> [identifier_mark under each secret]``: what erase revokes."""
    return lambda name, value: [identifier_mark(s, name, value) for s in secrets]


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


def make_payload(secret: str, name: str, value: Any, expires: datetime | None = None) -> str:
    """The ``/start`` payload for one identifier (normalised first), signed with
    ``secret``, valid until ``expires`` (None: for ever)."""
    if name not in TYPE_CODES:
        raise LinkError(f"Unknown identifier {name!r}: use one of {', '.join(TYPE_CODES)}.")
    try:
        value = NORMALIZERS[name](value)
    except IdentifierError as exc:
        raise LinkError(f"{name}: {' '.join(exc.messages)}") from None
    encoded = _encode_value(name, value)
    if len(encoded) > MAX_VALUE_BYTES:
        raise LinkError(
            f"{name} is too long for a Telegram deep link: it takes {len(encoded)} bytes and "
            f"at most {MAX_VALUE_BYTES} fit in the {PAYLOAD_MAX_CHARS}-character start payload "
            "(beside the signature and the expiry). Use the contactId, the phone, or a "
            "shorter externalCustomerId."
        )
    stamp = int(expires.timestamp()) if expires is not None else 0
    if not 0 <= stamp < 2**32:
        raise LinkError("the expiry must be between 1970 and 2106")
    body = (
        bytes([VERSION << 4 | TYPE_CODES[name], key_id(secret)])
        + stamp.to_bytes(4, "big")
        + encoded
    )
    payload = _b64(body + _tag(secret, body))
    assert len(payload) <= PAYLOAD_MAX_CHARS and _PAYLOAD.match(payload)
    return payload


def inspect_payload(
    secrets: Sequence[str], payload: Any, now: datetime
) -> tuple[Link | None, str | None]:
    """``(Link, None)`` for a genuine payload still valid at ``now``, else
    ``(None, reason)``."""
    raw, reason = _decoded(payload)
    if raw is None:
        return None, reason
    signer, reason = _signer(secrets, raw)
    if signer is None:
        return None, reason
    return _link(signer, raw, now)


def _decoded(payload: Any) -> tuple[bytes | None, str | None]:
    """The payload's bytes, if it is canonical base64url long enough to be signed."""
    if not isinstance(payload, str) or not _PAYLOAD.match(payload):
        return None, "not a deep-link payload (1-64 characters of A-Z a-z 0-9 _ -)"
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError):
        return None, "not base64url"
    if _b64(raw) != payload:
        return None, "not canonical base64url"
    if len(raw) < HEAD_BYTES + 1 + TAG_BYTES:
        return None, "too short to carry an identifier and a signature"
    return raw, None


def _signer(secrets: Sequence[str], raw: bytes) -> tuple[str | None, str | None]:
    """The configured secret whose signature the payload carries."""
    body, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
    signers = [s for s in secrets if key_id(s) == body[1]]
    if not signers:
        return None, "signed with a key that is not configured (rotated out, or forged)"
    signer = None
    for secret in signers:  # every candidate is compared: the time tells nothing
        if hmac.compare_digest(tag, _tag(secret, body)):
            signer = secret
    return (signer, None) if signer is not None else (None, "bad signature")


def _link(signer: str, raw: bytes, now: datetime) -> tuple[Link | None, str | None]:
    """What a signed payload carries, if it is of a known kind and not expired."""
    body = raw[:-TAG_BYTES]
    version, code = body[0] >> 4, body[0] & 0x0F
    if version != VERSION:
        return None, f"unknown payload version {version}"
    name = TYPE_NAMES.get(code)
    if name is None:
        return None, f"unknown identifier type {code}"
    stamp = int.from_bytes(body[2:6], "big")
    expires = datetime.fromtimestamp(stamp, UTC) if stamp else None
    if expires is not None and expires <= now:
        return None, "expired"
    try:
        value = _decode_value(name, body[HEAD_BYTES:])
    except ValueError:  # IdentifierError among them
        return None, f"the {name} it carries is not valid"
    return Link(
        name,
        value,
        expires,
        hashlib.sha256(b"link\0" + raw).hexdigest(),
        identifier_mark(signer, name, value),
    ), None
