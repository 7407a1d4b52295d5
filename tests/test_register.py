"""POST /register: what a bot backend sees, and what the ledger then holds."""

from __future__ import annotations

import json

import pytest

from tests.conftest import API_KEY
from tests.helpers import assert_error_shape, register, rows

URL = "/register"


def post(client, body, auth, **kwargs):
    return client.post(URL, json=body, headers=auth, **kwargs)


def ledger_rows(client, auth, **filters):
    response = client.get("/tokens", query_string={"limit": 500, **filters}, headers=auth)
    assert response.status_code == 200
    return response.json["items"]


def test_single_token_is_queued_and_normalised(client, auth):
    response = post(client, {"token": 123456789, "email": "  Ann@Example.COM "}, auth)
    assert response.status_code == 202
    [reg] = response.json["registrations"]
    assert reg == {
        "id": reg["id"],
        "token": "123456789",
        "matchedBy": "email",
        "state": "queued",
        "duplicate": False,
        "conflict": False,
    }
    [row] = ledger_rows(client, auth)
    assert row["email"] == "ann@example.com"
    assert row["state"] == "queued"


@pytest.mark.parametrize(
    ("identifiers", "expected"),
    [
        ({"email": "a@b.co", "phone": "+380 95 649 09 55"}, "phone"),
        (
            {"email": "a@b.co", "externalCustomerId": "C-1", "phone": "3809564909"},
            "externalCustomerId",
        ),
        ({"email": "a@b.co", "contactId": 42, "externalCustomerId": "C-1"}, "contactId"),
        ({"email": "a@b.co"}, "email"),
    ],
)
def test_matched_by_follows_retenos_priority(client, auth, identifiers, expected):
    response = post(client, {"token": "-100200300", **identifiers}, auth)
    assert response.status_code == 202
    assert response.json["registrations"][0]["matchedBy"] == expected
    assert response.json["registrations"][0]["token"] == "-100200300"


def test_phone_is_stored_as_digits(client, auth):
    post(client, {"token": 5, "phone": "+380 (95) 649-09-55"}, auth)
    [row] = ledger_rows(client, auth)
    assert row["phone"] == "380956490955"


def test_same_token_and_identifier_is_a_duplicate(client, auth):
    first = post(client, {"token": 7, "email": "ann@example.com"}, auth).json["registrations"][0]
    again = post(client, {"token": "7", "email": "ANN@example.com"}, auth)
    assert again.status_code == 202
    dup = again.json["registrations"][0]
    assert dup["duplicate"] is True
    assert dup["id"] == first["id"]
    assert dup["state"] == "queued"
    assert len(ledger_rows(client, auth)) == 1


def test_same_token_other_identifier_is_a_new_registration(client, auth):
    post(client, {"token": 7, "email": "ann@example.com"}, auth)
    other = post(client, {"token": 7, "email": "bob@example.com"}, auth).json["registrations"][0]
    assert other["duplicate"] is False
    assert len(ledger_rows(client, auth)) == 2


def test_duplicate_shows_the_existing_state(client, auth, bridge, requests_mock):
    from tests.conftest import TOKENS_URL

    requests_mock.post(TOKENS_URL, json="OK")
    post(client, {"token": 8, "contactId": 99}, auth)
    bridge.deliver_once()
    dup = post(client, {"token": 8, "contactId": 99}, auth).json["registrations"][0]
    assert dup == {
        "id": dup["id"],
        "token": "8",
        "matchedBy": "contactId",
        "state": "delivered",
        "duplicate": True,
        "conflict": False,
    }
    assert requests_mock.call_count == 1


def test_batch_answers_one_result_per_object_in_order(client, auth):
    body = {
        "tokens": [
            {"token": 1, "email": "one@example.com"},
            {"token": 2, "contactId": 2},
            {"token": 1, "email": "one@example.com"},
        ]
    }
    response = post(client, body, auth)
    assert response.status_code == 202
    regs = response.json["registrations"]
    assert [r["token"] for r in regs] == ["1", "2", "1"]
    assert [r["duplicate"] for r in regs] == [False, False, True]
    assert regs[2]["id"] == regs[0]["id"]
    assert len(ledger_rows(client, auth)) == 2


def test_no_new_token_of_a_large_batch_is_a_duplicate(client, auth):
    batch = [{"token": 7_000_000 + n, "contactId": 1 + n} for n in range(300)]
    answers = register(client, auth, *batch)
    assert [a["duplicate"] for a in answers] == [False] * 300


def test_batch_of_1000_is_accepted(client, auth):
    body = {"tokens": [{"token": i, "externalCustomerId": f"c{i}"} for i in range(1, 1001)]}
    response = post(client, body, auth)
    assert response.status_code == 202
    assert len(response.json["registrations"]) == 1000
    health = client.get("/healthz", headers=auth).json
    assert health["outbox"]["depth"] == 1000


# --- rejections: the contract's codes, one error shape, nothing stored -------------


