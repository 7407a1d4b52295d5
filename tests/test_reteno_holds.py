"""What Reteno still holds (``retenoHolds``): Reteno drops a token only when one of its own
sends fails with Forbidden, so a block the bridge hears of from Telegram leaves the token
on the contact, and the unblock after it sends nothing; a Forbidden from Reteno drops it,
and the chat is sent again (its mute too) once it is back.

Seen as a user sees it: the upstream calls (``requests_mock``, or the in-process
simulator's contacts), ``GET /tokens``, ``bridge tokens`` and the history. The ledger
runs on the suite's fake clock; Telegram dates whole seconds of it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import timedelta

import pytest
from alembic import command
from sqlalchemy import text

from bridge.db import alembic_config, make_engine, migrate
from tests.conftest import API_KEY, TOKENS_URL, Clock
from tests.helpers import history, register, rows, run_cli, start_message, telegram_date
from tests.test_mute import MUTE_URL, UNMUTE_URL
from tests.test_telegram import SECRET, blocked, dated, send, unblocked

CHAT = 123456789
FORBIDDEN = "Forbidden: bot was blocked by the user"


@pytest.fixture
def app(make_app):
    return make_app(TELEGRAM_WEBHOOK_SECRET=SECRET)


@pytest.fixture
def upstream(requests_mock):
    for url in (TOKENS_URL, MUTE_URL, UNMUTE_URL):
        requests_mock.post(url, json="OK")
    return requests_mock


def paths(requests_mock) -> list[str]:
    """The upstream calls made, by the last segment of their path."""
    return [r.url.rsplit("/", 1)[1] for r in requests_mock.request_history]


def telegram(client, clock, update, seconds=10):
    """``update`` arrives ``seconds`` later on the clock, dated the whole second it is."""
    clock.advance(seconds)
    assert send(client, dated(update, int(clock.now.timestamp()))).status_code == 200


def forbidden(client, auth, clock, at=None, seconds=10, **names):
    """Reteno's FAILED (Forbidden) for the chat (or ``names``), arriving ``seconds`` later,
    dated ``at`` (a time; default: when it arrives); the answer."""
    clock.advance(seconds)
    event = {"status": "FAILED", "error": FORBIDDEN, **(names or {"token": str(CHAT)})}
    if at is not None:
        event["time"] = at.replace(microsecond=0).isoformat()
    response = client.post("/statuses", json=[event], headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def held(client, auth, token=CHAT):
    """(state, retenoHolds) of the chat's registrations, newest first."""
    return [(r["state"], r["retenoHolds"]) for r in rows(client, auth, token=token)]


def unblock_result(client, auth, token=CHAT):
    [event] = [e for e in history(client, auth, token) if e["kind"] == "telegram_unblocked"][-1:]
    return event["detail"]["result"], event["detail"]["retenoHolds"]


@pytest.fixture
def delivered(client, auth, bridge, clock, upstream):
    """The chat registered and delivered: Reteno holds its token."""
    [first] = register(client, auth, {"token": CHAT, "contactId": 7})
    bridge.deliver_once()
    assert held(client, auth) == [("delivered", True)]
    return first["id"]


# --- an unblock -------------------------------------------------------------------------


