"""``/healthz`` and ``/metrics`` on a large ledger: counted on every call, or cached.

    .venv/bin/python bench/bench_health.py [--quick] [--rows N]

One SQLite ledger is loaded straight with SQL (1,000,000 delivered
registrations; ``--quick``: 200,000), then two apps are built in this process
on it: one with ``BRIDGE_HEALTH_CACHE_SECONDS=0`` (the table-wide counts made
on every call, as before the cache) and one with the default (5 s). Each
endpoint is asked ``--reps`` times in a row through the Flask test client;
the mean per request is printed for both apps, in the same run, beside a
look-up of one token (``GET /tokens?token=``) as the normal request. Within
5 s the cached app counts once, so its mean is about one count spread over
the calls plus the per-call row read.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bulk_load  # noqa: E402

API_KEY = "bench-api-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def build(url: str, cache_seconds: float | None):
    from app import create_app

    config = {
        "RETENO_APP_UUID": "bench-app",
        "RETENO_API_KEY": "bench-reteno-key-0123456789",
        "BRIDGE_API_KEYS": API_KEY,
        "BRIDGE_DATABASE_URL": url,
        "BRIDGE_BACKGROUND_DELIVERY": False,
    }
    if cache_seconds is not None:
        config["BRIDGE_HEALTH_CACHE_SECONDS"] = cache_seconds
    return create_app(config)


def mean_ms(client, path: str, headers: dict, reps: int) -> tuple[float, int]:
    started = time.perf_counter()
    for _ in range(reps):
        response = client.get(path, headers=headers)
        status = response.status_code
        response.close()
    return (time.perf_counter() - started) / reps * 1000, status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=None, help="1,000,000 (quick 200,000)")
    parser.add_argument("--reps", type=int, default=None, help="per endpoint (50; quick 20)")
    args = parser.parse_args()
    rows = args.rows or (200_000 if args.quick else 1_000_000)
    reps = args.reps or (20 if args.quick else 50)
    os.environ["BRIDGE_LOG_LEVEL"] = "WARNING"  # the request log would print every call
    with tempfile.TemporaryDirectory(prefix="bench-health-") as tmp:
        os.environ["BRIDGE_INSTANCE_PATH"] = str(Path(tmp) / "instance")
        db = Path(tmp) / "bridge.sqlite3"
        url = f"sqlite:///{db}"
        from bridge.db import migrate

        migrate(url)
        loaded = bulk_load(db, rows, events=False)
        print(f"{rows:,} registrations loaded in {loaded:.1f} s; {reps} requests per line")
        apps = {"counted every call": build(url, 0), "cached (default 5 s)": build(url, None)}
        cases = [
            ("GET /tokens?token= (normal)", "/tokens?token=1000000007", AUTH),
            ("GET /healthz (open)", "/healthz", {}),
            ("GET /healthz (bearer: details)", "/healthz", AUTH),
            ("GET /metrics (bearer)", "/metrics", AUTH),
        ]
        print(f"{'request':34} " + " ".join(f"{name:>22}" for name in apps))
        for label, path, headers in cases:
            cells = []
            for app in apps.values():
                client = app.test_client()
                client.get(path, headers=headers)  # warm: connections, page cache
                ms, status = mean_ms(client, path, headers, reps)
                cells.append(f"{ms:14.2f} ms ({status})")
            print(f"{label:34} " + " ".join(f"{c:>22}" for c in cells), flush=True)
        for app in apps.values():
            app.extensions["reteno_bridge"].db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
