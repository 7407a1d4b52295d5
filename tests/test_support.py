"""The support page (``BRIDGE_SUPPORT_PAGE``) through Flask's test client: who may see it
(staff accounts, the signed cookie, CSRF, the login throttle), finding a customer by
each identifier, the one-sentence answers of their chats' stories, and the overview.

What a user sees: status codes, the page's text, its cookie and headers, the log lines.
"""

from __future__ import annotations

import html
import logging
import re
from datetime import datetime

import pytest
from sqlalchemy import text
from werkzeug.security import generate_password_hash

from bridge.config import ConfigError
from bridge.factory import app_or_exit
from bridge.support.story import when
from tests.conftest import TOKENS_URL
from tests.helpers import register, run_cli
from tests.test_mute import MUTE_URL, UNMUTE_URL
from tests.test_telegram import SECRET, blocked, dated, send, unblocked

SECRET_KEY = "support-secret-key-" + "k" * 24
STAFF, PASSWORD = "ann.support", "correct horse battery staple"
CHAT = 123456789
ANN = {
    "token": CHAT,
    "contactId": 4242,
    "externalCustomerId": "cust-7",
    "phone": "+380 95 649 0955",
    "email": "Ann@Example.com",
}
SUPPORT = {
    "BRIDGE_SUPPORT_PAGE": True,
    "BRIDGE_SECRET_KEY": SECRET_KEY,
    "TELEGRAM_WEBHOOK_SECRET": SECRET,
}


@pytest.fixture
def app(make_app):
    return make_app(**SUPPORT)


@pytest.fixture
def staff(bridge):
    # a cheap hash: the method is the hash's own business, the page reads any werkzeug hash
    bridge.ledger.add_staff(STAFF, generate_password_hash(PASSWORD, "pbkdf2:sha256:1000"))
    return STAFF


@pytest.fixture
def upstream(requests_mock):
    for url in (TOKENS_URL, MUTE_URL, UNMUTE_URL):
        requests_mock.post(url, json="OK")
    return requests_mock


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def login(client, name=STAFF, password=PASSWORD, token=None):
    """The answer to the login form, filled in as a browser would."""
    if token is None:
        token = csrf_of(client.get("/support/login").text)
    return client.post(
        "/support/login", data={"csrf": token, "username": name, "password": password}
    )


@pytest.fixture
def staff_client(client, staff):
    assert login(client).status_code == 303
    return client


def search(client, kind, value):
    token = csrf_of(client.get("/support/").text)
    return client.post("/support/", data={"csrf": token, "kind": kind, "value": value})


def texts(page: str, css_class: str) -> list[str]:
    """The text of each element with ``css_class``, tags dropped."""
    found = re.findall(rf'class="{css_class}"[^>]*>(.*?)</', page, re.S)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", "", t)).split()) for t in found]


def answers(page: str) -> list[str]:
    return texts(page, "answer")


def chats(page: str) -> list[str]:
    return re.findall(r"<h2 id=\"chat-\d+\">Chat (-?\d+)</h2>", page)


def telegram(client, clock, update, seconds=10):
    clock.advance(seconds)
    assert send(client, dated(update, int(clock.now.timestamp()))).status_code == 200


# --- on, off, and start-up -----------------------------------------------------------


def test_the_page_is_off_unless_switched_on(make_app):
    client = make_app().test_client()
    for path in ("/support/", "/support/login", "/support/overview"):
        assert client.get(path).status_code == 404


def test_on_without_a_secret_key_start_up_stops_naming_it(make_app, capsys):
    with pytest.raises(ConfigError, match="^BRIDGE_SECRET_KEY is not set"):
        make_app(BRIDGE_SUPPORT_PAGE=True)
    with pytest.raises(SystemExit) as stopped:
        app_or_exit(lambda: make_app(BRIDGE_SUPPORT_PAGE="true"))
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "BRIDGE_SECRET_KEY is not set" in err
    assert "Traceback" not in err


