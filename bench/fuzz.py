"""Figure 3 — hostile input at volume: ≥ 10,000 generated requests, 0 answers 5xx.

Serves the bridge under gunicorn (credentials set, webhook Basic credentials
and Telegram secret set, no delivery running so that only requests change
the ledger) and runs two generators against it over HTTP:

1. **schemathesis** against ``/openapi.json`` (every operation, positive and
   negative cases, all phases) with every one of its checks — among them
   ``positive_data_acceptance`` and ``negative_data_rejection``, since the document
   states the rules exactly — plus two of ours (``bench/fuzz_hooks.py``): every
   error in the one shape, and no ledger change on a 4xx. ``bench/schemathesis.toml``
   turns ``positive_data_acceptance`` off for the four operations whose rule JSON
   Schema cannot state (a whole float such as ``2.0`` is an integer to it; a cursor
   is only a page's ``next``); RELIABILITY.md §3 says why.
2. **hypothesis** with the strategies of ``tests/fuzzing.py`` (hostile JSON
   for every endpoint, arbitrary bytes, odd query strings), checking the
   same oracle and reading the ledger around every rejected request.

    .venv/bin/python bench/fuzz.py                  # ≥ 10,000 requests of each kind
    .venv/bin/python bench/fuzz.py --examples 500 --hypothesis 1000   # quick

Exit status 0 only if no answer was a 5xx and every rejection kept the promise.
schemathesis is the ``fuzz`` extra, not part of ``make install``:
``pip install -c constraints.txt -e '.[fuzz]'`` (``make reliability`` installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``tests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hypothesis  # noqa: E402
import requests  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from bench import harness as h  # noqa: E402
from tests import fuzzing as fz  # noqa: E402

TG_SECRET = "fuzz-telegram-secret"
HOOK_USER, HOOK_PASSWORD = "reteno-hook", "fuzz-hook-password-123"
BIN = Path(sys.executable).parent


def serve(workdir: Path, database_url: str | None):
    """Context: (base URL, ledger URL) of a gunicorn-served bridge on a fresh database."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        with h.database(database_url, workdir) as db_url:
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("RETENO_", "BRIDGE_", "TELEGRAM_", "FLASK_"))
            }
            env.update(
                {
                    "RETENO_APP_UUID": h.APP_UUID,
                    "RETENO_API_KEY": h.RETENO_KEY,
                    "RETENO_BASE_URL": "http://127.0.0.1:9",  # never called: no delivery runs
                    "BRIDGE_API_KEYS": h.API_KEY,
                    "BRIDGE_DATABASE_URL": db_url,
                    "BRIDGE_INSTANCE_PATH": str(workdir / "instance"),
                    "BRIDGE_BACKGROUND_DELIVERY": "false",
                    "BRIDGE_LOG_LEVEL": "WARNING",
                    "BRIDGE_WEBHOOK_USERNAME": HOOK_USER,
                    "BRIDGE_WEBHOOK_PASSWORD": HOOK_PASSWORD,
                    "TELEGRAM_WEBHOOK_SECRET": TG_SECRET,
                    "BRIDGE_LINK_SECRET": "fuzz-link-secret-0123456789",
                    "BRIDGE_MAX_BODY_BYTES": str(256 * 1024),
                }
            )
            h.migrate(env, workdir)
            proc, url = h.gunicorn("gunicorn", env, workdir, workers=2)
            proc.start()
            try:
                h.wait_healthy(url)
                yield url, db_url
            finally:
                proc.stop()

    return ctx()


def run_schemathesis(url: str, db_url: str, workdir: Path, examples: int, seed: int) -> dict:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "bench.fuzz_hooks",
        "FUZZ_LEDGER_URL": db_url,
        "PYTHONPATH": str(h.ROOT),
    }
    argv = [
        str(BIN / "schemathesis"),
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        f"{url}/openapi.json",
        "-H",
        f"Authorization: Bearer {h.API_KEY}",
        "-H",
        f"X-Telegram-Bot-Api-Secret-Token: {TG_SECRET}",
        "--max-examples",
        str(examples),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--no-color",
        "--suppress-health-check",
        "all",
        "--request-timeout",
        "30",
        "--report",
        "junit",
        "--report-dir",
        str(workdir / "schemathesis-report"),
    ]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=3600)
    (workdir / "schemathesis.log").write_text(done.stdout + done.stderr)
    cases = re.search(r"(\d+) generated", done.stdout)
    return {
        "exitCode": done.returncode,
        "generated": int(cases.group(1)) if cases else None,
        "summary": [
            line.strip()
            for line in done.stdout.splitlines()
            if re.search(r"generated|failures? in|passed in|❌|Failures:", line)
        ][-8:],
        "seconds": round(time.monotonic() - started, 1),
        "log": str(workdir / "schemathesis.log"),
    }


