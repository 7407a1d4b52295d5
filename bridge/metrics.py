"""Prometheus metrics for ``GET /metrics``.

Owns one registry per bridge instance. Counters and the latency histogram
count what this process did; the ledger gauges (outbox depth and age, dead
letters, registrations by state) are read from the database at scrape time,
so they are right whichever process did the work.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _LedgerCollector:
    def __init__(self, ledger):
        self.ledger = ledger

    def collect(self):
        try:
            outbox = self.ledger.outbox()
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


class Metrics:
    def __init__(self, ledger=None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.registrations = Counter(
            "bridge_registrations",
            "Token objects accepted by /register (queued, duplicate); rejected requests (invalid)",
            ["result"], registry=r,
        )
        self.deliveries = Counter(
            "bridge_deliveries", "Registrations per delivery outcome", ["outcome"], registry=r
        )
        self.upstream_calls = Counter(
            "bridge_upstream_calls", "Calls to Reteno by outcome and HTTP status",
            ["outcome", "status"], registry=r,
        )
        self.upstream_latency = Histogram(
            "bridge_upstream_latency_seconds", "Latency of calls to Reteno",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r,
        )
        self.removals = Counter(
            "bridge_removals", "Registrations removed, by cause", ["cause"], registry=r
        )
        self.status_events = Counter(
            "bridge_status_events", "Status events received, by kind", ["kind"], registry=r
        )
        self.conflicts = Counter(
            "bridge_conflicts", "Registrations of a chat that has another identity, by the "
            "state they started in (queued: sent anyway; held: kept back)", ["state"],
            registry=r,
        )
        self.telegram_updates = Counter(
            "bridge_telegram_updates", "Telegram updates received, by kind", ["kind"], registry=r
        )
        if ledger is not None:
            r.register(_LedgerCollector(ledger))

    def render(self) -> bytes:
        return generate_latest(self.registry)
