"""Hostile-input generators and oracles shared by ``tests/test_fuzz.py`` and
``bench/fuzz.py`` (the ≥ 10,000-request run).

The oracle of every request: never a 5xx; every non-2xx is a 4xx in the one
error shape ``{"code", "status", "message", "errors"}``; a rejected request
leaves the ledger (registrations and events) unchanged.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st
from sqlalchemy import func, select

from bridge.models import Command, Event, Link, Registration

INT64 = 2**63
HUGE = 2**80

# --- JSON values ----------------------------------------------------------------------------

hostile_text = st.one_of(
    st.text(max_size=30),
    st.text(
        alphabet=st.characters(codec="utf-8", categories=["Cc", "Zs", "Cf", "Co", "So"]),
        max_size=12,
    ),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "a\x00b",
            "\n",
            "\u202e",
            "\ufeff",
            "\U0001f600",
            "0",
            "-0",
            "+1",
            "1e3",
            "NaN",
            "null",
            "Infinity",
            "0x10",
            "9" * 30,
            "-" + "9" * 20,
            "٣٤٥",
            "１２３",
        ]
    ),
)
numbers = st.one_of(
    st.integers(min_value=-HUGE, max_value=HUGE),
    st.sampled_from([0, 1, -1, INT64 - 1, INT64, -INT64, -INT64 - 1, 2**64, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, hostile_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)
    ),
    max_leaves=12,
)

IDENTIFIER_VALUES = {
    "token": st.one_of(numbers, st.from_regex(r"-?[0-9]{1,21}", fullmatch=True), json_values),
    "contactId": st.one_of(numbers, st.from_regex(r"[0-9]{1,21}", fullmatch=True), json_values),
    "externalCustomerId": st.one_of(hostile_text, st.text(min_size=250, max_size=260), json_values),
    "phone": st.one_of(
        st.from_regex(r"\+?[0-9 ()\-]{3,22}", fullmatch=True), hostile_text, json_values
    ),
    "email": st.one_of(st.emails(), hostile_text, st.just("A@B.CO"), json_values),
}
token_objects = st.builds(
    lambda known, extra: {**known, **extra},
    st.fixed_dictionaries({}, optional=IDENTIFIER_VALUES),
    st.one_of(st.just({}), st.dictionaries(hostile_text, json_values, max_size=2)),
)
register_bodies = st.one_of(
    token_objects,
    st.builds(lambda items: {"tokens": items}, st.lists(token_objects, max_size=4)),
    st.builds(
        lambda items, extra: {"tokens": items, **extra},
        st.lists(token_objects, max_size=2),
        st.dictionaries(hostile_text, json_values, max_size=2),
    ),
    json_values,
)

STATUS_FIELDS = {
    "status": st.one_of(st.sampled_from(["SENT", "FAILED", "CLICKED", "failed", ""]), json_values),
    "activityStatus": st.one_of(
        st.sampled_from(["UNDELIVERED", "DELIVERED", "BOT_SEND_ERROR"]), json_values
    ),
    "error": st.one_of(
        st.sampled_from(
            ["Forbidden", "Forbidden: bot was blocked by the user", "403", "blocked\x00"]
        ),
        hostile_text,
        json_values,
    ),
    "statusDescription": st.one_of(hostile_text, json_values),
    **{k: v for k, v in IDENTIFIER_VALUES.items()},
    "sms": IDENTIFIER_VALUES["phone"],
    "messageId": json_values,
    "activityDateTime": st.one_of(st.just("2024-01-01T00:00:00Z"), hostile_text),
}
status_events = st.builds(
    lambda known, extra: {**known, **extra},
    st.fixed_dictionaries({}, optional=STATUS_FIELDS),
    st.one_of(st.just({}), st.dictionaries(hostile_text, json_values, max_size=2)),
)
status_bodies = st.one_of(status_events, st.lists(status_events, max_size=4), json_values)

chats = st.fixed_dictionaries(
    {"id": st.one_of(numbers, hostile_text), "type": st.sampled_from(["private", "group", "x"])}
)
telegram_updates = st.one_of(
    st.fixed_dictionaries(
        {
            "update_id": numbers,
            "my_chat_member": st.fixed_dictionaries(
                {
                    "chat": chats,
                    "from": st.fixed_dictionaries({"id": numbers}),
                    "date": numbers,
                    "old_chat_member": st.fixed_dictionaries(
                        {"status": st.sampled_from(["member", "kicked", "left"])}
                    ),
                    "new_chat_member": st.fixed_dictionaries(
                        {"status": st.one_of(st.sampled_from(["member", "kicked"]), json_values)}
                    ),
                }
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "update_id": numbers,
            "message": st.fixed_dictionaries(
                {
                    "message_id": numbers,
                    "chat": chats,
                    "text": st.one_of(
                        st.builds(lambda p: f"/start {p}", hostile_text),
                        st.from_regex(r"/start [A-Za-z0-9_-]{0,70}", fullmatch=True),
                        json_values,
                    ),
                }
            ),
        }
    ),
    json_values,
)

query_values = st.one_of(hostile_text, numbers.map(str))
token_queries = st.dictionaries(
    st.one_of(
        st.sampled_from(
            [
                "token",
                "contactId",
                "externalCustomerId",
                "phone",
                "email",
                "state",
                "limit",
                "cursor",
            ]
        ),
        hostile_text,
    ),
    query_values,
    max_size=4,
)
path_tokens = st.one_of(st.from_regex(r"-?[0-9]{1,22}", fullmatch=True), hostile_text)

# --- raw bodies ---------------------------------------------------------------------------------

RAW_BODIES = [
    b"",
    b"{",
    b"{}",
    b"[]",
    b"null",
    b'"text"',
    b'{"token": NaN, "contactId": 1}',
    b'{"token": Infinity, "contactId": 1}',
    b'{"token": -Infinity, "contactId": 1}',
    b'{"token": 1, "contactId": 1, "contactId": 2}',
    b'{"token": 1, "contactId": 1e400}',
    b'{"token": 1, "contactId": ' + b"9" * 5000 + b"}",
    b'{"token": 18446744073709551616, "contactId": 1}',
    b'{"token": -9223372036854775809, "contactId": 1}',
    b'{"token": 1, "contactId": 9223372036854775808}',
    b'{"token": 1, "externalCustomerId": "\xff\xfe"}',
    b'{"token": 1, "externalCustomerId": "\\ud800"}',
    b'{"token": 1, "externalCustomerId": "\\udfff\\ud800"}',
    b'{"token": 1, "externalCustomerId": "a\\u0000b"}',
    b'{"token": 1, "externalCustomerId": "a\x01b"}',
    b'{"token": "1\\n", "contactId": 1}',
    b'\xef\xbb\xbf{"token": 1, "contactId": 1}',
    b'{"token": 1, "contactId": 1}garbage',
    b'{"token": 1, "contactId": 1}\x00',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b"[" * 70 + b"]" * 70,
    b'{"tokens": ['
    + b",".join(b'{"token": %d, "contactId": %d}' % (i + 1, i + 1) for i in range(10_000))
    + b"]}",
    b"[" + b",".join(b"{}" for _ in range(10_000)) + b"]",
    b'{"tokens": [' + b",".join(b"1" for _ in range(10_000)) + b"]}",
]

CONTENT_TYPES = [
    None,
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "application/jsonx",
    "application/json; charset=latin-1",
    "application/json; charset=utf-16",
    "application/json; charset=punycode",
    "application/json; charset=nonsense",
]

# --- the oracle ---------------------------------------------------------------------------


def ledger_counts(bridge) -> tuple[int, ...]:
    with bridge.db.read() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(model))
            for model in (Registration, Event, Command, Link)
        )


def error_shape_problem(status: int, body: bytes, content_type: str | None) -> str | None:
    """Why this answer breaks the promise, or None."""
    if status >= 500:
        return f"answered {status}"
    if status < 400:
        return None
    if not (content_type or "").startswith("application/json"):
        return f"{status} with Content-Type {content_type!r}"
    try:
        data = json.loads(body)
    except ValueError:
        return f"{status} with a body that is not JSON"
    if not isinstance(data, dict) or set(data) != {"code", "status", "message", "errors"}:
        return f"{status} not in the error shape: {str(data)[:200]}"
    if data["code"] != status or not isinstance(data["status"], str) or not data["status"]:
        return f"{status} with code/status {data['code']!r}/{data['status']!r}"
    if not isinstance(data["message"], str) or not data["message"]:
        return f"{status} without a message"
    errors = data["errors"]
    if not isinstance(errors, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(m, str) for m in v)
        for k, v in errors.items()
    ):
        return f"{status} with errors not {{field: [messages]}}: {str(errors)[:200]}"
    return None


def encode(body) -> bytes:
    return json.dumps(body).encode()
