"""``reteno-bridge`` as a new user meets it: help with no settings at all, and ``serve``
(migrations applied, served, a banner naming where the data lives, a clean stop).
Served by gunicorn from the wheel in ``tests/test_installed.py``; here, from the
checkout, the fallback without gunicorn (werkzeug's server) and the refusals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
import requests

from tests.conftest import APP_UUID, BACKEND, RETENO_KEY
from tests.test_processes import BIN, free_port, one_line_error, wait_until_listening

pytestmark = [
    pytest.mark.real_http,
    pytest.mark.skipif(
        BACKEND == "postgres",
        reason="serve keeps its ledger in SQLite in the working directory: run "
        "once, in the SQLite pass of the suite",
    ),
]
# reteno-bridge in this virtualenv as if gunicorn were not installed
WITHOUT_GUNICORN = (
    "import sys; sys.modules['gunicorn'] = None; from bridge.factory import main; main()"
)


def bare(**extra) -> dict:
    """No setting of the bridge at all: only what any shell has."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RETENO_", "BRIDGE_", "TELEGRAM_", "FLASK_"))
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(args, cwd, env) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["serve", "--help"],
        ["deliver", "--help"],
        ["conflicts", "release", "--help"],
    ],
    ids=" ".join,
)
def test_help_needs_no_settings(tmp_path, args):
    result = run([str(BIN / "reteno-bridge"), *args], tmp_path, bare())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: reteno-bridge {' '.join(args[:-1])}".rstrip())
    assert result.stderr == ""
    assert list(tmp_path.iterdir()) == []  # nothing made: no instance folder, no ledger


def test_the_help_lists_serve_and_the_bridge_commands(tmp_path):
    out = run([str(BIN / "reteno-bridge"), "--help"], tmp_path, bare()).stdout
    for command in ("serve", "migrate", "deliver", "tokens", "conflicts"):
        assert f"\n  {command} " in out
    assert "--app" not in out  # the bundled app: no other app to load


def test_serve_sandbox_with_reteno_credentials_is_refused_in_one_line(tmp_path):
    env = bare(RETENO_APP_UUID=APP_UUID, RETENO_API_KEY=RETENO_KEY)
    line = one_line_error(
        run(
            [str(BIN / "reteno-bridge"), "serve", "--sandbox", "--port", str(free_port())],
            tmp_path,
            env,
        )
    )
    assert "BRIDGE_SANDBOX=true and RETENO_APP_UUID and RETENO_API_KEY" in line
    assert RETENO_KEY not in line


def test_serve_without_gunicorn_falls_back_to_werkzeug_and_stops_on_sigterm(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", WITHOUT_GUNICORN, "serve", "--sandbox", "--port", str(port)],
        cwd=tmp_path,
        env=bare(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_listening(port, server)
        base = f"http://127.0.0.1:{port}"
        assert requests.get(f"{base}/healthz", timeout=10).json()["sandbox"] is True
        key = (tmp_path / "instance" / "dev-api-key").read_text().strip()
        response = requests.post(
            f"{base}/register",
            json={"token": 42, "email": "a@b.co"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, err
    assert "Traceback" not in err
    assert "bridge database migrated from empty to" in err
    assert (
        f"gunicorn is not installed (pip install 'reteno-telegram-bridge[serve]'): "
        f"serving http://127.0.0.1:{port}/ with werkzeug's development server"
    ) in err
    assert "SANDBOX MODE" in err
    assert f"Ledger: SQLite file {tmp_path / 'instance' / 'bridge.sqlite3'}" in err
    assert f"the development API key is in {tmp_path / 'instance' / 'dev-api-key'}" in err
    assert key not in out + err
    assert "reteno-bridge serve: stopped" in err


def test_serve_on_a_port_in_use_says_so_and_exits_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            [sys.executable, "-c", WITHOUT_GUNICORN, "serve", "--sandbox", "--port", str(port)],
            tmp_path,
            bare(),
        )
    assert result.returncode == 1, result.stderr
    assert f"Port {port} is in use by another program." in result.stderr
    assert "Traceback" not in result.stderr