def test_a_short_secret_key_is_refused(make_app):
    with pytest.raises(ConfigError, match="BRIDGE_SECRET_KEY must be at least 32 characters"):
        make_app(BRIDGE_SUPPORT_PAGE=True, BRIDGE_SECRET_KEY="x" * 31)


def test_the_page_follows_the_bridges_mount(config, db_url):
    from flask import Flask

    from bridge import Bridge

    host = Flask("host")
    host.config.from_mapping({**config, **SUPPORT})
    Bridge(host, url_prefix="/reteno")
    client = host.test_client()
    answer = client.get("/reteno/support/login")
    assert answer.status_code == 200
    assert "Path=/reteno/support;" in answer.headers["Set-Cookie"]
    assert client.get("/support/login").status_code == 404
    host.extensions["reteno_bridge"].db.dispose()


# --- who may see it --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/support/", "/support/overview"])
def test_every_page_needs_a_login(client, path):
    answer = client.get(path)
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/support/login"


def test_a_search_without_a_login_shows_nothing(client, staff):
    token = csrf_of(client.get("/support/login").text)  # a session, but no one logged in
    answer = client.post("/support/", data={"csrf": token, "kind": "token", "value": str(CHAT)})
    assert answer.status_code == 303 and answer.headers["Location"] == "/support/login"


