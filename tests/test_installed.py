"""The package as users mount it: a wheel built from this checkout, installed into a
fresh virtualenv in a temporary directory, used from there with no checkout in
sight: a host app mounts it at a prefix, ``flask bridge migrate`` migrates, gunicorn
serves it, ``/register`` and ``GET /tokens`` answer over HTTP, ``reteno-bridge
deliver --once`` delivers to the simulator (``reteno-sandbox``, also from the wheel),
and the support page serves its templates and stylesheet.
And as a new user tries it: ``reteno-bridge --help`` with no settings, then
``reteno-bridge serve --sandbox`` in an empty folder, its data in that folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import pytest
import requests

from tests.conftest import API_KEY, APP_UUID, BACKEND, RETENO_KEY
from tests.test_processes import free_port, wait_until_listening

pytestmark = [
    pytest.mark.real_http,
    pytest.mark.skipif(
        BACKEND == "postgres",
        reason="the installed package keeps its ledger in SQLite here: run "
        "once, in the SQLite pass of the suite",
    ),
]
ROOT = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": f"Bearer {API_KEY}"}
HOST_APP = """
from flask import Flask
from bridge import Bridge


def create_app():
    app = Flask(__name__)
    Bridge().init_app(app, url_prefix="/reteno").start()  # served: checks the database
    return app
"""


# Registers a chat with the installed client; prints what the bridge answered and the
# folder the client was imported from (the virtualenv's, not the checkout's).
CLIENT_REGISTERS = """
import sys
import reteno_bridge_client
from reteno_bridge_client import BridgeClient
with BridgeClient(sys.argv[1], sys.argv[2]) as client:
    r = client.register(777001, email="Ann@Example.com")
print(r.token, r.matched_by, r.state, reteno_bridge_client.__file__)
"""


def check(args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])
    return result


def build_wheel(project: Path, dist: Path) -> Path:
    """The wheel of the distribution whose ``pyproject.toml`` is in ``project``, built
    into a folder of its own under ``dist``."""
    dist.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(dir=dist))
    check(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(project)]
    )
    [wheel] = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv outside the checkout with the wheels installed (the bridge's
    with gunicorn): one line per distribution of this repository."""
    where = tmp_path_factory.mktemp("installed")
    wheels = [
        f"{build_wheel(ROOT, where / 'dist')}[serve]",
        f"{build_wheel(ROOT / 'client', where / 'dist')}[aiogram,ptb]",
    ]
    venv.create(where / "venv", with_pip=True)
    python = where / "venv" / "bin" / "python"
    check(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "-c",
            str(ROOT / "constraints.txt"),
            *wheels,
        ],
        cwd=where,
    )
    return where


