"""Several upstream calls in flight at once (``BRIDGE_IN_FLIGHT``; issue 28), batches of
tokens and the custom events' claims (many events under one lease, one call each, their
outcomes recorded together).

Each test holds its calls inside the fake upstream (``requests_mock`` answers them on
the worker's threads) at a barrier until as many as it expects are in flight together,
so what it asserts happened with them all under way; the barrier's time-out bounds a
hang and times nothing. The rate is checked on the pacer with a fake clock.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from bridge.config import UPSTREAM_RATE
from bridge.models import OutgoingEvent
from bridge.reteno import DELIVERED, CallResult, RetenoClient
from bridge.worker import EVENTS_RATE, DeliveryWorker, Halt, Lane, Pacer
from tests.conftest import TOKENS_URL
from tests.helpers import by_token, history, register, seconds_from_now, tokens

MUTE_URL = TOKENS_URL.removesuffix("/tokens") + "/token/mute"
EVENT_URL = "https://reteno.com/api/v2/event"
HANG = 10  # seconds a barrier waits before it breaks: a hang, never a timing


@pytest.fixture
def app(make_app):
    return make_app(BRIDGE_IN_FLIGHT=4, BRIDGE_BATCH_SIZE=3)


def sent(request) -> list[str]:
    return [t["token"] for t in request.json()["tokens"]]


def carried(body) -> list[str]:
    """What a call carries: its tokens, its chat (a mute), or its event's ``n`` param."""
    if "tokens" in body:
        return [t["token"] for t in body["tokens"]]
    if "eventTypeKey" in body:
        return [p["value"] for p in body["params"] if p["name"] == "n"]
    return [body["token"]]


class Upstream:
    """The fake Reteno. Each of the first ``together`` calls waits at a barrier, in the
    worker's thread before it is sent, until all of them are under way (``requests_mock``
    itself answers one request at a time); then ``before(tokens)`` runs, and
    ``answer(tokens)`` says what the call is answered."""

    def __init__(
        self, requests_mock, monkeypatch, together: int, answer=None, url=TOKENS_URL, before=None
    ):
        self.barrier = threading.Barrier(together, timeout=HANG)
        self.together = together
        self.answer = answer or (lambda tokens: (200, "OK"))
        self.before = before or (lambda tokens: None)
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()
        requests_mock.post(url, json=self.respond)
        real = RetenoClient._post

        def post(client, url, body):
            tokens = carried(body)
            with self.lock:
                self.calls.append(tokens)
                first = len(self.calls) <= self.together
            if first:
                self.barrier.wait()  # BrokenBarrierError: fewer were ever under way at once
            self.before(tokens)
            return real(client, url, body)

        monkeypatch.setattr(RetenoClient, "_post", post)

    def respond(self, request, context):
        context.status_code, answer = self.answer(carried(request.json()))
        return answer

    def tokens(self) -> list[str]:
        return sorted((t for call in self.calls for t in call), key=int)


def states(client, auth):
    return {token: row["state"] for token, row in by_token(client, auth).items()}


def numbers(first, last):
    return [str(n) for n in range(first, last + 1)]


def test_several_batches_in_flight_deliver_every_token_once_each_under_its_own_lease(
    client, auth, bridge, requests_mock, monkeypatch
):
    register(client, auth, *tokens(*range(1, 13)))  # four batches of three
    leases = []

    def answer(tokens):
        if not leases:
            with bridge.db.engine.connect() as conn:  # all four in flight now
                leases.append(
                    conn.execute(
                        text("SELECT COUNT(DISTINCT lease_id) FROM bridge_registrations")
                    ).scalar()
                )
        return 200, "OK"

    upstream = Upstream(requests_mock, monkeypatch, together=4, answer=answer)
    stats = bridge.deliver_once()
    assert len(upstream.calls) == 4 and all(len(c) == 3 for c in upstream.calls)
    assert upstream.tokens() == numbers(1, 12)  # each token once
    assert leases == [4]
    assert set(states(client, auth).values()) == {"delivered"}
    assert stats == {"delivered": 12}


