"""Figures 1 and 2 at CI scale: upstream faults and kill -9, over real processes.

The full runs (10,000 registrations) are ``bench/faults.py`` and
``bench/crashes.py``; see RELIABILITY.md. Here the same code runs with a few
hundred registrations. With ``BRIDGE_TEST_DATABASE=postgres`` both run on a
fresh PostgreSQL database with two gunicorn instances and two delivery
workers sharing the outbox.
"""

from __future__ import annotations

import pytest

from bench import crashes, faults
from tests.conftest import BACKEND, POSTGRES_URL

pytestmark = pytest.mark.real_http
# Real processes (gunicorn, the simulator, workers, kill -9): no clock or event of theirs
# reaches this process, so bench/harness.py polls, bounded, for a port to answer and for
# the outbox to drain (``drain_timeout``); the limits guard against hangs and time nothing.

POSTGRES = BACKEND == "postgres"
TOPOLOGY = (
    {"database_url": POSTGRES_URL, "servers": 2, "workers": 2, "gunicorn_workers": 1}
    if POSTGRES
    else {"servers": 1, "gunicorn_workers": 2}
)


def test_upstream_faults_lose_nothing_and_send_nothing_twice(tmp_path):
    figures = faults.run(
        300, batch_size=10, keep=str(tmp_path), quiet=True, drain_timeout=180, **TOPOLOGY
    )
    assert figures["faultsInjected"] > 0, figures
    assert figures["acknowledged"] == 300, figures
    assert figures["lost"] == 0, figures["examples"]
    assert figures["sentTwice"] == 0, figures["examples"]
    assert figures["wrongIdentity"] == 0 and figures["unexpectedTokens"] == 0, figures
    assert faults.passed(figures)


def test_kill_9_servers_and_workers_loses_nothing_acknowledged(tmp_path):
    topology = dict(TOPOLOGY)
    topology.setdefault("workers", 1)
    figures = crashes.run(
        200,
        duration=8,
        batch_size=20,
        latency_ms=100,
        seed=7,
        keep=str(tmp_path),
        quiet=True,
        drain_timeout=120,
        **topology,
    )
    assert figures["serverKills"] == 3 and figures["workerKills"] == 3, figures["kills"]
    assert figures["acknowledged"] == 200, figures
    assert figures["lost"] == 0, figures["examples"]
    # a double send only for a row a killed worker had in flight
    assert figures["sentTwiceOutsideLeasedAtKill"] == 0, figures
    # at most the rows leased at the kills: several batches each (BRIDGE_IN_FLIGHT)
    assert figures["sentTwice"] <= figures["leasedAtWorkerKills"], figures
    assert crashes.passed(figures)


def test_kill_9_of_workers_with_several_batches_in_flight_loses_nothing(tmp_path):
    """As above with ``BRIDGE_IN_FLIGHT=4``, small batches and slow answers, so a worker
    dies with several batches leased: only those may be sent twice."""
    topology = dict(TOPOLOGY)
    topology.setdefault("workers", 1)
    figures = crashes.run(
        200,
        duration=8,
        batch_size=4,
        latency_ms=400,
        in_flight=4,
        seed=11,
        keep=str(tmp_path),
        quiet=True,
        drain_timeout=120,
        **topology,
    )
    assert figures["workerKills"] == 3 and figures["killsWithSeveralBatchesLeased"] >= 1, figures[
        "kills"
    ]
    assert figures["acknowledged"] == 200, figures
    assert figures["lost"] == 0, figures["examples"]
    assert figures["sentTwiceOutsideLeasedAtKill"] == 0, figures
    assert crashes.passed(figures)
