"""Links (``/links``): a website's link for a customer it knows, its states through the
HTTP API, the ``/start`` that uses it, its QR code, chat-first claim codes, erase, and
the old signed format still accepted until it expires.

Everything is read back through the API a website or an operator has (``GET
/links/<id>``, ``GET /tokens``, the history), on the fake clock of the ``clock``
fixture: expiry is judged by the bridge's clock, never an update's ``date``.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from datetime import datetime, timedelta

import pytest
import segno
import zxingcpp
from flask import Flask
from PIL import Image
from sqlalchemy import select

from bridge import Bridge, links
from bridge.models import Link
from tests.helpers import (
    assert_error_shape,
    chat_member,
    history,
    rows,
    run_cli,
    start_message,
    telegram,
    telegram_date,
)

BOT = "my_shop_bot"
TG_SECRET = "tg-webhook-secret_0123456789"
LINK_SECRET = "link-secret-" + "x" * 24
OPAQUE = re.compile(r"^L[A-Za-z0-9_-]{32}$")
ANN = {"externalCustomerId": "crm-ann-1", "email": "ann@example.com"}


@pytest.fixture
def app(make_app):
    return make_app(
        TELEGRAM_BOT_USERNAME=BOT, TELEGRAM_WEBHOOK_SECRET=TG_SECRET, BRIDGE_LINK_SECRET=LINK_SECRET
    )


def make_link(client, auth, **body):
    response = client.post("/links", json=body or dict(ANN), headers=auth)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def status(client, auth, link_id):
    response = client.get(f"/links/{link_id}", headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def open_link(client, clock, chat, payload, date=None):
    """The user taps Start in chat ``chat`` on a link's payload."""
    date = telegram_date(clock) if date is None else date
    telegram(client, start_message(chat, date, payload), TG_SECRET)


def kinds(client, auth, chat):
    return [e["kind"] for e in history(client, auth, chat)]


def link_rows(bridge):
    with bridge.db.read() as conn:
        return conn.execute(select(Link.__table__).order_by(Link.created_at)).all()


# --- POST /links and the states of a link ------------------------------------------------


def test_a_link_is_pending_until_a_chat_uses_it_then_used(client, auth, clock):
    made = make_link(client, auth, **ANN, ttl="12h")
    assert set(made) == {"id", "url", "payload", "expiresAt", "qr"}
    assert OPAQUE.match(made["payload"]) and len(made["payload"]) <= 64
    assert made["url"] == f"https://t.me/{BOT}?start={made['payload']}"
    assert made["qr"] == f"/links/{made['id']}/qr.svg"
    assert datetime.fromisoformat(made["expiresAt"]) == clock.now + timedelta(hours=12)
    assert status(client, auth, made["id"]) == {
        "id": made["id"],
        "state": "pending",
        "expiresAt": made["expiresAt"],
        "usedAt": None,
        "token": None,
    }

    clock.advance(60)
    open_link(client, clock, 111, made["payload"])
    [item] = rows(client, auth, token=111)
    assert (item["externalCustomerId"], item["email"], item["matchedBy"], item["state"]) == (
        "crm-ann-1",
        "ann@example.com",
        "externalCustomerId",
        "queued",
    )
    shown = status(client, auth, made["id"])
    assert (shown["state"], shown["token"]) == ("used", "111")
    assert datetime.fromisoformat(shown["usedAt"]) == clock.now
    events = history(client, auth, 111)
    assert [e["kind"] for e in events] == ["link_used", "submitted"]
    assert events[1]["detail"]["source"] == "telegram_link"
    assert events[0]["detail"]["link"] == made["id"]
    assert made["payload"] not in json.dumps(events)  # never the payload itself


def test_the_same_chat_again_is_a_duplicate_and_another_chat_is_refused(client, auth, clock):
    made = make_link(client, auth)
    open_link(client, clock, 111, made["payload"])
    clock.advance(5)
    open_link(client, clock, 111, made["payload"])
    [item] = rows(client, auth, token=111)
    assert history(client, auth, 111)[-1]["detail"]["duplicate"] is True

    open_link(client, clock, 222, made["payload"])  # forwarded to someone else
    assert rows(client, auth, token=222) == []
    [reused] = [e for e in history(client, auth, 222) if e["kind"] == "link_reused"]
    assert reused["detail"]["link"] == made["id"]
    assert status(client, auth, made["id"])["token"] == "111"


