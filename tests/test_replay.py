"""``flask bridge replay``: every live registration registered again in another Reteno app
(or on another platform), through the outbox.

Tested through what a user sees: the command's output and exit code, the calls the target
got (URL, credentials, bodies), ``GET /tokens/<token>/history`` and ``/healthz``.

* ``--dry-run`` prints the registrations, how many and how many requests, and sends and
  stores nothing;
* a run sends every live registration (queued or delivered; not removed, dead or held),
  with its identifiers, in batches of ``BRIDGE_BATCH_SIZE``, to the target's URL with the
  target's key read from ``--api-key-env`` (header auth for Reteno, HTTP Basic for
  eSputnik and Yespo), and records ``replay_delivered`` with ``targetApp`` in each
  chat's history;
* running it again sends nothing new; a run killed halfway sends, when run again, what
  the target never acknowledged and nothing it did;
* no key (or an unset variable), the bridge's own app, a malformed app id or base URL:
  usage errors, nothing sent;
* the target's answers: 429 and 5xx are retried (after a ``Retry-After``, which holds
  the whole run), a 400 batch is split down to the one token refused, 401/403/404 stop
  the run with exit code 1; none of them touch the bridge's own delivery.
* a replay queued before its chat went away (blocked, dead) is dropped, not sent.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import Counter
from datetime import datetime, timedelta

import pytest

from bridge import replay as replay_module
from bridge.ledger import ReplayTarget
from tests.conftest import APP_UUID, RETENO_KEY, TOKENS_URL
from tests.helpers import history, register, rows
from tests.helpers import run_cli as run

TARGET = "5d1c7a80-3f6b-4c8e-9a2d-7e4f1b2c3d4e"
TARGET_URL = f"https://reteno.com/api/v1/apps/{TARGET}/tokens"
TARGET_KEY = "target-secret-key-0123456789"
KEY_ENV = "TARGET_RETENO_KEY"
BATCH = 2  # BRIDGE_BATCH_SIZE of the bridge in these tests

# Five chats with every kind of identifier, as the bridge sends them (oldest first).
CHATS = [
    {"token": "1001", "contactId": 1, "email": "ann@example.com"},
    {"token": "1002", "phone": "380956490955"},
    {"token": "1003", "externalCustomerId": "crm-3", "email": "cy@example.com"},
    {"token": "1004", "contactId": 4},
    {"token": "1005", "email": "eve@example.com"},
]


@pytest.fixture
def app(make_app):
    """The bridge, sending at most BATCH tokens a call (to its own app and to a target)."""
    return make_app(BRIDGE_BATCH_SIZE=BATCH)


@pytest.fixture(autouse=True)
def target_key(monkeypatch):
    """The target's key, where an operator keeps it: in an environment variable."""
    monkeypatch.setenv(KEY_ENV, TARGET_KEY)


@pytest.fixture
def chats(client, auth, bridge, requests_mock):
    """CHATS registered: the first three delivered to the bridge's own app, the last two
    still queued for it (queued registrations are live too)."""
    requests_mock.post(TOKENS_URL, json="OK")
    register(client, auth, *CHATS[:3])
    bridge.deliver_once()
    register(client, auth, *CHATS[3:])
    requests_mock.reset_mock()  # the history of the calls: the replay's only
    return CHATS


def replay(runner, *args, code=0):
    """``bridge replay`` into TARGET with its key from KEY_ENV, and ``args``."""
    return run(runner, "replay", "--to-app", TARGET, "--api-key-env", KEY_ENV, *args, code=code)


def calls(requests_mock, url=TARGET_URL):
    """The tokens of every call to ``url``, call by call."""
    return [
        [t["token"] for t in r.json()["tokens"]]
        for r in requests_mock.request_history
        if r.url == url
    ]


def replay_events(client, auth, token):
    return [e for e in history(client, auth, token) if e["kind"].startswith("replay_")]


def reasons(client, auth):
    return client.get("/healthz", headers=auth).get_json()["reasons"]


def stored_replays(runner):
    """The replays in the ledger, by state (``bridge stats``)."""
    return json.loads(run(runner, "stats", "--json").output)["commands"].get("replay", {})


# --- --dry-run ----------------------------------------------------------------------------


