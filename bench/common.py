"""Shared plumbing of the ``bench/`` scripts: :class:`Proc` and :func:`free_port` for
every script (the reliability runs' own pieces are in ``bench/harness.py``).

Starts and stops what a benchmark needs (the Reteno simulator as its own
process, gunicorn serving the bridge or a baseline app, ``bridge deliver``),
runs ``wrk`` with a Lua script and parses its latency percentiles, samples
resident memory from ``/proc``, bulk-loads a ledger with plain SQL and checks
that the machine is quiet before measuring. Only the standard library and the
project's own dependencies are used; the load generator is ``wrk``
(``apt-get install wrk``).

Every process is started in its own session and stopped by its own process
id (never by name), so a benchmark leaves nothing behind even on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The gunicorn settings the bridge ships with (threaded workers, preloading, the delivery
# thread started with each worker): Stack.gunicorn(config=SERVED_CONFIG).
SERVED_CONFIG = "python:bridge.gunicorn_conf"
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PYTHON = sys.executable
BIN = Path(PYTHON).parent
API_KEY = "bench-api-key-0123456789abcdef"
APP_UUID = "0b7e3a4e-6f0e-4a57-9d7c-2a1f3b4c5d6e"
RETENO_KEY = "bench-reteno-key-0123456789"
QUIET_LOAD = 0.7


# --- output ------------------------------------------------------------------------


def say(*parts) -> None:
    print(*parts, flush=True)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def machine() -> dict:
    """What the figures were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memGiB": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
        "wrk": wrk_version(),
    }


def save_result(name: str, result: dict) -> Path:
    """Write the figures of one run to ``bench/results/<name>.json`` (git-ignored)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "loadavgAtEnd": loadavg(),
        **result,
    }
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


# --- a quiet machine ---------------------------------------------------------------------


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over ``seconds`` (0..1), from /proc/stat."""

    def sample():
        fields_ = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields_[3] + fields_[4]
        return sum(fields_), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    total = max(1, total1 - total0)
    return 1.0 - (idle1 - idle0) / total


def wait_quiet(max_load: float = QUIET_LOAD, timeout: float = 300.0) -> dict:
    """Wait until the 1-minute load average is below ``max_load``; report what was seen."""
    started = time.monotonic()
    first = loadavg()
    if first >= max_load:
        say(f"# waiting for a quiet machine (load average {first:.2f} >= {max_load}) ...")
    while loadavg() >= max_load and time.monotonic() - started < timeout:
        time.sleep(5)
    load = loadavg()
    quiet = load < max_load
    if not quiet:
        say(f"# WARNING: the machine is not quiet (load average {load:.2f}); figures may be low")
    return {"loadavg": load, "quiet": quiet, "waitedSeconds": round(time.monotonic() - started)}


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(
    url: str, method: str = "GET", body=None, headers: dict | None = None, timeout: float = 10.0
):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            return exc.code, json.loads(payload or b"null")
        except ValueError:
            return exc.code, payload.decode(errors="replace")