def test_logging_in_sets_the_pages_own_cookie(client, staff):
    answer = login(client)
    assert answer.status_code == 303 and answer.headers["Location"] == "/support/"
    [cookie] = answer.headers.getlist("Set-Cookie")
    assert cookie.startswith("bridge_support=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/support;"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain http here
    page = client.get("/support/")
    assert page.status_code == 200
    assert f"Logged in as <strong>{STAFF}</strong>" in page.text
    assert client.get_cookie("session") is None  # Flask's session stays the host app's


def test_behind_https_the_cookie_is_secure(app, staff):
    client = app.test_client()
    page = client.get("/support/login", base_url="https://support.example")
    answer = client.post(
        "/support/login",
        base_url="https://support.example",
        data={"csrf": csrf_of(page.text), "username": STAFF, "password": PASSWORD},
    )
    assert answer.status_code == 303
    assert "; Secure" in answer.headers["Set-Cookie"]


def test_a_forged_or_foreign_cookie_is_no_login(make_app, staff, client):
    login(client)
    cookie = client.get_cookie("bridge_support", path="/support").value
    other = make_app(**{**SUPPORT, "BRIDGE_SECRET_KEY": "another-secret-key-" + "o" * 20})
    stranger = other.test_client()
    stranger.set_cookie("bridge_support", cookie, path="/support")
    assert stranger.get("/support/").status_code == 303
    client.set_cookie("bridge_support", cookie[:-2] + "xx", path="/support")
    assert client.get("/support/").status_code == 303


@pytest.mark.parametrize("token", ["", "not-the-token"])
def test_a_login_without_the_forms_csrf_token_is_refused(client, staff, token):
    client.get("/support/login")
    answer = login(client, token=token)
    assert answer.status_code == 400
    assert "This form expired" in answer.text
    assert client.get("/support/").status_code == 303  # not logged in


def test_a_login_form_from_another_session_is_refused(app, staff):
    theirs = csrf_of(app.test_client().get("/support/login").text)
    client = app.test_client()
    client.get("/support/login")
    assert login(client, token=theirs).status_code == 400


def test_search_and_logout_need_the_sessions_csrf_token(staff_client):
    answer = staff_client.post("/support/", data={"kind": "token", "value": str(CHAT)})
    assert answer.status_code == 400
    assert staff_client.post("/support/logout", data={"csrf": "nope"}).status_code == 400
    assert staff_client.get("/support/").status_code == 200  # still logged in


def test_logging_out_ends_the_session(staff_client):
    token = csrf_of(staff_client.get("/support/").text)
    answer = staff_client.post("/support/logout", data={"csrf": token})
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/support/login?out=1"
    assert "bridge_support=;" in answer.headers["Set-Cookie"]
    assert staff_client.get("/support/").status_code == 303
    assert "You are logged out." in staff_client.get("/support/login?out=1").text


def test_logging_out_ends_every_session_of_the_account(app, staff_client):
    copied = staff_client.get_cookie("bridge_support", path="/support").value
    elsewhere = app.test_client()
    assert login(elsewhere).status_code == 303
    token = csrf_of(staff_client.get("/support/").text)
    staff_client.post("/support/logout", data={"csrf": token})
    assert elsewhere.get("/support/").status_code == 303
    staff_client.set_cookie("bridge_support", copied, path="/support")
    assert staff_client.get("/support/").status_code == 303  # a copied cookie is no login
    assert login(staff_client).status_code == 303  # a new login works at once
    assert staff_client.get("/support/").status_code == 200


@pytest.mark.parametrize(
    ("name", "password"),
    [(STAFF, "wrong password here"), ("nobody", PASSWORD), ("<script>", PASSWORD)],
)
def test_a_wrong_name_or_password_gets_one_answer(client, staff, name, password):
    answer = login(client, name, password)
    assert answer.status_code == 401
    assert "Wrong user name or password." in answer.text
    assert client.get("/support/").status_code == 303


def test_a_refused_login_logs_only_a_known_user_name(client, staff, caplog):
    caplog.set_level(logging.INFO, logger="bridge")
    typed = "Summer2026.pass"  # a password typed into the user name field
    assert login(client, typed, PASSWORD).status_code == 401
    assert login(client, STAFF, "wrong password here").status_code == 401
    refused = [r.getMessage() for r in caplog.records if "login refused" in r.getMessage()]
    assert refused == [
        "support login refused user=<unknown>",
        f"support login refused user={STAFF}",
    ]
    assert typed not in caplog.text


def test_failed_logins_are_slowed_per_user_name_in_the_ledger(app, make_app, staff, clock):
    client = app.test_client()
    for _ in range(2):
        assert login(client, password="wrong password here").status_code == 401
    third = login(client, password="wrong password here")
    assert "The next try for this user name waits 2 s." in third.text
    refused = login(client)  # the right password, too soon
    assert refused.status_code == 429
    assert "Too many failed logins for this user name" in refused.text
    # another process on the same ledger waits too
    other = make_app(**SUPPORT)
    other.extensions["reteno_bridge"].ledger.clock = clock
    assert login(other.test_client()).status_code == 429
    # another name is not slowed
    bridge = app.extensions["reteno_bridge"]
    bridge.ledger.add_staff("bob", generate_password_hash("bobs password!!", "pbkdf2:sha256:1000"))
    assert login(app.test_client(), "bob", "bobs password!!").status_code == 303
    clock.advance(2.5)
    assert login(client).status_code == 303
    # a success forgets the failures
    assert login(app.test_client(), password="wrong password here").status_code == 401
    assert login(app.test_client()).status_code == 303


def test_the_waits_double(app, staff, clock):
    client = app.test_client()
    waits = []
    for _ in range(6):
        page = login(client, password="wrong password here").text
        found = re.search(r"waits (\d+) s", page)
        waits.append(int(found.group(1)) if found else 0)
        clock.advance(waits[-1] + 0.1)
    assert waits == [0, 0, 2, 4, 8, 16]


def test_a_day_without_attempts_forgets_the_failures(app, staff, clock, bridge):
    client = app.test_client()
    for _ in range(3):
        login(client, password="wrong password here")
    assert login(client).status_code == 429
    for number in range(12):  # guessed names, one a second
        clock.advance(1)
        login(client, f"guess{number}", "wrong password here")
    clock.advance(86400 + 1)
    assert login(client).status_code == 303
    with bridge.db.read() as conn:
        names = conn.execute(text("SELECT name FROM bridge_support_logins ORDER BY name"))
        # the attempt after a quiet day forgot the ten oldest names (its own first)
        assert [n for (n,) in names] == ["guess10", "guess11", "guess9"]


def test_a_removed_account_is_logged_out(staff_client, runner):
    run_cli(runner, "support-user", "remove", STAFF)
    assert staff_client.get("/support/").status_code == 303


def test_a_new_password_logs_out_the_old_sessions(staff_client, runner, app):
    copied = staff_client.get_cookie("bridge_support", path="/support").value
    new = "a new password 42\n"
    run_cli(runner, "support-user", "add", STAFF, "--password-stdin", input=new)
    assert staff_client.get("/support/").status_code == 303
    replay = app.test_client()
    replay.set_cookie("bridge_support", copied, path="/support")
    assert replay.get("/support/").status_code == 303


def test_a_new_account_of_a_removed_ones_name_refuses_its_cookies(staff_client, runner):
    copied = staff_client.get_cookie("bridge_support", path="/support").value
    run_cli(runner, "support-user", "remove", STAFF)
    new = "a new password 42\n"
    run_cli(runner, "support-user", "add", STAFF, "--password-stdin", input=new)
    staff_client.set_cookie("bridge_support", copied, path="/support")
    assert staff_client.get("/support/").status_code == 303
    assert login(staff_client, password="a new password 42").status_code == 303
    assert staff_client.get("/support/").status_code == 200


def test_every_answer_forbids_inline_scripts_and_framing(client, staff_client):
    for path in ("/support/login", "/support/", "/support/overview", "/support/static/support.css"):
        answer = staff_client.get(path)
        answer.close()  # a static file's
        headers = answer.headers
        policy = headers["Content-Security-Policy"]
        assert "script-src" not in policy and "default-src 'none'" in policy
        assert "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
        assert headers["X-Frame-Options"] == "DENY"
    assert staff_client.get("/support/").headers["Cache-Control"] == "no-store"


def test_the_pages_hold_no_inline_script_or_style(staff_client, upstream, auth):
    register(staff_client, auth, ANN)
    pages = [
        staff_client.get("/support/login").text,
        search(staff_client, "token", str(CHAT)).text,
        staff_client.get("/support/overview").text,
    ]
    for page in pages:
        assert "<script" not in page and "style=" not in page and "<style" not in page


# --- finding a customer --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("token", f" {CHAT} "),
        ("email", " ANN@example.COM "),
        ("phone", "+380 (95) 649-09-55"),
        ("externalCustomerId", "cust-7"),
        ("contactId", "4242"),
    ],
)
def test_a_customer_is_found_by_each_identifier(staff_client, auth, upstream, kind, value):
    register(staff_client, auth, ANN)
    register(staff_client, auth, {"token": 555, "email": "bob@example.com"})
    page = search(staff_client, kind, value)
    assert page.status_code == 200
    assert chats(page.text) == [str(CHAT)]
    assert "bob@example.com" not in page.text and "Chat 555" not in page.text


