"""The Reteno client: how each answer or failure of one upstream call is classified and
recorded (RELIABILITY.md, "Mutation testing"): 2xx bounds, which 4xx pause, reject or
retry, Retry-After in every form, Reteno's error text, the duration of a failed call.

Every call is answered by ``requests_mock``; what is checked is what a user sees: the
registration's state and last error in ``GET /tokens``, the history's ``retry`` event
and ``/healthz``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests

from bridge import reteno
from tests.conftest import API_KEY, TOKENS_URL
from tests.helpers import history, register, rows, step_perf_counter


def deliver_one(client, auth, bridge, requests_mock, **answer):
    """Register token 1, make one delivery pass with Reteno answering ``answer``; the
    registration as ``GET /tokens`` shows it, and its last history event."""
    requests_mock.post(TOKENS_URL, **answer)
    register(client, auth, {"token": 1, "contactId": 1})
    bridge.deliver_once()
    assert requests_mock.call_count == 1
    [row] = rows(client, auth)
    return row, history(client, auth, "1")[-1]


def health(client):
    return client.get("/healthz", headers={"Authorization": f"Bearer {API_KEY}"}).get_json()


# --- what counts as delivered -----------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_every_2xx_is_delivered(client, auth, bridge, requests_mock, status):
    row, last = deliver_one(client, auth, bridge, requests_mock, status_code=status)
    assert row["state"] == "delivered" and last["kind"] == "delivered"


def test_a_300_is_not_delivered_and_pauses_like_a_wrong_url(client, auth, bridge, requests_mock):
    row, last = deliver_one(
        client,
        auth,
        bridge,
        requests_mock,
        status_code=300,
        reason="Multiple Choices",
        text="choose",
    )
    assert row["state"] == "queued" and last["kind"] == "paused"
    assert row["lastError"] == (
        "300 Multiple Choices: redirects are not followed; check RETENO_BASE_URL"
    )


# --- 4xx: pause, reject or retry ----------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 404])
def test_credential_errors_pause_whatever_the_message(client, auth, bridge, requests_mock, status):
    row, last = deliver_one(
        client, auth, bridge, requests_mock, status_code=status, json={"message": "no"}
    )
    assert row["state"] == "queued" and last["kind"] == "paused"
    assert health(client)["delivery"]["paused"] is True


@pytest.mark.parametrize("status", [400, 409, 422, 451, 499])
def test_other_4xx_refuse_the_token(client, auth, bridge, requests_mock, status):
    row, last = deliver_one(
        client, auth, bridge, requests_mock, status_code=status, json={"message": "no"}
    )
    assert row["state"] == "dead" and last["kind"] == "dead"
    assert health(client)["delivery"]["paused"] is False


@pytest.mark.parametrize(
    ("status", "reason"),
    [(408, "request_timeout"), (429, "rate_limited"), (500, "server_error"), (502, "server_error")],
)
def test_408_429_and_5xx_are_retried(client, auth, bridge, requests_mock, status, reason):
    row, last = deliver_one(
        client, auth, bridge, requests_mock, status_code=status, json={"message": "later"}
    )
    assert row["state"] == "queued" and last["kind"] == "retry"
    assert last["detail"]["reason"] == reason  # the code /healthz shows


# --- Reteno's error text ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"json": {"message": "Invalid token"}}, "Invalid token"),
        ({"json": {"error": "token refused"}}, "token refused"),
        ({"json": {"code": 7}}, "{'code': 7}"),
        ({"text": "plain   text\n answer"}, "plain text answer"),
        ({"text": "x" * 400}, "x" * 300),
    ],
)
def test_the_last_error_is_retenos_message_short(client, auth, bridge, requests_mock, body, error):
    row, _ = deliver_one(
        client, auth, bridge, requests_mock, status_code=400, reason="Bad Request", **body
    )
    assert row["lastError"] == f"400 Bad Request: {error}"


# --- a call that got no answer -------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (requests.exceptions.ReadTimeout, "timed out"),
        (requests.exceptions.ConnectionError, "connection failed (ConnectionError)"),
        (requests.exceptions.ChunkedEncodingError, "request failed (ChunkedEncodingError)"),
    ],
)
def test_a_call_without_an_answer_is_retried_with_its_duration(
    client, auth, bridge, requests_mock, monkeypatch, exc, error
):
    step_perf_counter(monkeypatch, reteno, 0.25)  # every upstream call takes 250 ms
    reteno.time.perf_counter()  # the call starts at 0.25 s, not at 0
    row, last = deliver_one(client, auth, bridge, requests_mock, exc=exc)
    assert row["state"] == "queued" and row["lastError"] == error
    assert last["kind"] == "retry"
    assert last["detail"]["ms"] == 250.0 and last["detail"]["status"] is None


# --- Retry-After --------------------------------------------------------------------------


def retry_after(client, auth, bridge, requests_mock, value):
    """The ``retryAfter`` the history records for a 429 with ``Retry-After: value``."""
    _, last = deliver_one(
        client,
        auth,
        bridge,
        requests_mock,
        status_code=429,
        headers={"Retry-After": value},
        json={"message": "slow down"},
    )
    assert last["kind"] == "retry"
    return last["detail"].get("retryAfter")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30", 30.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("-5", 0.0),
        ("3600", 3600.0),
        ("86400", 3600.0),
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_in_seconds_is_read_and_bounded(
    client, auth, bridge, requests_mock, value, seconds
):
    assert retry_after(client, auth, bridge, requests_mock, value) == seconds


@pytest.mark.parametrize(
    ("offset", "seconds"),
    [
        (60, 60.0),
        (-60, 0.0),
        (7200, 3600.0),
    ],
)
def test_retry_after_as_an_http_date_is_read_and_bounded(
    client, auth, bridge, clock, requests_mock, offset, seconds
):
    clock.now = datetime(2030, 1, 1, tzinfo=UTC)
    value = format_datetime(clock.now + timedelta(seconds=offset), usegmt=True)
    assert retry_after(client, auth, bridge, requests_mock, value) == seconds


@pytest.mark.parametrize("zone", ["+0100", "-0000"])
def test_retry_after_dates_in_any_zone_are_read_against_utc(
    client, auth, bridge, clock, requests_mock, zone
):
    clock.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    # 60 s from now, written in the zone (-0000: a date with no zone, taken as UTC)
    local = (
        "Tue, 01 Jan 2030 13:01:00 +0100" if zone == "+0100" else "Tue, 01 Jan 2030 12:01:00 -0000"
    )
    assert retry_after(client, auth, bridge, requests_mock, local) == 60.0
