"""Replaying every live registration into another Reteno app or platform (``bridge
replay``): the target, its client with its own credentials, and the run.

The registrations go through the ledger's outbox (``bridge_commands``), so a run
stopped halfway, even by kill -9, loses nothing and repeats nothing Reteno
acknowledged: running it again queues only what the target has not had and sends
what is still queued. The calls are the same as normal delivery's: batches of
``BRIDGE_BATCH_SIZE`` tokens, up to ``BRIDGE_IN_FLIGHT`` of them in flight, backoff
and ``Retry-After`` on 429 and 5xx (a ``Retry-After`` holds the whole run, as it
holds the bridge's outbox), a 400 batch split down to the token Reteno refuses. A
refusal of the target's credentials or app id stops the run (fix them and run it
again).
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

from .config import APP_ID, PLATFORMS, ConfigError, Settings, checked_base_url
from .ledger import Ledger, ReplayTarget
from .reteno import RETRY, RetenoClient
from .worker import DeliveryWorker, Lane

MAX_WAIT_SECONDS = 300.0  # the longest a run waits for a backoff or a lease to run out
_UUID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}", re.IGNORECASE)


def _spelling(url: str) -> str:
    """``url`` with its scheme and host in lower case and no trailing slash: one target,
    one spelling (the ledger tells targets apart by it)."""
    parts = urlsplit(url.strip())
    return urlunsplit(
        (
            parts.scheme.lower(),
            parts.netloc.lower(),
            parts.path.rstrip("/"),
            parts.query,
            parts.fragment,
        )
    )


def _base_url(url: str) -> str:
    """The target's base URL, checked as ``RETENO_BASE_URL`` is and spelt by
    :func:`_spelling`."""
    return _spelling(checked_base_url(url, "--base-url", "the variable --api-key-env names"))


def target_settings(
    settings: Settings, app_uuid: str, api_key: str, platform: str | None, base_url: str | None
) -> Settings:
    """The bridge's settings, pointed at the target: its app, key, platform (base URL and
    auth scheme from the preset) and base URL. Refuses the bridge's own app."""
    if platform is not None and platform not in PLATFORMS:
        raise ConfigError(f"--platform must be one of {', '.join(PLATFORMS)}, got {platform!r}")
    if not APP_ID.fullmatch(app_uuid):
        raise ConfigError(
            f"--to-app must be an application ID (Settings → My bots), got {app_uuid!r}"
        )
    if _UUID.fullmatch(app_uuid):
        app_uuid = app_uuid.lower()  # one app, one spelling: a UUID ignores case
    preset_url, auth = PLATFORMS[platform] if platform else (settings.base_url, settings.auth)
    url = _base_url(base_url or preset_url)
    # the same app however it is spelt: host names and UUIDs ignore case
    own = (_spelling(settings.base_url), (settings.app_uuid or "").lower())
    if (url, app_uuid.lower()) == own:
        raise ConfigError(
            "the target is the bridge's own app: replaying there would only "
            "duplicate its tokens (Reteno never updates a token)"
        )
    return dataclasses.replace(
        settings,
        platform=platform or settings.platform,
        base_url=url,
        app_uuid=app_uuid,
        api_key=api_key,
        auth=auth,
    )


@dataclass
class ReplayResult:
    queued: int = 0  # queued by this run
    calls: int = 0  # upstream calls made
    outcomes: Counter = dataclasses.field(default_factory=Counter)  # rows per outcome
    summary: dict = dataclasses.field(default_factory=dict)  # the target's rows by state
    stopped: str | None = None  # why the run stopped with rows still queued


class Replay:
    """One replay run into ``target`` (``client``: a Reteno client for its settings)."""

    def __init__(
        self,
        ledger: Ledger,
        client: RetenoClient,
        target: ReplayTarget,
        batch_size: int,
        lease_seconds: int,
        metrics=None,
        mark: dict | None = None,
        in_flight: int = 1,
    ):
        self.ledger = ledger
        self.target = target
        self.result = ReplayResult()
        self.hold_until: datetime | None = None  # the target's Retry-After: no call before
        lock = threading.Lock()  # the calls in flight count and hold together

        def call(rows):
            with lock:
                self.result.calls += 1
            result = client.add_tokens(rows)
            if result.outcome == RETRY and result.retry_after:
                until = ledger.clock() + timedelta(seconds=result.retry_after)
                with lock:
                    self.hold_until = max(until, self.hold_until or until)
            return result

        def claim():
            # A Retry-After holds the whole run, as it holds the bridge's own outbox (the
            # rows of the call that got it wait anyway; the others must too).
            if self.hold_until is not None and ledger.clock() < self.hold_until:
                return None
            return ledger.claim_replay(target, batch_size, lease_seconds)

        lane = Lane("replay", claim, call)
        self.worker = DeliveryWorker(
            ledger,
            client,
            batch_size,
            metrics,
            lease_seconds,
            mark={"targetApp": target.app_uuid, **(mark or {})},
            lanes=[lane],
            in_flight=in_flight,
        )

    def queued(self) -> int:
        return self.ledger.replay_summary(self.target)["queued"]

    def run(
        self, progress: Callable[[int], None] | None = None, stop: threading.Event | None = None
    ) -> ReplayResult:
        """Queue what the target has not had, then send until nothing is queued, the target
        refuses our credentials, or ``stop`` is set (the rest stays queued)."""
        stop = stop or threading.Event()
        self.result.queued = self.ledger.queue_replay(self.target)
        while not stop.is_set():
            stats = self.worker.drain(progress=progress, stop=stop)
            self.result.outcomes.update(stats)
            summary = self.ledger.replay_summary(self.target)
            if not summary["queued"]:
                break
            if stats["paused"]:
                self.result.stopped = "the target refused the credentials or the app id"
                break
            stop.wait(self._wait(summary["next_due"]))
        else:
            self.result.stopped = "stopped"
        summary = self.ledger.replay_summary(self.target)
        self.result.summary = {k: v for k, v in summary.items() if k != "next_due"}
        return self.result

    def _wait(self, due: datetime | None) -> float:
        """Seconds until the next queued row is due and any hold is over."""
        ends = [t for t in (due, self.hold_until) if t is not None]
        if not ends:
            return 0.0
        return min(MAX_WAIT_SECONDS, max(0.05, (max(ends) - self.ledger.clock()).total_seconds()))