@pytest.mark.parametrize(
    ("kind", "value"),
    [("email", "ann@example"), ("email", "example.com"), ("externalCustomerId", "cust-")],
)
def test_a_partial_value_lists_nobody(staff_client, auth, upstream, kind, value):
    register(staff_client, auth, ANN)
    page = search(staff_client, kind, value)
    assert chats(page.text) == []
    assert str(CHAT) not in page.text


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("token", "abc", "That is not a valid Telegram chat id"),
        ("token", "0", "That is not a valid Telegram chat id"),
        ("contactId", "-5", "That is not a valid contactId"),
        ("phone", "12", "That is not a valid Phone"),
        ("email", "not an address", "That is not a valid E-mail"),
        ("externalCustomerId", "a\u202eb", "That is not a valid externalCustomerId"),
        ("token", "   ", "Enter a Telegram chat id"),
        ("email", "a" * 100_000 + "@example.com", "That is not a valid E-mail: it is far too long"),
        ("nonsense", "1", "Choose what to search by."),
    ],
)
def test_a_malformed_value_gets_a_message_not_an_error(staff_client, kind, value, message):
    page = search(staff_client, kind, value)
    assert page.status_code == 422
    assert message in texts(page.text, "error")[0]


@pytest.mark.parametrize(
    ("kind", "value", "what"),
    [("token", "987654321", "chat"), ("email", "nobody@example.com", "E-mail")],
)
def test_an_unknown_customer_gets_a_message(staff_client, kind, value, what):
    page = search(staff_client, kind, value)
    assert page.status_code == 200
    assert answers(page.text) == [
        f"Nothing is known of this {what}: either the bridge never received it, or the "
        "customer's data was erased (an erasure keeps nothing that could find them)."
    ]