def test_a_link_expires_by_the_bridges_clock_not_the_updates_date(client, auth, clock):
    made = make_link(client, auth, contactId=7, ttl=60)
    date_before_expiry = telegram_date(clock, 10)
    clock.advance(61)
    assert status(client, auth, made["id"])["state"] == "expired"
    open_link(client, clock, 111, made["payload"], date=date_before_expiry)
    assert rows(client, auth) == []
    [rejected] = [e for e in history(client, auth, 111) if e["kind"] == "link_rejected"]
    assert (rejected["detail"]["reason"], rejected["detail"]["link"]) == ("expired", made["id"])
    assert status(client, auth, made["id"])["state"] == "expired"


def test_a_link_made_with_a_ttl_of_0_never_expires(make_app, auth, clock):
    app = make_app(
        TELEGRAM_BOT_USERNAME=BOT, TELEGRAM_WEBHOOK_SECRET=TG_SECRET, BRIDGE_LINK_TTL="0"
    )
    app.extensions["reteno_bridge"].ledger.clock = clock
    client = app.test_client()
    made = make_link(client, auth, contactId=7)
    assert made["expiresAt"] is None
    clock.advance(400 * 86400)
    assert status(client, auth, made["id"])["state"] == "pending"
    open_link(client, clock, 111, made["payload"])
    assert [r["contactId"] for r in rows(client, auth, token=111)] == [7]


def test_the_default_ttl_is_bridge_link_ttl(client, auth, clock):
    made = make_link(client, auth, contactId=7)
    assert datetime.fromisoformat(made["expiresAt"]) == clock.now + timedelta(days=30)


def test_a_revoked_link_registers_nothing(client, auth, clock):
    made = make_link(client, auth)
    assert client.delete(f"/links/{made['id']}", headers=auth).status_code == 204
    assert status(client, auth, made["id"])["state"] == "revoked"
    assert client.delete(f"/links/{made['id']}", headers=auth).status_code == 204  # again
    open_link(client, clock, 111, made["payload"])
    assert rows(client, auth) == []
    [rejected] = [e for e in history(client, auth, 111) if e["kind"] == "link_rejected"]
    assert rejected["detail"]["reason"] == "revoked"


def test_an_expired_link_and_a_used_one_can_be_revoked(client, auth, clock):
    old, used = make_link(client, auth, contactId=1, ttl=60), make_link(client, auth, contactId=2)
    open_link(client, clock, 111, used["payload"])
    clock.advance(61)
    assert client.delete(f"/links/{old['id']}", headers=auth).status_code == 204
    assert status(client, auth, old["id"])["state"] == "revoked"
    assert client.delete(f"/links/{used['id']}", headers=auth).status_code == 204
    assert status(client, auth, used["id"])["state"] == "revoked"
    [item] = rows(client, auth, token=111)  # its chat stays registered
    clock.advance(5)
    open_link(client, clock, 111, used["payload"])  # the bound chat again
    assert history(client, auth, 111)[-1]["kind"] == "link_rejected"
    assert history(client, auth, 111)[-1]["detail"]["reason"] == "revoked"
    assert [r["id"] for r in rows(client, auth, token=111)] == [item["id"]]


def test_a_used_link_past_its_expiry_registers_its_chat_no_more(client, auth, clock):
    made = make_link(client, auth, contactId=7, ttl=3600)
    open_link(client, clock, 111, made["payload"])
    clock.advance(600)
    open_link(client, clock, 111, made["payload"])  # within expiry: a duplicate
    assert history(client, auth, 111)[-1]["detail"]["duplicate"] is True
    registered = [e for e in history(client, auth, 111) if e["kind"] == "submitted"]
    clock.advance(3600)
    open_link(client, clock, 111, made["payload"])  # months later, say
    events = history(client, auth, 111)
    assert [e for e in events if e["kind"] == "submitted"] == registered
    assert events[-1]["kind"] == "link_rejected"
    assert (events[-1]["detail"]["reason"], events[-1]["detail"]["link"]) == ("expired", made["id"])


