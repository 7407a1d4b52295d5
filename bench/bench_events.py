"""Target (issue 28): custom events to Reteno from one worker, end to end.

    .venv/bin/python bench/bench_events.py [--quick] [--events N] [--window S]

The Reteno simulator runs as its own process answering every call in 50 ms, with
Reteno's limits (200 requests/s for tokens, 350/s for ``/api/v2/event``). The bridge
is README's production layout: ``gunicorn -w 2 app:app`` without delivery threads and
one separate ``bridge deliver``. Its chats are registered and delivered first; then
``POST /events`` takes N events (bodies of 1000, spread over the chats) and the
figure is the events the simulator took per second from the last post's answer
until all were taken or the window (seconds after that answer) ran out: the worker
draining its outbox, not the ingest. Reteno has no bulk call for live events: one call
per event, so the figure is what the worker's calls in flight allow.

Measured twice in one run: with ``BRIDGE_IN_FLIGHT=1`` (the one-in-flight baseline)
and with the worker's default; the ratio is printed beside them. The simulator must
never answer 429 to an event (the limit kept), and as many events must arrive as
were posted, no more.

Target: >= 300 events/s with the default.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    API_KEY,
    Stack,
    http_json,
    save_result,
    say,
    simulator_stats,
    verdict,
    wait_quiet,
)

RATE_TARGET = 300.0
LATENCY_MS = 50
FIRST_CHAT = 3_000_000_000
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def register_chats(url: str, chats: int) -> None:
    session = requests.Session()
    for start in range(0, chats, 1000):
        tokens = [
            {"token": FIRST_CHAT + i, "externalCustomerId": f"c{FIRST_CHAT + i}"}
            for i in range(start, min(chats, start + 1000))
        ]
        r = session.post(f"{url}/register", json={"tokens": tokens}, headers=AUTH, timeout=60)
        assert r.status_code == 202, r.text[:300]


def wait_for(sim: str, counter: str, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if simulator_stats(sim)[counter] >= count:
            return True
        time.sleep(0.1)
    return False


def run(st: Stack, sim: str, label: str, chats: int, events: int, window: float, **env) -> dict:
    """One bridge (gunicorn + one ``bridge deliver``) taking ``events`` events; what the
    simulator received within ``window`` seconds."""
    http_json(f"{sim}/reset", "POST", {})
    bridge_env = st.bridge_env(st.dir / f"{label}.sqlite3", sim, background=False, **env)
    st.migrate(bridge_env)
    url, server = st.gunicorn("app:app", env=bridge_env, name=f"bridge-{label}")
    worker = st.deliver_worker(bridge_env, name=f"deliver-{label}")
    register_chats(url, chats)
    if not wait_for(sim, "tokens_received", chats, 120):
        raise SystemExit(f"{label}: the chats' registrations did not reach the simulator")
    before = simulator_stats(sim)
    session = requests.Session()
    started = time.monotonic()
    for first in range(0, events, 1000):
        body = {
            "events": [
                {
                    "token": FIRST_CHAT + (n % chats),
                    "eventTypeKey": "bench_event",
                    "params": {"n": str(n)},
                }
                for n in range(first, min(events, first + 1000))
            ]
        }
        r = session.post(f"{url}/events", json=body, headers=AUTH, timeout=60)
        assert r.status_code == 202, r.text[:300]
    posted = time.monotonic() - started
    at_posted = simulator_stats(sim)["events_received"]  # the rate is measured from here
    done = wait_for(sim, "events_received", events, window)
    elapsed = time.monotonic() - started - posted
    after = simulator_stats(sim)
    received = after["events_received"]
    if done:  # settle: a late duplicate would show here
        time.sleep(1.0)
        received = simulator_stats(sim)["events_received"]
    st.stop(worker)
    st.stop(server)
    return {
        "label": label,
        "env": env,
        "events": events,
        "postSeconds": round(posted, 2),
        "seconds": round(elapsed, 2),
        "received": received,
        "allReceived": done,
        "eventsPerSecond": (received - at_posted) / elapsed,
        "eventCalls": after["event_requests"] - before["event_requests"],
        "rateLimited": after["rate_limited"] - before["rate_limited"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--events", type=int, default=None, help="events posted (6000)")
    parser.add_argument("--chats", type=int, default=1000, help="chats they are about (1000)")
    parser.add_argument("--window", type=float, default=None, help="seconds to wait (30)")
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    events = args.events or (1500 if args.quick else 6000)
    window = args.window or (10.0 if args.quick else 30.0)
    quiet = {"loadavg": None, "quiet": None} if args.no_wait else wait_quiet()
    say(
        f"# bench_events: simulator {LATENCY_MS} ms a call, 350 events/s; {events} events "
        f"about {args.chats} chats; window {window:g} s; load average at start "
        f"{quiet['loadavg']}"
    )
    results = []
    with Stack("events", keep=args.keep) as st:
        sim = st.simulator(rps=200, latency_ms=LATENCY_MS)
        for label, env in (("one-in-flight", {"BRIDGE_IN_FLIGHT": 1}), ("default", {})):
            result = run(st, sim, label, args.chats, events, window, **env)
            results.append(result)
            say(
                f"{label:<14} {result['eventsPerSecond']:8.1f} events/s "
                f"({result['received']} of {events}, {result['seconds']} s after "
                f"{result['postSeconds']} s of posting; "
                f"{result['rateLimited']} x 429)"
            )
    baseline, bridge = results
    ratio = bridge["eventsPerSecond"] / baseline["eventsPerSecond"] if baseline["received"] else 0
    exact = all(r["received"] <= r["events"] for r in results) and bridge["allReceived"]
    ok = bridge["eventsPerSecond"] >= RATE_TARGET and exact and bridge["rateLimited"] == 0
    say("")
    say(
        f"events: {bridge['eventsPerSecond']:.0f}/s = {ratio:.1f}x one in flight "
        f"(target >= {RATE_TARGET:.0f}/s, no 429, each event once): "
        f"{'all arrived once' if exact else 'NOT all arrived within the window'}  {verdict(ok)}"
    )
    save_result(
        "events",
        {
            "quiet": quiet,
            "events": events,
            "chats": args.chats,
            "window": window,
            "oneInFlight": baseline,
            "bridge": bridge,
            "ratio": round(ratio, 1),
            "pass": ok,
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
