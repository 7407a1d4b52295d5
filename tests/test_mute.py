"""Mute and unmute: ``POST /mute``, ``POST /unmute`` and ``bridge mute``/``unmute``.

What a bot sees (202, 404, 422, ``muted``/``mutedUntil`` on its registrations,
the history) and what Reteno receives (``/token/mute`` and ``/token/unmute``
bodies, in order, once it knows the chat). Every upstream call is answered by
``requests_mock``.
"""

from __future__ import annotations

import logging
from datetime import datetime

import pytest

from tests.conftest import APP_UUID, RETENO_KEY, TOKENS_URL, Clock
from tests.helpers import LEASE, assert_error_shape, history, register, rows, second_worker

MUTE_URL = TOKENS_URL.removesuffix("/tokens") + "/token/mute"
UNMUTE_URL = TOKENS_URL.removesuffix("/tokens") + "/token/unmute"
BLOCKED = "Forbidden: bot was blocked by the user"
CHAT = "5551234"


@pytest.fixture
def upstream(requests_mock):
    """Reteno answering 200 to all three calls."""
    for url in (TOKENS_URL, MUTE_URL, UNMUTE_URL):
        requests_mock.post(url, json="OK")
    return requests_mock


def calls(requests_mock) -> list[tuple[str, dict]]:
    """The upstream calls made: (last path segment, body)."""
    return [(r.url.rsplit("/", 1)[1], r.json()) for r in requests_mock.request_history]


def mute(client, auth, token=CHAT, code=202, **body):
    response = client.post("/mute", json={"token": token, **body}, headers=auth)
    assert response.status_code == code, response.get_json()
    return response.get_json()


def unmute(client, auth, token=CHAT, code=202):
    response = client.post("/unmute", json={"token": token}, headers=auth)
    assert response.status_code == code, response.get_json()
    return response.get_json()


def registration(client, auth, token=CHAT):
    return rows(client, auth, token=token)[0]


def kinds(client, auth, token=CHAT):
    return [e["kind"] for e in history(client, auth, token)]


@pytest.fixture
def delivered_chat(client, auth, bridge, upstream):
    """A chat whose registration Reteno has."""
    register(client, auth, {"token": CHAT, "contactId": 7})
    bridge.deliver_once()
    upstream.reset_mock()
    return CHAT


# --- the API ------------------------------------------------------------------------


def test_a_mute_is_queued_shown_and_sent_with_its_duration(
    client, auth, bridge, clock, delivered_chat, upstream
):
    body = mute(client, auth, duration=3600)
    assert body["token"] == CHAT and body["muted"] is True and body["state"] == "queued"
    until = datetime.fromisoformat(body["mutedUntil"])
    assert abs((until - clock.now).total_seconds() - 3600) < 1
    item = registration(client, auth)
    assert item["muted"] is True and item["mutedUntil"] == body["mutedUntil"]
    assert upstream.request_history == []  # 202: in the ledger, not yet sent
    bridge.deliver_once()
    [call] = upstream.request_history
    assert call.url == MUTE_URL
    assert call.json() == {"token": CHAT, "duration": 3600}
    assert call.headers["X-Reteno-Access-Key"] == RETENO_KEY
    assert kinds(client, auth)[-2:] == ["mute_requested", "mute_delivered"]
    events = history(client, auth, CHAT)
    assert events[-2]["detail"]["duration"] == 3600
    assert events[-1]["detail"]["status"] == 200
    assert events[-1]["detail"]["attempt"] == 1
    unmute(client, auth)  # a new request over a delivered one: a first attempt again
    bridge.deliver_once()
    assert history(client, auth, CHAT)[-1]["detail"]["attempt"] == 1


def test_a_mute_without_duration_lasts_until_unmuted(
    client, auth, bridge, delivered_chat, upstream
):
    body = mute(client, auth)
    assert body["muted"] is True and body["mutedUntil"] is None
    assert mute(client, auth, duration=None)["mutedUntil"] is None  # null counts as absent
    bridge.deliver_once()
    assert calls(upstream) == [("mute", {"token": CHAT})]
    body = unmute(client, auth)
    assert body["muted"] is False and body["mutedUntil"] is None
    bridge.deliver_once()
    assert calls(upstream)[-1] == ("unmute", {"token": CHAT})
    item = registration(client, auth)
    assert item["muted"] is False and item["mutedUntil"] is None


