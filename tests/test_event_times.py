"""Reported times that lie: clocks hours off, offset-less times in several zones.

The model of ``tests/test_event_order.py`` (one chat's registrations, blocks,
unblocks and signs of life, the oracle that applies them in the order of their
times, stories that can happen), with the times the events REPORT drawn apart from
the times they happened at:

* **the zone configured** (``true``): Reteno's offset-less times are written in the
  account's zone and the bridge reads them in the same zone
  (``BRIDGE_STATUS_TIMEZONE``), drawn from zones between UTC-11 and UTC+14, at
  whole, half and three-quarter hours. The final state must be the state the true
  times imply, always.
* **the zone not configured, or another one** (``zone``): the account writes in one
  zone and the bridge reads in another, so every offset-less status time is off by
  the difference (up to 25 hours, either way); Telegram's dates and the times with
  an offset or in epoch seconds are right.
* **clocks that lie** (``clocks``): every timed event, Telegram's too, reports a time
  off by up to 14 hours either way.

Whatever the times say, **nothing is dated after its receipt**: after every arrival,
no time the ledger keeps for the chat (created, last seen, removed) is later than the
moment the bridge received it, every history entry dates what it reports no later
than its own receipt, and says ``clamped`` (with the reported value) exactly when
the reported time was later. And the final state is what the times the bridge
**could** know imply: each event at its reported time, or at its receipt when it
reported a later one (a registration at its receipt). Those times are judged like
true times whenever they tell a story that can happen (a lying clock can put a
DELIVERED after a block with no unblock between, which no order of events has); the
tally counts the chats judged and the ones that were not.

Each example is one chat (its own token) in one arrival order, drawn; the chats of
all examples share one database, one bridge per zone, and once all examples are
done every chat is checked again. Times are whole seconds: what an event reports is
an even second after BASE, arrivals land on odd ones, so no two times the bridge
compares are in the same second (the ties are pinned in ``tests/test_statuses.py``
and ``tests/test_telegram.py``). The ledger runs on the suite's clock, never a real
one. ``BRIDGE_TIMES_EXAMPLES`` sets the number of examples (default 150),
``BRIDGE_ORDER_MAX_EVENTS`` the longest sequence (default 5).
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import history, rows
from tests.test_event_order import (
    BASE,
    BLOCKS,
    HOOK_PASSWORD,
    HOOK_USER,
    TG_SECRET,
    Deliverer,
    Ev,
    assert_every_chat,
    at,
    describe,
    oracle,
    sequences,
    written,
)

EXAMPLES = int(os.environ.get("BRIDGE_TIMES_EXAMPLES", "150"))
HOURS = 3600
# Offsets on 2030-03-17 (BASE): -11, -4 (DST), -2:30 (DST), 0, +2, +5:30, +5:45, +11 (DST), +14
ZONES = (
    "Pacific/Pago_Pago",
    "America/New_York",
    "America/St_Johns",
    "UTC",
    "Europe/Kyiv",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Kiritimati",
)
MODES = ("clocks", "zone", "true")
STATUSES = ("status_block", "simple_block", "delivered")  # the kinds whose time is written
# Lies a clock tells, besides any drawn: the extremes, a zone's worth, a little ahead
SKEWS = (14 * HOURS, -14 * HOURS, 3 * HOURS, -3 * HOURS, 60, -60)

times_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture
def bridges(make_app, clock):
    """A client per zone: bridges reading offset-less times in that zone, over one
    database, on the suite's clock; made when first asked for."""
    made = {}

    def client(zone: str):
        if zone not in made:
            app = make_app(
                TELEGRAM_WEBHOOK_SECRET=TG_SECRET,
                BRIDGE_WEBHOOK_USERNAME=HOOK_USER,
                BRIDGE_WEBHOOK_PASSWORD=HOOK_PASSWORD,
                BRIDGE_STATUS_TIMEZONE=zone,
            )
            app.extensions["reteno_bridge"].ledger.clock = clock
            made[zone] = app.test_client()
        return made[zone]

    return client


# --- what the events report ---------------------------------------------------------------


def read_in(text: str, zone: str) -> int:
    """An offset-less time read in ``zone``: seconds after BASE."""
    moment = datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))
    return int(moment.timestamp()) - BASE


@st.composite
def cases(draw):
    """(mode, the bridge's zone, events with what they report, an arrival order, gaps)."""
    events, gaps = draw(sequences(identities=1))
    mode, zone = draw(st.sampled_from(MODES)), draw(st.sampled_from(ZONES))
    account = draw(st.sampled_from([z for z in ZONES if z != zone])) if mode == "zone" else zone
    reported = []
    for event in events:
        skew = 0
        if event.kind == "register":
            pass
        elif mode == "clocks":  # up to 14 h either way, an even number of seconds
            skew = draw(
                st.one_of(
                    st.sampled_from(SKEWS), st.integers(-7 * HOURS, 7 * HOURS).map(lambda s: 2 * s)
                )
            )
        elif event.kind in STATUSES and event.fmt == "naive":
            # written in the account's zone, read in the bridge's
            skew = read_in(written(event.date, "naive", ZoneInfo(account)), zone) - event.date
        reported.append(replace(event, skew=skew))
    order = draw(st.permutations(reported))
    return mode, zone, account, order, gaps


