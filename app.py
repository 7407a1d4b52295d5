"""Example host app: mounts the bridge at ``/``.

``flask --app app run`` and ``gunicorn app:app`` both serve it. Configuration
comes from the environment (see README.md) or from ``create_app(config)``.
"""

from __future__ import annotations

import os

from flask import Flask

from bridge import Bridge, logs
from bridge.extension import run_by_flask, served
from bridge.http import register_error_handlers


def create_app(config: dict | None = None) -> Flask:
    instance = os.environ.get("BRIDGE_INSTANCE_PATH")
    app = Flask(__name__, instance_path=os.path.abspath(instance) if instance else None)
    app.json.sort_keys = False
    if config:
        app.config.from_mapping(config)
    logs.configure(app)
    runtime = Bridge().init_app(app, url_prefix="/")
    register_error_handlers(app)  # the host app answers 404/405 in the same JSON shape
    if served():  # not a CLI command: check the schema, say where tokens go, maybe deliver
        runtime.start(background=run_by_flask())
    return app


def __getattr__(name: str):
    # The module-level ``app`` (for ``gunicorn app:app`` and ``flask --app app``) is built
    # on first access, so importing ``create_app`` (tests, other hosts) starts nothing.
    if name == "app":
        globals()["app"] = instance = create_app()
        return instance
    raise AttributeError(name)
