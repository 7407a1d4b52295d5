"""Target 2: delivery throughput to a rate-limited, slow Reteno, end to end.

    .venv/bin/python bench/bench_delivery.py [--quick]

The Reteno simulator runs as its own process with Reteno's limit of 200
requests/s and 100 ms of latency per call. In one run:

* baseline "one call per token", measured two ways: the bridge itself with
  ``BRIDGE_BATCH_SIZE=1``, and a direct client loop (32 threads, one token per
  call) straight at the simulator, which is the most the limit allows;
* the bridge: ``gunicorn -w 2 app:app`` (sync workers; each worker runs its
  delivery thread, the default), ``BRIDGE_BATCH_SIZE=1000``, while wrk posts
  registrations as fast as the bridge takes them (``{"tokens": [...]}`` bodies of
  1000 new tokens: single-token requests cannot arrive at 5,000/s). End to end
  = tokens registered / (time the simulator held the last of them - time the
  load started). Every token must arrive exactly once. Not judged, with ``--served``
  and always without ``--quick``: the same served by the shipped ``bridge/gunicorn_conf.py``
  (16 threads a worker, whose request threads share the interpreter with the
  delivery thread), and with two ``bridge deliver`` processes instead of threads.

Targets: >= 5,000 tokens/s end to end and >= 25x the one-call-per-token baseline.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    API_KEY,
    APP_UUID,
    REGISTER_LUA,
    RETENO_KEY,
    SERVED_CONFIG,
    Stack,
    http_json,
    lua,
    save_result,
    say,
    simulator_stats,
    verdict,
    wait_quiet,
    wrk,
)

RATE_TARGET = 5000.0
RATIO_TARGET = 25.0
AUTH = {"Authorization": f"Bearer {API_KEY}"}  # /healthz shows the outbox only to a key


def reset(sim: str) -> None:
    http_json(f"{sim}/reset", "POST", {})


def direct_loop(sim: str, seconds: float, threads: int = 32) -> dict:
    """One token per call straight at the simulator, as fast as it lets us."""
    url = f"{sim}/api/v1/apps/{APP_UUID}/tokens"
    stop = time.monotonic() + seconds
    counts = {"ok": 0, "limited": 0, "other": 0}
    lock = threading.Lock()

    def work(n: int) -> None:
        session = requests.Session()
        session.headers["X-Reteno-Access-Key"] = RETENO_KEY
        i = 0
        while time.monotonic() < stop:
            i += 1
            token = str(5_000_000_000 + n * 10_000_000 + i)
            r = session.post(
                url, json={"tokens": [{"token": token, "externalCustomerId": token}]}, timeout=10
            )
            key = "ok" if r.status_code == 200 else "limited" if r.status_code == 429 else "other"
            with lock:
                counts[key] += 1

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    started = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - started
    return {**counts, "seconds": round(elapsed, 2), "tokensPerSecond": counts["ok"] / elapsed}


def register_batches(url: str, count: int, first: int) -> None:
    session = requests.Session()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for start in range(0, count, 1000):
        tokens = [
            {"token": first + i, "externalCustomerId": f"c{first + i}"}
            for i in range(start, min(count, start + 1000))
        ]
        r = session.post(f"{url}/register", json={"tokens": tokens}, headers=headers, timeout=60)
        assert r.status_code == 202, r.text[:300]


def bridge_batch_size_one(st: Stack, sim: str, seconds: float) -> dict:
    """The bridge delivering one token per call for ``seconds`` (outbox kept full)."""
    db = st.dir / "batch1.sqlite3"
    env = st.bridge_env(db, sim, batch_size=1, background=True)
    st.migrate(env)
    reset(sim)
    url, proc = st.gunicorn("app:app", env=env, name="bridge-batch1")
    register_batches(url, 5000, 1_000_000_000)
    time.sleep(1.0)  # let both delivery threads get going
    before, started = simulator_stats(sim)["tokens_received"], time.monotonic()
    time.sleep(seconds)
    after, elapsed = simulator_stats(sim)["tokens_received"], time.monotonic() - started
    st.stop(proc)
    return {
        "tokens": after - before,
        "seconds": round(elapsed, 2),
        "tokensPerSecond": (after - before) / elapsed,
    }


def bridge_full_speed(
    st: Stack,
    sim: str,
    seconds: float,
    connections: int,
    background: bool = True,
    served: bool = False,
) -> dict:
    label = ("bridge-served" if served else "bridge") if background else "bridge-deliver-procs"
    db = st.dir / f"{label}.sqlite3"
    env = st.bridge_env(db, sim, batch_size=1000, background=background)
    st.migrate(env)
    reset(sim)
    url, proc = st.gunicorn(
        "app:app", env=env, name=label, **({"config": SERVED_CONFIG} if served else {})
    )
    delivers = [] if background else [st.deliver_worker(env, name=f"{label}-{n}") for n in (1, 2)]
    script = lua(st.dir, "register", REGISTER_LUA)
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.monotonic(), simulator_stats(sim)["tokens_received"]))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    sampler.start()
    load = wrk(
        url,
        script,
        seconds,
        connections=connections,
        threads=min(2, connections),
        args=["batch", "1000000000", "1000"],
        timeout_s=30,
    )
    load_end = time.monotonic()
    # Requests still in flight when wrk stops are registered too: count the ledger.
    time.sleep(0.5)
    _, health = http_json(f"{url}/healthz", headers=AUTH)
    registered = sum(health["states"].values())
    deadline = time.monotonic() + 300
    received = simulator_stats(sim)["tokens_received"]
    while received < registered and time.monotonic() < deadline:
        time.sleep(0.05)
        received = simulator_stats(sim)["tokens_received"]
    finished = time.monotonic()
    done.set()
    sampler.join()
    stats = simulator_stats(sim)
    _, health = http_json(f"{url}/healthz", headers=AUTH)
    st.stop(proc)
    for d in delivers:
        st.stop(d)
    during = [n for t, n in samples if t <= load_end]
    return {
        "layout": (
            "delivery thread per gunicorn worker"
            + (", gunicorn_conf.py (16 threads each)" if served else ", sync workers")
        )
        if background
        else "BRIDGE_BACKGROUND_DELIVERY=false + 2 bridge deliver processes",
        "registered": registered,
        "received": received,
        "loadSeconds": round(load_end - started, 2),
        "endToEndSeconds": round(finished - started, 2),
        "ingestPerSecond": registered / (load_end - started),
        "deliveredDuringLoadPerSecond": (during[-1] if during else 0) / (load_end - started),
        "endToEndPerSecond": registered / (finished - started) if received >= registered else 0,
        "upstreamCalls": stats["accepted_requests"],
        "rateLimited": stats["rate_limited"],
        "duplicates": stats["duplicate_tokens"],
        "distinct": stats["distinct_tokens"],
        "registerP99ms": load.p99_ms,
        "outbox": health.get("outbox"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=None, help="load duration (20)")
    parser.add_argument(
        "--connections", type=int, default=4, help="wrk connections posting 1000-token bodies (4)"
    )
    parser.add_argument(
        "--served",
        action="store_true",
        help="also with the shipped bridge/gunicorn_conf.py (threaded workers; "
        "always without --quick)",
    )
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    seconds = args.seconds or (6.0 if args.quick else 20.0)
    window = 5.0 if args.quick else 10.0
    quiet = {"loadavg": None, "quiet": None} if args.no_wait else wait_quiet()
    say(
        f"# bench_delivery: simulator 200 req/s, 100 ms; load {seconds:g} s; "
        f"load average at start {quiet['loadavg']}"
    )
    with Stack("delivery", keep=args.keep) as st:
        sim = st.simulator(rps=200, latency_ms=100)
        reset(sim)
        loop = direct_loop(sim, window)
        say(
            f"baseline: direct loop, 1 token/call    {loop['tokensPerSecond']:8.1f} tokens/s "
            f"({loop['ok']} accepted, {loop['limited']} answered 429)"
        )
        one = bridge_batch_size_one(st, sim, window)
        say(
            f"baseline: bridge, BATCH_SIZE=1        {one['tokensPerSecond']:8.1f} tokens/s "
            f"({one['tokens']} in {one['seconds']} s)"
        )
        full = bridge_full_speed(st, sim, seconds, args.connections)
        say(
            f"bridge, BATCH_SIZE=1000 (e2e)         {full['endToEndPerSecond']:8.0f} tokens/s "
            f"({full['registered']} tokens; ingest {full['ingestPerSecond']:.0f}/s, delivered "
            f"{full['deliveredDuringLoadPerSecond']:.0f}/s during load; "
            f"{full['upstreamCalls']} calls, {full['rateLimited']} x 429, "
            f"{full['duplicates']} duplicates)"
        )
        served = None
        if args.served or not args.quick:
            served = bridge_full_speed(st, sim, seconds, args.connections, served=True)
            say(
                f"  (served by gunicorn_conf.py)        "
                f"{served['endToEndPerSecond']:8.0f} tokens/s "
                f"(ingest {served['ingestPerSecond']:.0f}/s, delivered "
                f"{served['deliveredDuringLoadPerSecond']:.0f}/s during load, "
                f"{served['duplicates']} duplicates)"
            )
        alt = None
        if not args.quick:
            alt = bridge_full_speed(st, sim, seconds, args.connections, background=False)
            say(
                f"  (+2 deliver processes, no threads)  {alt['endToEndPerSecond']:8.0f} tokens/s "
                f"(ingest {alt['ingestPerSecond']:.0f}/s, {alt['duplicates']} duplicates)"
            )
    baseline = max(loop["tokensPerSecond"], one["tokensPerSecond"])
    rate = full["endToEndPerSecond"]
    ratio = rate / baseline if baseline else 0.0
    exact = full["duplicates"] == 0 and full["distinct"] == full["registered"] == full["received"]
    ok = rate >= RATE_TARGET and ratio >= RATIO_TARGET and exact
    say("")
    say(
        f"one call per token (best measured): {baseline:.1f} tokens/s "
        f"(the 200 requests/s limit allows at most 200)"
    )
    say(
        f"bridge end to end: {rate:.0f} tokens/s = {ratio:.0f}x baseline "
        f"(targets >= {RATE_TARGET:.0f}/s and >= {RATIO_TARGET:.0f}x); every token exactly once: "
        f"{'yes' if exact else 'NO'}  {verdict(ok)}"
    )
    save_result(
        "delivery",
        {
            "quiet": quiet,
            "loadSeconds": seconds,
            "connections": args.connections,
            "baselineDirectLoop": loop,
            "baselineBridgeBatch1": one,
            "bridge": full,
            "bridgeServed": served,
            "bridgeDeliverProcesses": alt,
            "baseline": baseline,
            "ratio": round(ratio, 1),
            "pass": ok,
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