def test_a_customer_with_two_chats_shows_both(staff_client, auth, upstream):
    register(staff_client, auth, {"token": 111, "email": "ann@example.com"})
    register(staff_client, auth, {"token": 222, "email": "ann@example.com"})
    assert chats(search(staff_client, "email", "ann@example.com").text) == ["222", "111"]


def test_every_look_up_is_logged_with_the_staff_user_not_the_value(
    staff_client, auth, upstream, caplog
):
    register(staff_client, auth, ANN)
    with caplog.at_level(logging.INFO, logger="bridge.support"):
        search(staff_client, "email", "ann@example.com")
        search(staff_client, "externalCustomerId", "cust-7")
        search(staff_client, "contactId", "x")
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.support"]
    assert lines == [
        f"support look-up user={STAFF} kind=email chats=1",
        f"support look-up user={STAFF} kind=externalCustomerId chats=1",
        f"support look-up user={STAFF} kind=contactId refused",
    ]


# --- the story: the one sentence ---------------------------------------------------------


def story(client, token=CHAT):
    page = search(client, "token", str(token))
    assert page.status_code == 200
    return page.text


def test_a_delivered_chat(staff_client, auth, bridge, upstream, clock):
    register(staff_client, auth, ANN)
    bridge.deliver_once()
    page = story(staff_client)
    assert answers(page) == [
        f"With Reteno since {when(clock.now, clock.now)} (matched by contactId); Reteno can "
        "message this chat."
    ]
    assert texts(page, "what") == [
        "Delivered to Reteno (attempt 1, HTTP 200)",
        "Registered by contactId from the bot's backend (POST /register)",
    ]
    assert page.count("<summary>Raw event") == 2
    assert "&#34;kind&#34;: &#34;delivered&#34;" in page


def test_a_chat_that_blocked_the_bot_in_telegram(staff_client, auth, bridge, upstream, clock):
    register(staff_client, auth, ANN)
    bridge.deliver_once()
    telegram(staff_client, clock, blocked(CHAT))
    at = clock.now.replace(microsecond=0)
    page = story(staff_client)
    assert answers(page) == [
        f"Blocked the bot on {at.day} {at:%b} at {at:%H:%M} (Telegram); Reteno will not "
        "message this chat until the customer presses Start again."
    ]
    assert texts(page, "what")[0] == "Removed: the customer blocked the bot (Telegram said so)"
    assert f'<time datetime="{clock.now.isoformat()}">' in page


def test_a_chat_reteno_reported_forbidden(staff_client, auth, bridge, upstream, clock):
    register(staff_client, auth, ANN)
    bridge.deliver_once()
    clock.advance(10)
    event = {"status": "FAILED", "error": "Forbidden: bot was blocked by the user", "token": CHAT}
    assert staff_client.post("/statuses", json=[event], headers=auth).status_code == 200
    page = story(staff_client)
    assert answers(page) == [
        f"Reteno's message on {when(clock.now, clock.now)} failed with Forbidden (the customer "
        "blocked the bot); Reteno dropped this chat and will not message it until the "
        "customer presses Start again."
    ]
    assert texts(page, "what")[:2] == [
        "Removed: Reteno's message failed with Forbidden (the customer blocked the bot)",
        "Reteno reported FAILED: Forbidden: bot was blocked by the user",
    ]


def test_a_chat_that_came_back(staff_client, auth, bridge, upstream, clock):
    register(staff_client, auth, ANN)
    bridge.deliver_once()
    telegram(staff_client, clock, blocked(CHAT))
    telegram(staff_client, clock, unblocked(CHAT))
    page = story(staff_client)
    assert answers(page)[0].endswith("Reteno can message this chat.")
    assert texts(page, "what")[:2] == [
        "Unblocked the bot (Telegram): live again without a call",
        "Came back: Reteno still held the token, so nothing had to be sent",
    ]


