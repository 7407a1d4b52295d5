"""Target 5: the served app's resident memory stays flat across 1,000,000 registrations.

    .venv/bin/python bench/bench_memory.py [--quick]

``gunicorn -w 2 app:app`` (each worker also runs its delivery thread) on a
fresh SQLite ledger, delivering to the Reteno simulator (own process, 200
requests/s, 100 ms). Four client threads register 1,000,000 new tokens over
HTTP as fast as the bridge takes them, in bodies of random size (1 to 1000
token objects, so statement shapes vary as they do in real traffic) plus one
single-token request in ten. The resident set (VmRSS) of every gunicorn
worker is sampled twice a second from /proc, until the last token has been
delivered. ``--quick``: 200,000 tokens.

Baseline: each worker's RSS once warm (median while registrations 50,000 to
100,000 went in). Target: every later sample, and the final one, within
+-10 % of it.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    API_KEY,
    Stack,
    children,
    http_json,
    median,
    rss_kib,
    save_result,
    say,
    simulator_stats,
    verdict,
    wait_quiet,
)

TOLERANCE = 0.10
WARM_FROM, WARM_TO = 50_000, 100_000
AUTH = {"Authorization": f"Bearer {API_KEY}"}  # /healthz shows the outbox only to a key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tokens", type=int, default=None, help="1,000,000 (200,000 quick)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    total = args.tokens or (200_000 if args.quick else 1_000_000)
    quiet = {"loadavg": None, "quiet": None} if args.no_wait else wait_quiet()
    say(
        f"# bench_memory: {total:,} registrations over HTTP, gunicorn -w 2 with delivery "
        f"threads; load average at start {quiet['loadavg']}"
    )
    with Stack("memory", keep=args.keep) as st:
        sim = st.simulator(rps=200, latency_ms=100)
        db = st.dir / "ledger.sqlite3"
        env = st.bridge_env(db, sim, batch_size=1000, background=True)
        st.migrate(env)
        url, proc = st.gunicorn("app:app", env=env)
        workers = sorted(children(proc.pid))
        progress = {"sent": 0, "requests": 0, "errors": 0}
        lock = threading.Lock()
        next_token = [1_000_000_000]
        samples: list[dict] = []
        stop = threading.Event()

        def take(n: int) -> tuple[int, int]:
            with lock:
                first = next_token[0]
                n = min(n, total - (first - 1_000_000_000))
                next_token[0] += max(n, 0)
                return first, n

        def client(seed: int) -> None:
            rng = random.Random(seed)
            session = requests.Session()
            headers = {"Authorization": f"Bearer {API_KEY}"}
            while True:
                first, size = take(1 if rng.random() < 0.1 else rng.randint(1, 1000))
                if size <= 0:
                    return
                tokens = [
                    {
                        "token": first + i,
                        "externalCustomerId": f"m{first + i}",
                        **({"email": f"m{first + i}@example.com"} if i % 3 == 0 else {}),
                    }
                    for i in range(size)
                ]
                body = tokens[0] if size == 1 else {"tokens": tokens}
                r = session.post(f"{url}/register", json=body, headers=headers, timeout=120)
                with lock:
                    progress["requests"] += 1
                    if r.status_code == 202:
                        progress["sent"] += size
                    else:
                        progress["errors"] += 1

        def sampler() -> None:
            while not stop.is_set():
                samples.append(
                    {
                        "t": time.monotonic(),
                        "registered": progress["sent"],
                        "rss": {w: rss_kib(w) for w in workers},
                    }
                )
                time.sleep(0.5)

        started = time.monotonic()
        threading.Thread(target=sampler, daemon=True).start()
        pool = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
        for t in pool:
            t.start()
        last_report = 0.0
        while any(t.is_alive() for t in pool):
            time.sleep(1)
            if time.monotonic() - last_report > 15:
                last_report = time.monotonic()
                rss = ", ".join(f"{rss_kib(w) / 1024:.1f}" for w in workers)
                elapsed = time.monotonic() - started
                say(
                    f"  {progress['sent']:>9,} registered after {elapsed:5.0f} s;"
                    f" worker RSS MiB: {rss}"
                )
        ingest_done = time.monotonic()
        deadline = time.monotonic() + 900
        while (
            simulator_stats(sim)["tokens_received"] < progress["sent"]
            and time.monotonic() < deadline
        ):
            time.sleep(1)
        delivered_done = time.monotonic()
        time.sleep(1.5)
        stop.set()
        time.sleep(0.6)
        received = simulator_stats(sim)["tokens_received"]
        _, health = http_json(f"{url}/healthz", headers=AUTH)
        alive = sorted(children(proc.pid))
    if alive != workers:
        say(f"# WARNING: the worker processes changed during the run ({workers} -> {alive})")
    ok = progress["errors"] == 0 and progress["sent"] == total and alive == workers
    per_worker = {}
    for w in workers:
        warm = [s["rss"][w] for s in samples if WARM_FROM <= s["registered"] <= WARM_TO]
        later = [s["rss"][w] for s in samples if s["registered"] > WARM_TO and s["rss"][w]]
        base = median(warm) if warm else float("nan")
        final = later[-1] if later else float("nan")
        hi, lo = (max(later), min(later)) if later else (float("nan"),) * 2
        good = bool(later) and all(abs(v / base - 1) <= TOLERANCE for v in later)
        ok &= good
        per_worker[w] = {
            "baselineKiB": base,
            "finalKiB": final,
            "maxKiB": hi,
            "minKiB": lo,
            "finalRatio": round(final / base, 3),
            "maxRatio": round(hi / base, 3),
            "pass": good,
        }
        say(
            f"worker {w}: RSS warm {base / 1024:.1f} MiB, final {final / 1024:.1f} MiB "
            f"({final / base - 1:+.1%}), range {lo / 1024:.1f}-{hi / 1024:.1f} MiB "
            f"(max {hi / base - 1:+.1%}; target within +-{TOLERANCE:.0%})  {verdict(good)}"
        )
    say(
        f"{progress['sent']:,} registrations in {progress['requests']:,} requests "
        f"({progress['errors']} errors), ingest {ingest_done - started:.0f} s, all delivered "
        f"after {delivered_done - started:.0f} s ({received:,} at the simulator); "
        f"outbox {health.get('outbox')}  {verdict(ok)}"
    )
    save_result(
        "memory",
        {
            "quiet": quiet,
            "tokens": total,
            "progress": progress,
            "workers": per_worker,
            "ingestSeconds": round(ingest_done - started, 1),
            "deliveredSeconds": round(delivered_done - started, 1),
            "received": received,
            "samples": [
                {
                    "t": round(s["t"] - started, 1),
                    "registered": s["registered"],
                    "rssKiB": list(s["rss"].values()),
                }
                for s in samples[::4]
            ],
            "pass": ok,
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