def wait_http(url: str, timeout: float = 30.0, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early; see {proc.log}:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


class Proc:
    """A child process in a session of its own: it leads its process group, so it and
    the processes it starts (gunicorn's workers) are signalled together, by that group's
    id, never by name. Its output goes to ``log`` (appended: a process started again,
    ``start()`` after ``stop()`` or ``kill9()``, adds to it; ``starts`` counts)."""

    def __init__(self, name: str, argv: list[str], env: dict, log: Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.popen: subprocess.Popen | None = None
        self.starts = 0
        self._log_file = None

    def start(self) -> Proc:
        self._close_log()
        self._log_file = open(self.log, "ab")  # noqa: SIM115 - closed in stop()/kill9()
        self._log_file.write(f"\n--- start #{self.starts + 1} of {self.name} ---\n".encode())
        self._log_file.flush()
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def kill9(self) -> None:
        """``kill -9`` the process and every process of its group."""
        self._signal_group(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=30)
        self._close_log()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the group, SIGKILL after ``timeout`` s; then SIGKILL to whatever of
        the group is left (a child that outlived its parent)."""
        if self.alive:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout=30)
        self._signal_group(signal.SIGKILL)
        self._close_log()

    def _signal_group(self, sig: int) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)  # the group this child leads, nothing else

    def _close_log(self) -> None:
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.close()


class Stack(contextlib.ExitStack):
    """Processes and a scratch directory, all released on exit (also on Ctrl-C)."""

    def __init__(self, name: str, keep: bool = False):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.keep = keep
        self.procs: list[Proc] = []

    def __enter__(self):
        super().__enter__()
        self.callback(self._cleanup)
        return self

    def _cleanup(self):
        for proc in reversed(self.procs):
            proc.stop()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            say(f"# kept {self.dir}")

    def spawn(self, name: str, argv: list[str], env: dict | None = None) -> Proc:
        """``argv`` started as :class:`Proc` ``name`` (environment: this one plus ``env``),
        stopped with the stack."""
        proc = Proc(name, argv, {**os.environ, **(env or {})}, self.dir / f"{name}.log")
        self.procs.append(proc.start())
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    # --- the pieces ----------------------------------------------------------------

    def simulator(self, rps: float = 200, latency_ms: float = 100, name: str = "simulator") -> str:
        """The Reteno simulator as a separate process; its base URL."""
        port = free_port()
        proc = self.spawn(
            name,
            [
                PYTHON,
                "-m",
                "bridge.sandbox",
                "--port",
                str(port),
                "--app-uuid",
                APP_UUID,
                "--api-key",
                RETENO_KEY,
                "--rps",
                f"{rps:g}",
                "--latency-ms",
                f"{latency_ms:g}",
            ],
        )
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/stats", proc=proc)
        return url

    def bridge_env(
        self,
        db: Path,
        simulator_url: str | None,
        batch_size: int = 1000,
        background: bool = True,
        **extra,
    ) -> dict:
        env = {
            "BRIDGE_DATABASE_URL": f"sqlite:///{db}",
            "BRIDGE_API_KEYS": API_KEY,
            "BRIDGE_BATCH_SIZE": str(batch_size),
            "BRIDGE_BACKGROUND_DELIVERY": "true" if background else "false",
            "BRIDGE_INSTANCE_PATH": str(self.dir / "instance"),
            # the runs read the outbox from /healthz while they wait: fresh counts
            "BRIDGE_HEALTH_CACHE_SECONDS": "0",
            "RETENO_APP_UUID": APP_UUID,
            "RETENO_API_KEY": RETENO_KEY,
            # Nothing listens here unless a simulator is given: delivery just retries.
            "RETENO_BASE_URL": simulator_url or f"http://127.0.0.1:{free_port()}",
        }
        for key in ("FLASK_APP", "FLASK_RUN_FROM_CLI"):
            env.pop(key, None)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def migrate(self, env: dict) -> None:
        subprocess.run(
            [PYTHON, "-m", "flask", "--app", "app", "bridge", "migrate"],
            cwd=ROOT,
            env={**os.environ, **env},
            check=True,
            capture_output=True,
        )

    def gunicorn(
        self,
        target: str,
        env: dict | None = None,
        workers: int = 2,
        name: str = "gunicorn",
        extra: list[str] | None = None,
        config: str = "/dev/null",
    ) -> tuple[str, Proc]:
        """``gunicorn -w N target`` on a free port: gunicorn's defaults (sync workers, no
        preloading) and the flags in ``extra``; ``config`` names the settings gunicorn reads
        (``/dev/null``: none, not even a ``gunicorn.conf.py`` in the directory it starts
        in; ``SERVED_CONFIG`` for the layout the bridge ships with)."""
        port = free_port()
        proc = self.spawn(
            name,
            [
                str(BIN / "gunicorn"),
                "-c",
                config,
                "-w",
                str(workers),
                "-b",
                f"127.0.0.1:{port}",
                "--backlog",
                "2048",
                "--graceful-timeout",
                "5",
                *(extra or []),
                target,
            ],
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", proc=proc)
        # Both workers must be up before load starts.
        deadline = time.monotonic() + 30
        while len(children(proc.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        return url, proc

    def deliver_worker(self, env: dict, name: str = "deliver") -> Proc:
        return self.spawn(
            name, [PYTHON, "-m", "flask", "--app", "app", "bridge", "deliver"], env=env
        )


# --- /proc: memory ------------------------------------------------------------------


def children(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out.extend(int(c) for c in (task / "children").read_text().split())
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out = [pid]
    for child in children(pid):
        out += process_tree(child)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds used so far by these processes (all their threads)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields_[11]) + int(fields_[12])) / tick
    return total


class CpuMeter:
    """CPU used by the process trees of some ``Proc``s between start() and stop()."""

    def __init__(self, **procs: Proc | None):
        self.procs = {name: proc for name, proc in procs.items() if proc is not None}
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {name: cpu_seconds(process_tree(proc.pid)) for name, proc in self.procs.items()}

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        end = self._now()
        self.used = {name: end[name] - self._start[name] for name in end}
        return self.used

    def per(self, count: int) -> dict[str, float]:
        """Microseconds of CPU per unit of ``count`` (e.g. per request), by process."""
        return {name: round(1e6 * used / max(1, count), 1) for name, used in self.used.items()}


def rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --- wrk ------------------------------------------------------------------------------------


def wrk_version() -> str:
    exe = shutil.which("wrk")
    if not exe:
        return "missing"
    out = subprocess.run([exe, "-v"], capture_output=True, text=True)
    return (out.stdout or out.stderr).split("\n", 1)[0].strip()


def require_wrk() -> str:
    exe = shutil.which("wrk")
    if not exe:
        sys.exit("wrk is not installed: apt-get install -y wrk (Debian's package)")
    return exe


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    non2xx: int
    errors: dict = field(default_factory=dict)
    statuses: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)  # us of CPU per request, by process (optional)

    def line(self) -> str:
        errs = sum(self.errors.values())
        cpu = (
            "  CPU/request " + ", ".join(f"{k} {v:.0f} us" for k, v in self.cpu.items())
            if self.cpu
            else ""
        )
        return (
            f"{self.rps:8.0f} req/s  p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms"
            f"  max {self.max_ms:7.2f} ms  ({self.requests} requests, "
            f"{self.non2xx} non-2xx, {errs} socket errors){cpu}"
        )

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in vars(self).items()}


def _wrk_json(
    url: str,
    script: Path | str,
    seconds: float,
    connections: int,
    threads: int,
    args: list[str] | None,
    timeout_s: int,
) -> dict:
    """Run wrk with a Lua script whose ``done`` prints one ``WRKJSON {...}`` line; that."""
    exe = require_wrk()
    argv = [
        exe,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    if args:
        argv += ["--", *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON ") :])
    raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")


def wrk(
    url: str,
    script: Path | str,
    seconds: float,
    connections: int = 32,
    threads: int = 2,
    args: list[str] | None = None,
    timeout_s: int = 5,
) -> WrkResult:
    """Run wrk with a Lua script whose ``done`` prints one ``WRKJSON {...}`` line."""
    data = _wrk_json(url, script, seconds, connections, threads, args, timeout_s)
    secs = data["duration_us"] / 1e6
    return WrkResult(
        requests=data["requests"],
        seconds=secs,
        rps=data["requests"] / secs if secs else 0.0,
        p50_ms=data["p50"] / 1000,
        p90_ms=data["p90"] / 1000,
        p99_ms=data["p99"] / 1000,
        p999_ms=data["p999"] / 1000,
        max_ms=data["max"] / 1000,
        mean_ms=data["mean"] / 1000,
        non2xx=data["non2xx"],
        errors=data["errors"],
        statuses={k: v for k, v in data.get("statuses", {}).items() if v},
    )


@dataclass
class PacedResult:
    """An open-loop run (:func:`wrk_paced`): latencies from each request's intended send
    time on a fixed schedule, so a slow answer cannot hold the next requests back
    (no coordinated omission); ``sent_*`` are wrk's own, from the actual send."""

    offered_rps: float  # the schedule's rate
    sent_rps: float  # requests sent / duration
    rps: float  # answers matched to their request / duration: the achieved rate
    requests: int  # answers matched to their request
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    sent_p50_ms: float
    sent_p99_ms: float
    late: int  # requests that left > 2 ms after their intended time (no idle connection)
    lag_max_ms: float  # the latest a request left after its intended time
    unanswered: int  # sent, no matching answer by the end (in flight or failed)
    non2xx: int
    errors: dict = field(default_factory=dict)

    def line(self) -> str:
        errs = sum(self.errors.values())
        return (
            f"offered {self.offered_rps:5.0f} req/s, achieved {self.rps:5.0f} req/s"
            f"  p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms"
            f"  max {self.max_ms:7.2f} ms from the intended send (wrk's own, from the"
            f" actual send: p99 {self.sent_p99_ms:.2f} ms)  ({self.requests} answers,"
            f" {self.late} sent > 2 ms late, {self.unanswered} unanswered,"
            f" {self.non2xx} non-2xx, {errs} socket errors)"
        )

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in vars(self).items()}


