"""What a backlog leaves in the delivery worker's memory (figure 8 of RELIABILITY.md).

The bridge's app (SQLite, the bridge's defaults: ``BRIDGE_IN_FLIGHT`` 32,
``BRIDGE_BATCH_SIZE`` 1000) delivers to the Reteno simulator (its own process, no rate
limit, 20 ms a call). Rounds of registrations (``POST /register`` through the test
client, 500 a request), each followed by one drain of the outbox as ``reteno-bridge
deliver`` makes (``deliver_once``): first small rounds (the steady state of the hour:
a few hundred due at each poll), then one backlog of each size in ``--backlogs``, each
followed by small rounds again. After each step it prints the resident set (VmRSS),
the blocks Python's allocator holds (``sys.getallocatedblocks``) after a
``gc.collect()``, and SQLite's own heap (``sqlite3_memory_used``: its page caches and
statements).

The rounds run twice, each in a fresh process: as ``reteno-bridge deliver`` runs them
(``bridge/heap.py``: at most two malloc arenas, the C heap's free pages given back after
each drain) and with neither, the baseline; last, the difference per step.

    .venv/bin/python bench/bench_backlog_memory.py [--backlogs 3000 8000 32000]

What it shows: in the baseline the resident set is the high-water mark of a
drain's memory and stays there when the backlog is gone, while the blocks Python holds
and SQLite's heap come back down (the memory is free inside the process, not given
back to the system).
"""

from __future__ import annotations

import _sqlite3
import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``bridge`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import API_KEY, Stack, rss_kib, say  # noqa: E402

SMALL = 200  # registrations due at a poll in the hour's steady state (311/s, 0.5 s polls)
# SQLite's own heap (its page caches, statements): the library the sqlite3 module uses
_sqlite_memory_used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
_sqlite_memory_used.restype = ctypes.c_int64


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlogs", type=int, nargs="+", default=[3000, 8000, 32000])
    parser.add_argument("--small-rounds", type=int, default=20)
    parser.add_argument("--rounds-only", choices=("baseline", "worker"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds_only:
        return rounds(args, as_worker=args.rounds_only == "worker")
    results = {}
    for mode in ("baseline", "worker"):
        say(f"--- {'baseline: neither' if mode == 'baseline' else 'as reteno-bridge deliver runs'}")
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--rounds-only",
                mode,
                "--small-rounds",
                str(args.small_rounds),
                "--backlogs",
                *map(str, args.backlogs),
            ],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        lines = child.stdout.splitlines()
        print("\n".join(line for line in lines if not line.startswith("{")), flush=True)
        results[mode] = json.loads(next(line for line in lines if line.startswith("{")))
    say("--- resident set (KiB): baseline -> as the worker runs")
    for label, kept in results["baseline"].items():
        given = results["worker"][label]
        say(f"{label:30s} {kept:7d} -> {given:7d}  ({given - kept:+6d} KiB)")
    return 0


def rounds(args, as_worker: bool) -> int:
    """The rounds in this process; the resident set after each step, as JSON, last."""
    import bridge.heap

    if as_worker:
        bridge.heap.delivery_process()  # as the deliver command does, before any thread
    figures: dict[str, int] = {}
    with Stack("backlog-memory") as stack:
        url = stack.simulator(rps=0, latency_ms=20)
        env = stack.bridge_env(
            stack.dir / "bridge.sqlite3",
            url,
            batch_size=1000,
            background=False,
            BRIDGE_LOG_LEVEL="WARNING",
        )
        stack.migrate(env)
        os.environ.update(env)
        os.environ["FLASK_RUN_FROM_CLI"] = "true"  # a command: create_app starts nothing
        from bridge.factory import create_app

        app = create_app()
        runtime = app.extensions["reteno_bridge"]
        client = app.test_client()
        headers = {"Authorization": f"Bearer {API_KEY}"}
        sent = 0

        def register(count: int) -> None:
            nonlocal sent
            for start in range(0, count, 500):
                n = min(500, count - start)
                body = {
                    "tokens": [
                        {"token": 9_000_000_000 + sent + i, "email": f"u{sent + i}@example.com"}
                        for i in range(n)
                    ]
                }
                sent += n
                answer = client.post("/register", json=body, headers=headers)
                assert answer.status_code == 202, answer.get_json()

        def step(label: str, size: int, rounds: int = 1) -> None:
            for _ in range(rounds):
                register(size)
                runtime.deliver_once()
            gc.collect()
            figures[label] = rss_kib(os.getpid())
            say(
                f"{label:30s} RSS {figures[label]:7d} KiB   Python's blocks "
                f"{sys.getallocatedblocks():7d}   SQLite {_sqlite_memory_used() // 1024:5d} KiB"
            )

        step(f"warm-up: {args.small_rounds} x {SMALL}", SMALL, args.small_rounds)
        step(f"steady: {args.small_rounds} x {SMALL} more", SMALL, args.small_rounds)
        for backlog in args.backlogs:
            step(f"one backlog of {backlog}", backlog)
            step(f"then {args.small_rounds} x {SMALL} after {backlog}", SMALL, args.small_rounds)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        figures["after malloc_trim(0)"] = rss_kib(os.getpid())
        say(f"{'after malloc_trim(0)':30s} RSS {figures['after malloc_trim(0)']:7d} KiB")
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