def test_dry_run_prints_what_would_be_sent_and_sends_nothing(
    runner, client, auth, chats, requests_mock
):
    result = run(runner, "replay", "--to-app", TARGET, "--dry-run")  # no key needed
    for chat in chats:
        assert f"  {chat['token']}  (registration " in result.output
    assert (
        f"dry run: 5 registrations to queue for app {TARGET} at {TARGET_URL}: "
        f"3 requests of up to {BATCH} tokens; nothing sent"
    ) in result.output
    assert requests_mock.call_count == 0
    assert stored_replays(runner) == {}
    assert all(not replay_events(client, auth, chat["token"]) for chat in chats)

    # nothing was queued by it: the same again, and a real run still sends all five
    assert run(runner, "replay", "--to-app", TARGET, "--dry-run").output == result.output
    requests_mock.post(TARGET_URL, json="OK")
    replay(runner)
    assert sum(calls(requests_mock), []) == [chat["token"] for chat in chats]


def test_dry_run_of_nothing_to_send(runner, chats, requests_mock):
    requests_mock.post(TARGET_URL, json="OK")
    replay(runner)
    requests_mock.reset_mock()
    output = replay(runner, "--dry-run").output
    assert "dry run: 0 registrations to queue" in output
    assert "0 requests" in output
    assert requests_mock.call_count == 0


# --- a run ----------------------------------------------------------------------------------


def test_a_run_sends_every_live_registration_in_batches_with_the_targets_key(
    runner, client, auth, chats, requests_mock
):
    requests_mock.post(TARGET_URL, json="OK")
    result = replay(runner)
    assert calls(requests_mock) == [["1001", "1002"], ["1003", "1004"], ["1005"]]
    assert [t for r in requests_mock.request_history for t in r.json()["tokens"]] == chats
    for request in requests_mock.request_history:
        assert request.method == "POST"
        assert request.headers["X-Reteno-Access-Key"] == TARGET_KEY
        assert "Authorization" not in request.headers
    assert "replaying" in result.stderr  # the progress bar
    assert f"replay into app {TARGET}: " in result.stdout
    assert "5 delivered, 0 dead, 0 still queued; 3 upstream calls" in result.stdout
    assert TARGET_KEY not in result.output
    # the bridge's own registrations are as they were
    assert Counter(r["state"] for r in rows(client, auth)) == {"delivered": 3, "queued": 2}


@pytest.mark.parametrize(
    "args,base,scheme",
    [
        ([], "https://reteno.com", "header"),
        (["--base-url", "https://eu.reteno.example/"], "https://eu.reteno.example", "header"),
        (["--platform", "esputnik"], "https://esputnik.com", "basic"),
        (["--platform", "yespo"], "https://yespo.io", "basic"),
        (
            ["--platform", "yespo", "--base-url", "https://api.yespo.example"],
            "https://api.yespo.example",
            "basic",
        ),
    ],
)
def test_the_platform_decides_the_url_and_the_auth_scheme(
    runner, chats, requests_mock, args, base, scheme
):
    url = f"{base}/api/v1/apps/{TARGET}/tokens"
    requests_mock.post(url, json="OK")
    replay(runner, *args)
    assert calls(requests_mock, url) == [["1001", "1002"], ["1003", "1004"], ["1005"]]
    assert requests_mock.call_count == 3
    for request in requests_mock.request_history:
        if scheme == "header":
            assert request.headers["X-Reteno-Access-Key"] == TARGET_KEY
            assert "Authorization" not in request.headers
        else:
            kind, _, encoded = request.headers["Authorization"].partition(" ")
            assert kind == "Basic"
            assert base64.b64decode(encoded).decode().partition(":")[2] == TARGET_KEY
            assert "X-Reteno-Access-Key" not in request.headers
        assert RETENO_KEY not in json.dumps(dict(request.headers))  # never the bridge's key


