"""Target 1: ``POST /register`` throughput and p99 against a bare Flask handler.

    .venv/bin/python bench/bench_register.py [--quick]

In one run, on this machine, with the same load generator (wrk -t2 -c32, a new
token in every request) and gunicorn serving both apps the same way:

* baseline: ``bench/bare_app.py``, a Flask POST handler that only answers 202,
  measured before and after the bridge (the better of the two is the baseline,
  so drift never flatters the bridge);
* the bridge: ``app:app`` on a fresh, migrated SQLite ledger (WAL; every
  commit flushed to disk before it is answered), ``BRIDGE_BACKGROUND_DELIVERY=false``
  plus one ``flask bridge deliver`` process (as ``make serve``), delivering
  to the Reteno simulator running as its own process with a 200 requests/s
  limit and 100 ms latency per call.

Two serving layouts, each with its own baseline: ``gunicorn -w 2`` (sync
workers, gunicorn's default, as in the issue) and ``gunicorn -w 2 -k gthread
--threads 16 --reuse-port`` (threads let concurrent registrations share one
durable commit; ``--reuse-port`` spreads kept-alive connections over both
workers); ``--layouts`` also offers 8 and 4 threads (``gthread8``, ``gthread4``).
Targets, per layout: throughput >= 50 % of its baseline and p99 <= 20 ms at 32
connections. Also shown, not judged: the floor (in each layout,
``bare_app`` with ``BENCH_BARE_SYNC=GROUP``: the least any durable 2xx costs, a
group-committed insert flushed before the answer, with nothing else of a
registration around it), the all-duplicate case, a bare handler doing one
SQLite WAL insert per request (``synchronous=FULL``: flushed inside the write
lock; and ``NORMAL``: not flushed), and (without ``--quick``) each gunicorn worker
running its own delivery thread instead of the separate process.

Two more figures per layout, because p99 at saturation measures queueing, not the
bridge:

* p99 at half load: right after the bridge's closed-loop run, the same bridge gets
  an open-loop load at ``PACED_SHARE`` (50 %) of the rate it just reached
  (``wrk_paced``: each wrk thread sends on a fixed schedule through the Lua
  ``delay()`` callback, latency counted from each request's intended send time, so a
  stalled answer cannot hide the requests queued behind it: no coordinated
  omission); ``--paced-seconds`` long (5 s, 10 s without ``--quick``) after a warm-up
  at the same rate. Target: p99 <= 10 ms, no non-2xx.
* the naive durable handler as a second floor: ``bare_app`` with ``BENCH_BARE_SYNC=FULL``
  (one SQLite WAL insert per request, its own transaction, ``synchronous=FULL``),
  served in the same layout right after the bridge. Target: the bridge's
  throughput >= 1.0x its. (In the sync layout this run is also the
  ``synchronous=FULL`` reference below.)

The exit status is 0 when some layout meets all four targets.

Where the gap comes from (``--parts``, on by default without ``--quick``): the
same load, served the same way, against ``bench/parts_app.py`` with only the
validation (bearer, strict JSON, marshmallow in and out), only the durable
ledger write, and both; each is compared with the same baseline.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    API_KEY,
    PACED_REGISTER_LUA,
    REGISTER_LUA,
    CpuMeter,
    Stack,
    http_json,
    loadavg,
    lua,
    save_result,
    say,
    simulator_stats,
    verdict,
    wait_quiet,
    wrk,
    wrk_paced,
)

RATIO_TARGET = 0.50
P99_TARGET_MS = 20.0
PACED_SHARE = 0.50  # the paced load: this share of the bridge's own closed-loop maximum
PACED_P99_TARGET_MS = 10.0
NAIVE_RATIO_TARGET = 1.0  # the bridge against the naive durable handler, same layout
LAYOUTS = {
    "sync": [],
    "gthread": ["-k", "gthread", "--threads", "16", "--reuse-port"],
    # Not run unless asked for (--layouts): fewer threads per worker.
    "gthread8": ["-k", "gthread", "--threads", "8", "--reuse-port"],
    "gthread4": ["-k", "gthread", "--threads", "4", "--reuse-port"],
}
AUTH = {"Authorization": f"Bearer {API_KEY}"}  # /healthz shows the outbox only to a key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs, fewer variants")
    parser.add_argument("--seconds", type=float, default=None, help="per measurement (8)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--paced-seconds",
        type=float,
        default=None,
        help=f"the open-loop run at {PACED_SHARE * 100:.0f}%% of the bridge's "
        "maximum (5, or 10 without --quick)",
    )
    parser.add_argument(
        "--layouts",
        default="sync,gthread",
        help="comma-separated: sync, gthread (16 threads), gthread8, gthread4",
    )
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--parts",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also serve parts of /register alone (default: not with --quick)",
    )
    args = parser.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    paced_seconds = args.paced_seconds or (5.0 if args.quick else 10.0)
    warm = 1.0 if args.quick else 2.0
    conns = args.connections
    layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    with_parts = args.parts if args.parts is not None else not args.quick

    quiet = {"loadavg": None, "quiet": None} if args.no_wait else wait_quiet()
    say(
        f"# bench_register: wrk -t2 -c{conns} -d{seconds:g}s, gunicorn -w 2; "
        f"load average at start {quiet['loadavg']}"
    )
    results: dict = {"seconds": seconds, "connections": conns, "quiet": quiet, "layouts": {}}
    with Stack("register", keep=args.keep) as st:
        script = lua(st.dir, "register", REGISTER_LUA)
        paced_script = lua(st.dir, "paced", PACED_REGISTER_LUA, common=False)
        sim = st.simulator(rps=200, latency_ms=100)
        sim_proc = st.procs[-1]
        counter = [0]
        naive_runs = {}  # layout -> the naive durable handler's run

        def measure(url: str, mode: str, warmup: float, **procs):
            """wrk against ``url``; the result carries ``cpu``: microseconds of CPU per
            request used by each of ``procs`` (process trees) during the run."""
            counter[0] += 1
            first = str(1_000_000_000 + counter[0] * 1_000_000_000)  # new tokens every run
            if warmup:
                wrk(url, script, warmup, connections=conns, args=[mode, first])
            counter[0] += 1
            first = str(1_000_000_000 + counter[0] * 1_000_000_000)
            meter = CpuMeter(**procs)
            meter.start()
            result = wrk(url, script, seconds, connections=conns, args=[mode, first])
            meter.stop()
            result.cpu = meter.per(result.requests)
            return result

        def served(label: str, target: str, extra: list[str], env: dict):
            """``target`` served alone (no delivery) and measured with new tokens."""
            url, proc = st.gunicorn(
                target, env=env, name=target.split(":")[0].split(".")[-1], extra=extra
            )
            result = measure(url, "unique", warm, gunicorn=proc)
            st.stop(proc)
            say(f"{label:34s} {result.line()}")
            return result

        def bare(label: str, extra: list[str], **env):
            return served(label, "bench.bare_app:app", extra, env)

        def paced(url: str, rate: float):
            """An open-loop load of ``rate`` requests a second against ``url`` (new
            tokens): a warm-up at that rate, then the measured run."""
            for length in (warm, paced_seconds):
                counter[0] += 1
                first = str(1_000_000_000 + counter[0] * 1_000_000_000)
                result = wrk_paced(url, paced_script, length, rate, connections=conns, args=[first])
            return result

        def bridge(
            label: str,
            extra: list[str],
            background: bool,
            modes=("unique",),
            with_paced: bool = False,
        ):
            db = st.dir / f"bridge-{counter[0]}.sqlite3"
            env = st.bridge_env(db, sim, background=background)
            st.migrate(env)
            url, proc = st.gunicorn("app:app", env=env, name="bridge", extra=extra)
            deliver = None if background else st.deliver_worker(env, name="deliver")
            status, body = http_json(
                f"{url}/register",
                "POST",
                {"token": 7, "email": "a@b.co"},
                {"Authorization": f"Bearer {API_KEY}"},
            )
            assert status == 202, (status, body)
            before = simulator_stats(sim)["tokens_received"]
            out = {}
            for mode in modes:
                out[mode] = measure(
                    url,
                    mode,
                    warm if mode == "unique" else 0,
                    gunicorn=proc,
                    deliver=deliver,
                    simulator=sim_proc,
                )
                say(f"{label + ' (' + mode + ')':34s} {out[mode].line()}")
            during = simulator_stats(sim)["tokens_received"] - before
            if with_paced:
                out["paced"] = paced(url, PACED_SHARE * out["unique"].rps)
                say(f"{label + f' (paced {PACED_SHARE:.0%})':34s} {out['paced'].line()}")
            # Everything registered reaches the simulator afterwards (bounded wait).
            _, health = http_json(f"{url}/healthz", headers=AUTH)
            deadline = time.monotonic() + 120
            while health.get("outbox", {}).get("depth", 1) and time.monotonic() < deadline:
                time.sleep(0.5)
                _, health = http_json(f"{url}/healthz", headers=AUTH)
            out["delivery"] = {
                "tokensAtSimulatorDuringLoad": during,
                "outboxDepthAfter": health.get("outbox", {}).get("depth"),
                "states": health.get("states"),
            }
            say(
                f"{'':34s} {during} tokens reached the simulator while under load; "
                f"outbox afterwards: {out['delivery']['outboxDepthAfter']}"
            )
            st.stop(proc)
            if deliver:
                st.stop(deliver)
            return out

        def part(label: str, extra: list[str], spec: str):
            db = st.dir / f"parts-{counter[0]}.sqlite3"
            st.migrate(st.bridge_env(db, None))
            return served(
                label,
                "bench.parts_app:app",
                extra,
                {"BENCH_PARTS": spec, "BENCH_PARTS_DB": str(db), "BENCH_PARTS_KEY": API_KEY},
            )

        for name in layouts:
            extra = LAYOUTS[name]
            say(f"## layout {name}: gunicorn -w 2 {' '.join(extra)}".rstrip())
            base1 = bare(f"baseline: bare Flask [{name}]", extra)
            run = bridge(
                f"bridge [{name}]",
                extra,
                background=False,
                modes=("unique", "dup") if name == "sync" or not args.quick else ("unique",),
                with_paced=True,
            )
            naive = bare(
                f"naive: 1 insert, FULL [{name}]",
                extra,
                BENCH_BARE_SQLITE=str(st.dir / f"naive-{name}.db"),
                BENCH_BARE_SYNC="FULL",
            )
            naive_runs[name] = naive
            floor = bare(
                f"floor: durable insert [{name}]",
                extra,
                BENCH_BARE_SQLITE=str(st.dir / f"floor-{name}.db"),
                BENCH_BARE_SYNC="GROUP",
            )
            base2 = bare(f"baseline: bare Flask again [{name}]", extra)
            baseline = max(base1.rps, base2.rps)
            reg = run["unique"]
            ratio = reg.rps / baseline if baseline else 0.0
            slow = run["paced"]
            naive_ratio = reg.rps / naive.rps if naive.rps else 0.0
            entry = {
                "gunicorn": " ".join(["-w", "2", *extra]),
                "baseline": {"runs": [base1.as_dict(), base2.as_dict()], "rps": baseline},
                "bridge": {
                    k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in run.items()
                },
                "ratio": round(ratio, 3),
                "floor": {
                    **floor.as_dict(),
                    "ratio": round(floor.rps / baseline, 3) if baseline else 0.0,
                },
                "naive": {**naive.as_dict(), "bridgeRatio": round(naive_ratio, 3)},
                "pass": {
                    "throughput": ratio >= RATIO_TARGET and reg.non2xx == 0,
                    "p99": reg.p99_ms <= P99_TARGET_MS,
                    "pacedP99": slow.p99_ms <= PACED_P99_TARGET_MS
                    and slow.non2xx == 0
                    and not sum(slow.errors.values()),
                    "naiveRatio": naive_ratio >= NAIVE_RATIO_TARGET and reg.non2xx == 0,
                },
            }
            if with_parts:
                entry["parts"] = {
                    spec: part(f"parts: {spec} [{name}]", extra, spec).as_dict()
                    for spec in ("validate", "ledger", "validate,ledger")
                }
            if not args.quick:
                bg = bridge(f"bridge, delivery threads [{name}]", extra, background=True)
                entry["bridgeDeliveryThreads"] = {
                    k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in bg.items()
                }
            results["layouts"][name] = entry
        say("## references (sync layout)")
        refs = {}
        for sync in ("FULL", "NORMAL"):
            if sync == "FULL" and "sync" in naive_runs:
                refs[sync] = naive_runs["sync"]  # the same handler, served the same way
                say(f"{'bare + 1 insert, synchronous=FULL':34s} the naive run of [sync] above")
                continue
            refs[sync] = bare(
                f"bare + 1 insert, synchronous={sync}",
                [],
                BENCH_BARE_SQLITE=str(st.dir / f"bare-{sync}.db"),
                BENCH_BARE_SYNC=sync,
            )
        results["referenceBareSqlite"] = {k: v.as_dict() for k, v in refs.items()}

    say("")
    ok_any = False
    for name, entry in results["layouts"].items():
        reg = entry["bridge"]["unique"]
        ok = all(entry["pass"].values())
        ok_any |= ok
        say(
            f"[{name}] baseline {entry['baseline']['rps']:.0f} req/s; bridge {reg['rps']:.0f} "
            f"req/s = {entry['ratio']:.0%} (target >= {RATIO_TARGET:.0%}) "
            f"{verdict(entry['pass']['throughput'])}; p99 {reg['p99_ms']:.1f} ms "
            f"(target <= {P99_TARGET_MS:g} ms) {verdict(entry['pass']['p99'])}"
        )
        slow = entry["bridge"]["paced"]
        say(
            f"[{name}] paced at {PACED_SHARE:.0%} of that, open loop: offered "
            f"{slow['offered_rps']:.0f} req/s, achieved {slow['rps']:.0f} req/s; p50 "
            f"{slow['p50_ms']:.1f} ms, p99 {slow['p99_ms']:.1f} ms from the intended send "
            f"(target <= {PACED_P99_TARGET_MS:g} ms) {verdict(entry['pass']['pacedP99'])}; "
            f"wrk's own p99, from the actual send, {slow['sent_p99_ms']:.1f} ms"
        )
        naive = entry["naive"]
        say(
            f"[{name}] naive durable handler (1 insert, own transaction, synchronous=FULL): "
            f"{naive['rps']:.0f} req/s, p99 {naive['p99_ms']:.1f} ms; the bridge "
            f"{naive['bridgeRatio']:.2f}x it (target >= {NAIVE_RATIO_TARGET:.1f}x) "
            f"{verdict(entry['pass']['naiveRatio'])}"
        )
        floor = entry["floor"]
        say(
            f"[{name}]   floor, a bare handler's durable insert alone: {floor['rps']:.0f} req/s "
            f"({floor['ratio']:.0%}), p99 {floor['p99_ms']:.1f} ms"
        )
        if "dup" in entry["bridge"]:
            dup = entry["bridge"]["dup"]
            say(
                f"[{name}]   all duplicates: {dup['rps']:.0f} req/s "
                f"({dup['rps'] / entry['baseline']['rps']:.0%}), p99 {dup['p99_ms']:.1f} ms"
            )
        for spec, result in entry.get("parts", {}).items():
            say(
                f"[{name}]   only {spec + ':':17s} {result['rps']:.0f} req/s "
                f"({result['rps'] / entry['baseline']['rps']:.0%}), p99 {result['p99_ms']:.1f} ms"
            )
        if "bridgeDeliveryThreads" in entry:
            bg = entry["bridgeDeliveryThreads"]["unique"]
            say(
                f"[{name}]   delivery threads in the workers: {bg['rps']:.0f} req/s "
                f"({bg['rps'] / entry['baseline']['rps']:.0%}), p99 {bg['p99_ms']:.1f} ms"
            )
    if "sync" in results["layouts"]:
        base = results["layouts"]["sync"]["baseline"]["rps"]
        say(
            "[sync]   bare + 1 SQLite insert: "
            + ", ".join(
                f"synchronous={k} {v.rps:.0f} req/s ({v.rps / base:.0%})" for k, v in refs.items()
            )
        )
    results["loadavgAtEnd"] = loadavg()
    say(f"# load average at the end: {results['loadavgAtEnd']:.2f}")
    save_result("register", results)
    return 0 if ok_any else 1


if __name__ == "__main__":
    sys.exit(main())
