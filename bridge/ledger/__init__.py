"""The audit ledger: every submitted token, every upstream attempt, every status.

:class:`Ledger` is its public API and owns every transaction: each method is
one transaction (reads never write), opened here and nowhere else. It speaks
domain values (``bridge.ledger.types``), never request JSON. Behind it, one
module per job:

* :mod:`.states` — the state tables of registrations and commands (each input's
  sources, target and consequences) and :meth:`~.states.Machine.move`, the only
  writer of ``state``;
* :mod:`.registering` — new registrations with duplicate suppression;
* :mod:`.outbox` — claims, leases and what an upstream call did;
* :mod:`.commands` — mutes, unmutes and replays into another app, and their outbox;
* :mod:`.events_out` — the bots' custom events for Reteno, and their outbox;
* :mod:`.reports` — status events, Telegram's blocks and unblocks, stale removals;
* :mod:`.queries` — look-ups, history and statistics;
* :mod:`.linking` — links and claim codes: issued, opened, claimed, revoked;
* :mod:`.erasure` — one contact's data out;
* :mod:`.pruning` — history retention: the attempt-level events past an age out;
* :mod:`.staff` — the support page's staff accounts and its failed-login throttle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from ..db import Database
from ..models import Registration, utcnow
from . import (
    chats,
    commands,
    erasure,
    events_out,
    linking,
    outbox,
    pruning,
    queries,
    registering,
    reports,
    staff,
)
from .states import COMMANDS, EVENTS, LINKS, REGISTRATIONS, State, append_events
from .times import EXACT
from .types import (
    Claim,
    EventRecord,
    EventRequest,
    HistoryEvent,
    IssuedCode,
    IssuedLink,
    LinkRecord,
    MuteRecord,
    MuteRequest,
    Outcome,
    RegistrationRecord,
    ReplayTarget,
    StatusEvent,
    StatusResult,
    TokenRequest,
)

__all__ = [
    "COMMANDS",
    "REGISTRATIONS",
    "Claim",
    "EVENTS",
    "EventRecord",
    "EventRequest",
    "LINKS",
    "HistoryEvent",
    "IssuedCode",
    "IssuedLink",
    "Ledger",
    "LinkRecord",
    "MuteRecord",
    "MuteRequest",
    "Outcome",
    "RegistrationRecord",
    "ReplayTarget",
    "State",
    "StatusEvent",
    "StatusResult",
    "TokenRequest",
]


def _stamped(claim: Claim | None, now: datetime) -> Claim | None:
    """``claim`` with when it was made (what a success of its calls may clear)."""
    return None if claim is None else replace(claim, claimed_at=now)


class Ledger:
    """The ledger of one database. ``clock`` gives every timestamp it writes (tests move
    it); ``on_queued`` is called after registrations were queued (to wake delivery),
    ``on_delivered`` with the seconds each delivered registration waited since its
    submission (the metrics)."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime] = utcnow,
        on_queued: Callable[[], None] | None = None,
        hold_conflicts: bool = False,
        on_delivered: Callable[[list[float]], None] | None = None,
    ):
        self.db = db
        self.clock = clock
        self.on_queued = on_queued or (lambda: None)
        self.on_delivered = on_delivered
        self.hold_conflicts = hold_conflicts  # BRIDGE_ON_CONFLICT=hold
        self._register = db.group_commit(self._register_work)

    # --- registrations -----------------------------------------------------------------

    def register(
        self, requests: Sequence[TokenRequest], source: str = "api", seen: datetime | None = None
    ) -> list[Outcome]:
        """Put token requests in the outbox, suppressing live duplicates and flagging
        identity conflicts; one outcome each, in order. ``seen``: when the chats were
        last seen alive (default: now). All or none are stored; concurrent calls of
        this process may share one transaction (group commit), as if they ran one
        after the other."""
        outcomes = self._register.run([(request, source, seen) for request in requests])
        if any(not o.duplicate for o in outcomes):
            self.on_queued()
        return outcomes

    def _register_work(
        self, conn, items: list[tuple[TokenRequest, str, datetime | None]]
    ) -> list[Outcome]:
        return registering.register(
            conn,
            [r for r, _, _ in items],
            [s for _, s, _ in items],
            self.clock(),
            self.hold_conflicts,
            [at for _, _, at in items],
        )

    def record(
        self, kind: str, detail: dict, token: str | None = None, registration_id: int | None = None
    ) -> None:
        """Append one event that moves nothing (e.g. a rejected deep link)."""
        with self.db.write() as conn:
            append_events(
                conn,
                [
                    {
                        "at": self.clock(),
                        "kind": kind,
                        "token": token,
                        "registration_id": registration_id,
                        "detail": detail,
                    }
                ],
            )

    # --- the outbox ----------------------------------------------------------------------

    def claim(self, limit: int, lease_seconds: int) -> Claim | None:
        """Lease up to ``limit`` due registrations, oldest first (None: nothing due, or
        delivery held or paused)."""
        with self.db.write() as conn:
            now = self.clock()
            return _stamped(outbox.claim(conn, now, limit, lease_seconds), now)

    def renew(self, claim: Claim, rows: Sequence[Any], lease_seconds: int) -> list[Any]:
        """Extend the lease before another call of the same claim; the rows still held."""
        with self.db.write() as conn:
            return outbox.renew(conn, self.clock(), claim, rows, lease_seconds)

    def delivered(self, claim: Claim, rows: Sequence[Any], call: dict) -> int:
        with self.db.write() as conn:
            now = self.clock()
            n = outbox.delivered(conn, now, claim, rows, call)
            delays = (
                queries.delivery_delays(conn, [r.id for r in rows], now)
                if n and self.on_delivered and claim.model is Registration
                else []
            )
        if delays:
            self.on_delivered(delays)
        return n

    def retry(
        self, claim: Claim, rows: Sequence[Any], call: dict, retry_after: float | None = None
    ) -> float:
        with self.db.write() as conn:
            return outbox.retry(conn, self.clock(), claim, rows, call, retry_after)

    def pause(self, claim: Claim, rows: Sequence[Any], call: dict) -> datetime:
        with self.db.write() as conn:
            return outbox.pause(conn, self.clock(), claim, rows, call)

    def dead(self, claim: Claim, row: Any, call: dict) -> int:
        with self.db.write() as conn:
            return outbox.dead(conn, self.clock(), claim, row, call)

    def release(
        self, claim: Claim, rows: Sequence[Any], detail: dict, delay: float | None = 0.0
    ) -> int:
        with self.db.write() as conn:
            return outbox.release(conn, self.clock(), claim, rows, detail, delay)

    def record_each(
        self, claim: Claim, outcomes: Sequence[tuple[Any, str, dict, float | None]]
    ) -> tuple[Counter, datetime | None]:
        """What the calls of a claim sent one row each did, in one transaction
        (:func:`.outbox.record_each`): the rows moved by outcome, and a pause's end."""
        with self.db.write() as conn:
            return outbox.record_each(conn, self.clock(), claim, outcomes)

    def resume(self) -> None:
        """Lift a delivery pause or hold now (after fixing the credentials)."""
        with self.db.write() as conn:
            outbox.resume(conn, self.clock())

    def requeue_dead(
        self,
        ids: Sequence[int] | None = None,
        error_contains: str | None = None,
        token: str | None = None,
    ) -> int:
        """Dead letters back to the queue (all, or those matching the filters)."""
        with self.db.write() as conn:
            count = outbox.requeue_dead(conn, self.clock(), ids, error_contains, token)
            if not ids and not error_contains:  # dead mutes and replays too
                count += commands.requeue_dead(conn, self.clock(), token)
            if not ids:  # dead events too (their ids are their own)
                count += events_out.requeue_dead(conn, self.clock(), error_contains, token)
        if count:
            self.on_queued()
        return count

    def upstream(self) -> tuple[dict[str, Any], datetime | None]:
        """The shared upstream state, and when a pause or hold in force ends."""
        with self.db.read() as conn:
            state = outbox.upstream_state(conn)
        return state, outbox.blocked_until(state, self.clock())

    # --- commands: mute, unmute, replay ---------------------------------------------------

    def mute(self, request: MuteRequest, source: str = "api") -> MuteRecord | None:
        """Queue a mute or unmute of a chat (the latest request wins); None when the chat
        has no live registration (nothing stored)."""
        with self.db.write() as conn:
            record = commands.request_mute(conn, self.clock(), request, source)
        if record is not None:
            self.on_queued()
        return record

    def claim_mutes(self, limit: int, lease_seconds: int) -> Claim | None:
        """Lease due mutes and unmutes of chats Reteno knows (None: none, or delivery held
        or paused)."""
        with self.db.write() as conn:
            now = self.clock()
            return _stamped(commands.claim_mutes(conn, now, limit, lease_seconds), now)

    def plan_replay(self, target: ReplayTarget) -> int:
        with self.db.read() as conn:
            return commands.plan_replay(conn, target)

    def queue_replay(self, target: ReplayTarget) -> int:
        """Queue every live registration that ``target`` has not had; how many."""
        with self.db.write() as conn:
            return commands.queue_replay(conn, self.clock(), target)

    def claim_replay(self, target: ReplayTarget, limit: int, lease_seconds: int) -> Claim | None:
        with self.db.write() as conn:
            now = self.clock()
            return _stamped(commands.claim_replay(conn, now, target, limit, lease_seconds), now)

    def replay_summary(self, target: ReplayTarget) -> dict:
        """Replays into ``target`` by state, and ``next_due``: when the next is due."""
        with self.db.read() as conn:
            return commands.replay_summary(conn, target)

    def replay_preview(self, target: ReplayTarget, limit: int = 10) -> list:
        with self.db.read() as conn:
            return commands.replay_preview(conn, target, limit)

    # --- the bots' custom events ---------------------------------------------------------

    def send_events(
        self, requests: Sequence[EventRequest], source: str = "api"
    ) -> tuple[list[EventRecord], list[str]]:
        """Queue custom events for Reteno: (their records, in order; ``[]``), or when a
        chat has no live registration (``[]``, those chats) and nothing stored."""
        with self.db.write() as conn:
            records, missing = events_out.request(conn, self.clock(), requests, source)
        if records:
            self.on_queued()
        return records, missing

    def claim_events(self, limit: int, lease_seconds: int) -> Claim | None:
        """Lease due events of chats Reteno has, with their contact identifiers (None:
        none, or delivery held or paused); events of chats gone are dropped."""
        with self.db.write() as conn:
            now = self.clock()
            return _stamped(events_out.claim(conn, now, limit, lease_seconds), now)

    # --- reports from outside ------------------------------------------------------------

    def apply_statuses(self, events: list[StatusEvent]) -> StatusResult:
        """Record a body of status events and remove the chats whose blocks they report."""
        with self.db.write() as conn:
            return reports.apply_statuses(conn, self.clock(), events)

    def block_chat(
        self, token: str, detail: dict, at: datetime | None = None, resolution: timedelta = EXACT
    ) -> tuple[int, int]:
        """The user blocked the bot at ``at`` (given to ``resolution``; never later than
        now): remove the chat's live registrations not seen later; (removed, stale:
        newer ones that stay)."""
        with self.db.write() as conn:
            return chats.block_chat(conn, self.clock(), token, detail, at, resolution)

    def unblock_chat(
        self, token: str, detail: dict, at: datetime | None = None, resolution: timedelta = EXACT
    ) -> tuple[int | None, int | None, bool]:
        """The user unblocked the bot at ``at`` (given to ``resolution``; never later
        than now): its last registration live again (queued only if Reteno dropped the
        token) unless one is live or the chat was blocked later; (new registration id,
        previous registration id, queued)."""
        with self.db.write() as conn:
            result = chats.unblock_chat(
                conn, self.clock(), token, detail, at, self.hold_conflicts, resolution
            )
        if result[2]:
            self.on_queued()
        return result

    def use_link(
        self,
        token: str,
        request: TokenRequest,
        link_id: str,
        seen: datetime,
        mark: str | None = None,
    ) -> Outcome | str:
        """A signed deep link opened in chat ``token`` at ``seen``: the outcome of its
        registration, or the kind recorded when it registers nothing (``link_reused``:
        another chat used it first; ``link_rejected``: erase revoked it)."""
        with self.db.write() as conn:
            outcome = chats.use_link(
                conn, self.clock(), token, request, link_id, seen, self.hold_conflicts, mark
            )
        if isinstance(outcome, Outcome) and not outcome.duplicate:
            self.on_queued()
        return outcome

    def open_link(
        self, token: str, payload: str, seen: datetime, detail: dict | None = None
    ) -> Outcome | str:
        """An opaque link opened in chat ``token`` at ``seen`` (its expiry judged by the
        ledger's clock): the outcome of its registration, or the kind recorded when it
        registers nothing (``link_rejected``: unknown, expired or revoked;
        ``link_reused``: another chat bound it first). ``detail`` joins a refusal's event."""
        with self.db.write() as conn:
            outcome = linking.use(
                conn, self.clock(), token, payload, seen, self.hold_conflicts, detail
            )
        if isinstance(outcome, Outcome) and not outcome.duplicate:
            self.on_queued()
        return outcome

    def sign_of_life(self, token: str, at: datetime | None) -> int:
        """The chat was seen alive at ``at`` (a /start; never later than now, which
        ``None`` means); how many live registrations."""
        with self.db.write() as conn:
            return chats.sign_of_life(conn, self.clock(), token, at)

    def release_held(self, registration_id: int) -> bool:
        """A held registration (identity conflict) goes to the queue after review."""
        with self.db.write() as conn:
            token = conn.execute(
                select(Registration.token).where(Registration.id == registration_id)
            ).scalar()
            moved = token is not None and bool(
                reports.release_held(
                    conn, self.clock(), [token], by="operator", ids=[registration_id]
                )
            )
        if moved:
            self.on_queued()
        return moved

    # --- links and claim codes -----------------------------------------------------------

    def create_link(self, identifiers: dict[str, Any], ttl_seconds: int) -> IssuedLink:
        """A link for the customer of ``identifiers`` (API names, normal forms), valid
        ``ttl_seconds`` from now (0: for ever)."""
        now = self.clock()
        expires = now + timedelta(seconds=ttl_seconds) if ttl_seconds else None
        with self.db.write() as conn:
            return linking.issue(conn, now, identifiers, expires)

    def link(self, link_id: str) -> LinkRecord | None:
        with self.db.read() as conn:
            return linking.record(conn, self.clock(), link_id)

    def recent_links(self, limit: int = 50) -> list[LinkRecord]:
        """The ``limit`` newest links, newest first (the sandbox page lists them)."""
        with self.db.read() as conn:
            return linking.recent(conn, self.clock(), limit)

    def link_payload(self, link_id: str) -> str | None:
        """A link's payload (for its QR code), None for no such link."""
        with self.db.read() as conn:
            return linking.url_payload(conn, self.clock(), link_id)

    def revoke_link(self, link_id: str) -> bool:
        """Revoke the link ``link_id`` (pending, expired or used); False when unknown."""
        with self.db.write() as conn:
            return linking.revoke(conn, self.clock(), link_id)

    def create_claim_code(self, token: str) -> IssuedCode:
        """A one-time code for chat ``token``, for the site to claim."""
        with self.db.write() as conn:
            return linking.issue_code(conn, self.clock(), token)

    def claim_code(self, code: str, identifiers: dict[str, Any]) -> Outcome | str:
        """Claim ``code`` for the customer of ``identifiers``: the registration of its
        chat, or why nothing was registered (``unknown``, ``used``, ``expired``,
        ``revoked``, ``blocked``)."""
        with self.db.write() as conn:
            outcome = linking.claim(conn, self.clock(), code, identifiers, self.hold_conflicts)
        if isinstance(outcome, Outcome) and not outcome.duplicate:
            self.on_queued()
        return outcome

    # --- reading -------------------------------------------------------------------------

    def find(
        self, filters: dict, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[RegistrationRecord], str | None]:
        """Registrations matching ``filters``, newest first, keyset-paginated
        (``ValueError`` for a bad cursor)."""
        with self.db.read() as conn:
            return queries.find(conn, filters, limit, cursor, self.clock())

    def stale(self, days: int, limit: int | None = None) -> list[RegistrationRecord]:
        """Live registrations with no sign of life for ``days`` days, the longest quiet
        first (the stale-token report)."""
        with self.db.read() as conn:
            return queries.stale(conn, self.clock(), days, limit)

    def stale_counts(self, days: int) -> dict[str, int]:
        """Live registrations quiet for ``days`` days, by state."""
        with self.db.read() as conn:
            return queries.quiet_counts(conn, self.clock(), days)

    def remove_stale(
        self, days: int, progress: Callable[[int], None] | None = None, chunk: int = 500
    ) -> int:
        """Remove the stale-token report's registrations (reason ``stale``), ``chunk`` at
        a time (one transaction each); how many. ``progress`` gets each chunk's count."""
        total = 0
        while True:
            with self.db.write() as conn:
                removed = reports.remove_quiet(conn, self.clock(), days, chunk)
            if not removed:
                return total
            total += removed
            if progress:
                progress(removed)

    def history(self, token: str) -> list[HistoryEvent]:
        with self.db.read() as conn:
            return queries.history(conn, token)

    def outbox(self) -> dict[str, Any]:
        with self.db.read() as conn:
            return queries.outbox(conn, self.clock())

    def quiet(self, days: int) -> int:
        """Live registrations with no sign of life for ``days`` days."""
        with self.db.read() as conn:
            return sum(queries.quiet_counts(conn, self.clock(), days).values())

    def stats(self, days: int = 7, quiet_days: int = 30) -> dict[str, Any]:
        with self.db.read() as conn:
            return queries.stats(conn, self.clock(), days, quiet_days)

    def activity(self, days: int = 30) -> list[dict[str, Any]]:
        """Registrations, removals and comebacks per UTC day, the last ``days`` (today
        included), oldest first."""
        with self.db.read() as conn:
            return queries.activity(conn, self.clock(), days)

    # --- the support page's staff ---------------------------------------------------------

    def add_staff(self, name: str, password_hash: str) -> bool:
        """Create a staff account, or give it a new password hash; True when new."""
        with self.db.write() as conn:
            return staff.add(conn, self.clock(), name, password_hash)

    def remove_staff(self, name: str) -> bool:
        with self.db.write() as conn:
            return staff.remove(conn, name)

    def staff_accounts(self) -> list[tuple[str, datetime, datetime | None]]:
        """(name, created, last login) of every staff account."""
        with self.db.read() as conn:
            return staff.accounts(conn)

    def staff_account(self, name: str) -> tuple[str, int] | None:
        """(password hash, session generation) of a staff account; None when there is
        none."""
        with self.db.read() as conn:
            return staff.account(conn, name)

    def login_attempt(self, name: str) -> tuple[bool, float]:
        """Whether an attempt to log in as ``name`` is heard now, and the seconds of
        its wait (see :func:`.staff.attempt`)."""
        with self.db.write() as conn:
            return staff.attempt(conn, self.clock(), name)

    def logged_in(self, name: str) -> None:
        with self.db.write() as conn:
            staff.logged_in(conn, self.clock(), name)

    def logged_out(self, name: str) -> None:
        """Every session of the staff account made until now ends."""
        with self.db.write() as conn:
            staff.logged_out(conn, name)

    # --- erasure -------------------------------------------------------------------------

    def erase(
        self, api_name: str, value, marks: Callable[[str, Any], Sequence[str]] | None = None
    ) -> dict[str, Any]:
        """Delete one contact's personal data and revoke their links (see
        :func:`.erasure.erase`), and the copies the database's files keep of it
        (:meth:`~bridge.db.Database.purge_freed`)."""
        with self.db.write() as conn:
            result = erasure.erase(conn, self.clock(), api_name, value, marks)
        if result["erased"]:
            self.db.purge_freed()
        return result

    # --- history retention ---------------------------------------------------------------

    def prunable(self, cutoff: datetime) -> dict[str, int]:
        """The attempt-level events older than ``cutoff`` (:data:`.pruning.PRUNABLE`), by
        kind."""
        with self.db.read() as conn:
            return pruning.counts(conn, cutoff)

    def prune_chunk(self, cutoff: datetime, after: int, limit: int) -> tuple[int, int] | None:
        """Delete the next ``limit`` of them with ids above ``after``: found in a read,
        deleted in one short write transaction. (deleted, the last id of the chunk), or
        None: none left."""
        with self.db.read() as conn:
            found = pruning.next_chunk(conn, cutoff, after, limit)
        if found is None:
            return None
        with self.db.write() as conn:
            return pruning.delete_chunk(conn, cutoff, *found), found[1]

    def history_space(self) -> pruning.Space:
        """What the database takes on disk (:class:`.pruning.Space`)."""
        with self.db.read() as conn:
            return pruning.space(conn)

    def give_back(self, pages: int) -> int:
        """Up to ``pages`` free pages back to the file system (SQLite in incremental
        mode); the free pages left. The last step moves the WAL into the file, which
        then shrinks."""
        with self.db.write() as conn:
            left = pruning.give_back(conn, pages)
        if not left:
            self.db.purge_freed()
        return left