def after_the_first_pause(bridge, monkeypatch):
    """An ``Upstream`` ``before``: each call without token 1 is answered only once the
    pause of the call with token 1 is recorded."""
    paused = threading.Event()
    real_pause = bridge.ledger.pause

    def pause(*args, **kwargs):
        try:
            return real_pause(*args, **kwargs)
        finally:
            paused.set()

    monkeypatch.setattr(bridge.ledger, "pause", pause)

    def before(tokens):
        if "1" not in tokens:
            assert paused.wait(HANG)  # answered after the first call's pause

    return before


def test_a_pause_stops_the_next_call_of_every_batch_in_flight(
    client, auth, bridge, requests_mock, monkeypatch
):
    """Three batches in flight: the first is refused with 401; the other two are
    refused with 400 after it (so each would be split): none of their halves is sent,
    no fourth batch is claimed, and nothing is lost or dead."""
    register(client, auth, *tokens(*range(1, 13)))
    bridge.worker.in_flight = 3
    before = after_the_first_pause(bridge, monkeypatch)

    def answer(tokens):
        if "1" in tokens:
            return 401, {"message": "Invalid access key"}
        return 400, {"message": "Invalid token"}

    upstream = Upstream(requests_mock, monkeypatch, together=3, answer=answer, before=before)
    stats = bridge.deliver_once()
    assert len(upstream.calls) == 3, upstream.calls
    assert upstream.tokens() == numbers(1, 9)
    assert set(states(client, auth).values()) == {"queued"}
    assert stats["paused"] == 3 and not stats["dead"]
    for token in ("4", "7"):  # the split halves were given back, unsent, with the pause's why
        last = history(client, auth, token)[-1]
        assert last["kind"] == "not_sent"
        assert last["detail"]["sent"] is False and last["detail"]["reason"] == "unauthorized"
    assert history(client, auth, "10")[-1]["kind"] == "submitted"  # never claimed


def test_a_success_sent_before_another_call_s_pause_does_not_lift_it(
    client, auth, bridge, clock, requests_mock, monkeypatch
):
    """Two batches in flight: the first is refused with 401; the second, sent before that
    answer, is taken after it. Its tokens are delivered, delivery stays paused, and the
    next pause is twice as long."""
    register(client, auth, *tokens(*range(1, 7)))
    bridge.worker.in_flight = 2
    before = after_the_first_pause(bridge, monkeypatch)

    def answer(tokens):
        return (401, {"message": "Invalid access key"}) if "1" in tokens else (200, "OK")

    Upstream(requests_mock, monkeypatch, together=2, answer=answer, before=before)
    stats = bridge.deliver_once()
    assert stats == {"paused": 3, "delivered": 3}
    assert states(client, auth) == {
        **dict.fromkeys(numbers(1, 3), "queued"),
        **dict.fromkeys(numbers(4, 6), "delivered"),
    }
    delivery = client.get("/healthz", headers=auth).get_json()["delivery"]
    assert delivery["paused"] is True
    assert seconds_from_now(clock, delivery["pausedUntil"]) == 15
    clock.advance(16)
    bridge.deliver_once()  # tokens 1 to 3 again: 401
    delivery = client.get("/healthz", headers=auth).get_json()["delivery"]
    assert seconds_from_now(clock, delivery["pausedUntil"]) == 30  # the second pause in a row


def test_split_on_4xx_with_several_in_flight_dead_letters_only_the_refused_tokens(
    client, auth, bridge, requests_mock, monkeypatch
):
    register(client, auth, *tokens(*range(1, 13)))
    bad = {"2", "9"}

    def answer(tokens):
        return (400, {"message": "Invalid token"}) if bad & set(tokens) else (200, "OK")

    upstream = Upstream(requests_mock, monkeypatch, together=4, answer=answer)
    bridge.deliver_once()
    assert states(client, auth) == {n: "dead" if n in bad else "delivered" for n in numbers(1, 12)}
    delivered = [t for call, (code, _) in ((c, answer(c)) for c in upstream.calls) if code == 200
                 for t in call]  # fmt: skip
    assert sorted(delivered, key=int) == [n for n in numbers(1, 12) if n not in bad]  # once each