def outside(bin_dir: Path, **settings) -> dict:
    """An environment with none of the bridge's settings but ``settings``, the installed
    virtualenv first on PATH and nothing that would reach into the checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RETENO_", "BRIDGE_", "TELEGRAM_", "FLASK_", "PYTHON"))
    }
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(settings)
    return env


def test_the_wheel_mounts_migrates_serves_and_delivers_outside_a_checkout(installed, tmp_path):
    bin_dir = installed / "venv" / "bin"
    host = tmp_path / "host"
    host.mkdir()
    (host / "host.py").write_text(HOST_APP)
    env = outside(bin_dir)
    env.update(
        {
            "RETENO_APP_UUID": APP_UUID,
            "RETENO_API_KEY": RETENO_KEY,
            "BRIDGE_API_KEYS": API_KEY,
            "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
            "BRIDGE_BACKGROUND_DELIVERY": "false",
            "BRIDGE_SUPPORT_PAGE": "true",
            "BRIDGE_SECRET_KEY": "installed-support-secret-" + "s" * 16,
        }
    )
    where = check(
        [str(bin_dir / "python"), "-c", "import bridge; print(bridge.__file__)"], cwd=host, env=env
    ).stdout.strip()
    assert where.startswith(str(installed / "venv")), where

    migrated = check(
        [str(bin_dir / "flask"), "--app", "host", "bridge", "migrate"], cwd=host, env=env
    )
    assert "migrated from empty to" in migrated.stdout
    staff = check(
        [str(bin_dir / "flask"), "--app", "host", "bridge", "support-user", "add", "ann"]
        + ["--password-stdin"],
        cwd=host,
        env=env,
        input="a long enough password\n",
    )
    assert "support user ann added" in staff.stdout

    sim_port, web_port = free_port(), free_port()
    env["RETENO_BASE_URL"] = f"http://127.0.0.1:{sim_port}"
    processes = [
        subprocess.Popen(
            [
                str(bin_dir / "reteno-sandbox"),
                "--port",
                str(sim_port),
                "--app-uuid",
                APP_UUID,
                "--api-key",
                RETENO_KEY,
            ],
            cwd=host,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ),
        subprocess.Popen(
            [str(bin_dir / "gunicorn"), "--bind", f"127.0.0.1:{web_port}", "host:create_app()"],
            cwd=host,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ),
    ]
    try:
        wait_until_listening(sim_port, processes[0])
        wait_until_listening(web_port, processes[1])
        base = f"http://127.0.0.1:{web_port}/reteno"
        # the bot's side: the client's wheel, from the same virtualenv
        registered = check(
            [str(bin_dir / "python"), "-c", CLIENT_REGISTERS, base, API_KEY], cwd=host, env=env
        )
        *answer, imported_from = registered.stdout.split()
        assert answer == ["777001", "email", "queued"], registered.stdout
        assert imported_from.startswith(str(installed / "venv")), imported_from
        [item] = requests.get(f"{base}/tokens", headers=AUTH, timeout=10).json()["items"]
        assert (item["token"], item["state"]) == ("777001", "queued")

        delivered = check([str(bin_dir / "reteno-bridge"), "deliver", "--once"], cwd=host, env=env)
        assert "delivered 1" in delivered.stdout
        contacts = requests.get(f"http://127.0.0.1:{sim_port}/contacts", timeout=10).json()
        assert [(c["email"], c["tokens"]) for c in contacts["contacts"]] == [
            ("ann@example.com", ["777001"])
        ]
        [item] = requests.get(f"{base}/tokens", headers=AUTH, timeout=10).json()["items"]
        assert item["state"] == "delivered"
        # the support page's templates and stylesheet are in the wheel
        login = requests.get(f"{base}/support/login", timeout=10)
        assert login.status_code == 200 and "<h1>Log in</h1>" in login.text
        css = requests.get(f"{base}/support/static/support.css", timeout=10)
        assert css.status_code == 200 and ":focus-visible" in css.text
    finally:
        for proc in processes:
            proc.terminate()
            proc.communicate(timeout=30)


def test_reteno_bridge_serve_sandbox_from_the_wheel_keeps_its_data_in_the_folder(
    installed, tmp_path
):
    bin_dir = installed / "venv" / "bin"
    env = outside(bin_dir)  # no settings at all
    trying = tmp_path / "trying"
    trying.mkdir()
    helped = check([str(bin_dir / "reteno-bridge"), "--help"], cwd=trying, env=env)
    assert "\n  serve " in helped.stdout and "\n  migrate " in helped.stdout
    assert (
        "--sandbox"
        in check([str(bin_dir / "reteno-bridge"), "serve", "--help"], cwd=trying, env=env).stdout
    )
    assert list(trying.iterdir()) == []

    port = free_port()
    server = subprocess.Popen(
        [str(bin_dir / "reteno-bridge"), "serve", "--sandbox", "--port", str(port)],
        cwd=trying,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_listening(port, server)
        base = f"http://127.0.0.1:{port}"
        assert requests.get(f"{base}/healthz", timeout=10).json()["sandbox"] is True
        instance = trying / "instance"
        auth = {"Authorization": f"Bearer {(instance / 'dev-api-key').read_text().strip()}"}
        response = requests.post(
            f"{base}/register",
            headers=auth,
            timeout=10,
            json={"token": 777002, "email": "Ann@Example.com"},
        )
        assert response.status_code == 202, response.text
        # the worker's delivery thread sends it to the simulator (a bounded wait on
        # another process: no event can tell this test when it is done)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            [item] = requests.get(f"{base}/tokens", headers=auth, timeout=10).json()["items"]
            if item["state"] == "delivered":
                break
            time.sleep(0.1)
        assert item["state"] == "delivered"
        contacts = requests.get(f"{base}/sandbox/reteno/contacts", timeout=10).json()
        assert [c["tokens"] for c in contacts["contacts"]] == [["777002"]]
        server.send_signal(signal.SIGTERM)
        _out, err = server.communicate(timeout=40)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, err
    assert "Traceback" not in err
    assert f"serving http://127.0.0.1:{port}/ with gunicorn" in err
    assert "SANDBOX MODE" in err
    assert f"Ledger: SQLite file {instance / 'bridge.sqlite3'}" in err
    assert f"the development API key is in {instance / 'dev-api-key'}" in err
    assert (instance / "bridge.sqlite3").is_file()
    venv_files = {p.name for p in (installed / "venv").rglob("*")}
    assert not venv_files & {"bridge.sqlite3", "dev-api-key", "bridge-instance"}
