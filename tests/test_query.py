"""Reading the ledger over HTTP: GET /tokens (filters, keyset pages) and history."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import TOKENS_URL
from tests.helpers import register


def many(start: int, n: int) -> list[dict]:
    return [{"token": str(start + i), "email": f"user{start + i}@example.com"} for i in range(n)]


def walk(client, auth, limit=50, **filters):
    """Yield pages of GET /tokens, following ``next``."""
    cursor = None
    while True:
        args = {**filters, "limit": limit}
        if cursor:
            args["cursor"] = cursor
        response = client.get("/tokens", query_string=args, headers=auth)
        assert response.status_code == 200, response.get_json()
        page = response.get_json()
        yield page
        cursor = page["next"]
        if cursor is None:
            return


def assert_error(response, code, field):
    assert response.status_code == code
    body = response.get_json()
    assert body["code"] == code
    assert isinstance(body["status"], str) and body["status"]
    assert isinstance(body["message"], str) and body["message"]
    assert field in body["errors"], body
    return body


# --- auth ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/tokens", "/tokens/123456789/history"])
@pytest.mark.parametrize("header", [None, "Bearer wrong-key", "Basic dXNlcjpwYXNz"])
def test_reading_needs_a_bearer_key(client, path, header):
    headers = {"Authorization": header} if header else {}
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.get_json()
    assert body["code"] == 401 and body["status"] == "Unauthorized" and body["errors"] == {}


# --- pagination ------------------------------------------------------------------------


def test_pages_of_fifty_cover_every_registration_once(client, auth):
    register(client, auth, *many(1000, 120))
    pages = list(walk(client, auth, limit=50))
    assert [len(p["items"]) for p in pages] == [50, 50, 20]
    assert pages[-1]["next"] is None
    ids = [item["id"] for page in pages for item in page["items"]]
    assert len(ids) == len(set(ids)) == 120
    assert ids == sorted(ids, reverse=True)  # newest first
    tokens = {item["token"] for page in pages for item in page["items"]}
    assert tokens == {str(1000 + i) for i in range(120)}


def test_default_limit_is_fifty_and_an_exact_last_page_has_no_next(client, auth):
    register(client, auth, *many(1000, 100))
    first = client.get("/tokens", headers=auth).get_json()
    assert len(first["items"]) == 50 and first["next"]
    second = client.get("/tokens", query_string={"cursor": first["next"]}, headers=auth)
    assert len(second.get_json()["items"]) == 50
    assert second.get_json()["next"] is None


def test_the_walk_is_stable_while_registrations_arrive(client, auth):
    register(client, auth, *many(1000, 120))
    before = [item["id"] for page in walk(client, auth) for item in page["items"]]

    seen, cursor, arriving = [], None, 5000
    while True:
        args = {"limit": 50, **({"cursor": cursor} if cursor else {})}
        page = client.get("/tokens", query_string=args, headers=auth).get_json()
        seen.extend(item["id"] for item in page["items"])
        # New registrations between every two pages: they are newer than every row of the
        # walk, so they land before its first page and never shift the pages still to come.
        register(client, auth, *many(arriving, 30))
        arriving += 30
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == before

    fresh = [item["id"] for page in walk(client, auth, limit=500) for item in page["items"]]
    assert len(fresh) == 120 + 90
    assert fresh[90:] == before  # the newcomers come first on a new walk


def test_limit_bounds(client, auth):
    register(client, auth, *many(1000, 3))
    for bad in ("0", "501", "-1", "ten"):
        assert_error(client.get("/tokens", query_string={"limit": bad}, headers=auth), 422, "limit")
    for good, n in (("1", 1), ("500", 3)):
        response = client.get("/tokens", query_string={"limit": good}, headers=auth)
        assert response.status_code == 200 and len(response.get_json()["items"]) == n


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor!",
        "%%%",
        _b64(b"plain text"),
        _b64(json.dumps({"before": "12"}).encode()),
        _b64(json.dumps({"before": 0}).encode()),
        _b64(json.dumps({"before": True}).encode()),
        _b64(json.dumps({"after": 5}).encode()),
        _b64(json.dumps([1, 2]).encode()),
        "A" * 201,
    ],
)
def test_a_cursor_that_is_not_ours_is_422(client, auth, cursor):
    response = client.get("/tokens", query_string={"cursor": cursor}, headers=auth)
    body = assert_error(response, 422, "cursor")
    assert body["status"] == "Unprocessable Entity"


# --- filters ---------------------------------------------------------------------------


@pytest.fixture
def ann_and_bob(client, auth):
    return register(
        client,
        auth,
        {
            "token": 123456789,
            "contactId": 42,
            "externalCustomerId": "crm-7",
            "phone": "+380 (95) 649-09-55",
            "email": "Ann@Example.com",
        },
        {
            "token": "987654321",
            "contactId": 43,
            "externalCustomerId": "crm-8",
            "phone": "+44 20 7946 0958",
            "email": "bob@example.com",
        },
    )


@pytest.mark.parametrize(
    "args",
    [
        {"phone": "+380 (95) 649-09-55"},
        {"phone": "380956490955"},
        {"phone": " 380-95-649-09-55 "},
        {"email": " Ann@Example.COM "},
        {"email": "ann@example.com"},
        {"contactId": "42"},
        {"contactId": " 42 "},
        {"externalCustomerId": " crm-7 "},
        {"token": "123456789"},
        {"token": "00123456789"},
        {"token": "0123456789", "email": "ANN@example.com"},
    ],
)
def test_identifiers_are_normalised_as_register_normalises_them(client, auth, ann_and_bob, args):
    items = client.get("/tokens", query_string=args, headers=auth).get_json()["items"]
    assert [item["token"] for item in items] == ["123456789"]
    assert items[0]["phone"] == "380956490955"
    assert items[0]["email"] == "ann@example.com"


def test_a_raw_plus_in_the_query_string_still_finds_the_phone(client, auth, ann_and_bob):
    # An unencoded "+" arrives as a space; the phone still normalises to its digits.
    response = client.get("/tokens?phone=+380956490955", headers=auth)
    assert [i["token"] for i in response.get_json()["items"]] == ["123456789"]


def test_filters_combine_and_a_miss_is_an_empty_page(client, auth, ann_and_bob):
    both = client.get(
        "/tokens", query_string={"contactId": 42, "email": "bob@example.com"}, headers=auth
    ).get_json()
    assert both == {"items": [], "next": None}
    assert client.get(
        "/tokens", query_string={"email": "nobody@example.com"}, headers=auth
    ).get_json() == {"items": [], "next": None}


@pytest.mark.parametrize(
    "field,value",
    [
        ("phone", "12"),
        ("phone", "call me"),
        ("email", "not-an-email"),
        ("contactId", "-1"),
        ("contactId", "x"),
        ("token", "abc"),
        ("token", "0"),
        ("externalCustomerId", "   "),
        ("state", "lost"),
        ("colour", "blue"),
    ],
)
def test_a_bad_filter_is_422_keyed_by_its_name(client, auth, field, value):
    assert_error(client.get("/tokens", query_string={field: value}, headers=auth), 422, field)


def test_state_filter(client, auth, requests_mock, bridge):
    register(client, auth, *many(1000, 3))
    requests_mock.post(TOKENS_URL, json="OK")
    bridge.deliver_once()
    register(client, auth, *many(2000, 2))

    def tokens(**args):
        page = client.get("/tokens", query_string=args, headers=auth).get_json()
        return sorted(item["token"] for item in page["items"])

    assert tokens(state="delivered") == ["1000", "1001", "1002"]
    assert tokens(state="queued") == ["2000", "2001"]
    assert tokens(state="dead") == []
    assert tokens(state="delivered", email="user1001@example.com") == ["1001"]
    assert tokens(state="queued", email="user1001@example.com") == []
    # the state filter pages like any other
    pages = list(walk(client, auth, limit=2, state="delivered"))
    assert [len(p["items"]) for p in pages] == [2, 1]


def test_a_registration_shows_its_identifiers_state_and_times(client, auth, requests_mock, bridge):
    register(client, auth, {"token": 555000111, "contactId": 9, "phone": "+1 202 555 0100"})
    requests_mock.post(TOKENS_URL, json="OK")
    bridge.deliver_once()
    item = client.get("/tokens", headers=auth).get_json()["items"][0]
    assert item["token"] == "555000111"
    assert item["contactId"] == 9
    assert item["externalCustomerId"] is None
    assert item["phone"] == "12025550100"
    assert item["email"] is None
    assert item["matchedBy"] == "contactId"
    assert item["state"] == "delivered"
    assert item["attempts"] == 1
    assert item["createdAt"].endswith("+00:00")
    assert item["deliveredAt"] >= item["createdAt"]
    assert item["removedAt"] is None and item["removalReason"] is None


# --- history -----------------------------------------------------------------------------


def test_history_lists_every_event_oldest_first(client, auth, requests_mock, bridge, clock):
    register(client, auth, {"token": 123456789, "email": "ann@example.com"})
    clock.advance(1)
    register(client, auth, {"token": 123456789, "email": "ann@example.com"})  # duplicate
    clock.advance(1)
    requests_mock.post(TOKENS_URL, json="OK")
    bridge.deliver_once()
    clock.advance(1)
    response = client.post(
        "/statuses",
        json={
            "status": "FAILED",
            "error": "Forbidden: bot was blocked by the user",
            "token": "123456789",
        },
        headers=auth,
    )
    assert response.status_code == 200
    assert response.get_json()["removed"] == ["123456789"]

    body = client.get("/tokens/123456789/history", headers=auth).get_json()
    assert body["token"] == "123456789"
    events = body["events"]
    kinds = [e["kind"] for e in events]
    assert kinds[:3] == ["submitted", "submitted", "delivered"]
    assert "removed" in kinds[3:]
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    assert events[0]["detail"]["duplicate"] is False
    assert events[1]["detail"]["duplicate"] is True
    assert events[2]["detail"]["status"] == 200
    removed = events[kinds.index("removed")]
    assert removed["detail"]["reason"] == "blocked"
    assert "Forbidden" in removed["detail"]["removalReason"]
    assert all(set(e) >= {"at", "kind", "detail"} for e in events)

    item = client.get("/tokens", query_string={"token": "123456789"}, headers=auth).get_json()[
        "items"
    ][0]
    assert item["state"] == "removed"
    assert "Forbidden" in item["removalReason"] and item["removedAt"]


def test_history_of_a_token_is_normalised_and_an_unknown_token_has_none(client, auth):
    register(client, auth, {"token": -1001234567890, "email": "group@example.com"})
    body = client.get("/tokens/-01001234567890/history", headers=auth).get_json()
    assert body["token"] == "-1001234567890" and len(body["events"]) == 1
    assert client.get("/tokens/42/history", headers=auth).get_json() == {
        "token": "42",
        "events": [],
    }


def test_history_of_something_that_is_not_a_chat_id_is_422(client, auth):
    assert_error(client.get("/tokens/ann@example.com/history", headers=auth), 422, "token")