def test_a_telegram_block_and_unblock_while_reteno_holds_the_token_sends_nothing(
    client, auth, bridge, clock, upstream, delivered, runner
):
    telegram(client, clock, blocked(CHAT))
    assert held(client, auth) == [("removed", True)]  # the ledger's; Reteno still has it
    telegram(client, clock, unblocked(CHAT))
    bridge.deliver_once()
    assert paths(upstream) == ["tokens"]

    again, first = rows(client, auth, token=CHAT)
    assert first["id"] == delivered
    assert (again["state"], again["retenoHolds"], again["contactId"]) == ("delivered", True, 7)
    assert again["conflict"] is False  # the chat's own identity again
    assert again["deliveredAt"] is None  # never sent itself; Reteno got the first one
    restored = [e for e in history(client, auth, CHAT) if e["kind"] == "restored"]
    assert restored[0]["detail"]["deliveredAt"] == first["deliveredAt"]
    assert again["lastSeenAt"] == clock.now.replace(microsecond=0).isoformat()
    assert [e["kind"] for e in history(client, auth, CHAT)] == [
        "submitted",
        "delivered",
        "removed",
        "restored",
        "telegram_unblocked",
    ]
    assert unblock_result(client, auth) == ("live again without a call", True)
    stats = json.loads(run_cli(runner, "stats", "--json").output)
    assert sum(day["delivered"] for day in stats["perDay"]) == 1  # one delivery, not two

    # and once more: the restored registration is what Reteno holds
    telegram(client, clock, blocked(CHAT))
    telegram(client, clock, unblocked(CHAT))
    bridge.deliver_once()
    assert paths(upstream) == ["tokens"]
    assert held(client, auth) == [("delivered", True), ("removed", True), ("removed", True)]


def test_a_forbidden_naming_the_contact_removes_a_chat_restored_after_its_block(
    client, auth, bridge, clock, upstream, delivered
):
    telegram(client, clock, blocked(CHAT))
    telegram(client, clock, unblocked(CHAT))  # live again; the removed one still held
    assert held(client, auth) == [("delivered", True), ("removed", True)]
    assert forbidden(client, auth, clock, contactId=7)["removed"] == [str(CHAT)]
    assert [state for state, _ in held(client, auth)] == ["removed", "removed"]


@pytest.mark.parametrize("story", ["reteno only", "telegram, then reteno", "reteno, then telegram"])
def test_an_unblock_after_reteno_dropped_the_token_sends_it_again(
    client, auth, bridge, clock, upstream, delivered, story
):
    if story.startswith("telegram"):
        telegram(client, clock, blocked(CHAT))
        answer = forbidden(client, auth, clock)  # a campaign failed: nothing live to remove
        assert answer["removed"] == []
    else:
        assert forbidden(client, auth, clock)["removed"] == [str(CHAT)]
        if story.endswith("telegram"):
            telegram(client, clock, blocked(CHAT))
    assert held(client, auth) == [("removed", False)]
    telegram(client, clock, unblocked(CHAT))
    assert held(client, auth) == [("queued", False), ("removed", False)]
    assert unblock_result(client, auth) == ("queued again", False)
    bridge.deliver_once()
    assert paths(upstream) == ["tokens", "tokens"]
    assert held(client, auth) == [("delivered", True), ("removed", False)]


def test_a_chat_never_delivered_is_sent_after_its_unblock(client, auth, bridge, clock, upstream):
    register(client, auth, {"token": CHAT, "contactId": 7})
    telegram(client, clock, blocked(CHAT))
    telegram(client, clock, unblocked(CHAT))
    assert held(client, auth) == [("queued", False), ("removed", False)]
    assert unblock_result(client, auth) == ("queued again", False)
    bridge.deliver_once()
    assert paths(upstream) == ["tokens"]
    assert upstream.request_history[0].json()["tokens"] == [{"token": str(CHAT), "contactId": 7}]
    assert held(client, auth) == [("delivered", True), ("removed", False)]


@pytest.mark.parametrize("other", [3, 9], ids=["sorting-before", "sorting-after"])
def test_an_unblock_sends_the_last_identity_when_reteno_holds_only_an_earlier_one(
    client, auth, bridge, clock, upstream, delivered, other
):
    # Reteno holds the chat under contact 7; the chat's last registration, under another
    # contact, had not gone out when the user blocked the bot: the comeback sends it
    register(client, auth, {"token": CHAT, "contactId": other})
    telegram(client, clock, blocked(CHAT))
    telegram(client, clock, unblocked(CHAT))
    assert unblock_result(client, auth) == ("queued again", False)
    bridge.deliver_once()
    assert paths(upstream) == ["tokens", "tokens"]
    assert upstream.request_history[1].json()["tokens"] == [
        {"token": str(CHAT), "contactId": other}
    ]
    assert held(client, auth)[0] == ("delivered", True)


