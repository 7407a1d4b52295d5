"""The watch: one thread that does the timed work of upstream calls in flight, for
every call of a client at once: each call's deadline (:mod:`bridge.reteno` shuts its
socket) and each claim's lease renewals (:mod:`bridge.worker`).

A job is a function run on the watch's thread after a delay; what it returns is the
delay before it runs again (None: done). :meth:`Job.cancel` removes it, and once it
returns the job is not running and never runs again, so whatever the job touches is
the caller's again. The thread starts with the first job, and ends when no job is left
after :meth:`Watch.stop` or after ``IDLE_SECONDS`` without one (the next job starts it
again, in a forked process too). Jobs run one after another: one that waits (a lease
renewal on a busy database) delays the others by as much.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable

from .logs import get_logger

log = get_logger("bridge.watch")


class Job:
    """A scheduled function of a :class:`Watch`; :meth:`cancel` ends it."""

    def __init__(self, watch: Watch, action: Callable[[], float | None]):
        self.watch = watch
        self.action = action

    def cancel(self) -> None:
        self.watch._cancel(self)


class Watch:
    """The thread and its jobs, due in time order (see the top)."""

    IDLE_SECONDS = 5.0

    def __init__(self, name: str = "bridge-watch"):
        self.name = name
        self._due: list[tuple[float, int, Job]] = []  # a heap: (monotonic time, order, job)
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._wakes_at = 0.0  # when the thread wakes by itself: an earlier job wakes it
        self._running: Job | None = None
        self._stopping = False
        self._active_at = 0.0  # when a job was last added or run

    def after(self, seconds: float, action: Callable[[], float | None]) -> Job:
        """Run ``action`` in ``seconds``, and again after the seconds it returns."""
        job = Job(self, action)
        with self._cond:
            if self._pid != os.getpid():  # a fork: the parent's jobs (its calls) stay there
                self._due.clear()
                self._thread, self._running, self._pid = None, None, os.getpid()
            self._stopping = False
            self._active_at = time.monotonic()
            self._push(self._active_at + seconds, job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        return job

    def stop(self) -> None:
        """End the thread as soon as no job is left."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    @property
    def running(self) -> bool:
        thread = self._thread
        return bool(thread and thread.is_alive() and self._pid == os.getpid())

    def _push(self, due: float, job: Job) -> None:
        heapq.heappush(self._due, (due, next(self._order), job))
        if due < self._wakes_at:
            self._cond.notify()

    def _cancel(self, job: Job) -> None:
        with self._cond:
            # Not from the job itself (it would wait for itself): it just returns None.
            while self._running is job and threading.current_thread() is not self._thread:
                self._cond.wait()
            kept = [entry for entry in self._due if entry[2] is not job]
            if len(kept) != len(self._due):
                heapq.heapify(kept)
                self._due = kept
                if self._stopping and not kept:
                    self._cond.notify()  # the thread ends now

    def _run(self) -> None:
        with self._cond:
            try:
                self._serve()
            finally:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _serve(self) -> None:
        """The thread's loop (holding the lock, except while a job runs)."""
        while True:
            now = time.monotonic()
            if not self._due:
                self._wakes_at = self._active_at + self.IDLE_SECONDS
                if self._stopping or now >= self._wakes_at:
                    return
                self._cond.wait(self._wakes_at - now)
                continue
            due, _, job = self._due[0]
            if due > now:
                self._wakes_at = due
                self._cond.wait(due - now)
                continue
            heapq.heappop(self._due)
            self._running = job
            self._cond.release()
            try:
                again = job.action()
            except Exception as exc:  # a job's own failure must not end the others
                log.error("a timed job of an upstream call failed (%s)", type(exc).__name__)
                again = None
            finally:
                self._cond.acquire()
                self._running = None
                self._cond.notify_all()  # a cancel waiting for this job
            self._active_at = time.monotonic()
            if again is not None:
                self._push(self._active_at + again, job)
