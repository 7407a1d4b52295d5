"""The support page's own session: a cookie signed with ``BRIDGE_SECRET_KEY``
(itsdangerous), never Flask's ``session`` (the host app's). It holds the staff user's
name (none before login) and a CSRF token that every form of the page sends back.

The cookie is HttpOnly, SameSite=Strict, Secure on https, and limited to the support
page's path. Every answer of the page carries a Content-Security-Policy without inline
scripts or styles and refuses to be framed.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from flask import Response, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "bridge_support"
SESSION_SECONDS = 8 * 3600  # a session ends after a working day at most
_SALT = "bridge.support.session"
POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True)
class Session:
    user: str | None  # the staff user logged in; None before login
    csrf: str  # the token the page's forms send back
    generation: int = 0  # its account's session generation at login (a logout ends it)


def _signer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=_SALT)


def read(secret_key: str) -> Session | None:
    """The session of this request's cookie; None when it is missing, forged or old."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data = _signer(secret_key).loads(raw, max_age=SESSION_SECONDS)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("c"), str):
        return None
    user, generation = data.get("u"), data.get("g", 0)
    if not isinstance(user, str) or not isinstance(generation, int):
        user, generation = None, 0
    return Session(user, data["c"], generation)


def fresh(user: str | None = None, generation: int = 0) -> Session:
    """A new session (a new CSRF token): before login, and upon login."""
    return Session(user, secrets.token_urlsafe(32), generation)


def _path() -> str:
    return url_for("support.search").rstrip("/") or "/"


def write(response: Response, secret_key: str, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        _signer(secret_key).dumps({"u": session.user, "c": session.csrf, "g": session.generation}),
        max_age=SESSION_SECONDS,
        path=_path(),
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )


def end(response: Response) -> None:
    response.delete_cookie(
        COOKIE, path=_path(), secure=request.is_secure, httponly=True, samesite="Strict"
    )


def csrf_ok(session: Session | None, sent: str | None) -> bool:
    """Whether a form's token is the one its session's cookie holds."""
    return bool(session and sent) and hmac.compare_digest(session.csrf, sent)


def protect(response: Response) -> Response:
    """The headers of every answer of the support page."""
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if not request.path.endswith((".css", ".svg")):
        response.headers["Cache-Control"] = "no-store"  # pages show personal data
    return response
