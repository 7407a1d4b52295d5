"""The client installs without the bridge: importing it and its adapters brings in
neither Flask nor SQLAlchemy."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "reteno_bridge_client",
    "reteno_bridge_client.aiogram",
    "reteno_bridge_client.ptb",
    "reteno_bridge_client.ordering",
    "reteno_bridge_client.forwarding",
]


def test_the_client_and_its_adapters_import_neither_flask_nor_sqlalchemy():
    code = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('flask', 'sqlalchemy', 'werkzeug', 'bridge')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
