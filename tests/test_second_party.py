"""Rules that involve a second party: another chat, another identity, another lane.

An audit of the suite (issue 23, §5) made plausible bugs by hand; those nothing
caught all broke a rule about someone other than the chat a test looked at. Each
test here fails on one of them (named in its docstring), and reads what a user
sees: the HTTP answers, ``GET /tokens``, the history and the calls made upstream.

* **another chat**: a deep link binds to its first chat even when that chat already
  had the identifier (a duplicate first use), so the link forwarded to a second chat
  registers nothing; one link's use never makes another link read as used; a block
  of a chat with nothing live moves that chat's latest removal only, never another
  chat's (every chat checked at the end);
* **another identity**: a held conflict stays held while a third identity of the chat
  is live, and is released once none is (removals through the stale-token report);
* **another lane's precondition**: a mute is not sent while its chat's registration is
  waiting, dead-lettered or held, in a pass where the mute lane does run (another
  chat's mute goes out in it); a mute with under 5 s left lapses unsent;
* a replayed body of 1,000 status events records nothing again, for every chat it
  names (across the ledger's pages of fingerprints, ``bridge.db.in_pages``);
* a sign of life naming only an identifier that several live chats share touches
  none of them.

Time is the ``clock`` fixture's; Telegram updates are dated on it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bridge import links
from tests.conftest import TOKENS_URL
from tests.helpers import (
    chat_member,
    history,
    register,
    rows,
    run_cli,
    start_message,
    telegram,
    telegram_date,
)

TG_SECRET = "tg-webhook-secret_0123456789"
LINK_SECRET = "link-secret-" + "x" * 24
BOT = "my_test_bot"
MUTE_URL = TOKENS_URL.removesuffix("/tokens") + "/token/mute"
BLOCKED = "Forbidden: bot was blocked by the user"
DAY = 24 * 3600


@pytest.fixture
def app(make_app):
    """Conflicts held; Telegram's webhook and deep links on."""
    return make_app(
        BRIDGE_ON_CONFLICT="hold",
        TELEGRAM_WEBHOOK_SECRET=TG_SECRET,
        BRIDGE_LINK_SECRET=LINK_SECRET,
        TELEGRAM_BOT_USERNAME=BOT,
    )


def kinds(client, auth, token):
    return [e["kind"] for e in history(client, auth, token)]