def run_hypothesis(url: str, db_url: str, count: int, seed: int) -> dict:
    """``count`` requests drawn from tests/fuzzing.py's strategies, checked one by one."""
    engine = create_engine(db_url)
    session = requests.Session()
    bearer = {"Authorization": f"Bearer {h.API_KEY}"}
    tg = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
    statuses: Counter = Counter()
    problems: list[str] = []

    def counts():
        with engine.connect() as conn:
            return (
                conn.execute(text("SELECT count(*) FROM bridge_registrations")).scalar(),
                conn.execute(text("SELECT count(*) FROM bridge_events")).scalar(),
            )

    requests_ = st.one_of(
        st.tuples(
            st.just("POST"),
            st.just("/register"),
            fz.register_bodies.map(fz.encode),
            st.just(bearer),
            st.just(None),
        ),
        st.tuples(
            st.just("POST"),
            st.just("/statuses"),
            fz.status_bodies.map(fz.encode),
            st.just(bearer),
            st.just(None),
        ),
        st.tuples(
            st.just("POST"),
            st.just("/telegram/webhook"),
            fz.telegram_updates.map(fz.encode),
            st.just(tg),
            st.just(None),
        ),
        st.tuples(
            st.just("POST"),
            st.sampled_from(["/register", "/statuses", "/telegram/webhook"]),
            st.one_of(st.binary(max_size=300), st.sampled_from(fz.RAW_BODIES)),
            st.sampled_from([bearer, tg]),
            st.just(None),
        ),
        st.tuples(
            st.just("GET"), st.just("/tokens"), st.just(b""), st.just(bearer), fz.token_queries
        ),
        st.tuples(
            st.just("GET"),
            fz.path_tokens.map(
                lambda t: "/tokens/" + requests.utils.quote(t, safe="") + "/history"
            ),
            st.just(b""),
            st.just(bearer),
            st.just(None),
        ),
    )

    @hypothesis.seed(seed)
    @settings(
        max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(req=requests_)
    def prop(req):
        method, path, body, headers, query = req
        before = counts()
        response = session.request(
            method,
            f"{url}{path}",
            data=body if method == "POST" else None,
            params=query,
            timeout=30,
            headers={**headers, "Content-Type": "application/json"}
            if method == "POST"
            else headers,
        )
        statuses[response.status_code] += 1
        problem = fz.error_shape_problem(
            response.status_code, response.content, response.headers.get("Content-Type")
        )
        if problem is None and 400 <= response.status_code < 500 and counts() != before:
            problem = "a rejected request changed the ledger"
        if problem:
            problems.append(f"{method} {path} {body[:120]!r}: {problem}")
            raise AssertionError(problem)

    started = time.monotonic()
    try:
        prop()
        failed = None
    except AssertionError as exc:
        failed = str(exc)
    finally:
        engine.dispose()
    return {
        "requests": sum(statuses.values()),
        "byStatus": dict(sorted(statuses.items())),
        "server5xx": sum(n for s, n in statuses.items() if s >= 500),
        "failure": failed,
        "problems": problems[:5],
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--examples",
        type=int,
        default=1500,
        help="schemathesis --max-examples per operation (0: skip)",
    )
    parser.add_argument(
        "--hypothesis",
        type=int,
        default=10_000,
        help="requests drawn from tests/fuzzing.py (0: skip)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--keep", default=None, help="directory for logs and the database")
    args = parser.parse_args(argv)
    if args.examples and not (BIN / "schemathesis").exists():
        parser.error(
            "schemathesis is not installed (the 'fuzz' extra): "
            "pip install -c constraints.txt -e '.[fuzz]'"
        )
    workdir = h.workdir_for("bridge-fuzz-", args.keep)
    figures: dict = {"workdir": str(workdir)}
    ok = True
    with serve(workdir, args.database_url) as (url, db_url):
        if args.examples:
            figures["schemathesis"] = run_schemathesis(
                url, db_url, workdir, args.examples, args.seed
            )
            ok &= figures["schemathesis"]["exitCode"] == 0
        if args.hypothesis:
            figures["hypothesis"] = run_hypothesis(url, db_url, args.hypothesis, args.seed)
            ok &= (
                figures["hypothesis"]["failure"] is None and figures["hypothesis"]["server5xx"] == 0
            )
        server_errors = (
            (workdir / "gunicorn.log").read_text(errors="replace").count("unhandled error")
        )
        figures["serverLogUnhandledErrors"] = server_errors
        ok &= server_errors == 0
    h.say("== figure 3: hostile input ==")
    h.say(json.dumps(figures, indent=2, default=str))
    h.say("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
