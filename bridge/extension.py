"""The Flask extension object: ``Bridge().init_app(app, url_prefix=...)``.

Owns the wiring of one app's bridge: settings, its own database engine (never
the host app's), the ledger, metrics, the Reteno client (or, in sandbox mode,
the built-in simulator), the delivery worker and its background thread, the
blueprint and the CLI group. Views reach it as
``current_app.extensions["reteno_bridge"]``.
"""

from __future__ import annotations

import logging
import os
import sys

import click
from flask import Flask

from . import db as dbmod
from .config import load_settings
from .logs import install_redaction
from .runtime import EXTENSION, Runtime, dev_key_path

log = logging.getLogger("bridge")

def _served() -> bool:
    """True unless this process runs a Flask CLI command other than ``flask run``."""
    if os.environ.get("FLASK_RUN_FROM_CLI") != "true":
        return True
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.info_name == "run"


class Bridge:
    """The extension: ``bridge = Bridge(); bridge.init_app(app, url_prefix="/reteno")``."""

    def __init__(self, app: Flask | None = None, url_prefix: str = "/"):
        self.url_prefix = url_prefix
        if app is not None:
            self.init_app(app, url_prefix)

    def init_app(self, app: Flask, url_prefix: str | None = None) -> Runtime:
        from .cli import cli
        from .views import bp

        prefix = url_prefix if url_prefix is not None else self.url_prefix
        prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        install_redaction(app.logger)
        settings = load_settings(app.config, app.instance_path)
        runtime = Runtime(app, settings, prefix or "/")
        app.extensions[EXTENSION] = runtime
        app.register_blueprint(bp, url_prefix=prefix or None)
        if runtime.simulator is not None:
            from . import sandbox as sandbox_mod

            app.register_blueprint(
                sandbox_mod.create_blueprint(runtime.simulator),
                url_prefix=f"{prefix}/sandbox/reteno",
            )
        app.cli.add_command(cli)

        if _served():
            dbmod.check_schema(runtime.db.engine)
            self._announce(runtime)
            if runtime.settings.background_delivery:
                runtime.start_background()

        @app.before_request
        def _ensure_delivery():  # after a fork (gunicorn --preload) the thread is gone
            bg = runtime.background
            if bg is not None and not bg.running and not bg.stop_event.is_set():
                bg.start()

        return runtime

    @staticmethod
    def _announce(runtime: Runtime) -> None:
        s = runtime.settings
        if s.sandbox:
            where = s.base_url if s.base_url_explicit else "the built-in simulator"
            lines = [
                "SANDBOX MODE: RETENO_APP_UUID / RETENO_API_KEY are not set.",
                f"  Tokens are delivered to {where}, NOT to Reteno.",
                f"  Look at the simulator: {runtime.url_prefix.rstrip('/')}/sandbox/reteno/",
            ]
            if s.dev_api_key:  # the key itself stays out of the console and its logs
                lines.append("  BRIDGE_API_KEYS is not set: the development API key is in "
                             f"{dev_key_path(runtime.app.instance_path)}")
            banner = "\n".join(["=" * 72, *lines, "=" * 72])
            print(banner, file=sys.stderr, flush=True)
            log.warning("sandbox mode: delivering to the Reteno simulator, not to Reteno")
        else:
            log.info("delivering to %s (platform %s, auth %s)", s.tokens_url.replace(
                s.app_uuid or "", "<app>"), s.platform, s.auth)