INVALID = [
    ({"token": 1}, "identifiers"),
    ({"token": 1, "email": "not-an-email"}, "email"),
    ({"token": 1, "email": ""}, "email"),
    ({"token": 1, "phone": "12345"}, "phone"),
    ({"token": 1, "phone": "1234567890123456"}, "phone"),
    ({"token": 1, "phone": "+38 095 abc"}, "phone"),
    ({"token": "abc", "email": "a@b.co"}, "token"),
    ({"token": "1.5", "email": "a@b.co"}, "token"),
    ({"token": 1.5, "email": "a@b.co"}, "token"),
    ({"token": True, "email": "a@b.co"}, "token"),
    ({"token": 2**63, "email": "a@b.co"}, "token"),
    ({"email": "a@b.co"}, "token"),
    ({"token": 1, "contactId": -1}, "contactId"),
    ({"token": 1, "contactId": 0}, "contactId"),
    ({"token": 1, "contactId": 2**63}, "contactId"),
    ({"token": 1, "contactId": "x"}, "contactId"),
    ({"token": 1, "externalCustomerId": ""}, "externalCustomerId"),
    ({"token": 1, "externalCustomerId": 5}, "externalCustomerId"),
    ({"token": 1, "email": "a@b.co", "nickname": "ann"}, "nickname"),
]


@pytest.mark.parametrize(("body", "field"), INVALID)
def test_invalid_token_object_is_422_naming_the_field(client, auth, body, field):
    body_out = assert_error_shape(post(client, body, auth), 422)
    assert field in body_out["errors"], body_out
    assert ledger_rows(client, auth) == []


# Unicode format characters (category Cf): bidi overrides and isolates, zero-width
# space, non-joiner and joiner, the byte-order mark, a tag character beyond U+FFFF.
FORMAT_CHARACTERS = [
    "\u202e",
    "\u202a",
    "\u2066",
    "\u2069",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\U000e0041",
]


@pytest.mark.parametrize("char", FORMAT_CHARACTERS)
def test_an_identifier_with_an_invisible_format_character_is_422_per_field(client, auth, char):
    code = f"U+{ord(char):04X}"
    body = {
        "tokens": [
            {"token": 1, "externalCustomerId": f"cust{char}-1"},
            {"token": 2, "email": f"ann{char}@example.com"},
            {"token": 3, "phone": f"+380{char}956490955"},
            {"token": 4, "externalCustomerId": "cust-4"},
        ]
    }
    out = assert_error_shape(post(client, body, auth), 422)
    message = [f"Must not contain invisible format characters ({code})."]
    assert out["errors"] == {
        "tokens.0.externalCustomerId": message,
        "tokens.1.email": message,
        "tokens.2.phone": message,
    }
    assert ledger_rows(client, auth) == []


def test_identifiers_are_stored_and_matched_in_nfc(client, auth):
    composed, decomposed = "Caf\u00e9-\u00c5se", "Cafe\u0301-A\u030ase"
    first = post(client, {"token": 7, "externalCustomerId": decomposed}, auth)
    assert first.status_code == 202
    again = post(client, {"token": 7, "externalCustomerId": composed}, auth)
    assert again.get_json()["registrations"][0]["duplicate"] is True
    for spelling in (composed, decomposed):
        [row] = client.get(
            "/tokens", headers=auth, query_string={"externalCustomerId": spelling}
        ).get_json()["items"]
        assert row["externalCustomerId"] == composed


def test_one_bad_object_in_a_batch_stores_nothing(client, auth):
    body = {
        "tokens": [
            {"token": 1, "email": "good@example.com"},
            {"token": 2, "email": "bad"},
            {"token": 3},
        ]
    }
    out = assert_error_shape(post(client, body, auth), 422)
    assert set(out["errors"]) == {"tokens.1.email", "tokens.2.identifiers"}
    assert ledger_rows(client, auth) == []


def test_more_than_1000_tokens_is_422(client, auth):
    body = {"tokens": [{"token": i, "contactId": i} for i in range(1, 1002)]}
    out = assert_error_shape(post(client, body, auth), 422)
    assert "tokens" in out["errors"]
    assert ledger_rows(client, auth) == []


@pytest.mark.parametrize("body", [{"tokens": []}, {"tokens": "x"}, {"tokens": [1]}, [], 5, "x"])
def test_bad_body_structure_is_422(client, auth, body):
    assert_error_shape(post(client, body, auth), 422)
    assert ledger_rows(client, auth) == []


def test_a_bad_body_structure_names_where(client, auth):
    out = assert_error_shape(post(client, {"tokens": "x"}, auth), 422)
    assert out["errors"] == {"tokens": ["Not a valid list."]}
    body = {"tokens": [{"token": 1, "email": "a@b.co"}, None, {"token": "x", "email": "a@b.co"}, 7]}
    out = assert_error_shape(post(client, body, auth), 422)
    assert set(out["errors"]) == {"tokens.1", "tokens.2.token", "tokens.3"}
    assert ledger_rows(client, auth) == []


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"token": "x"}, {"token"}),
        ({"token": 1, "nickname": "ann"}, {"nickname"}),
        ({"token": 1, "email": None}, {"identifiers"}),
        ({"tokens": [{"token": "x"}, {"token": 2}]}, {"tokens.0.token", "tokens.1.identifiers"}),
    ],
)
def test_missing_identifiers_are_named_only_when_the_rest_of_the_object_is_valid(
    client, auth, body, fields
):
    assert set(assert_error_shape(post(client, body, auth), 422)["errors"]) == fields