def test_removed_dead_and_held_registrations_are_not_replayed(make_app, auth, requests_mock):
    app = make_app(BRIDGE_BATCH_SIZE=BATCH, BRIDGE_ON_CONFLICT="hold")
    client, bridge = app.test_client(), app.extensions["reteno_bridge"]
    # dead: Reteno refused it alone
    requests_mock.post(TOKENS_URL, status_code=400, json={"message": "token is invalid"})
    register(client, auth, {"token": "2001", "email": "dead@example.com"})
    bridge.deliver_once()
    # removed: the user blocked the bot
    requests_mock.post(TOKENS_URL, json="OK")
    _, ann = register(
        client,
        auth,
        {"token": "2002", "email": "gone@example.com"},
        {"token": "2003", "email": "ann@example.com"},
    )
    bridge.deliver_once()
    response = client.post(
        "/statuses",
        headers=auth,
        json={
            "status": "FAILED",
            "error": "Forbidden: bot was blocked by the user",
            "token": "2002",
        },
    )
    assert response.get_json()["removed"] == ["2002"]
    # held: a second identity for chat 2003; and one chat still queued
    [held] = register(client, auth, {"token": "2003", "email": "bob@example.com"})
    assert held["state"] == "held"
    register(client, auth, {"token": "2004", "contactId": 4})
    assert Counter(r["state"] for r in rows(client, auth)) == {
        "dead": 1,
        "removed": 1,
        "delivered": 1,
        "held": 1,
        "queued": 1,
    }

    requests_mock.reset_mock()
    requests_mock.post(TARGET_URL, json="OK")
    runner = app.test_cli_runner()
    assert "dry run: 2 registrations to queue" in replay(runner, "--dry-run").output
    replay(runner)
    assert [t for r in requests_mock.request_history for t in r.json()["tokens"]] == [
        {"token": "2003", "email": "ann@example.com"},
        {"token": "2004", "contactId": 4},
    ]
    for token in ("2001", "2002"):
        assert replay_events(client, auth, token) == []
    # chat 2003 is replayed once: its live registration, not the held one
    assert [e["registrationId"] for e in replay_events(client, auth, "2003")] == [ann["id"]]


def test_history_records_each_replay_with_the_target_app(
    runner, client, auth, chats, requests_mock
):
    requests_mock.post(TARGET_URL, json="OK")
    replay(runner)
    registrations = {r["token"]: r["id"] for r in rows(client, auth)}
    for chat in chats:
        [event] = replay_events(client, auth, chat["token"])
        assert event["kind"] == "replay_delivered"
        assert event["detail"]["targetApp"] == TARGET
        assert event["detail"]["status"] == 200
        assert event["detail"]["attempt"] == 1  # a replay's first call is its first attempt
        assert event["registrationId"] == registrations[chat["token"]]
        assert history(client, auth, chat["token"])[-1] == event  # the latest event
    assert (
        json.loads(run(runner, "history", "1001", "--json").output)["events"][-1]["kind"]
        == "replay_delivered"
    )


def test_running_it_again_sends_nothing_new(runner, client, auth, chats, requests_mock):
    requests_mock.post(TARGET_URL, json="OK")
    replay(runner)
    assert requests_mock.call_count == 3
    again = replay(runner)
    assert requests_mock.call_count == 3
    assert "5 delivered, 0 dead, 0 still queued; 0 upstream calls" in again.stdout
    assert all(len(replay_events(client, auth, c["token"])) == 1 for c in chats)
    # the same target spelt another way is the same target
    replay(runner, "--platform", "reteno", "--base-url", "HTTPS://Reteno.COM/")
    assert requests_mock.call_count == 3

    # a chat registered since: the next run sends it, and it alone
    register(client, auth, {"token": "1006", "contactId": 6})
    assert "1 registration to queue" in replay(runner, "--dry-run").output
    replay(runner)
    assert calls(requests_mock)[3:] == [["1006"]]


def test_the_same_app_id_in_capitals_is_the_same_target(runner, chats, requests_mock):
    requests_mock.post(TARGET_URL, json="OK")
    replay(runner)
    run(runner, "replay", "--to-app", TARGET.upper(), "--api-key-env", KEY_ENV)
    assert requests_mock.call_count == 3


def test_the_summary_says_how_many_this_run_queued(runner, chats, requests_mock):
    requests_mock.post(TARGET_URL, json="OK")
    assert "5 registrations queued now;" in replay(runner).stdout
    assert "0 registrations queued now;" in replay(runner).stdout


