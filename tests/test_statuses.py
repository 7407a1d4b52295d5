"""POST /statuses: Reteno's activity webhook and the bot backend's own reports.

Everything goes through the Flask test client and is checked through what a
user sees: the response, ``GET /tokens`` and ``GET /tokens/<token>/history``.
"""

from __future__ import annotations

import base64
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from bridge.models import Event
from tests import fuzzing as fz
from tests.conftest import API_KEY, TOKENS_URL
from tests.helpers import assert_error_shape, history, register, rows

URL = "/statuses"
HOOK_USER = "reteno-hook"
HOOK_PASSWORD = "hook-password-0123"
BLOCKED = "403: Forbidden: bot was blocked by the user"


def basic(user: str = HOOK_USER, password: str = HOOK_PASSWORD) -> dict:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture
def app(make_app):
    return make_app(BRIDGE_WEBHOOK_USERNAME=HOOK_USER, BRIDGE_WEBHOOK_PASSWORD=HOOK_PASSWORD)


def row(client, auth, token):
    [item] = rows(client, auth, token=token)
    return item


def kinds(client, auth, token):
    return [e["kind"] for e in history(client, auth, token)]


def post(client, body, headers=None, **kwargs):
    return client.post(URL, json=body, headers=basic() if headers is None else headers, **kwargs)


def activity(status="UNDELIVERED", description=BLOCKED, **fields):
    """One object as Reteno's activity webhook posts it."""
    event = {
        # later than the real clock most of these tests run on: it counts as the time
        # received (nothing from the future), so after every registration they make
        "activityDateTime": "2030-11-25T10:15:00.000Z",
        "activityStatus": status,
        "broadcastId": 9001,
        "contactId": None,
        "email": "",
        "externalCustomerId": None,
        "mediaType": "telegrambot",
        "messageId": 123456,
        "messageInstanceId": 7890123,
        "sms": "",
        "statusDescription": description,
        "iccid": None,
        "newField": {"we": "do not know yet"},
    }
    event.update(fields)
    return event


# --- probe and authentication ---------------------------------------------------------


def test_get_probe_answers_200_without_credentials(client):
    response = client.get(URL)
    assert response.status_code == 200
    assert response.json["status"] == "ok"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic(password="wrong-password"),
        basic(user="someone-else"),
        {"Authorization": "Basic not-base64!"},
        {"Authorization": "Bearer wrong-key-0123456789"},
        {"Authorization": f"Basic {base64.b64encode(API_KEY.encode()).decode()}"},
    ],
)
def test_wrong_or_missing_credentials_get_401_and_change_nothing(client, auth, headers):
    register(client, auth, {"token": "100", "contactId": 1})
    response = post(client, [activity(contactId=1)], headers=headers)
    body = assert_error_shape(response, 401)
    assert "Basic" in response.headers["WWW-Authenticate"]
    assert "BRIDGE_WEBHOOK_USERNAME" in body["message"]
    assert row(client, auth, "100")["state"] == "queued"
    assert kinds(client, auth, "100") == ["submitted"]


def test_basic_credentials_are_accepted(client):
    response = post(client, [], headers=basic())
    assert response.status_code == 200
    assert response.json == {
        "processed": 0,
        "removed": [],
        "unmatched": 0,
        "ignored": 0,
        "stale": 0,
        "ambiguous": 0,
    }


def test_bearer_key_is_accepted(client, auth):
    assert post(client, [], headers=auth).status_code == 200


def test_basic_is_refused_when_no_webhook_credentials_are_configured(make_app, auth):
    client = make_app().test_client()
    response = client.post(URL, json=[], headers=basic())
    assert_error_shape(response, 401)
    assert "Basic" not in response.headers["WWW-Authenticate"]
    assert client.post(URL, json=[], headers=auth).status_code == 200


# --- Reteno activity arrays ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("registered", "reported"),
    [
        ({"contactId": 5501}, {"contactId": 5501}),
        ({"contactId": 5501}, {"contactId": "5501"}),
        ({"externalCustomerId": "C-42"}, {"externalCustomerId": "C-42"}),
        ({"email": "ann@example.com"}, {"email": "Ann@Example.com"}),
        ({"phone": "+380 (95) 649-09-55"}, {"sms": "380956490955"}),
        ({"phone": "+380 (95) 649-09-55"}, {"phone": "+380956490955"}),
    ],
)
def test_undelivered_forbidden_removes_the_matching_token(
    client, auth, clock, registered, reported
):
    register(client, auth, {"token": "1001", **registered})
    response = post(client, [activity(**reported)])
    assert response.status_code == 200, response.json
    assert response.json == {
        "processed": 1,
        "removed": ["1001"],
        "unmatched": 0,
        "ignored": 0,
        "stale": 0,
        "ambiguous": 0,
    }

    item = row(client, auth, "1001")
    assert item["state"] == "removed"
    assert item["removedAt"] is not None
    assert "Forbidden: bot was blocked by the user" in item["removalReason"]
    assert item["removalReason"].startswith("UNDELIVERED")

    events = history(client, auth, "1001")
    assert [e["kind"] for e in events] == ["submitted", "status", "removed"]
    status, removed = events[1], events[2]
    assert status["detail"]["status"] == "UNDELIVERED"
    assert status["detail"]["error"] == BLOCKED
    assert status["detail"]["messageId"] == 123456
    assert status["detail"]["blocked"] is True
    assert status["detail"]["raw"]["newField"] == {"we": "do not know yet"}
    assert status["detail"]["raw"]["broadcastId"] == 9001
    assert removed["detail"]["cause"] == "status_blocked"
    assert removed["detail"]["previousState"] == "queued"
    assert removed["detail"]["messageId"] == 123456


@pytest.mark.parametrize("status", ["FAILED", "UNDELIVERED", "BOT_SEND_ERROR", "failed"])
@pytest.mark.parametrize(
    "description",
    [
        "Forbidden",
        "Forbidden: bot was blocked by the user",
        "403",
        "user BLOCKED the bot",
        "Error 403: Forbidden: user is deactivated",
    ],
)
def test_every_failure_saying_forbidden_blocked_or_403_removes(client, auth, status, description):
    register(client, auth, {"token": "1002", "externalCustomerId": "C-2"})
    response = post(client, [activity(status, description, externalCustomerId="C-2")])
    assert response.json["removed"] == ["1002"]


