"""The registration state machine: its states, the inputs that move them, and the one
function that writes ``state``.

Every change of a registration's state is a row of :data:`TRANSITIONS`: an input
(also the kind of the history event it leaves), the states it applies to and the
state it leads to. :func:`move` is the only code that updates the column; it
applies one input to a set of registrations in the caller's transaction and
appends one history event per registration moved. A row in another state is
left alone (a late or repeated input changes nothing), so two writers racing
on the same row cannot move it twice.

    held ──released──▶ queued ──delivered──▶ delivered ──removed──▶ removed
      │                  │  ▲ retry / paused / not_sent (stay queued)   ▲
      │                  ├──dead──▶ dead ──requeued──▶ queued           │
      └──removed         └──removed (the user blocked the bot) ─────────┘

    ──restored──▶ delivered  (an insert: the user unblocked the bot while Reteno still
                              holds the chat's token under that identity; no call)
    delivered ──reteno_dropped──▶ queued  (a Reteno Forbidden older than the chat's
                              comeback: Reteno no longer has the token; sent again)

Commands (mutes, unmutes, replays: ``bridge_commands``) have a machine of their own
in the same table, its inputs named ``command.<input>``; their history events are
named after the command (``mute_requested``, ``replay_delivered``, …):

    ──requested──▶ queued ──delivered / lapsed──▶ delivered ──resend──▶ queued
                     │  ▲ retry / paused / not_sent / superseded (stay queued)
                     └──dead / dropped──▶ dead ──requeued / requested──▶ queued
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Any

from sqlalchemy import bindparam, insert, literal_column, update

from ..db import in_pages, in_params, page_params, run
from ..models import Command, Event, Registration


class State(StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    REMOVED = "removed"
    DEAD = "dead"
    HELD = "held"  # an identity conflict kept back for review (BRIDGE_ON_CONFLICT=hold)


#: The state a new registration starts in (history kind ``submitted``): queued, or held
#: when it conflicts with another identity and conflicts are held.
INITIAL = State.QUEUED
#: The state a registration starts in when Reteno still holds its chat's token under its
#: identity (history kind ``restored``, an insert: the user unblocked the bot, no call).
RESTORED = State.DELIVERED
#: States in which a registration is live: it counts for duplicates and statuses.
LIVE = frozenset(State) - {State.REMOVED}
#: Their values, in one order (for ``state IN (...)``).
LIVE_VALUES = tuple(s.value for s in State if s in LIVE)


@dataclass(frozen=True)
class Transition:
    sources: frozenset[State]
    target: State
    leased: bool  # only rows still leased by the caller's claim move
    model: type = Registration  # the table whose rows it moves

    def event(self, kind: str, row: Any) -> str:
        """The history event's kind: the input, or for a command ``<action>_<input>``."""
        if self.model is Command:
            return f"{row.action}_{kind.removeprefix('command.')}"
        return kind


_QUEUED, _DELIVERED, _DEAD = (frozenset({s}) for s in (State.QUEUED, State.DELIVERED,
                                                          State.DEAD))
_COMMAND_STATES = _QUEUED | _DELIVERED | _DEAD


