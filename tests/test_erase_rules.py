"""``bridge erase``: the rules that involve another party's rows (another chat of the same
number, another contact's events and errors, an orphan status), one scenario each."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TOKENS_URL
from tests.helpers import history, register, rows
from tests.test_erase import TELEGRAM_SECRET, dump, statuses, telegram

BOB = "987654321"
VICTIM = "246813579"
CAROL = "135792468"
DAVE = "112233445"


@pytest.fixture
def app(make_app):
    return make_app(TELEGRAM_WEBHOOK_SECRET=TELEGRAM_SECRET)


def erase(runner, *args):
    result = runner.invoke(args=["bridge", "erase", *args, "--yes", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_a_short_external_id_is_found_under_its_own_key(runner, client, auth, bridge):
    """``api`` is nobody's word in free text, but under ``externalCustomerId`` it is the
    person: an unmatched status naming it goes, another contact's report keeps its line."""
    assert (
        statuses(
            client,
            auth,
            {
                "activityStatus": "SENT",
                "externalCustomerId": "api",
                "mediaType": "TELEGRAM",
                "messageId": 1,
            },
        )["unmatched"]
        == 1
    )
    register(
        client,
        auth,
        {"token": int(BOB), "email": "bob@example.com"},
        {"token": int(VICTIM), "externalCustomerId": "api"},
    )
    statuses(
        client, auth, {"status": "SENT", "token": BOB, "externalCustomerId": "api", "note": "api"}
    )

    summary = erase(runner, "--external-customer-id", "api")
    assert (summary["registrations"], summary["scrubbed"]) == (1, 1)
    assert '"externalCustomerId": "api"' not in dump(bridge)
    [report] = [e["detail"]["raw"] for e in history(client, auth, BOB) if e["kind"] == "status"]
    assert report == {
        "status": "SENT",
        "token": BOB,
        "externalCustomerId": "[erased]",
        "note": "api",
    }


def test_the_scrubbed_count_has_every_row_rewritten(runner, client, auth, bridge, requests_mock):
    """Bob's retry event and his registration's last error both quote Ann: two rows,
    and nobody else's."""
    # Dave, registered before them, fails for a reason of his own: it stays as it is
    register(client, auth, {"token": int(DAVE), "email": "dave@example.com"})
    requests_mock.post(
        TOKENS_URL,
        status_code=400,
        reason="Bad Request",
        json={"message": "contact dave@example.com is invalid"},
    )
    bridge.deliver_once()
    [dave] = rows(client, auth, token=DAVE)
    register(client, auth, {"token": int(VICTIM), "email": "ann@example.com"})
    requests_mock.post(TOKENS_URL, json="OK")
    bridge.deliver_once()
    register(client, auth, {"token": int(BOB), "email": "bob@example.com"})
    requests_mock.post(
        TOKENS_URL,
        status_code=503,
        reason="Service Unavailable",
        json={"message": "busy with ann@example.com"},
    )
    bridge.deliver_once()
    [bob] = rows(client, auth, token=BOB)
    assert "ann@example.com" in bob["lastError"]
    # Carol, registered after Bob, fails for a reason of her own: it stays as it is
    register(client, auth, {"token": int(CAROL), "email": "carol@example.com"})
    requests_mock.post(
        TOKENS_URL,
        status_code=400,
        reason="Bad Request",
        json={"message": "contact carol@example.com is invalid"},
    )
    bridge.deliver_once()
    [carol] = rows(client, auth, token=CAROL)
    assert "carol@example.com is invalid" in carol["lastError"]

    summary = erase(runner, "--email", "ann@example.com")
    assert summary["scrubbed"] == 2
    assert rows(client, auth, token=BOB)[0]["lastError"] == "[erased]"
    assert rows(client, auth, token=CAROL) == [carol]
    assert rows(client, auth, token=DAVE) == [dave]
    assert "ann@example.com" not in dump(bridge)


