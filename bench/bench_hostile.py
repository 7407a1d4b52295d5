"""Long and hostile inputs: the time of each against a normal request, in the same run.

    .venv/bin/python bench/bench_hostile.py [--quick] [--only PREFIX]

The bridge is built in this process (SQLite ledger in a scratch directory,
credentials set, no delivery) with its logging on at INFO into /dev/null, so
every request pays for its request-log line and for a development-server
style access line (``werkzeug``: the raw, percent-encoded request line) on a
root handler, as ``flask run`` writes one; both go through the redaction
filter. Each case is sent through the Flask test client until it has run
``--reps`` times or for ``--seconds``, whichever comes first (at least once),
and the mean time per request is printed beside the mean of its baseline: a
normal request of the same kind measured in the same run (a normal 401 for
the URL cases, a normal body for the body cases). gunicorn refuses a request
line over 4,094 bytes (414) before the bridge sees it; the longer URLs are
what a server or proxy with a larger limit would hand over.

Run it on a checkout before a change and after it to compare (SECURITY.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

API_KEY = "bench-api-key-0123456789abcdef"
TG_SECRET = "bench-telegram-secret-0123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TG = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
KB = 1024


def _path(n: int) -> str:
    # the shape the old e-mail pattern took quadratic time on: a long run, then an "@"
    return "/tokens/" + "a" * n + "@/history"


def _update(text: str) -> dict:
    return {
        "update_id": 1,
        "message": {
            "message_id": 1,
            "date": 1,
            "text": text,
            "chat": {"id": 123456789, "type": "private"},
        },
    }


def cases(quick: bool):
    """(name, baseline name or None, method, path, request kwargs)."""
    big = 250_000
    yield "GET 401 normal", None, "GET", "/tokens/123456789/history", {}
    for size in (4 * KB, 64 * KB, 1024 * KB):
        yield f"GET 401 path {size // KB} KB", "GET 401 normal", "GET", _path(size), {}
    yield (
        "GET 401 path 64 KB, %-encoded",
        "GET 401 normal",
        "GET",
        "/tokens/" + "%0A1" * (16 * KB) + "/history",
        {},
    )
    yield (
        "GET 422 token 64 KB",
        "GET 401 normal",
        "GET",
        "/tokens/" + "1 " * (32 * KB) + "/history",
        {"headers": AUTH},
    )
    yield (
        "POST /register normal",
        None,
        "POST",
        "/register",
        {"json": {"token": 1, "email": "ann@example.com"}, "headers": AUTH},
    )
    for size in (4 * KB, 1024 * KB):
        yield (
            f"POST /register email {size // KB} KB",
            "POST /register normal",
            "POST",
            "/register",
            {"json": {"token": 1, "email": "a" * size + "@x"}, "headers": AUTH},
        )
    keys = 100_000 if quick else 330_000
    yield (
        f"POST /register {keys:,} unknown keys",
        "POST /register normal",
        "POST",
        "/register",
        {
            "json": {"token": 1, "email": "ann@example.com", **{f"k{i}": 0 for i in range(keys)}},
            "headers": AUTH,
        },
    )
    yield (
        "POST /statuses normal",
        None,
        "POST",
        "/statuses",
        {"json": [{"status": "SENT", "token": 1}], "headers": AUTH},
    )
    yield (
        "POST /statuses error text 1 MB",
        "POST /statuses normal",
        "POST",
        "/statuses",
        {"json": [{"status": "FAILED", "token": 1, "error": "x" * (1024 * KB)}], "headers": AUTH},
    )
    yield (
        f"POST /statuses {big:,} tiny objects",
        "POST /statuses normal",
        "POST",
        "/statuses",
        {"json": [{"a": i} for i in range(big)], "headers": AUTH},
    )
    yield (
        "POST /telegram/webhook normal /start",
        None,
        "POST",
        "/telegram/webhook",
        {"json": _update("/start abc"), "headers": TG},
    )
    for size in (4 * KB, 100 * KB):
        yield (
            f"POST /telegram/webhook /start + {size // KB} KB of spaces",
            "POST /telegram/webhook normal /start",
            "POST",
            "/telegram/webhook",
            {"json": _update("/start a" + " " * size + "b"), "headers": TG},
        )


class _AccessLine:
    """What the development server writes after each request: the raw request line."""

    def __init__(self):
        self.log = logging.getLogger("werkzeug")

    def __call__(self, response):
        from flask import request

        raw = request.environ.get("RAW_URI") or quote(request.environ.get("PATH_INFO", ""))
        self.log.info(
            '127.0.0.1 - - "%s %s HTTP/1.1" %s -', request.method, raw, response.status_code
        )
        return response


def build(workdir: Path):
    sink = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - for the run
    root = logging.getLogger()
    root.addHandler(sink)
    root.setLevel(logging.INFO)
    from bridge.db import migrate
    from bridge.logs import LOG_FORMAT

    sink.setFormatter(logging.Formatter(LOG_FORMAT))
    url = f"sqlite:///{workdir / 'bridge.sqlite3'}"
    migrate(url)
    os.environ["BRIDGE_INSTANCE_PATH"] = str(workdir / "instance")
    from app import create_app

    app = create_app(
        {
            "RETENO_APP_UUID": "bench-app",
            "RETENO_API_KEY": "bench-reteno-key-0123456789",
            "BRIDGE_API_KEYS": API_KEY,
            "BRIDGE_DATABASE_URL": url,
            "BRIDGE_BACKGROUND_DELIVERY": False,
            "TELEGRAM_WEBHOOK_SECRET": TG_SECRET,
            "BRIDGE_LINK_SECRET": "bench-link-secret-0123456789",
            "BRIDGE_MAX_BODY_BYTES": 8 * 1024 * KB,
        }
    )
    app.after_request(_AccessLine())
    return app


def measure(client, method, path, kwargs, reps: int, seconds: float) -> tuple[float, int, int]:
    """(mean ms per request, requests, last status), the request log written out."""
    from bridge.logs import flush_request_log

    if "json" in kwargs:  # encoded once, outside the timing
        kwargs = {**kwargs, "data": json.dumps(kwargs["json"]), "content_type": "application/json"}
        kwargs.pop("json")
    times, status = [], None
    deadline = time.perf_counter() + seconds
    while len(times) < reps and (not times or time.perf_counter() < deadline):
        started = time.perf_counter()
        response = client.open(path, method=method, **kwargs)
        status = response.status_code
        response.close()
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    flush_request_log()  # the lines' redaction, done by the log thread, is counted too
    flushed = time.perf_counter() - started
    return (sum(times) + flushed) / len(times) * 1000, len(times), status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--reps", type=int, default=None, help="per case (200; quick 40)")
    parser.add_argument("--seconds", type=float, default=None, help="per case (5; quick 2)")
    parser.add_argument("--only", default="", help="only cases whose name starts with this")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        help="leave out cases whose name contains this (repeatable)",
    )
    args = parser.parse_args()
    reps = args.reps or (40 if args.quick else 200)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        app = build(Path(tmp))
        client = app.test_client()
        means: dict[str, float] = {}
        print(f"{'case':48} {'status':>6} {'n':>4} {'ms/request':>11} {'x normal':>9}")
        for name, baseline, method, path, kwargs in cases(args.quick):
            if args.only and not (name.startswith(args.only) or baseline is None):
                continue
            if any(part in name for part in args.skip):
                continue
            ms, n, status = measure(client, method, path, kwargs, reps, seconds)
            means[name] = ms
            ratio = f"{ms / means[baseline]:9.1f}" if baseline in means else f"{'':9}"
            print(f"{name:48} {status:>6} {n:>4} {ms:11.2f} {ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
