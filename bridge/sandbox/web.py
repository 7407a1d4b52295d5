"""The simulator over HTTP: a blueprint (Reteno's routes: tokens, token/mute,
token/unmute and the custom events' /api/v2/event; JSON inspection of contacts, muted
chats, recent events and counters; the page and its
block/reset actions; in a sandbox bridge, the page's links section and its Press Start
action, given as a :class:`LinksPanel`) and a standalone app.

It answers only requests whose ``Host`` is a loopback name (``localhost``,
``127.0.0.0/8``, ``[::1]``, any port): a page of another site whose name an attacker
re-points at 127.0.0.1 (DNS rebinding) sends its own name, and gets a 421. Its answers
forbid framing (``X-Frame-Options``, CSP ``frame-ancestors``), so no page can lay it
under a visitor's clicks.

The page's actions change state (block sends a FAILED status to the bridge, reset
forgets every contact and mute, Press Start binds a link to a chat), so they refuse a
request another site's page made a browser send (a cross-site form post): one whose
``Sec-Fetch-Site`` is not ``same-origin`` or ``none``, or whose ``Origin`` is not this
host. Tools that send neither header (curl, scripts, tests) are not browsers and are let
through."""

from __future__ import annotations

import json
import secrets
import socket
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, redirect, render_template, request, url_for

from ..config import loopback
from ..http import error_body
from ..logs import get_logger
from .simulator import (
    DROP_CONNECTION,
    DROP_FALLBACK_HEADER,
    IDENTIFIERS,
    Simulator,
    SimulatorOptions,
    _error,
)

log = get_logger("bridge.sandbox")

_FORM_MIMETYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def _json(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(payload, ensure_ascii=False),
        status=status,
        mimetype="application/json",
        headers=dict(headers or {}),
    )


def _drop_connection(environ: Mapping[str, Any]) -> bool:
    """Shut the client socket down so no HTTP answer reaches it; False if impossible."""
    for key in ("werkzeug.socket", "gunicorn.socket"):
        sock = environ.get(key)
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                return False
            return True
    return False


def _answer(status: int, payload: Any, headers: Mapping[str, str]) -> Response:
    """The response to a Reteno call the simulator handled (a drop closes the socket)."""
    if status == DROP_CONNECTION:
        if _drop_connection(request.environ):
            return Response(b"", status=500)
        log.warning("sandbox: cannot drop this connection; answering 502 instead")
        return _json(
            _error(502, "Connection dropped (injected fault)"), 502, {DROP_FALLBACK_HEADER: "drop"}
        )
    return _json(payload, status, headers)


def _is_form_post() -> bool:
    if request.mimetype not in _FORM_MIMETYPES:
        return False
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best != "application/json"


def _cross_site() -> bool:
    """Whether a browser sent this request for a page of another origin."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    parts = urlsplit(origin.strip())
    # "null" (a sandboxed frame, a data: URL) and any other host or scheme are refused
    return (parts.scheme, parts.netloc.lower()) != (request.scheme, request.host.lower())


def _refuse_cross_site() -> Response:
    return _json(
        _error(
            403,
            "Cross-site requests are refused: use the sandbox page itself, "
            "or a client that is not a browser",
        ),
        403,
    )


def loopback_host(host: str) -> bool:
    """Whether a ``Host`` value names this machine: ``localhost``, an address in
    127.0.0.0/8 or ``[::1]``, with or without a port."""
    if not host or any(c in host for c in "@/\\?# "):
        return False
    parts = urlsplit("//" + host)
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        return False
    return loopback(parts.hostname or "")


_FRAMING = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True)
class LinksPanel:
    """The page's links section, which a sandbox bridge gives it
    (:func:`bridge.sandbox.links.links_panel`); a standalone simulator has none.

    ``recent()``: the newest links, each a mapping with ``id``, ``state`` (``pending``,
    ``used``, ``expired``, ``revoked``), ``expires_at``, ``used_at`` and ``chat`` (as
    the page may show it, or None). ``press_start(link_id, chat)``: a chat taps Start on
    the link; what came of it, one of :data:`START_NOTICES`' keys."""

    recent: Callable[[], list[Mapping[str, Any]]]
    press_start: Callable[[str, str], str]


#: What came of Press Start, as the page tells it ({link}: the link's id).
START_NOTICES = {
    "bound": (
        "Pressed Start on link {link}: the chat is bound to it and registered; its token "
        "shows under the contacts once delivered."
    ),
    "again": (
        "Pressed Start on link {link} again in the chat it is bound to: registered again "
        "(a duplicate while that registration is live)."
    ),
    "reused": "Link {link} is bound to another chat: nothing was registered.",
    "expired": "Link {link} has expired: nothing was registered.",
    "revoked": "Link {link} is revoked: nothing was registered.",
    "unknown": "No such link: nothing was sent.",
    "bad_chat": (
        "Not a private chat's id: give a positive whole number (a Telegram user id). "
        "Nothing was sent."
    ),
    "refused": "The bridge refused the update (see its log): nothing was registered.",
    "unchanged": "The bridge took the update, but the link did not change (see its log).",
}


def fresh_chat_id() -> str:
    """A fresh random chat id to press Start with (a private chat's: positive, ten digits)."""
    return str(1_000_000_000 + secrets.randbelow(9_000_000_000))


def _page_notice() -> str | None:
    args = request.args
    if args.get("outcome") in START_NOTICES:
        return START_NOTICES[args["outcome"]].format(link=args.get("link", "")[:32])
    if args.get("blocked") is not None:
        return f"Blocked token {args['blocked']}: {args.get('events', '0')} status event(s) sent."
    if args.get("unknown") is not None:
        return f"Token {args['unknown']} is not held by any contact."
    if args.get("reset") is not None:
        return "Sandbox state cleared."
    return None


