"""CPU time of ``Ledger.register`` alone, this tree against another (a baseline commit's
checkout), in alternating runs: single-token registrations, the same again (duplicates)
and 1,000-token batches (the median of seven), on a fresh SQLite ledger each run; and of a whole
``POST /register`` of one new token through Flask's test client (authentication,
schema, ledger, request log: all of the bridge's own work for a request, none of the
server's).

    git worktree add /tmp/baseline <commit>
    python bench/bench_ledger_cpu.py --baseline /tmp/baseline [--rounds 3] [--count 2000]
    python bench/bench_ledger_cpu.py --baseline /tmp/baseline --instructions
    python bench/bench_ledger_cpu.py --baseline /tmp/baseline --instructions --batch --count 6

``--instructions`` counts instructions instead (valgrind's callgrind; ``apt-get install
valgrind``): the same count for the same code and input whatever else the machine is
doing, so one run per tree settles a comparison that CPU time, on a busy machine,
cannot. Each figure is the difference between a run of ``--count`` operations and one
of a tenth as many, divided by the difference in operations: start-up drops out.
``--batch``: the operation is a ``POST /register`` of 1,000 new tokens (``{"tokens":
[...]}``) instead of one.

CPU time (``time.process_time``) is what a saturated server runs out of, and it is far
less disturbed by other load on the machine than throughput. Each run is a child
process importing one tree's ``bridge``; the baseline may be older than the ledger
package (its dict token objects are handled too).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
from bridge.db import Database, migrate
import bridge.ledger as L
count = int(sys.argv[2])
url = f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"
migrate(url)
ledger = L.Ledger(Database(url))
new = hasattr(L, "TokenRequest")

def item(i):
    email = f"u{i}@example.com"
    if new:
        return L.TokenRequest(str(1_000_000 + i), email=email)
    return {"token": str(1_000_000 + i), "email": email, "matchedBy": "email",
            "matchValue": email}

for i in range(200):  # warm up: statements built and compiled, pages cached
    ledger.register([item(i)])
t = time.process_time()
for i in range(200, 200 + count):
    ledger.register([item(i)])
single = (time.process_time() - t) / count
t = time.process_time()
for i in range(200, 200 + count):
    ledger.register([item(i)])
duplicate = (time.process_time() - t) / count
ledger.register([item(i) for i in range(20_000_000, 20_001_000)])  # statements of a batch
batches = [[item(i) for i in range(start, start + 1000)]  # built first: not timed
           for start in range(10_000_000, 10_007_000, 1000)]
times = []  # one call's time swings 2-4x with the collector and the machine: a median
for batch in batches:
    t = time.process_time()
    ledger.register(batch)
    times.append(time.process_time() - t)
print(json.dumps({"single_us": single * 1e6, "duplicate_us": duplicate * 1e6,
                  "batch1000_ms": sorted(times)[len(times) // 2] * 1e3}))
"""


# One POST /register of a new token per request, through the test client of the tree's own
# example app (app.py's create_app), as the test suite configures it.
REQUEST_CHILD = r"""
import json, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
from app import create_app
from bridge.db import migrate
count, batch = int(sys.argv[2]), sys.argv[3] == "batch"
url = f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"
migrate(url)
key = "k" * 32
app = create_app({"RETENO_APP_UUID": "00000000-0000-4000-8000-000000000001",
                  "RETENO_API_KEY": "r" * 32, "BRIDGE_API_KEYS": key,
                  "BRIDGE_DATABASE_URL": url, "BRIDGE_BACKGROUND_DELIVERY": False})
client = app.test_client()
auth = {"Authorization": f"Bearer {key}"}

def body(i):
    if batch:  # 1,000 new tokens
        return {"tokens": [{"token": 10_000_000 + i * 1000 + n, "email": f"u{i}.{n}@example.com"}
                           for n in range(1000)]}
    return {"token": 1_000_000 + i, "email": f"u{i}@example.com"}

def post(i):
    response = client.post("/register", headers=auth, json=body(i))
    assert response.status_code == 202, response.get_data(as_text=True)

warm = 2 if batch else 200
for i in range(warm):  # warm up
    post(i)
t = time.process_time()
for i in range(warm, warm + count):
    post(i)
print(json.dumps({"request_us": (time.process_time() - t) / count * 1e6}))
"""


def run(
    tree: Path, count: int, child: str = CHILD, valgrind: bool = False, batch: bool = False
) -> dict:
    argv = [sys.executable, "-c", child, str(tree), str(count), "batch" if batch else "one"]
    if valgrind:
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"] + argv
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict orders: the same work
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    if valgrind:
        collected = re.search(r"Collected : (\d+)", out.stderr)
        figures["instructions"] = int(collected.group(1))
    return figures


def instructions(tree: Path, count: int, child: str, batch: bool = False) -> float:
    """Instructions per operation of ``child``: (I(count) - I(count/10)) / (0.9 count)."""
    small = max(count // 10, 1)
    many = run(tree, count, child, valgrind=True, batch=batch)["instructions"]
    few = run(tree, small, child, valgrind=True, batch=batch)["instructions"]
    return (many - few) / (count - small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per POST /register under callgrind (one "
        "run per tree; --count 500 is plenty, and takes minutes)",
    )
    parser.add_argument(
        "--batch",
        action="store_true",
        help="with --instructions: bodies of 1,000 new tokens (--count 6)",
    )
    args = parser.parse_args()
    if args.instructions:
        base = instructions(args.baseline, args.count, REQUEST_CHILD, args.batch)
        this = instructions(HERE, args.count, REQUEST_CHILD, args.batch)
        what = "of 1,000 tokens" if args.batch else ""
        print(f"{'instructions per POST /register':<32}{'baseline':>12}{'this':>12}{'ratio':>8}")
        print(f"{what:<32}{base:>12,.0f}{this:>12,.0f}{this / base:>8.2f}")
        return
    results: dict[str, list[dict]] = {"baseline": [], "this": []}
    for _ in range(args.rounds):  # alternated, so drifts in the machine's load hit both
        for name, tree in (("baseline", args.baseline), ("this", HERE)):
            results[name].append({**run(tree, args.count), **run(tree, args.count, REQUEST_CHILD)})
    print(
        f"{'figure (median of ' + str(args.rounds) + ')':<32}{'baseline':>12}{'this':>12}"
        f"{'ratio':>8}"
    )
    for key, unit in (
        ("single_us", "us"),
        ("duplicate_us", "us"),
        ("batch1000_ms", "ms"),
        ("request_us", "us"),
    ):
        base = statistics.median(r[key] for r in results["baseline"])
        this = statistics.median(r[key] for r in results["this"])
        print(f"{key:<32}{base:>10.1f}{unit}{this:>10.1f}{unit}{this / base:>8.2f}")


if __name__ == "__main__":
    main()
