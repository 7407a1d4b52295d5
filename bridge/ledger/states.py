"""The ledger's four state machines, registrations, commands, outgoing events and links:
each one table
that says everything about its rows, and :meth:`Machine.move`, the only writer of
``state``.

A table maps each input to a :class:`Transition`: when the input happens, the states
it moves a row from, the state it leads to, whether only rows the caller's claim
still holds move (the outbox's inputs), and what follows upon it (``upon``: each
consequence named by the ledger function that carries it out, in the same
transaction). An insert input is where a row starts: every insert takes its first
state from its table (:meth:`Machine.first`), none writes a state of its own.

:meth:`Machine.move` applies one input to a set of rows in the caller's transaction
and appends one history event per row moved (the input, or for a command
``<action>_<input>``: ``mute_requested``, ``replay_delivered``, …; for a link
``link_<input>``). A row in another
state is left alone (a late or repeated input changes nothing), so two writers
racing on the same row cannot move it twice.

Registrations (``bridge_registrations``)::

    ──submitted──▶ queued ──delivered──▶ delivered ──reteno_dropped──▶ queued
    ──held──▶ held ──released──▶ queued
    ──restored──▶ delivered
    queued ──retry / paused / not_sent──▶ queued
    queued ──dead──▶ dead ──requeued──▶ queued
    queued, delivered, dead, held ──removed──▶ removed

Commands (``bridge_commands``: mutes, unmutes, replays into another app)::

    ──requested / queued──▶ queued ──delivered / lapsed──▶ delivered ──resend──▶ queued
    queued ──retry / paused / not_sent / superseded──▶ queued
    queued ──dead / dropped──▶ dead ──requeued──▶ queued
    delivered, dead ──requested──▶ queued

Outgoing events (``bridge_outgoing_events``: the bots' custom events for Reteno)::

    ──requested──▶ queued ──delivered──▶ delivered
    queued ──retry / paused / not_sent──▶ queued
    queued ──dead / dropped──▶ dead ──requeued──▶ queued

Links (``bridge_links``: website links and chat-first claim codes; ``expired`` is no
state but a pending link past its ``expires_at`` by the bridge's clock)::

    ──issued──▶ pending ──used──▶ used
    pending ──revoked──▶ revoked
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import bindparam, insert, literal_column, update

from ..db import in_pages, in_params, page_params, run
from ..models import Command, Event, Link, OutgoingEvent, Registration


class State(StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    REMOVED = "removed"
    DEAD = "dead"
    HELD = "held"  # an identity conflict kept back for review (BRIDGE_ON_CONFLICT=hold)


#: States in which a registration is live: it counts for duplicates and statuses.
LIVE = frozenset(State) - {State.REMOVED}
#: Their values, in one order (for ``state IN (...)``).
LIVE_VALUES = tuple(s.value for s in State if s in LIVE)


class LinkState(StrEnum):
    """The states of a link or claim code (``bridge_links``)."""

    PENDING = "pending"  # issued, not used yet (``expired`` once past its expiry)
    USED = "used"  # bound to a chat (a link) or claimed by the site (a code)
    REVOKED = "revoked"  # revoked through the API, or by erase


class Then(NamedTuple):
    """A consequence of an input: the ledger function that carries it out (``module.name``
    in :mod:`bridge.ledger`, or ``Ledger.method``), and what it does."""

    by: str
    what: str


@dataclass(frozen=True)
class Transition:
    """One input of a machine: a row of its table."""

    when: str  # what the input is
    target: StrEnum  # the state it leads to (an insert's: the row's first state)
    sources: frozenset[StrEnum] = frozenset()  # the states it moves a row from
    insert: bool = False  # a new row starts in ``target``
    leased: bool = False  # only rows still leased by the caller's claim move
    upon: tuple[Then, ...] = ()  # what else happens upon it


def _insert(when: str, target: StrEnum, *upon: Then, sources: Iterable[StrEnum] = ()) -> Transition:
    return Transition(when, target, frozenset(sources), insert=True, upon=upon)


def _on(
    sources: Iterable[StrEnum], target: StrEnum, when: str, *upon: Then, leased: bool = False
) -> Transition:
    return Transition(when, target, frozenset(sources), leased=leased, upon=upon)


QUEUED, DELIVERED, REMOVED, DEAD, HELD = State  # the table below reads as prose


@dataclass(frozen=True, eq=False)
class Machine:
    """One state machine: its table (``transitions``), the table whose rows it moves,
    and its states (``states``, in the order its documentation lists them)."""

    name: str
    model: type
    transitions: Mapping[str, Transition]
    states: type[StrEnum] = State

    def first(self, kind: str) -> StrEnum:
        """The state in which insert input ``kind`` starts a row."""
        transition = self.transitions[kind]
        if not transition.insert:
            raise ValueError(f"{kind!r} starts no {self.name} row")
        return transition.target

    def event(self, kind: str, row: Any) -> str:
        """The history event's kind: the input; for a command ``<action>_<input>``, for an
        outgoing event ``event_<input>``, for a link ``link_<input>``."""
        if self.model is Command:
            return f"{row.action}_{kind}"
        if self.model is OutgoingEvent:
            return f"event_{kind}"
        return f"link_{kind}" if self.model is Link else kind

    def registration_of(self, row: Any) -> int | None:
        """The registration a row's history event belongs to: a registration's own id, a
        command's or an outgoing event's registration if it names one; a link belongs to
        none (its events go on its chat's history when it has a chat)."""
        if self.model is Registration:
            return row.id
        if self.model in (Command, OutgoingEvent):
            return getattr(row, "registration_id", None)
        return None

    def move(
        self,
        conn,
        kind: str,
        rows: Sequence[Any],
        now: datetime,
        values: dict | None = None,
        detail: Callable[[Any], dict] | dict | None = None,
        held_by: str | None = None,
    ) -> list[Any]:
        """Apply input ``kind`` to ``rows`` (objects with ``id`` and ``token``, the chat whose
        history gets the event; a command's also ``action``, and optionally
        ``registration_id``) in the transaction of
        ``conn``: set ``state`` to the transition's target and ``values`` (other
        columns), append one event per row moved with ``detail`` (a dict, or a function
        of the row). Returns the rows moved, in the order given.

        A row whose state the input does not apply to, or (for outbox inputs) that the
        claim ``held_by`` no longer holds, is not moved and gets no event.
        """
        transition = self.transitions[kind]
        if not transition.sources:
            raise ValueError(f"{kind!r} only inserts: it moves no row")
        if transition.leased and held_by is None:
            raise ValueError(f"{kind!r} moves only rows a claim holds: pass held_by")
        ids = list(dict.fromkeys(r.id for r in rows))
        if not ids:
            return []
        values = {"updated_at": now, **(values or {})}
        if "state" in values:
            raise ValueError("the transition table sets the state")
        columns = frozenset(values)
        params = dict(values)
        if transition.leased:
            params["held_by"] = held_by
        moved: set[int] = set()
        for page in in_pages(ids):
            moved.update(
                row[0]
                for row in run(
                    conn,
                    _statement(self, kind, columns, len(page)),
                    {**params, **page_params(page, "id")},
                )
            )
        done, seen = [], set()
        for r in rows:
            if r.id in moved and r.id not in seen:
                seen.add(r.id)
                done.append(r)
        append_events(
            conn,
            (
                {
                    "at": now,
                    "registration_id": self.registration_of(r),
                    "token": r.token,
                    "kind": self.event(kind, r),
                    "detail": detail(r) if callable(detail) else dict(detail or {}),
                }
                for r in done
            ),
        )
        return done


_NOT_SHARED = "a replay's answers are the target's: they leave the bridge's upstream state alone"

#: Registrations: the inputs of a token's way to Reteno, and history kinds (the input).
REGISTRATIONS = Machine(
    "registration",
    Registration,
    {
        # where a registration starts
        "submitted": _insert(
            "a token request with a key (chat, identity) not live: `POST /register`, a signed "
            "`/start` link, an unblock after Reteno dropped the token",
            QUEUED,
            Then(
                "registering.register",
                "a request whose key is live inserts nothing: it is "
                "that registration's duplicate and sign of life (`last_seen_at`)",
            ),
            Then(
                "registering.register",
                "`reteno_holds` inherited from an earlier registration of the chat and identity",
            ),
            Then(
                "registering.register",
                "a chat live under another identity: `conflict` set, a "
                "`conflict` event naming the others",
            ),
            Then("Ledger.register", "delivery is woken"),
        ),
        "held": _insert(
            "a submitted identity conflict under `BRIDGE_ON_CONFLICT=hold` (history kind "
            "`submitted`, with its `conflict` event)",
            HELD,
        ),
        "restored": _insert(
            "an unblock while Reteno still holds the chat's token under its last identity "
            "(history kind `restored`)",
            DELIVERED,
            Then("registering.restore", "no call: `reteno_holds` set, nothing due"),
        ),
        # operators, statuses and Telegram
        "released": _on(
            {HELD},
            QUEUED,
            "its conflict is gone (the chat's other identity removed), or an operator released it",
            Then("Ledger.release_held", "delivery is woken (an operator's release)"),
        ),
        "removed": _on(
            LIVE,
            REMOVED,
            "a block not older than the registration's last sign of life: a Reteno status, "
            "Telegram's `kicked`; or the stale-token report's removal",
            Then(
                "reports.release_held",
                "a held registration of the chat that is now its only "
                "live one goes to the queue (`released`)",
            ),
        ),
        "reteno_dropped": _on(
            {DELIVERED},
            QUEUED,
            "a Reteno Forbidden for a chat that is back (the news older than its comeback): "
            "Reteno no longer has the token, so it is sent again",
            Then(
                "reports.drop_holds",
                "upon any Forbidden, whether a row moves or not: every "
                "registration of the chat and identity delivered no later than the failure, "
                "removed ones too, stops holding the token (`reteno_holds` cleared)",
            ),
            Then(
                "commands.resend_mutes", "and the chat's mute in force is queued again (`resend`)"
            ),
        ),
        "requeued": _on(
            {DEAD},
            QUEUED,
            "an operator requeued the dead letter",
            Then("Ledger.requeue_dead", "without filters, dead commands too; delivery is woken"),
        ),
        # the outbox: what an upstream call did with a claimed row
        "delivered": _on(
            {QUEUED},
            DELIVERED,
            "Reteno took the token",
            Then(
                "outbox.delivered",
                "`reteno_holds` set: Reteno keeps the token until one of "
                "its sends fails with Forbidden",
            ),
            Then("outbox.delivered", "a pause of the outbox ends"),
            leased=True,
        ),
        "retry": _on(
            {QUEUED},
            QUEUED,
            "a transient failure (timeout, 429, 5xx)",
            Then(
                "outbox.retry",
                "due again after a backoff (1 s doubling to 5 minutes, "
                "jittered); a `Retry-After` holds the whole outbox that long",
            ),
            leased=True,
        ),
        "paused": _on(
            {QUEUED},
            QUEUED,
            "Reteno refused the credentials or the request itself",
            Then(
                "outbox.pause",
                "the whole outbox pauses, nothing dropped: 15 s, doubling "
                "with each pause in a row up to 10 minutes",
            ),
            leased=True,
        ),
        "not_sent": _on(
            {QUEUED},
            QUEUED,
            "claimed but not sent: the rest of a split batch stopped by a "
            "failure, or a worker stopping",
            leased=True,
        ),
        "dead": _on(
            {QUEUED}, DEAD, "Reteno refused this token for good (a 400 for it alone)", leased=True
        ),
    },
)

#: Commands: mutes, unmutes and replays into another app; history kinds
#: ``<action>_<input>``.
COMMANDS = Machine(
    "command",
    Command,
    {
        # where a command starts
        "requested": _insert(
            "a mute or unmute of a chat with a live registration: the chat's one mute row "
            "holds the latest request (an insert, or a new request over the last)",
            QUEUED,
            Then(
                "commands.request_mute",
                "a call under way for the previous request keeps "
                "its lease: this one goes out after it (`superseded`)",
            ),
            Then("Ledger.mute", "delivery is woken"),
            sources={QUEUED, DELIVERED, DEAD},
        ),
        "queued": _insert(
            "a replay: each live registration a target has not had (one `replay_queued` "
            "event for the lot)",
            QUEUED,
        ),
        # statuses and operators
        "resend": _on(
            {DELIVERED},
            QUEUED,
            "Reteno dropped the chat's token while its mute was in force: sent again once "
            "the chat is back",
            Then(
                "commands.claim_mutes",
                "it waits, unsent, until a registration of the chat is delivered",
            ),
        ),
        "dropped": _on(
            {QUEUED},
            DEAD,
            "a replay whose registration stopped being live (removed, dead, held) before it "
            "was sent",
        ),
        "requeued": _on({DEAD}, QUEUED, "an operator requeued the dead letters"),
        # the outbox: what an upstream call did with a claimed row
        "delivered": _on(
            {QUEUED},
            DELIVERED,
            "Reteno took the call",
            Then("outbox.delivered", f"a pause of the outbox ends ({_NOT_SHARED})"),
            leased=True,
        ),
        "lapsed": _on(
            {QUEUED},
            DELIVERED,
            "a mute claimed with under 5 s left: its time ran out unsent",
            leased=True,
        ),
        "superseded": _on(
            {QUEUED},
            QUEUED,
            "the chat's mute row was asked for again while this call was under way",
            Then("outbox._superseded", "due at once: the latest request goes out next"),
            leased=True,
        ),
        "retry": _on(
            {QUEUED},
            QUEUED,
            "a transient failure (timeout, 429, 5xx)",
            Then("outbox.retry", f"as a registration's ({_NOT_SHARED})"),
            leased=True,
        ),
        "paused": _on(
            {QUEUED},
            QUEUED,
            "the upstream refused the credentials or the request itself",
            Then("outbox.pause", f"as a registration's ({_NOT_SHARED})"),
            leased=True,
        ),
        "not_sent": _on(
            {QUEUED},
            QUEUED,
            "claimed but not sent: the rest of a split batch stopped by a "
            "failure, or a worker stopping",
            leased=True,
        ),
        "dead": _on({QUEUED}, DEAD, "refused for good (a 400)", leased=True),
    },
)

#: Outgoing events: a bot's custom events for Reteno (``POST /events``), one call each;
#: history kinds ``event_<input>``.
EVENTS = Machine(
    "outgoing event",
    OutgoingEvent,
    {
        "requested": _insert(
            "`POST /events`: an event of a chat with a live registration (queued or delivered)",
            QUEUED,
            Then("Ledger.send_events", "delivery is woken"),
        ),
        "dropped": _on(
            {QUEUED},
            DEAD,
            "its chat has no live registration when it comes due (the chat blocked the bot, "
            "or was removed): not sent, `last_error` says why",
            Then(
                "events_out.claim",
                "an event waits, unsent, while its chat's registration is queued: it goes out "
                "once Reteno has the chat, with the identifier of the newest delivered one",
            ),
        ),
        "requeued": _on(
            {DEAD},
            QUEUED,
            "an operator requeued the dead letters (a dropped event whose chat is still gone "
            "is dropped again)",
        ),
        # the outbox: what an upstream call did with a claimed row
        "delivered": _on(
            {QUEUED},
            DELIVERED,
            "Reteno took the event",
            Then("outbox.delivered", "a pause of the outbox ends"),
            leased=True,
        ),
        "retry": _on(
            {QUEUED},
            QUEUED,
            "a transient failure (timeout, 429, 5xx)",
            Then("outbox.retry", "as a registration's"),
            leased=True,
        ),
        "paused": _on(
            {QUEUED},
            QUEUED,
            "Reteno refused the credentials (401, 403)",
            Then("outbox.pause", "as a registration's"),
            leased=True,
        ),
        "not_sent": _on(
            {QUEUED},
            QUEUED,
            "claimed but not sent: a worker stopping, or its chat removed as it was claimed",
            leased=True,
        ),
        "dead": _on(
            {QUEUED},
            DEAD,
            "Reteno refused the event for good (a 400, e.g. `The event should have the "
            "following params…`: its text in `last_error`)",
            leased=True,
        ),
    },
)

PENDING, USED, REVOKED = LinkState

#: Links: a website's ``/start`` link (``kind`` link) and a chat's claim code (``kind``
#: claim); history kinds ``link_<input>``, on the chat's history once a chat is known.
LINKS = Machine(
    "link",
    Link,
    {
        "issued": _insert(
            "`POST /links` or `bridge link` (a link for a customer's identifiers), "
            "`POST /links/claims` (a code for a chat)",
            PENDING,
        ),
        "used": _on(
            {PENDING},
            USED,
            "a link opened in a chat for the first time before its expiry (the bridge's "
            "clock); a code claimed by the site before its expiry, with the customer's "
            "identifiers",
            Then(
                "linking.use",
                "the chat is registered with the identifiers (a link bound: another chat "
                "opening it gets `link_reused`; the same chat again is a duplicate until "
                "the link's expiry, then `link_rejected`)",
            ),
        ),
        "revoked": _on(
            {PENDING, USED},
            REVOKED,
            "`DELETE /links/<id>` (a used link too: its chat opening it again registers "
            "nothing), or erase of the person it names or of its chat, a pending one "
            "(`reason`: deleted, erased)",
            Then(
                "linking.erase",
                "erase also clears the identifiers and chat of every row of the person, "
                "used ones too: a tombstone without personal data",
            ),
        ),
    },
    LinkState,
)

MACHINES = (REGISTRATIONS, COMMANDS, EVENTS, LINKS)
#: The machine of each table (an outbox claim finishes rows of either).
MACHINE_OF = {machine.model: machine for machine in MACHINES}

_EVENT_INSERT = insert(Event.__table__)


def sql_constant(state: StrEnum):
    """``state`` written into the SQL, not a parameter: the statements run on the driver
    (``bridge.db.run``) take one value per named parameter, constants in the SQL."""
    return literal_column(f"'{state.value}'")


@cache
def _statement(machine: Machine, kind: str, columns: frozenset[str], size: int):
    """UPDATE of the rows of ``size`` ids (parameters ``id0`` …) that ``kind`` applies
    to, setting ``columns``; returns their ids. Built once a shape (``in_params``) and
    run on the driver (``run``): SQLAlchemy's expanding ``IN`` cost more than SQLite's
    own work for a claim's thousand rows."""
    t = machine.transitions[kind]
    table = machine.model
    conditions = [
        in_params(table.id, "id", size),
        table.state.in_([sql_constant(s) for s in sorted(t.sources)]),
    ]
    if t.leased:
        conditions.append(table.lease_id == bindparam("held_by"))
    values = {name: bindparam(name) for name in columns}
    values["state"] = sql_constant(t.target)
    return (
        update(table)
        .where(*conditions)
        .values(values)
        .returning(table.id)
        .execution_options(synchronize_session=False)
    )


def append_events(conn, rows: Iterable[dict]) -> None:
    """Append history events (dicts with the same keys) in the transaction of ``conn``."""
    # one executemany per run of rows with the same keys, so ids keep the order given
    for _keys, same in itertools.groupby(rows, key=lambda row: row.keys()):
        run(conn, _EVENT_INSERT, list(same))