@pytest.mark.parametrize("link_id", ["0" * 32, "not-a-link-id", "A" * 32])
def test_an_unknown_link_is_404(client, auth, link_id):
    for method, path in (
        ("GET", f"/links/{link_id}"),
        ("DELETE", f"/links/{link_id}"),
        ("GET", f"/links/{link_id}/qr.svg"),
        ("GET", f"/links/{link_id}/qr.png"),
    ):
        assert_error_shape(client.open(path, method=method, headers=auth), 404)


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "identifiers"),
        ({"email": None}, "identifiers"),
        ({"ttl": 60}, "identifiers"),
        ({"contactId": 1, "token": 5}, "token"),  # a link is for a customer, not a chat
        ({"contactId": 1, "nickname": "ann"}, "nickname"),
        ({"email": "not-an-email"}, "email"),
        ({"contactId": 0}, "contactId"),
        ({"contactId": 1, "ttl": 0}, "ttl"),
        ({"contactId": 1, "ttl": -5}, "ttl"),
        ({"contactId": 1, "ttl": "0"}, "ttl"),
        ({"contactId": 1, "ttl": "366d"}, "ttl"),
        ({"contactId": 1, "ttl": 365 * 86400 + 1}, "ttl"),
        ({"contactId": 1, "ttl": "soon"}, "ttl"),
        ({"contactId": 1, "ttl": "12 h"}, "ttl"),
        ({"contactId": 1, "ttl": True}, "ttl"),
        ({"contactId": 1, "ttl": 1.5}, "ttl"),
    ],
)
def test_a_bad_link_request_is_422_and_stores_nothing(client, auth, bridge, body, field):
    body = assert_error_shape(client.post("/links", json=body, headers=auth), 422)
    assert field in body["errors"], body
    assert link_rows(bridge) == []


def test_the_longest_ttl_is_365_days(client, auth, clock):
    made = make_link(client, auth, contactId=1, ttl="365d")
    assert datetime.fromisoformat(made["expiresAt"]) == clock.now + timedelta(days=365)


def test_links_need_the_bots_username(client, make_app, auth, bridge):
    made = make_link(client, auth)
    without = make_app(TELEGRAM_WEBHOOK_SECRET=TG_SECRET).test_client()  # the same ledger
    body = assert_error_shape(without.post("/links", json={"contactId": 1}, headers=auth), 409)
    assert "TELEGRAM_BOT_USERNAME" in body["message"]
    assert len(link_rows(bridge)) == 1
    for drawing in ("qr.svg", "qr.png"):
        assert_error_shape(without.get(f"/links/{made['id']}/{drawing}", headers=auth), 409)
    assert status(without, auth, made["id"])["state"] == "pending"


@pytest.mark.parametrize(
    "payload",
    [
        "L" + "A" * 32,  # the form of a link, but no such link
        "forged",
        "L" + "A" * 31,  # truncated
    ],
)
def test_a_forged_or_truncated_payload_is_rejected(client, auth, clock, payload):
    made = make_link(client, auth)
    for bad in (payload, made["payload"][:-1], made["payload"] + "x"):
        open_link(client, clock, 111, bad)
    assert rows(client, auth) == []
    rejected = [e for e in history(client, auth, 111) if e["kind"] == "link_rejected"]
    assert len(rejected) == 3
    assert made["payload"] not in json.dumps(rejected)
    assert status(client, auth, made["id"])["state"] == "pending"


# --- two chats at once -------------------------------------------------------------------