def arrivals(order, gaps) -> list[tuple[int, object]]:
    """When each event arrives: never before it happened, each at an odd second."""
    clock, out = 0, []
    for gap, event in zip(gaps, order, strict=True):
        if event.kind != "register":
            clock = max(clock, event.date)
        clock += gap
        clock += 1 - clock % 2
        out.append((clock, event))
    return out


def as_known(arrived) -> list[tuple[int, object]]:
    """The events with the times the bridge can know: what each reports, or its receipt
    when it reports a later one (nothing from the future)."""
    return [
        (t, e if e.kind == "register" else replace(e, date=min(e.reported, t), skew=0))
        for t, e in arrived
    ]


def possible(known) -> bool:
    """Whether the timed events, in the order of these times, tell a story that can
    happen (as ``sequences`` draws them), with no two at the same time."""
    own = sorted(
        ((e.date if e.kind != "register" else t, e) for t, e in known), key=lambda pair: pair[0]
    )
    if len({t for t, _ in own}) < len(own):
        return False
    blocked = False
    for _t, event in own:
        if event.kind in BLOCKS:
            if blocked and event.kind == "telegram_block":
                return False
            blocked = True
        elif event.kind == "unblock":
            if not blocked:
                return False
            blocked = False
        elif event.kind in ("delivered", "start") and blocked:
            return False
    return True


# --- the checks -----------------------------------------------------------------------------


def iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def assert_nothing_after_receipt(chat: Deliverer, received: int, describe_it) -> None:
    now = at(received)
    for item in rows(chat.client, chat.auth, token=chat.token):
        for key in ("createdAt", "lastSeenAt", "removedAt"):
            assert item[key] is None or iso(item[key]) <= now, (key, item[key], describe_it())
    for event in history(chat.client, chat.auth, chat.token):
        detail, recorded = event["detail"], iso(event["at"])
        if isinstance(detail.get("at"), str):
            assert iso(detail["at"]) <= recorded, (event, describe_it())
        if "clamped" in detail:
            assert detail["clamped"] is True and iso(detail["reportedAt"]) > recorded, event


TALLY = {
    "examples": 0,
    "events": 0,
    "reported_later_than_received": 0,
    "judged": 0,
    "judged_true": 0,
    "not_a_possible_story": 0,
    **{m: 0 for m in MODES},
}


def test_reported_times_never_move_a_chat_past_its_receipt(bridges, auth, clock):
    done: dict[str, list[int]] = {}

    @times_settings
    @given(case=cases())
    def property_(case):
        mode, zone, account, order, gaps = case
        client = bridges(zone)
        chat = Deliverer(client, auth, clock, ZoneInfo(zone))
        arrived = arrivals(order, gaps)

        def story():
            return (
                f"chat {chat.token}, mode {mode}, bridge in {zone}, account in {account}: "
                + describe(arrived)
            )

        for received, event in arrived:
            chat.send(received, event)
            assert_nothing_after_receipt(chat, received, story)
            TALLY["reported_later_than_received"] += (
                event.kind != "register" and event.reported > received
            )
        TALLY["examples"] += 1
        TALLY["events"] += len(arrived)
        TALLY[mode] += 1
        known = as_known(arrived)
        if mode == "true":
            assert known == arrived and possible(known), story()  # the test's own premise
        if not possible(known):
            TALLY["not_a_possible_story"] += 1
            return
        expected = oracle(known)
        assert chat.state() == expected, (
            f"{story()} -> live identities {chat.state()}, the times it could know imply {expected}"
        )
        TALLY["judged"] += 1
        TALLY["judged_true"] += mode == "true"
        done[str(chat.token)] = expected

    property_()
    assert_every_chat(auth=auth, client=bridges("UTC"), expected=done)
    assert TALLY["judged_true"] and TALLY["reported_later_than_received"]


def test_zz_tally():
    """Prints what the property covered (``-s`` shows it; RELIABILITY.md quotes it)."""
    print(f"\nevent times: {TALLY}")


# --- a lying clock, by hand ----------------------------------------------------------------


def test_a_clock_fourteen_hours_ahead_cannot_keep_a_chat_alive(bridges, auth, clock):
    """A DELIVERED reported 14 hours ahead, then a real block a minute later: the block
    is newer than what the bridge could know of the DELIVERED (its receipt)."""
    chat = Deliverer(bridges("Europe/Kyiv"), auth, clock, ZoneInfo("Europe/Kyiv"))
    chat.send(1, Ev("register"))
    chat.send(3, Ev("delivered", date=2, fmt="naive", skew=14 * HOURS))
    chat.send(63, Ev("status_block", date=62, fmt="naive"))
    assert chat.state() == []
    [delivered] = [
        e
        for e in history(chat.client, auth, chat.token)
        if e["detail"].get("status") == "DELIVERED"
    ]
    assert delivered["detail"]["at"] == at(3).isoformat()
    assert delivered["detail"]["reportedAt"] == at(2 + 14 * HOURS).isoformat()
    assert delivered["detail"]["clamped"] is True
    assert iso(rows(chat.client, auth, token=chat.token)[0]["removedAt"]) == at(62)
