"""Plumbing of the reliability runs (``bench/faults.py``, ``bench/crashes.py``).

Starts the pieces of a production-style bridge as separate processes on
127.0.0.1 — the Reteno simulator (``python -m bridge.sandbox``), gunicorn
serving ``app:app`` with real credentials pointing ``RETENO_BASE_URL`` at the
simulator, and ``flask --app app bridge deliver`` workers — sends
registrations over HTTP from a bounded pool of threads, and reads the truth
back from three places: what the clients were acknowledged (2xx), what the
ledger holds, and what the simulator received (per token and per contact).

Every process is a :class:`bench.common.Proc`: started in its own session and
ended by its own process group id, never by name. Only the standard library,
``requests`` and SQLAlchemy are used.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests
from sqlalchemy import create_engine, text

from bench.common import PYTHON, ROOT, Proc, free_port, say

API_KEY = "reliability-api-key-0123456789"
APP_UUID = "5f0c6a1e-2b7d-4c1a-9e8f-3a2b1c0d9e8f"
RETENO_KEY = "reliability-reteno-key-0123456789"
TOKEN_BASE = 7_000_000_000  # registration i carries chat id TOKEN_BASE + i


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until truthy; raise ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(requests.RequestException, OSError):
            value = predicate()
            if value:
                return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)


# --- processes (bench.common.Proc) -----------------------------------------------------------


@dataclass
class Simulator:
    proc: Proc
    url: str

    def stats(self) -> dict:
        return requests.get(f"{self.url}/stats", timeout=30).json()

    def contacts(self) -> list[dict]:
        return requests.get(f"{self.url}/contacts", timeout=600).json()["contacts"]


def start_simulator(
    workdir: Path,
    *,
    failure_rate: float = 0.0,
    failures: str = "500,503,429,429-retry-after,timeout,drop",
    timeout_seconds: float = 2.0,
    latency_ms: float = 0.0,
    rps: float = 0.0,
    seed: int | None = None,
) -> Simulator:
    port = free_port()
    argv = [
        PYTHON,
        "-m",
        "bridge.sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--app-uuid",
        APP_UUID,
        "--api-key",
        RETENO_KEY,
        "--auth",
        "header",
        "--rps",
        str(rps),
        "--latency-ms",
        str(latency_ms),
        "--failure-rate",
        str(failure_rate),
        "--failures",
        failures,
        "--timeout-seconds",
        str(timeout_seconds),
    ]
    if seed is not None:
        argv += ["--seed", str(seed)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = Proc("simulator", argv, env, workdir / "simulator.log").start()
    sim = Simulator(proc, f"http://127.0.0.1:{port}")
    wait_until(lambda: requests.get(f"{sim.url}/stats", timeout=2).ok, 30, what="simulator up")
    return sim


# --- nginx in front (the shipped configuration) ---------------------------------------------

NGINX = "/usr/sbin/nginx"  # Debian's nginx package
SHIPPED_NGINX = ROOT / "deploy" / "nginx" / "reteno-bridge.conf"


def nginx_conf(prefix: Path, listen: int, upstream: int) -> Path:
    """A main configuration for an unprivileged nginx in ``prefix`` that includes the
    shipped server block with only its ports changed."""
    shipped = SHIPPED_NGINX.read_text()
    for old, new in (
        ("    listen 80;", f"    listen 127.0.0.1:{listen};"),
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};"),
    ):
        assert shipped.count(old) == 1, old
        shipped = shipped.replace(old, new)
    (prefix / "reteno-bridge.conf").write_text(shipped)
    temp = {name: prefix / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers reach the temp paths
    main = prefix / "nginx.conf"
    main.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} warn;\n"
        "events { worker_connections 2048; }\n"
        "http {\n  access_log off;\n"
        + "".join(f"  {name}_temp_path {path};\n" for name, path in temp.items())
        + f"  include {prefix / 'reteno-bridge.conf'};\n}}\n"
    )
    return main


# --- the database ---------------------------------------------------------------------------


@contextlib.contextmanager
def database(url: str | None, workdir: Path):
    """A fresh, migrated bridge database: a SQLite file in ``workdir``, or a new
    uuid-named database on the PostgreSQL server of ``url`` (dropped afterwards)."""
    if not url or url.startswith("sqlite"):
        yield url or f"sqlite:///{workdir / 'bridge.sqlite3'}"
        return
    name = f"bridge_reliability_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bridge_env(workdir: Path, db_url: str, sim: Simulator, **extra) -> dict:
    """Environment of every bridge process: credentials set, upstream = the simulator."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RETENO_", "BRIDGE_", "TELEGRAM_", "FLASK_"))
    }
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "RETENO_APP_UUID": APP_UUID,
            "RETENO_API_KEY": RETENO_KEY,
            "RETENO_BASE_URL": sim.url,
            "RETENO_AUTH": "header",
            "BRIDGE_API_KEYS": API_KEY,
            "BRIDGE_DATABASE_URL": db_url,
            "BRIDGE_INSTANCE_PATH": str(workdir / "instance"),
            "BRIDGE_LOG_LEVEL": "WARNING",
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def migrate(env: dict, workdir: Path) -> None:
    with open(workdir / "migrate.log", "ab") as log:
        subprocess.run(
            [PYTHON, "-m", "flask", "--app", "app", "bridge", "migrate"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=120,
        )


def gunicorn(name: str, env: dict, workdir: Path, workers: int = 2) -> tuple[Proc, str]:
    port = free_port()
    argv = [
        PYTHON,
        "-m",
        "gunicorn",
        "-w",
        str(workers),
        "-b",
        f"127.0.0.1:{port}",
        "--timeout",
        "60",
        "--graceful-timeout",
        "5",
        "app:app",
    ]
    return Proc(name, argv, env, workdir / f"{name}.log"), f"http://127.0.0.1:{port}"


def wait_healthy(url: str, timeout: float = 60.0) -> None:
    wait_until(
        lambda: requests.get(f"{url}/healthz", timeout=2).status_code == 200,
        timeout,
        what=f"{url}/healthz",
    )


def deliver_worker(name: str, env: dict, workdir: Path, poll: float = 0.2) -> Proc:
    argv = [PYTHON, "-m", "flask", "--app", "app", "bridge", "deliver", "--poll", str(poll)]
    return Proc(name, argv, env, workdir / f"{name}.log")


def start_servers(
    env: dict, workdir: Path, servers: int, gunicorn_workers: int, started: list[Proc]
) -> tuple[list[Proc], list[str]]:
    """``servers`` gunicorn instances of the bridge, started and healthy; them and their
    URLs. Each is also added to ``started`` as soon as it runs, so that the caller
    stops it even if a later one fails to start."""
    procs, urls = [], []
    for n in range(servers):
        proc, url = gunicorn(f"gunicorn{n + 1}", env, workdir, gunicorn_workers)
        started.append(proc.start())
        procs.append(proc)
        urls.append(url)
    for url in urls:
        wait_healthy(url)
    return procs, urls


def start_workers(env: dict, workdir: Path, workers: int, started: list[Proc]) -> list[Proc]:
    """``workers`` ``bridge deliver`` processes, started (and added to ``started``)."""
    procs = []
    for n in range(workers):
        started.append(deliver_worker(f"worker{n + 1}", env, workdir).start())
        procs.append(started[-1])
    return procs


def run_figures(load: LoadResult, db_url: str, drained: bool, servers: int) -> dict:
    """The figures every scenario reports about its run, beside :func:`verify`'s."""
    return {
        "drained": drained,
        "responses": {str(k): v for k, v in sorted(load.statuses.items(), key=str)},
        "database": "postgresql" if db_url.startswith("postgresql") else "sqlite",
        "servers": servers,
    }


def stop_and_read_logs(procs: list[Proc], workdir: Path, figures: dict) -> dict:
    """Stop ``procs`` (so that their logs are complete), then count the log lines that
    show a secret or personal data into ``figures``; returns ``figures``."""
    for proc in procs:
        proc.stop()
    figures["logLinesWithSecretsOrPersonalData"] = leaks_in_logs(workdir)
    return figures


def workdir_for(prefix: str, keep: str | None) -> Path:
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=prefix))