def test_a_stop_while_calls_are_in_flight_finishes_them_and_claims_nothing_more(
    client, auth, bridge, requests_mock, monkeypatch
):
    register(client, auth, *tokens(*range(1, 19)))  # six batches of three
    stop = threading.Event()

    def answer(tokens):
        stop.set()  # SIGTERM while four calls are in flight
        return 200, "OK"

    upstream = Upstream(requests_mock, monkeypatch, together=4, answer=answer)
    bridge.worker.drain(stop=stop)
    assert len(upstream.calls) == 4
    done = states(client, auth)
    assert sorted((t for t, s in done.items() if s == "delivered"), key=int) == upstream.tokens()
    assert sum(s == "queued" for s in done.values()) == 6
    requests_mock.post(TOKENS_URL, json="OK")
    bridge.deliver_once()  # the rest are due now: no lease to wait out, none sent twice
    later = [sent(r) for r in requests_mock.request_history[4:]]
    assert sorted((t for c in later for t in c), key=int) == sorted(
        (t for t, s in done.items() if s == "queued"), key=int
    )
    assert set(states(client, auth).values()) == {"delivered"}


def test_stopping_the_background_thread_records_every_call_in_flight(
    make_app, auth, requests_mock, monkeypatch
):
    app = make_app(BRIDGE_IN_FLIGHT=3, BRIDGE_BATCH_SIZE=2, BRIDGE_BACKGROUND_DELIVERY=True)
    client, runtime = app.test_client(), app.extensions["reteno_bridge"]
    stopping, first = [], threading.Lock()

    def answer(tokens):
        with first:  # all three in flight: the first answer tells the process to stop
            if not stopping:
                stopper = threading.Thread(target=runtime.background.stop)
                stopper.start()
                stopping.append(stopper)  # seen by the test once started: it joins it
        runtime.background.stop_event.wait(HANG)
        return 200, "OK"

    upstream = Upstream(requests_mock, monkeypatch, together=3, answer=answer)
    register(client, auth, *tokens(*range(1, 9)))  # wakes the thread: four batches of two
    stopping_thread = None
    for _ in range(HANG * 100):
        if stopping:
            stopping_thread = stopping[0]
            break
        threading.Event().wait(0.01)
    assert stopping_thread is not None, "the calls never came"
    stopping_thread.join(HANG)
    assert not runtime.background.running
    assert len(upstream.calls) == 3
    done = states(client, auth)
    assert sorted((t for t, s in done.items() if s == "delivered"), key=int) == upstream.tokens()
    assert sum(s == "queued" for s in done.values()) == 2


def test_mutes_of_several_chats_are_in_flight_together(
    client, auth, bridge, requests_mock, monkeypatch
):
    requests_mock.post(TOKENS_URL, json="OK")
    register(client, auth, *tokens(1, 2, 3))
    bridge.deliver_once()
    for chat in ("1", "2", "3"):
        response = client.post("/mute", json={"token": chat}, headers=auth)
        assert response.status_code == 202, response.get_json()
    upstream = Upstream(requests_mock, monkeypatch, together=3, url=MUTE_URL)
    bridge.deliver_once()
    assert sorted(upstream.calls) == [["1"], ["2"], ["3"]]
    for chat in ("1", "2", "3"):
        assert history(client, auth, chat)[-1]["kind"] == "mute_delivered"


# --- custom events: a claim of many, one call each ------------------------------------