def test_each_target_gets_every_registration_once(runner, chats, requests_mock):
    other = "9f8e7d6c-5b4a-4392-8170-fedcba987654"
    other_url = f"https://reteno.com/api/v1/apps/{other}/tokens"
    requests_mock.post(TARGET_URL, json="OK")
    requests_mock.post(other_url, json="OK")
    replay(runner)
    run(runner, "replay", "--to-app", other, "--api-key-env", KEY_ENV)
    replay(runner)
    tokens = [c["token"] for c in chats]
    assert sum(calls(requests_mock), []) == tokens
    assert sum(calls(requests_mock, other_url), []) == tokens


# --- refused before anything is sent ------------------------------------------------------------


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "--api-key-env must name an environment variable holding the target's API key"),
        (
            ["--api-key-env", "NO_SUCH_VARIABLE"],
            "the environment variable NO_SUCH_VARIABLE is not set",
        ),
        (["--api-key-env", "EMPTY_VARIABLE"], "the environment variable EMPTY_VARIABLE is not set"),
        (["--api-key", TARGET_KEY], "No such option '--api-key'"),  # keys never on the command line
    ],
)
def test_the_key_must_come_from_an_environment_variable(
    runner, chats, requests_mock, monkeypatch, args, message
):
    monkeypatch.setenv("EMPTY_VARIABLE", "")
    requests_mock.post(TARGET_URL, json="OK")
    result = run(runner, "replay", "--to-app", TARGET, *args, code=2)
    assert message in result.output
    assert requests_mock.call_count == 0
    assert stored_replays(runner) == {}


@pytest.mark.parametrize(
    "args",
    [
        ["--to-app", APP_UUID],
        ["--to-app", APP_UUID, "--platform", "reteno"],
        ["--to-app", APP_UUID, "--base-url", "https://reteno.com/"],
        ["--to-app", APP_UUID.upper()],
        ["--to-app", APP_UUID, "--base-url", "HTTPS://Reteno.COM"],
        ["--to-app", APP_UUID, "--dry-run"],
    ],
)
def test_the_bridges_own_app_is_refused(runner, chats, requests_mock, args):
    result = run(runner, "replay", "--api-key-env", KEY_ENV, *args, code=2)
    assert "the target is the bridge's own app" in result.output
    assert requests_mock.call_count == 0
    assert stored_replays(runner) == {}


def test_the_same_app_id_on_another_platform_is_another_app(runner, chats):
    result = run(runner, "replay", "--to-app", APP_UUID, "--platform", "esputnik", "--dry-run")
    assert f"5 registrations to queue for app {APP_UUID} at https://esputnik.com/" in (
        result.output
    )


@pytest.mark.parametrize(
    "args,option",
    [
        (["--to-app", "../../other-app"], "--to-app"),
        (["--to-app", f"{TARGET}/tokens?x="], "--to-app"),
        (["--to-app", ""], "--to-app"),
        (["--to-app", TARGET, "--base-url", "ftp://reteno.com"], "--base-url"),
        (["--to-app", TARGET, "--base-url", "https://"], "--base-url"),
        (["--to-app", TARGET, "--base-url", "https://reteno.com?app=1"], "--base-url"),
        (["--to-app", TARGET, "--base-url", "https://reteno.com#app"], "--base-url"),
        (["--to-app", TARGET, "--base-url", "http://reteno.example"], "--base-url"),
        (["--to-app", TARGET, "--platform", "mailchimp"], "--platform"),
    ],
)
def test_a_malformed_target_is_refused(runner, chats, requests_mock, args, option):
    result = run(runner, "replay", "--api-key-env", KEY_ENV, *args, code=2)
    assert f"Invalid value for '{option}'" in result.output or f"{option} must be" in (
        result.output
    )
    assert requests_mock.call_count == 0
    assert stored_replays(runner) == {}


# --- the target's answers ---------------------------------------------------------------------


TICK = timedelta(seconds=1)


@pytest.fixture
def clock_time_only(bridge, clock, monkeypatch):
    """Time passes on the ledger's clock only, a second (TICK) at every reading, and a
    run's waits for a backoff or a Retry-After take no real time (they read the clock
    again): a run that waits minutes takes a fraction of a second."""

    def now():
        clock.advance(TICK.total_seconds())
        return clock.now

    monkeypatch.setattr(bridge.ledger, "clock", now)
    monkeypatch.setattr(replay_module, "MAX_WAIT_SECONDS", 0.0)