def test_a_muted_chat(staff_client, auth, bridge, upstream, clock):
    register(staff_client, auth, ANN)
    bridge.deliver_once()
    answer = staff_client.post("/mute", json={"token": CHAT, "duration": 3600}, headers=auth)
    assert answer.status_code == 202
    bridge.deliver_once()
    until = datetime.fromisoformat(answer.get_json()["mutedUntil"])
    page = story(staff_client)
    assert answers(page) == [
        f"Muted until {when(until, clock.now)}: Reteno sends this chat "
        "no marketing messages meanwhile (transactional ones still arrive)."
    ]
    assert texts(page, "what")[:2] == [
        "Reteno took the mute",
        f"Mute asked for, until {until:%Y-%m-%d %H:%M:%S} UTC",
    ]


def test_a_chat_in_an_identity_conflict(staff_client, auth, bridge, upstream, clock):
    [first] = register(staff_client, auth, {"token": CHAT, "contactId": 1})
    register(staff_client, auth, {"token": CHAT, "email": "other@example.com"})
    bridge.deliver_once()
    page = story(staff_client)
    assert answers(page) == [
        f"With Reteno since {when(clock.now, clock.now)} (matched by email); Reteno can "
        "message this chat. Identity conflict: the chat is also registered as registration "
        f"#{first['id']} (by contactId), so the other contact's messages reach it too."
    ]
    assert f"Identity conflict: the chat is also registered as registration #{first['id']}" in (
        texts(page, "what")
    )


def test_a_held_conflict(make_app, staff, auth, upstream):
    app = make_app(**SUPPORT, BRIDGE_ON_CONFLICT="hold")
    client = app.test_client()
    assert login(client).status_code == 303
    [first] = register(client, auth, {"token": CHAT, "contactId": 1})
    [second] = register(client, auth, {"token": CHAT, "email": "other@example.com"})
    [sentence] = answers(story(client))
    assert sentence.startswith("Kept back since ")
    assert (
        f"this chat is also registered as registration #{first['id']} (by contactId), so "
        f"nothing is sent to Reteno until someone reviews it (bridge conflicts release "
        f"{second['id']})."
    ) in sentence


def test_an_erased_chat_leaves_nothing_to_find(staff_client, auth, bridge, upstream, runner):
    register(staff_client, auth, ANN)
    bridge.deliver_once()
    run_cli(runner, "erase", "--email", "ann@example.com", "--yes")
    for kind, value in (("token", str(CHAT)), ("email", "ann@example.com")):
        page = search(staff_client, kind, value).text
        assert chats(page) == []
        assert "the customer's data was erased" in answers(page)[0]


def test_a_queued_chat_while_reteno_refuses_the_key(staff_client, auth, bridge, requests_mock):
    requests_mock.post(TOKENS_URL, status_code=401, json={"message": "bad key"})
    register(staff_client, auth, ANN)
    bridge.deliver_once()
    [sentence] = answers(story(staff_client))
    assert sentence.startswith("Not with Reteno yet: waiting to be sent since ")
    assert "1 attempt(s) so far; delivery is paused until " in sentence
    assert "(Reteno refused the bridge's API key (401))." in sentence


# --- the overview ---------------------------------------------------------------------


