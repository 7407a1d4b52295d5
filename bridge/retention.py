"""History retention: the ledger's attempt-level history out once it is old enough.

Owns one pruning run (:func:`prune`: count, delete chunk by chunk, give the space
back, report), which ``bridge prune`` and the delivery worker share, and the worker's
schedule (:class:`RetentionSchedule`: ``BRIDGE_HISTORY_RETENTION``, at most once every
``RETENTION_INTERVAL``). What may go is the ledger's to say
(:data:`bridge.ledger.pruning.PRUNABLE`). No Flask.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from .config import RETENTION_INTERVAL
from .ledger.pruning import Space
from .logs import get_logger

log = get_logger("bridge.retention")

CHUNK = 5000  # events deleted in one write transaction
VACUUM_PAGES = 2048  # free pages given back to the file system in one write transaction
CHUNKS_PER_TURN = 20  # the worker's run: chunks between two drains of the outbox


@dataclass
class PruneReport:
    """One run: what was prunable when it started (``by_kind``), what it deleted, and the
    space before and after (no ``after`` in a dry run)."""

    cutoff: datetime
    by_kind: dict[str, int]
    before: Space
    after: Space | None = None
    deleted: int = 0
    chunks: int = 0
    complete: bool = True  # False: the run stopped at its chunk limit, more is left
    dry_run: bool = False

    @property
    def prunable(self) -> int:
        return sum(self.by_kind.values())

    @property
    def given_back(self) -> int:
        """Bytes the database file gave back to the file system (SQLite), or by which the
        table shrank (PostgreSQL: usually none before a ``VACUUM FULL``)."""
        return max(0, self.before.size - self.after.size) if self.after else 0


def prune(
    ledger,
    older_than: int,
    chunk: int = CHUNK,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    max_chunks: int | None = None,
    count: bool = True,
) -> PruneReport:
    """Delete the attempt-level events older than ``older_than`` seconds, ``chunk`` at a
    time, each chunk its own short write transaction (safe while the bridge serves),
    then give the freed pages back (SQLite in incremental mode). ``progress`` gets the
    events deleted by each chunk; ``max_chunks``: stop after that many (the report
    says whether more is left). ``dry_run``: count only; ``count=False``: no count
    first (a scan of the whole history), ``by_kind`` empty."""
    cutoff = ledger.clock() - timedelta(seconds=older_than)
    by_kind = ledger.prunable(cutoff) if count or dry_run else {}
    report = PruneReport(cutoff, by_kind, ledger.history_space(), dry_run=dry_run)
    if dry_run or (count and not report.prunable):
        return report
    after = 0
    while True:
        if max_chunks is not None and report.chunks >= max_chunks:
            report.complete = False  # the next run finds out whether more is left
            break
        done = ledger.prune_chunk(cutoff, after, chunk)
        if done is None:
            break
        deleted, after = done
        report.deleted += deleted
        report.chunks += 1
        if progress:
            progress(deleted)
    if report.before.incremental and report.deleted:
        left = ledger.give_back(VACUUM_PAGES)
        while left:  # a step at a time, each a short write transaction
            left, was = ledger.give_back(VACUUM_PAGES), left
            if left >= was:
                break
    report.after = ledger.history_space()
    return report


class RetentionSchedule:
    """The delivery worker's pruning (``BRIDGE_HISTORY_RETENTION``): called after every
    drain, it runs at most once an ``interval`` by the ledger's clock, and sooner while
    the last run stopped at its chunk limit (``chunks`` per turn, so deliveries go on
    between turns). A failure is logged and tried again an interval later."""

    def __init__(
        self,
        ledger,
        retention: int,
        interval: float = RETENTION_INTERVAL,
        chunk: int = CHUNK,
        chunks: int = CHUNKS_PER_TURN,
    ):
        self.ledger = ledger
        self.retention = retention  # seconds; 0: keep everything, never run
        self.interval = timedelta(seconds=interval)
        self.chunk = chunk
        self.chunks = chunks
        self.next_at: datetime | None = None  # None: due at the first call

    def __call__(self) -> PruneReport | None:
        """Run if due; the run's report, or None."""
        now = self.ledger.clock()
        if not self.retention or (self.next_at is not None and now < self.next_at):
            return None
        self.next_at = now + self.interval
        try:
            report = prune(
                self.ledger, self.retention, self.chunk, max_chunks=self.chunks, count=False
            )
        except Exception as exc:  # the database restarting, say: delivery goes on
            log.error(
                "history pruning failed (%s); trying again in %s",
                type(exc).__name__,
                self.interval,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            return None
        if not report.complete:
            self.next_at = now  # more is left: the next turn goes on after a drain
        if report.deleted:
            log.info(
                "history pruned: %d attempt-level event(s) older than %s deleted%s",
                report.deleted,
                report.cutoff.isoformat(timespec="seconds"),
                "" if report.complete else " (more left, next turn after a drain)",
            )
        return report
