"""Example host app: the bridge mounted at ``/``.

``flask --app app run`` and ``gunicorn app:app`` both serve it (``make run``,
``make serve``). Configuration comes from the environment (docs/configuration.rst) or
from ``create_app(config)``. To mount the bridge in an app of your own, see
docs/getting-started.md, "Mounting the bridge in your own Flask app".
"""

from __future__ import annotations

from flask import Flask

from bridge import factory


def create_app(config: dict | None = None) -> Flask:
    return factory.create_app(config, import_name=__name__)


def __getattr__(name: str):
    # The module-level ``app`` (for ``gunicorn app:app`` and ``flask --app app``) is built
    # on first access, so importing ``create_app`` (tests, other hosts) starts nothing; a
    # bridge that cannot start says why in one line and exits 1.
    if name == "app":
        globals()["app"] = instance = factory.app_or_exit(create_app)
        return instance
    raise AttributeError(name)