def test_the_overview_counts_states_and_the_outbox(
    staff_client, auth, bridge, requests_mock, clock
):
    requests_mock.post(TOKENS_URL, json="OK")
    register(staff_client, auth, {"token": 1, "contactId": 1}, {"token": 2, "contactId": 2})
    bridge.deliver_once()
    telegram(staff_client, clock, blocked(1))
    telegram(staff_client, clock, unblocked(1))  # a comeback
    telegram(staff_client, clock, blocked(2))
    requests_mock.post(TOKENS_URL, status_code=401, json={"message": "bad key"})
    register(staff_client, auth, {"token": 3, "contactId": 3})
    bridge.deliver_once()
    page = staff_client.get("/support/overview").text
    states = dict(re.findall(r"<tr><td>(\w+)</td><td class=\"num\">(\d+)</td>", page))
    assert states == {"queued": "1", "delivered": "1", "removed": "2", "dead": "0", "held": "0"}
    assert texts(page, "num")  # the numbers are in cells
    assert re.search(r'<dd id="queued">1</dd>', page)
    [delivery] = re.findall(r'<dd id="delivery">(.*?)</dd>', page)
    assert "Paused" in delivery and "refused the bridge&#39;s API key (401)" in delivery
    totals = " ".join(re.search(r'<p id="totals">(.*?)</p>', page).group(1).split())
    assert totals.startswith("4 registrations, 2 removals and 1 comebacks")
    assert '<pattern id="hatch"' in page and '<pattern id="dots"' in page
    assert '<title id="chart-title">Registrations, removals and comebacks per day' in page
    assert page.count("<tr><td>20") == 30  # the text alternative: one row a day


def test_the_overview_shows_dead_letters_and_why(staff_client, auth, bridge, requests_mock):
    requests_mock.post(
        TOKENS_URL, status_code=400, json={"message": "Invalid token 987654321 of x@example.com"}
    )
    register(staff_client, auth, {"token": 987654321, "email": "x@example.com"})
    bridge.deliver_once()
    page = staff_client.get("/support/overview").text
    assert '<dd id="dead">1</dd>' in page
    [reason] = re.findall(r"Why they died.*?<td>(.*?)</td>", page, re.S)
    assert "Invalid token &lt;number&gt; of &lt;email&gt;" in reason
    assert "987654321" not in page and "x@example.com" not in page


def test_the_overview_lists_held_conflicts(make_app, staff, auth, upstream):
    app = make_app(**SUPPORT, BRIDGE_ON_CONFLICT="hold")
    client = app.test_client()
    login(client)
    register(client, auth, {"token": CHAT, "contactId": 1})
    [held] = register(client, auth, {"token": CHAT, "email": "x@example.com"})
    page = client.get("/support/overview").text
    assert '<p id="held">1 held.</p>' in page
    assert f"<td>#{held['id']}</td><td>email</td>" in page
    assert "x@example.com" not in page


# --- bridge support-user --------------------------------------------------------------


def test_support_user_add_prompts_twice(runner, client):
    result = run_cli(runner, "support-user", "add", "carol", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert "support user carol added" in result.output
    assert PASSWORD not in result.output
    assert login(client, "carol", PASSWORD).status_code == 303


def test_support_user_add_refuses_different_passwords(runner):
    result = run_cli(
        runner,
        "support-user",
        "add",
        "carol",
        input=f"{PASSWORD}\nanother one entirely\n{PASSWORD}\n{PASSWORD}\n",
    )
    assert "do not match" in result.output.lower()


def test_support_user_add_reads_stdin_and_sets_a_new_password(runner, client, staff):
    result = run_cli(
        runner, "support-user", "add", STAFF, "--password-stdin", input="a new password 42\n"
    )
    assert f"support user {STAFF} has a new password" in result.output
    assert login(client).status_code == 401
    assert login(client, password="a new password 42").status_code == 303


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["add", "dave", "--password-stdin"], "short\n", "at least 12 characters"),
        (["add", "bad name!", "--password-stdin"], "long enough password\n", "Invalid value"),
        (["remove", "nobody"], None, "there is no support user nobody"),
    ],
)
def test_support_user_refusals(runner, args, stdin, message):
    code = 2 if "Invalid" in message else 1  # click's usage error, or the command's refusal
    result = run_cli(runner, "support-user", *args, input=stdin, code=code)
    assert message in result.output


def test_support_user_list_and_remove(runner, staff):
    listed = run_cli(runner, "support-user", "list")
    assert STAFF in listed.output and "1 support user" in listed.output
    as_json = run_cli(runner, "support-user", "list", "--json")
    assert '"name": "ann.support"' in as_json.output
    assert "password" not in as_json.output.lower()
    run_cli(runner, "support-user", "remove", STAFF)
    assert "no support users" in run_cli(runner, "support-user", "list").output
