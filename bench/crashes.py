"""Figure 2 — crashes: ``kill -9`` servers and delivery workers, nothing acknowledged is lost.

gunicorn serves the bridge (``BRIDGE_BACKGROUND_DELIVERY=false``) and
separate ``flask --app app bridge deliver`` workers drain the outbox to the
Reteno simulator. While N registrations arrive over HTTP (spread over
``--duration`` seconds; a request that gets no 2xx is sent again, as a bot
backend would), the server (its whole process group: master and workers) and
a worker are each killed with SIGKILL three times at random moments (for a
worker, the first moment after a random one when it has a batch in flight)
and started again. At the end the 2xx-acknowledged registrations are compared
with the ledger and with what the simulator received.

The workers keep ``--in-flight`` calls in flight (``BRIDGE_IN_FLIGHT``, the bridge's
default unless given); a worker is killed once more rows are leased than one batch
holds, when that comes. A worker killed between Reteno's answer and the ledger's commit
leaves its batches leased; the rows come due again when the lease runs out
(``BRIDGE_LEASE_SECONDS``) and are sent again: such a token arrives twice.
The run snapshots the rows leased at each worker kill and checks that every
double send is one of them (bounded by the batches in flight).

    .venv/bin/python bench/crashes.py                       # 10,000 registrations, SQLite
    .venv/bin/python bench/crashes.py -n 300 --duration 10  # the CI scale
    .venv/bin/python bench/crashes.py --servers 2 --workers 2 \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test  # 2 gunicorns, 2 workers
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``bridge`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text  # noqa: E402

from bench import harness as h  # noqa: E402
from bridge.config import DEFAULT_IN_FLIGHT  # noqa: E402


def leased_tokens(db_url: str) -> set[str]:
    """Tokens of the rows claimed by some worker and not finished yet."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return set(
                conn.execute(
                    text(
                        "SELECT token FROM bridge_registrations "
                        "WHERE state = 'queued' AND lease_id IS NOT NULL"
                    )
                ).scalars()
            )
    finally:
        engine.dispose()


def run(
    count: int = 10_000,
    *,
    duration: float = 60.0,
    kills: int = 3,
    database_url: str | None = None,
    servers: int = 1,
    workers: int = 1,
    gunicorn_workers: int = 2,
    concurrency: int = 8,
    batch_size: int = 50,
    latency_ms: float = 150.0,
    lease_seconds: int = 6,
    in_flight: int = DEFAULT_IN_FLIGHT,
    seed: int | None = None,
    drain_timeout: float = 300.0,
    keep: str | None = None,
    quiet: bool = False,
) -> dict:
    """Run the crash scenario; return its figures."""
    say = (lambda *a: None) if quiet else h.say
    rng = random.Random(seed)
    workdir = h.workdir_for("bridge-crashes-", keep)
    started = time.monotonic()
    sim = h.start_simulator(workdir, latency_ms=latency_ms)
    procs: list[h.Proc] = [sim.proc]
    try:
        with h.database(database_url, workdir) as db_url:
            env = h.bridge_env(
                workdir,
                db_url,
                sim,
                BRIDGE_BATCH_SIZE=batch_size,
                BRIDGE_BACKGROUND_DELIVERY="false",
                BRIDGE_UPSTREAM_CONNECT_TIMEOUT=1.0,
                BRIDGE_UPSTREAM_READ_TIMEOUT=2.0,
                BRIDGE_LEASE_SECONDS=lease_seconds,
                BRIDGE_IN_FLIGHT=in_flight,
            )
            h.migrate(env, workdir)
            server_procs, urls = h.start_servers(env, workdir, servers, gunicorn_workers, procs)
            worker_procs = h.start_workers(env, workdir, workers, procs)

            moments = sorted(rng.uniform(0.05, 0.95) * duration for _ in range(2 * kills))
            kinds = ["server"] * kills + ["worker"] * kills
            rng.shuffle(kinds)
            log: list[dict] = []
            at_risk: set[str] = set()
            load_box: dict = {}

            # the moment to kill a worker: rows leased (with several in flight, more
            # than one batch holds), if that comes
            want = batch_size + 1 if in_flight > 1 else 1

            def chaos() -> None:
                for moment, kind in zip(moments, kinds, strict=True):
                    delay = started_load + moment - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    proc = rng.choice(server_procs if kind == "server" else worker_procs)
                    if kind == "worker":  # the harder moment: batches in flight, if they come
                        with contextlib.suppress(TimeoutError):
                            h.wait_until(lambda: len(leased_tokens(db_url)) >= want, 3.0, 0.01)
                    proc.kill9()
                    entry = {"at": round(time.monotonic() - started_load, 2), "kill": proc.name}
                    if kind == "worker":
                        leased = leased_tokens(db_url)
                        at_risk.update(leased)
                        entry["leasedRows"] = len(leased)
                    time.sleep(rng.uniform(0.2, 1.5))  # down for a moment
                    proc.start()
                    log.append(entry)
                    say(f"#   {entry}")

            say(
                f"# {count} registrations over {duration:g} s -> {', '.join(urls)}; "
                f"{workers} worker(s); {kills}+{kills} kill -9; logs in {workdir}"
            )
            started_load = time.monotonic()
            chaos_thread = threading.Thread(target=chaos, daemon=True)
            chaos_thread.start()
            load_box["load"] = load = h.send_load(
                urls, count, concurrency=concurrency, rate=count / duration, deadline=duration + 180
            )
            chaos_thread.join(timeout=duration + 120)
            say(f"# load sent in {load.seconds:.1f} s: {dict(load.statuses)}")
            for url in urls:
                h.wait_healthy(url)
            drained = h.wait_drained(
                db_url, drain_timeout, on_wait=lambda depth: say(f"#   outbox depth {depth}")
            )
            figures = h.verify(count, load, db_url, sim)
            per_token, _, _ = h.upstream_counts(sim.contacts())
            twice = {t for t, n in per_token.items() if n > 1}
            worker_kills = [e for e in log if "leasedRows" in e]
            figures.update(h.run_figures(load, db_url, drained, servers))
            figures.update(
                {
                    "kills": log,
                    "serverKills": len(log) - len(worker_kills),
                    "workerKills": len(worker_kills),
                    "leasedAtWorkerKills": sum(e["leasedRows"] for e in worker_kills),
                    "killsWithSeveralBatchesLeased": sum(
                        e["leasedRows"] > batch_size for e in worker_kills
                    ),
                    "inFlight": in_flight,
                    "sentTwiceOutsideLeasedAtKill": len(twice - at_risk),
                    "batchSize": batch_size,
                    "leaseSeconds": lease_seconds,
                    "upstreamCalls": sim.stats()["requests"],
                    "loadSeconds": round(load.seconds, 1),
                    "wallSeconds": round(time.monotonic() - started, 1),
                    "deliveryWorkers": workers,
                }
            )
            return h.stop_and_read_logs(procs[1:], workdir, figures)
    finally:
        for proc in procs:
            proc.stop()


