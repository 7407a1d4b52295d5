"""Out-of-order events: time decides (RELIABILITY.md, "Out-of-order events").

The same events about ONE chat — registrations, blocks (a Reteno ``UNDELIVERED``
Forbidden status, a simple-vocabulary ``FAILED`` Forbidden status, or Telegram's
``my_chat_member`` → ``kicked``), unblocks (``my_chat_member`` → ``member``) and
signs of life (a ``DELIVERED`` status, a ``/start``) — are delivered to the bridge
in EVERY order of arrival, and the final state (``GET /tokens?token=…``: which
identifiers have a registration that is not ``removed``) must be the state that
the events' own times imply.

**Whose time.** A status event or a Telegram update carries its own time
(``activityDateTime`` / ``time``: ISO 8601 or epoch seconds; ``date``: epoch
seconds) and may arrive any time after it. A ``POST /register`` carries none: its
time is the moment the bridge processes it (the ledger's clock), so a
registration cannot "arrive late": it happens when it arrives. The test models
this honestly: the ledger clock (the ``Clock`` fixture, never a real one) moves
forward only, by a drawn gap before each arrival, and never reads earlier than
the date of an update or status it is handed (nothing arrives before it
happened: the senders' clocks agree with the bridge's). So in one arrival order a
registration lands before a block dated later (the block was delayed), in
another after it (it is newer than the block). Which one happened is what the
oracle is told: each registration's time is the clock at its arrival in that
very order.

**The oracle.** The state the events' own times imply is the state of a chat
that received every event at its own time, in the order of those times, and
applied the contract to it: a registration creates a live registration of its
identity (or is a duplicate of a live one); a block removes every live
registration of the chat (a Reteno status that names an identifier finds the chat
through a live registration of that identifier); an unblock queues the chat's
last registration again when none is live; a sign of life changes no state. In
time order no event is stale: staleness is how the bridge gets back to this
state when the events come in another order. The property uses one identity
(the issue's block/unblock/re-register of one user): with two identities on one
chat (an identity conflict) which registration an unblock brings back, and which
chat a status naming an identifier means, depend on the arrival order.

**Stories that can happen.** The timed events, in the order of their dates, are
a possible history of one user: blocks while the bot is unblocked (or more
Forbidden statuses while it stays blocked), an unblock only while blocked, a
DELIVERED status or a ``/start`` only while unblocked. Contradictory evidence (a
DELIVERED dated after a block with no unblock between) has no state the times
imply, and the bridge's answer to it depends on the order (a sign of life that
arrives first makes the older block stale; one that arrives after it finds
nothing live).

**A block that finds nothing live** (an earlier-arriving block removed the chat
already) is remembered as the chat's latest removal, so an unblock dated before
it that arrives after it stays stale (``test_a_block_that_found_nothing_live_...``;
this property found the gap). The property counts such arrival orders
(``forgotten_block``) and judges them like every other.

**Ties.** Times are compared at the resolution they were given in (whole
seconds): a block in the same second as a sign of life before it still removes,
and an unblock in the same second as a block before it still brings the chat
back. A tie in an arbitrary arrival order has no "true" order, so all times are
distinct whole seconds: dates are even, registrations land on odd seconds
(``tests/test_statuses.py`` and ``tests/test_telegram.py`` pin the ties).

**Isolation.** Every arrival order runs on a chat of its own (its own token and
identifiers, its own update and message ids) in one bridge: the ledger relates
events to registrations only through the token or an identifier, so chats with
nothing in common do not see each other — a fresh ledger per order, without
building an app per order. That is checked too: each chat right after its own
events, and every chat again once all sequences are done (a later chat's events
must not have changed an earlier one). ``BRIDGE_ORDER_EXAMPLES`` sets the number
of event sequences (default 40; each is delivered in all its distinct orders),
``BRIDGE_ORDER_MAX_EVENTS`` the longest sequence (default 5: up to 120 orders).
``tests/test_event_times.py`` runs the same model with reported times that lie
(skewed by hours) and offset-less times in several zones.
"""

from __future__ import annotations

