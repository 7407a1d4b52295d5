"""The bridge runtime of one app: everything its views, CLI and workers use.

Holds the settings, the bridge's own database (never the host app's), the
ledger, the metrics, the Reteno client, the delivery worker and its
background thread. It lives in ``app.extensions["reteno_bridge"]``;
:func:`current` is the one way to reach it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets

import requests
from flask import Flask, current_app

from . import db as dbmod
from .config import Settings
from .ledger import Ledger
from .metrics import Metrics
from .reteno import RetenoClient, WSGITransport
from .worker import BackgroundDelivery, DeliveryWorker

log = logging.getLogger("bridge")
EXTENSION = "reteno_bridge"


def current(app: Flask | None = None) -> Runtime:
    """The runtime of ``app`` (default: the current app)."""
    return (app or current_app).extensions[EXTENSION]


SANDBOX_APP_UUID = "sandbox-app"
SANDBOX_API_KEY = "sandbox-reteno-key"
SANDBOX_HOST = "http://reteno-sandbox.local"


def dev_key_path(instance_path: str) -> str:
    return os.path.join(instance_path, "dev-api-key")


def _dev_api_key(instance_path: str) -> str:
    """A development key kept in the instance folder, so every process shares it."""
    path = dev_key_path(instance_path)
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
        self.client = RetenoClient(settings, session=session, clock=lambda: self.ledger.clock())
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
            upstream, blocked = self.ledger.upstream()
        except Exception as exc:  # any database failure means "unavailable"
            return {"message": f"The database is unreachable ({type(exc).__name__})."}, False
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
