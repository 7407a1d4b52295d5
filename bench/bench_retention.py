"""History retention: bytes per registration before and after ``bridge prune``.

Builds a ledger as the soak does — registrations arriving one by one, the delivery
worker draining what is due between arrivals, a share of the upstream calls failing
with a fault Reteno sends (500, 503, 429, 429 with Retry-After, a time-out), so their
batches are retried — through the ``Ledger`` API and the real ``DeliveryWorker``, with
a fake upstream in place of Reteno and a fake clock (a second per arrival of
``--arrival`` registrations, so retried batches come due again among new ones). Then
it moves the clock past the retention age and prunes as ``bridge prune --older-than
90d --yes`` does, and prints the SQLite file's size per registration before and after
(every page counted: the WAL checkpointed into the file first), with the history's
events by kind and the bytes of the largest tables (SQLite's ``dbstat``); last, what
an offline ``VACUUM`` (the bridge stopped) makes of the pruned file.

    .venv/bin/python bench/bench_retention.py                       # 20,000 registrations
    .venv/bin/python bench/bench_retention.py -n 114285 --faults 0.1
    .venv/bin/python bench/bench_retention.py --register-cost   # what INCREMENTAL costs
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bridge`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select  # noqa: E402

from bridge.db import Database, migrate  # noqa: E402
from bridge.ledger import Ledger, TokenRequest  # noqa: E402
from bridge.models import Event  # noqa: E402
from bridge.reteno import DELIVERED, RETRY, CallResult  # noqa: E402
from bridge.retention import prune  # noqa: E402
from bridge.watch import Watch  # noqa: E402
from bridge.worker import DeliveryWorker, Lane  # noqa: E402

DAY = 86400
# what a failed call answers, as bench/faults.py's simulator draws them
FAULTS = [
    (500, "server_error", None),
    (503, "server_error", None),
    (429, "rate_limited", None),
    (429, "rate_limited", 2.0),
    (None, "timeout", None),
]


class Clock:
    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class FakeUpstream:
    """Reteno answering ``faults`` of the calls with a transient fault, the rest 200."""

    def __init__(self, faults: float, rng: random.Random):
        self.faults, self.rng = faults, rng
        self.watch = Watch("bench-watch")
        self.calls = Counter()

    def add_tokens(self, rows) -> CallResult:
        if self.rng.random() < self.faults:
            status, reason, retry_after = self.rng.choice(FAULTS)
            self.calls["fault"] += 1
            return CallResult(RETRY, status, reason, "upstream fault", retry_after, 0.1)
        self.calls["ok"] += 1
        return CallResult(DELIVERED, 200, "ok", None, None, 0.02)


def file_bytes(db: Database) -> int:
    db.purge_freed()  # the WAL into the file: every page counted
    with db.read() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
        size = conn.exec_driver_sql("PRAGMA page_size").scalar()
    return pages * size


def by_table(db: Database) -> Counter:
    """Bytes of each table with its indexes (SQLite's ``dbstat``)."""
    with db.read() as conn:
        names = dict(
            conn.exec_driver_sql(
                "SELECT name, coalesce(tbl_name, name) FROM sqlite_master WHERE type IN "
                "('table', 'index')"
            ).all()
        )
        sizes = conn.exec_driver_sql("SELECT name, sum(pgsize) FROM dbstat GROUP BY name")
        out = Counter()
        for name, size in sizes:
            out[names.get(name, name)] += size
    return out


def kinds(db: Database) -> Counter:
    with db.read() as conn:
        return Counter(
            dict(conn.execute(select(Event.kind, func.count()).group_by(Event.kind)).all())
        )


def build(ledger: Ledger, clock: Clock, count: int, arrival: int, faults: float, seed: int):
    rng = random.Random(seed)
    upstream = FakeUpstream(faults, rng)
    lane = Lane("registrations", lambda: ledger.claim(1000, 120), upstream.add_tokens)
    worker = DeliveryWorker(ledger, upstream, 1000, None, 120, lanes=[lane])
    for n in range(count):
        ledger.register([TokenRequest(str(10_000_000 + n), contact_id=n + 1)])
        if (n + 1) % arrival == 0:
            clock.now += timedelta(seconds=1)
            worker.drain()
    while ledger.outbox()["depth"]:  # the last retries
        clock.now += timedelta(seconds=30)
        worker.drain()
    upstream.watch.stop()
    return upstream.calls


def register_cost(count: int = 4000, rounds: int = 3) -> None:
    """CPU of single-token ``Ledger.register`` calls on a new file in each
    ``auto_vacuum`` mode (a file the bridge makes: INCREMENTAL; one switched back to
    NONE by a ``VACUUM``), in alternating rounds."""
    cpu: dict[str, list[float]] = {"none": [], "incremental": []}
    for r in range(rounds):
        for mode in ("none", "incremental") if r % 2 == 0 else ("incremental", "none"):
            path = f"{tempfile.mkdtemp(prefix='bench-retention-')}/bridge.sqlite3"
            migrate(f"sqlite:///{path}")
            if mode == "none":
                raw = sqlite3.connect(path, isolation_level=None)
                raw.execute("PRAGMA auto_vacuum=NONE")
                raw.execute("VACUUM")
                raw.close()
            db = Database(f"sqlite:///{path}")
            ledger = Ledger(db)
            started = time.process_time()
            for n in range(count):
                ledger.register([TokenRequest(str(10_000_000 + n), contact_id=n + 1)])
            cpu[mode].append((time.process_time() - started) / count * 1e6)
            db.dispose()
    for mode, runs in cpu.items():
        print(
            f"auto_vacuum={mode}: {', '.join(f'{x:.0f}' for x in runs)} µs CPU per "
            f"registration (median {statistics.median(runs):.0f})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--registrations", type=int, default=20_000)
    parser.add_argument("--faults", type=float, default=0.1, help="share of calls failing")
    parser.add_argument("--arrival", type=int, default=10, help="registrations per second")
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument(
        "--register-cost",
        action="store_true",
        help="instead: CPU of Ledger.register on a new file in each auto_vacuum mode",
    )
    args = parser.parse_args(argv)
    if args.register_cost:
        register_cost()
        return 0

    url = f"sqlite:///{tempfile.mkdtemp(prefix='bench-retention-')}/bridge.sqlite3"
    migrate(url)
    db = Database(url)
    clock = Clock(datetime.now(UTC) - timedelta(days=200))
    ledger = Ledger(db, clock=clock)
    started = time.perf_counter()
    calls = build(ledger, clock, args.registrations, args.arrival, args.faults, args.seed)
    built = time.perf_counter() - started
    before, events_before, tables_before = file_bytes(db), kinds(db), by_table(db)
    copy = url.split("///", 1)[1] + ".unpruned"
    shutil.copyfile(url.split("///", 1)[1], copy)  # the WAL is in the file: a whole copy

    clock.now += timedelta(days=100)
    started = time.perf_counter()
    report = prune(ledger, 90 * DAY)
    took = time.perf_counter() - started
    after, events_after, tables_after = file_bytes(db), kinds(db), by_table(db)

    n = args.registrations
    print(f"ledger: {url} ({n:,} registrations, built in {built:.1f} s)")
    print(f"upstream calls: {calls['ok']:,} answered 200, {calls['fault']:,} faults")
    print(f"{'kind':<12} {'before':>9} {'after':>9}")
    for kind in sorted(events_before):
        print(f"{kind:<12} {events_before[kind]:>9,} {events_after.get(kind, 0):>9,}")
    for table, size in tables_before.most_common(4):
        print(
            f"{table} (with its indexes): {size / n:,.0f} bytes per registration before, "
            f"{tables_after[table] / n:,.0f} after"
        )
    print(
        f"pruned {report.deleted:,} events in {report.chunks} chunks, {took:.2f} s "
        f"(incremental vacuum: {report.before.incremental})"
    )
    print(f"before: {before / 2**20:.1f} MiB, {before / n:,.0f} bytes per registration")
    print(f"after:  {after / 2**20:.1f} MiB, {after / n:,.0f} bytes per registration")
    print(f"given back: {(before - after) / 2**20:.1f} MiB ({1 - after / before:.0%})")
    db.dispose()
    # what an offline VACUUM (the bridge stopped) makes of each file: its rows packed
    unpruned, pruned = vacuumed(copy), vacuumed(url.split("///", 1)[1])
    print(
        f"after a VACUUM: {unpruned / n:,.0f} bytes per registration unpruned, "
        f"{pruned / n:,.0f} pruned"
    )
    return 0


def vacuumed(path: str) -> int:
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("VACUUM")
        return (
            raw.execute("PRAGMA page_count").fetchone()[0]
            * raw.execute("PRAGMA page_size").fetchone()[0]
        )
    finally:
        raw.close()


if __name__ == "__main__":
    sys.exit(main())