def wrk_paced(
    url: str,
    script: Path | str,
    seconds: float,
    rate: float,
    connections: int = 32,
    threads: int = 2,
    args: list[str] | None = None,
    timeout_s: int = 5,
) -> PacedResult:
    """wrk with :data:`PACED_REGISTER_LUA`: ``rate`` requests a second in all, on a fixed
    schedule (each wrk thread ``rate / threads``), open loop while a connection is free."""
    per_thread = rate / threads
    data = _wrk_json(
        url, script, seconds, connections, threads, [f"{per_thread:.3f}", *(args or [])], timeout_s
    )
    secs = data["duration_us"] / 1e6
    return PacedResult(
        offered_rps=rate,
        sent_rps=data["sent"] / secs if secs else 0.0,
        rps=data["answered"] / secs if secs else 0.0,
        requests=data["answered"],
        seconds=secs,
        p50_ms=data["p50"] / 1000,
        p90_ms=data["p90"] / 1000,
        p99_ms=data["p99"] / 1000,
        p999_ms=data["p999"] / 1000,
        max_ms=data["max"] / 1000,
        sent_p50_ms=data["wrk_p50"] / 1000,
        sent_p99_ms=data["wrk_p99"] / 1000,
        late=data["late"],
        lag_max_ms=data["lag_max"] / 1000,
        unanswered=data["sent"] - data["answered"],
        non2xx=data["non2xx"],
        errors=data["errors"],
    )


