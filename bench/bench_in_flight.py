"""Delivery with several calls in flight against one at a time, in the same run.

    .venv/bin/python bench/bench_in_flight.py [--count 20000] [--rounds 1] [--in-flight 8]

The README's production layout: ``gunicorn -w 2 app:app`` with
``BRIDGE_BACKGROUND_DELIVERY=false`` and one separate ``flask bridge deliver``. The
Reteno simulator runs as its own process with Reteno's limit (200 requests/s, a
sliding one-second window, 429 beyond it) and answers in 100 ms. Each round, for
``BRIDGE_IN_FLIGHT=1`` (one call at a time, the worker before issue 28) and for
``--in-flight`` (default: the bridge's default), in alternating order: a fresh SQLite
ledger, ``--count`` tokens registered through ``POST /register`` in bodies of 1,000,
then ``bridge deliver`` started and the simulator's count sampled until it holds every
token. Tokens/s = tokens received after the first sample that saw any / the time from
that sample to the one that saw the last (the worker's start-up left out).

Then, towards the limit: ``--limit-tokens`` tokens in batches of 5 with 64 calls in
flight (64 calls of 100 ms would be 640 a second unpaced); printed: the calls a second
the simulator accepted (the ledger's work per call bounds them too). Checked in every
run: every token received exactly once, and no call refused with a 429 (the simulator
never saw more than 200 calls in any second).
Target: at least 20,000 tokens/s with several in flight; the ratio to one in flight is
printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    API_KEY,
    Stack,
    http_json,
    median,
    save_result,
    say,
    simulator_stats,
    verdict,
    wait_quiet,
)
from bridge.config import DEFAULT_IN_FLIGHT  # noqa: E402

RATE_TARGET = 20_000.0
LIMIT_BATCH, LIMIT_IN_FLIGHT = 5, 64  # the run at the limit: 64 calls of 5 tokens at once
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def register(url: str, count: int, first: int) -> None:
    session = requests.Session()
    for start in range(0, count, 1000):
        tokens = [
            {"token": first + i, "externalCustomerId": f"c{first + i}"}
            for i in range(start, min(count, start + 1000))
        ]
        r = session.post(f"{url}/register", json={"tokens": tokens}, headers=AUTH, timeout=60)
        assert r.status_code == 202, r.text[:300]


def one_run(st: Stack, sim: str, in_flight: int, count: int, first: int) -> dict:
    name = f"in-flight-{in_flight}-{first}"
    env = st.bridge_env(
        st.dir / f"{name}.sqlite3", sim, batch_size=1000, background=False,
        BRIDGE_IN_FLIGHT=in_flight,
    )  # fmt: skip
    st.migrate(env)
    url, server = st.gunicorn("app:app", env=env, name=f"{name}-gunicorn")
    register(url, count, first)
    http_json(f"{sim}/reset", "POST", {})
    worker = st.deliver_worker(env, name=f"{name}-deliver")
    deadline = time.monotonic() + 300
    start = None  # (time, tokens) of the first sample that saw any
    received = 0
    while received < count and time.monotonic() < deadline and worker.alive:
        received = simulator_stats(sim)["tokens_received"]
        if start is None and received:
            start = (time.monotonic(), received)
        if received < count:
            time.sleep(0.01)
    end = time.monotonic()
    stats = simulator_stats(sim)
    st.stop(worker)
    st.stop(server)
    t0, n0 = start or (end, 0)
    seconds = end - t0
    return {
        "inFlight": in_flight,
        "tokens": count,
        "received": stats["tokens_received"],
        "distinct": stats["distinct_tokens"],
        "duplicates": stats["duplicate_tokens"],
        "calls": stats["accepted_requests"],
        "rateLimited": stats["rate_limited"],
        "seconds": round(seconds, 3),
        "tokensPerSecond": (received - n0) / seconds if seconds > 0 else 0.0,
    }


def at_the_limit(st: Stack, sim: str, count: int, first: int) -> dict:
    """Small batches, many in flight: the worker could start far more than 200 calls a
    second; its pacer keeps it at the limit (the simulator answers a 429 beyond it)."""
    env = st.bridge_env(
        st.dir / "limit.sqlite3", sim, batch_size=LIMIT_BATCH, background=False,
        BRIDGE_IN_FLIGHT=LIMIT_IN_FLIGHT,
    )  # fmt: skip
    st.migrate(env)
    url, server = st.gunicorn("app:app", env=env, name="limit-gunicorn")
    register(url, count, first)
    http_json(f"{sim}/reset", "POST", {})
    worker = st.deliver_worker(env, name="limit-deliver")
    deadline = time.monotonic() + 300
    start = None
    stats = simulator_stats(sim)
    while stats["tokens_received"] < count and time.monotonic() < deadline and worker.alive:
        if start is None and stats["accepted_requests"]:
            start = (time.monotonic(), stats["accepted_requests"])
        time.sleep(0.01)
        stats = simulator_stats(sim)
    end = time.monotonic()
    st.stop(worker)
    st.stop(server)
    t0, n0 = start or (end, 0)
    return {
        "batchSize": LIMIT_BATCH,
        "inFlight": LIMIT_IN_FLIGHT,
        "tokens": count,
        "received": stats["tokens_received"],
        "duplicates": stats["duplicate_tokens"],
        "calls": stats["accepted_requests"],
        "rateLimited": stats["rate_limited"],
        "callsPerSecond": (stats["accepted_requests"] - n0) / (end - t0) if end > t0 else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=DEFAULT_IN_FLIGHT)
    parser.add_argument(
        "--limit-tokens", type=int, default=2000, help="tokens of the run towards the limit (2000)"
    )
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    quiet = {"loadavg": None, "quiet": None} if args.no_wait else wait_quiet()
    say(
        f"# bench_in_flight: {args.count} tokens, simulator 200 req/s, 100 ms; "
        f"load average at start {quiet['loadavg']}"
    )
    runs: dict[int, list[dict]] = {1: [], args.in_flight: []}
    first = 1_000_000_000
    with Stack("in-flight", keep=args.keep) as st:
        sim = st.simulator(rps=200, latency_ms=100)
        for n in range(args.rounds):
            order = (1, args.in_flight) if n % 2 == 0 else (args.in_flight, 1)
            for in_flight in order:
                run = one_run(st, sim, in_flight, args.count, first)
                first += args.count
                runs[in_flight].append(run)
                say(
                    f"round {n + 1}, BRIDGE_IN_FLIGHT={in_flight:<3} "
                    f"{run['tokensPerSecond']:8.0f} tokens/s ({run['calls']} calls in "
                    f"{run['seconds']} s, {run['rateLimited']} x 429, "
                    f"{run['duplicates']} duplicates, {run['distinct']} distinct)"
                )
        limit = at_the_limit(st, sim, args.limit_tokens, first)
        say(
            f"towards the limit: BATCH_SIZE={LIMIT_BATCH}, IN_FLIGHT={LIMIT_IN_FLIGHT}: "
            f"{limit['callsPerSecond']:.1f} calls/s ({limit['calls']} calls, "
            f"{limit['rateLimited']} x 429, {limit['duplicates']} duplicates)"
        )
    one = median([r["tokensPerSecond"] for r in runs[1]])
    many = median([r["tokensPerSecond"] for r in runs[args.in_flight]])
    ratio = many / one if one else 0.0
    every = [r for rs in runs.values() for r in rs]
    exact = all(r["duplicates"] == 0 and r["distinct"] == r["tokens"] for r in every)
    limited = sum(r["rateLimited"] for r in every) + limit["rateLimited"]
    exact = exact and limit["duplicates"] == 0 and limit["received"] == limit["tokens"]
    ok = many >= RATE_TARGET and exact and limited == 0
    say("")
    say(
        f"BRIDGE_IN_FLIGHT={args.in_flight}: {many:.0f} tokens/s = {ratio:.1f}x one in flight "
        f"({one:.0f} tokens/s), target >= {RATE_TARGET:.0f}/s; every token exactly once: "
        f"{'yes' if exact else 'NO'}; 429s: {limited}  {verdict(ok)}"
    )
    save_result(
        "in_flight",
        {
            "quiet": quiet,
            "count": args.count,
            "runs": runs,
            "atTheLimit": limit,
            "ratio": round(ratio, 2),
            "pass": ok,
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
