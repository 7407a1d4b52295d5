"""Prometheus metrics for ``GET /metrics``.

Owns one registry per bridge instance. Counters and the histograms count
what this process did; the ledger gauges (outbox depth and age, dead letters,
registrations by state, removals by reason, quiet chats, a delivery pause and
its reason) are read from the database, so they are right whichever process
did the work. Those are table-wide counts (about 0.1 s at 500,000
registrations): :class:`CountCache` makes them at most once per
``BRIDGE_HEALTH_CACHE_SECONDS`` for ``/metrics`` and ``/healthz`` alike (the quiet
chats at most every 5 minutes). The Grafana dashboard and the alert rules in
``deploy/`` use these names (``tests/test_alerts.py`` checks each is exported).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .ledger.queries import STALE_DAYS
from .logs import dropped_request_lines

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUIET_SECONDS = 300.0  # how often bridge_quiet_registrations is counted at most
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # a reason code, never Reteno's own text


class CountCache:
    """The ledger's counts (``read``, by default :meth:`~bridge.ledger.Ledger.outbox`),
    made again only when the last ones are ``ttl`` seconds old (0: every time). Callers
    that come while they are being made wait for them instead of counting too; a failure
    is not kept."""

    def __init__(
        self,
        ledger,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        read: Callable[[], Any] | None = None,
    ):
        self.ledger = ledger
        self.ttl = ttl
        self.clock = clock
        self.read = read
        self._lock = threading.Lock()
        self._value: Any = None
        self._at = 0.0

    def get(self) -> Any:
        with self._lock:
            now = self.clock()
            if self._value is None or now - self._at >= self.ttl:
                self._value, self._at = (self.read or self.ledger.outbox)(), now
            return self._value


class _LedgerCollector:
    def __init__(self, counts: CountCache, quiet: CountCache):
        self.counts = counts
        self.quiet = quiet

    def describe(self):
        # Without it the registry would collect (count the ledger) when the collector is
        # registered, as the app is built; the names are not known before.
        return []

    def collect(self):
        try:
            outbox = self.counts.get()
        except Exception:  # the database is down: /healthz says so; scrape the rest
            return
        states = GaugeMetricFamily(
            "bridge_ledger_registrations", "Registrations in the ledger by state", labels=["state"]
        )
        for state, count in outbox["states"].items():
            states.add_metric([state], count)
        yield states
        yield GaugeMetricFamily(
            "bridge_outbox_depth", "Registrations queued for delivery", value=outbox["depth"]
        )
        yield GaugeMetricFamily(
            "bridge_outbox_oldest_age_seconds",
            "Age of the oldest queued registration",
            value=outbox["oldestAgeSeconds"],
        )
        yield GaugeMetricFamily(
            "bridge_dead_letters", "Registrations Reteno refused for good", value=outbox["dead"]
        )
        yield GaugeMetricFamily(
            "bridge_removed_stale",
            "Registrations removed by the stale-token report",
            value=outbox["removedStale"],
        )
        removed = GaugeMetricFamily(
            "bridge_removed_registrations",
            "Removed registrations by reason: blocked, deactivated, kicked, forbidden, stale, "
            "other",
            labels=["reason"],
        )
        for reason, count in sorted(outbox["removedByReason"].items()):
            removed.add_metric([reason], count)
        yield removed
        yield GaugeMetricFamily(
            "bridge_quiet_registrations",
            f"Live registrations with no sign of life for {STALE_DAYS} days (the stale-token "
            "report; counted at most every 5 minutes)",
            value=self.quiet.get(),
        )
        commands = GaugeMetricFamily(
            "bridge_ledger_commands",
            "Mutes, unmutes and replays in the ledger by state",
            labels=["action", "state"],
        )
        for action, states in sorted(outbox["commands"].items()):
            for state, count in sorted(states.items()):
                commands.add_metric([action, state], count)
        yield commands
        events = GaugeMetricFamily(
            "bridge_ledger_events",
            "Custom events to Reteno in the ledger by state (dropped: its chat was gone)",
            labels=["state"],
        )
        for state, count in sorted(outbox["events"].items()):
            events.add_metric([state], count)
        yield events
        try:
            reason = pause_reason(*self.counts.ledger.upstream())  # one row, read each time
        except Exception:
            return
        paused = GaugeMetricFamily(
            "bridge_delivery_paused",
            "1 while delivery is paused because Reteno refused the credentials or the "
            "request (reason: unauthorized, forbidden, not_found, redirect, ...), else 0",
            labels=["reason"],
        )
        paused.add_metric([reason or ""], 1 if reason else 0)
        yield paused


def pause_reason(upstream: dict[str, Any], blocked) -> str | None:
    """The reason code of the delivery pause in force (``unauthorized``, ``redirect``, …),
    from the ledger's shared upstream state and when its block ends
    (:meth:`~bridge.ledger.Ledger.upstream`); None when not paused (a ``Retry-After``
    hold is no pause); ``unknown`` for a pause without a code."""
    paused_until = upstream.get("paused_until")
    if not (blocked and paused_until and blocked.isoformat() == paused_until):
        return None
    reason = upstream.get("pause_reason")
    # a code; a state written before codes held Reteno's text, never shown
    return reason if reason and _CODE.match(str(reason)) else "unknown"


class _RequestLogCollector:
    """The request log's drops: the log queue is one per process, not per bridge."""

    def collect(self):
        yield CounterMetricFamily(
            "bridge_request_log_dropped",
            "Request-log lines dropped because the log sink fell behind (this process)",
            value=dropped_request_lines(),
        )