def test_two_chats_opening_one_link_at_once_bind_exactly_one(make_app, auth):
    apps = [
        make_app(TELEGRAM_BOT_USERNAME=BOT, TELEGRAM_WEBHOOK_SECRET=TG_SECRET) for _ in range(2)
    ]
    for _round in range(5):
        made = make_link(apps[0].test_client(), auth, contactId=77)
        chats = (1000 + 2 * _round, 1001 + 2 * _round)
        barrier = threading.Barrier(2)
        errors = []

        def tap(app, chat, made=made, barrier=barrier, errors=errors):
            try:
                update = start_message(chat, int(time.time()), made["payload"])
                barrier.wait()
                telegram(app.test_client(), update, TG_SECRET)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=tap, args=(app, chat))
            for app, chat in zip(apps, chats, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        client = apps[0].test_client()
        bound = status(client, auth, made["id"])["token"]
        assert bound in {str(c) for c in chats}
        other = next(c for c in chats if str(c) != bound)
        mine = [r["token"] for r in rows(client, auth, contactId=77)]
        assert [t for t in mine if t in {str(c) for c in chats}] == [bound]
        assert "link_reused" in kinds(client, auth, other)
        assert rows(client, auth, token=other) == []


# --- the QR code -------------------------------------------------------------------------


def test_the_qr_code_reads_back_as_the_links_url(client, auth):
    made = make_link(client, auth)
    png = client.get(f"/links/{made['id']}/qr.png", headers=auth)
    assert png.status_code == 200 and png.content_type == "image/png"
    [found] = zxingcpp.read_barcodes(Image.open(io.BytesIO(png.data)))
    assert found.text == made["url"]

    svg = client.get(made["qr"], headers=auth)
    assert svg.status_code == 200 and svg.content_type == "image/svg+xml"
    own = io.BytesIO()
    segno.make_qr(made["url"]).save(
        own, kind="svg", scale=4, xmldecl=False, title="Open in Telegram"
    )
    assert svg.data == own.getvalue()


def test_the_qr_code_needs_the_key(client, auth):
    made = make_link(client, auth)
    assert_error_shape(client.get(made["qr"]), 401)


# --- chat first: claim codes -------------------------------------------------------------


def claim_code(client, auth, chat):
    response = client.post("/links/claims", json={"token": chat}, headers=auth)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def claim(client, auth, code, **identifiers):
    return client.post(f"/links/claims/{code}", json=identifiers or dict(ANN), headers=auth)


def test_a_claimed_code_registers_its_chat_once(client, auth, clock):
    made = claim_code(client, auth, 333)
    assert set(made) == {"code", "expiresAt"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", made["code"])
    assert datetime.fromisoformat(made["expiresAt"]) == clock.now + timedelta(minutes=15)
    clock.advance(60)
    response = claim(client, auth, made["code"])
    assert response.status_code == 202
    [registration] = response.get_json()["registrations"]
    assert (registration["token"], registration["matchedBy"], registration["state"]) == (
        "333",
        "externalCustomerId",
        "queued",
    )
    [item] = rows(client, auth, token=333)
    assert item["email"] == "ann@example.com"
    assert made["code"] not in json.dumps(history(client, auth, 333))

    again = assert_error_shape(claim(client, auth, made["code"], contactId=5), 410)
    assert "claimed already" in again["message"]
    assert len(rows(client, auth)) == 1


def test_an_expired_or_unknown_code_registers_nothing(client, auth, clock):
    made = claim_code(client, auth, 333)
    clock.advance(15 * 60)
    assert "expired" in assert_error_shape(claim(client, auth, made["code"]), 410)["message"]
    assert_error_shape(claim(client, auth, "no-such-code"), 404)
    assert rows(client, auth) == []


def test_a_code_of_a_chat_that_blocked_the_bot_since_registers_nothing(client, auth, clock):
    made = claim_code(client, auth, 333)
    clock.advance(30)
    telegram(client, chat_member(333, "kicked", "member", telegram_date(clock)), TG_SECRET)
    body = assert_error_shape(claim(client, auth, made["code"]), 409)
    assert "blocked the bot" in body["message"]
    assert rows(client, auth) == []


def test_a_block_before_the_code_was_made_does_not_count(client, auth, clock):
    telegram(client, chat_member(333, "kicked", "member", telegram_date(clock)), TG_SECRET)
    clock.advance(30)  # back, and asks for a code: no live registration is not a block
    made = claim_code(client, auth, 333)
    assert claim(client, auth, made["code"]).status_code == 202


def test_a_bad_claim_is_422_and_leaves_the_code_usable(client, auth, bridge):
    made = claim_code(client, auth, 333)
    for body in ({}, {"email": "nope"}, {"token": 5, "contactId": 1}):
        assert_error_shape(
            client.post(f"/links/claims/{made['code']}", json=body, headers=auth), 422
        )
    assert rows(client, auth) == []
    assert claim(client, auth, made["code"]).status_code == 202
    assert_error_shape(client.post("/links/claims", json={"token": "x"}, headers=auth), 422)


# --- erase --------------------------------------------------------------------------------


def test_erase_revokes_a_persons_links_and_keeps_no_personal_data(
    client, auth, runner, bridge, clock
):
    pending, used = make_link(client, auth), make_link(client, auth)
    other = make_link(client, auth, email="bob@example.com")
    open_link(client, clock, 111, used["payload"])
    code = claim_code(client, auth, 111)
    run_cli(runner, "erase", "--email", "ann@example.com", "--yes")

    assert status(client, auth, pending["id"])["state"] == "revoked"
    shown = status(client, auth, used["id"])
    assert (shown["state"], shown["token"]) == ("used", None)
    assert status(client, auth, other["id"])["state"] == "pending"
    for row in link_rows(bridge):
        if row.id == other["id"]:
            assert row.email == "bob@example.com"
            continue
        assert (row.contact_id, row.external_customer_id, row.phone, row.email, row.token) == (
            None,
            None,
            None,
            None,
            None,
        )
        assert row.reason == "erased"
    assert_error_shape(claim(client, auth, code["code"]), 410)
    open_link(client, clock, 222, pending["payload"])
    open_link(client, clock, 111, used["payload"])
    assert rows(client, auth) == []


def test_erase_of_a_customer_who_only_had_a_link(client, auth, runner, bridge):
    made = make_link(client, auth, phone="+380 95 649 09 55")
    result = run_cli(runner, "erase", "--phone", "380956490955", "--yes", "--json")
    # the link, and the tombstone of the phone under the old format's secret
    assert json.loads(result.output)["revoked"] == 2
    assert status(client, auth, made["id"])["state"] == "revoked"
    assert [row.phone for row in link_rows(bridge)] == [None]


# --- the old signed format ---------------------------------------------------------------


def test_a_signed_link_of_the_old_format_works_until_it_expires(client, auth, clock):
    fresh = links.make_payload(LINK_SECRET, "contactId", 41, clock.now + timedelta(minutes=5))
    stale = links.make_payload(LINK_SECRET, "contactId", 42, clock.now + timedelta(minutes=1))
    assert fresh.startswith("I") and stale.startswith("I")  # never an opaque one's "L"
    clock.advance(120)
    open_link(client, clock, 111, fresh)
    open_link(client, clock, 222, stale)
    assert [r["contactId"] for r in rows(client, auth)] == [41]
    assert history(client, auth, 222)[-1]["detail"]["reason"] == "expired"


# --- bridge link --qr ---------------------------------------------------------------------


def test_bridge_link_prints_the_qr_code_in_the_terminal(runner, client, auth, clock):
    result = run_cli(runner, "link", "--email", "ann@example.com", "--qr")
    url, *qr = result.stdout.splitlines()
    assert url.startswith(f"https://t.me/{BOT}?start=L")
    own = io.StringIO()
    segno.make_qr(url).terminal(out=own, compact=True)
    assert qr == own.getvalue().splitlines()
    link_id = re.search(r"link ([0-9a-f]{32})", result.stderr).group(1)
    open_link(client, clock, 111, url.split("?start=", 1)[1])
    assert status(client, auth, link_id)["token"] == "111"


def test_the_qr_path_is_under_the_bridges_mount(config, tmp_path, auth):
    host = Flask("host", instance_path=str(tmp_path / "host"))
    host.config.from_mapping({**config, "TELEGRAM_BOT_USERNAME": BOT})
    Bridge(host, url_prefix="/reteno")
    try:
        client = host.test_client()
        made = client.post(
            "/reteno/links",
            json={"contactId": 1},
            headers=auth,
            base_url="https://shop.example/api",
        ).get_json()
        assert made["qr"] == f"/api/reteno/links/{made['id']}/qr.svg"
        svg = client.get(made["qr"].removeprefix("/api"), headers=auth)
        assert svg.status_code == 200
    finally:
        host.extensions["reteno_bridge"].db.dispose()
