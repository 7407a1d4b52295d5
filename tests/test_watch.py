"""The watch (bridge/watch.py): one thread runs the timed jobs of every upstream call in
flight (deadlines, lease renewals), in time order; a cancelled job never runs again,
and its cancel waits for a run under way; the thread ends once nothing is left after a
stop, or when idle, and the next job starts it again. Waits here bound a hang; they
time nothing."""

from __future__ import annotations

import threading
import time

from bridge.watch import Watch


def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.01)


def test_jobs_run_in_time_order_on_one_thread():
    watch = Watch()
    ran = []
    for name, seconds in (("second", 0.2), ("first", 0.1), ("third", 0.3)):
        watch.after(seconds, lambda name=name: ran.append((name, threading.current_thread())))
    _until(lambda: len(ran) == 3)
    assert [name for name, _ in ran] == ["first", "second", "third"]
    assert {thread.name for _, thread in ran} == {"bridge-watch"}
    assert len({thread for _, thread in ran}) == 1


def test_a_job_runs_again_after_the_seconds_it_returns_until_cancelled():
    watch = Watch()
    runs = []
    job = watch.after(0, lambda: runs.append(1) or 0.01)
    _until(lambda: len(runs) >= 3)
    job.cancel()
    after_cancel = len(runs)
    time.sleep(0.1)
    assert len(runs) == after_cancel


def test_cancel_waits_for_the_run_under_way():
    watch = Watch()
    started, release = threading.Event(), threading.Event()
    order = []

    def slow():
        started.set()
        release.wait(10)
        order.append("run over")

    job = watch.after(0, slow)
    assert started.wait(10)
    canceller = threading.Thread(target=lambda: (job.cancel(), order.append("cancelled")))
    canceller.start()
    canceller.join(0.1)
    assert canceller.is_alive() and order == []
    release.set()
    canceller.join(10)
    assert order == ["run over", "cancelled"]


def test_a_failing_job_is_logged_and_the_others_run(caplog):
    watch = Watch()
    ran = threading.Event()
    watch.after(0, lambda: 1 / 0)
    watch.after(0.05, ran.set)
    assert ran.wait(10)
    assert "a timed job of an upstream call failed (ZeroDivisionError)" in caplog.text


def test_after_a_stop_the_thread_ends_once_no_job_is_left_and_the_next_job_starts_it():
    watch = Watch()
    pending = watch.after(3600, lambda: None)
    watch.stop()
    time.sleep(0.05)
    assert watch.running  # a job is pending: its call is still in flight
    pending.cancel()
    _until(lambda: not watch.running)
    ran = threading.Event()
    watch.after(0, ran.set)
    assert ran.wait(10) and watch.running


def test_an_idle_thread_ends_by_itself():
    watch = Watch()
    watch.IDLE_SECONDS = 0.05
    ran = threading.Event()
    watch.after(0, ran.set)
    assert ran.wait(10)
    _until(lambda: not watch.running)
