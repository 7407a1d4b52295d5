"""The bridge runtime of one app: everything its views, CLI and workers use.

Holds the settings, the bridge's own database (never the host app's), the
ledger, the metrics, the Reteno client, the delivery worker and its
background thread. It lives in ``app.extensions["reteno_bridge"]``;
:func:`current` is the one way to reach it.
"""

from __future__ import annotations

import sys

from flask import Flask, current_app

from . import db as dbmod
from .config import BACKLOG_SECONDS, Settings
from .ledger import Ledger
from .logs import get_logger
from .metrics import Metrics, pause_reason
from .reteno import RetenoClient
from .retention import RetentionSchedule
from .worker import BackgroundDelivery, DeliveryWorker

log = get_logger("bridge")
EXTENSION = "reteno_bridge"
# What /healthz shows of the last upstream call: figures and codes, never Reteno's text.
_LAST_UPSTREAM_KEYS = ("outcome", "status", "reason", "at", "batch", "ms", "retryAfter", "sandbox")


def current(app: Flask | None = None) -> Runtime:
    """The runtime of ``app`` (default: the current app)."""
    return (app or current_app).extensions[EXTENSION]


class Runtime:
    """Everything one app's bridge holds. Building it does no I/O: the database is
    first touched by :meth:`start` or the first request."""

    def __init__(self, app: Flask, settings: Settings, url_prefix: str):
        self.app = app
        self.settings = settings
        self.url_prefix = url_prefix
        self.db = dbmod.Database(settings.database_url)
        self.ledger = Ledger(
            self.db,
            on_queued=self._wake,
            hold_conflicts=settings.hold_conflicts,
            on_delivered=lambda delays: self.metrics.delivered(delays),
        )
        self.metrics = Metrics(self.ledger, settings.health_cache_seconds)
        self.client = RetenoClient(settings, clock=lambda: self.ledger.clock())
        self.worker = DeliveryWorker(
            self.ledger,
            self.client,
            settings.batch_size,
            self.metrics,
            lease_seconds=settings.lease_seconds,
            in_flight=settings.in_flight,
            mark={"sandbox": True} if settings.sandbox else None,
            retention=RetentionSchedule(self.ledger, settings.history_retention)
            if settings.history_retention
            else None,
        )
        self.background: BackgroundDelivery | None = None
        self.simulator = None  # the sandbox's, in sandbox mode (bridge.sandbox.attach)
        self.dev_key_path: str | None = None  # sandbox without BRIDGE_API_KEYS
        self._dev_key: str | None = None

    @property
    def api_keys(self) -> tuple[str, ...]:
        """The keys callers authenticate with: ``BRIDGE_API_KEYS``, or in sandbox mode
        without it a development key kept in the instance folder (made on first use)."""
        if self.settings.api_keys or self.dev_key_path is None:
            return self.settings.api_keys
        if self._dev_key is None:
            from .sandbox import dev_api_key

            self._dev_key = dev_api_key(self.dev_key_path)
        return (self._dev_key,)

    # --- starting ------------------------------------------------------------------

    def start(self, background: bool | None = None) -> None:
        """What a served app does once, before it serves: refuse a database it cannot
        use (:class:`~bridge.config.StartupError`: unreachable, or its schema behind),
        say where tokens go, and with ``background`` start the delivery thread now
        (default: under ``flask run``, one process; a forking server's workers start
        it with their first request, or bridge/gunicorn_conf.py's ``post_worker_init``).
        In a CLI command (``flask bridge …``) it does nothing: each command checks
        what it needs."""
        from .extension import run_by_flask, served

        if not served():
            return
        dbmod.check_schema(self.db.engine)
        self._announce()
        if run_by_flask() if background is None else background:
            self.ensure_background()

    def ensure_background(self) -> None:
        """Run the delivery thread in this process if ``BRIDGE_BACKGROUND_DELIVERY`` is
        on (after a fork the parent's thread is gone: it starts afresh)."""
        if not self.settings.background_delivery:
            return
        bg = self.background
        if bg is None or not (bg.running or bg.stop_event.is_set()):
            self.start_background()

    def start_background(self) -> None:
        if self.background is None:
            s = self.settings
            self.background = BackgroundDelivery(
                self.worker, stop_timeout=s.upstream_connect_timeout + s.upstream_read_timeout + 2
            )
        self.background.start()

    def _announce(self) -> None:
        s = self.settings
        ledger = dbmod.describe(s.database_url)  # where the data lives, no credentials
        if not s.sandbox:
            log.info(
                "delivering to %s (platform %s, auth %s); ledger: %s",
                s.tokens_url.replace(s.app_uuid or "", "<app>"),
                s.platform,
                s.auth,
                ledger,
            )
            return
        where = s.base_url if s.base_url_explicit else "the built-in simulator"
        lines = [
            "SANDBOX MODE (BRIDGE_SANDBOX=true): for development only.",
            f"  Tokens are delivered to {where}, NOT to Reteno.",
            f"  Ledger: {ledger}",
            f"  Look at the simulator: {self.url_prefix.rstrip('/')}/sandbox/reteno/",
            "  Each process has a simulator of its own (docs: Getting started, the simulator).",
        ]
        if self.dev_key_path:  # the key itself stays out of the console and its logs
            self.api_keys  # noqa: B018 - made now, so the file exists when the banner says so
            lines.append(
                f"  BRIDGE_API_KEYS is not set: the development API key is in {self.dev_key_path}"
            )
        print("\n".join(["=" * 72, *lines, "=" * 72]), file=sys.stderr, flush=True)
        log.warning("sandbox mode: delivering to the Reteno simulator, not to Reteno")

    # --- delivery ------------------------------------------------------------------

    def _wake(self) -> None:
        if self.background is not None:
            self.background.wake()

    def deliver_once(self):
        """Drain the outbox in this thread (tests and ``bridge deliver --once``)."""
        return self.worker.drain()

    # --- health -----------------------------------------------------------------

    def health(self, details: bool = False) -> tuple[dict, bool]:
        """``/healthz``: ``({"status": "ok"|"degraded", "reasons", "sandbox"}, True)``, and
        with ``details`` the outbox, dead letters (registrations, and mutes, unmutes,
        replays and custom events by action), held conflicts, delivery and the last
        upstream result (status and reason code). One row read per call; the counts
        come from :class:`~bridge.metrics.CountCache`. ``({"message"}, False)`` when the
        database is unreachable."""
        try:
            upstream, blocked = self.ledger.upstream()
            counts = self.metrics.counts.get()
            revision = dbmod.current_revision(self.db.engine) if details else None
        except Exception as exc:  # any database failure means "unavailable"
            return {"message": f"The database is unreachable ({type(exc).__name__})."}, False
        pause = pause_reason(upstream, blocked)
        paused = pause is not None
        held = bool(blocked and not paused)
        last = upstream.get("last")
        held_conflicts = counts["states"].get("held", 0)
        dead_commands = {
            action: states["dead"]
            for action, states in sorted(counts["commands"].items())
            if states.get("dead")
        }
        if counts["events"]["dead"]:  # custom events Reteno refused (not the dropped ones)
            dead_commands["event"] = counts["events"]["dead"]
        reasons = [
            code
            for code, present in (
                ("delivery_paused", paused),
                ("delivery_held", held),
                ("upstream_failing", bool(last and last.get("outcome") == "retry")),
                ("dead_letters", counts["dead"] > 0),
                ("dead_commands", bool(dead_commands)),
                ("held_conflicts", held_conflicts > 0),
                ("outbox_backlog", counts["oldestAgeSeconds"] > BACKLOG_SECONDS),
            )
            if present
        ]
        body = {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "sandbox": self.settings.sandbox,
        }
        if self.settings.sandbox:
            body["warning"] = (
                "SANDBOX MODE: tokens go to the built-in Reteno simulator, not to Reteno. "
                "Unset BRIDGE_SANDBOX and set RETENO_APP_UUID and RETENO_API_KEY to deliver "
                "for real."
            )
        if not details:
            return body, True
        body.update(
            {
                "platform": self.settings.platform,
                "database": {"ok": True, "dialect": self.db.dialect, "revision": revision},
                "outbox": {
                    "depth": counts["depth"],
                    "oldestAgeSeconds": counts["oldestAgeSeconds"],
                },
                "states": counts["states"],
                "deadLetters": counts["dead"],
                "deadCommands": dead_commands,
                "heldConflicts": held_conflicts,
                "delivery": {
                    "background": bool(self.background and self.background.running),
                    "paused": paused,
                    "pausedUntil": upstream.get("paused_until") if paused else None,
                    "pauseReason": pause,
                    "heldUntil": upstream.get("hold_until") if held else None,
                    "batchSize": self.settings.batch_size,
                },
                "lastUpstream": {k: last[k] for k in _LAST_UPSTREAM_KEYS if k in last}
                if last
                else None,
            }
        )
        return body, True
