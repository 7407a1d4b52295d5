"""Where the time of ``POST /register`` goes: py-spy on a gunicorn worker under load.

    .venv/bin/python bench/bench_profile.py [--layout sync|gthread] [--svg out.svg]

Serves the bridge as ``bench_register.py`` does (gunicorn -w 2, SQLite, one
``bridge deliver`` process, the simulator at 200 requests/s and 100 ms), runs
wrk -t2 -c32 with a new token per request, and samples one worker with
``py-spy record`` (``pip install py-spy`` into the venv): wall-clock samples
(``--idle``, waits included) for the sync layout, on-CPU samples for gthread,
whose sixteen threads mostly wait (``--wall``/``--cpu`` choose). Every sample
is put in one bucket by its innermost recognisable frame, and the buckets and
the hottest frames are printed. ``--svg`` also writes py-spy's flame graph.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    BIN,
    REGISTER_LUA,
    Stack,
    children,
    lua,
    say,
    wait_quiet,
    wrk,
)

LAYOUTS = {"sync": [], "gthread": ["-k", "gthread", "--threads", "16", "--reuse-port"]}

# (bucket, test on one frame "function (path:line)"), innermost frame first wins.
BUCKETS = [
    # fdatasync waits in the kernel's uninterruptible sleep, which py-spy counts as
    # running even in on-CPU mode: this bucket is mostly the disk, not the CPU.
    ("flush to disk (Database.sync: fdatasync, a disk wait)", lambda f: "Database.sync" in f),
    ("SQLite: COMMIT (WAL write + fsync)", lambda f: "do_commit" in f),
    (
        "SQLite: statements",
        lambda f: "_driver_execute" in f or "_begin (bridge/storage" in f or "do_execute" in f,
    ),
    ("waiting: write lock (flock)", lambda f: "WriteQueue.hold" in f),
    ("waiting: group commit", lambda f: "GroupCommit.run" in f),
    (
        "waiting: for a request",
        lambda f: (
            "select (selectors" in f
            or "sync.py:3" in f
            or "socket.accept" in f
            or "SyncWorker.wait" in f
        ),
    ),
    ("request log (logging)", lambda f: "logging/" in f or "bridge/logs.py" in f),
    ("SQLAlchemy (connection, pool, events)", lambda f: "sqlalchemy/" in f),
    (
        "ledger + storage (bridge Python)",
        lambda f: "bridge/ledger/" in f or "bridge/storage.py" in f or "bridge/db.py" in f,
    ),
    (
        "validation (marshmallow, schemas)",
        lambda f: "marshmallow/" in f or "bridge/schemas.py" in f,
    ),
    (
        "JSON body, auth, response (bridge/http, json)",
        lambda f: "bridge/http.py" in f or "json/" in f,
    ),
    ("metrics (prometheus_client)", lambda f: "prometheus_client/" in f),
    ("view (bridge/views.py)", lambda f: "bridge/views.py" in f),
    ("Flask / Werkzeug", lambda f: "flask/" in f or "werkzeug/" in f),
    ("gunicorn (HTTP parsing, sockets)", lambda f: "gunicorn/" in f),
]


def bucket(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, test in BUCKETS:
            if test(frame):
                return name
    return "other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="sync")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--svg", default=None, help="also write a flame graph here")
    parser.add_argument(
        "--wall",
        dest="wall",
        action="store_true",
        default=None,
        help="wall-clock samples, waits included (default for sync)",
    )
    parser.add_argument(
        "--cpu", dest="wall", action="store_false", help="on-CPU samples only (default for gthread)"
    )
    parser.add_argument("--no-wait", action="store_true")
    args = parser.parse_args()
    wall = args.wall if args.wall is not None else args.layout == "sync"
    spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if not spy:
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    quiet = {"loadavg": None} if args.no_wait else wait_quiet()
    say(f"# bench_profile: layout {args.layout}, load average {quiet['loadavg']}")
    with Stack("profile") as st:
        sim = st.simulator(rps=200, latency_ms=100)
        env = st.bridge_env(st.dir / "ledger.sqlite3", sim, background=False)
        st.migrate(env)
        url, proc = st.gunicorn("app:app", env=env, extra=LAYOUTS[args.layout])
        st.deliver_worker(env)
        script = lua(st.dir, "register", REGISTER_LUA)
        wrk(url, script, 2, args=["unique", "2000000000"])
        worker = sorted(children(proc.pid))[0]
        raw = st.dir / "profile.txt"
        record = [
            spy,
            "record",
            *(["--idle"] if wall else []),
            "--nonblocking",
            "-r",
            "250",
            "-p",
            str(worker),
            "-d",
            str(int(args.seconds)),
            "-f",
            "raw",
            "-o",
            str(raw),
        ]
        sampler = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        svg = None
        if args.svg:
            svg = subprocess.Popen(
                [*record[:-4], "-f", "flamegraph", "-o", args.svg],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        load = wrk(url, script, args.seconds + 1, args=["unique", "3000000000"])
        sampler.wait()
        if svg:
            svg.wait()
        say(f"load: {load.line()}")
        buckets: collections.Counter = collections.Counter()
        frames: collections.Counter = collections.Counter()
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            parts = stack.split(";")
            if not any(
                "Flask.__call__" in f or "handle" in f or "accept" in f or "wait" in f
                for f in parts
            ):
                continue  # the delivery-free worker's other threads (gthread: its poller)
            total += n
            buckets[bucket(parts)] += n
            frames[parts[-1]] += n
    kind = "wall-clock (py-spy --idle)" if wall else "on-CPU (py-spy)"
    say(f"\n{kind} samples of worker {worker}, all threads: {total} at 250 Hz")
    for name, n in buckets.most_common():
        say(f"  {100 * n / total:5.1f}%  {name}")
    say("\nhottest innermost frames:")
    for frame, n in frames.most_common(15):
        say(f"  {100 * n / total:5.1f}%  {frame}")
    if args.svg:
        say(f"\nflame graph: {args.svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
