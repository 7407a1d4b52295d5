"""The delivery loop and its log (RELIABILITY.md, "Mutation testing"): the background
thread outlives a failure of the database, the loop backs off after failures and starts
over after a success, and each upstream call is one log line.

In the first test the thread's own loop waits (half a second between polls, a second
after the first failure); the test waits on what the ledger records (``Tally``), never
on time. The loop's back-off is nothing but time: the second test hands the loop events
that record each wait instead of blocking, as the ledger's tests move a fake clock.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import OperationalError

from tests.conftest import TOKENS_URL
from tests.helpers import Tally, register, rows, step_perf_counter


def test_background_delivery_outlives_a_failing_database(
    make_app, auth, requests_mock, monkeypatch
):
    app = make_app(BRIDGE_BACKGROUND_DELIVERY=True)
    ledger = app.extensions["reteno_bridge"].ledger
    requests_mock.post(TOKENS_URL, json="OK")
    real_claim = ledger.claim
    failed = []

    def claim(*args, **kwargs):
        if not failed:
            failed.append(True)
            raise OperationalError("SELECT …", {}, Exception("the database is restarting"))
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(ledger, "claim", claim)
    delivered = Tally(monkeypatch, app, "delivered")
    client = app.test_client()
    register(client, auth, {"token": 1, "contactId": 1})  # starts and wakes the thread
    delivered.wait_for(1, timeout=10)
    assert failed == [True]
    assert [r["state"] for r in rows(client, auth)] == ["delivered"]
    assert requests_mock.call_count == 1
    # every request makes sure the thread runs; it is still the one thread
    assert client.get("/healthz").status_code == 200
    assert len(delivery_threads()) == 1
    app.extensions["reteno_bridge"].background.stop()
    assert delivery_threads() == [], "stop() returned before the thread ended"


def delivery_threads():
    return [t for t in threading.enumerate() if t.name == "bridge-delivery" and t.is_alive()]


class Scripted:
    """A ``threading.Event`` for ``DeliveryWorker.run`` that never blocks: each wait is
    recorded (the loop's timing is what is tested) and returns at once."""

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


def test_the_delivery_loop_backs_off_after_failures_and_starts_over_after_a_success(
    bridge, monkeypatch
):
    # ``flask bridge deliver`` and the background thread run this loop. The claims fail
    # 7 times (the database is down), then one finds nothing due, then one fails again.
    waits = []
    stop, wake = Scripted("stop", waits), Scripted("wake", waits)
    outcomes = iter(["fail"] * 7 + ["nothing due", "fail and stop"])

    def claim(*args, **kwargs):
        outcome = next(outcomes)
        if outcome == "fail and stop":
            stop.set()
        if outcome.startswith("fail"):
            raise OperationalError("SELECT …", {}, Exception("the database is down"))
        return None

    monkeypatch.setattr(bridge.ledger, "claim", claim)
    bridge.worker.run(stop, wake)  # the default poll: 0.5 s
    poll = ("wake", 0.5)
    assert waits == [
        ("stop", 1.0),
        poll,
        ("stop", 2.0),
        poll,
        ("stop", 4.0),
        poll,
        ("stop", 8.0),
        poll,
        ("stop", 16.0),
        poll,
        ("stop", 30.0),
        poll,
        ("stop", 30.0),
        poll,  # at most 30 s
        poll,  # a pass that failed nothing: no back-off, and the next failure starts over
        ("stop", 1.0),
        poll,
    ]


def test_each_upstream_call_is_one_log_line_with_its_duration_and_error(
    client, auth, bridge, clock, requests_mock, monkeypatch, caplog
):
    from bridge import reteno

    caplog.set_level(logging.INFO, logger="bridge.worker")
    step_perf_counter(monkeypatch, reteno, 0.25)  # every upstream call takes 250 ms
    requests_mock.post(
        TOKENS_URL,
        [
            {"status_code": 503, "reason": "Service Unavailable", "text": "down"},
            {"status_code": 200, "json": "OK"},
        ],
    )
    register(client, auth, {"token": 1, "contactId": 1})
    bridge.deliver_once()
    clock.advance(2)
    bridge.deliver_once()
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "bridge.worker" and r.getMessage().startswith("upstream call")
    ]
    assert lines == [
        "upstream call outcome=retry status=503 reason=server_error batch=1 ms=250.0"
        " error='503 Service Unavailable: down'",
        "upstream call outcome=delivered status=200 reason=ok batch=1 ms=250.0",
    ]


def test_the_history_keeps_a_calls_duration_to_a_tenth_of_a_millisecond(
    client, auth, bridge, requests_mock, monkeypatch
):
    from bridge import reteno

    step_perf_counter(monkeypatch, reteno, 0.0078125)  # 7.8125 ms, exact in a float
    requests_mock.post(TOKENS_URL, json="OK")
    register(client, auth, {"token": 1, "contactId": 1})
    bridge.deliver_once()
    events = client.get("/tokens/1/history", headers=auth).get_json()["events"]
    assert events[-1]["kind"] == "delivered" and events[-1]["detail"]["ms"] == 7.8


def background(client, auth) -> bool:
    return client.get("/healthz", headers=auth).get_json()["delivery"]["background"]