def post_statuses(client, auth, body):
    response = client.post("/statuses", json=body, headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def seconds(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso).timestamp()


# --- another chat: deep links --------------------------------------------------------------


def test_a_link_first_opened_by_a_chat_that_had_its_identifier_still_binds_to_it(
    client, auth, runner, clock
):
    """Bug caught: ``use_link`` records the link as used only when its registration is
    new, so a duplicate first use leaves the link free for the next chat."""
    [mine] = register(client, auth, {"token": 111, "contactId": 9})
    link = run_cli(runner, "link", "--contact-id", "9").stdout.strip()
    payload = link.split("?start=", 1)[1]
    clock.advance(10)
    telegram(client, start_message(111, telegram_date(clock), payload), TG_SECRET)
    [item] = rows(client, auth, token=111)  # a duplicate of the registration it had
    assert item["id"] == mine["id"] and item["contactId"] == 9
    assert kinds(client, auth, 111)[-2:] == ["link_used", "submitted"]  # bound, then registered

    clock.advance(10)  # the link forwarded to another chat
    telegram(client, start_message(222, telegram_date(clock), payload), TG_SECRET)
    assert rows(client, auth, token=222) == []
    assert kinds(client, auth, 222) == ["link_reused"]
    assert [r["token"] for r in rows(client, auth, contactId=9)] == ["111"]


def test_one_links_use_never_makes_another_link_read_as_used(client, auth, clock):
    """Bug caught: ``use_link`` looks for any ``link_used`` event, not this link's, so
    the first link opened anywhere makes every other link ``link_reused``."""
    for_nine = links.make_payload(LINK_SECRET, "contactId", 9)
    for_ten = links.make_payload(LINK_SECRET, "contactId", 10)
    # another link for the same contact: a link of its own
    nine_again = links.make_payload(LINK_SECRET, "contactId", 9, clock.now + timedelta(days=1))
    for chat, payload in ((111, for_nine), (222, for_ten), (333, nine_again)):
        clock.advance(10)
        telegram(client, start_message(chat, telegram_date(clock), payload), TG_SECRET)
    assert {r["token"]: r["contactId"] for r in rows(client, auth)} == {
        "111": 9,
        "222": 10,
        "333": 9,
    }
    for chat in (111, 222, 333):
        assert kinds(client, auth, chat) == ["submitted", "link_used"]
    clock.advance(10)  # and each is still bound to its own chat
    telegram(client, start_message(444, telegram_date(clock), for_ten), TG_SECRET)
    assert kinds(client, auth, 444) == ["link_reused"]


# --- another chat: a block of a chat with nothing live ---------------------------------------


def block(client, auth, how, token, date):
    if how == "telegram":
        telegram(client, chat_member(token, "kicked", "member", date), TG_SECRET)
    else:
        post_statuses(
            client, auth, {"status": "FAILED", "error": BLOCKED, "token": str(token), "time": date}
        )


@pytest.mark.parametrize("how", ["telegram", "statuses"])
def test_a_block_of_a_chat_with_nothing_live_moves_that_chats_removal_only(
    client, auth, clock, how
):
    """Bug caught: ``remember_block`` finds the latest removed registration of any chat
    (not of the blocked one) and moves its ``removedAt``."""
    register(client, auth, *[{"token": t, "contactId": t} for t in (301, 302, 303)])
    clock.advance(10)
    first = telegram_date(clock)
    block(client, auth, how, 303, first)
    clock.advance(10)
    others = telegram_date(clock)
    block(client, auth, how, 301, others)
    block(client, auth, how, 302, others)
    clock.advance(10)
    again = telegram_date(clock)
    block(client, auth, how, 303, again)  # nothing live: the block is remembered

    removed_at = {r["token"]: seconds(r["removedAt"]) for r in rows(client, auth)}
    assert removed_at == {"301": others, "302": others, "303": again}
    assert {r["state"] for r in rows(client, auth)} == {"removed"}
    # what it is for: an unblock older than that block changes nothing
    telegram(client, chat_member(303, "member", "kicked", again - 5), TG_SECRET)
    assert [r["state"] for r in rows(client, auth, token=303)] == ["removed"]
    assert kinds(client, auth, 303)[-1] == "telegram_stale"


# --- another identity: a held conflict and a third identity ---------------------------------

ANN = {"token": 4100, "email": "ann@example.com"}
BOB = {"token": 4100, "email": "bob@example.com"}
CAT = {"token": 4100, "email": "cat@example.com"}


def states_by_email(client, auth):
    return {r["email"]: r["state"] for r in rows(client, auth, token=4100)}


def stale_remove(runner, days=30):
    return run_cli(runner, "stale", "--days", str(days), "--remove", "--yes").output


def test_a_held_identity_waits_while_a_released_third_one_is_live(client, auth, runner, clock):
    """Bug caught: ``release_held`` releases a held registration when at most two
    identities of its chat are live, or when the one it was held for goes, though
    another is still live (Reteno would put the chat on two contact cards)."""
    register(client, auth, ANN)
    clock.advance(20 * DAY)
    [cat] = register(client, auth, CAT)
    assert cat["state"] == "held"
    run_cli(runner, "conflicts", "release", str(cat["id"]))
    clock.advance(20 * DAY)
    [bob] = register(client, auth, BOB)
    assert bob["state"] == "held"
    clock.advance(DAY)  # ANN quiet for 41 days, CAT for 21, BOB for 1
    assert "removed 1 registration" in stale_remove(runner)
    assert states_by_email(client, auth) == {
        "ann@example.com": "removed",
        "cat@example.com": "queued",
        "bob@example.com": "held",
    }
    clock.advance(14 * DAY)  # CAT quiet for 35 days, BOB for 15
    assert "removed 1 registration" in stale_remove(runner)
    assert states_by_email(client, auth) == {
        "ann@example.com": "removed",
        "cat@example.com": "removed",
        "bob@example.com": "queued",
    }
    assert kinds(client, auth, 4100)[-2:] == ["removed", "released"]


def test_two_held_identities_wait_for_each_other(client, auth, runner, clock):
    """Bug caught: ``release_held`` counts only the chat's live registrations that are
    not held, so two held identities are both released once the first one goes."""
    register(client, auth, ANN)
    clock.advance(20 * DAY)
    assert register(client, auth, BOB)[0]["state"] == "held"
    clock.advance(5 * DAY)
    assert register(client, auth, CAT)[0]["state"] == "held"
    clock.advance(10 * DAY)  # ANN quiet for 35 days, BOB for 15, CAT for 10
    assert "removed 1 registration" in stale_remove(runner)
    assert states_by_email(client, auth) == {
        "ann@example.com": "removed",
        "bob@example.com": "held",
        "cat@example.com": "held",
    }
    clock.advance(17 * DAY)  # BOB quiet for 32 days, CAT for 27
    assert "removed 1 registration" in stale_remove(runner)
    assert states_by_email(client, auth) == {
        "ann@example.com": "removed",
        "bob@example.com": "removed",
        "cat@example.com": "queued",
    }


# --- another lane's precondition: mutes ------------------------------------------------------

CHAT, OTHER = "5551234", "5550000"


def upstream_calls(requests_mock):
    """(last path segment, the token) of every upstream call."""
    out = []
    for r in requests_mock.request_history:
        body = r.json()
        out.append(
            (
                r.url.rsplit("/", 1)[1],
                body["token"] if "token" in body else [t["token"] for t in body["tokens"]],
            )
        )
    return out


def mute(client, auth, token, **body):
    response = client.post("/mute", json={"token": token, **body}, headers=auth)
    assert response.status_code == 202, response.get_json()


@pytest.fixture
def other_chat(client, auth, bridge, requests_mock):
    """Another chat Reteno knows (its mute goes out as soon as the mute lane runs)."""
    requests_mock.post(TOKENS_URL, json="OK")
    requests_mock.post(MUTE_URL, json="OK")
    register(client, auth, {"token": OTHER, "contactId": 1})
    assert bridge.deliver_once()["delivered"] == 1
    requests_mock.reset_mock()
    return OTHER


def test_a_mute_waits_while_its_chats_registration_waits_for_a_retry(
    client, auth, bridge, clock, requests_mock, other_chat
):
    """Bug caught: ``claim_mutes`` sends a mute whatever its chat's registration is
    (the precondition "Reteno knows the chat" left out or widened to queued)."""
    requests_mock.post(TOKENS_URL, status_code=503)
    register(client, auth, {"token": CHAT, "contactId": 7})
    mute(client, auth, CHAT)
    mute(client, auth, OTHER)
    bridge.deliver_once()  # the registration fails and waits for its retry: the pass ends
    assert upstream_calls(requests_mock) == [("tokens", [CHAT])]
    bridge.deliver_once()  # no registration due: the mute lane runs
    assert upstream_calls(requests_mock) == [("tokens", [CHAT]), ("mute", OTHER)]
    requests_mock.post(TOKENS_URL, json="OK")
    clock.advance(600)
    bridge.deliver_once()
    assert upstream_calls(requests_mock)[2:] == [("tokens", [CHAT]), ("mute", CHAT)]


def test_a_mute_waits_while_its_chats_registration_is_a_dead_letter(
    client, auth, bridge, requests_mock, runner, other_chat
):
    """Bug caught: ``claim_mutes`` takes a dead-lettered registration for one Reteno
    knows (any state but queued, or any live state)."""
    requests_mock.post(TOKENS_URL, status_code=400, json={"message": "token is invalid"})
    register(client, auth, {"token": CHAT, "contactId": 7})
    mute(client, auth, CHAT)
    mute(client, auth, OTHER)
    bridge.deliver_once()  # a 400 for the one token: a dead letter; the pass goes on
    assert rows(client, auth, token=CHAT)[0]["state"] == "dead"
    assert upstream_calls(requests_mock) == [("tokens", [CHAT]), ("mute", OTHER)]
    requests_mock.post(TOKENS_URL, json="OK")
    run_cli(runner, "requeue", "--token", CHAT)
    bridge.deliver_once()
    assert upstream_calls(requests_mock)[2:] == [("tokens", [CHAT]), ("mute", CHAT)]


def test_a_mute_waits_while_its_chats_registration_is_held(
    client, auth, bridge, clock, requests_mock, runner, other_chat
):
    """Bug caught: ``claim_mutes`` takes a held registration for one Reteno knows."""
    requests_mock.post(TOKENS_URL, status_code=503)
    register(client, auth, {"token": CHAT, "contactId": 7})
    bridge.deliver_once()  # waits for its retry
    [held] = register(client, auth, {"token": CHAT, "contactId": 8})
    assert held["state"] == "held"
    mute(client, auth, CHAT)
    mute(client, auth, OTHER)
    bridge.deliver_once()  # no registration due (one waits, one is held): mutes run
    assert upstream_calls(requests_mock) == [("tokens", [CHAT]), ("mute", OTHER)]
    run_cli(runner, "conflicts", "release", str(held["id"]))
    requests_mock.post(TOKENS_URL, json="OK")
    clock.advance(600)
    bridge.deliver_once()
    assert upstream_calls(requests_mock)[2:] == [("tokens", [CHAT, CHAT]), ("mute", CHAT)]


@pytest.mark.parametrize(("left", "sent"), [(4, False), (5, True)])
def test_a_mute_with_under_five_seconds_left_lapses(
    client, auth, bridge, clock, requests_mock, left, sent
):
    """Bug caught: ``claim_mutes`` lapses only a mute whose time is over (or also one
    with exactly 5 s left): Reteno refuses a mute shorter than 5 s."""
    requests_mock.post(TOKENS_URL, [{"status_code": 503}, {"json": "OK"}])
    requests_mock.post(MUTE_URL, json="OK")
    register(client, auth, {"token": CHAT, "contactId": 7})
    mute(client, auth, CHAT, duration=60)
    bridge.deliver_once()  # the registration waits for its retry; so does the mute
    clock.advance(60 - left)
    bridge.deliver_once()
    mutes = [r.json() for r in requests_mock.request_history if r.url == MUTE_URL]
    assert mutes == ([{"token": CHAT, "duration": 5}] if sent else [])
    assert ("mute_lapsed" in kinds(client, auth, CHAT)) is not sent


# --- a replayed body of 1,000 status events ----------------------------------------------------

CHATS = [str(9000 + n) for n in range(25)]


def test_a_replayed_body_of_a_thousand_events_records_nothing_again_for_any_chat(
    client, auth, clock
):
    """Bug caught: an off-by-one in the ledger's pages of fingerprints
    (``reports._seen_fingerprints``, ``bridge.db.in_pages``: 256 at a time, then 64, 16
    and the rest): the events at a page's edge (the 256th, the 257th, the 1,000th) are
    recorded again on a replay."""
    register(client, auth, *[{"token": t, "contactId": int(t)} for t in CHATS])
    clock.advance(60)
    body = [
        {
            "status": "SENT",
            "token": CHATS[n % len(CHATS)],
            "messageId": f"m-{n}",
            "time": telegram_date(clock, -30),
        }
        for n in range(1000)
    ]
    assert post_statuses(client, auth, body)["processed"] == 1000
    before = {t: history(client, auth, t) for t in CHATS}
    assert all(len(events) == 1 + 40 for events in before.values())
    clock.advance(60)
    again = post_statuses(client, auth, body)
    assert again == {
        "processed": 1000,
        "removed": [],
        "unmatched": 0,
        "ignored": 0,
        "stale": 0,
        "ambiguous": 0,
    }
    assert {t: history(client, auth, t) for t in CHATS} == before


# --- a sign of life naming an identifier several chats share -------------------------------------


def test_a_sign_of_life_naming_a_shared_identifier_touches_none_of_its_chats(client, auth, clock):
    """Bug caught: a SENT / DELIVERED / CLICKED event whose identifier matches several
    live chats moves their ``lastSeenAt`` (all of them, or the first) by guess."""
    register(
        client,
        auth,
        {"token": 801, "email": "shared@example.com"},
        {"token": 802, "email": "shared@example.com"},
        {"token": 803, "email": "solo@example.com"},
    )
    seen = {r["token"]: r["lastSeenAt"] for r in rows(client, auth)}
    clock.advance(60)
    when = clock.now - timedelta(seconds=30)
    written = when.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    post_statuses(
        client,
        auth,
        [
            {"status": "SENT", "email": "shared@example.com", "time": int(when.timestamp())},
            {
                "activityStatus": "DELIVERED",
                "email": "shared@example.com",
                "activityDateTime": written,
                "mediaType": "telegrambot",
                "messageId": 1,
            },
            {"status": "CLICKED", "email": "shared@example.com", "time": int(when.timestamp())},
            {"status": "SENT", "email": "solo@example.com", "time": int(when.timestamp())},
        ],
    )
    after = {r["token"]: r["lastSeenAt"] for r in rows(client, auth)}
    assert (after["801"], after["802"]) == (seen["801"], seen["802"])
    assert seconds(after["803"]) == int(when.timestamp())  # one chat: its sign of life