def test_a_chat_queued_again_by_an_unblock_was_last_seen_at_the_unblocks_date(
    client, auth, bridge, clock, upstream
):
    register(client, auth, {"token": CHAT, "contactId": 7})
    telegram(client, clock, blocked(CHAT))
    clock.advance(60)
    dated_at = clock.now.replace(microsecond=0) - timedelta(seconds=30)  # after the block
    assert send(client, dated(unblocked(CHAT), int(dated_at.timestamp()))).status_code == 200
    assert unblock_result(client, auth) == ("queued again", False)
    assert rows(client, auth, token=CHAT)[0]["lastSeenAt"] == dated_at.isoformat()


def test_an_older_start_leaves_every_live_registrations_last_sign_of_life(
    client, auth, bridge, clock, upstream
):
    register(client, auth, {"token": CHAT, "contactId": 7}, {"token": CHAT, "contactId": 9})
    seen = [r["lastSeenAt"] for r in rows(client, auth, token=CHAT)]
    clock.advance(60)
    assert send(client, start_message(CHAT, telegram_date(clock, -90))).status_code == 200
    assert [r["lastSeenAt"] for r in rows(client, auth, token=CHAT)] == seen


def test_a_blocked_chat_cannot_be_muted_while_reteno_still_holds_its_token(
    client, auth, bridge, clock, upstream, delivered
):
    telegram(client, clock, blocked(CHAT))
    assert held(client, auth) == [("removed", True)]
    assert client.post("/mute", json={"token": CHAT}, headers=auth).status_code == 404
    bridge.deliver_once()
    assert paths(upstream) == ["tokens"]


def test_a_forbidden_in_the_second_of_the_delivery_drops_the_token(
    client, auth, bridge, clock, upstream
):
    # Reteno dates its events to the second: a failure in the delivery's second follows it
    clock.now = clock.now.replace(microsecond=500000)
    register(client, auth, {"token": CHAT, "contactId": 7})
    bridge.deliver_once()
    answer = forbidden(client, auth, clock, at=clock.now)
    assert answer["removed"] == [str(CHAT)]
    assert held(client, auth) == [("removed", False)]


def test_a_forbidden_older_than_the_delivery_leaves_the_token_held(
    client, auth, bridge, clock, upstream
):
    # Reteno failed a send, then took the token again from this delivery
    register(client, auth, {"token": CHAT, "contactId": 7})
    registered = clock.now
    clock.advance(60)
    bridge.deliver_once()
    answer = forbidden(client, auth, clock, at=registered + timedelta(seconds=30))
    assert answer["removed"] == [str(CHAT)]  # the user had blocked the bot: time decides
    assert held(client, auth) == [("removed", True)]
    telegram(client, clock, unblocked(CHAT))
    bridge.deliver_once()
    assert paths(upstream) == ["tokens"]
    assert unblock_result(client, auth) == ("live again without a call", True)


def test_late_news_of_a_forbidden_after_the_comeback_sends_the_chat_again(
    client, auth, bridge, clock, upstream, delivered
):
    # Telegram's block and unblock arrive first; Reteno's Forbidden from between them is
    # stale for the chat (it came back) but says Reteno no longer has the token
    telegram(client, clock, blocked(CHAT))
    failed_at = clock.now + timedelta(seconds=5)
    telegram(client, clock, unblocked(CHAT))
    assert held(client, auth)[0] == ("delivered", True)
    answer = forbidden(client, auth, clock, at=failed_at, seconds=600)
    assert (answer["removed"], answer["stale"]) == ([], 1)
    assert held(client, auth) == [("queued", False), ("removed", False)]
    assert history(client, auth, CHAT)[-1]["kind"] == "reteno_dropped"
    bridge.deliver_once()
    assert paths(upstream) == ["tokens", "tokens"]
    assert held(client, auth)[0] == ("delivered", True)
    # the same news again changes nothing more
    forbidden(client, auth, clock, at=failed_at)
    bridge.deliver_once()
    assert paths(upstream) == ["tokens", "tokens"]
    assert held(client, auth)[0] == ("delivered", True)