def queue_events(client, auth, bridge, requests_mock, count: int) -> None:
    """Events ``n`` = 1..count about chat 1, whose registration Reteno has."""
    requests_mock.post(TOKENS_URL, json="OK")
    register(client, auth, *tokens(1))
    bridge.deliver_once()
    body = {"events": [{"token": "1", "eventTypeKey": "bench", "params": {"n": str(n)}}
                       for n in range(1, count + 1)]}  # fmt: skip
    response = client.post("/events", json=body, headers=auth)
    assert response.status_code == 202, response.get_json()


def events(bridge) -> dict[str, tuple[str, str | None]]:
    """Each event's state and last error, by its ``n``."""
    with bridge.db.engine.connect() as conn:
        rows = conn.execute(OutgoingEvent.__table__.select().order_by(OutgoingEvent.id)).mappings()
        return {row["params"]["n"]: (row["state"], row["last_error"]) for row in rows}


def event_kinds(client, auth) -> list[str]:
    return [e["kind"] for e in history(client, auth, "1") if e["kind"].startswith("event_")]


def records(bridge, monkeypatch) -> list[int]:
    """The rows of each ``Ledger.record_each`` (one transaction each), as they come."""
    calls = []
    real = bridge.ledger.record_each

    def record_each(claim, outcomes):
        calls.append(len(outcomes))
        return real(claim, outcomes)

    monkeypatch.setattr(bridge.ledger, "record_each", record_each)
    return calls


def events_worker(bridge, in_flight: int, claim: int) -> DeliveryWorker:
    """A worker of the events lane alone, claiming ``claim`` events at a time."""
    lane = Lane(
        "events",
        lambda: bridge.ledger.claim_events(claim, 60),
        bridge.client.send_event,
        EVENTS_RATE,
        each=True,
    )
    return DeliveryWorker(
        bridge.ledger, bridge.client, 3, None, 60, lanes=[lane], in_flight=in_flight
    )


def test_a_claim_of_events_is_one_lease_one_call_each_all_in_flight_and_one_record(
    client, auth, bridge, requests_mock, monkeypatch
):
    queue_events(client, auth, bridge, requests_mock, 4)  # BRIDGE_IN_FLIGHT=4: one claim
    recorded = records(bridge, monkeypatch)
    leases = []

    def answer(numbers):
        if not leases:  # all four in flight now
            with bridge.db.engine.connect() as conn:
                leases.append(
                    conn.execute(
                        text(
                            "SELECT COUNT(*), COUNT(DISTINCT lease_id) FROM "
                            "bridge_outgoing_events WHERE lease_id IS NOT NULL"
                        )
                    ).one()
                )
        return 200, ""

    upstream = Upstream(requests_mock, monkeypatch, together=4, answer=answer, url=EVENT_URL)
    stats = bridge.deliver_once()
    assert sorted(upstream.calls) == [["1"], ["2"], ["3"], ["4"]]  # one call each, once
    assert leases == [(4, 1)]  # four events under one lease
    assert recorded == [4]  # their outcomes in one transaction
    assert stats == {"delivered": 4}
    assert event_kinds(client, auth).count("event_delivered") == 4
    assert {state for state, _ in events(bridge).values()} == {"delivered"}


def test_one_claim_with_mixed_answers_records_each_event_s_own(
    client, auth, bridge, requests_mock, monkeypatch
):
    """Delivered, refused with Reteno's 400 (dead, its text kept) and a 503 (retried),
    all three calls of one claim in flight at once, recorded together."""
    queue_events(client, auth, bridge, requests_mock, 3)
    recorded = records(bridge, monkeypatch)
    text_400 = "The event should have the following params: [orderId]"
    answers = {"1": (200, ""), "2": (400, {"message": text_400}), "3": (503, {"message": "no"})}
    upstream = Upstream(
        requests_mock, monkeypatch, together=3, answer=lambda n: answers[n[0]], url=EVENT_URL
    )
    stats = bridge.deliver_once()
    assert sorted(upstream.calls) == [["1"], ["2"], ["3"]]
    assert recorded == [3]
    assert stats == {"delivered": 1, "dead": 1, "retry": 1}
    done = events(bridge)
    assert done["1"] == ("delivered", None)
    assert done["2"][0] == "dead" and text_400 in done["2"][1]
    assert done["3"][0] == "queued"
    kinds = sorted(event_kinds(client, auth)[-3:])
    assert kinds == ["event_dead", "event_delivered", "event_retry"]