# --- load ------------------------------------------------------------------------------------


IDENTITIES = ("contactId", "externalCustomerId", "phone", "email")


def token_object(i: int) -> dict:
    """Registration ``i``: its own chat id and one identifier, the four kinds in turn."""
    kind = IDENTITIES[i % 4]
    value: object = {
        "contactId": 1_000_000 + i,
        "externalCustomerId": f"customer-{i}",
        "phone": f"+380 {500000000 + i}",
        "email": f"user{i}@example.com",
    }[kind]
    return {"token": TOKEN_BASE + i, kind: value}


def identity_of(i: int) -> tuple[str, str]:
    obj = token_object(i)
    kind = next(k for k in IDENTITIES if k in obj)
    value = obj[kind]
    if kind == "phone":
        value = "".join(c for c in str(value) if c.isdigit())
    return kind, str(value)


@dataclass
class LoadResult:
    acked: dict[int, int] = field(default_factory=dict)  # i -> registration id (2xx)
    statuses: Counter = field(default_factory=Counter)  # HTTP status or error kind
    duplicates_acked: int = 0  # 2xx with duplicate: true (a retry of a committed request)
    seconds: float = 0.0


def send_load(
    urls: list[str],
    count: int,
    *,
    concurrency: int = 8,
    per_request: int = 1,
    retry: bool = True,
    deadline: float = 600.0,
    rate: float | None = None,
    stop: threading.Event | None = None,
    start: int = 0,
    into: LoadResult | None = None,
) -> LoadResult:
    """POST registrations start..start+count-1 to ``urls`` (round robin) from
    ``concurrency`` threads.

    A request that gets no 2xx (connection refused or reset while a server is
    down, a 5xx) is sent again after a pause when ``retry`` is set, as a bot
    backend would, until ``deadline`` seconds have passed. ``rate`` caps the
    requests per second (to spread the load over a crash schedule); once ``stop`` is
    set, no request is sent or retried. ``into``: the result to fill (read it while the
    load runs), else a new one.
    """
    result = into if into is not None else LoadResult()
    lock = threading.Lock()
    end_i = start + count
    chunks = [list(range(s, min(end_i, s + per_request))) for s in range(start, end_i, per_request)]
    next_chunk = iter(range(len(chunks)))
    started = time.monotonic()
    end = started + deadline
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def pace(n: int) -> None:
        if rate:
            due = started + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def run(worker: int) -> None:
        session = requests.Session()
        while True:
            with lock:
                n = next(next_chunk, None)
            if n is None or (stop and stop.is_set()):
                return
            pace(n)
            ids = chunks[n]
            body = (
                token_object(ids[0])
                if per_request == 1
                else {"tokens": [token_object(i) for i in ids]}
            )
            attempt = 0
            while time.monotonic() < end and not (stop and stop.is_set()):
                url = urls[(n + attempt) % len(urls)]
                attempt += 1
                try:
                    response = session.post(
                        f"{url}/register", json=body, headers=headers, timeout=30
                    )
                    outcome: object = response.status_code
                except requests.RequestException as exc:
                    outcome, response = type(exc).__name__, None
                    session = requests.Session()
                with lock:
                    result.statuses[outcome] += 1
                if response is not None and 200 <= response.status_code < 300:
                    registrations = response.json()["registrations"]
                    with lock:
                        for i, reg in zip(ids, registrations, strict=True):
                            result.acked[i] = reg["id"]
                            result.duplicates_acked += bool(reg["duplicate"])
                    break
                if response is not None and 400 <= response.status_code < 500:
                    break  # the bridge refused it: not ours to retry
                if not retry:
                    break
                time.sleep(0.05 + random.random() * 0.2)

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - started
    return result