@pytest.mark.parametrize(
    ("status", "description"),
    [
        ("UNDELIVERED", "400: Bad Request: chat not found"),
        ("FAILED", None),
        ("BOT_SEND_ERROR", "429: Too Many Requests: retry after 5"),
        ("READ", "blocked"),  # not a failure: the word alone removes nothing
        ("SPAM", "403"),
    ],
)
def test_other_failures_and_statuses_are_recorded_only(client, auth, status, description):
    register(client, auth, {"token": "1003", "contactId": 3})
    response = post(client, [activity(status, description, contactId=3)])
    assert response.json == {
        "processed": 1,
        "removed": [],
        "unmatched": 0,
        "ignored": 0,
        "stale": 0,
        "ambiguous": 0,
    }
    assert row(client, auth, "1003")["state"] == "queued"
    [status_event] = [e for e in history(client, auth, "1003") if e["kind"] == "status"]
    assert status_event["detail"]["status"] == status
    assert status_event["detail"]["blocked"] is False


def test_delivered_sent_clicked_are_recorded_on_the_registration_history(
    client, auth, bridge, requests_mock
):
    requests_mock.post(TOKENS_URL, json="OK")
    [reg] = register(client, auth, {"token": "1004", "contactId": 4})
    bridge.deliver_once()
    body = [
        activity("SENT", None, contactId=4, messageId=1),
        activity("DELIVERED", None, contactId=4, messageId=1),
        activity("CLICKED", None, contactId=4, messageId=1, link="https://example.com/x"),
    ]
    response = post(client, body)
    assert response.json == {
        "processed": 3,
        "removed": [],
        "unmatched": 0,
        "ignored": 0,
        "stale": 0,
        "ambiguous": 0,
    }
    assert row(client, auth, "1004")["state"] == "delivered"
    events = history(client, auth, "1004")
    assert [e["kind"] for e in events] == ["submitted", "delivered", "status", "status", "status"]
    assert [e["detail"]["status"] for e in events[2:]] == ["SENT", "DELIVERED", "CLICKED"]
    assert {e["registrationId"] for e in events[2:]} == {reg["id"]}
    assert events[4]["detail"]["raw"]["link"] == "https://example.com/x"


def test_a_block_naming_a_contact_of_several_chats_removes_none(client, auth):
    # Reteno drops exactly the chat that failed; the event names only the contact: no guessing
    register(
        client,
        auth,
        {"token": "2001", "contactId": 77},
        {"token": "2002", "contactId": 77},
        {"token": "2003", "contactId": 78},
    )
    response = post(client, [activity(contactId=77)])
    assert response.json["removed"] == [] and response.json["ambiguous"] == 1
    assert {t: row(client, auth, t)["state"] for t in ("2001", "2002", "2003")} == {
        "2001": "queued",
        "2002": "queued",
        "2003": "queued",
    }
    for token in ("2001", "2002"):
        last = history(client, auth, token)[-1]
        assert last["kind"] == "status_ambiguous"
        assert last["detail"]["candidates"] == ["2001", "2002"]
    assert kinds(client, auth, "2003") == ["submitted"]
    # the rest of a body goes on after an ambiguous block
    response = post(client, [activity(contactId=77, messageId=2), activity(contactId=78)])
    assert response.json["removed"] == ["2003"] and response.json["ambiguous"] == 1


def test_a_block_found_by_identifier_removes_the_chat_under_every_identifier(client, auth):
    # the user blocked the bot: the chat is gone, whichever identifier it was registered with
    register(client, auth, {"token": "2101", "contactId": 10}, {"token": "2101", "email": "b@x.io"})
    assert post(client, [activity(contactId=10)]).json["removed"] == ["2101"]
    states = {r["matchedBy"]: r["state"] for r in rows(client, auth, token="2101")}
    assert states == {"contactId": "removed", "email": "removed"}


def test_a_status_names_an_identifier_in_nfc_and_never_by_a_format_character(client, auth):
    """Statuses read identifiers with the same normalisers as /register: an NFD spelling
    finds the NFC one, and a value with a bidi override or zero-width space names
    nobody."""
    register(
        client,
        auth,
        {"token": "2201", "externalCustomerId": "Caf\u00e9"},
        {"token": "2202", "externalCustomerId": "Zoe"},
    )
    body = [
        activity(externalCustomerId="Zo\u200be"),
        activity(externalCustomerId="\u202eZoe"),
        activity(externalCustomerId="Cafe\u0301"),
    ]
    assert post(client, body).json["removed"] == ["2201"]
    assert row(client, auth, "2202")["state"] == "queued"


# --- the simple vocabulary (bot backend, bearer key) ----------------------------------------


def test_bot_backend_reports_forbidden_by_token(client, auth):
    register(
        client, auth, {"token": "123", "email": "ann@example.com"}, {"token": "123", "contactId": 9}
    )
    body = {"token": "123", "status": "FAILED", "error": "Forbidden: bot was blocked by the user"}
    response = post(client, body, headers=auth)
    assert response.status_code == 200
    assert response.json == {
        "processed": 1,
        "removed": ["123"],
        "unmatched": 0,
        "ignored": 0,
        "stale": 0,
        "ambiguous": 0,
    }
    assert {r["state"] for r in rows(client, auth, token="123")} == {"removed"}
    events = history(client, auth, "123")
    # one chat under two identities: the second is an identity conflict
    assert [e["kind"] for e in events] == [
        "submitted",
        "submitted",
        "conflict",
        "status",
        "status",
        "removed",
        "removed",
    ]
    assert events[3]["detail"]["raw"] == body
    assert events[3]["detail"]["via"] == "token"


def test_token_given_as_integer_and_identifiers_in_simple_vocabulary(client, auth):
    register(
        client,
        auth,
        {"token": "-1001234", "phone": "380501112233"},
        {"token": "555", "externalCustomerId": "E-1"},
    )
    response = post(
        client,
        [
            {"token": -1001234, "status": "FAILED", "error": "Forbidden"},
            {"externalCustomerId": "E-1", "status": "SENT"},
        ],
        headers=auth,
    )
    assert response.json == {
        "processed": 2,
        "removed": ["-1001234"],
        "unmatched": 0,
        "ignored": 0,
        "stale": 0,
        "ambiguous": 0,
    }
    assert kinds(client, auth, "555") == ["submitted", "status"]


