"""The links' endpoints (``/links``…) on the blueprint of :mod:`bridge.views`, declared
as every endpoint is: a website's "Connect Telegram" link for a customer it knows, the
link's state and QR code (segno), and the chat-first claim codes. Thin: the ledger
(:mod:`bridge.ledger.linking`) does the work.
"""

from __future__ import annotations

import io

import segno
from flask import Response, url_for

from .http import APIError, bearer_required
from .ledger.linking import LINK_ID as _LINK_ID
from .runtime import current as rt
from .schemas import (
    ClaimCodeRequestSchema,
    ClaimCodeSchema,
    IdentifiersSchema,
    LinkCreatedSchema,
    LinkRequestSchema,
    LinkStatusSchema,
    RegisterResponseSchema,
)
from .views import bp

# --- links: a website's "Connect Telegram" button, and chat-first claim codes ------------

_PATH_LINK = {
    "in": "path",
    "name": "link_id",
    "description": "The link's id (`id` of `POST /links`).",
    "schema": {"type": "string", "pattern": _LINK_ID.pattern},
}
_PATH_CODE = {
    "in": "path",
    "name": "code",
    "description": "The claim code (`code` of `POST /links/claims`).",
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,64}$"},
}
_NO_LINK = "No such link."


_NO_USERNAME = "Links need the bot's @username: set TELEGRAM_BOT_USERNAME."


def _link_url(payload: str) -> str:
    return f"https://t.me/{rt().settings.telegram_bot_username}?start={payload}"


def _known_link(link_id: str) -> str:
    """The payload of link ``link_id``, or a 404."""
    payload = rt().ledger.link_payload(link_id) if _LINK_ID.match(link_id) else None
    if payload is None:
        raise APIError(404, _NO_LINK)
    return payload


@bp.post("/links", tags=["links"])
@bearer_required
@bp.arguments(LinkRequestSchema(), description="The customer's identifiers, and `ttl`.")
@bp.response(201, LinkCreatedSchema, description="The link, its expiry and its QR code.")
@bp.alt_response(409, response="CONFLICT")
def create_link(body):
    """Make a Telegram link for a customer the site knows

    The first chat that opens `url` (taps Start) is registered with these identifiers;
    another chat opening it registers nothing. The payload is opaque: no personal data.
    Poll `GET /links/{id}` to learn when it was used. Answers 409 while
    TELEGRAM_BOT_USERNAME is not set (nothing is stored).
    """
    bridge = rt()
    if not bridge.settings.telegram_bot_username:
        raise APIError(409, f"{_NO_USERNAME} Nothing was stored.")
    ttl = body["ttl"] if body["ttl"] is not None else bridge.settings.link_ttl
    link = bridge.ledger.create_link(body["identifiers"], ttl)
    return {
        "id": link.id,
        "url": _link_url(link.payload),
        "payload": link.payload,
        "expires_at": link.expires_at,
        "qr": url_for("bridge.link_qr_svg", link_id=link.id),
    }


@bp.get("/links/<link_id>", tags=["links"], parameters=[_PATH_LINK])
@bearer_required
@bp.response(200, LinkStatusSchema, description="The link's state.")
@bp.alt_response(404, response="NOT_FOUND")
def link_status(link_id: str):
    """A link's state: pending, used (when, by which chat), expired or revoked"""
    record = rt().ledger.link(link_id) if _LINK_ID.match(link_id) else None
    if record is None:
        raise APIError(404, _NO_LINK)
    return record


@bp.delete("/links/<link_id>", tags=["links"], parameters=[_PATH_LINK])
@bearer_required
@bp.response(204, description="Revoked (or revoked before): no chat can use it.")
@bp.alt_response(404, response="NOT_FOUND")
def revoke_link(link_id: str):
    """Revoke a link

    Pending, expired or used: no chat can use it any more. A used link's chat stays
    registered (`/register`'s rules apply to it); opening the link again registers
    nothing.
    """
    if not (_LINK_ID.match(link_id) and rt().ledger.revoke_link(link_id)):
        raise APIError(404, _NO_LINK)
    return Response(status=204)


def _qr(link_id: str) -> segno.QRCode:
    payload = _known_link(link_id)
    if not rt().settings.telegram_bot_username:
        raise APIError(409, _NO_USERNAME)
    return segno.make_qr(_link_url(payload))


@bp.get("/links/<link_id>/qr.svg", tags=["links"], parameters=[_PATH_LINK])
@bearer_required
@bp.alt_response(
    200,
    schema={"type": "string"},
    content_type="image/svg+xml",
    success=True,
    description="The QR code of the link's `url`, for a phone's camera.",
)
@bp.alt_response(404, response="NOT_FOUND")
@bp.alt_response(409, response="CONFLICT")
def link_qr_svg(link_id: str):
    """The QR code of a link (SVG)"""
    out = io.BytesIO()
    _qr(link_id).save(out, kind="svg", scale=4, xmldecl=False, title="Open in Telegram")
    return Response(out.getvalue(), content_type="image/svg+xml")


@bp.get("/links/<link_id>/qr.png", tags=["links"], parameters=[_PATH_LINK])
@bearer_required
@bp.alt_response(
    200,
    schema={"type": "string", "format": "binary"},
    content_type="image/png",
    success=True,
    description="The QR code of the link's `url`.",
)
@bp.alt_response(404, response="NOT_FOUND")
@bp.alt_response(409, response="CONFLICT")
def link_qr_png(link_id: str):
    """The QR code of a link (PNG)"""
    out = io.BytesIO()
    _qr(link_id).save(out, kind="png", scale=8)
    return Response(out.getvalue(), mimetype="image/png")


@bp.post("/links/claims", tags=["links"])
@bearer_required
@bp.arguments(ClaimCodeRequestSchema(), description="The chat that asks.")
@bp.response(201, ClaimCodeSchema, description="The code, for the site to claim.")
def create_claim_code(body):
    """A one-time code for a chat, for the site to claim (chat first)

    For a user who found the bot before signing in to the site: the bot sends them to
    the site's sign-in page with the code, and the site, knowing the customer, claims it.
    """
    return rt().ledger.create_claim_code(body["token"])


_CLAIM_REFUSALS = {
    "unknown": (404, "No such claim code."),
    "used": (410, "The code was claimed already; nothing was registered."),
    "expired": (410, "The code expired; the bot can ask for a new one. Nothing was registered."),
    "revoked": (410, "The code was revoked; nothing was registered."),
    "blocked": (
        409,
        "The chat blocked the bot after the code was made; nothing was registered.",
    ),
}


@bp.post("/links/claims/<code>", tags=["links"], parameters=[_PATH_CODE])
@bearer_required
@bp.arguments(IdentifiersSchema(), description="The customer's identifiers.")
@bp.response(202, RegisterResponseSchema, description="The chat's registration.")
@bp.alt_response(404, response="NOT_FOUND")
@bp.alt_response(409, response="CONFLICT")
@bp.alt_response(410, response="GONE")
def claim_code(identifiers, code: str):
    """Claim a chat's code for a customer: the chat is registered with the identifiers

    Answered as `/register` answers. A code is claimed once: used or expired, 410; a
    chat that blocked the bot since the code was made, 409; neither registers anything.
    """
    outcome = rt().ledger.claim_code(code, identifiers)
    if isinstance(outcome, str):
        raise APIError(*_CLAIM_REFUSALS[outcome])
    return {"registrations": [outcome]}