# --- the truth -------------------------------------------------------------------------------


def ledger_rows(db_url: str) -> dict[str, list[tuple[int, str, int]]]:
    """token -> [(registration id, state, attempts)] straight from the ledger's table."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT token, id, state, attempts FROM bridge_registrations ORDER BY id")
            )
            out: dict[str, list[tuple[int, str, int]]] = {}
            for token, rid, state, attempts in rows:
                out.setdefault(token, []).append((rid, state, attempts))
        return out
    finally:
        engine.dispose()


def queued_count(db_url: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM bridge_registrations WHERE state = 'queued'")
                ).scalar()
            )
    finally:
        engine.dispose()


def wait_drained(db_url: str, timeout: float, on_wait=None) -> bool:
    """Wait until no registration is queued; False if ``timeout`` ran out first."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        depth = queued_count(db_url)
        if depth == 0:
            return True
        if on_wait and depth != last:
            on_wait(depth)
        last = depth
        time.sleep(0.5)
    return queued_count(db_url) == 0


def upstream_counts(contacts: list[dict]) -> tuple[Counter, Counter, dict[str, set]]:
    """Per token and per (token, contact): how often the simulator stored it; and which
    identities (identifier kind, value) of the contacts holding each token."""
    per_token: Counter = Counter()
    per_identity: Counter = Counter()
    holders: dict[str, set] = {}
    for contact in contacts:
        ident = tuple((k, str(contact[k])) for k in IDENTITIES if contact.get(k) is not None)
        for token in contact["tokens"]:
            per_token[token] += 1
            per_identity[(token, ident)] += 1
            holders.setdefault(token, set()).update(ident)
    return per_token, per_identity, holders