@pytest.mark.parametrize("path", ["/mute", "/unmute"])
def test_a_chat_without_a_live_registration_is_404_and_nothing_is_stored(
    client, auth, path, upstream
):
    response = client.post(path, json={"token": 42}, headers=auth)
    body = assert_error_shape(response, 404)
    assert "token" in body["errors"]
    assert history(client, auth, "42") == []


@pytest.mark.parametrize(
    "body",
    [
        {"token": CHAT, "duration": 4},
        {"token": CHAT, "duration": 31_536_001},
        {"token": CHAT, "duration": "60"},
        {"token": CHAT, "duration": True},
        {"token": CHAT, "duration": 60.5},
        {"duration": 60},
        {"token": "abc"},
        {"token": CHAT, "until": "tomorrow"},
    ],
)
def test_invalid_mutes_are_422_and_store_nothing(client, auth, body, upstream):
    register(client, auth, {"token": CHAT, "contactId": 7})
    before = history(client, auth, CHAT)
    response = client.post("/mute", json=body, headers=auth)
    body = assert_error_shape(response, 422)
    assert body["errors"]
    assert history(client, auth, CHAT) == before
    assert registration(client, auth)["muted"] is False


def test_the_limits_of_a_duration_are_accepted(client, auth, delivered_chat):
    assert mute(client, auth, duration=5)["muted"] is True
    assert mute(client, auth, duration=31_536_000)["muted"] is True


# --- order and the last request ---------------------------------------------------------


def test_a_mute_waits_until_reteno_knows_the_chat(client, auth, bridge, upstream):
    register(client, auth, {"token": CHAT, "contactId": 7})
    mute(client, auth, duration=600)
    bridge.deliver_once()
    assert [path for path, _ in calls(upstream)] == ["tokens", "mute"]


def test_a_mute_of_a_chat_whose_registration_is_not_delivered_is_not_sent(
    client, auth, bridge, requests_mock
):
    requests_mock.post(TOKENS_URL, status_code=503)
    requests_mock.post(MUTE_URL, json="OK")
    register(client, auth, {"token": CHAT, "contactId": 7})
    mute(client, auth)
    bridge.deliver_once()  # the 503 ends this pass before the mutes
    bridge.deliver_once()  # the registration waits for its retry: the mutes' lane runs
    assert [r.url for r in requests_mock.request_history] == [TOKENS_URL]


def test_a_mute_waits_for_its_own_chats_registration_not_another_chats(
    client, auth, bridge, requests_mock
):
    # another chat that Reteno has (its token sorts after this chat's) is no sign that
    # Reteno knows this one
    requests_mock.post(TOKENS_URL, [{"json": "OK"}, {"status_code": 503}])
    requests_mock.post(MUTE_URL, json="OK")
    register(client, auth, {"token": "9999999", "contactId": 9})
    bridge.deliver_once()
    register(client, auth, {"token": CHAT, "contactId": 7})
    mute(client, auth)
    bridge.deliver_once()  # the 503 ends this pass before the mutes
    bridge.deliver_once()  # the registration waits for its retry: the mutes' lane runs
    assert [r.url for r in requests_mock.request_history] == [TOKENS_URL, TOKENS_URL]


def test_a_mute_of_a_chat_with_two_identities_belongs_to_the_newest(
    client, auth, bridge, delivered_chat, upstream
):
    register(client, auth, {"token": CHAT, "email": "ann@example.com"})  # a second identity
    newest = max(r["id"] for r in rows(client, auth, token=CHAT) if r["state"] != "removed")
    mute(client, auth)
    [requested] = [e for e in history(client, auth, CHAT) if e["kind"] == "mute_requested"]
    assert requested["registrationId"] == newest


def test_the_last_request_wins_before_anything_is_sent(
    client, auth, bridge, delivered_chat, upstream
):
    mute(client, auth, duration=600)
    unmute(client, auth)
    mute(client, auth, duration=900)
    bridge.deliver_once()
    assert calls(upstream) == [("mute", {"token": CHAT, "duration": 900})]


