"""The Flask extension object: ``Bridge().init_app(app, url_prefix=...)``.

Owns the wiring of one app's bridge: settings, its own database engine (never
the host app's), the ledger, metrics, the Reteno client (or, in sandbox mode,
the built-in simulator), the delivery worker and its background thread, the
blueprint and the CLI group. Views reach it as
``current_app.extensions["reteno_bridge"]``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import sys

import click
import requests
from flask import Flask

from . import db as dbmod
from .config import Settings, load_settings
from .ledger import Ledger
from .logs import install_redaction
from .metrics import Metrics
from .reteno import RetenoClient, WSGITransport
from .worker import BackgroundDelivery, DeliveryWorker

log = logging.getLogger("bridge")

SANDBOX_APP_UUID = "sandbox-app"
SANDBOX_API_KEY = "sandbox-reteno-key"
SANDBOX_HOST = "http://reteno-sandbox.local"


def _served() -> bool:
    """True unless this process runs a Flask CLI command other than ``flask run``."""
    if os.environ.get("FLASK_RUN_FROM_CLI") != "true":
        return True
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.info_name == "run"


def _dev_key_path(instance_path: str) -> str:
    return os.path.join(instance_path, "dev-api-key")


def _dev_api_key(instance_path: str) -> str:
    """A development key kept in the instance folder, so every process shares it."""
    path = _dev_key_path(instance_path)
    os.makedirs(instance_path, exist_ok=True)
    try:
        with open(path, encoding="utf-8") as fh:
            key = fh.read().strip()
        if len(key) >= 16:
            return key
    except FileNotFoundError:
        pass
    # Several processes may start at once: write a private file, then link it into
    # place; whoever links first wins and the others read the winner's key.
    key = "dev-" + secrets.token_urlsafe(24)
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        with open(path, encoding="utf-8") as fh:
            key = fh.read().strip()
    finally:
        os.unlink(tmp)
    return key


class Runtime:
    """Everything one app's bridge holds; ``app.extensions['reteno_bridge']``."""

    def __init__(self, app: Flask, settings: Settings, url_prefix: str):
        self.app = app
        self.url_prefix = url_prefix
        self.db = dbmod.Database(settings.database_url)
        self.background: BackgroundDelivery | None = None
        self.ledger = Ledger(self.db, on_queued=self._wake)
        self.metrics = Metrics(self.ledger)
        self.simulator = None

        session = requests.Session()
        if settings.sandbox:
            from . import sandbox as sandbox_mod

            keys = settings.api_keys
            dev_key = False
            if not keys:
                keys, dev_key = (_dev_api_key(app.instance_path),), True
            settings = dataclasses.replace(
                settings,
                app_uuid=SANDBOX_APP_UUID,
                api_key=SANDBOX_API_KEY,
                api_keys=keys,
                dev_api_key=dev_key,
                base_url=settings.base_url if settings.base_url_explicit else SANDBOX_HOST,
            )
            self.simulator = sandbox_mod.Simulator(
                sandbox_mod.SimulatorOptions(
                    app_uuid=SANDBOX_APP_UUID, api_key=SANDBOX_API_KEY, auth=settings.auth
                ),
                status_sink=self._sandbox_status_sink,
            )
            if not settings.base_url_explicit:
                session.mount(SANDBOX_HOST, WSGITransport(sandbox_mod.create_app(
                    simulator=self.simulator)))
        self.settings = settings
        self.client = RetenoClient(settings, session=session)
        self.worker = DeliveryWorker(self.ledger, self.client, settings.batch_size, self.metrics,
                                     lease_seconds=settings.lease_seconds)

    # --- delivery -------------------------------------------------------------

    def _wake(self) -> None:
        if self.background is not None:
            self.background.wake()

    def start_background(self) -> None:
        if self.background is None:
            self.background = BackgroundDelivery(self.worker)
        self.background.start()

    def deliver_once(self):
        """Drain the outbox in this thread (tests and ``bridge deliver --once``)."""
        return self.worker.drain()

    # --- sandbox ----------------------------------------------------------------

    def _sandbox_status_sink(self, events: list[dict]) -> None:
        """The simulator reports statuses to our own /statuses, as Reteno would."""
        session = requests.Session()
        session.mount("http://bridge.local", WSGITransport(self.app.wsgi_app))
        prefix = self.url_prefix.rstrip("/")
        response = session.post(
            f"http://bridge.local{prefix}/statuses",
            json=events,
            headers={"Authorization": f"Bearer {self.settings.api_keys[0]}"},
            timeout=10,
        )
        if response.status_code != 200:
            log.error("sandbox status report refused: HTTP %s", response.status_code)

    # --- health -----------------------------------------------------------------

    def health(self) -> tuple[dict, bool]:
        try:
            revision = dbmod.current_revision(self.db.engine)
            outbox = self.ledger.outbox()
            upstream = self.ledger.upstream_state()
        except Exception as exc:  # any database failure means "unavailable"
            return {"message": f"The database is unreachable ({type(exc).__name__})."}, False
        blocked = self.ledger.delivery_blocked_until(upstream)
        paused_until = upstream.get("paused_until")
        paused = bool(blocked and paused_until and blocked.isoformat() == paused_until)
        body = {
            "status": "ok",
            "sandbox": self.settings.sandbox,
            "platform": self.settings.platform,
            "database": {"ok": True, "dialect": self.db.dialect, "revision": revision},
            "outbox": {"depth": outbox["depth"], "oldestAgeSeconds": outbox["oldestAgeSeconds"]},
            "states": outbox["states"],
            "deadLetters": outbox["dead"],
            "delivery": {
                "background": bool(self.background and self.background.running),
                "paused": paused,
                "pausedUntil": paused_until if paused else None,
                "pauseReason": upstream.get("pause_reason") if paused else None,
                "heldUntil": upstream.get("hold_until") if blocked and not paused else None,
                "batchSize": self.settings.batch_size,
            },
            "lastUpstream": upstream.get("last"),
        }
        if self.settings.sandbox:
            body["warning"] = (
                "SANDBOX MODE: tokens go to the built-in Reteno simulator, not to Reteno. "
                "Set RETENO_APP_UUID and RETENO_API_KEY to deliver for real."
            )
        return body, True


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
        app.extensions["reteno_bridge"] = runtime
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
                             f"{_dev_key_path(runtime.app.instance_path)}")
            banner = "\n".join(["=" * 72, *lines, "=" * 72])
            print(banner, file=sys.stderr, flush=True)
            log.warning("sandbox mode: delivering to the Reteno simulator, not to Reteno")
        else:
            log.info("delivering to %s (platform %s, auth %s)", s.tokens_url.replace(
                s.app_uuid or "", "<app>"), s.platform, s.auth)


def runtime(app: Flask | None = None) -> Runtime:
    from flask import current_app

    return (app or current_app).extensions["reteno_bridge"]