def test_an_ambiguous_forbidden_drops_nothing(client, auth, bridge, clock, upstream):
    register(client, auth, {"token": CHAT, "contactId": 7}, {"token": 555, "contactId": 7})
    bridge.deliver_once()
    assert forbidden(client, auth, clock, contactId=7)["ambiguous"] == 1
    assert held(client, auth) + held(client, auth, 555) == [("delivered", True)] * 2


def test_a_forbidden_by_identifier_is_ambiguous_while_reteno_holds_a_blocked_chat(
    client, auth, bridge, clock, upstream
):
    """Reteno sends to every token on the contact card, the token of a chat that blocked
    the bot through Telegram among them: a Forbidden naming only the contact may be that
    chat's, so the one live chat of the contact is not removed by guess; nor is a sign of
    life given to it."""
    register(client, auth, {"token": CHAT, "contactId": 7}, {"token": 555, "contactId": 7})
    bridge.deliver_once()
    telegram(client, clock, blocked(555))
    assert held(client, auth, 555) == [("removed", True)]
    seen = rows(client, auth, token=CHAT)[0]["lastSeenAt"]

    answer = forbidden(client, auth, clock, contactId=7)
    assert (answer["ambiguous"], answer["removed"]) == (1, [])
    assert held(client, auth) == [("delivered", True)]
    [event] = [e for e in history(client, auth, CHAT) if e["kind"] == "status_ambiguous"]
    assert event["detail"]["candidates"] == sorted([str(CHAT), "555"])

    clock.advance(10)
    response = client.post("/statuses", json=[{"status": "SENT", "contactId": 7}], headers=auth)
    assert response.status_code == 200
    assert rows(client, auth, token=CHAT)[0]["lastSeenAt"] == seen


def test_a_forbidden_naming_the_chat_is_never_ambiguous(client, auth, bridge, clock, upstream):
    register(client, auth, {"token": CHAT, "contactId": 7}, {"token": 555, "contactId": 7})
    bridge.deliver_once()
    telegram(client, clock, blocked(555))
    assert forbidden(client, auth, clock)["removed"] == [str(CHAT)]


# --- what a new registration of the chat inherits -------------------------------------------


def test_a_new_registration_inherits_what_reteno_holds_for_its_identity(
    client, auth, bridge, clock, upstream, delivered
):
    telegram(client, clock, blocked(CHAT))
    [same] = register(client, auth, {"token": CHAT, "contactId": 7})
    assert (same["state"], same["duplicate"]) == ("queued", False)
    assert held(client, auth)[0] == ("queued", True)  # on contact 7's card already
    forbidden(client, auth, clock)
    assert held(client, auth) == [("removed", False), ("removed", False)]
    register(client, auth, {"token": CHAT, "email": "ann@example.com"})
    assert rows(client, auth, token=CHAT)[0]["retenoHolds"] is False


# --- mutes ----------------------------------------------------------------------------------


@pytest.fixture
def muted(client, auth, bridge, upstream, delivered):
    assert client.post("/mute", json={"token": CHAT}, headers=auth).status_code == 202
    bridge.deliver_once()
    assert paths(upstream) == ["tokens", "mute"]


def test_a_mute_is_not_sent_again_while_reteno_holds_the_token(
    client, auth, bridge, clock, upstream, muted
):
    telegram(client, clock, blocked(CHAT))
    telegram(client, clock, unblocked(CHAT))
    bridge.deliver_once()
    assert paths(upstream) == ["tokens", "mute"]
    assert rows(client, auth, token=CHAT)[0]["muted"] is True
    assert history(client, auth, CHAT)[-1]["kind"] == "telegram_unblocked"


