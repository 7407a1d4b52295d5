"""The support page's staff accounts and its failed-login throttle.

Accounts (``bridge_support_users``) hold a name and a password hash made by the
caller (the ledger never sees a password). The throttle (``bridge_support_logins``)
counts failed logins in a row per user name, known or not (so the answer says
nothing of which names exist): after :data:`FREE_FAILURES` of them, each further
attempt must wait :func:`wait_after` seconds, doubling up to :data:`MAX_WAIT`. It
is kept in the ledger, so every worker process reads the same wait; a successful
login clears it, and so does a day without attempts (each new name forgets a few
such names, so guessed names never pile up).
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from ..db import insert_unless_taken, lock_keys
from ..models import SupportLogin, SupportUser

FREE_FAILURES = 3  # failed logins in a row for a name before attempts must wait
MAX_WAIT = 900  # seconds: the longest wait between attempts
FORGET_AFTER = timedelta(days=1)  # a name's failures are forgotten after a day without attempts
_FORGET_AT_ONCE = 10  # forgotten names deleted upon each new name
# a new account's first session generation is below this (random); the column is 32-bit
# and each logout or new password adds one
_FIRST_GENERATIONS = 2**30


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def valid_name(name: str) -> bool:
    """A staff user name: 1 to 64 of letters, digits and ``. _ @ -``, starting with a
    letter or digit (the CLI and the login form take the same)."""
    return bool(NAME.fullmatch(name))


def wait_after(failures: int) -> int:
    """Seconds the next attempt of a name waits after ``failures`` failed ones in a row."""
    if failures < FREE_FAILURES:
        return 0
    return min(MAX_WAIT, 2 ** (failures - FREE_FAILURES + 1))


def add(conn, now: datetime, name: str, password_hash: str) -> bool:
    """Create the account ``name``, or give it a new password; True when it is new.

    A new password ends the account's sessions (a new generation). A new account starts
    at a random generation, so a cookie of a removed account of the same name (made in
    that account's generation) is refused, but for a chance of one in 2**30."""
    if not valid_name(name):
        raise ValueError(f"not a staff user name: {name!r}")
    lock_keys(conn, [f"support-user:{name}"])
    changed = conn.execute(
        update(SupportUser)
        .where(SupportUser.name == name)
        .values(password_hash=password_hash, generation=SupportUser.generation + 1)
    ).rowcount
    if changed:
        return False
    conn.execute(
        SupportUser.__table__.insert().values(
            name=name,
            password_hash=password_hash,
            created_at=now,
            generation=secrets.randbelow(_FIRST_GENERATIONS),
        )
    )
    return True


def remove(conn, name: str) -> bool:
    """Delete the account ``name`` (its sessions end with their next request)."""
    conn.execute(delete(SupportLogin).where(SupportLogin.name == name))
    return bool(conn.execute(delete(SupportUser).where(SupportUser.name == name)).rowcount)


def accounts(conn) -> list[tuple[str, datetime, datetime | None]]:
    """(name, created, last login) of every account, by name."""
    rows = conn.execute(
        select(SupportUser.name, SupportUser.created_at, SupportUser.last_login_at).order_by(
            SupportUser.name
        )
    )
    return [tuple(row) for row in rows]


def account(conn, name: str) -> tuple[str, int] | None:
    """The account ``name``: (password hash, session generation); None when there is
    none."""
    row = conn.execute(
        select(SupportUser.password_hash, SupportUser.generation).where(SupportUser.name == name)
    ).first()
    return tuple(row) if row else None


def attempt(conn, now: datetime, name: str) -> tuple[bool, float]:
    """An attempt to log in as ``name``: (heard, seconds). Not heard while an earlier
    failure's wait runs (``seconds``: what is left of it). A heard attempt counts as
    failed until :func:`logged_in` says otherwise, in the same transaction that let it
    through, so attempts made at once each count; ``seconds``: the wait that follows
    it if it fails."""
    lock_keys(conn, [f"support-login:{name}"])
    row = conn.execute(
        select(SupportLogin.failures, SupportLogin.wait_until, SupportLogin.last_attempt_at).where(
            SupportLogin.name == name
        )
    ).first()
    if row is None or row.last_attempt_at < now - FORGET_AFTER:
        _forget(conn, now)
    if row is None:
        sqlite_insert, postgresql_insert = insert_unless_taken(SupportLogin.__table__, ["name"])
        statement = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(statement.values(name=name, failures=0, wait_until=None, last_attempt_at=now))
        failures, until = 0, None
    elif row.last_attempt_at < now - FORGET_AFTER:
        failures, until = 0, None
    else:
        failures, until = row.failures, row.wait_until
    if until is not None and until > now:
        return False, (until - now).total_seconds()
    wait = wait_after(failures + 1)
    conn.execute(
        update(SupportLogin)
        .where(SupportLogin.name == name)
        .values(
            failures=failures + 1,
            wait_until=now + timedelta(seconds=wait) if wait else None,
            last_attempt_at=now,
        )
    )
    return True, float(wait)


def _forget(conn, now: datetime) -> None:
    """Delete the few names whose last attempt is the oldest, a day old or more (through
    the index on it)."""
    old = (
        select(SupportLogin.name)
        .where(SupportLogin.last_attempt_at < now - FORGET_AFTER)
        .order_by(SupportLogin.last_attempt_at)
        .limit(_FORGET_AT_ONCE)
    )
    conn.execute(delete(SupportLogin).where(SupportLogin.name.in_(old.scalar_subquery())))


def logged_out(conn, name: str) -> None:
    """``name`` logged out: every session of the account made until now ends (a new
    generation)."""
    conn.execute(
        update(SupportUser)
        .where(SupportUser.name == name)
        .values(generation=SupportUser.generation + 1)
    )


def logged_in(conn, now: datetime, name: str) -> None:
    """``name`` logged in: its failures are forgotten, its last login noted."""
    conn.execute(delete(SupportLogin).where(SupportLogin.name == name))
    conn.execute(update(SupportUser).where(SupportUser.name == name).values(last_login_at=now))