# --- the ledger, loaded directly ---------------------------------------------------------


def bulk_load(
    db: Path, count: int, events: bool = True, chunk: int = 50_000, seed: int = 7
) -> float:
    """Insert ``count`` delivered registrations (and their events) with plain SQL.

    Tokens are ``1_000_000_000 + i``, e-mail ``user<i>@example.com``, external
    ids ``cust-<i>``; every tenth row also has a phone. Returns seconds taken.
    The database must be migrated already.
    """
    started = time.perf_counter()
    rng = random.Random(seed)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    base = datetime(2026, 1, 1)
    start_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM bridge_registrations").fetchone()[0]
    reg_sql = (
        "INSERT INTO bridge_registrations (id, token, contact_id, external_customer_id, phone,"
        " email, matched_by, match_value, state, attempts, next_attempt_at, lease_id,"
        " last_error, created_at, updated_at, delivered_at, removed_at, removal_reason)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,NULL,NULL,NULL,?,?,?,NULL,NULL)"
    )
    ev_sql = (
        "INSERT INTO bridge_events (at, registration_id, token, kind, detail) VALUES (?,?,?,?,?)"
    )
    conn.execute("BEGIN")
    for lo in range(0, count, chunk):
        regs, evs = [], []
        for i in range(lo, min(count, lo + chunk)):
            rid = start_id + i + 1
            token = str(1_000_000_000 + i)
            email = f"user{i}@example.com"
            ext = f"cust-{i}"
            phone = f"380{rng.randrange(10**8, 10**9)}" if i % 10 == 0 else None
            at = (base + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S.%f")
            regs.append(
                (
                    rid,
                    token,
                    None,
                    ext,
                    phone,
                    email,
                    "externalCustomerId",
                    ext,
                    "delivered",
                    1,
                    at,
                    at,
                    at,
                )
            )
            if events:
                evs.append(
                    (
                        at,
                        rid,
                        token,
                        "submitted",
                        json.dumps(
                            {
                                "source": "api",
                                "matchedBy": "externalCustomerId",
                                "duplicate": False,
                                "state": "queued",
                            }
                        ),
                    )
                )
                evs.append(
                    (
                        at,
                        rid,
                        token,
                        "delivered",
                        json.dumps({"attempt": 1, "status": 200, "batch": 1000, "ms": 101.0}),
                    )
                )
        conn.executemany(reg_sql, regs)
        if evs:
            conn.executemany(ev_sql, evs)
    conn.execute("COMMIT")
    # No ANALYZE: a served ledger has no planner statistics either.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def simulator_stats(url: str) -> dict:
    return http_json(f"{url}/stats")[1]


def median(values):
    values = sorted(values)
    n = len(values)
    if not n:
        return float("nan")
    mid = n // 2
    return values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2


# --- wrk Lua scripts ---------------------------------------------------------------------

_LUA_COMMON = r"""
local thread_count = 0
function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50":%.0f,"p90":%.0f,"p99":%.0f,' ..
    '"p999":%.0f,"max":%.0f,"mean":%.1f,"non2xx":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean,
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""

# POST /register. Arguments: mode (unique | dup | batch), first token, batch size.
REGISTER_LUA = r"""
local counter = 0
local base = 1000000000
local mode = "unique"
local batch = 1
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer __KEY__"

function init(args)
  mode = args[1] or "unique"
  base = tonumber(args[2] or "1000000000") + tid * 100000000
  batch = tonumber(args[3] or "1")
end

function request()
  counter = counter + 1
  if mode == "dup" then
    return wrk.format(nil, "/register", nil, '{"token":424242,"email":"dup@example.com"}')
  end
  if mode == "batch" then
    local parts = {}
    for i = 1, batch do
      local t = base + (counter - 1) * batch + i
      parts[i] = string.format('{"token":%d,"externalCustomerId":"c%d"}', t, t)
    end
    return wrk.format(nil, "/register", nil, '{"tokens":[' .. table.concat(parts, ",") .. ']}')
  end
  local t = base + counter
  return wrk.format(nil, "/register", nil,
    string.format('{"token":%d,"email":"u%d@example.com"}', t, t))
end
"""

# GET /tokens?<kind>=<key i> for random i in [0, n). Arguments: kind (email | token), n.
LOOKUP_LUA = r"""
local kind = "email"
local n = 1
wrk.headers["Authorization"] = "Bearer __KEY__"

function init(args)
  kind = args[1] or "email"
  n = tonumber(args[2] or "1")
  math.randomseed(1234 + tid * 7919)
end

function request()
  local i = math.random(0, n - 1)
  local path
  if kind == "token" then
    path = string.format("/tokens?token=%d", 1000000000 + i)
  else
    path = string.format("/tokens?email=user%d@example.com", i)
  end
  return wrk.format("GET", path)
end
"""


# POST /register, new tokens, open loop at a fixed rate. Arguments: requests a second for
# this wrk thread, first token. wrk's ``delay()`` is called before every request of every
# connection; here it hands out the thread's next slot of a fixed schedule (one every
# 1/rate s from the first call) and waits until then, so requests leave on schedule
# whenever a connection is free: a slow answer holds back only its own connection, not
# the schedule. Each answer is matched to its request by the token the bridge echoes,
# and its latency counts from the slot (the intended send time), so time a request waited
# for a free connection counts too (no coordinated omission). wrk's own percentiles, from
# the actual send, are given beside them. The clock is CLOCK_MONOTONIC through LuaJIT's
# FFI (Debian's wrk is built on LuaJIT). ``delay()`` waits whole milliseconds, rounded
# up; a request that leaves early counts from when it left.
PACED_REGISTER_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local counter = 0
local base = 1000000000
local interval = 0      -- us between two slots of this thread
local next_slot = nil   -- the next slot not handed out yet
local slots, head, tail = {}, 1, 0  -- slots handed out by delay(), oldest first
local intended = {}     -- token -> its slot
-- read by done() through thread:get, hence globals
lat = {}                -- per matched answer: us from the intended send time
sent, answered, bad, late, lag_max = 0, 0, 0, 0, 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer __KEY__"

local thread_count = 0
local threads = {}
function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
  threads[#threads + 1] = thread
end

function init(args)
  interval = 1000000 / tonumber(args[1])
  base = tonumber(args[2] or "1000000000") + tid * 100000000
end

function delay()
  local now = now_us()
  if next_slot == nil then next_slot = now end
  local slot = next_slot
  next_slot = next_slot + interval
  tail = tail + 1
  slots[tail] = slot
  local wait = (slot - now) / 1000
  if wait <= 0 then return 0 end
  return math.ceil(wait)
end

function request()
  counter = counter + 1
  local t = base + counter
  local body = string.format('{"token":%d,"email":"u%d@example.com"}', t, t)
  if next_slot == nil then  -- wrk's check of the script, before any delay(): not sent
    return wrk.format(nil, "/register", nil, body)
  end
  local now = now_us()
  local slot = now
  if head <= tail then
    slot = slots[head]
    slots[head] = nil
    head = head + 1
  end
  local lag = now - slot
  if lag > lag_max then lag_max = lag end
  if lag > 2000 then late = late + 1 end
  if slot > now then slot = now end  -- left early: count from when it left
  intended[t] = slot
  sent = sent + 1
  return wrk.format(nil, "/register", nil, body)
end

function response(status, headers, body)
  local now = now_us()
  if status < 200 or status > 299 then bad = bad + 1 end
  local token = tonumber(string.match(body or "", '"token"%s*:%s*"?(%d+)') or "")
  local slot = token and intended[token]
  if slot then
    intended[token] = nil
    answered = answered + 1
    lat[answered] = now - slot
  end
end

function done(summary, latency, requests)
  local all = {}
  local n_sent, n_answered, n_bad, n_late, max_lag = 0, 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    local l = thread:get("lat")
    for i = 1, #l do all[#all + 1] = l[i] end
    n_sent = n_sent + thread:get("sent")
    n_answered = n_answered + thread:get("answered")
    n_bad = n_bad + thread:get("bad")
    n_late = n_late + thread:get("late")
    max_lag = math.max(max_lag, thread:get("lag_max"))
  end
  table.sort(all)
  local function pct(p)
    if #all == 0 then return 0 end
    return all[math.max(1, math.ceil(p / 100 * #all))]
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"sent":%d,"answered":%d,"late":%d,' ..
    '"lag_max":%.0f,"p50":%.0f,"p90":%.0f,"p99":%.0f,"p999":%.0f,"max":%.0f,' ..
    '"wrk_p50":%.0f,"wrk_p99":%.0f,"non2xx":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, n_sent, n_answered, n_late, max_lag,
    pct(50), pct(90), pct(99), pct(99.9), pct(100),
    latency:percentile(50), latency:percentile(99), n_bad,
    e.connect, e.read, e.write, e.timeout))
end
"""


def lua(directory: Path, name: str, body: str, common: bool = True) -> Path:
    """``body`` as a wrk script file (with the shared ``setup``/``done`` unless not
    ``common``: :data:`PACED_REGISTER_LUA` has its own)."""
    path = Path(directory) / f"{name}.lua"
    path.write_text(body.replace("__KEY__", API_KEY) + (_LUA_COMMON if common else ""))
    return path
