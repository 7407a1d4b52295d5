"""The bridge as processes: start-up errors in one line, a clean stop on SIGTERM for
``bridge deliver``, for gunicorn's delivery threads and for the whole Procfile stack
under honcho. Real processes on 127.0.0.1; the upstream is the simulator, slowed
down so that a stop lands while a call is in flight."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from bench.common import free_port
from bridge.db import migrate
from bridge.sandbox import Simulator, SimulatorOptions
from bridge.sandbox import create_app as create_simulator_app
from tests.conftest import API_KEY, APP_UUID, BACKEND, RETENO_KEY
from tests.test_end_to_end import Server

pytestmark = [
    pytest.mark.real_http,
    pytest.mark.skipif(
        BACKEND == "postgres",
        reason="these processes keep their ledger in SQLite: run once, in the "
        "SQLite pass of the suite",
    ),
]
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
AUTH = {"Authorization": f"Bearer {API_KEY}"}
LATENCY = 2.0  # seconds the slow simulator takes to answer
SHIPPED = "python:bridge.gunicorn_conf"  # gunicorn's settings as the package ships them


def environment(tmp_path, **overrides) -> dict:
    """A bridge's environment: credentials, a SQLite ledger in ``tmp_path``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RETENO_", "BRIDGE_", "TELEGRAM_", "FLASK_"))
    }
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "RETENO_APP_UUID": APP_UUID,
            "RETENO_API_KEY": RETENO_KEY,
            "BRIDGE_API_KEYS": API_KEY,
            "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.sqlite3'}",
            "BRIDGE_INSTANCE_PATH": str(tmp_path / "instance"),
            "BRIDGE_UPSTREAM_READ_TIMEOUT": "5",
            "BRIDGE_UPSTREAM_CONNECT_TIMEOUT": "1",
        }
    )
    env.update({k: str(v) for k, v in overrides.items() if v is not None})
    for key in [k for k, v in overrides.items() if v is None]:
        env.pop(key, None)
    return env