class _Views:
    """The simulator's views, each over the one simulator."""

    def __init__(self, simulator: Simulator, loopback_only: bool, links: LinksPanel | None):
        self.simulator = simulator
        self.loopback_only = loopback_only
        self.links = links

    def refuse_other_hosts(self) -> Response | None:
        if self.loopback_only and not loopback_host(request.host):
            return _json(
                error_body(
                    421,
                    "The sandbox answers only requests for localhost, "
                    "127.0.0.1 or [::1] (a defence against DNS "
                    "rebinding); open it by one of those names.",
                ),
                421,
            )
        return None

    def tokens(self, app_uuid: str) -> Response:
        return _answer(
            *self.simulator.add_tokens(app_uuid, request.headers, request.get_data(cache=False))
        )

    def mute(self, app_uuid: str) -> Response:
        return _answer(
            *self.simulator.mute_token(app_uuid, request.headers, request.get_data(cache=False))
        )

    def unmute(self, app_uuid: str) -> Response:
        return _answer(
            *self.simulator.unmute_token(app_uuid, request.headers, request.get_data(cache=False))
        )

    def event(self) -> Response:
        return _answer(*self.simulator.send_event(request.headers, request.get_data(cache=False)))

    def events(self) -> Response:
        return _json({"events": self.simulator.events(), "stats": self.simulator.stats()})

    def contacts(self) -> Response:
        token = request.args.get("token")
        found = self.simulator.contacts() if token is None else self.simulator.find_by_token(token)
        return _json({"contacts": found, "stats": self.simulator.stats()})

    def muted(self) -> Response:
        return _json({"muted": self.simulator.muted(), "stats": self.simulator.stats()})

    def stats(self) -> Response:
        return _json(self.simulator.stats())

    def reset(self) -> Response:
        if _cross_site():
            return _refuse_cross_site()
        self.simulator.reset()
        if _is_form_post():
            return redirect(url_for(".index", reset=1), code=303)
        return _json({"status": "reset"})

    def block_token(self, token: str) -> Response:
        if _cross_site():
            return _refuse_cross_site()
        events = self.simulator.block(token)
        if _is_form_post():
            if events:
                target = url_for(".index", blocked=token, events=len(events))
            else:
                target = url_for(".index", unknown=token)
            return redirect(target, code=303)
        if not events:
            return _json(_error(404, f"Token {token} is not held by any contact"), 404)
        return _json({"token": token, "events": events})

    def press_start(self, link_id: str) -> Response:
        if _cross_site():
            return _refuse_cross_site()
        outcome = self.links.press_start(link_id, request.form.get("chat", ""))
        return redirect(url_for(".index", outcome=outcome, link=link_id), code=303)

    def index(self) -> str:
        stats = self.simulator.stats()
        links = None
        if self.links is not None:
            links = [{**link, "test_chat": fresh_chat_id()} for link in self.links.recent()]
        contacts = [{**c, "counts": Counter(c["tokens"])} for c in self.simulator.contacts()]
        return render_template(
            "reteno_sandbox/index.html",
            options=self.simulator.options,
            stats=stats,
            contacts=contacts,
            muted=self.simulator.muted(),
            events=self.simulator.events(),
            identifiers=IDENTIFIERS,
            notice=_page_notice(),
            links=links,
            faults=", ".join(f"{kind}: {n}" for kind, n in stats["faults"].items() if n),
        )


#: (rule, method, view): the view's name is its endpoint (``url_for(".index")``).
_ROUTES = (
    ("/api/v1/apps/<app_uuid>/tokens", "POST", "tokens"),
    ("/api/v1/apps/<app_uuid>/token/mute", "POST", "mute"),
    ("/api/v1/apps/<app_uuid>/token/unmute", "POST", "unmute"),
    ("/api/v2/event", "POST", "event"),
    ("/events", "GET", "events"),
    ("/contacts", "GET", "contacts"),
    ("/muted", "GET", "muted"),
    ("/stats", "GET", "stats"),
    ("/reset", "POST", "reset"),
    ("/block/<path:token>", "POST", "block_token"),
    ("/", "GET", "index"),
)
_PRESS_START = ("/links/<link_id>/start", "POST", "press_start")  # with a LinksPanel only


def _no_framing(response: Response) -> Response:
    response.headers.update(_FRAMING)
    return response


def create_blueprint(
    simulator: Simulator, loopback_only: bool = True, links: LinksPanel | None = None
) -> Blueprint:
    """The simulator's routes, relative to wherever the blueprint is mounted;
    ``loopback_only=False`` for an app no socket ever reaches (the in-process one);
    ``links``: the page's links section and ``POST /links/<id>/start`` (a sandbox
    bridge's)."""
    bp = Blueprint("reteno_sandbox", __name__, template_folder="templates")
    views = _Views(simulator, loopback_only, links)
    bp.before_request(views.refuse_other_hosts)
    bp.after_request(_no_framing)
    routes = _ROUTES if links is None else (*_ROUTES, _PRESS_START)
    for rule, method, name in routes:
        bp.add_url_rule(rule, name, getattr(views, name), methods=[method])
    return bp


def create_app(
    options: SimulatorOptions | None = None,
    simulator: Simulator | None = None,
    loopback_only: bool = True,
) -> Flask:
    """A standalone app serving the simulator at ``/``; the simulator is
    ``app.extensions["reteno_sandbox"]``."""
    if simulator is None:
        simulator = Simulator(options)
    elif options is not None:
        raise ValueError("pass either options or a simulator, not both")
    app = Flask(__name__)
    app.extensions["reteno_sandbox"] = simulator
    app.register_blueprint(create_blueprint(simulator, loopback_only))
    return app