def test_the_highest_priority_identifier_decides(client, auth):
    register(
        client,
        auth,
        {"token": "3001", "contactId": 31},
        {"token": "3002", "email": "x@example.com"},
    )
    response = post(
        client, [activity(contactId=31, email="x@example.com", externalCustomerId=None)]
    )
    assert response.json["removed"] == ["3001"]
    assert row(client, auth, "3002")["state"] == "queued"
    assert kinds(client, auth, "3002") == ["submitted"]


def test_a_lower_identifier_is_used_when_the_higher_names_no_registration(client, auth):
    # Reteno always sends its own contactId; a bot that registered by externalCustomerId
    # is still found, as Reteno itself would match: first identifier that matches wins.
    register(client, auth, {"token": "3101", "externalCustomerId": "C-31"})
    response = post(client, [activity(contactId=999999, externalCustomerId="C-31")])
    assert response.json["removed"] == ["3101"]
    [status] = [e for e in history(client, auth, "3101") if e["kind"] == "status"]
    assert status["detail"]["via"] == "externalCustomerId"


def test_token_wins_over_identifiers(client, auth):
    register(client, auth, {"token": "3201", "contactId": 32}, {"token": "3202", "contactId": 32})
    response = post(
        client,
        {"token": "3202", "contactId": 32, "status": "FAILED", "error": "Forbidden"},
        headers=auth,
    )
    assert response.json["removed"] == ["3202"]
    assert row(client, auth, "3201")["state"] == "queued"


# --- unmatched and ignored ------------------------------------------------------------------


def test_events_matching_no_registration_are_counted_unmatched(client, auth):
    register(client, auth, {"token": "4001", "contactId": 40})
    response = post(
        client,
        [
            activity(contactId=424242),
            activity("DELIVERED", None, email="nobody@example.com"),
            {"token": "4999", "status": "FAILED", "error": "Forbidden"},
        ],
    )
    assert response.status_code == 200
    assert response.json == {
        "processed": 3,
        "removed": [],
        "unmatched": 3,
        "ignored": 0,
        "stale": 0,
        "ambiguous": 0,
    }
    assert row(client, auth, "4001")["state"] == "queued"
    [event] = history(client, auth, "4999")
    assert event["kind"] == "status_unmatched"
    assert event["detail"]["status"] == "FAILED"
    assert event["detail"]["raw"]["token"] == "4999"


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"token": "5001"}, "no status"),
        ({"token": "5001", "status": ""}, "no status"),
        ({"token": "5001", "status": 42}, "unrecognised status"),
        ({"token": "5001", "status": "not a status!"}, "unrecognised status"),
        ({"token": "5001", "activityStatus": "SENT", "mediaType": "email"}, "not Telegram"),
    ],
)
def test_events_without_a_usable_status_are_ignored_and_recorded(client, auth, event, reason):
    register(client, auth, {"token": "5001", "contactId": 50})
    response = post(client, [event])
    assert response.status_code == 200
    assert response.json == {
        "processed": 1,
        "removed": [],
        "unmatched": 0,
        "ignored": 1,
        "stale": 0,
        "ambiguous": 0,
    }
    ignored = [e for e in history(client, auth, "5001") if e["kind"] == "status_ignored"]
    assert len(ignored) == 1  # the body's one summary, on the one token its objects name
    detail = ignored[0]["detail"]
    assert detail["count"] == 1
    [(why, count)] = detail["reasons"].items()
    assert reason in why and count == 1
    assert detail["samples"] == [event]


@pytest.mark.parametrize(
    "event",
    [
        {"status": "FAILED", "error": "Forbidden"},  # no token, no identifier
        activity(),  # every identifier empty
        activity(email="not-an-email"),
        activity(contactId=-5),
        activity(sms="12"),
        {"token": "abc", "status": "FAILED", "error": "Forbidden", "contactId": 50},
        {"token": True, "status": "SENT"},
    ],
)
def test_events_without_a_usable_token_or_identifier_are_ignored(client, auth, event):
    register(client, auth, {"token": "5002", "contactId": 50})
    response = post(client, [event, event | {"messageId": "other"}])
    assert response.status_code == 200
    assert response.json == {
        "processed": 2,
        "removed": [],
        "unmatched": 0,
        "ignored": 2,
        "stale": 0,
        "ambiguous": 0,
    }
    assert row(client, auth, "5002")["state"] == "queued"


def test_an_invalid_lower_identifier_does_not_spoil_a_valid_higher_one(client, auth):
    register(client, auth, {"token": "5003", "contactId": 53})
    response = post(client, [activity(contactId=53, email="broken@", sms="x")])
    assert response.json["removed"] == ["5003"]
    [status] = [e for e in history(client, auth, "5003") if e["kind"] == "status"]
    assert set(status["detail"]["invalid"]) == {"email", "sms"}


def test_credentials_in_an_event_are_not_stored(client, auth):
    register(client, auth, {"token": "5004", "contactId": 54})
    post(
        client,
        [
            activity(
                "DELIVERED",
                None,
                contactId=54,
                password="hunter2",
                apiKey="k-123",
                nested={"client_secret": "s", "keep": 1},
            )
        ],
    )
    [status] = [e for e in history(client, auth, "5004") if e["kind"] == "status"]
    raw = status["detail"]["raw"]
    assert "password" not in raw and "apiKey" not in raw
    assert raw["nested"] == {"keep": 1}
    assert raw["contactId"] == 54


# --- replay ------------------------------------------------------------------------------


def test_replaying_the_same_body_changes_and_records_nothing_more(client, auth):
    register(client, auth, {"token": "6001", "contactId": 60}, {"token": "6002", "contactId": 61})
    body = [
        activity(contactId=60, messageId=1),
        activity("CLICKED", None, contactId=61, messageId=2),
        activity(contactId=606060, messageId=3),
        {"token": "6002", "note": "no status"},
    ]
    first = post(client, body)
    assert first.json == {
        "processed": 4,
        "removed": ["6001"],
        "unmatched": 1,
        "ignored": 1,
        "stale": 0,
        "ambiguous": 0,
    }
    before = {t: history(client, auth, t) for t in ("6001", "6002")}
    rows_before = rows(client, auth)

    second = post(client, body)
    assert second.status_code == 200
    assert second.json == {
        "processed": 4,
        "removed": [],
        "unmatched": 1,
        "ignored": 1,
        "stale": 0,
        "ambiguous": 0,
    }
    assert {t: history(client, auth, t) for t in ("6001", "6002")} == before
    assert rows(client, auth) == rows_before


