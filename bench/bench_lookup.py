"""Target 3: ``GET /tokens?email=`` and ``?token=`` stay flat as the ledger grows.

    .venv/bin/python bench/bench_lookup.py [--quick]

Two ledgers are loaded straight with SQL (no HTTP): 10,000 and 1,000,000
delivered registrations, each with its two audit events (``--quick``: 10,000
and 200,000). Each is served by ``gunicorn -w 2 app:app`` and wrk asks for
random existing keys (a different e-mail or token on every request) at a
moderate concurrency, so the median is the service time, not a queue.

Target: the median at 1,000,000 <= 1.5x the median at 10,000, for both look-ups.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    API_KEY,
    LOOKUP_LUA,
    Stack,
    bulk_load,
    http_json,
    lua,
    save_result,
    say,
    verdict,
    wait_quiet,
    wrk,
)

RATIO_TARGET = 1.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=None, help="1,000,000 (200,000 quick)")
    parser.add_argument("--seconds", type=float, default=None, help="per look-up kind (8)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--no-events", action="store_true", help="load registrations only")
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    large = args.large or (200_000 if args.quick else 1_000_000)
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    sizes = (args.small, large)
    results: dict = {"sizes": sizes, "connections": args.connections, "seconds": seconds}
    with Stack("lookup", keep=args.keep) as st:
        dbs = {}
        for size in sizes:
            db = st.dir / f"ledger-{size}.sqlite3"
            env = st.bridge_env(db, None, background=False)
            st.migrate(env)
            took = bulk_load(db, size, events=not args.no_events)
            say(
                f"# loaded {size:,} registrations{'' if args.no_events else ' (+2 events each)'}"
                f" in {took:.1f} s ({db.stat().st_size / 2**20:.0f} MiB)"
            )
            dbs[size] = (db, env)
        quiet = {"loadavg": None, "quiet": None} if args.no_wait else wait_quiet()
        results["quiet"] = quiet
        say(
            f"# bench_lookup: wrk -t2 -c{args.connections} -d{seconds:g}s per look-up, "
            f"gunicorn -w 2; load average {quiet['loadavg']}"
        )
        script = lua(st.dir, "lookup", LOOKUP_LUA)
        figures: dict = {}
        for size in sizes:
            db, env = dbs[size]
            url, proc = st.gunicorn("app:app", env=env, name=f"bridge-{size}")
            status, body = http_json(
                f"{url}/tokens?email=user7@example.com",
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
            assert status == 200 and len(body["items"]) == 1, (status, body)
            for kind in ("email", "token"):
                wrk(
                    url,
                    script,
                    1 if args.quick else 2,
                    connections=args.connections,
                    args=[kind, str(size)],
                )
                r = wrk(url, script, seconds, connections=args.connections, args=[kind, str(size)])
                figures[(kind, size)] = r
                say(f"{kind:5s} look-up, {size:>9,} registrations: {r.line()}")
            st.stop(proc)
            time.sleep(0.5)
    ok = True
    say("")
    for kind in ("email", "token"):
        small, big = figures[(kind, sizes[0])], figures[(kind, sizes[1])]
        ratio = big.p50_ms / small.p50_ms if small.p50_ms else float("inf")
        good = ratio <= RATIO_TARGET and big.non2xx == 0 and small.non2xx == 0
        ok &= good
        say(
            f"GET /tokens?{kind}=: median {small.p50_ms:.2f} ms at {sizes[0]:,}, "
            f"{big.p50_ms:.2f} ms at {sizes[1]:,} -> {ratio:.2f}x "
            f"(target <= {RATIO_TARGET}x)  {verdict(good)}"
        )
        results[kind] = {
            "small": small.as_dict(),
            "large": big.as_dict(),
            "ratio": round(ratio, 3),
            "pass": good,
        }
    if args.quick:
        say(f"# --quick: the large ledger has {sizes[1]:,} registrations, not 1,000,000")
    save_result("lookup", results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