def verify(count: int, load: LoadResult, db_url: str, sim: Simulator) -> dict:
    """Compare 2xx acknowledgements, the ledger and the simulator; the figures."""
    ledger = ledger_rows(db_url)
    per_token, per_identity, holders = upstream_counts(sim.contacts())
    missing_in_ledger, not_delivered, lost, wrong_identity = [], [], [], []
    for i in load.acked:
        token = str(TOKEN_BASE + i)
        rows = ledger.get(token, [])
        if not rows:
            missing_in_ledger.append(token)
        elif not any(state == "delivered" for _rid, state, _a in rows):
            not_delivered.append(token)
        if per_token.get(token, 0) == 0:
            lost.append(token)
        elif identity_of(i) not in holders.get(token, set()):
            wrong_identity.append(token)
    sent_twice = sorted(t for t, n in per_token.items() if n > 1)
    extra_sends = sum(n - 1 for n in per_token.values() if n > 1)
    unexpected = sorted(set(per_token) - {str(TOKEN_BASE + i) for i in range(count)})
    return {
        "registrations": count,
        "acknowledged": len(load.acked),
        "acknowledgedAsDuplicate": load.duplicates_acked,
        "inLedger": sum(1 for i in load.acked if str(TOKEN_BASE + i) in ledger),
        "delivered": sum(1 for i in load.acked if per_token.get(str(TOKEN_BASE + i), 0) > 0),
        "lost": len(set(lost) | set(missing_in_ledger) | set(not_delivered)),
        "missingInLedger": len(missing_in_ledger),
        "notDeliveredInLedger": len(not_delivered),
        "missingAtSimulator": len(lost),
        "wrongIdentity": len(wrong_identity),
        "sentTwice": len(sent_twice),
        "extraSends": extra_sends,
        "sentTwicePerIdentity": sum(1 for n in per_identity.values() if n > 1),
        "unexpectedTokens": len(unexpected),
        "examples": {
            "lost": sorted(set(lost) | set(missing_in_ledger) | set(not_delivered))[:10],
            "sentTwice": sent_twice[:10],
        },
    }


def leaks_in_logs(workdir: Path) -> int:
    """Log lines (of every process of the run) holding a credential, an e-mail address
    or a phone number the run sent: there must be none."""
    import re

    pattern = re.compile(
        "|".join(
            [
                re.escape(API_KEY),
                re.escape(RETENO_KEY),
                r"user\d+@example\.com",
                r"\+?380[ ]?5\d{8}",
            ]
        )
    )
    found = 0
    for path in workdir.glob("*.log"):
        with open(path, errors="replace") as fh:
            found += sum(1 for line in fh if pattern.search(line))
    return found


def print_figures(title: str, figures: dict) -> None:
    say(f"== {title} ==")
    for key, value in figures.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, sort_keys=True)
        say(f"  {key:28s} {value}")