def test_erasing_a_contact_id_leaves_the_chat_of_that_number_alone(runner, client, auth):
    """A contactId and a Telegram chat id are different namespaces: erasing contact
    987654321 erases that contact, not chat 987654321 (Bob's)."""
    register(
        client,
        auth,
        {"token": int(BOB), "email": "bob@example.com"},
        {"token": int(VICTIM), "contactId": int(BOB)},
    )
    bob_before = [e["kind"] for e in history(client, auth, BOB)]

    summary = erase(runner, "--contact-id", BOB)
    assert summary["registrations"] == 1
    assert [r["email"] for r in rows(client, auth, token=BOB)] == ["bob@example.com"]
    assert [e["kind"] for e in history(client, auth, BOB)] == bob_before
    assert rows(client, auth, token=VICTIM) == [] and history(client, auth, VICTIM) == []


def test_erasing_a_chat_that_never_registered_takes_its_events(runner, client, auth, clock):
    telegram(client, clock, VICTIM, text="/start")
    telegram(client, clock, VICTIM, old="member", new="kicked")
    assert len(history(client, auth, VICTIM)) == 2

    summary = erase(runner, "--token", VICTIM)
    assert (summary["registrations"], summary["events"], summary["erased"]) == (0, 2, True)
    assert history(client, auth, VICTIM) == []
    again = runner.invoke(args=["bridge", "erase", "--token", VICTIM, "--yes"])
    assert "nothing to erase" in again.output  # the first run's audit line holds no chat id


def test_identifiers_written_as_json_numbers_under_their_keys_are_found(runner, client, auth):
    """Bob's report names the erased chat (``chat_id``) and contact (``contactId``) as
    numbers: both go; his own chat id and counters stay."""
    register(
        client,
        auth,
        {"token": int(BOB), "email": "bob@example.com"},
        {"token": int(VICTIM), "contactId": 42},
    )
    statuses(
        client,
        auth,
        [
            {"status": "SENT", "token": BOB, "chat_id": int(VICTIM), "attempt": 42},
            {"status": "DELIVERED", "token": BOB, "contactId": 42, "attempt": 42},
        ],
    )

    summary = erase(runner, "--contact-id", "42")
    assert (summary["registrations"], summary["scrubbed"]) == (1, 2)
    reports = [e["detail"]["raw"] for e in history(client, auth, BOB) if e["kind"] == "status"]
    assert reports == [
        {"status": "SENT", "token": BOB, "chat_id": "[erased]", "attempt": 42},
        {"status": "DELIVERED", "token": BOB, "contactId": "[erased]", "attempt": 42},
    ]


def test_a_chat_of_more_events_than_a_chunk_is_erased_whole(runner, client, auth):
    """The ledger works in chunks of 500 ids: a chat of 601 events loses all of them."""
    register(client, auth, {"token": int(VICTIM), "contactId": 42})
    statuses(
        client, auth, [{"status": "SENT", "token": VICTIM, "messageId": n} for n in range(600)]
    )
    assert len(history(client, auth, VICTIM)) == 601

    summary = erase(runner, "--token", VICTIM)
    assert (summary["registrations"], summary["events"]) == (1, 601)
    assert history(client, auth, VICTIM) == []


def test_a_word_of_letters_alone_is_not_looked_for_in_free_text(runner, client, auth):
    """An externalCustomerId of letters alone (``telegram``), however long, is everyone's
    vocabulary: Bob's note keeps it."""
    register(
        client,
        auth,
        {"token": int(BOB), "email": "bob@example.com"},
        {"token": int(VICTIM), "externalCustomerId": "telegram"},
    )
    statuses(client, auth, {"status": "SENT", "token": BOB, "note": "sent via telegram"})

    summary = erase(runner, "--external-customer-id", "telegram")
    assert (summary["registrations"], summary["scrubbed"]) == (1, 0)
    [report] = [e["detail"]["raw"] for e in history(client, auth, BOB) if e["kind"] == "status"]
    assert report["note"] == "sent via telegram"


def test_a_contact_id_equal_to_the_persons_own_chat_id_is_found(runner, client, auth):
    register(
        client,
        auth,
        {"token": int(BOB), "email": "bob@example.com"},
        {"token": int(VICTIM), "contactId": int(VICTIM)},
    )
    statuses(client, auth, {"status": "SENT", "token": BOB, "chat_id": int(VICTIM)})

    assert erase(runner, "--token", VICTIM)["scrubbed"] == 1
    [report] = [e["detail"]["raw"] for e in history(client, auth, BOB) if e["kind"] == "status"]
    assert report["chat_id"] == "[erased]"


