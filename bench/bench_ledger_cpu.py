"""CPU time of ``Ledger.register`` alone, this tree against another (a baseline commit's
checkout), in alternating runs: single-token registrations, the same again (duplicates)
and one 1,000-token batch, on a fresh SQLite ledger each run.

    git worktree add /tmp/baseline <commit>
    python bench/bench_ledger_cpu.py --baseline /tmp/baseline [--rounds 3] [--count 2000]

CPU time (``time.process_time``) is what a saturated server runs out of, and it is far
less disturbed by other load on the machine than throughput. Each run is a child
process importing one tree's ``bridge``; the baseline may be older than the ledger
package (its dict token objects are handled too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

CHILD = r'''
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
batch = [item(i) for i in range(10_000_000, 10_001_000)]
t = time.process_time()
ledger.register(batch)
print(json.dumps({"single_us": single * 1e6, "duplicate_us": duplicate * 1e6,
                  "batch1000_ms": (time.process_time() - t) * 1e3}))
'''


def run(tree: Path, count: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(count)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"baseline": [], "this": []}
    for _ in range(args.rounds):  # alternated, so drifts in the machine's load hit both
        results["baseline"].append(run(args.baseline, args.count))
        results["this"].append(run(HERE, args.count))
    print(f"{'figure (median of ' + str(args.rounds) + ')':<32}{'baseline':>12}{'this':>12}"
          f"{'ratio':>8}")
    for key, unit in (("single_us", "us"), ("duplicate_us", "us"), ("batch1000_ms", "ms")):
        base = statistics.median(r[key] for r in results["baseline"])
        this = statistics.median(r[key] for r in results["this"])
        print(f"{key:<32}{base:>10.1f}{unit}{this:>10.1f}{unit}{this / base:>8.2f}")


if __name__ == "__main__":
    main()