def test_concurrent_replays_apply_once(app, client, auth):
    register(client, auth, {"token": "6051", "contactId": 65})
    body = [activity(contactId=65), activity("CLICKED", None, contactId=65, messageId=9)]
    results = []

    def deliver():
        results.append(post(app.test_client(), body).json)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r["removed"] for r in results) == [[], [], [], ["6051"]]
    assert kinds(client, auth, "6051") == ["submitted", "status", "status", "removed"]


def test_a_repeated_event_inside_one_body_is_applied_once(client, auth):
    register(client, auth, {"token": "6101", "contactId": 62})
    event = activity("DELIVERED", None, contactId=62)
    response = post(client, [event, event])
    assert response.json == {
        "processed": 2,
        "removed": [],
        "unmatched": 0,
        "ignored": 0,
        "stale": 0,
        "ambiguous": 0,
    }
    assert kinds(client, auth, "6101") == ["submitted", "status"]


def test_a_replayed_old_block_does_not_remove_the_token_registered_again(client, auth):
    register(client, auth, {"token": "6201", "contactId": 63})
    body = [activity(contactId=63)]
    assert post(client, body).json["removed"] == ["6201"]
    [again] = register(client, auth, {"token": "6201", "contactId": 63})
    assert post(client, body).json["removed"] == []
    assert {r["id"]: r["state"] for r in rows(client, auth, token="6201")}[again["id"]] == "queued"


def test_a_late_status_about_a_removed_token_lands_on_its_history(client, auth):
    register(client, auth, {"token": "6301", "contactId": 64})
    response = post(
        client,
        [activity(contactId=64, messageId=1), activity("CLICKED", None, contactId=64, messageId=2)],
    )
    assert response.json == {
        "processed": 2,
        "removed": ["6301"],
        "unmatched": 0,
        "ignored": 0,
        "stale": 0,
        "ambiguous": 0,
    }
    response = post(client, [activity(contactId=64, messageId=3)])
    assert response.json == {
        "processed": 1,
        "removed": [],
        "unmatched": 0,
        "ignored": 0,
        "stale": 0,
        "ambiguous": 0,
    }
    events = history(client, auth, "6301")
    assert [e["kind"] for e in events] == ["submitted", "status", "status", "removed", "status"]
    assert events[2]["detail"]["registrationState"] == "removed"
    assert row(client, auth, "6301")["state"] == "removed"


def test_a_sign_of_life_of_a_removed_chat_leaves_its_removal_time(client, auth, clock):
    clock.now = datetime(2030, 1, 1, 12, tzinfo=UTC)
    register(client, auth, {"token": "6501", "contactId": 66})
    clock.now = datetime(2030, 1, 1, 15, tzinfo=UTC)
    blocked = activity(contactId=66, activityDateTime="2030-01-01T13:00:00Z", messageId=1)
    assert post(client, [blocked]).json["removed"] == ["6501"]
    post(
        client,
        [
            activity(
                "CLICKED", None, contactId=66, activityDateTime="2030-01-01T14:00:00Z", messageId=2
            )
        ],
    )
    assert row(client, auth, "6501")["removedAt"] == "2030-01-01T13:00:00+00:00"


def test_a_late_status_lands_on_the_latest_of_the_chats_removed_registrations(client, auth):
    [first] = register(client, auth, {"token": "6401", "contactId": 65})
    assert post(client, [activity(contactId=65, messageId=1)]).json["removed"] == ["6401"]
    [again] = register(client, auth, {"token": "6401", "contactId": 65})
    assert post(client, [activity(contactId=65, messageId=2)]).json["removed"] == ["6401"]
    post(client, [activity("CLICKED", None, contactId=65, messageId=3)])
    [late] = [e for e in history(client, auth, "6401") if e["kind"] == "status"][-1:]
    assert late["detail"]["status"] == "CLICKED"
    assert (late["registrationId"], first["id"]) == (again["id"], first["id"])


def test_a_removed_token_registered_again_is_a_new_registration(
    client, auth, bridge, requests_mock
):
    requests_mock.post(TOKENS_URL, json="OK")
    [first] = register(client, auth, {"token": "7001", "externalCustomerId": "C-7"})
    bridge.deliver_once()
    post(client, {"token": "7001", "status": "FAILED", "error": "Forbidden"}, headers=auth)
    [again] = register(client, auth, {"token": "7001", "externalCustomerId": "C-7"})
    assert again["duplicate"] is False
    assert again["id"] != first["id"]
    assert again["state"] == "queued"
    bridge.deliver_once()
    assert [r.json()["tokens"][0]["token"] for r in requests_mock.request_history] == [
        "7001",
        "7001",
    ]
    states = {r["id"]: r["state"] for r in rows(client, auth, token="7001")}
    assert states == {first["id"]: "removed", again["id"]: "delivered"}


# --- malformed bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"data": "token=1", "content_type": "application/x-www-form-urlencoded"}, 415),
        ({"data": "[{]", "content_type": "text/plain"}, 415),
        ({"data": '[{"status": ', "content_type": "application/json"}, 400),
        ({"data": b"\xff\xfe", "content_type": "application/json"}, 400),
        ({"json": [1, 2]}, 422),
        ({"json": "x"}, 422),
        ({"json": 5}, 422),
        ({"data": "null", "content_type": "application/json"}, 422),
        ({"json": [{"token": "8001", "status": "FAILED", "error": "Forbidden"}, "x"]}, 422),
        ({"json": [[{"token": "8001", "status": "FAILED", "error": "Forbidden"}]]}, 422),
    ],
)
def test_malformed_bodies_get_4xx_and_change_nothing(client, auth, kwargs, code):
    register(client, auth, {"token": "8001", "contactId": 80})
    response = client.post(URL, headers=basic(), **kwargs)
    body = assert_error_shape(response, code)
    if code == 422 and isinstance(kwargs.get("json"), list):
        assert body["errors"]
        assert all(key.isdigit() for key in body["errors"])
    assert row(client, auth, "8001")["state"] == "queued"
    assert kinds(client, auth, "8001") == ["submitted"]