def test_a_json_boolean_is_no_identifier(runner, client, auth):
    """Under ``externalCustomerId``, JSON ``true`` is not the externalCustomerId ``True``."""
    register(
        client,
        auth,
        {"token": int(BOB), "email": "bob@example.com"},
        {"token": int(VICTIM), "externalCustomerId": "True"},
    )
    statuses(client, auth, {"status": "SENT", "token": BOB, "externalCustomerId": True})

    assert erase(runner, "--external-customer-id", "True")["scrubbed"] == 0
    [report] = [e["detail"]["raw"] for e in history(client, auth, BOB) if e["kind"] == "status"]
    assert report["externalCustomerId"] is True


def test_keys_that_mention_the_person_are_numbered_from_two(runner, client, auth):
    register(
        client,
        auth,
        {"token": int(BOB), "email": "bob@example.com"},
        {"token": int(VICTIM), "email": "ann@example.com"},
    )
    statuses(
        client,
        auth,
        {
            "status": "SENT",
            "token": BOB,
            "cc": {
                "ann@example.com": 1,
                "Ann@Example.com": 2,
                "ANN@EXAMPLE.COM": 3,
                "bob@example.com": 4,
            },
        },
    )

    erase(runner, "--email", "ann@example.com")
    [report] = [e["detail"]["raw"] for e in history(client, auth, BOB) if e["kind"] == "status"]
    assert report["cc"] == {"[erased]": 1, "[erased]#2": 2, "[erased]#3": 3, "bob@example.com": 4}


def test_a_value_of_six_characters_and_a_non_ascii_value_are_found_in_free_text(
    runner, client, auth
):
    """Six characters with one that is not a letter are enough (``crm-a1``); a value
    outside ASCII is found as the database holds it (JSON escapes it: ``\\u00e5``)."""
    register(
        client,
        auth,
        {"token": int(BOB), "email": "bob@example.com"},
        {"token": int(VICTIM), "externalCustomerId": "crm-a1"},
        {"token": int(CAROL), "externalCustomerId": "crm-ånn-7"},
    )
    statuses(
        client,
        auth,
        [
            {"status": "SENT", "token": BOB, "note": "merged from crm-a1"},
            {"status": "DELIVERED", "token": BOB, "note": "see crm-ånn-7"},
        ],
    )

    assert erase(runner, "--external-customer-id", "crm-a1")["scrubbed"] == 1
    assert erase(runner, "--external-customer-id", "crm-ånn-7")["scrubbed"] == 1
    notes = [
        e["detail"]["raw"]["note"] for e in history(client, auth, BOB) if e["kind"] == "status"
    ]
    assert notes == ["[erased]", "[erased]"]


def test_an_identifier_another_contact_still_holds_is_not_erased(runner, client, auth):
    """Ann and Bob share a phone: erasing Ann leaves it in Bob's history."""
    register(
        client,
        auth,
        {"token": int(BOB), "email": "bob@example.com", "phone": "+380 95 649 09 55"},
        {"token": int(VICTIM), "email": "ann@example.com", "phone": "380956490955"},
    )
    statuses(client, auth, {"status": "SENT", "token": BOB, "note": "call +380956490955"})

    summary = erase(runner, "--email", "ann@example.com")
    assert (summary["registrations"], summary["scrubbed"]) == (1, 0)
    [report] = [e["detail"]["raw"] for e in history(client, auth, BOB) if e["kind"] == "status"]
    assert report["note"] == "call +380956490955"


def test_a_phone_and_a_six_digit_contact_id_are_found_in_free_text(runner, client, auth):
    """A phone as a person writes it, and a number of six digits of its own."""
    register(
        client,
        auth,
        {"token": int(BOB), "email": "bob@example.com"},
        {"token": int(VICTIM), "phone": "380956490955", "contactId": 123456},
    )
    statuses(
        client,
        auth,
        [
            {"status": "SENT", "token": BOB, "note": "call +380 (95) 649-09-55"},
            {"status": "DELIVERED", "token": BOB, "note": "contact 123456"},
            {"status": "SENT", "token": BOB, "note": "order 1234567, 12345"},
        ],
    )

    summary = erase(runner, "--token", VICTIM)
    assert summary["scrubbed"] == 2
    notes = [
        e["detail"]["raw"]["note"] for e in history(client, auth, BOB) if e["kind"] == "status"
    ]
    assert notes == ["[erased]", "[erased]", "order 1234567, 12345"]