@pytest.mark.parametrize(
    "story", ["forbidden", "telegram, then forbidden", "telegram, unblock, late forbidden"]
)
def test_a_mute_is_sent_again_once_reteno_dropped_the_token(
    client, auth, bridge, clock, upstream, muted, story
):
    failed_at = None
    if story.startswith("telegram"):
        telegram(client, clock, blocked(CHAT))
        failed_at = clock.now + timedelta(seconds=5)
    if "unblock" in story:
        telegram(client, clock, unblocked(CHAT))
    forbidden(client, auth, clock, at=failed_at)
    if "unblock" not in story:
        bridge.deliver_once()
        assert paths(upstream) == ["tokens", "mute"]  # the mute waits for the chat
        telegram(client, clock, unblocked(CHAT))
    bridge.deliver_once()
    assert paths(upstream) == ["tokens", "mute", "tokens", "mute"]
    assert [e["kind"] for e in history(client, auth, CHAT)][-2:] == ["delivered", "mute_delivered"]


# --- reading the ledger, the simulator --------------------------------------------------


def test_bridge_tokens_shows_what_reteno_holds(
    runner, client, auth, bridge, clock, upstream, delivered
):
    register(client, auth, {"token": 555, "contactId": 8})
    table = run_cli(runner, "tokens").output
    assert "RETENO HOLDS" in table.splitlines()[0]
    held_rows = [line.split()[0] for line in table.splitlines()[2:] if "yes" in line.split()]
    assert held_rows == [str(delivered)]
    items = json.loads(run_cli(runner, "tokens", "--json").output)["items"]
    assert {i["token"]: i["retenoHolds"] for i in items} == {str(CHAT): True, "555": False}


@pytest.mark.real_http
def test_the_simulator_shows_the_token_once_after_a_block_and_unblock(make_app):
    app = make_app(
        RETENO_APP_UUID=None,
        RETENO_API_KEY=None,
        BRIDGE_SANDBOX=True,
        TELEGRAM_WEBHOOK_SECRET=SECRET,
    )
    runtime = app.extensions["reteno_bridge"]
    clock = runtime.ledger.clock = Clock()
    client = app.test_client()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    register(client, auth, {"token": CHAT, "contactId": 7})
    runtime.deliver_once()
    telegram(client, clock, blocked(CHAT))
    telegram(client, clock, unblocked(CHAT))
    runtime.deliver_once()
    assert [c["tokens"] for c in runtime.simulator.find_by_token(str(CHAT))] == [[str(CHAT)]]
    assert runtime.simulator.stats()["tokens_received"] == 1

    runtime.simulator.block(str(CHAT))  # Reteno's own send fails: it drops the token
    runtime.deliver_once()
    assert [c["tokens"] for c in runtime.simulator.find_by_token(str(CHAT))] == [[str(CHAT)]]
    assert runtime.simulator.stats()["tokens_received"] == 2
    assert held(client, auth)[0] == ("delivered", True)


# --- the migration ------------------------------------------------------------------------


def test_the_migration_counts_only_live_deliveries_as_held(tmp_path):
    # a removed registration cannot tell whether Reteno dropped it: sent again, as before
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = make_engine(url)
    cfg = alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0006")
        for rid, state, delivered_at in (
            (1, "delivered", "'2026-11-01 00:00:00'"),
            (2, "removed", "'2026-11-01 00:00:00'"),
            (3, "queued", "NULL"),
        ):
            conn.execute(
                text(
                    "INSERT INTO bridge_registrations (id, token, contact_id, matched_by, "
                    "match_value, state, attempts, created_at, updated_at, delivered_at) VALUES "
                    f"({rid}, '{rid}', {rid}, 'contactId', '{rid}', '{state}', 1, "
                    f"'2026-11-01 00:00:00', '2026-11-01 00:00:00', {delivered_at})"
                )
            )
    engine.dispose()
    migrate(url)
    with sqlite3.connect(url.split("///", 1)[1]) as conn:
        assert conn.execute(
            "SELECT id, reteno_holds FROM bridge_registrations ORDER BY id"
        ).fetchall() == [(1, 1), (2, 0), (3, 0)]


