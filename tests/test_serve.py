"""``reteno-bridge`` as a new user meets it: help with no settings at all."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import BACKEND
from tests.test_processes import BIN

pytestmark = [
    pytest.mark.real_http,
    pytest.mark.skipif(BACKEND == "postgres",
                       reason="no database: run once, in the SQLite pass of the suite"),
]


def bare(**extra) -> dict:
    """No setting of the bridge at all: only what any shell has."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RETENO_", "BRIDGE_", "TELEGRAM_", "FLASK_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(args, cwd, env) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args", [
    ["--help"], ["deliver", "--help"], ["conflicts", "release", "--help"],
], ids=" ".join)
def test_help_needs_no_settings(tmp_path, args):
    result = run([str(BIN / "reteno-bridge"), *args], tmp_path, bare())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: reteno-bridge {' '.join(args[:-1])}".rstrip())
    assert result.stderr == ""
    assert list(tmp_path.iterdir()) == []  # nothing made: no instance folder, no ledger


def test_the_help_lists_the_bridge_commands(tmp_path):
    out = run([str(BIN / "reteno-bridge"), "--help"], tmp_path, bare()).stdout
    for command in ("migrate", "deliver", "tokens", "conflicts"):
        assert f"\n  {command} " in out
    assert "--app" not in out  # the bundled app: no other app to load