def at(event):
    return datetime.fromisoformat(event["at"])


@pytest.mark.parametrize(
    "answer",
    [
        {"status_code": 429, "headers": {"Retry-After": "30"}, "json": {"message": "slow down"}},
        {"status_code": 503, "text": "down for a moment"},
    ],
)
def test_a_transient_failure_is_retried(
    runner, client, auth, chats, requests_mock, clock_time_only, answer
):
    requests_mock.post(TARGET_URL, [answer, {"json": "OK"}])
    result = replay(runner)
    sent = calls(requests_mock)
    assert sent[0] == ["1001", "1002"] and len(sent) == 4
    assert sorted(sum(sent[1:], [])) == [c["token"] for c in CHATS]  # each once after it
    assert "5 delivered, 0 dead, 0 still queued; 4 upstream calls" in result.stdout
    retry, delivered = replay_events(client, auth, "1001")
    assert (retry["kind"], delivered["kind"]) == ("replay_retry", "replay_delivered")
    assert retry["detail"]["status"] == answer["status_code"]
    assert retry["detail"]["targetApp"] == TARGET
    if "headers" in answer:
        # nothing went to the target before it said: not this batch, nor any other (the
        # 429 came a TICK before its event was written)
        assert retry["detail"]["retryAfter"] == 30
        assert at(delivered) >= datetime.fromisoformat(retry["detail"]["nextAttemptAt"])
        for chat in CHATS[2:]:
            [later] = replay_events(client, auth, chat["token"])
            assert at(later) - at(retry) >= timedelta(seconds=30) - TICK, chat
    # the target's answers are not the bridge's: its own delivery is neither held nor failing
    assert not {"delivery_held", "delivery_paused", "upstream_failing"} & set(reasons(client, auth))


def test_a_run_waiting_for_a_retry_sleeps_until_it_is_due(
    runner, bridge, chats, requests_mock, monkeypatch
):
    # after a 503 the batch comes due again in about a second: the run sleeps until
    # then, instead of asking the ledger for due rows again and again (a busy loop)
    claims = Counter()
    claim_replay = bridge.ledger.claim_replay

    def counted(*args, **kwargs):
        claims["made"] += 1
        return claim_replay(*args, **kwargs)

    monkeypatch.setattr(bridge.ledger, "claim_replay", counted)
    requests_mock.post(TARGET_URL, [{"status_code": 503, "text": "down"}, {"json": "OK"}])
    result = replay(runner)
    assert "5 delivered, 0 dead, 0 still queued; 4 upstream calls" in result.stdout
    assert claims["made"] < 20, claims


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refusal_of_the_credentials_stops_the_run_and_not_the_bridge(
    runner, client, auth, bridge, chats, requests_mock, status
):
    requests_mock.post(TARGET_URL, status_code=status, json={"message": "Unauthorized"})
    result = replay(runner, code=1)
    assert calls(requests_mock) == [["1001", "1002"]]  # the first refusal stops the run
    assert "0 delivered, 0 dead, 5 still queued; 1 upstream call" in result.stdout
    assert (
        "not finished: the target refused the credentials or the app id; run the same "
        "command again to go on"
    ) in result.stderr
    # the bridge's own delivery goes on
    health = client.get("/healthz", headers=auth).get_json()
    assert "delivery_paused" not in health["reasons"]
    assert health["delivery"]["paused"] is False
    requests_mock.post(TOKENS_URL, json="OK")
    assert bridge.deliver_once()["delivered"] == 2
    assert calls(requests_mock, TOKENS_URL) == [["1004", "1005"]]

    # once the credentials are right, the same command sends them all, once
    requests_mock.post(TARGET_URL, json="OK")
    assert "5 delivered, 0 dead, 0 still queued; 3 upstream calls" in replay(runner).stdout
    assert sorted(sum(calls(requests_mock)[1:], [])) == [c["token"] for c in chats]
    assert [e["kind"] for e in replay_events(client, auth, "1001")] == [
        "replay_paused",
        "replay_delivered",
    ]


