"""Target 4: the status webhook and the Telegram webhook answer fast.

    .venv/bin/python bench/bench_webhooks.py [--quick]

A ledger of 100,000 delivered registrations is loaded with SQL and served by
``gunicorn -w 2 app:app``. Then, one request at a time:

* ``POST /statuses`` with a JSON array of 1,000 ``FAILED`` / ``Forbidden``
  events naming 1,000 different live tokens (each run a fresh 1,000), which
  removes all of them; the Reteno activity-webhook vocabulary
  (``UNDELIVERED`` + ``403: Forbidden ...`` by ``externalCustomerId``) is timed
  the same way for comparison;
* ``POST /telegram/webhook`` with one ``my_chat_member`` update whose new
  status is ``kicked``, each for a different live token.

Server time is what the bridge's own request log reports (``ms=``, from the
start to the end of the request in Flask); the client's round trip over
127.0.0.1 is shown beside it. Baseline: the same bridge answering
``GET /statuses`` (the probe: no body, no database). Targets: the 1,000-event
array in <= 200 ms; one kicked update in <= 5 ms (median; p90 shown).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    API_KEY,
    Stack,
    bulk_load,
    median,
    save_result,
    say,
    verdict,
    wait_quiet,
)

STATUSES_TARGET_MS = 200.0
TELEGRAM_TARGET_MS = 5.0
SECRET = "bench-telegram-secret"
_LOGGED = re.compile(r"method=(\w+) path=(\S+) .*status=(\d+) ms=([\d.]+)")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def logged_ms(log: Path, method: str, path: str, skip: int) -> list[float]:
    """Server times the request log recorded for ``method path`` (after ``skip`` lines)."""
    out = []
    for line in log.read_text(errors="replace").splitlines()[skip:]:
        m = _LOGGED.search(line)
        if m and m.group(1) == method and m.group(2) == path:
            out.append(float(m.group(4)))
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    arrays = 3 if args.quick else 8
    updates = 100 if args.quick else 400
    results: dict = {}
    with Stack("webhooks", keep=args.keep) as st:
        db = st.dir / "ledger.sqlite3"
        env = st.bridge_env(db, None, background=False, TELEGRAM_WEBHOOK_SECRET=SECRET)
        st.migrate(env)
        took = bulk_load(db, 100_000)
        say(f"# loaded 100,000 registrations in {took:.1f} s")
        quiet = {"loadavg": None, "quiet": None} if args.no_wait else wait_quiet()
        results["quiet"] = quiet
        url, proc = st.gunicorn("app:app", env=env)
        say(
            f"# bench_webhooks: gunicorn -w 2, one request at a time; "
            f"load average {quiet['loadavg']}"
        )
        session = requests.Session()
        bearer = {"Authorization": f"Bearer {API_KEY}"}
        for _ in range(20):  # warm both workers
            session.get(f"{url}/statuses", timeout=10)
            session.post(f"{url}/statuses", json=[], headers=bearer, timeout=10)

        def timed(method: str, path: str, n: int, make_request) -> dict:
            skip = len(proc.log.read_text(errors="replace").splitlines())
            rtt = []
            for i in range(n):
                t = time.perf_counter()
                response = make_request(i)
                rtt.append((time.perf_counter() - t) * 1000)
                assert response.status_code == 200, response.text[:300]
                yield_check(i, response)
            time.sleep(0.3)
            server = logged_ms(proc.log, method, path, skip)
            return {
                "n": n,
                "serverMedianMs": median(server),
                "serverP90Ms": pct(server, 0.9),
                "serverMaxMs": max(server) if server else float("nan"),
                "rttMedianMs": median(rtt),
                "rttMaxMs": max(rtt),
                "logged": len(server),
            }

        checks: list = []

        def yield_check(i, response):
            checks.append(response.json())

        probe = timed("GET", "/statuses", 200, lambda i: session.get(f"{url}/statuses", timeout=10))
        say(
            f"baseline GET /statuses (probe):        server median {probe['serverMedianMs']:6.2f}"
            f" ms, round trip {probe['rttMedianMs']:.2f} ms"
        )

        next_token = [1_000_000_000]

        def simple_array(_i):
            first = next_token[0]
            next_token[0] += 1000
            events = [
                {
                    "status": "FAILED",
                    "error": "Forbidden: bot was blocked by the user",
                    "token": str(first + k),
                }
                for k in range(1000)
            ]
            return session.post(f"{url}/statuses", json=events, headers=bearer, timeout=60)

        checks.clear()
        simple = timed("POST", "/statuses", arrays, simple_array)
        removed = [len(c["removed"]) for c in checks]
        say(
            f"POST /statuses, 1000 FAILED events:    server median {simple['serverMedianMs']:6.1f}"
            f" ms, max {simple['serverMaxMs']:.1f} ms, round trip {simple['rttMedianMs']:.1f} ms;"
            f" removed per array {sorted(set(removed))}"
        )

        def reteno_array(_i):
            first = next_token[0] - 1_000_000_000
            next_token[0] += 1000
            events = [
                {
                    "activityStatus": "UNDELIVERED",
                    "mediaType": "telegrambot",
                    "statusDescription": "403: Forbidden: bot was blocked by the user",
                    "externalCustomerId": f"cust-{first + k}",
                    "messageId": first + k,
                    # now: an event older than the registration removes nothing
                    "activityDateTime": now_iso(),
                }
                for k in range(1000)
            ]
            return session.post(f"{url}/statuses", json=events, headers=bearer, timeout=60)

        checks.clear()
        reteno = timed("POST", "/statuses", max(2, arrays // 2), reteno_array)
        removed_reteno = [len(c["removed"]) for c in checks]
        say(
            f"POST /statuses, 1000 Reteno events:    server median {reteno['serverMedianMs']:6.1f}"
            f" ms, max {reteno['serverMaxMs']:.1f} ms; removed per array "
            f"{sorted(set(removed_reteno))}"
        )

        tg_headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}

        def kicked(i):
            token = next_token[0]
            next_token[0] += 1
            update = {
                "update_id": 10_000 + i,
                "my_chat_member": {
                    "chat": {"id": token, "type": "private"},
                    "from": {"id": token, "is_bot": False, "first_name": "U"},
                    # dated now: an update older than the registration removes nothing
                    "date": int(time.time()),
                    "old_chat_member": {
                        "status": "member",
                        "user": {"id": 1, "is_bot": True, "first_name": "B"},
                    },
                    "new_chat_member": {
                        "status": "kicked",
                        "until_date": 0,
                        "user": {"id": 1, "is_bot": True, "first_name": "B"},
                    },
                },
            }
            return session.post(
                f"{url}/telegram/webhook", json=update, headers=tg_headers, timeout=10
            )

        checks.clear()
        tg = timed("POST", "/telegram/webhook", updates, kicked)
        say(
            f"POST /telegram/webhook, kicked:        server median {tg['serverMedianMs']:6.2f} ms,"
            f" p90 {tg['serverP90Ms']:.2f} ms, max {tg['serverMaxMs']:.2f} ms, round trip "
            f"{tg['rttMedianMs']:.2f} ms"
        )
        with requests.get(
            f"{url}/tokens", params={"token": str(next_token[0] - 1)}, headers=bearer, timeout=10
        ) as r:
            last_state = r.json()["items"][0]["state"]
        st.stop(proc)
    ok_status = simple["serverMaxMs"] <= STATUSES_TARGET_MS and set(removed) == {1000}
    ok_tg = tg["serverMedianMs"] <= TELEGRAM_TARGET_MS and last_state == "removed"
    say("")
    say(
        f"1000-event status array: {simple['serverMedianMs']:.1f} ms median, "
        f"{simple['serverMaxMs']:.1f} ms worst of {arrays} (target <= {STATUSES_TARGET_MS:g} ms, "
        f"every one removing 1000 tokens)  {verdict(ok_status)}"
    )
    say(
        f"kicked Telegram update: {tg['serverMedianMs']:.2f} ms median, p90 "
        f"{tg['serverP90Ms']:.2f} ms (target <= {TELEGRAM_TARGET_MS:g} ms); round trip "
        f"{tg['rttMedianMs']:.2f} ms vs {probe['rttMedianMs']:.2f} ms for the probe "
        f"({tg['rttMedianMs'] / probe['rttMedianMs']:.1f}x)  {verdict(ok_tg)}"
    )
    results.update(
        {
            "probe": probe,
            "statusesSimple": simple,
            "statusesReteno": reteno,
            "telegramKicked": tg,
            "pass": {"statuses": ok_status, "telegram": ok_tg},
        }
    )
    save_result("webhooks", results)
    return 0 if ok_status and ok_tg else 1


if __name__ == "__main__":
    sys.exit(main())