def test_a_forked_worker_process_starts_a_delivery_thread_of_its_own(make_app, auth, monkeypatch):
    """Under gunicorn --preload a worker is a fork: the thread of the process it was forked
    from does not run in it. The bridge tells by the process id, whichever way the new
    id compares with the old, and starts the worker's own thread with its first request.
    (One process here: the "parent's" thread stays alive, and is stopped at the end.)"""
    import bridge.worker as worker_module

    app = make_app(BRIDGE_BACKGROUND_DELIVERY=True)
    client = app.test_client()
    runtime = app.extensions["reteno_bridge"]
    assert client.get("/healthz").status_code == 200  # the first request starts the thread
    assert background(client, auth) is True
    assert len(delivery_threads()) == 1
    real_pid = worker_module.os.getpid()
    stops = [runtime.background.stop_event]
    try:
        for child_pid in (real_pid + 1, real_pid - 1):
            monkeypatch.setattr(worker_module.os, "getpid", lambda pid=child_pid: pid)
            # Not this process's thread: the details say so (before the request's own
            # check starts one, /healthz reads the state)...
            assert runtime.background.running is False
            # ... and the next request starts the "child's" own thread.
            assert background(client, auth) is True
            stops.append(runtime.background.stop_event)
        assert len(delivery_threads()) == 3
        assert all(t.daemon for t in delivery_threads())  # never holds the interpreter
    finally:
        monkeypatch.setattr(worker_module.os, "getpid", lambda: real_pid)
        for stop in stops:
            stop.set()
        runtime.background.wake()
        for thread in delivery_threads():
            thread.join(5)
    assert delivery_threads() == []


def test_a_stop_during_a_split_gives_the_rest_back_due_at_once(make_app, auth, requests_mock):
    """SIGTERM while a refused batch is being split: the call in flight finishes and is
    recorded; the half never sent goes back to the queue, marked, due at once."""
    app = make_app(BRIDGE_BATCH_SIZE=4)
    client, runtime = app.test_client(), app.extensions["reteno_bridge"]
    register(client, auth, *({"token": n, "contactId": n} for n in range(1, 5)))
    stop = threading.Event()

    def the_first_half_while_stopping(request, context):
        stop.set()
        return "OK"

    requests_mock.post(
        TOKENS_URL,
        [
            {"status_code": 400, "json": {"message": "Invalid token"}},
            {"text": the_first_half_while_stopping},
        ],
    )
    runtime.worker.drain(stop=stop)
    assert {r["token"]: r["state"] for r in rows(client, auth)} == {
        "1": "delivered",
        "2": "delivered",
        "3": "queued",
        "4": "queued",
    }
    last = client.get("/tokens/3/history", headers=auth).get_json()["events"][-1]
    assert last["kind"] == "not_sent"
    assert last["detail"]["stopping"] is True and last["detail"]["sent"] is False
    requests_mock.post(TOKENS_URL, json="OK")
    runtime.worker.drain()  # the next worker sends them now: no lease to wait out
    assert {r["state"] for r in rows(client, auth)} == {"delivered"}


def test_the_loop_of_bridge_deliver_stops_when_told(bridge, monkeypatch):
    """``bridge deliver`` runs the loop with its stop event alone (no wake event): a stop
    that comes while it drains ends it instead of being waited through."""
    stop = threading.Event()
    real_claim = bridge.ledger.claim

    def claim(*args, **kwargs):
        stop.set()  # SIGTERM arrives while the loop is draining
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(bridge.ledger, "claim", claim)
    loop = threading.Thread(
        target=bridge.worker.run, args=(stop,), kwargs={"poll_seconds": 0.01}, daemon=True
    )
    loop.start()
    loop.join(10)  # bounds a hang; times nothing
    assert not loop.is_alive(), "the loop went on after its stop"
    assert stop.is_set()


def test_the_background_thread_is_stopped_at_exit_once_however_often_it_starts(
    make_app, monkeypatch
):
    import bridge.worker as worker_module

    at_exit = []
    monkeypatch.setattr(worker_module.atexit, "register", at_exit.append)
    runtime = make_app(BRIDGE_BACKGROUND_DELIVERY=True).extensions["reteno_bridge"]
    runtime.start_background()
    runtime.background.stop()
    runtime.start_background()  # started again (a fork, or after a stop)
    runtime.background.stop()
    assert at_exit == [runtime.background.stop]


def test_stop_gives_up_on_a_thread_that_overruns_its_time_out():
    """A call that outlasts the upstream time-outs must not hold the process's exit:
    ``stop()`` waits ``stop_timeout`` seconds for the thread, then returns."""
    from bridge.worker import BackgroundDelivery

    release = threading.Event()

    class Stuck:
        def run(self, stop, wake, poll_seconds):
            release.wait(30)

    background = BackgroundDelivery(Stuck(), stop_timeout=0.05)
    background.start()
    stopper = threading.Thread(target=background.stop, daemon=True)
    try:
        stopper.start()
        stopper.join(10)  # bounds a hang; times nothing
        assert not stopper.is_alive(), "stop() waited past its time-out"
        assert background.running  # the thread is still in its call
    finally:
        release.set()
    background.stop()
    assert not background.running