def run(args, env, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def wait_until_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """A started server's port answers (a bounded wait on another process: no event can
    tell this test when it is ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} after {timeout:g} s")


@contextmanager
def gunicorn(env: dict, app: str, config: str = SHIPPED, stdout=subprocess.DEVNULL):
    """gunicorn serving ``app`` with ``config`` on a free port, once it listens:
    (the process, its port). Killed on the way out if the test did not stop it."""
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "gunicorn"), "--config", config, "--bind", f"127.0.0.1:{port}", app],
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_listening(port, server)
        yield server, port
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


# --- start-up errors: one line on stderr, exit status 1, no traceback ------------------


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [
        ["flask", "--app", "app", "bridge", "tokens"],
        ["flask", "--app", "app", "bridge", "migrate"],
        ["reteno-bridge", "deliver", "--once"],
        ["reteno-bridge", "migrate"],
        ["reteno-bridge", "serve", "--port", "1"],
        ["flask", "--app", "app", "run", "--port", "0"],
    ],
    ids=" ".join,
)
def test_a_missing_setting_stops_every_command_in_one_line(tmp_path, command):
    line = one_line_error(
        run([str(BIN / command[0]), *command[1:]], environment(tmp_path, RETENO_APP_UUID=None))
    )
    assert "RETENO_APP_UUID" in line


def test_an_unreachable_database_is_one_line_naming_it(tmp_path):
    env = environment(
        tmp_path, BRIDGE_DATABASE_URL="postgresql+psycopg://bridge:pw@127.0.0.1:1/nothing"
    )
    for command in (["reteno-bridge", "migrate"], ["reteno-bridge", "stats"]):
        line = one_line_error(run([str(BIN / command[0]), *command[1:]], env))
        assert "BRIDGE_DATABASE_URL" in line and "127.0.0.1:1" in line
        assert "pw" not in line


def test_a_schema_behind_is_one_line_naming_bridge_migrate(tmp_path):
    env = environment(tmp_path)
    line = one_line_error(run([str(BIN / "reteno-bridge"), "stats"], env))
    assert "bridge migrate" in line
    served = one_line_error(
        run(
            [
                str(BIN / "gunicorn"),
                "--config",
                SHIPPED,
                "--bind",
                f"127.0.0.1:{free_port()}",
                "bridge.factory:app",
            ],
            env,
        )
    )
    assert "bridge migrate" in served


def test_an_unknown_status_timezone_stops_start_up_in_one_line(tmp_path):
    env = environment(tmp_path, BRIDGE_STATUS_TIMEZONE="Europe/Atlantis")
    line = one_line_error(run([str(BIN / "reteno-bridge"), "stats"], env))
    assert "BRIDGE_STATUS_TIMEZONE" in line and "Europe/Atlantis" in line


def test_gunicorn_with_a_bad_setting_exits_1_in_one_line(tmp_path):
    env = environment(tmp_path, BRIDGE_BATCH_SIZE="lots")
    line = one_line_error(
        run(
            [
                str(BIN / "gunicorn"),
                "--config",
                SHIPPED,
                "--bind",
                f"127.0.0.1:{free_port()}",
                "app:app",
            ],
            env,
        )
    )
    assert "BRIDGE_BATCH_SIZE" in line


# --- a clean stop -------------------------------------------------------------------------


class SlowUpstream:
    """The simulator over HTTP, answering each tokens call after ``LATENCY`` seconds;
    ``called`` is set when a call has arrived (and is being answered)."""

    def __init__(self):
        self.called = threading.Event()

        def slow(seconds):
            self.called.set()
            time.sleep(seconds)

        self.simulator = Simulator(
            SimulatorOptions(
                app_uuid=APP_UUID, api_key=RETENO_KEY, rps=0, latency_ms=LATENCY * 1000
            ),
            sleep=slow,
        )
        self.server = Server(create_simulator_app(simulator=self.simulator))
        self.url = self.server.url


@pytest.fixture
def upstream():
    slow = SlowUpstream()
    yield slow
    slow.server.stop()


def register_tokens(tmp_path, base_url: str, tokens) -> None:
    url = f"sqlite:///{tmp_path / 'bridge.sqlite3'}"
    migrate(url)
    from bridge.factory import create_app

    app = create_app(
        {
            "RETENO_APP_UUID": APP_UUID,
            "RETENO_API_KEY": RETENO_KEY,
            "BRIDGE_API_KEYS": API_KEY,
            "BRIDGE_DATABASE_URL": url,
            "BRIDGE_BACKGROUND_DELIVERY": False,
            "RETENO_BASE_URL": base_url,
        }
    )
    client = app.test_client()
    response = client.post(
        "/register", headers=AUTH, json={"tokens": [{"token": t, "contactId": t} for t in tokens]}
    )
    assert response.status_code == 202
    app.extensions["reteno_bridge"].db.dispose()


def states(tmp_path) -> dict[str, str]:
    import sqlite3

    with sqlite3.connect(tmp_path / "bridge.sqlite3") as conn:
        return dict(conn.execute("SELECT token, state FROM bridge_registrations"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_bridge_deliver_stops_cleanly_and_a_restart_resends_nothing(tmp_path, upstream, signum):
    register_tokens(tmp_path, upstream.url, [101, 102, 103])
    env = environment(tmp_path, RETENO_BASE_URL=upstream.url, BRIDGE_BATCH_SIZE=1)
    worker = subprocess.Popen(
        [str(BIN / "flask"), "--app", "app", "bridge", "deliver"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert upstream.called.wait(30), "the worker made no upstream call"
        worker.send_signal(signum)
        # the call in flight is answered after LATENCY; the worker then exits at once
        _out, err = worker.communicate(timeout=LATENCY + 6)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err
    assert "delivery worker stopped" in err
    assert "Traceback" not in err
    # the calls in flight (up to BRIDGE_IN_FLIGHT of them) were finished and recorded;
    # nothing else was sent
    sent = upstream.simulator.received_counts()
    assert sent and set(sent.values()) == {1}
    assert {t for t, state in states(tmp_path).items() if state == "delivered"} == set(sent)
    assert {t for t, state in states(tmp_path).items() if state != "delivered"} <= {
        "101",
        "102",
        "103",
    } - set(sent)

    again = run([str(BIN / "reteno-bridge"), "deliver", "--once"], env)
    assert again.returncode == 0, again.stderr
    assert upstream.simulator.received_counts() == {"101": 1, "102": 1, "103": 1}
    assert set(states(tmp_path).values()) == {"delivered"}


def test_gunicorns_delivery_thread_finishes_its_call_on_sigterm(tmp_path, upstream):
    migrate(f"sqlite:///{tmp_path / 'bridge.sqlite3'}")
    env = environment(tmp_path, RETENO_BASE_URL=upstream.url, WEB_CONCURRENCY=1)
    with gunicorn(env, "bridge.factory:app", stdout=subprocess.PIPE) as (server, port):
        response = requests.post(
            f"http://127.0.0.1:{port}/register",
            headers=AUTH,
            json={"token": 201, "contactId": 201},
            timeout=10,
        )
        assert response.status_code == 202
        assert upstream.called.wait(30), "the delivery thread made no upstream call"
        server.send_signal(signal.SIGTERM)
        _out, err = server.communicate(timeout=LATENCY + 20)
    assert server.returncode == 0, err
    assert states(tmp_path) == {"201": "delivered"}
    assert upstream.simulator.received_counts() == {"201": 1}


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def stack(tmp_path, upstream):
    """The Procfile's processes under honcho: (honcho, the web port)."""
    if not Path("/proc").is_dir():
        pytest.skip("finding honcho's processes reads /proc")
    migrate(f"sqlite:///{tmp_path / 'bridge.sqlite3'}")
    port = free_port()
    env = environment(
        tmp_path,
        RETENO_BASE_URL=upstream.url,
        PORT=port,
        WEB_CONCURRENCY=1,
        METRICS_PORT=free_port(),
    )
    honcho = subprocess.Popen(
        [str(BIN / "honcho"), "start"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_listening(port, honcho)
        yield honcho, port, int(env["METRICS_PORT"])
    finally:
        for pid in descendants(honcho.pid):  # before honcho goes: they would be init's
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if honcho.poll() is None:
            honcho.kill()
        honcho.communicate()


def test_the_worker_serves_its_delivery_metrics_for_prometheus(stack):
    # the scrape target of docs/operating.md: deliveries are counted only where they happen
    _honcho, _port, metrics_port = stack
    wait_until_listening(metrics_port, _honcho)
    page = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    assert page.status_code == 200
    assert "bridge_delivery_delay_seconds" in page.text


def test_one_sigterm_stops_the_whole_stack(stack):
    honcho, _port, _metrics = stack
    processes = descendants(honcho.pid)
    assert any("gunicorn" in cmdline(p) for p in processes)
    assert any("reteno-bridge deliver" in cmdline(p) for p in processes)
    honcho.send_signal(signal.SIGTERM)
    output, _ = honcho.communicate(timeout=40)
    assert [
        p
        for p in processes
        if Path(f"/proc/{p}").exists() and "(Z)" not in Path(f"/proc/{p}/stat").read_text()
    ] == [], output


def test_a_dying_process_stops_the_rest(stack):
    honcho, port, _metrics = stack
    [worker] = [
        p
        for p in descendants(honcho.pid)
        if "reteno-bridge deliver" in cmdline(p) and "/bin/sh" not in cmdline(p)
    ]
    os.kill(worker, signal.SIGKILL)
    output, _ = honcho.communicate(timeout=40)
    assert honcho.returncode != 0, output
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_a_sigterm_while_workers_boot_stops_gunicorn_at_once(tmp_path):
    # gunicorn's SIGTERM to a worker that has not yet set its own signal handlers used
    # to be swallowed, and the stop waited out graceful_timeout (30 s); a slow fork
    # widens that moment so that the stop always lands in it
    (tmp_path / "plain.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    (tmp_path / "slow_fork.py").write_text(
        "import time\n\nfrom bridge import gunicorn_conf\n"
        "from bridge.gunicorn_conf import *  # noqa: F403\n\n\n"
        "def post_fork(server, worker):\n"
        "    time.sleep(3)\n"
        "    gunicorn_conf.post_fork(server, worker)\n"
    )
    env = environment(tmp_path, PYTHONPATH=str(tmp_path), WEB_CONCURRENCY=2)
    with gunicorn(env, "plain:app", config="python:slow_fork") as (server, _port):
        started = time.monotonic()
        server.terminate()
        _out, err = server.communicate(timeout=25)
    assert time.monotonic() - started < 20, err
    assert "Shutting down: Master" in err


def test_gunicorn_conf_serves_an_app_without_the_bridge_too(tmp_path):
    # the shipped settings serve any app (the benchmarks' bare app)
    (tmp_path / "plain.py").write_text(
        "from flask import Flask\napp = Flask(__name__)\n\n\n"
        "@app.get('/')\ndef index():\n    return 'ok'\n"
    )
    env = environment(tmp_path, PYTHONPATH=str(tmp_path))
    with gunicorn(env, "plain:app") as (server, port):
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).text == "ok"
        server.terminate()
        _out, err = server.communicate(timeout=30)
    assert "Worker failed to boot" not in err