def test_the_last_request_wins_over_one_being_retried(
    client, auth, bridge, clock, delivered_chat, requests_mock
):
    requests_mock.post(MUTE_URL, status_code=503)
    requests_mock.post(UNMUTE_URL, json="OK")
    mute(client, auth)
    bridge.deliver_once()  # the mute fails and waits for its retry
    unmute(client, auth)
    clock.advance(600)
    bridge.deliver_once()
    assert [r.url for r in requests_mock.request_history] == [MUTE_URL, UNMUTE_URL]
    clock.advance(3600)
    bridge.deliver_once()  # the mute is never sent again
    assert [r.url for r in requests_mock.request_history] == [MUTE_URL, UNMUTE_URL]
    assert registration(client, auth)["muted"] is False


def test_a_request_made_while_the_previous_is_in_flight_is_sent_after_it(
    client, auth, bridge, delivered_chat, requests_mock
):
    """The unmute arrives while the mute call is under way: Reteno gets the mute, then the
    unmute, never the other way round, and the mute's success does not swallow it."""

    def during_the_mute_call(request, context):
        unmute(client, auth)
        return "OK"

    requests_mock.post(MUTE_URL, text=during_the_mute_call)
    requests_mock.post(UNMUTE_URL, json="OK")
    mute(client, auth, duration=600)
    bridge.deliver_once()
    assert [r.url for r in requests_mock.request_history] == [MUTE_URL, UNMUTE_URL]
    assert registration(client, auth)["muted"] is False
    assert "mute_superseded" in kinds(client, auth)
    # the unmute's own first attempt: the mute's attempts are not carried over
    assert history(client, auth, CHAT)[-1]["detail"]["attempt"] == 1


def test_two_requests_made_while_a_call_is_in_flight_send_the_last_after_it(
    client, auth, bridge, delivered_chat, requests_mock
):
    """An unmute and a shorter mute arrive while the first mute's call is under way: its
    success supersedes neither, and the last request goes out after it."""
    first = True

    def during_the_first_call(request, context):
        nonlocal first
        if first:
            first = False
            unmute(client, auth)
            mute(client, auth, duration=60)
        return "OK"

    requests_mock.post(MUTE_URL, text=during_the_first_call)
    mute(client, auth, duration=600)
    bridge.deliver_once()
    assert calls(requests_mock) == [
        ("mute", {"token": CHAT, "duration": 600}),
        ("mute", {"token": CHAT, "duration": 60}),
    ]


def test_a_mute_is_sent_with_the_time_it_has_left(client, auth, bridge, clock, requests_mock):
    requests_mock.post(TOKENS_URL, [{"status_code": 503}, {"json": "OK"}])
    requests_mock.post(MUTE_URL, json="OK")
    register(client, auth, {"token": CHAT, "contactId": 7})
    mute(client, auth, duration=3600)
    bridge.deliver_once()  # the registration waits for its retry; so does the mute
    clock.advance(100)
    bridge.deliver_once()
    assert requests_mock.request_history[-1].json() == {"token": CHAT, "duration": 3500}


def test_a_mute_that_ran_out_before_it_could_be_sent_is_not_sent(
    client, auth, bridge, clock, requests_mock
):
    requests_mock.post(TOKENS_URL, [{"status_code": 503}, {"json": "OK"}])
    requests_mock.post(MUTE_URL, json="OK")
    register(client, auth, {"token": CHAT, "contactId": 7})
    mute(client, auth, duration=60)
    bridge.deliver_once()
    clock.advance(120)
    bridge.deliver_once()
    assert [r.url for r in requests_mock.request_history] == [TOKENS_URL, TOKENS_URL]
    assert "mute_lapsed" in kinds(client, auth)
    item = registration(client, auth)
    assert item["muted"] is False and item["mutedUntil"] is None


# --- Reteno's answers -----------------------------------------------------------------------