def test_a_pause_in_a_claim_sends_none_of_its_rest(client, auth, bridge, requests_mock):
    """One call at a time, a claim of five: the first delivered, the second refused with
    401; the other three are given back unsent, and delivery is paused."""
    queue_events(client, auth, bridge, requests_mock, 5)
    requests_mock.post(
        EVENT_URL,
        [{"text": ""}, {"status_code": 401, "json": {"message": "Invalid access key"}}],
    )
    stats = events_worker(bridge, in_flight=1, claim=5).drain()
    assert len([r for r in requests_mock.request_history if r.url == EVENT_URL]) == 2
    assert stats == {"delivered": 1, "paused": 1}
    assert [state for state, _ in events(bridge).values()] == ["delivered", *["queued"] * 4]
    unsent = [e for e in history(client, auth, "1") if e["kind"] == "event_not_sent"]
    assert len(unsent) == 3
    assert all(e["detail"]["sent"] is False for e in unsent)
    assert {e["detail"]["reason"] for e in unsent} == {"unauthorized"}
    assert "delivery_paused" in client.get("/healthz", headers=auth).get_json()["reasons"]


def test_a_pause_with_several_in_flight_stops_the_claim_s_waiting_calls(
    client, auth, bridge, requests_mock, monkeypatch
):
    queue_events(client, auth, bridge, requests_mock, 5)
    upstream = Upstream(
        requests_mock,
        monkeypatch,
        together=2,
        answer=lambda n: (401, {"message": "Invalid access key"}),
        url=EVENT_URL,
    )
    stats = events_worker(bridge, in_flight=2, claim=5).drain()
    assert sorted(upstream.calls) == [["1"], ["2"]]  # the other three waited for a place
    assert stats == {"paused": 2}
    assert {state for state, _ in events(bridge).values()} == {"queued"}
    assert event_kinds(client, auth).count("event_not_sent") == 3


def slow_slot(worker, lane: str, monkeypatch) -> threading.Event:
    """The first two calls to take a slot of ``lane``'s pacer wait for it together; the
    second gets it once the first has halted the drain (the event returned: set then)."""
    halted = threading.Event()
    real_block = Halt.block

    def block(halt, result):
        real_block(halt, result)
        halted.set()

    monkeypatch.setattr(Halt, "block", block)
    waits = []
    lock = threading.Lock()

    both = threading.Barrier(2, timeout=HANG)

    def wait():
        with lock:
            waits.append(1)
            turn = len(waits)
        if turn <= 2:
            both.wait()  # two calls waiting for a slot at once
        if turn == 2:
            assert halted.wait(HANG)  # still waiting for its slot when the other is answered

    monkeypatch.setattr(worker.pacers[lane], "wait", wait)
    return halted


def test_a_call_waiting_for_its_slot_is_not_sent_after_another_call_s_pause(
    client, auth, bridge, requests_mock, monkeypatch
):
    queue_events(client, auth, bridge, requests_mock, 2)
    requests_mock.post(EVENT_URL, status_code=401, json={"message": "Invalid access key"})
    worker = events_worker(bridge, in_flight=2, claim=2)
    halted = slow_slot(worker, "events", monkeypatch)
    stats = worker.drain()
    assert halted.is_set()
    assert len([r for r in requests_mock.request_history if r.url == EVENT_URL]) == 1
    assert stats == {"paused": 1}
    assert {state for state, _ in events(bridge).values()} == {"queued"}
    [unsent] = [e for e in history(client, auth, "1") if e["kind"] == "event_not_sent"]
    assert unsent["detail"]["sent"] is False and unsent["detail"]["reason"] == "unauthorized"


