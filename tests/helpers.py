"""What many tests do through the bridge's HTTP API, each call asserted to succeed."""

from __future__ import annotations

import itertools
import threading
import time
import types
from datetime import datetime


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


def run_cli(runner, *args, input=None, code=0):
    """``flask bridge ARGS`` through the test CLI runner, asserted to exit with ``code``."""
    result = runner.invoke(args=["bridge", *args], input=input)
    assert result.exit_code == code, (result.output, result.exception)
    return result


def table_rows(output: str) -> list[list[str]]:
    """The rows of the first table in ``output`` (header first), split on 2+ spaces."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line.replace(" ", "")) == {"-"}) - 1
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append([cell for cell in line.split("  ") if cell.strip() != ""])
    return [[c.strip() for c in row] for row in rows[:1] + rows[2:]]


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
    fake = types.SimpleNamespace(
        **{name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    )
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


# --- the shape of a regular expression ----------------------------------------------


def _unbounded_repeats_that_give_back(parsed, found):
    """Greedy or lazy repeats without an upper bound, anywhere in a parsed pattern."""
    from re import _constants as c

    for op, arg in parsed:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT):
            low, high, item = arg
            if high == c.MAXREPEAT:
                found.append((op, low))
            _unbounded_repeats_that_give_back(item, found)
        elif op == c.POSSESSIVE_REPEAT:
            _unbounded_repeats_that_give_back(arg[2], found)
        elif op == c.SUBPATTERN:
            _unbounded_repeats_that_give_back(arg[-1], found)
        elif op == c.BRANCH:
            for branch in arg[1]:
                _unbounded_repeats_that_give_back(branch, found)
        elif op in (c.ASSERT, c.ASSERT_NOT):
            _unbounded_repeats_that_give_back(arg[1], found)
        elif op == c.ATOMIC_GROUP:
            _unbounded_repeats_that_give_back(arg, found)
    return found


def _starts_with_a_run(parsed) -> bool:
    """Whether the first thing a pattern consumes is an unbounded repeat (a run of a
    class) that neither ``^`` nor a lookbehind anchors."""
    from re import _constants as c

    for op, arg in parsed:
        if op in (c.ASSERT, c.ASSERT_NOT) and arg[0] == -1:
            return False  # a lookbehind anchors the start: a run is entered once
        if op == c.AT and arg in (c.AT_BEGINNING, c.AT_BEGINNING_STRING):
            return False  # one start position only
        if op == c.SUBPATTERN:
            return _starts_with_a_run(arg[-1])
        if op == c.AT:
            continue
        return op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT) and arg[1] == c.MAXREPEAT
    return False


def linear_shape_problem(pattern) -> str | None:
    """Why a compiled pattern may take more than linear time on a long input (a greedy
    or lazy repeat without an upper bound, which gives characters back; or a start on
    a run that no lookbehind anchors, which is scanned once per start position), or
    None. Possessive repeats (``*+``, ``++``) and a leading lookbehind are the cures."""
    from re import _parser

    parsed = _parser.parse(pattern.pattern, pattern.flags)
    if _unbounded_repeats_that_give_back(parsed, []):
        return "an unbounded repeat that backtracks"
    if _starts_with_a_run(parsed):
        return "starts with a run no lookbehind anchors"
    return None


# --- two workers on one outbox (tests/test_outbox_guarantees.py, test_ledger_*.py) ------

LEASE = 60  # BRIDGE_LEASE_SECONDS of the apps those tests make


def second_worker(make_app, clock):
    """The delivery worker of another app on the same database, reading the same clock."""
    runtime = make_app(BRIDGE_LEASE_SECONDS=LEASE).extensions["reteno_bridge"]
    runtime.ledger.clock = clock
    return runtime


def tokens(*numbers):
    """Token objects for ``/register``: each number as the token and the contactId."""
    return [{"token": n, "contactId": n} for n in numbers]


def calls(requests_mock):
    """The tokens of every upstream call, call by call."""
    return [[t["token"] for t in r.json()["tokens"]] for r in requests_mock.request_history]


def by_token(client, auth):
    """``GET /tokens`` as {token: registration}."""
    return {item["token"]: item for item in rows(client, auth)}


def seconds_from_now(clock, iso):
    """How far an ISO 8601 time (as the API shows it) lies ahead of the ``clock`` fixture."""
    return (datetime.fromisoformat(iso) - clock.now).total_seconds()


# --- Telegram updates dated on the fake clock -------------------------------------------

TELEGRAM_BOT = {
    "id": 7000000001,
    "is_bot": True,
    "first_name": "Test bot",
    "username": "my_test_bot",
}
_update_ids = itertools.count(600_000_000)


def telegram_date(clock, seconds: float = 0) -> int:
    """An update's ``date`` (Unix seconds, whole as Telegram's): the whole second the
    ``clock`` fixture reads, ``seconds`` later (or earlier); never the wall clock."""
    return int(clock.now.timestamp() + seconds)


def chat_member(chat_id, new: str, old: str, date: int) -> dict:
    """A ``my_chat_member`` update of a private chat: ``kicked`` is a block of the bot,
    ``member`` an unblock."""

    def member(status):
        return {
            "user": TELEGRAM_BOT,
            "status": status,
            **({"until_date": 0} if status == "kicked" else {}),
        }

    return {
        "update_id": next(_update_ids),
        "my_chat_member": {
            "chat": {"id": int(chat_id), "first_name": "Ann", "type": "private"},
            "from": {"id": int(chat_id), "is_bot": False, "first_name": "Ann"},
            "date": date,
            "old_chat_member": member(old),
            "new_chat_member": member(new),
        },
    }


def start_message(chat_id, date: int, payload: str | None = None) -> dict:
    """``/start [payload]`` sent in a private chat."""
    text = "/start" if payload is None else f"/start {payload}"
    return {
        "update_id": next(_update_ids),
        "message": {
            "message_id": 17,
            "date": date,
            "text": text,
            "chat": {"id": int(chat_id), "first_name": "Ann", "type": "private"},
            "from": {"id": int(chat_id), "is_bot": False, "first_name": "Ann"},
            "entities": [{"offset": 0, "length": len("/start"), "type": "bot_command"}],
        },
    }


def telegram(client, update: dict, secret: str) -> None:
    """``POST /telegram/webhook`` of ``update`` with the webhook's secret, asserted 200."""
    response = client.post(
        "/telegram/webhook", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": secret}
    )
    assert response.status_code == 200, response.get_json()
