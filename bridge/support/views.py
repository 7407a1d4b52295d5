"""The support page's blueprint: log in, find a customer, read their chats' stories,
see the overview. Thin views: the session (:mod:`.session`) and the ledger decide who
may look, :mod:`.story` and :mod:`.overview` say what there is to see.

A look-up is a POST (with the session's CSRF token), so no identifier ever sits in a
URL, a browser's history or a proxy's log; it is logged with the staff user's name and
the kind of identifier, never its value.
"""

from __future__ import annotations

from flask import Blueprint, g, redirect, render_template, request, url_for
from markupsafe import Markup
from werkzeug.security import check_password_hash, generate_password_hash

from ..ledger import State
from ..ledger.staff import valid_name
from ..logs import get_logger
from ..runtime import current
from . import overview, session, story

log = get_logger("bridge.support")
bp = Blueprint(
    "support",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
_OPEN = ("support.login", "support.login_post", "support.static")  # what answers without a login
_UNKNOWN_HASH: list[str] = []  # checked for an unknown name, so it takes as long


def _secret() -> str:
    return current().settings.secret_key


@bp.before_request
def _who():
    g.support = session.read(_secret())
    g.support_cookie, g.support_user = None, None
    if request.endpoint in _OPEN:
        return None
    user = g.support.user if g.support else None
    account = current().ledger.staff_account(user) if user else None
    if account is None or account[1] != g.support.generation:
        # no login, a removed account, or a session its user ended by logging out
        return redirect(url_for("support.login"), 303)
    g.support_user = user  # who the page says is logged in, and who the log names
    return None


@bp.after_request
def _answer(response):
    if g.get("support_cookie") is not None:
        session.write(response, _secret(), g.support_cookie)
    elif g.get("support_logout"):
        session.end(response)
    return session.protect(response)


def _page(template: str, status: int = 200, **context):
    context.setdefault("user", g.support_user)
    context.setdefault("csrf", (g.support_cookie or g.support).csrf)
    return render_template(f"bridge_support/{template}", kinds=story.KINDS, **context), status


# --- logging in and out -------------------------------------------------------------


@bp.get("/login")
def login():
    if g.support is None:
        g.support_cookie = session.fresh()
    return _page("login.html", message="You are logged out." if "out" in request.args else None)


@bp.post("/login")
def login_post():
    if not session.csrf_ok(g.support, request.form.get("csrf")):
        g.support_cookie = session.fresh()
        return _page(
            "login.html",
            400,
            error="This form expired or did not come from this page; please try again.",
        )
    name, password = request.form.get("username", "").strip(), request.form.get("password", "")
    if not valid_name(name):
        return _page("login.html", 401, error="Wrong user name or password.", name=name[:64])
    ledger = current().ledger
    heard, wait = ledger.login_attempt(name)
    if not heard:
        return _page(
            "login.html",
            429,
            error=f"Too many failed logins for this user name: try again in {int(wait) + 1} s.",
            name=name,
        )
    account = ledger.staff_account(name)
    stored = account[0] if account else None
    if not _UNKNOWN_HASH:
        _UNKNOWN_HASH.append(generate_password_hash(session.fresh().csrf))
    if not check_password_hash(stored or _UNKNOWN_HASH[0], password) or stored is None:
        # a name of no account may be a password typed in the wrong field
        log.info("support login refused user=%s", name if stored else "<unknown>")
        error = "Wrong user name or password."
        if wait:
            error += f" The next try for this user name waits {int(wait)} s."
        return _page("login.html", 401, error=error, name=name)
    ledger.logged_in(name)
    log.info("support login user=%s", name)
    g.support_cookie = session.fresh(name, account[1])
    return redirect(url_for("support.search"), 303)


@bp.post("/logout")
def logout():
    if not session.csrf_ok(g.support, request.form.get("csrf")):
        return _page("search.html", 400, error="This form expired; please try again.")
    current().ledger.logged_out(g.support_user)  # ends its other sessions too
    log.info("support logout user=%s", g.support_user)
    g.support_logout = True
    return redirect(url_for("support.login", out=1), 303)


# --- the pages ----------------------------------------------------------------------


@bp.get("/")
def search():
    return _page("search.html")


@bp.post("/")
def search_post():
    kind, value = request.form.get("kind", ""), request.form.get("value", "")
    if not session.csrf_ok(g.support, request.form.get("csrf")):
        return _page("search.html", 400, error="This form expired; please search again.")
    try:
        normal = story.normalize(kind, value)
    except story.BadLookup as exc:
        log.info("support look-up user=%s kind=%s refused", g.support_user, kind[:32])
        return _page("search.html", 422, error=str(exc), kind=kind, value=value[:300])
    rt = current()
    stories, none = story.look_up(rt.ledger, kind, normal, rt.ledger.clock())
    log.info(
        "support look-up user=%s kind=%s chats=%d", g.support_user, kind, len(stories)
    )  # the value never: only the kind of identifier
    return _page(
        "search.html",
        kind=kind,
        value=value,
        stories=stories,
        nothing=none,
        exact=story.exact,
    )


@bp.get("/overview")
def overview_page():
    rt = current()
    health, _ok = rt.health(details=True)
    if not _ok:
        return _page("overview.html", 503, error=health["message"])
    held, _next = rt.ledger.find(dict(state=State.HELD.value), limit=20)  # a filter, no write
    view = overview.build(health, rt.ledger.stats(days=1), rt.ledger.activity(overview.DAYS), held)
    return _page("overview.html", view=view, chart=Markup(view.chart_svg), exact=story.exact)
