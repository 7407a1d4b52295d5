"""Replay against normal delivery: 100,000 registrations into another app, in the same run.

    python bench/bench_replay.py [--count 100000] [--rounds 2] [--latency-ms 50]

Each round bulk-loads a fresh SQLite ledger with ``--count`` queued registrations
and runs, in alternating order, the two commands a user runs:

* ``bridge deliver --once``: normal delivery to the bridge's own app (simulator A);
* ``bridge replay --to-app B``: every live registration into another app
  (simulator B, same limit and latency), queueing included.

Both are separate processes (start-up included in their time), both send batches
of ``BRIDGE_BATCH_SIZE`` (1,000) tokens. Printed per round and as medians: tokens/s
of each, the ratio replay / delivery (target: at least 0.8, "within 20 %"), and the
upstream calls each took (the simulator's count).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import time

from common import (
    PYTHON,
    ROOT,
    Stack,
    bulk_load,
    free_port,
    http_json,
    median,
    save_result,
    say,
    simulator_stats,
    verdict,
    wait_http,
)

TARGET_APP = "7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
TARGET_KEY = "bench-target-key-0123456789"


def simulator(st: Stack, name: str, app_uuid: str, key: str, latency_ms: float) -> str:
    port = free_port()
    proc = st.spawn(
        name,
        [
            PYTHON,
            "-m",
            "bridge.sandbox",
            "--port",
            str(port),
            "--app-uuid",
            app_uuid,
            "--api-key",
            key,
            "--rps",
            "200",
            "--latency-ms",
            f"{latency_ms:g}",
        ],
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/stats", proc=proc)
    return url


def queued_ledger(st: Stack, env: dict, db, count: int) -> None:
    if db.exists():
        db.unlink()
    st.migrate(env)
    bulk_load(db, count, events=True)
    conn = sqlite3.connect(db)
    conn.execute(
        "UPDATE bridge_registrations SET state = 'queued', delivered_at = NULL, "
        "next_attempt_at = created_at"
    )
    conn.commit()
    conn.close()


def timed(argv: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[3:])} failed: {done.stdout}{done.stderr}")
    return elapsed


def phase(name: str, env: dict, sim: str, target: str) -> dict:
    http_json(f"{sim}/reset", "POST")
    flask = [PYTHON, "-m", "flask", "--app", "app", "bridge"]
    if name == "deliver":
        seconds = timed([*flask, "deliver", "--once"], env)
    else:
        seconds = timed(
            [
                *flask,
                "replay",
                "--to-app",
                TARGET_APP,
                "--base-url",
                target,
                "--api-key-env",
                "BENCH_TARGET_KEY",
            ],
            {**env, "BENCH_TARGET_KEY": TARGET_KEY},
        )
    stats = simulator_stats(sim)
    return {
        "seconds": seconds,
        "tokens": stats["tokens_received"],
        "calls": stats["requests"],
        "tokens_per_s": stats["tokens_received"] / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    say(
        f"# bench_replay: {args.count} registrations, {args.rounds} rounds, simulators at "
        f"200 req/s and {args.latency_ms:g} ms, batches of 1000"
    )
    rounds = []
    with Stack("replay") as st:
        own = simulator(
            st,
            "simulator-own",
            "0b7e3a4e-6f0e-4a57-9d7c-2a1f3b4c5d6e",
            "bench-reteno-key-0123456789",
            args.latency_ms,
        )
        target = simulator(st, "simulator-target", TARGET_APP, TARGET_KEY, args.latency_ms)
        db = st.dir / "ledger.sqlite3"
        env = st.bridge_env(db, own, batch_size=1000, background=False)
        for n in range(args.rounds):
            queued_ledger(st, env, db, args.count)
            order = ("deliver", "replay") if n % 2 == 0 else ("replay", "deliver")
            result = {}
            for name in order:
                result[name] = phase(name, env, own if name == "deliver" else target, target)
            for name in ("deliver", "replay"):
                r = result[name]
                assert r["tokens"] == args.count, f"{name}: {r['tokens']} of {args.count} sent"
            ratio = result["replay"]["tokens_per_s"] / result["deliver"]["tokens_per_s"]
            rounds.append({**result, "ratio": ratio, "order": order})
            say(
                f"round {n + 1} ({' then '.join(order)}): deliver "
                f"{result['deliver']['tokens_per_s']:,.0f} tokens/s in "
                f"{result['deliver']['calls']} calls; replay "
                f"{result['replay']['tokens_per_s']:,.0f} tokens/s in "
                f"{result['replay']['calls']} calls; ratio {ratio:.2f}"
            )
    deliver = median([r["deliver"]["tokens_per_s"] for r in rounds])
    replay = median([r["replay"]["tokens_per_s"] for r in rounds])
    ratio = median([r["ratio"] for r in rounds])
    say(
        f"median: deliver {deliver:,.0f} tokens/s, replay {replay:,.0f} tokens/s, "
        f"ratio {ratio:.2f} (target >= 0.80: {verdict(ratio >= 0.8)}); upstream calls: "
        f"deliver {rounds[0]['deliver']['calls']}, replay {rounds[0]['replay']['calls']}"
    )
    save_result(
        "replay",
        {
            "count": args.count,
            "rounds": rounds,
            "deliver_tokens_per_s": deliver,
            "replay_tokens_per_s": replay,
            "ratio": ratio,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