def test_a_body_over_the_limit_is_413(make_app):
    client = make_app(
        BRIDGE_WEBHOOK_USERNAME=HOOK_USER,
        BRIDGE_WEBHOOK_PASSWORD=HOOK_PASSWORD,
        BRIDGE_MAX_BODY_BYTES=2048,
    ).test_client()
    response = post(client, [activity(contactId=i) for i in range(1, 50)])
    assert_error_shape(response, 413)


# --- volume ---------------------------------------------------------------------------------


def test_a_thousand_events_in_one_request(client, auth):
    register(
        client,
        auth,
        *({"token": str(10_000 + i), "externalCustomerId": f"C-{i}"} for i in range(1000)),
    )
    body = []
    for i in range(1000):
        if i % 2:
            body.append(activity(externalCustomerId=f"C-{i}", messageId=i))
        elif i % 10 == 0:
            body.append(activity("DELIVERED", None, externalCustomerId=f"X-{i}", messageId=i))
        else:
            body.append(activity("CLICKED", None, externalCustomerId=f"C-{i}", messageId=i))
    response = post(client, body)
    assert response.status_code == 200
    assert response.json["processed"] == 1000
    assert response.json["unmatched"] == 100
    assert response.json["ignored"] == 0
    assert response.json["removed"] == [str(10_000 + i) for i in range(1, 1000, 2)]
    assert len(rows(client, auth, state="removed")) == 500
    assert len(rows(client, auth, state="queued")) == 500
    assert kinds(client, auth, "10002") == ["submitted", "status"]

    again = post(client, body)
    assert again.json["removed"] == [] and again.json["unmatched"] == 100
    assert kinds(client, auth, "10002") == ["submitted", "status"]


def test_status_metrics_are_exported(client, auth):
    register(client, auth, {"token": "9001", "contactId": 90})
    post(client, [activity(contactId=90), activity(contactId=91), {"status": "SENT"}])
    text = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'bridge_status_events_total{kind="blocked"} 1.0' in text
    assert 'bridge_status_events_total{kind="unmatched"} 1.0' in text
    assert 'bridge_status_events_total{kind="ignored"} 1.0' in text
    assert 'bridge_removals_total{cause="status_blocked"} 1.0' in text
    # the same body again: each of its three objects counted once more, as a duplicate
    post(client, [activity(contactId=90), activity(contactId=91), {"status": "SENT"}])
    text = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'bridge_status_events_total{kind="duplicate"} 3.0' in text


# --- sandbox: the simulator blocks a token and reports it like Reteno -----------------------


@pytest.mark.real_http
def test_sandbox_block_reaches_the_ledger_over_http(make_app, auth):
    app = make_app(RETENO_APP_UUID=None, RETENO_API_KEY=None, BRIDGE_SANDBOX=True)
    bridge = app.extensions["reteno_bridge"]
    assert bridge.settings.sandbox
    client = app.test_client()
    register(
        client,
        auth,
        {"token": "880001", "externalCustomerId": "C-88"},
        {"token": "880002", "externalCustomerId": "C-89"},
    )
    bridge.deliver_once()
    assert {r["state"] for r in rows(client, auth)} == {"delivered"}
    held = client.get("/sandbox/reteno/contacts", query_string={"token": "880001"})
    assert held.status_code == 200 and held.json["contacts"]

    response = client.post("/sandbox/reteno/block/880001")
    assert response.status_code == 200, response.data
    [event] = response.json["events"]
    assert event["status"] == "FAILED" and "Forbidden" in event["error"]

    item = row(client, auth, "880001")
    assert item["state"] == "removed"
    assert "Forbidden: bot was blocked by the user" in item["removalReason"]
    assert item["removedAt"] is not None
    assert row(client, auth, "880002")["state"] == "delivered"
    events = history(client, auth, "880001")
    assert [e["kind"] for e in events][-2:] == ["status", "removed"]
    assert events[-2]["detail"]["raw"]["externalCustomerId"] == "C-88"
    assert (
        client.get("/sandbox/reteno/contacts", query_string={"token": "880001"}).json["contacts"]
        == []
    )

    # Blocking again: the simulator no longer holds it, and the ledger stays as it is.
    assert client.post("/sandbox/reteno/block/880001").status_code == 404
    assert row(client, auth, "880001")["state"] == "removed"


@pytest.mark.parametrize("value", ["²", "١٢", "1" * 5000])
def test_odd_contact_ids_are_ignored_not_a_500(client, auth, value):
    response = client.post(
        "/statuses",
        headers=auth,
        json=[
            {"status": "FAILED", "error": "Forbidden", "contactId": value},
        ],
    )
    assert response.status_code == 200
    assert response.json["ignored"] == 1


def test_a_huge_integer_literal_is_an_ignored_event(client, auth):
    body = '[{"status": "FAILED", "error": "Forbidden", "contactId": ' + "9" * 5000 + "}]"
    response = client.post("/statuses", headers=auth, data=body, content_type="application/json")
    assert response.status_code == 200
    assert response.json["ignored"] == 1


# --- time decides ------------------------------------------------------------------------


def test_a_late_block_does_not_remove_a_chat_seen_alive_after_it(client, auth):
    # the case: blocked yesterday, registered again today, the news arrives late
    register(client, auth, {"token": 777, "email": "ann@example.com"})
    register(client, auth, {"token": 777, "email": "ann@example.com"})  # a sign of life
    response = post(
        client, [activity(email="ann@example.com", activityDateTime="2020-01-01T10:00:00")]
    )
    assert response.json == {
        "processed": 1,
        "removed": [],
        "unmatched": 0,
        "ignored": 0,
        "stale": 1,
        "ambiguous": 0,
    }
    assert row(client, auth, "777")["state"] == "queued"
    assert kinds(client, auth, "777")[-1] == "status_stale"


