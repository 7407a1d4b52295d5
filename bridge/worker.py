"""The delivery worker: drains the outbox to Reteno.

Owns the loop, not the states: it claims due registrations from the ledger
in batches of ``BRIDGE_BATCH_SIZE``, makes one upstream call per batch and
tells the ledger what happened; then the due mutes and unmutes, one call
each. Each of these is a :class:`Lane` (a claim and a call); a replay into
another app is a worker with a lane of its own. A batch Reteno refuses with a 4xx other than
401/403/404 is split in halves until the offending token is alone; that one
goes ``dead`` and the rest are delivered. It runs as a background thread of
the served app (woken at once after a registration) and as
``flask --app app bridge deliver``; both may run at the same time because
claims are leased in the database, and a claim's lease is renewed while its
call is in flight.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from .logs import get_logger
from .reteno import DELIVERED, PAUSE, REJECT, RETRY, CallResult

log = get_logger("bridge.worker")

EVENTS_RATE = 350  # the events lane: Reteno's limit for /api/v2/event, requests a second


@dataclass(frozen=True)
class Lane:
    """One kind of upstream call: how to claim its due rows (a :class:`Claim`, or None)
    and how to send them (a :class:`CallResult`)."""

    name: str  # registrations | mute | replay
    claim: Callable[[], object]
    call: Callable[[list], CallResult]


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
        self.lanes = lanes or [
            Lane(
                "registrations",
                lambda: ledger.claim(self.batch_size, self.lease_seconds),
                client.add_tokens,
            ),
            # one chat per call (Reteno's mute takes one token)
            Lane("mute", lambda: ledger.claim_mutes(1, self.lease_seconds), client.send_command),
            # one event per call (Reteno has no bulk call for live events), at most EVENTS_RATE/s
            Lane("events", lambda: ledger.claim_events(1, self.lease_seconds), client.send_event),
        ]

    def _call(self, lane: Lane, claim, rows) -> CallResult:
        lease = self.watch.after(self.heartbeat_seconds, lambda: self._renew(claim, rows))
        try:
            result = lane.call(rows)
        finally:
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
        stop: threading.Event | None = None,
    ) -> CallResult | None:
        """Deliver ``rows`` of a claim; the failure that stops delivery for now, if any.

        ``renew``: a further call of the same claim (a split batch) first extends
        the lease, and sends only the rows still held, so a long split never
        overlaps with another worker that took the rows after the lease ran out.
        ``stop`` set: no further call is made; rows not sent go back to the queue.
        """
        if renew:
            rows = self.ledger.renew(claim, rows, self.lease_seconds)
            if not rows:
                return None
        result = self._call(lane, claim, rows)
        detail = {**result.detail(len(rows)), **self.mark}
        if result.outcome == DELIVERED:
            self._count(lane, "delivered", self.ledger.delivered(claim, rows, detail), stats)
            return None
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
        middle = len(rows) // 2
        first, rest = rows[:middle], rows[middle:]
        if stop is not None and stop.is_set():  # stopping: give the whole split back
            first, rest = [], rows
        blocked = self._send(lane, claim, first, stats, renew=True, stop=stop) if first else None
        if blocked is None and not (stop is not None and stop.is_set()):
            return self._send(lane, claim, rest, stats, renew=True, stop=stop)
        if blocked is None:  # stopping: the rest is due again at once, for the next worker
            self.ledger.release(
                claim, rest, {"batch": len(rest), "sent": False, "stopping": True, **self.mark}, 0.0
            )
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

    def drain(
        self, progress: Callable[[int], None] | None = None, stop: threading.Event | None = None
    ) -> Counter:
        """Send batches, lane after lane, until nothing is due (or delivery is paused or
        held: the first call that says so ends the drain)."""
        stats: Counter = Counter()
        for lane in self.lanes:
            while stop is None or not stop.is_set():
                claim = lane.claim()
                if claim is None:
                    break
                blocked = self._send(lane, claim, list(claim.rows), stats, stop=stop)
                if progress:
                    progress(len(claim.rows))
                if blocked is not None:
                    return stats
        return stats

    def run(
        self, stop: threading.Event, wake: threading.Event | None = None, poll_seconds: float = 0.5
    ) -> None:
        """Deliver until ``stop`` is set: drain, then wait for ``wake`` (or ``stop``) or
        the next poll. A failure (the database restarting, say) is logged and retried
        with backoff, so the loop outlives it. Once ``stop`` is set, the call in flight
        is finished and recorded, and no other is made."""
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
    call in flight is finished and recorded, within ``stop_timeout`` seconds."""

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
