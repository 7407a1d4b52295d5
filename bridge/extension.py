"""The Flask extension object: ``Bridge().init_app(app, url_prefix=...)``.

``init_app`` only wires: it reads the settings (refusing bad ones), builds the
runtime (:mod:`bridge.runtime`), registers the blueprint (and, with
``BRIDGE_SUPPORT_PAGE``, the support page's) and the ``bridge`` CLI group, and, in
sandbox mode, attaches the simulator. It does no database
I/O, writes no file, starts no thread and leaves the process's logging alone;
a second registration on the same app is refused. What a served app does
before serving (the schema check, the start-up banner, the delivery thread)
is :meth:`bridge.runtime.Runtime.start`, called by the app factory.
"""

from __future__ import annotations

import os

import click
from flask import Flask

from .config import load_settings
from .runtime import EXTENSION, Runtime


def served() -> bool:
    """True unless this process runs a Flask CLI command other than ``flask run``."""
    return os.environ.get("FLASK_RUN_FROM_CLI") != "true" or run_by_flask()


def run_by_flask() -> bool:
    """True under ``flask run`` (one process, never forked)."""
    ctx = click.get_current_context(silent=True)
    return (
        os.environ.get("FLASK_RUN_FROM_CLI") == "true"
        and ctx is not None
        and ctx.info_name == "run"
    )


class Bridge:
    """The extension: ``bridge = Bridge(); bridge.init_app(app, url_prefix="/reteno")``."""

    def __init__(self, app: Flask | None = None, url_prefix: str = "/"):
        self.url_prefix = url_prefix
        if app is not None:
            self.init_app(app, url_prefix)

    def init_app(self, app: Flask, url_prefix: str | None = None) -> Runtime:
        from .cli import cli
        from .views import bp

        if EXTENSION in app.extensions:
            raise RuntimeError("the Reteno bridge is already registered on this app")
        prefix = url_prefix if url_prefix is not None else self.url_prefix
        prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        settings = load_settings(app.config, app.instance_path)
        if settings.sandbox:
            from . import sandbox

            settings = sandbox.settings_for(settings)
        runtime = Runtime(app, settings, prefix or "/")
        app.extensions[EXTENSION] = runtime
        app.register_blueprint(bp, url_prefix=prefix or None)
        if settings.support_page:
            from .support.views import bp as support

            app.register_blueprint(support, url_prefix=f"{prefix}/support")
        if settings.sandbox:
            sandbox.attach(app, runtime)
        app.cli.add_command(cli)
        return runtime