def test_an_older_sign_of_life_earlier_in_the_body_leaves_a_later_block_stale(client, auth, clock):
    # registered at noon; the body says "delivered at 10:00", then "blocked at 11:00":
    # the chat was alive at noon, so the block is stale, and noon stays its last sign
    clock.now = datetime(2030, 1, 1, 12, tzinfo=UTC)
    register(client, auth, {"token": 782, "contactId": 82})
    seen = row(client, auth, "782")["lastSeenAt"]
    response = post(
        client,
        [
            activity(
                "DELIVERED",
                None,
                contactId=82,
                activityDateTime="2030-01-01T10:00:00Z",
                messageId=1,
            ),
            activity(contactId=82, activityDateTime="2030-01-01T11:00:00Z", messageId=2),
        ],
    )
    assert response.json["removed"] == [] and response.json["stale"] == 1
    assert (row(client, auth, "782")["state"], row(client, auth, "782")["lastSeenAt"]) == (
        "queued",
        seen,
    )


@pytest.mark.parametrize(
    "when",
    [
        "2030-01-01T00:00:00",
        "2030-01-01T00:00:00Z",
        "2030-01-01T02:00:00+02:00",
        1893456000,
        "1893456000",
        1893456000000,
    ],
)
def test_event_times_are_iso_8601_in_utc_or_epoch_seconds(client, auth, clock, when):
    clock.now = datetime(2029, 12, 31, tzinfo=UTC)
    register(client, auth, {"token": 778, "contactId": 78})
    clock.now = datetime(2030, 1, 2, tzinfo=UTC)
    response = post(client, [activity(contactId=78, activityDateTime=when)])
    assert response.json["removed"] == ["778"]
    assert row(client, auth, "778")["removedAt"] == "2030-01-01T00:00:00+00:00"


def test_a_status_without_a_time_takes_the_time_it_was_received(client, auth, clock):
    register(client, auth, {"token": 779, "contactId": 79})
    clock.advance(60)
    body = {"status": "FAILED", "error": "Forbidden", "token": 779}
    assert post(client, body, headers=auth).json["removed"] == ["779"]
    assert row(client, auth, "779")["removedAt"] == clock.now.isoformat()


def test_an_unreadable_time_counts_as_received_and_is_noted(client, auth, clock):
    register(client, auth, {"token": 780, "contactId": 80})
    clock.advance(60)
    response = post(client, [activity(contactId=80, activityDateTime="yesterday-ish")])
    assert response.json["removed"] == ["780"]
    status = [e for e in history(client, auth, "780") if e["kind"] == "status"][-1]
    assert "activityDateTime" in status["detail"]["invalid"]


def test_sent_delivered_clicked_are_signs_of_life(client, auth, clock):
    clock.now = datetime(2098, 12, 31, tzinfo=UTC)
    register(client, auth, {"token": 781, "contactId": 81})
    clock.now = datetime(2099, 2, 1, tzinfo=UTC)
    for n, status in enumerate(("SENT", "DELIVERED", "CLICKED"), 1):
        seen = f"2099-01-0{n}T00:00:00+00:00"
        post(
            client,
            [
                activity(
                    status=status,
                    description=None,
                    contactId=81,
                    activityDateTime=seen,
                    messageId=n,
                )
            ],
        )
        assert row(client, auth, "781")["lastSeenAt"] == seen
    # a block dated before the latest sign of life is stale
    response = post(client, [activity(contactId=81, activityDateTime="2099-01-02T00:00:00")])
    assert response.json["stale"] == 1 and row(client, auth, "781")["state"] == "queued"


def test_an_ambiguous_block_is_settled_by_telegram(make_app, auth):
    app = make_app(TELEGRAM_WEBHOOK_SECRET="tg-secret-0123456789")
    client = app.test_client()
    register(client, auth, {"token": 2201, "contactId": 91}, {"token": 2202, "contactId": 91})
    assert post(client, [activity(contactId=91)], headers=auth).json["ambiguous"] == 1
    kicked = {
        "update_id": 1,
        "my_chat_member": {
            "chat": {"id": 2202, "type": "private"},
            "from": {"id": 2202, "is_bot": False, "first_name": "A"},
            "date": 4070908800,
            "old_chat_member": {
                "status": "member",
                "user": {"id": 1, "is_bot": True, "first_name": "b"},
            },
            "new_chat_member": {
                "status": "kicked",
                "until_date": 0,
                "user": {"id": 1, "is_bot": True, "first_name": "b"},
            },
        },
    }
    assert (
        client.post(
            "/telegram/webhook",
            json=kicked,
            headers={"X-Telegram-Bot-Api-Secret-Token": "tg-secret-0123456789"},
        ).status_code
        == 200
    )
    assert (row(client, auth, "2201")["state"], row(client, auth, "2202")["state"]) == (
        "queued",
        "removed",
    )
    assert 'bridge_status_events_total{kind="ambiguous"} 1.0' in client.get(
        "/metrics", headers=auth
    ).get_data(as_text=True)


# --- bounded work per body (SECURITY.md finding 10) -------------------------------------


def test_a_body_of_unusable_objects_is_one_summary_event(client, auth, bridge):
    """250,000 tiny objects wrote 250,000 rows; now the ignored ones of a body are one
    event, counted by reason, with the first few as samples. A replay adds nothing."""
    register(client, auth, {"token": "7001", "contactId": 70})
    body = [{"n": i} for i in range(3000)] + [
        {"status": "SENT", "token": "7001"},
        {"status": "??", "token": "7001"},
    ]
    before = fz.ledger_counts(bridge)
    response = post(client, body)
    assert response.json == {
        "processed": 3002,
        "removed": [],
        "unmatched": 0,
        "ignored": 3001,
        "stale": 0,
        "ambiguous": 0,
    }
    after = fz.ledger_counts(bridge)
    assert after[1] - before[1] == 2  # events: the SENT status and one summary
    with bridge.db.read() as conn:
        [summary] = conn.execute(
            select(Event.token, Event.detail).where(Event.kind == "status_ignored")
        ).all()
    assert summary.token is None  # the objects name no single token
    assert summary.detail["count"] == 3001
    assert summary.detail["reasons"] == {
        "no status: expected 'status' or 'activityStatus'": 3000,
        "unrecognised status '??'": 1,
    }
    assert summary.detail["samples"] == [{"n": i} for i in range(5)]
    again = post(client, body)
    assert again.json == response.json
    assert fz.ledger_counts(bridge) == after