def test_a_batch_waiting_for_its_slot_is_not_sent_after_another_batch_s_hold(
    client, auth, bridge, requests_mock, monkeypatch
):
    register(client, auth, *tokens(*range(1, 7)))  # two batches of three
    bridge.worker.in_flight = 2
    requests_mock.post(TOKENS_URL, status_code=429, headers={"Retry-After": "30"})
    halted = slow_slot(bridge.worker, "registrations", monkeypatch)
    stats = bridge.deliver_once()
    assert halted.is_set()
    assert requests_mock.call_count == 1
    assert stats == {"retry": 3}
    assert set(states(client, auth).values()) == {"queued"}
    unsent = [t for t in numbers(1, 6) if history(client, auth, t)[-1]["kind"] == "not_sent"]
    assert len(unsent) == 3
    assert history(client, auth, unsent[0])[-1]["detail"]["reason"] == "rate_limited"


def test_a_stop_during_a_claim_records_its_calls_and_gives_back_the_rest(
    client, auth, bridge, requests_mock, monkeypatch
):
    queue_events(client, auth, bridge, requests_mock, 5)
    stop = threading.Event()

    def answer(numbers):
        stop.set()  # SIGTERM with two calls of a claim of five in flight
        return 200, ""

    upstream = Upstream(requests_mock, monkeypatch, together=2, answer=answer, url=EVENT_URL)
    stats = events_worker(bridge, in_flight=2, claim=5).drain(stop=stop)
    assert sorted(upstream.calls) == [["1"], ["2"]]
    assert stats == {"delivered": 2}
    unsent = [e for e in history(client, auth, "1") if e["kind"] == "event_not_sent"]
    assert len(unsent) == 3 and all(e["detail"]["stopping"] for e in unsent)
    bridge.deliver_once()  # started again: the rest is due at once, none sent twice
    assert sorted(upstream.calls) == [["1"], ["2"], ["3"], ["4"], ["5"]]
    assert {state for state, _ in events(bridge).values()} == {"delivered"}


def test_every_event_call_takes_a_slot_of_the_events_pacer(
    client, auth, bridge, requests_mock, monkeypatch
):
    queue_events(client, auth, bridge, requests_mock, 6)
    requests_mock.post(EVENT_URL, text="")
    pacer = bridge.worker.pacers["events"]
    assert pacer is not bridge.worker.pacers["registrations"]
    assert pacer.interval == Pacer.WINDOW / EVENTS_RATE
    taken = []
    real = pacer.reserve

    def reserve():
        taken.append(1)
        return real()

    monkeypatch.setattr(pacer, "reserve", reserve)
    bridge.deliver_once()
    assert len(taken) == 6 == len([r for r in requests_mock.request_history if r.url == EVENT_URL])


# --- the rate ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("rate", [UPSTREAM_RATE, EVENTS_RATE])
def test_the_pacer_never_starts_more_calls_a_second_than_its_rate(rate):
    clock = FakeClock()
    pacer = Pacer(rate, clock=clock)
    starts = []
    for n in range(1000):  # many threads at once would reserve at the same instant
        if n % 7 == 0:
            clock.now += 0.013  # and some a little later
        starts.append(clock.now + pacer.reserve())
    assert starts == sorted(starts)
    for i, start in enumerate(starts):
        in_a_second = [s for s in starts[i:] if s < start + 1.0]
        assert len(in_a_second) <= rate, start