import base64
import itertools
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import history, register, rows

EXAMPLES = int(os.environ.get("BRIDGE_ORDER_EXAMPLES", "40"))
MAX_EVENTS = int(os.environ.get("BRIDGE_ORDER_MAX_EVENTS", "5"))
TG_SECRET = "order-telegram-secret-0123"
HOOK_USER, HOOK_PASSWORD = "reteno-hook", "order-hook-password-0123"
TG_HEADERS = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
BASE = 1_900_000_000  # 2030-03-17, whole seconds
BLOCKED = "403: Forbidden: bot was blocked by the user"

order_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@pytest.fixture
def app(make_app):
    return make_app(
        TELEGRAM_WEBHOOK_SECRET=TG_SECRET,
        BRIDGE_WEBHOOK_USERNAME=HOOK_USER,
        BRIDGE_WEBHOOK_PASSWORD=HOOK_PASSWORD,
    )


def basic() -> dict:
    raw = base64.b64encode(f"{HOOK_USER}:{HOOK_PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


# --- the events ---------------------------------------------------------------------------

BLOCKS = ("status_block", "simple_block", "telegram_block")


@dataclass(frozen=True)
class Ev:
    """One event: ``register`` (``who``: which identity) or a timed kind (``date``: its
    own time, seconds after BASE; ``fmt``: how a status writes its time; ``skew``: how
    far the time it reports is off, in seconds)."""

    kind: str
    who: int = 0
    date: int | None = None
    fmt: str = "iso"
    skew: int = 0

    @property
    def reported(self) -> int | None:
        """The time the event says it happened at, seconds after BASE."""
        return None if self.date is None else self.date + self.skew

    def __str__(self) -> str:
        if self.kind == "register":
            return f"register(identity {self.who})"
        extra = [self.fmt] if self.kind in ("status_block", "simple_block", "delivered") else []
        extra += [f"identity {self.who}"] if self.kind in ("status_block", "delivered") else []
        extra += [f"reported {self.reported}"] if self.skew else []
        return f"{self.kind}(t={', '.join([str(self.date), *extra])})"


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(BASE + seconds, UTC)


def written(seconds: int, fmt: str, zone: tzinfo = UTC):
    """A status event's time in one of the forms the contract accepts; ``naive``: the
    time of day in ``zone`` without an offset, as Reteno writes it for an account there
    (and as a bridge with ``BRIDGE_STATUS_TIMEZONE`` = that zone reads it)."""
    moment = at(seconds)
    return {
        "iso": moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "naive": moment.astimezone(zone).strftime("%Y-%m-%dT%H:%M:%S"),
        "offset": moment.astimezone(timezone(timedelta(hours=2))).isoformat(),
        "epoch": BASE + seconds,
        "epoch_text": str(BASE + seconds),
    }[fmt]


@st.composite
def sequences(draw, identities: int = 1):
    """A sequence of 2..MAX_EVENTS events on one chat and one gap per arrival slot.

    The first is a registration (something to act on); the timed events, in the order
    of their dates, tell a story that can happen: the user starts with the bot
    unblocked; a block (a Forbidden status, or Telegram's ``kicked``) comes while it is
    unblocked or, for Forbidden statuses, while it stays blocked; an unblock only while
    blocked; a DELIVERED status or a ``/start`` only while unblocked. Registrations may
    come at any time (the bot backend does not know)."""
    n = draw(st.integers(2, MAX_EVENTS))
    dates = sorted(draw(st.lists(st.integers(1, 30), min_size=n, max_size=n, unique=True)))
    events, blocked, timed = [Ev("register", 0)], False, 0
    for _ in range(n - 1):
        allowed = (
            ("register", "register", "status_block", "simple_block", "unblock", "unblock")
            if blocked
            else ("register", "register", *BLOCKS, "delivered", "start")
        )
        kind = draw(st.sampled_from(allowed))
        who = draw(st.integers(0, identities - 1))
        if kind == "register":
            events.append(Ev("register", who))
            continue
        blocked = kind in BLOCKS or (blocked and kind != "unblock")
        fmt = draw(st.sampled_from(("iso", "naive", "offset", "epoch", "epoch_text")))
        events.append(Ev(kind, who, 2 * dates[timed], fmt))
        timed += 1
    gaps = draw(st.lists(st.integers(1, 12), min_size=n, max_size=n))
    return events, gaps


def arrival_orders(events: list[Ev]):
    """Every distinct order of arrival (equal events are interchangeable)."""
    seen = set()
    for order in itertools.permutations(events):
        if order not in seen:
            seen.add(order)
            yield list(order)


def timeline(order: list[Ev], gaps: list[int]) -> list[tuple[int, Ev]]:
    """When each event of an arrival order happened: a timed event at its date, a
    registration at the (odd) second the bridge's clock reads when it arrives. The
    clock moves forward only and is never before the date of what arrives."""
    clock, out = 0, []
    for gap, event in zip(gaps, order, strict=True):
        if event.kind == "register":
            clock += gap
            clock += 1 - clock % 2
            out.append((clock, event))
        else:
            clock = max(clock, event.date) + gap
            out.append((clock, event))
    return out


# --- the oracle -------------------------------------------------------------------------------


@dataclass
class Chat:
    regs: list[list] = field(default_factory=list)  # [identity, live]

    def live(self) -> list[list]:
        return [r for r in self.regs if r[1]]


def oracle(happened: list[tuple[int, Ev]]) -> list[int]:
    """The identities with a live registration after every event, applied at its own time
    in the order of those times (a registration's own time: when it arrived)."""
    chat = Chat()
    own = sorted(((e.date if e.kind != "register" else t), e) for t, e in happened)
    assert len({t for t, _ in own}) == len(own), "times must be distinct"
    for _t, event in own:
        live = chat.live()
        if event.kind == "register":
            if not any(r[0] == event.who for r in live):
                chat.regs.append([event.who, True])
        elif event.kind == "status_block":  # Reteno's: names an identifier
            if any(r[0] == event.who for r in live):
                for r in live:
                    r[1] = False
        elif event.kind in BLOCKS:  # names the chat
            for r in live:
                r[1] = False
        elif event.kind == "unblock":
            if not live and chat.regs:
                chat.regs.append([chat.regs[-1][0], True])
        # delivered, start: a sign of life; in time order it changes no state
    return sorted({r[0] for r in chat.live()})


# --- the bridge ---------------------------------------------------------------------------------


class Deliverer:
    """Sends events of one chat to the bridge through its HTTP API."""

    _chats = itertools.count(7_000_000_001)
    _ids = itertools.count(900_000_000)

    def __init__(self, client, auth, clock, zone: tzinfo = UTC):
        self.client, self.auth, self.clock, self.zone = client, auth, clock, zone
        self.token = next(self._chats)
        self.blocks: list[int] = []  # dates of the blocks that arrived so far
        self.forgotten_block = False  # see test_a_block_that_found_nothing_live_...

    def email(self, who: int) -> str:
        return f"chat{self.token}-id{who}@example.com"

    def telegram(self, update: dict):
        response = self.client.post("/telegram/webhook", json=update, headers=TG_HEADERS)
        assert response.status_code == 200, response.get_json()

    def chat_member(self, new: str, old: str, date: int) -> dict:
        bot = {"id": 7000000000, "is_bot": True, "first_name": "Bot", "username": "order_bot"}
        user = {"id": self.token, "is_bot": False, "first_name": "Ann"}
        return {
            "update_id": next(self._ids),
            "my_chat_member": {
                "chat": {"id": self.token, "first_name": "Ann", "type": "private"},
                "from": user,
                "date": BASE + date,
                "old_chat_member": {"user": bot, "status": old},
                "new_chat_member": {
                    "user": bot,
                    "status": new,
                    **({"until_date": 0} if new == "kicked" else {}),
                },
            },
        }

    def statuses(self, event: dict):
        response = self.client.post("/statuses", json=[event], headers=basic())
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def send(self, when: int, event: Ev):
        self.clock.now = at(when)
        if event.kind in BLOCKS:
            self.blocks.append(event.date)
        elif event.kind == "unblock" and any(d > event.date for d in self.blocks):
            self.forgotten_block |= self.requeues_despite_a_later_block(event.date)
        if event.kind == "register":
            register(self.client, self.auth, {"token": self.token, "email": self.email(event.who)})
        elif event.kind in ("status_block", "delivered"):
            blocked = event.kind == "status_block"
            self.statuses(
                {
                    "activityStatus": "UNDELIVERED" if blocked else "DELIVERED",
                    "statusDescription": BLOCKED if blocked else None,
                    "activityDateTime": written(event.reported, event.fmt, self.zone),
                    "email": self.email(event.who),
                    "mediaType": "telegrambot",
                    "messageId": next(self._ids),
                }
            )
        elif event.kind == "simple_block":
            self.statuses(
                {
                    "status": "FAILED",
                    "error": "Forbidden",
                    "token": str(self.token),
                    "time": written(event.reported, event.fmt, self.zone),
                }
            )
        elif event.kind == "telegram_block":
            self.telegram(self.chat_member("kicked", "member", event.reported))
        elif event.kind == "unblock":
            self.telegram(self.chat_member("member", "kicked", event.reported))
        elif event.kind == "start":
            self.telegram(
                {
                    "update_id": next(self._ids),
                    "message": {
                        "message_id": next(self._ids),
                        "date": BASE + event.reported,
                        "text": "/start",
                        "from": {"id": self.token, "is_bot": False, "first_name": "Ann"},
                        "chat": {"id": self.token, "first_name": "Ann", "type": "private"},
                        "entities": [{"offset": 0, "length": 6, "type": "bot_command"}],
                    },
                }
            )
        else:  # pragma: no cover
            raise AssertionError(event.kind)

    def requeues_despite_a_later_block(self, date: int) -> bool:
        """The known disagreement: a block dated after this unblock has arrived, yet the
        bridge will queue the chat again — the chat has no live registration and no
        removal dated after the unblock (the later block found nothing live to remove,
        and a block that removes nothing is not remembered)."""
        items = rows(self.client, self.auth, token=self.token)
        removed = [datetime.fromisoformat(r["removedAt"]) for r in items if r["removedAt"]]
        return (
            bool(items) and all(r["state"] == "removed" for r in items) and max(removed) < at(date)
        )

    def state(self) -> list[int]:
        """The identities with a registration that is not removed."""
        return live_identities(rows(self.client, self.auth, token=self.token)).get(
            str(self.token), []
        )


def live_identities(items) -> dict[str, list[int]]:
    """{token: the identities with a registration that is not removed} of registrations
    as ``GET /tokens`` shows them (a chat with none live maps to [])."""
    found: dict[str, set[int]] = {}
    for r in items:
        live = found.setdefault(r["token"], set())
        if r["state"] != "removed":
            live.add(int(r["email"].split("-id")[1].split("@")[0]))
    return {token: sorted(live) for token, live in found.items()}


def every_chat(client, auth) -> dict[str, list[int]]:
    """:func:`live_identities` of every registration in the ledger (``GET /tokens``, page
    by page)."""
    items, cursor = [], None
    while True:
        query = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        response = client.get("/tokens", query_string=query, headers=auth)
        assert response.status_code == 200, response.get_json()
        items += response.get_json()["items"]
        cursor = response.get_json()["next"]
        if cursor is None:
            return live_identities(items)


def assert_every_chat(client, auth, expected: dict[str, list[int]]) -> None:
    """Every chat of ``expected`` ({token: live identities}) is still in that state, read
    once all of them are done: the events of one chat changed no other."""
    actual = every_chat(client, auth)
    wrong = {
        token: (actual.get(token), want)
        for token, want in expected.items()
        if actual.get(token, []) != want
    }
    assert not wrong, (
        f"{len(wrong)} of {len(expected)} chats changed after their own "
        f"events (token: (now, expected)): {dict(list(wrong.items())[:10])}"
    )


def run_order(client, auth, clock, order, gaps):
    happened = timeline(order, gaps)
    chat = Deliverer(client, auth, clock)
    for when, event in happened:
        chat.send(when, event)
    return chat, happened


def describe(happened) -> str:
    return "; ".join(f"arrives at {t}: {e}" for t, e in happened)


TALLY = {
    "sequences": 0,
    "orders": 0,
    "events": 0,
    "forgotten_block": 0,
    "forgotten_block_differs": 0,
}


def check_every_order(client, auth, clock, events, gaps, done: dict[str, list[int]]):
    """Deliver ``events`` in every distinct arrival order, each on a chat of its own, and
    compare each final state with the oracle's; ``done`` gets each chat's expected
    state. Orders in which a block finds nothing live before an older unblock arrives
    (the gap this property found) are counted too, and judged like every other."""
    TALLY["sequences"] += 1
    for order in arrival_orders(events):
        chat, happened = run_order(client, auth, clock, order, gaps)
        expected = oracle(happened)
        actual = chat.state()
        TALLY["orders"] += 1
        TALLY["events"] += len(order)
        if chat.forgotten_block:
            TALLY["forgotten_block"] += 1
            TALLY["forgotten_block_differs"] += actual != expected
        assert actual == expected, (
            f"chat {chat.token}: {describe(happened)} -> live identities {actual}, "
            f"the events' own times imply {expected}"
        )
        done[str(chat.token)] = expected


def test_every_arrival_order_ends_in_the_state_the_times_imply(client, auth, clock):
    done: dict[str, list[int]] = {}

    @order_settings
    @given(case=sequences(identities=1))
    def every_order(case):
        events, gaps = case
        check_every_order(client, auth, clock, events, gaps, done)

    every_order()
    assert_every_chat(client, auth, done)


def test_zz_tally():
    """Prints what the property covered (``-s`` shows it; RELIABILITY.md quotes it)."""
    print(f"\nevent order: {TALLY}")


# --- the gap the property found ----------------------------------------------------------------


def test_a_block_that_found_nothing_live_still_makes_an_older_unblock_stale(client, auth, clock):
    """Own times: registered at 1, blocked at 4 (Forbidden), unblocked at 6 (Telegram),
    blocked again at 8 (Forbidden): the user has the bot blocked. Arrival: the two blocks
    first (the second finds nothing live: the first removed it), then the unblock dated 6,
    which is older than the block dated 8 and so should be stale."""
    chat = Deliverer(client, auth, clock)
    for when, event in [
        (1, Ev("register")),
        (5, Ev("status_block", date=4)),
        (9, Ev("status_block", date=8)),
        (10, Ev("unblock", date=6)),
    ]:
        chat.send(when, event)
    assert chat.state() == []


# --- the case from the issue ------------------------------------------------------------------


def test_a_delayed_block_dated_yesterday_removes_nothing(client, auth, clock):
    clock.now = datetime(2030, 11, 25, 10, 0, tzinfo=UTC)
    [first] = register(client, auth, {"token": 777, "email": "ann@example.com"})
    clock.advance(3600)
    [again] = register(client, auth, {"token": 777, "email": "ann@example.com"})
    assert again["duplicate"] and again["id"] == first["id"]
    clock.advance(3600)
    yesterday = (clock.now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    response = client.post(
        "/statuses",
        headers=basic(),
        json=[
            {
                "activityStatus": "UNDELIVERED",
                "statusDescription": BLOCKED,
                "activityDateTime": yesterday,
                "email": "ann@example.com",
                "mediaType": "telegrambot",
                "messageId": 4242,
            }
        ],
    )
    assert response.status_code == 200
    assert response.get_json() == {
        "processed": 1,
        "removed": [],
        "unmatched": 0,
        "ignored": 0,
        "stale": 1,
        "ambiguous": 0,
    }
    [item] = rows(client, auth, token=777)
    assert item["state"] == "queued" and item["email"] == "ann@example.com"
    assert item["lastSeenAt"].startswith("2030-11-25T11:00:00")
    assert [e["kind"] for e in history(client, auth, 777)] == [
        "submitted",
        "submitted",
        "status_stale",
    ]