def test_duration_must_be_positive_int_is_a_dead_letter(
    client, auth, bridge, delivered_chat, requests_mock, runner
):
    requests_mock.post(
        MUTE_URL, status_code=400, json={"status": 400, "message": "Duration must be positive int"}
    )
    mute(client, auth, duration=600)
    bridge.deliver_once()
    bridge.deliver_once()
    assert len(requests_mock.request_history) == 1  # not retried
    assert kinds(client, auth)[-1] == "mute_dead"
    assert "Duration must be positive int" in history(client, auth, CHAT)[-1]["detail"]["error"]
    health = client.get("/healthz", headers=auth).get_json()
    assert "delivery_paused" not in health["reasons"]
    # an operator sees it: the user asked for quiet and Reteno will go on messaging
    assert "dead_commands" in health["reasons"] and "dead_letters" not in health["reasons"]
    assert health["deadCommands"] == {"mute": 1} and health["deadLetters"] == 0
    # requeue puts it back
    requests_mock.post(MUTE_URL, json="OK")
    result = runner.invoke(args=["bridge", "requeue"])
    assert result.exit_code == 0, result.output
    bridge.deliver_once()
    assert kinds(client, auth)[-2:] == ["mute_requeued", "mute_delivered"]
    health = client.get("/healthz", headers=auth).get_json()
    assert "dead_commands" not in health["reasons"] and health["deadCommands"] == {}


def test_a_refused_key_pauses_mutes_and_registrations_alike(
    client, auth, bridge, delivered_chat, requests_mock
):
    requests_mock.post(MUTE_URL, status_code=401, json={"message": "Unauthorized"})
    requests_mock.post(TOKENS_URL, json="OK")
    mute(client, auth)
    bridge.deliver_once()
    register(client, auth, {"token": "999", "contactId": 9})
    bridge.deliver_once()
    assert [r.url for r in requests_mock.request_history] == [MUTE_URL]
    health = client.get("/healthz", headers=auth).get_json()
    assert "delivery_paused" in health["reasons"]
    assert kinds(client, auth)[-1] == "mute_paused"


def test_a_transient_failure_is_retried(client, auth, bridge, clock, delivered_chat, requests_mock):
    requests_mock.post(MUTE_URL, [{"status_code": 503}, {"json": "OK"}])
    mute(client, auth)
    bridge.deliver_once()
    clock.advance(60)
    bridge.deliver_once()
    assert len(requests_mock.request_history) == 2
    assert kinds(client, auth)[-2:] == ["mute_retry", "mute_delivered"]


# --- blocking and coming back -------------------------------------------------------------


def block(client, auth, token=CHAT):
    response = client.post(
        "/statuses", json=[{"status": "FAILED", "error": BLOCKED, "token": token}], headers=auth
    )
    assert response.status_code == 200 and response.get_json()["removed"] == [token]


def test_a_muted_chat_that_blocks_and_comes_back_stays_muted(
    client, auth, bridge, clock, delivered_chat, upstream
):
    mute(client, auth)
    bridge.deliver_once()
    clock.advance(10)
    block(client, auth)
    clock.advance(10)
    register(client, auth, {"token": CHAT, "contactId": 7})  # the user is back (/start)
    items = rows(client, auth, token=CHAT)
    assert [i["state"] for i in items] == ["queued", "removed"]
    assert all(i["muted"] for i in items)
    bridge.deliver_once()
    # Reteno forgot the blocked token's mute: the new token is registered, then muted
    assert [path for path, _ in calls(upstream)] == ["mute", "tokens", "mute"]
    assert kinds(client, auth)[-3:] == ["submitted", "delivered", "mute_delivered"]
    assert history(client, auth, CHAT)[-1]["detail"]["attempt"] == 1  # a send of its own
    unmute(client, auth)
    bridge.deliver_once()
    assert calls(upstream)[-1] == ("unmute", {"token": CHAT})
    assert registration(client, auth)["muted"] is False


def test_a_mute_ending_within_5_s_of_a_block_is_not_queued_again(
    client, auth, bridge, clock, delivered_chat, upstream
):
    # Reteno's shortest mute is 5 s: one with less left would lapse unsent anyway
    mute(client, auth, duration=8)
    bridge.deliver_once()
    clock.advance(4)
    block(client, auth)
    clock.advance(1)
    register(client, auth, {"token": CHAT, "contactId": 7})
    bridge.deliver_once()
    assert [path for path, _ in calls(upstream)] == ["mute", "tokens"]
    assert [k for k in kinds(client, auth) if k.startswith("mute_")] == [
        "mute_requested",
        "mute_delivered",
    ]


def test_an_unmuted_chat_that_comes_back_gets_no_call_for_it(
    client, auth, bridge, clock, delivered_chat, upstream
):
    mute(client, auth)
    unmute(client, auth)
    bridge.deliver_once()
    clock.advance(10)
    block(client, auth)
    clock.advance(10)
    register(client, auth, {"token": CHAT, "contactId": 7})
    bridge.deliver_once()
    assert [path for path, _ in calls(upstream)] == ["unmute", "tokens"]