def test_every_call_takes_a_slot_of_its_lanes_pacer_and_token_lanes_share_one(
    bridge, requests_mock, client, auth
):
    worker = bridge.worker
    registrations, mute = worker.pacers["registrations"], worker.pacers["mute"]
    assert registrations is mute and registrations.interval == Pacer.WINDOW / UPSTREAM_RATE
    taken = []
    real = registrations.reserve

    def reserve():
        taken.append(1)
        return real()

    registrations.reserve = reserve
    register(client, auth, *tokens(*range(1, 13)))
    requests_mock.post(
        TOKENS_URL,
        json=lambda r, c: (
            (setattr(c, "status_code", 400) or {"message": "no"}) if "5" in sent(r) else "OK"
        ),
    )
    bridge.deliver_once()
    assert len(taken) == requests_mock.call_count  # split calls too

    own = Lane("events", lambda: None, lambda rows: CallResult(DELIVERED, 200, "ok"), rate=350)
    lanes = [*worker.lanes, own]
    other = type(worker)(bridge.ledger, bridge.client, 3, None, 60, lanes=lanes)
    assert other.pacers["events"].interval == Pacer.WINDOW / 350
    assert other.pacers["events"] is not other.pacers["registrations"]
    assert other.pacers["registrations"] is other.pacers["mute"]


def test_a_replay_keeps_several_batches_in_flight_and_sends_each_token_once(
    client, auth, bridge, runner, requests_mock, monkeypatch
):
    target = "5d1c7a80-3f6b-4c8e-9a2d-7e4f1b2c3d4e"
    target_url = f"https://reteno.com/api/v1/apps/{target}/tokens"
    monkeypatch.setenv("TARGET_RETENO_KEY", "target-secret-key-0123456789")
    requests_mock.post(TOKENS_URL, json="OK")
    register(client, auth, *tokens(*range(1, 10)))  # three batches of three
    bridge.deliver_once()
    upstream = Upstream(requests_mock, monkeypatch, together=3, url=target_url)
    result = runner.invoke(
        args=["bridge", "replay", "--to-app", target, "--api-key-env", "TARGET_RETENO_KEY"]
    )
    assert result.exit_code == 0, result.output
    assert len(upstream.calls) == 3 and upstream.tokens() == numbers(1, 9)
    assert "9 delivered, 0 dead, 0 still queued; 3 upstream calls" in result.output


class Recorded:
    """A ``threading.Event`` for ``DeliveryWorker.run`` whose waits are recorded and
    return at once (tests/test_delivery_worker.py's ``Scripted``)."""

    def __init__(self, name, waits):
        self.name, self.waits, self.flag = name, waits, False

    def is_set(self):
        return self.flag

    def set(self):
        self.flag = True

    def clear(self):
        pass

    def wait(self, timeout=None):
        self.waits.append((self.name, timeout))
        return self.flag


def test_a_single_registration_goes_out_in_the_first_pass_before_any_poll(
    client, auth, bridge, requests_mock
):
    waits = []
    stop, wake = Recorded("stop", waits), Recorded("wake", waits)

    def answer(request, context):
        waits.append(("call", sent(request)))
        stop.set()
        return "OK"

    requests_mock.post(TOKENS_URL, json=answer)
    register(client, auth, *tokens(1))
    bridge.worker.run(stop, wake)
    assert waits[0] == ("call", ["1"])  # no poll waited out first
    assert states(client, auth) == {"1": "delivered"}


def test_a_database_failure_in_one_call_is_raised_once_the_others_are_recorded(
    client, auth, bridge, requests_mock, monkeypatch
):
    from sqlalchemy.exc import OperationalError

    register(client, auth, *tokens(*range(1, 7)))  # two batches of three
    real = bridge.ledger.delivered

    def delivered(claim, rows, detail):
        if any(r.token == "1" for r in rows):
            raise OperationalError("UPDATE …", {}, Exception("the database is restarting"))
        return real(claim, rows, detail)

    monkeypatch.setattr(bridge.ledger, "delivered", delivered)
    Upstream(requests_mock, monkeypatch, together=2)
    with pytest.raises(OperationalError):
        bridge.deliver_once()
    assert states(client, auth) == {
        **{n: "queued" for n in numbers(1, 3)},  # leased: due again once the lease runs out
        **{n: "delivered" for n in numbers(4, 6)},
    }
