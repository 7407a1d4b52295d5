"""The soak: the production layout under steady load for an hour, upstream failing 10 %.

nginx with the shipped configuration (``deploy/nginx/reteno-bridge.conf``) in front
of gunicorn with the shipped settings (``python:bridge.gunicorn_conf``, bound to
loopback, ``BRIDGE_BACKGROUND_DELIVERY=false``, ``BRIDGE_TRUSTED_PROXIES=1``) and one
``reteno-bridge deliver`` worker: the Procfile's two processes. The Reteno simulator
(its own process, Reteno's 200 requests/s) answers a share of the calls with a fault
drawn from 500, 503, 429, 429 with Retry-After, a read time-out (it answers after
twice the bridge's read time-out) and a dropped connection. Every setting is the
bridge's default.

First the maximum: client threads register as fast as the layout takes them for
``--probe`` seconds. Then the soak: one registration at a time at ``--fraction`` of
that rate (or ``--rate``) for ``--minutes``. Every ``--every`` seconds the run samples
each process's resident set (VmRSS), open files and sockets (/proc/PID/fd), and the outbox
depth (queued registrations); a line a minute. At the end it waits for the outbox to
drain and checks every acknowledged registration against the ledger and the
simulator.

    .venv/bin/python bench/soak.py                      # the hour, SQLite
    .venv/bin/python bench/soak.py --minutes 10          # a shorter one
    .venv/bin/python bench/soak.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

Passes (exit status 0) when every acknowledged registration reached Reteno exactly
once, the resident set of every bridge process at the last minute is within +5 % of
its minute 5 (medians of the minute's samples), the typical (median) open files of each
process over the last ten minutes, and apart from them its sockets, are at most those of
minutes 5 to 14 plus 2 (a leak raises the typical count; a descriptor held for one
transaction or call — the SQLite write lock's, an upstream connection — makes short
peaks, reported as the most), and the deepest outbox of the last ten minutes is at most
that of the first ten plus five seconds of arrivals. The samples are kept in
``bench/results/soak.samples.jsonl``; ``--judge`` judges the kept run (them and
``bench/results/soak.json``) again without running one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``bridge`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness as h  # noqa: E402
from bench.common import BIN, RESULTS, children, rss_kib, save_result, wait_quiet  # noqa: E402
from bench.faults import ALL_FAULTS  # noqa: E402
from bridge.config import DEFAULT_READ_TIMEOUT  # noqa: E402

FIRST_MINUTE = 5  # RSS and open files are compared from this minute (--minutes: at least it)
RSS_GROWTH = 0.05  # the last minute against minute FIRST_MINUTE
FD_SLACK = 2
DEPTH_SECONDS = 5.0
SAMPLES = RESULTS / "soak.samples.jsonl"


def open_files(pid: int) -> tuple[int, int]:
    """``(files, sockets)`` open in ``pid`` (its /proc/PID/fd): a socket is a connection
    or a listener, whose number follows the calls or requests in flight."""
    files = sockets = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):  # closed since the listing
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    sockets += 1
                else:
                    files += 1
    return files, sockets


class Sampler:
    """Samples, every ``every`` seconds, the RSS and open files of the named processes
    (gunicorn's workers are found afresh each time: a replaced worker shows as a new
    pid) and the outbox depth; appends each sample to ``path`` as a JSON line."""

    def __init__(self, procs: dict[str, h.Proc], db_url: str, path: Path, every: float):
        self.procs, self.db_url, self.path, self.every = procs, db_url, path, every
        self.samples: list[dict] = []
        self.acked = lambda: 0
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def pids(self) -> dict[str, int]:
        out = {}
        for name, proc in self.procs.items():
            if name in ("gunicorn", "nginx"):
                out[f"{name}-master"] = proc.pid
                for n, pid in enumerate(sorted(children(proc.pid)), 1):
                    out[f"{name}-worker{n}"] = pid
            else:
                out[name] = proc.pid
        return out

    def sample(self) -> dict:
        pids = self.pids()
        opened = {name: open_files(pid) for name, pid in pids.items()}
        return {
            "t": round(time.monotonic() - self.t0, 1),
            "acked": self.acked(),
            "depth": h.queued_count(self.db_url),
            "pids": pids,
            "rssKiB": {name: rss_kib(pid) for name, pid in pids.items()},
            "fds": {name: files for name, (files, _) in opened.items()},
            "sockets": {name: sockets for name, (_, sockets) in opened.items()},
        }

    def _run(self) -> None:
        with open(self.path, "a") as out:
            while not self._stop.wait(self.every):
                sample = self.sample()
                self.samples.append(sample)
                out.write(json.dumps(sample) + "\n")
                out.flush()

    def start(self) -> Sampler:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def span(self, start: int, end: int) -> list[dict]:
        """The samples of minutes ``start`` to ``end - 1``."""
        return [s for m in range(start, end) for s in self.minute(m)]

    def minute(self, m: int) -> list[dict]:
        """The samples of minute ``m`` (1-based: minute 1 is seconds 0 to 60)."""
        return [s for s in self.samples if (m - 1) * 60 <= s["t"] < m * 60]


def per_minute(samples: list[dict], key: str, name: str, pick=statistics.median) -> int:
    values = [s[key][name] for s in samples if name in s.get(key, {})]
    return int(pick(values)) if values else 0


def most(sampler: Sampler, start: int, end: int, value) -> int:
    """The largest ``value(sample)`` over minutes ``start`` to ``end - 1``."""
    return max((value(s) for s in sampler.span(start, end)), default=0)


def flat(counts: dict, names: list[str]) -> bool:
    """Each process's typical count (the median) of the last ten minutes at most that of
    minutes 5 to 14 plus :data:`FD_SLACK`: a leak raises it, while descriptors held for
    one transaction or call only make short peaks."""
    return all(
        counts[n]["medianLast10Minutes"] <= counts[n]["medianMinutes5to14"] + FD_SLACK
        for n in names
    )


def judge(sampler: Sampler, minutes: int, rate: float) -> dict:
    """The figures the verdict rests on: minute 5 against the last minute, per process."""
    first, last = sampler.minute(FIRST_MINUTE), sampler.minute(minutes)
    names = sorted(set(first[0]["rssKiB"]) & set(last[-1]["rssKiB"]))
    early = sampler.span(FIRST_MINUTE, FIRST_MINUTE + 10)
    late = sampler.span(max(FIRST_MINUTE, minutes - 9), minutes + 1)
    rss, fds, sockets = {}, {}, {}
    for name in names:
        before, after = per_minute(first, "rssKiB", name), per_minute(last, "rssKiB", name)
        rss[name] = {
            "minute5KiB": before,
            "lastMinuteKiB": after,
            "growth": round(after / before - 1, 4) if before else None,
            "byTenMinutesKiB": [
                per_minute(sampler.minute(m), "rssKiB", name)
                for m in range(FIRST_MINUTE, minutes + 1, 10)
            ],
        }
        for key, out in (("fds", fds), ("sockets", sockets)):
            out[name] = {
                "medianMinutes5to14": per_minute(early, key, name),
                "medianLast10Minutes": per_minute(late, key, name),
                "mostMinutes5to14": per_minute(early, key, name, max),
                "mostLast10Minutes": per_minute(late, key, name, max),
            }
    depths = [s["depth"] for s in sampler.samples]
    by_ten = [
        most(sampler, m, m + 10, lambda sample: sample["depth"]) for m in range(1, minutes + 1, 10)
    ]
    bridge = [n for n in names if not n.startswith("nginx")]
    return {
        "rss": rss,
        "openFiles": fds,
        "sockets": sockets,
        "outboxDepth": {
            "median": int(statistics.median(depths)),
            "most": max(depths),
            "mostByTenMinutes": by_ten,
            "atEndOfLoad": depths[-1],
        },
        "workersReplaced": len({s["pids"].get(n) for s in sampler.samples for n in bridge})
        > len(bridge),
        "rssFlat": all(
            rss[n]["growth"] is not None and rss[n]["growth"] <= RSS_GROWTH for n in bridge
        ),
        "openFilesFlat": flat(fds, names),
        "socketsFlat": flat(sockets, names),
        "outboxFlat": by_ten[-1] <= by_ten[0] + rate * DEPTH_SECONDS,
    }


def run(args) -> dict:
    if not os.path.exists(h.NGINX):
        raise SystemExit(f"{h.NGINX} is absent: apt-get install nginx")
    quiet = wait_quiet(timeout=args.quiet_timeout)
    workdir = h.workdir_for("bridge-soak-", args.keep)
    samples_path = SAMPLES
    RESULTS.mkdir(parents=True, exist_ok=True)
    samples_path.write_text("")
    sim = h.start_simulator(
        workdir,
        failure_rate=args.failure_rate,
        failures=ALL_FAULTS,
        timeout_seconds=(args.read_timeout or DEFAULT_READ_TIMEOUT) * 2 + 0.5,
        rps=200,
        latency_ms=args.latency_ms,
        seed=1,
    )
    procs: list[h.Proc] = [sim.proc]
    try:
        with h.database(args.database_url, workdir) as db_url:
            env = h.bridge_env(
                workdir,
                db_url,
                sim,
                BRIDGE_BACKGROUND_DELIVERY="false",
                BRIDGE_TRUSTED_PROXIES=1,
                BRIDGE_LOG_LEVEL="INFO",  # the default: a line per request and per call
                **(
                    {"BRIDGE_UPSTREAM_READ_TIMEOUT": args.read_timeout} if args.read_timeout else {}
                ),
                HOST="127.0.0.1",
                PORT=h.free_port(),
                PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            )
            h.migrate(env, workdir)
            web = h.Proc(
                "gunicorn",
                [str(BIN / "gunicorn"), "-c", "python:bridge.gunicorn_conf", "bridge.factory:app"],
                env,
                workdir / "gunicorn.log",
            )
            procs.append(web.start())
            h.wait_healthy(f"http://127.0.0.1:{env['PORT']}")
            worker = h.Proc(
                "deliver", [str(BIN / "reteno-bridge"), "deliver"], env, workdir / "deliver.log"
            )
            procs.append(worker.start())
            prefix = workdir / "nginx"
            prefix.mkdir()
            listen = h.free_port()
            conf = h.nginx_conf(prefix, listen, int(env["PORT"]))
            argv = [h.NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
            proxy = h.Proc("nginx", argv, env, workdir / "nginx.log")
            procs.append(proxy.start())
            url = f"http://127.0.0.1:{listen}"
            h.wait_healthy(url)
            h.say(f"# up: nginx {url} -> gunicorn :{env['PORT']}, deliver; logs in {workdir}")

            probe, maximum = h.LoadResult(), None
            if args.rate is None:
                stop = threading.Event()
                timer = threading.Timer(args.probe, stop.set)
                timer.start()
                probe = h.send_load(
                    [url], int(args.probe * 5000), concurrency=args.probe_threads, stop=stop
                )
                timer.cancel()
                maximum = len(probe.acked) / probe.seconds
                h.say(f"# maximum {maximum:.0f} registrations/s over {probe.seconds:.0f} s")
                h.wait_drained(db_url, 300)
            rate = args.rate or maximum * args.fraction
            h.say(f"# the soak: {rate:.0f} registrations/s for {args.minutes} min")

            start = max(probe.acked) + 1 if probe.acked else 0
            count = int(rate * args.minutes * 60)
            sampler = Sampler(
                {"gunicorn": web, "deliver": worker, "nginx": proxy},
                db_url,
                samples_path,
                args.every,
            )
            soak = h.LoadResult()
            sampler.acked = lambda: len(soak.acked)  # read while send_load fills it
            printer = threading.Thread(
                target=report_minutes, args=(sampler, args.minutes), daemon=True
            )
            sampler.start()
            printer.start()
            h.send_load(
                [url],
                count,
                concurrency=args.threads,
                rate=rate,
                start=start,
                deadline=args.minutes * 60 + 120,
                into=soak,
            )
            sampler.stop()
            h.say(f"# load sent in {soak.seconds:.0f} s: {dict(soak.statuses)}")
            drained = h.wait_drained(db_url, 900)
            verdicts = judge(sampler, args.minutes, rate)
            both = h.LoadResult(
                acked={**probe.acked, **soak.acked},
                statuses=probe.statuses + soak.statuses,
                duplicates_acked=probe.duplicates_acked + soak.duplicates_acked,
            )
            figures = h.verify(start + count, both, db_url, sim)
            stats = sim.stats()
            figures.update(h.run_figures(both, db_url, drained, 1))
            figures.update(
                {
                    "quietAtStart": quiet,
                    "maximumPerSecond": maximum and round(maximum, 1),
                    "ratePerSecond": round(rate, 1),
                    "soakAcknowledged": len(soak.acked),
                    "soakSeconds": round(soak.seconds, 1),
                    "achievedPerSecond": round(len(soak.acked) / soak.seconds, 1),
                    "upstreamCalls": stats["requests"],
                    "faultShare": round(
                        sum(stats["faults"].values()) / max(1, stats["requests"]), 3
                    ),
                    "faultsByKind": stats["faults"],
                    "ledgerBytes": ledger_bytes(db_url),
                    **verdicts,
                }
            )
            return h.stop_and_read_logs(procs[1:], workdir, figures)
    finally:
        for proc in procs:
            proc.stop()


def ledger_bytes(db_url: str) -> int | None:
    if db_url.startswith("sqlite:///"):
        path = Path(db_url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return None


def report_minutes(sampler: Sampler, minutes: int) -> None:
    """A line a minute: registrations acknowledged, outbox depth, RSS and open files."""
    for m in range(1, minutes + 1):
        while time.monotonic() - sampler.t0 < m * 60 + sampler.every:
            time.sleep(1)
        samples = sampler.minute(m)
        if not samples:
            continue
        last = samples[-1]
        rss = " ".join(
            f"{n}={per_minute(samples, 'rssKiB', n) / 1024:.1f}M"
            for n in sorted(last["rssKiB"])
            if not n.startswith("nginx")
        )
        fds = sum(last["fds"].values())
        connected = sum(last.get("sockets", {}).values())
        h.say(
            f"#   minute {m:2d}: {last['acked']:>8} acked, depth {last['depth']:>5}, "
            f"{rss}, {fds} files, {connected} sockets"
        )


def passed(f: dict) -> bool:
    return (
        f["lost"] == 0
        and f["sentTwice"] == 0
        and f["wrongIdentity"] == 0
        and f["unexpectedTokens"] == 0
        and f["logLinesWithSecretsOrPersonalData"] == 0
        and f["drained"]
        and f["rssFlat"]
        and f["openFilesFlat"]
        and f["socketsFlat"]
        and f["outboxFlat"]
    )


def judge_again() -> int:
    """The verdict on the kept run (``bench/results/soak.json``, its samples) by this
    script's rules."""
    path = RESULTS / "soak.json"
    figures = json.loads(path.read_text())
    figures.pop("passed", None)
    sampler = Sampler({}, "", SAMPLES, every=10.0)
    sampler.samples = [json.loads(line) for line in SAMPLES.read_text().splitlines()]
    minutes = round(figures["soakSeconds"] / 60)
    figures.update(judge(sampler, minutes, figures["ratePerSecond"]))
    h.print_figures(f"soak: {minutes} min, judged again", figures)
    ok = passed(figures)
    path.write_text(json.dumps({**figures, "passed": ok}, indent=2) + "\n")
    h.say(f"{'PASS' if ok else 'FAIL'} (figures in {path})")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=60, help="length of the soak")
    parser.add_argument("--fraction", type=float, default=0.5, help="of the measured maximum")
    parser.add_argument("--rate", type=float, default=None, help="registrations/s (no probe)")
    parser.add_argument("--probe", type=float, default=30.0, help="seconds of the probe")
    parser.add_argument("--probe-threads", type=int, default=16)
    parser.add_argument("--threads", type=int, default=8, help="client threads of the soak")
    parser.add_argument("--failure-rate", type=float, default=0.1)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=None,
        help="BRIDGE_UPSTREAM_READ_TIMEOUT (default: the bridge's own)",
    )
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--quiet-timeout", type=float, default=300.0, help="seconds to wait for a quiet machine"
    )
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--keep", default=None, help="directory for logs and the database")
    parser.add_argument("--judge", action="store_true", help="judge the kept run again")
    args = parser.parse_args(argv)
    if args.judge:
        return judge_again()
    if args.minutes < FIRST_MINUTE:
        parser.error(f"--minutes: at least {FIRST_MINUTE} (RSS is compared from that minute)")
    figures = run(args)
    h.print_figures(f"soak: {args.minutes} min", figures)
    ok = passed(figures)
    path = save_result("soak", {**figures, "passed": ok})
    h.say(f"{'PASS' if ok else 'FAIL'} (figures in {path})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
