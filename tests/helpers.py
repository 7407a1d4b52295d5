"""What many tests do through the bridge's HTTP API, each call asserted to succeed."""

from __future__ import annotations

import itertools
import threading
import time
import types


def register(client, auth, *items):
    """``POST /register`` of one token object (sent as it is) or several (as
    ``{"tokens": [...]}``); the registrations of the 202."""
    body = items[0] if len(items) == 1 else {"tokens": list(items)}
    response = client.post("/register", json=body, headers=auth)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["registrations"]


def rows(client, auth, **filters):
    """``GET /tokens`` with ``filters``: the items of one page of up to 500."""
    response = client.get("/tokens", query_string={"limit": 500, **filters}, headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["items"]


def history(client, auth, token):
    """``GET /tokens/<token>/history``: the events, oldest first."""
    response = client.get(f"/tokens/{token}/history", headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["events"]


def assert_error_shape(response, code):
    """``response`` is an error of status ``code`` in the bridge's one JSON error shape;
    its body."""
    assert response.status_code == code, response.data
    body = response.get_json()
    assert set(body) == {"code", "status", "message", "errors"}
    assert body["code"] == code
    assert isinstance(body["status"], str) and body["status"]
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["errors"], dict)
    return body


def step_perf_counter(monkeypatch, module, step: float) -> None:
    """Make ``module`` read a ``time.perf_counter()`` that moves exactly ``step`` seconds at
    each reading (the rest of its ``time`` is the real one): a duration it measures from
    one reading to the next is ``step``. Choose a ``step`` a float holds exactly (0.25)."""
    readings = itertools.count()
    fake = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time)
                                    if not name.startswith("_")})
    fake.perf_counter = lambda: next(readings) * step
    monkeypatch.setattr(module, "time", fake)


class Tally:
    """Adds up what a ledger method of ``app`` returns as the background delivery thread
    calls it (``amount`` maps a result to a number), so a test waits on a condition
    instead of polling over HTTP. It sees every call made after it: make it before the
    delivery thread has anything to do."""

    def __init__(self, monkeypatch, app, method, amount=lambda result: result):
        ledger = app.extensions["reteno_bridge"].ledger
        real = getattr(ledger, method)
        self.total = 0
        self._changed = threading.Condition()

        def tallied(*args, **kwargs):
            result = real(*args, **kwargs)
            with self._changed:
                self.total += amount(result)
                self._changed.notify_all()
            return result

        monkeypatch.setattr(ledger, method, tallied)

    def wait_for(self, total, timeout=30.0):
        """Until the tally reaches ``total``; the timeout bounds a hang, it times nothing."""
        with self._changed:
            reached = self._changed.wait_for(lambda: self.total >= total, timeout)
            assert reached, f"{self.total} of {total} after {timeout:g} s"