class Metrics:
    def __init__(self, ledger=None, cache_seconds: float = 0.0):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.registrations = Counter(
            "bridge_registrations",
            "Token objects accepted by /register (queued, duplicate); rejected requests (invalid)",
            ["result"],
            registry=r,
        )
        self.events = Counter(
            "bridge_events",
            "Custom events to Reteno taken by POST /events (queued); refused (not_found, "
            'invalid); their delivery outcomes are bridge_commands_total{lane="events"}',
            ["result"],
            registry=r,
        )
        self.deliveries = Counter(
            "bridge_deliveries", "Registrations per delivery outcome", ["outcome"], registry=r
        )
        self.commands = Counter(
            "bridge_commands",
            "Mutes, unmutes, replays and custom events per delivery outcome",
            ["lane", "outcome"],
            registry=r,
        )
        self.upstream_calls = Counter(
            "bridge_upstream_calls",
            "Calls to Reteno by outcome and HTTP status",
            ["outcome", "status"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "bridge_upstream_latency_seconds",
            "Latency of calls to Reteno",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.removals = Counter(
            "bridge_removals", "Registrations removed, by cause", ["cause"], registry=r
        )
        self.status_events = Counter(
            "bridge_status_events", "Status events received, by kind", ["kind"], registry=r
        )
        self.conflicts = Counter(
            "bridge_conflicts",
            "Registrations of a chat that has another identity, by the "
            "state they started in (queued: sent anyway; held: kept back)",
            ["state"],
            registry=r,
        )
        self.delivery_delay = Histogram(
            "bridge_delivery_delay_seconds",
            "From a registration's submission to Reteno taking it (the deliveries this "
            "process made)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60, 300, 900, 3600, 21600, 86400),
            registry=r,
        )
        self.auth_failures = Counter(
            "bridge_auth_failures",
            "Requests refused for missing or wrong credentials, by door (api, statuses, "
            "telegram, healthz, metrics)",
            ["door"],
            registry=r,
        )
        self.telegram_updates = Counter(
            "bridge_telegram_updates", "Telegram updates received, by kind", ["kind"], registry=r
        )
        r.register(_RequestLogCollector())
        self.counts = CountCache(ledger, cache_seconds) if ledger is not None else None
        if self.counts is not None:
            # a whole-table scan (0.2 s at 1,000,000 rows on SQLite) for a share that moves
            # over days: counted at most every 5 minutes
            quiet = CountCache(
                ledger, max(cache_seconds, QUIET_SECONDS), read=lambda: ledger.quiet(STALE_DAYS)
            )
            r.register(_LedgerCollector(self.counts, quiet))

    def delivered(self, delays: list[float]) -> None:
        """Registrations delivered, each ``delays`` seconds after its submission."""
        for seconds in delays:
            self.delivery_delay.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serve these metrics on ``http://host:port/metrics`` from a thread of their own
        (a ``bridge deliver`` worker has no web server); returns what stops it."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join()

        return stop