TRANSITIONS: dict[str, Transition] = {
    # the outbox (bridge.ledger.outbox): what an upstream call did with a claimed row
    "delivered": Transition(frozenset({State.QUEUED}), State.DELIVERED, leased=True),
    "retry": Transition(frozenset({State.QUEUED}), State.QUEUED, leased=True),
    "paused": Transition(frozenset({State.QUEUED}), State.QUEUED, leased=True),
    "not_sent": Transition(frozenset({State.QUEUED}), State.QUEUED, leased=True),
    "dead": Transition(frozenset({State.QUEUED}), State.DEAD, leased=True),
    # operators, statuses and Telegram
    "requeued": Transition(frozenset({State.DEAD}), State.QUEUED, leased=False),
    "released": Transition(frozenset({State.HELD}), State.QUEUED, leased=False),
    "removed": Transition(frozenset(LIVE), State.REMOVED, leased=False),
    # a Reteno Forbidden older than the chat's comeback: Reteno no longer has the token
    "reteno_dropped": Transition(frozenset({State.DELIVERED}), State.QUEUED, leased=False),
    # commands (bridge.ledger.commands): a request (a new one replaces a mute row's last),
    # what an upstream call did, a mute to send again after the chat came back
    "command.requested": Transition(_COMMAND_STATES, State.QUEUED, False, Command),
    "command.delivered": Transition(_QUEUED, State.DELIVERED, True, Command),
    "command.lapsed": Transition(_QUEUED, State.DELIVERED, True, Command),  # mute over unsent
    "command.retry": Transition(_QUEUED, State.QUEUED, True, Command),
    "command.paused": Transition(_QUEUED, State.QUEUED, True, Command),
    "command.not_sent": Transition(_QUEUED, State.QUEUED, True, Command),
    "command.superseded": Transition(_QUEUED, State.QUEUED, True, Command),  # newer request
    "command.dead": Transition(_QUEUED, State.DEAD, True, Command),
    # a replay whose registration stopped being live before it was sent
    "command.dropped": Transition(_QUEUED, State.DEAD, False, Command),
    "command.requeued": Transition(_DEAD, State.QUEUED, False, Command),
    "command.resend": Transition(_DELIVERED, State.QUEUED, False, Command),
}

_EVENT_INSERT = insert(Event.__table__)


def sql_constant(state: State):
    """``state`` written into the SQL, not a parameter: the statements run on the driver
    (``bridge.db.run``) take one value per named parameter, constants in the SQL."""
    return literal_column(f"'{state.value}'")


@cache
def _statement(kind: str, columns: frozenset[str], size: int):
    """UPDATE of the rows of ``size`` ids (parameters ``id0`` …) that ``kind`` applies
    to, setting ``columns``; returns their ids. Built once a shape (``in_params``) and
    run on the driver (``run``): SQLAlchemy's expanding ``IN`` cost more than SQLite's
    own work for a claim's thousand rows."""
    t = TRANSITIONS[kind]
    table = t.model
    conditions = [in_params(table.id, "id", size),
                  table.state.in_([sql_constant(s) for s in sorted(t.sources)])]
    if t.leased:
        conditions.append(table.lease_id == bindparam("held_by"))
    values = {name: bindparam(name) for name in columns}
    values["state"] = sql_constant(t.target)
    return (update(table).where(*conditions).values(values)
            .returning(table.id).execution_options(synchronize_session=False))


def move(conn, kind: str, rows: Sequence[Any], now: datetime, values: dict | None = None,
         detail: Callable[[Any], dict] | dict | None = None,
         held_by: str | None = None) -> list[Any]:
    """Apply input ``kind`` to ``rows`` (objects with ``id`` and ``token``; a command's
    also ``action``, and optionally ``registration_id``) in the
    transaction of ``conn``: set ``state`` to the transition's target and ``values``
    (other columns), append one ``kind`` event per row moved with ``detail`` (a dict,
    or a function of the row). Returns the rows moved, in the order given.

    A row whose state the input does not apply to, or (for outbox inputs) that the
    claim ``held_by`` no longer holds, is not moved and gets no event.
    """
    transition = TRANSITIONS[kind]
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
        moved.update(row[0] for row in run(conn, _statement(kind, columns, len(page)),
                                           {**params, **page_params(page, "id")}))
    done, seen = [], set()
    for r in rows:
        if r.id in moved and r.id not in seen:
            seen.add(r.id)
            done.append(r)
    command = transition.model is Command
    append_events(conn, ({
        "at": now, "registration_id": getattr(r, "registration_id", None) if command else r.id,
        "token": r.token, "kind": transition.event(kind, r),
        "detail": detail(r) if callable(detail) else dict(detail or {}),
    } for r in done))
    return done


def append_events(conn, rows: Iterable[dict]) -> None:
    """Append history events (dicts with the same keys) in the transaction of ``conn``."""
    # one executemany per run of rows with the same keys, so ids keep the order given
    for _keys, same in itertools.groupby(rows, key=lambda row: row.keys()):
        run(conn, _EVENT_INSERT, list(same))