def passed(figures: dict, kills: int = 3) -> bool:
    return (
        figures["lost"] == 0
        and figures["drained"]
        and figures["acknowledged"] == figures["registrations"]
        and figures["wrongIdentity"] == 0
        and figures["unexpectedTokens"] == 0
        and figures["logLinesWithSecretsOrPersonalData"] == 0
        and figures["serverKills"] == kills
        and figures["workerKills"] == kills
        and figures["sentTwiceOutsideLeasedAtKill"] == 0
        and figures["sentTwice"]
        <= figures["workerKills"] * figures["batchSize"] * figures["inFlight"]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--count", type=int, default=10_000)
    parser.add_argument(
        "--duration",
        type=float,
        default=60.0,
        help="seconds to spread the load (and the kills) over",
    )
    parser.add_argument("--kills", type=int, default=3, help="kills of each kind")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server URL: a fresh database is made on it",
    )
    parser.add_argument("--servers", type=int, default=1, help="gunicorn instances")
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="`bridge deliver` workers")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--batch-size", type=int, default=50, help="BRIDGE_BATCH_SIZE")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=150.0,
        help="simulator latency (a longer call: kills land mid-call)",
    )
    parser.add_argument("--lease-seconds", type=int, default=6, help="BRIDGE_LEASE_SECONDS")
    parser.add_argument(
        "--in-flight", type=int, default=DEFAULT_IN_FLIGHT, help="BRIDGE_IN_FLIGHT of the workers"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--keep", default=None, help="directory for logs and the database")
    args = parser.parse_args(argv)
    figures = run(
        args.count,
        duration=args.duration,
        kills=args.kills,
        database_url=args.database_url,
        servers=args.servers,
        workers=args.workers,
        gunicorn_workers=args.gunicorn_workers,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        latency_ms=args.latency_ms,
        lease_seconds=args.lease_seconds,
        in_flight=args.in_flight,
        seed=args.seed,
        drain_timeout=args.drain_timeout,
        keep=args.keep,
    )
    h.print_figures("figure 2: crashes", figures)
    ok = passed(figures, args.kills)
    h.say("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