def test_a_400_batch_is_split_and_only_the_refused_token_ends_dead(make_app, auth, requests_mock):
    app = make_app(BRIDGE_BATCH_SIZE=8)
    client, runner = app.test_client(), app.test_cli_runner()
    requests_mock.post(TOKENS_URL, json="OK")
    register(client, auth, *[{"token": str(3000 + i), "contactId": i} for i in range(1, 9)])
    app.extensions["reteno_bridge"].deliver_once()
    requests_mock.reset_mock()

    def answer(request, context):
        if "3005" in [t["token"] for t in request.json()["tokens"]]:
            context.status_code = 400
            return {"message": "Invalid token"}
        return "OK"

    requests_mock.post(TARGET_URL, json=answer)
    result = replay(runner)
    assert "7 delivered, 1 dead, 0 still queued" in result.stdout
    sent = calls(requests_mock)
    assert sent == [
        [str(3000 + i) for i in range(1, 9)],  # halves until 3005 is alone
        ["3001", "3002", "3003", "3004"],
        ["3005", "3006", "3007", "3008"],
        ["3005", "3006"],
        ["3005"],
        ["3006"],
        ["3007", "3008"],
    ]
    accepted = [t for call in sent if "3005" not in call for t in call]
    assert sorted(accepted) == [str(3000 + i) for i in range(1, 9) if i != 5]  # each once
    [dead] = replay_events(client, auth, "3005")
    assert dead["kind"] == "replay_dead"
    assert dead["detail"]["targetApp"] == TARGET and "Invalid token" in dead["detail"]["error"]
    assert [e["kind"] for e in replay_events(client, auth, "3006")] == ["replay_delivered"]
    # dead for the target only: the registration is still delivered to the bridge's app
    assert {r["token"]: r["state"] for r in rows(client, auth)}["3005"] == "delivered"
    assert "dead_letters" not in reasons(client, auth)
    # and not sent again
    replay(runner)
    assert len(calls(requests_mock)) == len(sent)


# --- kill -9 halfway ------------------------------------------------------------------------


def test_a_run_killed_halfway_sends_only_what_the_target_did_not_acknowledge(
    runner, client, auth, bridge, chats, clock, requests_mock
):
    register(client, auth, {"token": "1006", "contactId": 6})
    tokens = [c["token"] for c in chats] + ["1006"]
    # A run that died: it queued everything, the target acknowledged its first batch, and
    # it was killed while sending the second (leased to it, never finished).
    target = ReplayTarget(TARGET, "https://reteno.com")
    lease = bridge.settings.lease_seconds
    bridge.ledger.queue_replay(target)
    acknowledged = bridge.ledger.claim_replay(target, BATCH, lease)
    bridge.ledger.delivered(
        acknowledged, list(acknowledged.rows), {"status": 200, "targetApp": TARGET}
    )
    in_flight = bridge.ledger.claim_replay(target, BATCH, lease)
    assert [r.token for r in acknowledged.rows + in_flight.rows] == tokens[:4]

    assert (
        "dry run: 0 registrations to queue and 4 queued by an earlier run"
        in replay(runner, "--dry-run").output
    )
    clock.advance(lease + 1)  # the dead run's lease has run out
    requests_mock.post(TARGET_URL, json="OK")
    result = replay(runner)
    sent = sum(calls(requests_mock), [])
    assert sorted(sent) == tokens[2:]  # the in-flight batch and the rest, each once
    assert "6 delivered, 0 dead, 0 still queued; 2 upstream calls" in result.stdout
    for token in tokens:
        assert [e["kind"] for e in replay_events(client, auth, token)] == ["replay_delivered"]
    replay(runner)
    assert sum(calls(requests_mock), []) == sent  # nothing more


class Killed(BaseException):
    """The process dies in the middle of an upstream call (nothing below catches it)."""


def test_a_run_that_dies_during_a_call_goes_on_where_it_stopped(
    runner, client, auth, chats, clock, bridge, requests_mock
):
    answers = iter(["OK"])

    def answer(request, context):
        try:
            return next(answers)
        except StopIteration:
            raise Killed from None

    requests_mock.post(TARGET_URL, json=answer)
    with pytest.raises(Killed):
        runner.invoke(args=["bridge", "replay", "--to-app", TARGET, "--api-key-env", KEY_ENV])
    assert calls(requests_mock) == [["1001", "1002"], ["1003", "1004"]]

    clock.advance(bridge.settings.lease_seconds + 1)
    requests_mock.post(TARGET_URL, json="OK")
    replay(runner)
    assert sorted(sum(calls(requests_mock)[2:], [])) == ["1003", "1004", "1005"]
    assert all(len(replay_events(client, auth, c["token"])) == 1 for c in chats)


