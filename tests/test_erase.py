"""``bridge erase``: one contact's personal data leaves the database, an audit line stays."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, or_, select, text

from bridge import links
from bridge.db import migrate
from bridge.ledger import erasure
from bridge.models import Command, Event, Registration
from tests.conftest import TOKENS_URL
from tests.helpers import history, register, rows

ANN_TOKEN = "123456789"
ANN_OTHER_CHAT = "555666777"
ANN_LINK_CHAT = "777888999"  # Ann's third chat: a plain /start, links, blocks
ANN_EMAIL = "ann@example.com"
ANN_PHONE = "380956490955"
TELEGRAM_SECRET = "tg-webhook-secret_0123456789"
LINK_SECRET = "link-secret-" + "x" * 24
ANN_LINK = links.make_payload(LINK_SECRET, "email", ANN_EMAIL)  # never expires


@pytest.fixture
def app(make_app):
    return make_app(
        TELEGRAM_WEBHOOK_SECRET=TELEGRAM_SECRET,
        BRIDGE_LINK_SECRET=LINK_SECRET,
        TELEGRAM_BOT_USERNAME="erase_test_bot",
    )


_update_ids = iter(range(900_000_000, 999_999_999))


def telegram(client, clock, chat, **update):
    """One Telegram update about private chat ``chat``, dated by the ledger's clock."""
    date = int(clock().timestamp())
    private = {"id": int(chat), "type": "private", "first_name": "A"}
    if "text" in update:
        body = {
            "message": {
                "message_id": 1,
                "date": date,
                "chat": private,
                "from": {"id": int(chat), "is_bot": False, "first_name": "A"},
                "text": update["text"],
            }
        }
    else:
        member = {"user": {"id": 7000000001, "is_bot": True, "first_name": "Bot"}}
        body = {
            "my_chat_member": {
                "chat": private,
                "from": {"id": int(chat), "is_bot": False, "first_name": "A"},
                "date": date,
                "old_chat_member": {**member, "status": update["old"]},
                "new_chat_member": {**member, "status": update["new"]},
            }
        }
    response = client.post(
        "/telegram/webhook",
        json={"update_id": next(_update_ids), **body},
        headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET},
    )
    assert response.status_code == 200, response.get_json()