def test_a_summary_names_twenty_reasons_and_counts_the_rest(client, auth):
    """45 objects, each unusable for a reason of its own: the first 20 reasons by count,
    and the other 25 objects under ``(other reasons)``."""
    register(client, auth, {"token": "5001", "contactId": 50})
    response = post(client, [{"status": f"bad-{i}", "token": "5001"} for i in range(45)])
    assert response.json["ignored"] == 45
    [ignored] = [e for e in history(client, auth, "5001") if e["kind"] == "status_ignored"]
    reasons = ignored["detail"]["reasons"]
    assert len(reasons) == 21 and reasons.pop("(other reasons)") == 25
    assert sum(reasons.values()) == 20 and ignored["detail"]["count"] == 45


def test_a_summary_of_twenty_reasons_names_them_all_and_no_other(client, auth):
    register(client, auth, {"token": "5002", "contactId": 51})
    post(client, [{"status": f"bad-{i}", "token": "5002"} for i in range(20)])
    [ignored] = [e for e in history(client, auth, "5002") if e["kind"] == "status_ignored"]
    reasons = ignored["detail"]["reasons"]
    assert "(other reasons)" not in reasons and list(reasons.values()) == [1] * 20


def test_more_status_events_than_the_cap_is_a_413_and_records_nothing(make_app, auth):
    app = make_app(BRIDGE_MAX_STATUS_EVENTS=50)
    client, bridge = app.test_client(), app.extensions["reteno_bridge"]
    before = fz.ledger_counts(bridge)
    response = client.post(
        URL, json=[{"status": "SENT", "token": i} for i in range(1, 52)], headers=auth
    )
    body = assert_error_shape(response, 413)
    assert "BRIDGE_MAX_STATUS_EVENTS" in body["message"] and "51" in body["message"]
    assert fz.ledger_counts(bridge) == before
    response = client.post(
        URL, json=[{"status": "SENT", "token": i} for i in range(1, 51)], headers=auth
    )
    assert response.status_code == 200 and response.json["processed"] == 50


def test_the_default_cap_takes_ten_thousand_events(bridge):
    assert bridge.settings.max_status_events == 10_000  # RELIABILITY.md posts 10,000


# --- reported times: nothing from the future, the account's zone, whole seconds -----------
# (CONTRACT.md, Statuses; bridge/ledger/times.py). The ledger runs on the suite's clock.

NOW = datetime(2030, 6, 1, 9, 0, tzinfo=UTC)  # 12:00 in Kyiv (UTC+3 in summer)


def kyiv(hours: int, minutes: int, seconds: int = 0) -> str:
    """A time as Reteno writes it for an account in Europe/Kyiv: local, no offset."""
    return f"2030-06-01T{hours:02d}:{minutes:02d}:{seconds:02d}"


def status_events(client, auth, token):
    return [e for e in history(client, auth, token) if e["kind"].startswith("status")]


def test_a_block_dated_after_its_receipt_counts_as_received(client, auth, clock):
    clock.now = NOW
    register(client, auth, {"token": 790, "contactId": 90})
    clock.advance(60.5)
    response = post(client, [activity(contactId=90, activityDateTime="2099-01-01T00:00:00Z")])
    assert response.json["removed"] == ["790"]
    assert row(client, auth, "790")["removedAt"] == clock.now.isoformat()
    [status] = status_events(client, auth, "790")
    removed = history(client, auth, "790")[-1]
    for detail in (status["detail"], removed["detail"]):
        assert detail["at"] == clock.now.isoformat()
        assert detail["reportedAt"] == "2099-01-01T00:00:00+00:00"
        assert detail["clamped"] is True
    assert status["detail"]["raw"]["activityDateTime"] == "2099-01-01T00:00:00Z"