# --- the command line, erasure, metrics ------------------------------------------------------


def test_cli_mute_and_unmute(runner, client, auth, bridge, delivered_chat, upstream):
    result = runner.invoke(args=["bridge", "mute", CHAT, "--duration", "600"])
    assert result.exit_code == 0, result.output
    assert f"chat {CHAT}: muted until" in result.output
    assert registration(client, auth)["muted"] is True
    result = runner.invoke(args=["bridge", "unmute", CHAT, "--json"])
    assert result.exit_code == 0, result.output
    assert '"muted": false' in result.output
    bridge.deliver_once()
    assert [path for path, _ in calls(upstream)] == ["unmute"]  # the last one wins
    events = history(client, auth, CHAT)
    assert [e["detail"].get("source") for e in events if e["kind"].endswith("_requested")] == [
        "cli",
        "cli",
    ]
    result = runner.invoke(args=["bridge", "mute", "404404", "--duration", "4"])
    assert result.exit_code == 2 and "4 is not in the range" in result.output
    result = runner.invoke(args=["bridge", "mute", "404404"])
    assert result.exit_code == 1 and "no live registration" in result.output


def test_erasing_a_chat_erases_its_mute(runner, client, auth, delivered_chat):
    mute(client, auth)
    result = runner.invoke(args=["bridge", "erase", "--token", CHAT, "--yes"])
    assert result.exit_code == 0, result.output
    register(client, auth, {"token": CHAT, "contactId": 8})
    assert registration(client, auth)["muted"] is False


def test_metrics_count_mutes_by_state(client, auth, bridge, delivered_chat, upstream):
    mute(client, auth)
    text = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'bridge_ledger_commands{action="mute",state="queued"} 1.0' in text
    bridge.deliver_once()
    text = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'bridge_ledger_commands{action="mute",state="delivered"} 1.0' in text
    assert 'bridge_commands_total{lane="mute",outcome="delivered"} 1.0' in text


def test_the_app_uuid_is_in_the_mute_url(delivered_chat):
    assert APP_UUID in MUTE_URL


def test_mutes_of_several_chats_go_out_one_call_each(client, auth, bridge, upstream):
    register(client, auth, {"token": CHAT, "contactId": 7}, {"token": "777", "contactId": 8})
    mute(client, auth, CHAT, duration=600)
    mute(client, auth, "777")
    unmute(client, auth, "777")
    bridge.deliver_once()
    assert calls(upstream)[1:] == [
        ("mute", {"token": CHAT, "duration": 600}),
        ("unmute", {"token": "777"}),
    ]


def test_a_mute_call_is_one_log_line_naming_its_lane(
    client, auth, bridge, delivered_chat, upstream, caplog
):
    caplog.set_level(logging.INFO, logger="bridge.worker")
    mute(client, auth)
    bridge.deliver_once()
    [line] = [r.getMessage() for r in caplog.records if r.name == "bridge.worker"]
    assert line.startswith("upstream call mute outcome=delivered status=200 reason=ok batch=1")


def two_workers_and_a_mute(make_app, auth, requests_mock):
    """Worker A's app (client, runtime) and worker B on one database and one fake clock;
    CHAT registered and delivered, and a mute of it queued."""
    app = make_app(BRIDGE_LEASE_SECONDS=LEASE)
    client, runtime = app.test_client(), app.extensions["reteno_bridge"]
    clock = runtime.ledger.clock = Clock()
    other = second_worker(make_app, clock)
    requests_mock.post(TOKENS_URL, json="OK")
    register(client, auth, {"token": CHAT, "contactId": 7})
    runtime.deliver_once()
    mute(client, auth, duration=3600)
    return client, runtime, clock, other