def test_the_log_says_whether_an_unblock_queued_the_chat_or_found_reteno_holding_it(
    client, auth, bridge, clock, upstream, delivered, caplog
):
    """An operator reading the log is told which way an unblock went, and an unblock of a
    chat still live queues nothing."""
    with caplog.at_level(logging.INFO, logger="bridge.telegram"):
        telegram(client, clock, unblocked(CHAT))  # still live: a sign of life only
        telegram(client, clock, blocked(CHAT))
        telegram(client, clock, unblocked(CHAT))  # Reteno holds it
        forbidden(client, auth, clock)
        telegram(client, clock, unblocked(CHAT))  # Reteno dropped it
    lines = [r.getMessage() for r in caplog.records if "unblocked the bot" in r.getMessage()]
    assert len(lines) == 2
    assert "live again (Reteno holds the token)" in lines[0] and " queued " not in lines[0]
    assert " queued (was " in lines[1]


CHAT_A, CHAT_B = 111111111, 222222222


def ann_with_one_chat_reteno_holds(client, auth, bridge, clock):
    """Ann's two chats delivered; Reteno dropped B's token (a Forbidden for B), and A
    blocked the bot through Telegram, so Reteno still holds A's."""
    register(
        client,
        auth,
        {"token": CHAT_A, "email": "ann@example.com"},
        {"token": CHAT_B, "email": "ann@example.com"},
    )
    bridge.deliver_once()
    forbidden(client, auth, clock, token=str(CHAT_B))
    telegram(client, clock, blocked(CHAT_A))
    return CHAT_A, CHAT_B


def test_a_forbidden_naming_the_contact_drops_the_one_chat_reteno_still_held(
    client, auth, bridge, clock, upstream
):
    """Ann has two chats. Reteno dropped B's token (a Forbidden for B); A blocked the bot
    through Telegram, so Reteno still holds A's. A Forbidden naming her e-mail is A's (the
    one token left on her card): Reteno dropped it, and A's unblock sends it again."""
    chat_a, chat_b = ann_with_one_chat_reteno_holds(client, auth, bridge, clock)
    assert (held(client, auth, chat_a), held(client, auth, chat_b)) == (
        [("removed", True)],
        [("removed", False)],
    )

    forbidden(client, auth, clock, email="ann@example.com")
    assert held(client, auth, chat_a) == [("removed", False)]
    telegram(client, clock, unblocked(chat_a))
    bridge.deliver_once()
    assert paths(upstream) == ["tokens", "tokens"]
    assert held(client, auth, chat_a) == [("delivered", True), ("removed", False)]
    assert unblock_result(client, auth, chat_a) == ("queued again", False)


def test_a_forbidden_naming_the_contact_is_remembered_as_the_held_chats_block(
    client, auth, bridge, clock, upstream
):
    """The same two chats: the Forbidden naming her e-mail is A's, and A has nothing
    live, so it is remembered as A's latest block: an unblock dated before it (and after
    the Telegram block) is stale, and nothing is sent."""
    chat_a, chat_b = ann_with_one_chat_reteno_holds(client, auth, bridge, clock)
    between = int(clock.now.timestamp()) + 5
    forbidden(client, auth, clock, email="ann@example.com")  # 10 s after the block

    clock.advance(10)
    assert send(client, dated(unblocked(chat_a), between)).status_code == 200
    bridge.deliver_once()
    assert paths(upstream) == ["tokens"]
    assert held(client, auth, chat_a) == [("removed", False)]
    [stale] = [e for e in history(client, auth, chat_a) if e["kind"] == "telegram_stale"]
    assert stale["detail"]["result"] == "the chat was blocked after this update"