def test_a_sign_of_life_dated_after_its_receipt_counts_as_received(client, auth, clock):
    """A DELIVERED dated 2099 used to keep the chat alive until 2099: no block removed it."""
    clock.now = NOW
    register(client, auth, {"token": 791, "contactId": 91})
    clock.advance(60)
    post(client, [activity("DELIVERED", None, contactId=91, activityDateTime=4070908800)])
    assert row(client, auth, "791")["lastSeenAt"] == clock.now.isoformat()
    [status] = status_events(client, auth, "791")
    assert status["detail"]["clamped"] is True
    assert status["detail"]["reportedAt"] == "2099-01-01T00:00:00+00:00"
    clock.advance(300)
    block = activity(
        contactId=91,
        activityDateTime=(clock.now - timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        messageId=2,
    )
    assert post(client, [block]).json["removed"] == ["791"]


def test_a_time_not_after_its_receipt_is_not_marked(client, auth, clock):
    clock.now = NOW
    register(client, auth, {"token": 792, "contactId": 92})
    clock.advance(60)
    post(client, [activity(contactId=92, activityDateTime=clock.now.isoformat())])
    [status] = status_events(client, auth, "792")
    assert status["detail"]["at"] == clock.now.isoformat()
    assert "clamped" not in status["detail"] and "reportedAt" not in status["detail"]


def zoned_client(make_app, clock, zone):
    """A client of a bridge reading offset-less times in ``zone`` (None: the default,
    UTC), on the suite's clock, over the same database as ``client``."""
    app = make_app(
        BRIDGE_WEBHOOK_USERNAME=HOOK_USER,
        BRIDGE_WEBHOOK_PASSWORD=HOOK_PASSWORD,
        BRIDGE_STATUS_TIMEZONE=zone,
    )
    app.extensions["reteno_bridge"].ledger.clock = clock
    return app.test_client()


@pytest.fixture
def kyiv_client(make_app, clock):
    clock.now = NOW
    return zoned_client(make_app, clock, "Europe/Kyiv")


def test_offset_less_times_are_read_in_the_account_zone(kyiv_client, auth, clock):
    """A Kyiv contact: registered at 12:00 local, DELIVERED at 12:01, blocked at 12:06 (a
    real block, 5 minutes after the last message reached the chat): removed, dated as
    it happened."""
    register(kyiv_client, auth, {"token": 793, "contactId": 93})
    clock.advance(120)
    post(kyiv_client, [activity("DELIVERED", None, contactId=93, activityDateTime=kyiv(12, 1))])
    assert row(kyiv_client, auth, "793")["lastSeenAt"] == "2030-06-01T09:01:00+00:00"
    clock.advance(600)
    response = post(
        kyiv_client, [activity(contactId=93, activityDateTime=kyiv(12, 6), messageId=2)]
    )
    assert response.json["removed"] == ["793"]
    assert row(kyiv_client, auth, "793")["removedAt"] == "2030-06-01T09:06:00+00:00"
    assert [e["detail"]["at"] for e in status_events(kyiv_client, auth, "793")] == [
        "2030-06-01T09:01:00+00:00",
        "2030-06-01T09:06:00+00:00",
    ]


def test_without_the_zone_a_late_block_east_of_utc_removes_a_chat_that_came_back(
    make_app, auth, clock
):
    """What goes wrong without BRIDGE_STATUS_TIMEZONE for an account in Kyiv: its times
    read as UTC lie 3 hours ahead, so they count as received. A block at 12:05 that
    Reteno delivers late, at 12:40, after the user came back at 12:30, is taken as
    news from 12:40 and removes the chat; with the zone it is stale, as it should be."""
    for zone, token, removed in ((None, "794", ["794"]), ("Europe/Kyiv", "7940", [])):
        client = zoned_client(make_app, clock, zone)
        clock.now = NOW
        register(client, auth, {"token": token, "contactId": token})
        clock.now = NOW + timedelta(minutes=30)  # the user comes back: registered again
        register(client, auth, {"token": token, "contactId": token})
        clock.now = NOW + timedelta(minutes=40)
        response = post(client, [activity(contactId=token, activityDateTime=kyiv(12, 5))])
        assert response.json["removed"] == removed, zone


def test_without_the_zone_a_prompt_block_west_of_utc_is_wrongly_stale(make_app, auth, clock):
    """For an account in New York, times read as UTC lie 4 hours behind: a real block 5
    minutes after registration looks older than it and is stale; with the zone it
    removes."""
    for zone, token, removed in ((None, "795", []), ("America/New_York", "7950", ["7950"])):
        client = zoned_client(make_app, clock, zone)
        clock.now = NOW  # 05:00 in New York (UTC-4 in summer)
        register(client, auth, {"token": token, "contactId": token})
        clock.now = NOW + timedelta(minutes=6)
        response = post(client, [activity(contactId=token, activityDateTime="2030-06-01T05:05:00")])
        assert response.json["removed"] == removed, zone


@pytest.mark.parametrize(
    "when",
    [
        "2030-06-01T09:06:00Z",
        "2030-06-01T09:06:00+00:00",
        "2030-06-01T11:06:00+02:00",
        1906535160,
        "1906535160",
        1906535160000,
    ],
)
def test_times_with_an_offset_or_in_epoch_seconds_ignore_the_zone(kyiv_client, auth, clock, when):
    register(kyiv_client, auth, {"token": 796, "contactId": 96})
    clock.advance(600)
    assert post(kyiv_client, [activity(contactId=96, activityDateTime=when)]).json["removed"] == [
        "796"
    ]
    assert row(kyiv_client, auth, "796")["removedAt"] == "2030-06-01T09:06:00+00:00"


@pytest.mark.parametrize(
    ("when", "removed"),
    [
        ("2030-06-01T09:00:00Z", True),  # whole seconds: the registration's second
        ("2030-06-01T12:00:00", True),  # the same, offset-less in Kyiv
        (1906534800, True),  # epoch seconds
        ("2030-06-01T09:00:00.4Z", True),  # tenths: the same tenth
        ("2030-06-01T09:00:00.000Z", False),  # milliseconds: 400 ms before the registration
        ("2030-06-01T08:59:59Z", False),  # the second before
    ],
)
def test_a_block_is_compared_at_the_resolution_it_was_given_in(
    kyiv_client, auth, clock, when, removed
):
    clock.now = NOW + timedelta(milliseconds=400)  # /register at 09:00:00.4
    register(kyiv_client, auth, {"token": 797, "contactId": 97})
    clock.advance(5)
    response = post(kyiv_client, [activity(contactId=97, activityDateTime=when)])
    assert response.json["removed"] == (["797"] if removed else [])
    assert response.json["stale"] == (0 if removed else 1)


# --- Telegram's own words (CONTRACT.md: a failure is classified on its description) --------


@pytest.mark.parametrize(
    ("description", "reason"),
    [
        ("Forbidden: bot was blocked by the user", "blocked"),
        ("403: Forbidden: bot was blocked by the user", "blocked"),
        ("Forbidden: user is deactivated", "deactivated"),
        ("Forbidden: bot was kicked from the group chat", "kicked"),
        ("Forbidden: bot was kicked from the supergroup chat", "kicked"),
        ("Forbidden: bot was kicked from the channel chat", "kicked"),
        ("Forbidden", "forbidden"),  # a bare code: removed, and the reason says no more
        ("403", "forbidden"),
        ("Forbidden: bot can't initiate conversation with a user", "forbidden"),
        ("Bad Request: chat not found", None),  # a 400: recorded only
        ("400: Bad Request: chat not found", None),
        ("Too Many Requests: retry after 5", None),
        ("Internal Server Error", None),
    ],
)
@pytest.mark.parametrize("vocabulary", ["reteno", "simple"])
def test_a_failure_is_classified_on_telegrams_words(client, auth, description, reason, vocabulary):
    register(client, auth, {"token": 798, "contactId": 98})
    event = (
        activity(contactId=98, description=description)
        if vocabulary == "reteno"
        else {"status": "FAILED", "error": description, "token": 798}
    )
    response = post(client, [event])
    assert response.json["removed"] == (["798"] if reason else [])
    [status] = status_events(client, auth, "798")
    assert status["detail"]["blocked"] is (reason is not None)
    assert status["detail"].get("reason") == reason
    item = row(client, auth, "798")
    if reason is None:
        assert item["state"] == "queued" and item["removalReason"] is None
        return
    assert item["state"] == "removed"
    assert description in item["removalReason"]  # what was reported, in its own words
    removed = history(client, auth, "798")[-1]
    assert removed["kind"] == "removed" and removed["detail"]["reason"] == reason
    assert description in removed["detail"]["removalReason"]
