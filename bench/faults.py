"""Figure 1 — upstream faults: every acknowledged registration reaches Reteno once.

The Reteno simulator runs as its own process and answers a share of the calls
(30 % by default) with a fault drawn from 500, 503, 429, 429 with
Retry-After, a read time-out (it sleeps past the bridge's
``BRIDGE_UPSTREAM_READ_TIMEOUT``) and a dropped connection. The bridge runs
under gunicorn with credentials and ``RETENO_BASE_URL`` pointing at the
simulator; N registrations arrive over HTTP; the run waits until the outbox
is empty and counts, at the simulator, how often each token arrived and on
which contact.

    .venv/bin/python bench/faults.py                    # 10,000 registrations, SQLite
    .venv/bin/python bench/faults.py -n 500             # the CI scale
    .venv/bin/python bench/faults.py --servers 2 --workers 2 \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test  # 2 gunicorns, 2 workers

Exit status 0 only if every registration was acknowledged and delivered
exactly once (lost = 0, sent twice = 0).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``bridge`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness as h  # noqa: E402

ALL_FAULTS = "500,503,429,429-retry-after,timeout,drop"


def run(
    count: int = 10_000,
    *,
    failure_rate: float = 0.3,
    failures: str = ALL_FAULTS,
    database_url: str | None = None,
    servers: int = 1,
    workers: int = 0,
    gunicorn_workers: int = 2,
    concurrency: int = 8,
    per_request: int = 1,
    batch_size: int = 20,
    read_timeout: float = 1.0,
    seed: int | None = 1,
    drain_timeout: float = 900.0,
    keep: str | None = None,
    quiet: bool = False,
) -> dict:
    """Run the fault scenario; return its figures (see :func:`bench.harness.verify`).

    ``workers == 0``: the gunicorn processes deliver in the background; otherwise
    ``BRIDGE_BACKGROUND_DELIVERY=false`` and that many ``bridge deliver`` workers.
    """
    say = (lambda *a: None) if quiet else h.say
    workdir = h.workdir_for("bridge-faults-", keep)
    started = time.monotonic()
    sim = h.start_simulator(
        workdir,
        failure_rate=failure_rate,
        failures=failures,
        timeout_seconds=read_timeout * 2 + 0.5,
        seed=seed,
    )
    procs: list[h.Proc] = [sim.proc]
    try:
        with h.database(database_url, workdir) as db_url:
            env = h.bridge_env(
                workdir,
                db_url,
                sim,
                BRIDGE_BATCH_SIZE=batch_size,
                BRIDGE_UPSTREAM_CONNECT_TIMEOUT=1.0,
                BRIDGE_UPSTREAM_READ_TIMEOUT=read_timeout,
                BRIDGE_BACKGROUND_DELIVERY="false" if workers else "true",
            )
            h.migrate(env, workdir)
            _, urls = h.start_servers(env, workdir, servers, gunicorn_workers, procs)
            h.start_workers(env, workdir, workers, procs)
            say(
                f"# {count} registrations -> {', '.join(urls)}; upstream {sim.url} fails "
                f"{failure_rate:.0%} of calls ({failures}); logs in {workdir}"
            )
            load = h.send_load(urls, count, concurrency=concurrency, per_request=per_request)
            say(f"# load sent in {load.seconds:.1f} s: {dict(load.statuses)}")
            drained = h.wait_drained(
                db_url, drain_timeout, on_wait=lambda depth: say(f"#   outbox depth {depth}")
            )
            wall = time.monotonic() - started
            figures = h.verify(count, load, db_url, sim)
            stats = sim.stats()
            figures.update(h.run_figures(load, db_url, drained, servers))
            figures.update(
                {
                    "upstreamCalls": stats["requests"],
                    "upstreamCallsAccepted": stats["accepted_requests"],
                    "faultsInjected": sum(stats["faults"].values()),
                    "faultsByKind": stats["faults"],
                    "faultShare": round(
                        sum(stats["faults"].values()) / max(1, stats["requests"]), 3
                    ),
                    "loadSeconds": round(load.seconds, 1),
                    "wallSeconds": round(wall, 1),
                    "deliveryWorkers": workers or f"background ({servers}x{gunicorn_workers})",
                }
            )
            return h.stop_and_read_logs(procs[1:], workdir, figures)
    finally:
        for proc in procs:
            proc.stop()


def passed(figures: dict) -> bool:
    return (
        figures["lost"] == 0
        and figures["sentTwice"] == 0
        and figures["acknowledged"] == figures["registrations"]
        and figures["wrongIdentity"] == 0
        and figures["unexpectedTokens"] == 0
        and figures["logLinesWithSecretsOrPersonalData"] == 0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--count", type=int, default=10_000)
    parser.add_argument("--failure-rate", type=float, default=0.3)
    parser.add_argument("--failures", default=ALL_FAULTS)
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server URL: a fresh database is made on it",
    )
    parser.add_argument("--servers", type=int, default=1, help="gunicorn instances")
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="separate `bridge deliver` workers (0: background delivery)",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--per-request", type=int, default=1, help="tokens per request")
    parser.add_argument("--batch-size", type=int, default=20, help="BRIDGE_BATCH_SIZE")
    parser.add_argument(
        "--read-timeout", type=float, default=1.0, help="BRIDGE_UPSTREAM_READ_TIMEOUT for the run"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    parser.add_argument("--keep", default=None, help="directory for logs and the database")
    args = parser.parse_args(argv)
    figures = run(
        args.count,
        failure_rate=args.failure_rate,
        failures=args.failures,
        database_url=args.database_url,
        servers=args.servers,
        workers=args.workers,
        gunicorn_workers=args.gunicorn_workers,
        concurrency=args.concurrency,
        per_request=args.per_request,
        batch_size=args.batch_size,
        read_timeout=args.read_timeout,
        seed=args.seed,
        drain_timeout=args.drain_timeout,
        keep=args.keep,
    )
    h.print_figures("figure 1: upstream faults", figures)
    ok = passed(figures)
    h.say("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