@pytest.mark.parametrize(
    "late_answer",
    [
        {"status_code": 200, "json": "OK"},  # delivered
        {"status_code": 503, "text": "down"},  # retry
        {"status_code": 401, "json": {"message": "Unauthorized"}},  # paused
        {"status_code": 400, "json": {"message": "Duration must be positive int"}},  # dead
    ],
)
def test_a_late_answer_to_a_mute_moves_nothing_another_worker_holds(
    make_app, auth, requests_mock, late_answer
):
    """Worker A's mute call outlasts its lease; worker B claims the mute meanwhile. Whatever
    Reteno answers A, the mute stays as B's claim left it (queued, B's to finish)."""
    client, runtime, clock, other = two_workers_and_a_mute(make_app, auth, requests_mock)
    taken = []

    def answer(request, context):
        clock.advance(LEASE + 1)
        taken.append(other.ledger.claim_mutes(10, LEASE))
        context.status_code = late_answer["status_code"]
        return late_answer.get("json", late_answer.get("text"))

    requests_mock.post(MUTE_URL, json=answer)
    runtime.worker.drain()
    assert taken[0] is not None and [r.token for r in taken[0].rows] == [CHAT]
    assert kinds(client, auth)[-1] == "mute_requested"  # A's answer moved nothing
    requests_mock.post(MUTE_URL, json="OK")
    assert other.ledger.delivered(taken[0], taken[0].rows, {"status": 200}) == 1  # B's is
    assert kinds(client, auth)[-1] == "mute_delivered"


def test_a_new_request_after_a_dead_mute_is_sent(
    client, auth, bridge, delivered_chat, requests_mock
):
    requests_mock.post(
        MUTE_URL,
        [
            {"status_code": 400, "json": {"message": "Duration must be positive int"}},
            {"json": "OK"},
        ],
    )
    mute(client, auth, duration=600)
    bridge.deliver_once()
    assert kinds(client, auth)[-1] == "mute_dead"
    mute(client, auth)
    bridge.deliver_once()
    assert kinds(client, auth)[-2:] == ["mute_requested", "mute_delivered"]
    assert requests_mock.request_history[-1].json() == {"token": CHAT}


def test_bridge_tokens_shows_until_when_a_chat_is_muted(runner, client, auth, delivered_chat):
    from tests.helpers import run_cli, table_rows

    assert "MUTED" not in run_cli(runner, "tokens").output  # no mute: no column
    mute(client, auth)
    [header, row] = table_rows(run_cli(runner, "tokens").output)
    assert row[header.index("MUTED")] == "until unmuted"


def test_a_request_made_while_a_call_is_in_flight_waits_for_it_on_every_worker(
    make_app, auth, requests_mock
):
    """While worker A's mute call is under way, an unmute comes in: worker B does not take
    it (it would reach Reteno before the mute); it goes out after A's answer."""
    client, runtime, clock, other = two_workers_and_a_mute(make_app, auth, requests_mock)
    requests_mock.post(UNMUTE_URL, json="OK")
    taken_by_b = []

    def during_the_mute_call(request, context):
        unmute(client, auth)
        clock.advance(1)
        taken_by_b.append(other.ledger.claim_mutes(10, LEASE))
        return "OK"

    requests_mock.post(MUTE_URL, text=during_the_mute_call)
    runtime.worker.drain()
    assert taken_by_b == [None]
    assert [r.url for r in requests_mock.request_history[-2:]] == [MUTE_URL, UNMUTE_URL]


def test_a_new_request_goes_out_at_once_while_the_last_one_backs_off(
    client, auth, bridge, delivered_chat, requests_mock
):
    requests_mock.post(MUTE_URL, status_code=503)
    requests_mock.post(UNMUTE_URL, json="OK")
    mute(client, auth)
    bridge.deliver_once()  # the mute waits for its retry
    unmute(client, auth)
    bridge.deliver_once()  # no clock moved: the unmute does not inherit the back-off
    assert [r.url for r in requests_mock.request_history] == [MUTE_URL, UNMUTE_URL]


def test_requeue_of_one_chat_puts_back_that_chats_dead_mute_only(
    runner, client, auth, bridge, upstream, requests_mock
):
    from tests.helpers import run_cli

    register(client, auth, {"token": CHAT, "contactId": 7}, {"token": "777", "contactId": 8})
    bridge.deliver_once()
    requests_mock.post(MUTE_URL, status_code=400, json={"message": "Duration must be positive int"})
    mute(client, auth, CHAT, duration=600)
    mute(client, auth, "777", duration=600)
    bridge.deliver_once()
    run_cli(runner, "requeue", "--token", "777")
    assert kinds(client, auth, "777")[-1] == "mute_requeued"
    assert kinds(client, auth, CHAT)[-1] == "mute_dead"
