"""The delivery worker: drains the outbox to Reteno.

Owns the loop and its concurrency, not the states: it claims due registrations from the
ledger in batches of ``BRIDGE_BATCH_SIZE``, makes one upstream call per batch and tells
the ledger what happened; then the due mutes and unmutes, one call each, and the bots'
custom events. Each of these
is a :class:`Lane` (a claim, a call, and the upstream's rate for it); a replay into
another app is a worker with a lane of its own. Up to ``BRIDGE_IN_FLIGHT`` calls are in
flight at once, each batch under its own lease; their starts are paced per upstream rate
(:class:`Pacer`: lanes without a rate of their own share Reteno's, ``UPSTREAM_RATE``).
A call that pauses or holds delivery stops every other call of the drain from making a
new one. A batch Reteno refuses with a 4xx other than 401/403/404 is split in halves
until the offending token is alone; that one goes ``dead`` and the rest are delivered.

A lane ``each`` (the events: Reteno has no bulk call for live events) claims up to
``BRIDGE_IN_FLIGHT`` rows under one lease but makes one call per row: each call is a
place of the drain's own (so ``BRIDGE_IN_FLIGHT`` counts calls whatever the lane, and
its pacer paces every one), and the last of a claim's calls to end records the whole
claim's outcomes in one transaction (:meth:`Ledger.record_each`). The claim, not each
call, is the unit of the ledger's work: one claim and one outcome transaction for many
calls, where a claim per call spent its time on the ledger, not on Reteno. The claim's
lease is renewed from its claim to that record, so a row waiting for its place is never
taken by another worker; a row whose call the drain's halt prevented is given back.

It runs as a background thread of the served app (woken at once after a registration)
and as ``flask --app app bridge deliver``; both may run at the same time because claims
are leased in the database, and a claim's lease is renewed while its call is in flight.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from . import heap
from .config import UPSTREAM_RATE
from .logs import get_logger
from .reteno import DELIVERED, PAUSE, REJECT, RETRY, CallResult

log = get_logger("bridge.worker")

EVENTS_RATE = 350  # the events lane: Reteno's limit for /api/v2/event, requests a second


@dataclass(frozen=True)
class Lane:
    """One kind of upstream call: how to claim its due rows (a :class:`Claim`, or None),
    how to send them (a :class:`CallResult`), and the most calls a second its endpoint
    takes (None: the worker's default, shared by every lane without a rate of its own).
    ``each``: one call per claimed row, the claim's outcomes recorded together."""

    name: str  # registrations | mute | events | replay
    claim: Callable[[], object]
    call: Callable[[list], CallResult]
    rate: float | None = None
    each: bool = False


class Each:
    """A claim of a lane ``each`` while its calls run: what each row's call did (None:
    not sent), and the renewal of the claim's lease until the last is recorded."""

    def __init__(self, claim, lease):
        self.claim = claim
        self.lease = lease
        self.results: dict[int, CallResult | None] = {}
        self._lock = threading.Lock()

    def done(self, row, result: CallResult | None) -> bool:
        """Keep ``row``'s result; whether it was the claim's last."""
        with self._lock:
            self.results[row.id] = result
            return len(self.results) == len(self.claim.rows)


class Pacer:
    """Starts of upstream calls at most ``rate`` a second: each start takes the next slot,
    ``WINDOW / rate`` seconds after the one before and never less than ``WINDOW`` after
    the start ``rate`` starts before it (so no window of a second holds more, whatever
    the rounding), and waits for it. Shared by the threads of a worker.

    ``WINDOW`` is a second and a margin: a call reaches the upstream a little after its
    start (a thread's turn on a busy machine, the connection), not always equally late,
    so starts a second apart can arrive less than a second apart. Starts evenly spaced
    at ``rate / WINDOW`` a second leave room for arrivals bunched by up to a tenth of a
    second in the upstream's own window of a second (the events: at most 318 a second
    against Reteno's 350; at 350 evenly spaced, a simulator counting in a sliding
    window answered a few 429s on the loaded bench machine)."""

    WINDOW = 1.1

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.interval = self.WINDOW / rate
        self.clock = clock
        self.sleep = sleep
        self._next = float("-inf")
        self._recent: deque[float] = deque(maxlen=max(1, int(rate)))  # the last slots
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take the next slot; the seconds until it."""
        with self._lock:
            now = self.clock()
            at = max(now, self._next)
            if len(self._recent) == self._recent.maxlen:
                at = max(at, self._recent[0] + self.WINDOW)
            self._recent.append(at)
            self._next = at + self.interval
            return at - now

    def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            self.sleep(delay)


class Halt:
    """Why a drain makes no new call: its ``stop`` was set (a worker stopping), or one of
    its calls paused or held delivery (the first such call is kept)."""

    def __init__(self, stop: threading.Event | None = None):
        self.stop = stop
        self.blocked: CallResult | None = None
        self._lock = threading.Lock()

    def is_set(self) -> bool:
        return self.blocked is not None or (self.stop is not None and self.stop.is_set())

    def block(self, result: CallResult) -> None:
        with self._lock:
            if self.blocked is None:
                self.blocked = result

    def unsent(self, batch: int) -> tuple[dict, float]:
        """What the history says of rows not sent because of it, and when they are due."""
        if self.blocked is None:
            return {"batch": batch, "sent": False, "stopping": True}, 0.0
        blocked = self.blocked
        delay = blocked.retry_after if blocked.outcome == RETRY else 0.0
        return {**blocked.detail(batch), "sent": False}, delay or 0.0


class DeliveryWorker:
    def __init__(
        self,
        ledger,
        client,
        batch_size: int,
        metrics,
        lease_seconds: int,
        mark: dict | None = None,
        lanes: list[Lane] | None = None,
        in_flight: int = 1,
        rate: float = UPSTREAM_RATE,
        retention: Callable[[], object] | None = None,
    ):
        self.ledger = ledger
        self.retention = retention  # run's housekeeping: bridge.retention.RetentionSchedule
        self.client = client
        self.batch_size = batch_size
        self.metrics = metrics
        self.lease_seconds = lease_seconds  # BRIDGE_LEASE_SECONDS
        self.heartbeat_seconds = lease_seconds / 3  # lease renewals while a call is in flight
        self.watch = client.watch  # renews them: the thread that keeps the calls' deadlines
        self.mark = mark or {}  # added to every outcome's history (sandbox deliveries)
        self.in_flight = in_flight  # BRIDGE_IN_FLIGHT
        self.lanes = lanes or [
            Lane(
                "registrations",
                lambda: ledger.claim(self.batch_size, self.lease_seconds),
                client.add_tokens,
            ),
            # one chat per call (Reteno's mute takes one token)
            Lane("mute", lambda: ledger.claim_mutes(1, self.lease_seconds), client.send_command),
            # one call per event (Reteno has no bulk call for live events), its own rate;
            # as many claimed at once as there are places
            Lane(
                "events",
                lambda: ledger.claim_events(self.in_flight, self.lease_seconds),
                client.send_event,
                EVENTS_RATE,
                each=True,
            ),
        ]
        shared = Pacer(rate)
        self.pacers = {lane.name: Pacer(lane.rate) if lane.rate else shared for lane in self.lanes}
        self._tally = threading.Lock()  # the drain's counts and progress, from every thread

    def _call(self, lane: Lane, claim, rows, halt: Halt | None = None) -> CallResult | None:
        """``rows``' call once its pacer's slot comes; None (not sent) when ``halt`` was set
        meanwhile (another call's pause or Retry-After, or a stop)."""
        # a lane ``each`` renews its whole claim from claim to record (_jobs)
        lease = None if lane.each else self._lease(claim, rows)
        try:
            self.pacers[lane.name].wait()
            if halt is not None and halt.is_set():
                return None
            result = lane.call(rows)
        finally:
            if lease is not None:
                lease.cancel()  # no renewal runs once the call is over
        log.info(
            "upstream call%s outcome=%s status=%s reason=%s batch=%d ms=%.1f%s",
            "" if lane.name == "registrations" else f" {lane.name}",
            result.outcome,
            result.status,
            result.reason,
            len(rows),
            result.seconds * 1000,
            f" error={result.error!r}" if result.error and result.outcome != DELIVERED else "",
        )
        if self.metrics:
            self.metrics.upstream_calls.labels(result.outcome, str(result.status or "none")).inc()
            self.metrics.upstream_latency.observe(result.seconds)
        return result

    def _lease(self, claim, rows):
        """The renewals of ``rows``' lease, every ``heartbeat_seconds`` until cancelled."""
        return self.watch.after(self.heartbeat_seconds, lambda: self._renew(claim, rows))

    def _renew(self, claim, rows) -> float:
        """Renew the lease of ``rows`` of a call in flight (a job on the watch, every
        ``heartbeat_seconds`` until the call is over): the call's deadline (at most half
        the lease) cannot cut short a name look-up or a connect, and no other worker may
        take rows whose call is still under way."""
        try:
            self.ledger.renew(claim, rows, self.lease_seconds)
        except Exception as exc:  # the database restarting: the next beat tries again
            log.warning("lease of a call in flight not renewed (%s)", type(exc).__name__)
        return self.heartbeat_seconds

    def _count(self, lane: Lane, outcome: str, n: int, stats: Counter) -> None:
        with self._tally:
            stats[outcome] += n
        if self.metrics and n:
            if lane.name == "registrations":
                self.metrics.deliveries.labels(outcome).inc(n)
            else:
                self.metrics.commands.labels(lane.name, outcome).inc(n)

    def _send(
        self,
        lane: Lane,
        claim,
        rows,
        stats: Counter,
        renew: bool = False,
        halt: Halt | None = None,
    ) -> CallResult | None:
        """Deliver ``rows`` of a claim; the failure that stops delivery for now, if any.

        ``renew``: a further call of the same claim (a split batch) first extends
        the lease, and sends only the rows still held, so a long split never
        overlaps with another worker that took the rows after the lease ran out.
        ``halt`` set (a stop, or another call's pause): no further call is made; rows
        not sent go back to the queue.
        """
        if renew:
            rows = self.ledger.renew(claim, rows, self.lease_seconds)
            if not rows:
                return None
        result = self._call(lane, claim, rows, halt)
        if result is None:  # halted while waiting for its slot: back, due when the halt says
            unsent, delay = halt.unsent(len(rows))
            self.ledger.release(claim, rows, {**unsent, **self.mark}, delay)
            return None
        detail = {**result.detail(len(rows)), **self.mark}
        if result.outcome == DELIVERED:
            self._count(lane, "delivered", self.ledger.delivered(claim, rows, detail), stats)
            return None
        if result.outcome in (RETRY, PAUSE) and halt is not None:
            halt.block(result)  # the other calls in flight make no next call from now on
        if result.outcome == RETRY:
            self.ledger.retry(claim, rows, detail, result.retry_after)
            self._count(lane, "retry", len(rows), stats)
            return result
        if result.outcome == PAUSE:
            until = self.ledger.pause(claim, rows, detail)
            if claim.shared:
                log.error(
                    "delivery paused until %s: Reteno answered %s (%s; check "
                    "RETENO_BASE_URL, RETENO_API_KEY, RETENO_APP_UUID, RETENO_AUTH)",
                    until.isoformat(),
                    result.status,
                    result.reason,
                )
            else:  # another app's answer (a replay): its run stops; ours goes on
                log.error(
                    "%s stopped: the target answered %s (%s; check its app id, key and base URL)",
                    lane.name,
                    result.status,
                    result.reason,
                )
            self._count(lane, "paused", len(rows), stats)
            return result
        assert result.outcome == REJECT
        if len(rows) == 1:
            self._count(lane, "dead", self.ledger.dead(claim, rows[0], detail), stats)
            return None
        return self._split(lane, claim, rows, stats, halt)

    def _split(
        self, lane: Lane, claim, rows, stats: Counter, halt: Halt | None
    ) -> CallResult | None:
        """A batch Reteno refused with a 4xx, sent again as two halves (each through
        :meth:`_send`, so halved again until the refused token is alone)."""
        middle = len(rows) // 2
        first, rest = rows[:middle], rows[middle:]
        if halt is not None and halt.is_set():  # halted: give the whole split back
            first, rest = [], rows
        blocked = self._send(lane, claim, first, stats, renew=True, halt=halt) if first else None
        if blocked is None and not (halt is not None and halt.is_set()):
            return self._send(lane, claim, rest, stats, renew=True, halt=halt)
        if blocked is None:  # halted: the rest goes back, due when the halt says
            unsent, delay = halt.unsent(len(rest))
            self.ledger.release(claim, rest, {**unsent, **self.mark}, delay)
            return None
        # The first half hit a transient failure or a pause: the rest waits with it.
        self.ledger.release(
            claim,
            rest,
            {**blocked.detail(len(rest)), **self.mark, "sent": False},
            blocked.retry_after if blocked.outcome == RETRY else 0.0,
        )
        return blocked

    def deliver_batch(self, stats: Counter | None = None) -> int:
        """Claim and send one batch of the first lane; the number of rows claimed (0: none
        due)."""
        stats = Counter() if stats is None else stats
        lane = self.lanes[0]
        claim = lane.claim()
        if claim is None:
            return 0
        self._send(lane, claim, list(claim.rows), stats)
        return len(claim.rows)

    def _claim(self):
        """The next due claim, lane after lane (registrations first): ``(lane, claim)``, or
        None when nothing is due."""
        for lane in self.lanes:
            claim = lane.claim()
            if claim is not None:
                return lane, claim
        return None

    def _batch(
        self, lane: Lane, claim, halt: Halt, stats: Counter, progress: Callable | None
    ) -> None:
        """One claimed batch, on a thread of the drain: sent, or given back if the drain
        was halted before its call."""
        rows = list(claim.rows)
        if halt.is_set():
            unsent, delay = halt.unsent(len(rows))
            self.ledger.release(claim, rows, {**unsent, **self.mark}, delay)
        else:
            blocked = self._send(lane, claim, rows, stats, halt=halt)
            if blocked is not None:
                halt.block(blocked)
        if progress:
            with self._tally:
                progress(len(rows))

    def _jobs(
        self, lane: Lane, claim, halt: Halt, stats: Counter, progress: Callable | None
    ) -> list[Callable[[], None]]:
        """A claim's work for the drain's places: one batch, or one call per row."""
        if not lane.each:
            return [partial(self._batch, lane, claim, halt, stats, progress)]
        each = Each(claim, self._lease(claim, list(claim.rows)))
        return [partial(self._one, lane, each, row, halt, stats, progress) for row in claim.rows]

    def _one(
        self, lane: Lane, each: Each, row, halt: Halt, stats: Counter, progress: Callable | None
    ) -> None:
        """One row's call of a lane ``each`` (none once the drain is halted); the claim's
        last records every row's outcome."""
        result = None
        try:
            if not halt.is_set():
                result = self._call(lane, each.claim, [row], halt)
        finally:  # whatever happens, the claim's last records it and ends its renewals
            if result is not None and result.outcome in (RETRY, PAUSE):
                halt.block(result)  # the calls not yet started make none
            if each.done(row, result):
                try:
                    self._record(lane, each, halt, stats)
                finally:
                    each.lease.cancel()
        if progress:
            with self._tally:
                progress(1)

    def _record(self, lane: Lane, each: Each, halt: Halt, stats: Counter) -> None:
        outcomes = []
        for row in each.claim.rows:
            result = each.results[row.id]
            if result is None:
                unsent, delay = halt.unsent(1)
                outcomes.append((row, "not_sent", {**unsent, **self.mark}, delay))
                continue
            kind = {DELIVERED: "delivered", RETRY: "retry", PAUSE: "paused", REJECT: "dead"}
            outcomes.append(
                (row, kind[result.outcome], {**result.detail(1), **self.mark}, result.retry_after)
            )
        moved, until = self.ledger.record_each(each.claim, outcomes)
        if until is not None:
            blocked = next(r for r in each.results.values() if r and r.outcome == PAUSE)
            log.error(
                "delivery paused until %s: Reteno answered %s (%s; check "
                "RETENO_BASE_URL, RETENO_API_KEY, RETENO_APP_UUID, RETENO_AUTH)",
                until.isoformat(),
                blocked.status,
                blocked.reason,
            )
        for outcome in ("delivered", "retry", "paused", "dead"):
            if moved[outcome]:
                self._count(lane, outcome, moved[outcome], stats)

    def _one_at_a_time(self, halt: Halt, stats: Counter, progress: Callable | None) -> None:
        """The drain in this thread, one call after the other."""
        while not halt.is_set():
            claimed = self._claim()
            if claimed is None:
                return
            failed = None
            for job in self._jobs(*claimed, halt, stats, progress):
                try:  # a lane each's jobs after a halt only give their rows back
                    job()
                except Exception as exc:
                    failed = failed or exc
                    halt.block(CallResult(RETRY, None, "worker_failed"))
            if failed is not None:
                raise failed

    def drain(
        self, progress: Callable[[int], None] | None = None, stop: threading.Event | None = None
    ) -> Counter:
        """Send batches until nothing is due, up to ``in_flight`` calls at once (one: in
        this thread). The first call that pauses or holds delivery ends the drain: no
        call makes a new one; those in flight are finished and recorded. A failure (of
        the database) in one ends it too, and is raised once the others are over."""
        stats: Counter = Counter()
        try:
            self._drain(stats, Halt(stop), progress)
        finally:
            if stats:  # what it held is free: back to the system (bridge.heap)
                heap.give_back()
        return stats

    def _drain(self, stats: Counter, halt: Halt, progress: Callable[[int], None] | None) -> None:
        if self.in_flight == 1:
            self._one_at_a_time(halt, stats, progress)
            return
        busy = threading.Condition()
        calls = {"active": 0, "ended": 0}
        failures: list[BaseException] = []

        def ended(future: Future) -> None:
            if future.exception() is not None:
                failures.append(future.exception())
                halt.block(CallResult(RETRY, None, "worker_failed"))
            with busy:
                calls["active"] -= 1
                calls["ended"] += 1
                busy.notify_all()

        # ``active``: the calls placed, running or waiting for one of the pool's threads
        # (the calls of a lane each's claim are placed at once, so the next claim is
        # made while they run, not while the pool waits for it)
        with ThreadPoolExecutor(self.in_flight, thread_name_prefix="bridge-call") as pool:
            while True:
                with busy:  # a free place (a call ends within its deadline)
                    busy.wait_for(lambda: calls["active"] < self.in_flight)
                    before = calls["ended"]
                claimed = None if halt.is_set() else self._claim()
                if claimed is None:
                    with busy:
                        if halt.is_set() or not calls["active"]:
                            break
                        # What ends now may leave rows due at once (a superseded mute,
                        # the rest of a split given back): claim again after it.
                        busy.wait_for(lambda before=before: calls["ended"] != before)
                    continue
                jobs = self._jobs(*claimed, halt, stats, progress)
                with busy:
                    calls["active"] += len(jobs)
                for job in jobs:
                    pool.submit(job).add_done_callback(ended)
        if failures:
            raise failures[0]  # now that every call is over

    def run(
        self, stop: threading.Event, wake: threading.Event | None = None, poll_seconds: float = 0.5
    ) -> None:
        """Deliver until ``stop`` is set: drain, then wait for ``wake`` (or ``stop``) or
        the next poll. A failure (the database restarting, say) is logged and retried
        with backoff, so the loop outlives it. Once ``stop`` is set, the calls in flight
        are finished and recorded, and no other is made."""
        wake = wake or stop
        failures = 0
        while not stop.is_set():
            try:
                self.drain(stop=stop)
                failures = 0
            except Exception as exc:
                failures += 1
                log.error(
                    "delivery failed (%s); retrying",
                    type(exc).__name__,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                stop.wait(min(30.0, poll_seconds * 2**failures))
            if self.retention is not None and not stop.is_set():
                self.retention()  # prunes the history when due; logs its own failures
            wake.wait(poll_seconds)
            if wake is not stop:
                wake.clear()
        self.watch.stop()


class BackgroundDelivery:
    """The worker on a daemon thread of the served process, woken after registrations.

    Stopped at interpreter exit (after Ctrl-C, or a gunicorn worker's SIGTERM): the
    calls in flight are finished and recorded (they run at once, so within one call's
    time), within ``stop_timeout`` seconds."""

    def __init__(
        self, worker: DeliveryWorker, poll_seconds: float = 0.5, stop_timeout: float = 15.0
    ):
        self.worker = worker
        self.poll_seconds = poll_seconds
        self.stop_timeout = stop_timeout
        self.wake_event = threading.Event()
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._at_exit = False

    @property
    def running(self) -> bool:
        return bool(self._thread and self._thread.is_alive() and self._pid == os.getpid())

    def start(self) -> None:
        with self._lock:
            if self.running:
                return
            # After a fork (gunicorn --preload) the parent's thread is gone: start afresh.
            self.stop_event = threading.Event()
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="bridge-delivery", daemon=True)
            self._thread.start()
            if not self._at_exit:
                atexit.register(self.stop)
                self._at_exit = True

    def wake(self) -> None:
        self.wake_event.set()

    def stop(self, timeout: float | None = None) -> None:
        self.stop_event.set()
        self.wake_event.set()
        if self._thread and self._pid == os.getpid():
            self._thread.join(self.stop_timeout if timeout is None else timeout)

    def _run(self) -> None:
        self.worker.run(self.stop_event, self.wake_event, self.poll_seconds)