# --- a chat that went away meanwhile ------------------------------------------------------------


def test_a_chat_removed_while_its_replay_waits_is_not_replayed(
    runner, client, auth, bridge, chats, requests_mock
):
    bridge.ledger.queue_replay(ReplayTarget(TARGET, "https://reteno.com"))  # a run stopped
    response = client.post(
        "/statuses",
        headers=auth,
        json={
            "status": "FAILED",
            "error": "Forbidden: bot was blocked by the user",
            "token": "1001",
        },
    )
    assert response.get_json()["removed"] == ["1001"]
    requests_mock.post(TARGET_URL, json="OK")
    replay(runner)
    assert "1001" not in sum(calls(requests_mock), [])
    kinds = [
        e["kind"] for e in client.get("/tokens/1001/history", headers=auth).get_json()["events"]
    ]
    assert kinds[-1] == "replay_dropped"


def test_sandbox_mode_asks_for_a_simulator_run_apart(make_app, monkeypatch, requests_mock):
    """The sandbox's simulator lives in each process and holds the bridge's own app: a
    replay there would go nowhere (retried for ever); the command says what to do."""
    monkeypatch.setenv(KEY_ENV, TARGET_KEY)
    app = make_app(RETENO_APP_UUID=None, RETENO_API_KEY=None, BRIDGE_SANDBOX=True)
    result = app.test_cli_runner().invoke(
        args=["bridge", "replay", "--to-app", TARGET, "--api-key-env", KEY_ENV]
    )
    assert result.exit_code == 2
    assert "reteno-sandbox --port" in result.output and "--base-url" in result.output
    assert requests_mock.call_count == 0
    requests_mock.post(f"http://127.0.0.1:8026/api/v1/apps/{TARGET}/tokens", json="OK")
    result = app.test_cli_runner().invoke(
        args=[
            "bridge",
            "replay",
            "--to-app",
            TARGET,
            "--api-key-env",
            KEY_ENV,
            "--base-url",
            "http://127.0.0.1:8026",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "0 registrations queued now" in result.output


def test_a_whole_batch_of_chats_gone_meanwhile_is_dropped_and_the_rest_sent(
    runner, client, auth, bridge, chats, requests_mock
):
    bridge.ledger.queue_replay(ReplayTarget(TARGET, "https://reteno.com"))  # a run stopped
    for token in ("1001", "1002"):  # the first batch (BATCH = 2), both blocked meanwhile
        response = client.post(
            "/statuses",
            headers=auth,
            json={
                "status": "FAILED",
                "error": "Forbidden: bot was blocked by the user",
                "token": token,
            },
        )
        assert response.get_json()["removed"] == [token]
    requests_mock.post(TARGET_URL, json="OK")
    result = replay(runner)
    sent = sum(calls(requests_mock), [])
    assert sorted(sent) == ["1003", "1004", "1005"]
    assert "3 delivered, 2 dead, 0 still queued" in result.stdout


def test_a_base_url_with_credentials_is_refused_without_echoing_them(runner, chats, requests_mock):
    result = replay(runner, "--base-url", "https://bridge:s3cret-pass@reteno.com", code=2)
    assert "must not carry credentials" in result.output
    assert "s3cret-pass" not in result.output
    assert calls(requests_mock) == []


def test_replays_are_counted_apart_from_deliveries(runner, client, auth, chats, requests_mock):
    requests_mock.post(TARGET_URL, json="OK")
    before = client.get("/metrics", headers=auth).get_data(as_text=True)
    replay(runner)
    text = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'bridge_commands_total{lane="replay",outcome="delivered"} 5.0' in text
    delivered = [
        line
        for line in text.splitlines()
        if line.startswith('bridge_deliveries_total{outcome="delivered"}')
    ]
    assert delivered == [
        line
        for line in before.splitlines()
        if line.startswith('bridge_deliveries_total{outcome="delivered"}')
    ]


def test_a_refused_replay_never_lengthens_the_bridges_own_pauses(
    runner, client, auth, bridge, chats, requests_mock
):
    """A target's 401 is recorded as the first pause of its own (15 s), and the next 401
    of the bridge's own Reteno is the bridge's first pause too, 15 s, not the second."""
    requests_mock.post(TARGET_URL, status_code=401, json={"message": "Unauthorized"})
    replay(runner, code=1)
    [paused] = [e for e in replay_events(client, auth, "1001") if e["kind"] == "replay_paused"]
    at, until = (datetime.fromisoformat(v) for v in (paused["at"], paused["detail"]["pausedUntil"]))
    assert until - at == timedelta(seconds=15)
    requests_mock.post(TOKENS_URL, status_code=401, json={"message": "Unauthorized"})
    bridge.deliver_once()
    own = client.get("/healthz", headers=auth).get_json()["delivery"]
    last = [e for e in history(client, auth, "1004") if e["kind"] == "paused"][-1]
    assert own["paused"] is True
    assert datetime.fromisoformat(own["pausedUntil"]) - datetime.fromisoformat(
        last["at"]
    ) == timedelta(seconds=15)


def test_replay_calls_are_logged_as_the_replays(runner, chats, requests_mock, caplog):
    caplog.set_level(logging.INFO, logger="bridge.worker")
    requests_mock.post(
        TARGET_URL, [{"json": "OK"}, {"status_code": 401, "json": {"message": "Unauthorized"}}]
    )
    replay(runner, code=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.worker"]
    assert lines[0].startswith("upstream call replay outcome=delivered status=200")
    assert lines[1].startswith("upstream call replay outcome=pause status=401")
    assert lines[2] == (
        "replay stopped: the target answered 401 (unauthorized; check its app id, key and base URL)"
    )
    assert not any("delivery paused" in line for line in lines)


def test_a_registration_live_again_is_replayed_by_the_next_run(
    runner, client, auth, bridge, requests_mock
):
    """A chat dead (refused) during the first run, requeued and delivered later, is sent by
    the next run, whatever its id is next to those already replayed."""
    requests_mock.post(
        TOKENS_URL, [{"status_code": 400, "json": {"message": "Invalid"}}, {"json": "OK"}]
    )
    register(client, auth, {"token": "2001", "contactId": 1})  # the older: dead
    bridge.deliver_once()
    register(client, auth, {"token": "2002", "contactId": 2})
    bridge.deliver_once()
    requests_mock.post(TARGET_URL, json="OK")
    replay(runner)
    assert calls(requests_mock) == [["2002"]]
    run(runner, "requeue")
    bridge.deliver_once()
    replay(runner)
    assert calls(requests_mock) == [["2002"], ["2001"]]


@pytest.mark.parametrize(
    ("first", "second"), [("esputnik", "reteno"), ("reteno", "esputnik")]
)  # the first target's base URL sorting before the second's, and after
def test_each_target_base_url_is_a_target_of_its_own(runner, chats, requests_mock, first, second):
    def url(platform):
        return {
            "reteno": TARGET_URL,
            "esputnik": f"https://esputnik.com/api/v1/apps/{TARGET}/tokens",
        }[platform]

    requests_mock.post(url(first), status_code=401, json={"message": "Unauthorized"})
    requests_mock.post(url(second), json="OK")
    result = replay(runner, "--platform", first, code=1)
    assert "0 delivered, 0 dead, 5 still queued; 1 upstream call" in result.stdout
    # the second target gets its own five, each once, and counts only them
    result = replay(runner, "--platform", second)
    assert "5 registrations queued now; 5 delivered, 0 dead, 0 still queued" in result.stdout
    assert sorted(sum(calls(requests_mock, url(second)), [])) == [c["token"] for c in CHATS]


@pytest.mark.parametrize(
    "second",
    [
        "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0",  # sorts before
        "ff1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0",
    ],
)  # and after
def test_each_app_is_a_target_of_its_own(runner, chats, requests_mock, second):
    requests_mock.post(TARGET_URL, json="OK")
    replay(runner)
    requests_mock.post(
        f"https://reteno.com/api/v1/apps/{second}/tokens",
        status_code=401,
        json={"message": "Unauthorized"},
    )
    result = run(runner, "replay", "--to-app", second, "--api-key-env", KEY_ENV, code=1)
    assert "5 registrations queued now; 0 delivered, 0 dead, 5 still queued" in result.stdout