def test_not_json_is_415(client, auth):
    response = client.post(
        URL, data="token=1", headers=auth, content_type="application/x-www-form-urlencoded"
    )
    assert_error_shape(response, 415)


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"token": 1, "email": "a@b.co",}',
        b'{"token": NaN, "email": "a@b.co"}',
        b'{"token": 1, "token": 2, "email": "a@b.co"}',
        b'\xff\xfe{"token": 1}',
        b"[" * 10000 + b"]" * 10000,
    ],
)
def test_malformed_json_is_400(client, auth, raw):
    response = client.post(URL, data=raw, headers=auth, content_type="application/json")
    assert_error_shape(response, 400)
    assert ledger_rows(client, auth) == []


def test_body_over_the_limit_is_413(make_app, auth):
    client = make_app(BRIDGE_MAX_BODY_BYTES=2048).test_client()
    body = {"tokens": [{"token": i, "email": f"user{i}@example.com"} for i in range(1, 200)]}
    response = client.post(
        URL, data=json.dumps(body), headers=auth, content_type="application/json"
    )
    assert_error_shape(response, 413)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key-wrong-key"},
        {"Authorization": API_KEY},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": "Bearer "},
    ],
)
def test_without_a_valid_key_is_401(client, auth, headers):
    response = client.post(URL, json={"token": 1, "email": "a@b.co"}, headers=headers)
    out = assert_error_shape(response, 401)
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert "key" in out["message"].lower()
    assert ledger_rows(client, auth) == []


def test_any_of_several_keys_works(make_app):
    client = make_app(BRIDGE_API_KEYS="first-key-0123456789, second-key-0123456789").test_client()
    for key in ("first-key-0123456789", "second-key-0123456789"):
        response = client.post(
            URL, json={"token": 1, "email": "a@b.co"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 202


def test_unknown_path_and_wrong_method_use_the_error_shape(client):
    assert_error_shape(client.get("/nowhere"), 404)
    out = assert_error_shape(client.get(URL), 405)
    assert out["message"] == "This endpoint does not take that method."


@pytest.mark.parametrize("value", ["²", "١٢", "1" * 5000])
def test_non_ascii_or_huge_contact_id_is_422(client, auth, value):
    response = post(client, {"token": 1, "contactId": value}, auth)
    assert_error_shape(response, 422)
    assert "contactId" in response.json["errors"]


def test_integer_literal_beyond_int_limits_is_422(client, auth):
    raw = '{"token": ' + "9" * 5000 + ', "email": "a@b.co"}'
    response = client.post(URL, data=raw, headers=auth, content_type="application/json")
    assert_error_shape(response, 422)
    assert "token" in response.json["errors"]


def test_a_null_identifier_counts_as_absent(client, auth):
    [reg] = register(
        client,
        auth,
        {
            "token": 8801,
            "contactId": None,
            "externalCustomerId": None,
            "phone": "+380 95 649 09 55",
            "email": None,
        },
    )
    assert reg["matchedBy"] == "phone" and reg["duplicate"] is False
    [row] = rows(client, auth, token=8801)
    assert (row["phone"], row["email"], row["contactId"]) == ("380956490955", None, None)


def test_only_null_identifiers_is_no_identifier(client, auth):
    response = client.post("/register", headers=auth, json={"token": 8802, "email": None})
    body = assert_error_shape(response, 422)
    assert "identifiers" in body["errors"]
    assert rows(client, auth, token=8802) == []


def test_a_422_lists_at_most_the_configured_number_of_fields(make_app, auth):
    """330,000 unknown keys came back as a 9.5 MB 422 (SECURITY.md finding 10)."""
    client = make_app().test_client()
    body = {"token": 1, "email": "ann@example.com", **{f"k{i}": 0 for i in range(5000)}}
    errors = assert_error_shape(post(client, body, auth), 422)["errors"]
    assert len(errors) == 101
    assert errors["_more"] == ["4900 more fields have errors (not listed)."]
    listed = {k: v for k, v in errors.items() if k != "_more"}
    assert set(listed) <= {f"k{i}" for i in range(5000)}
    assert all(v == ["Unknown field."] for v in listed.values())
    client = make_app(BRIDGE_MAX_FIELD_ERRORS=2).test_client()
    errors = assert_error_shape(post(client, {"tokens": [{"token": "x"}] * 3}, auth), 422)
    assert errors["errors"] == {
        "tokens.0.token": errors["errors"]["tokens.0.token"],
        "tokens.1.token": errors["errors"]["tokens.1.token"],
        "_more": ["1 more fields have errors (not listed)."],
    }