def statuses(client, auth, body):
    response = client.post("/statuses", json=body, headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def dump(bridge) -> str:
    """Every row of every table of the bridge's database, as text."""
    lines = []
    engine = bridge.db.engine
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                lines.append(f"{table}: {json.dumps(list(row), default=str)}")
    return "\n".join(lines)


def mentions(haystack: str, number: str) -> bool:
    return re.search(rf"(?<!\d){re.escape(number)}(?!\d)", haystack) is not None


def has_ann_email(haystack: str) -> bool:
    # "joann@example.com" is someone else
    return re.search(r"(?<![\w.+-])ann@example\.com", haystack, re.IGNORECASE) is not None


@pytest.fixture
def ledger_with_ann(client, auth, bridge, requests_mock, clock):
    """Ann's data everywhere a contact's data can be, next to Bob's and Joann's: Telegram
    events with her chat ids and no registration, her deep link used, a mute."""
    # A status about Ann before she registered: unmatched, kept with its raw payload.
    assert (
        statuses(
            client,
            auth,
            {
                "activityStatus": "SENT",
                "email": "Ann@Example.COM",
                "mediaType": "TELEGRAM",
                "messageId": 1,
            },
        )["unmatched"]
        == 1
    )
    register(
        client,
        auth,
        {
            "token": int(ANN_TOKEN),
            "contactId": 42,
            "externalCustomerId": "crm-ann",
            "phone": "+380 (95) 649-09-55",
            "email": "Ann@Example.com",
        },
        {"token": ANN_TOKEN, "contactId": 4242},  # the same chat under another identifier
        {"token": 987654321, "phone": "+44 20 7946 0958", "email": "bob@example.com"},
        {"token": 1234567890, "email": "joann@example.com"},  # look-alikes of Ann's values
    )
    requests_mock.post(TOKENS_URL, json="OK")
    bridge.deliver_once()
    # Ann's second chat, refused by Reteno with a message that quotes her address.
    register(client, auth, {"token": int(ANN_OTHER_CHAT), "email": ANN_EMAIL})
    requests_mock.post(
        TOKENS_URL,
        status_code=400,
        reason="Bad Request",
        json={"message": f"contact {ANN_EMAIL} is invalid"},
    )
    bridge.deliver_once()
    # Bob's second chat waits after an outage whose error text quotes Ann's address.
    register(client, auth, {"token": 987654322, "email": "bob@example.com"})
    requests_mock.post(
        TOKENS_URL,
        status_code=503,
        reason="Service Unavailable",
        json={"message": f"busy with {ANN_EMAIL}"},
    )
    bridge.deliver_once()

    clock.advance(5)  # the statuses come after the registrations
    statuses(
        client,
        auth,
        [
            # Reteno's activity webhook about Ann, phone as she typed it
            {
                "activityStatus": "DELIVERED",
                "email": "ANN@example.com",
                "sms": "+380 95 649 09 55",
                "contactId": 42,
                "mediaType": "TELEGRAM",
                "messageId": 2,
            },
            # an object nobody can use, which still mentions Ann
            {"comment": "ann@example.com called from +380 (95) 649-09-55"},
            # a report about Bob's chat that happens to carry Ann's address
            {"status": "SENT", "token": "987654321", "forwardedFrom": ANN_EMAIL},
            # Joann is blocked: removed, with history
            {
                "status": "FAILED",
                "error": "Forbidden: bot was blocked by the user",
                "token": "1234567890",
            },
        ],
    )
    # Ann's third chat: a plain /start (telegram_ignored), a forged link (link_rejected),
    # her e-mail link (link_used), which her first chat opens too (link_reused); then it
    # blocks the bot twice, the second time with nothing live (telegram_blocked).
    telegram(client, clock, ANN_LINK_CHAT, text="/start")
    telegram(client, clock, ANN_LINK_CHAT, text="/start " + ANN_LINK[:-2] + "AA")
    telegram(client, clock, ANN_LINK_CHAT, text="/start " + ANN_LINK)
    telegram(client, clock, ANN_TOKEN, text="/start " + ANN_LINK)
    clock.advance(5)
    telegram(client, clock, ANN_LINK_CHAT, old="member", new="kicked")
    telegram(client, clock, ANN_LINK_CHAT, old="member", new="kicked")
    # an update about someone else's chat forwarded with her address for a status (not
    # acted on, recorded)
    telegram(client, clock, "246813579", old="kicked", new=ANN_EMAIL)
    # her first chat muted
    assert client.post("/mute", json={"token": ANN_TOKEN}, headers=auth).status_code == 202
    chat_kinds = {e["kind"] for e in history(client, auth, ANN_LINK_CHAT)}
    assert {"telegram_ignored", "link_rejected", "link_used", "telegram_blocked"} <= chat_kinds
    assert {"link_reused", "mute_requested"} <= {
        e["kind"] for e in history(client, auth, ANN_TOKEN)
    }
    everything = dump(bridge)
    assert has_ann_email(everything) and ANN_PHONE in everything
    assert "649-09-55" in everything and mentions(everything, ANN_TOKEN)
    return {"bob": history(client, auth, "987654321"), "joann": history(client, auth, "1234567890")}


def test_erase_leaves_nothing_of_the_contact(runner, client, auth, bridge, ledger_with_ann):
    result = runner.invoke(
        args=["bridge", "erase", "--email", " ANN@example.com ", "--yes", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["erased"] is True and summary["by"] == "email"
    # both registrations of her chat, her other chat, her link's chat
    assert summary["registrations"] == 4
    assert summary["events"] >= 8
    # the link her chat used, and any other link for her e-mail, phone, crm-ann, 42, 4242
    assert summary["revoked"] == 6

    everything = dump(bridge)
    assert not has_ann_email(everything)
    for value in (ANN_PHONE, "649-09-55", "649 09 55", "crm-ann"):
        assert value not in everything, value
    for number in (ANN_TOKEN, ANN_OTHER_CHAT, ANN_LINK_CHAT, "4242"):
        assert not mentions(everything, number), number
    with bridge.db.read() as conn:
        assert (
            conn.execute(
                select(Registration.id).where(Registration.contact_id.in_([42, 4242]))
            ).all()
            == []
        )

    # one audit line, without personal data
    with bridge.db.read() as conn:
        erased = conn.execute(select(Event.__table__).where(Event.kind == "erased")).all()
    assert len(erased) == 1
    assert erased[0].token is None and erased[0].registration_id is None
    assert erased[0].detail == {
        "by": "email",
        "registrations": 4,
        "events": summary["events"],
        "scrubbed": summary["scrubbed"],
        "revoked": 6,
    }


def test_erase_takes_her_chats_telegram_events_and_mutes(runner, bridge, ledger_with_ann):
    """Events with a chat id and no registration (a plain /start, a rejected or reused link,
    a block of a chat with nothing live) and the chat's mute go with the chat."""
    ann_chats = [ANN_TOKEN, ANN_OTHER_CHAT, ANN_LINK_CHAT]
    with bridge.db.read() as conn:
        orphans = (
            conn.execute(
                select(Event.kind).where(
                    Event.token.in_(ann_chats), Event.registration_id.is_(None)
                )
            )
            .scalars()
            .all()
        )
    assert {"telegram_ignored", "link_rejected", "link_reused", "telegram_blocked"} <= set(orphans)
    assert runner.invoke(args=["bridge", "erase", "--email", ANN_EMAIL, "--yes"]).exit_code == 0
    with bridge.db.read() as conn:
        assert conn.execute(select(Event.kind).where(Event.token.in_(ann_chats))).all() == []
        assert conn.execute(select(Command.id).where(Command.token.in_(ann_chats))).all() == []


def test_other_contacts_keep_their_data_and_history(runner, client, auth, bridge, ledger_with_ann):
    assert runner.invoke(args=["bridge", "erase", "--email", ANN_EMAIL, "--yes"]).exit_code == 0
    everything = dump(bridge)
    assert "joann@example.com" in everything and "bob@example.com" in everything
    assert "442079460958" in everything and mentions(everything, "1234567890")

    tokens = {i["token"]: i for i in client.get("/tokens", headers=auth).get_json()["items"]}
    assert set(tokens) == {"987654321", "987654322", "1234567890"}
    assert tokens["1234567890"]["state"] == "removed"
    assert tokens["987654322"]["lastError"] == "[erased]"  # the outage text quoted Ann

    # Bob keeps every line of his history; the one that quoted Ann is blanked, not dropped.
    bob = history(client, auth, "987654321")
    assert [e["kind"] for e in bob] == [e["kind"] for e in ledger_with_ann["bob"]]
    assert any("[erased]" in json.dumps(e["detail"]) for e in bob)
    assert history(client, auth, "1234567890") == ledger_with_ann["joann"]
    # the shared upstream state (last Reteno answer) no longer quotes her either
    last = client.get("/healthz", headers=auth).get_json()["lastUpstream"]
    assert not has_ann_email(json.dumps(last))


def test_asked_twice_the_second_run_erases_nothing(runner, bridge, ledger_with_ann):
    first = runner.invoke(args=["bridge", "erase", "--email", ANN_EMAIL, "--yes"])
    assert first.output.startswith("erased 4 registrations and ")
    assert "; revoked their links (6 tombstones)\n" in first.output
    after_first = dump(bridge)
    second = runner.invoke(args=["bridge", "erase", "--email", ANN_EMAIL, "--yes"])
    assert second.exit_code == 0
    assert "nothing to erase" in second.output
    assert dump(bridge) == after_first  # not even a second audit line


@pytest.mark.parametrize(
    "option,value",
    [
        ("--token", "00123456789"),
        ("--contact-id", "42"),
        ("--external-customer-id", " crm-ann "),
        ("--phone", "+380 (95) 649-09-55"),
        ("--email", "Ann@Example.com"),
    ],
)
def test_erase_by_any_identifier(runner, client, auth, bridge, requests_mock, option, value):
    register(
        client,
        auth,
        {
            "token": int(ANN_TOKEN),
            "contactId": 42,
            "externalCustomerId": "crm-ann",
            "phone": "+380 (95) 649-09-55",
            "email": ANN_EMAIL,
        },
        {"token": 987654321, "contactId": 43, "email": "bob@example.com"},
    )
    requests_mock.post(TOKENS_URL, json="OK")
    bridge.deliver_once()
    result = runner.invoke(args=["bridge", "erase", option, value, "--yes", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "by": {
            "--token": "token",
            "--contact-id": "contactId",
            "--external-customer-id": "externalCustomerId",
            "--phone": "phone",
            "--email": "email",
        }[option],
        "registrations": 1,
        "events": 2,
        "scrubbed": 0,
        "revoked": 4,
        "erased": True,
    }
    everything = dump(bridge)
    assert not has_ann_email(everything) and ANN_PHONE not in everything
    assert "crm-ann" not in everything and not mentions(everything, ANN_TOKEN)
    assert [i["token"] for i in client.get("/tokens", headers=auth).get_json()["items"]] == [
        "987654321"
    ]
    assert len(history(client, auth, "987654321")) == 2


def test_erase_is_one_transaction(client, auth, bridge, ledger_with_ann, monkeypatch):
    before = dump(bridge)

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(erasure, "_scrub_elsewhere", fail)
    with pytest.raises(RuntimeError):
        bridge.ledger.erase("email", ANN_EMAIL)
    assert dump(bridge) == before


def test_erasing_an_unknown_contact_writes_nothing(runner, client, auth, bridge):
    register(client, auth, {"token": 987654321, "email": "bob@example.com"})
    before = dump(bridge)
    result = runner.invoke(args=["bridge", "erase", "--token", "42", "--yes"])
    assert "nothing to erase: no registration or event mentions token 42" in result.output
    assert dump(bridge) == before


def test_a_json_key_and_a_percent_encoded_form_are_erased_too(
    runner, client, auth, bridge, ledger_with_ann
):
    statuses(
        client,
        auth,
        [
            # unmatched objects that name Ann in a key, and percent-encoded in a URL
            {
                "activityStatus": "SENT",
                "mediaType": "TELEGRAM",
                "messageId": 7,
                "Ann@Example.com": {"opened": 1},
            },
            {"comment": "see https://crm.example/c?email=Ann%40Example.com&tel=%2B380956490955"},
            # Bob's report, which keeps its line, with Ann in a key and in a URL
            {
                "status": "SENT",
                "token": "987654321",
                "cc": {"ann%40example.com": "x", "bob@example.com": "y"},
            },
        ],
    )
    everything = dump(bridge).lower()
    assert "ann%40example.com" in everything and "%2b380956490955" in everything
    run = runner.invoke(args=["bridge", "erase", "--email", ANN_EMAIL, "--yes"])
    assert run.exit_code == 0, run.output
    everything = dump(bridge).lower()
    assert not has_ann_email(everything)
    assert "ann%40example.com" not in everything and "%2b380956490955" not in everything
    bob = history(client, auth, "987654321")
    assert {"[erased]": "x", "bob@example.com": "y"} in [
        e["detail"].get("raw", {}).get("cc") for e in bob
    ]


def test_the_database_files_hold_no_byte_of_an_erased_contact(
    runner, client, auth, bridge, ledger_with_ann
):
    """Not only the rows: the SQLite file's free space and its -wal file kept copies of
    what was deleted (SECURITY.md finding 7). Every file of the database's folder is
    read as bytes after the erase."""
    if bridge.db.dialect != "sqlite":
        pytest.skip("PostgreSQL's files are the server's: the docs say what to run")
    statuses(client, auth, [{"comment": "ann%40example.com in a URL", "Ann@example.com": 1}])
    folder = Path(bridge.db.engine.url.database).parent

    def contents() -> bytes:
        return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())

    before = contents().lower()
    assert b"ann@example.com" in before and ANN_PHONE.encode() in before
    run = runner.invoke(args=["bridge", "erase", "--email", ANN_EMAIL, "--yes"])
    assert run.exit_code == 0, run.output
    after = contents().lower()
    assert re.search(rb"(?<![\w.+-])ann@example\.com", after) is None
    for value in (ANN_PHONE, "649-09-55", "649 09 55", "crm-ann", "ann%40example.com"):
        assert value.encode() not in after, value
    for number in (ANN_TOKEN, ANN_OTHER_CHAT):
        assert re.search(rb"(?<!\d)" + number.encode() + rb"(?!\d)", after) is None, number
    assert b"bob@example.com" in after  # the others' data is still there


def test_every_sqlite_connection_zeroes_what_it_frees(tmp_path):
    """secure_delete on every connection, even where SQLite was built with it off (this
    machine's build has it on: the byte test above cannot tell; this one can)."""
    import sqlite3

    from sqlalchemy import event

    from bridge.storage import sqlite_engine

    engine = sqlite_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}", flushed_by_caller=False)

    @event.listens_for(engine, "do_connect")
    def _built_with_secure_delete_off(_dialect, _record, cargs, cparams):
        conn = sqlite3.connect(*cargs, **cparams)
        conn.execute("PRAGMA secure_delete=0")
        return conn

    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    finally:
        engine.dispose()


def test_a_database_the_bridge_creates_is_its_owners_only(make_app, tmp_path, auth):
    """SECURITY.md finding 8: SQLite made the file (and its -wal and -shm after it) 0644."""
    import os
    import stat

    folder = tmp_path / "fresh" / "ledger"
    old = os.umask(0o022)
    try:
        url = f"sqlite:///{folder / 'bridge.sqlite3'}"
        migrate(url)  # what `bridge migrate` does first
        client = make_app(BRIDGE_DATABASE_URL=url).test_client()
        register(client, auth, {"token": 5, "email": "five@example.com"})
    finally:
        os.umask(old)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in folder.iterdir()}
    assert modes == {
        name: "0o600"
        for name in (
            "bridge.sqlite3",
            "bridge.sqlite3-wal",
            "bridge.sqlite3-shm",
            "bridge.sqlite3-writelock",
        )
    }
    assert oct(stat.S_IMODE(folder.stat().st_mode)) == "0o700"


# --- L7: erase matches identifiers, not every contact's vocabulary ---------------------------

VICTIM_TOKEN = "246813579"


@pytest.fixture
def crowd(client, auth, bridge, requests_mock, clock):
    """Bob and Carol, whose histories are full of short, common strings ("api", "1", "SENT"),
    and orphan events holding them; ``snapshot()`` is every row of theirs, as text."""
    register(
        client,
        auth,
        {"token": 987654321, "externalCustomerId": "crm-bob", "email": "bob@example.com"},
        {"token": 135792468, "contactId": 7, "phone": "+44 20 7946 0958"},
    )
    requests_mock.post(TOKENS_URL, json="OK")
    bridge.deliver_once()
    register(client, auth, {"token": 135792469, "contactId": 8})
    requests_mock.post(
        TOKENS_URL, status_code=503, reason="Service Unavailable", json={"message": "api 1 SENT"}
    )
    bridge.deliver_once()
    clock.advance(5)
    statuses(
        client,
        auth,
        [
            {"status": "SENT", "token": "987654321", "note": "api 1 SENT", "api": 1, "SENT": "1"},
            {
                "activityStatus": "SENT",
                "externalCustomerId": "crm-bob",
                "mediaType": "TELEGRAM",
                "messageId": 1,
                "statusDescription": "api SENT 1",
            },
            {"activityStatus": "DELIVERED", "contactId": 7, "messageId": 1, "comment": "1 api"},
            # orphans: an unmatched status and an unusable object, holding the same words
            {
                "activityStatus": "SENT",
                "externalCustomerId": "nobody-9",
                "comment": "api",
                "messageId": 1,
                "contactId": 99,
            },
            {"comment": "api 1 SENT", "source": "api"},
        ],
    )
    telegram(client, clock, "135792468", text="/start")

    def snapshot() -> dict[str, str]:
        with bridge.db.read() as conn:
            events = {
                f"event {r.id}": json.dumps(list(r), default=str)
                for r in conn.execute(
                    select(Event.__table__).where(
                        Event.kind.not_in(["erased", "link_revoked"]),
                        or_(Event.token.is_(None), Event.token != VICTIM_TOKEN),
                    )
                )
            }
            regs = {
                f"registration {r.id}": json.dumps(list(r), default=str)
                for r in conn.execute(
                    select(Registration.__table__).where(Registration.token != VICTIM_TOKEN)
                )
            }
            state = {
                f"state {r.name}": json.dumps(list(r), default=str)
                for r in conn.execute(text("SELECT * FROM bridge_state"))
            }
        return {**events, **regs, **state}

    return snapshot


@pytest.mark.parametrize(
    ("option", "name", "value"),
    [
        ("--external-customer-id", "externalCustomerId", "api"),
        ("--external-customer-id", "externalCustomerId", "SENT"),
        ("--contact-id", "contactId", 1),
        ("--token", "token", None),
    ],
)
def test_erasing_a_short_common_value_leaves_everyone_else_byte_for_byte(
    runner, client, auth, bridge, clock, crowd, option, name, value
):
    victim = (
        {"token": 1, "email": "victim@example.org"}
        if name == "token"
        else {"token": int(VICTIM_TOKEN), name: value}
    )
    victim_token = str(victim["token"])
    if name == "token":  # chat id 1: its history is the snapshot's to leave alone too
        value = 1
    register(client, auth, victim)
    statuses(client, auth, {"status": "SENT", "token": victim_token, "note": "api 1 SENT"})
    others = ("987654321", "135792468", "135792469")
    before = {t: history(client, auth, t) for t in others}
    rows_before = crowd()
    if name == "token":
        rows_before = {k: v for k, v in rows_before.items() if f'"{victim_token}"' not in v}

    run = runner.invoke(args=["bridge", "erase", option, str(value), "--yes", "--json"])
    assert run.exit_code == 0, run.output
    summary = json.loads(run.output)
    assert (summary["registrations"], summary["scrubbed"]) == (1, 0)

    assert {t: history(client, auth, t) for t in others} == before
    rows_after = crowd()
    assert {k: rows_after.get(k) for k in rows_before} == rows_before
    assert history(client, auth, victim_token) == []
    assert rows(client, auth, token=victim_token) == []
    assert "victim@example.org" not in dump(bridge)


def test_a_distinctive_value_is_still_found_in_free_text_as_a_word_of_its_own(
    runner, client, auth, bridge, crowd
):
    register(client, auth, {"token": int(VICTIM_TOKEN), "externalCustomerId": "crm-ann-7"})
    statuses(
        client,
        auth,
        [
            {"status": "SENT", "token": "987654321", "note": "merged from crm-ann-7"},
            {
                "status": "SENT",
                "token": "135792468",
                "note": f"not her: crm-ann-77, xcrm-ann-7, order 1{VICTIM_TOKEN}, 0.{VICTIM_TOKEN}",
            },
            {"status": "SENT", "token": "135792469", "note": f"chat {VICTIM_TOKEN}"},
        ],
    )
    run = runner.invoke(args=["bridge", "erase", "--external-customer-id", "crm-ann-7", "--yes"])
    assert run.exit_code == 0, run.output
    notes = {
        t: [
            e["detail"]["raw"].get("note")
            for e in history(client, auth, t)
            if e["kind"] == "status"
        ]
        for t in ("987654321", "135792468", "135792469")
    }
    assert notes["987654321"][-1] == "[erased]"
    assert notes["135792468"][-1] == (
        f"not her: crm-ann-77, xcrm-ann-7, order 1{VICTIM_TOKEN}, 0.{VICTIM_TOKEN}"
    )
    assert notes["135792469"][-1] == "[erased]"  # her chat id, a number of its own
    assert '"crm-ann-7' not in dump(bridge) and history(client, auth, VICTIM_TOKEN) == []


# --- L2: erase revokes the person's deep links -----------------------------------------------

STRANGER = "424242424"


def refusals(client, auth, chat) -> list[tuple[str, str]]:
    return [
        (e["kind"], e["detail"].get("reason"))
        for e in history(client, auth, chat)
        if e["kind"].startswith("link_")
    ]


def test_after_erase_her_links_register_nothing(
    runner, client, auth, bridge, clock, ledger_with_ann
):
    """The link her chat used, and links for her identifiers nobody used yet, are refused
    in any chat (``link_rejected``, ``revoked``); the tombstones hold no personal data."""
    unused = [
        links.make_payload(LINK_SECRET, "phone", ANN_PHONE, clock() + timedelta(days=1)),
        links.make_payload(LINK_SECRET, "externalCustomerId", "crm-ann"),
        links.make_payload(LINK_SECRET, "contactId", 4242),
    ]
    run = runner.invoke(args=["bridge", "erase", "--email", ANN_EMAIL, "--yes"])
    assert run.exit_code == 0, run.output

    clock.advance(5)
    for chat, payload in [
        (STRANGER, ANN_LINK),
        (ANN_LINK_CHAT, ANN_LINK),
        *((STRANGER, p) for p in unused),
    ]:
        telegram(client, clock, chat, text="/start " + payload)
    assert rows(client, auth, token=STRANGER) == rows(client, auth, token=ANN_LINK_CHAT) == []
    assert rows(client, auth, email=ANN_EMAIL) == rows(client, auth, phone=ANN_PHONE) == []
    assert refusals(client, auth, STRANGER) == [("link_rejected", "revoked")] * 4
    assert refusals(client, auth, ANN_LINK_CHAT) == [("link_rejected", "revoked")]
    # each refusal names its link by the first 16 characters of the link's id
    named = [
        e["detail"]["link"] for e in history(client, auth, STRANGER) if e["kind"] == "link_rejected"
    ]
    assert named == [
        links.inspect_payload([LINK_SECRET], p, clock())[0].link_id[:16]
        for p in (ANN_LINK, *unused)
    ]

    # Bob's link still works
    telegram(
        client,
        clock,
        "868686868",
        text="/start " + links.make_payload(LINK_SECRET, "email", "bob@example.com"),
    )
    assert [r["email"] for r in rows(client, auth, token="868686868")] == ["bob@example.com"]

    with bridge.db.read() as conn:
        tombstones = conn.execute(select(Event.__table__).where(Event.kind == "link_revoked")).all()
    assert len(tombstones) == 6
    for row in tombstones:
        assert (row.token, row.registration_id, row.detail) == (None, None, {"reason": "erased"})
        assert re.fullmatch(r"[0-9a-f]{64}", row.fingerprint)
    everything = dump(bridge)
    assert not has_ann_email(everything) and ANN_PHONE not in everything
    assert "crm-ann" not in everything and not mentions(everything, "4242")


def test_a_person_erased_before_any_registration_has_their_links_revoked(
    runner, client, auth, bridge, clock
):
    link = links.make_payload(LINK_SECRET, "email", "zoe@example.com")
    run = runner.invoke(args=["bridge", "erase", "--email", "zoe@example.com", "--yes"])
    assert "erased 0 registrations and 0 events" in run.output
    assert "revoked their links (1 tombstone)" in run.output
    telegram(client, clock, STRANGER, text="/start " + link)
    assert rows(client, auth, token=STRANGER) == []
    assert refusals(client, auth, STRANGER) == [("link_rejected", "revoked")]
    assert "zoe" not in dump(bridge)
    again = runner.invoke(args=["bridge", "erase", "--email", "zoe@example.com", "--yes"])
    assert "nothing to erase" in again.output


def test_a_link_signed_by_a_key_added_after_the_erase_registers(
    runner, make_app, auth, clock, ledger_with_ann
):
    """A signed link does not say when it was made: the tombstone refuses every link for
    the identifier under the keys of the erase; a new first key signs links that work."""
    assert runner.invoke(args=["bridge", "erase", "--email", ANN_EMAIL, "--yes"]).exit_code == 0
    new_key = "link-secret-rotated-" + "z" * 20
    rotated = make_app(
        TELEGRAM_WEBHOOK_SECRET=TELEGRAM_SECRET,
        BRIDGE_LINK_SECRET=f"{new_key},{LINK_SECRET}",
        TELEGRAM_BOT_USERNAME="erase_test_bot",
    )
    rotated.extensions["reteno_bridge"].ledger.clock = clock
    client = rotated.test_client()
    clock.advance(5)
    telegram(client, clock, STRANGER, text="/start " + ANN_LINK)  # the old key's link
    assert rows(client, auth, token=STRANGER) == []
    telegram(
        client, clock, STRANGER, text="/start " + links.make_payload(new_key, "email", ANN_EMAIL)
    )
    assert [r["email"] for r in rows(client, auth, token=STRANGER)] == [ANN_EMAIL]


def test_erasing_a_chat_revokes_the_link_it_used_not_the_identifiers_others_hold(
    runner, client, auth, bridge, clock, ledger_with_ann
):
    """Her link's chat erased: her e-mail is still another chat's, so only that link (by its
    id) is revoked; a new link for her e-mail still registers."""
    run = runner.invoke(args=["bridge", "erase", "--token", ANN_LINK_CHAT, "--yes", "--json"])
    assert json.loads(run.output)["revoked"] == 1
    clock.advance(5)
    telegram(client, clock, STRANGER, text="/start " + ANN_LINK)
    assert rows(client, auth, token=STRANGER) == []
    assert refusals(client, auth, STRANGER) == [("link_rejected", "revoked")]
    fresh = links.make_payload(LINK_SECRET, "email", ANN_EMAIL, clock() + timedelta(days=1))
    telegram(client, clock, STRANGER, text="/start " + fresh)
    assert [r["email"] for r in rows(client, auth, token=STRANGER)] == [ANN_EMAIL]
