"""``flask bridge prune``: attempt-level history out of the ledger past an age.

Parsing and printing only: :func:`bridge.retention.prune` does the run, the ledger
(:mod:`bridge.ledger.pruning`) says what may go.
"""

from __future__ import annotations

import sys

import click
from flask.cli import with_appcontext

from .cli_support import _plural, _ready, format_table
from .config import MIN_HISTORY_RETENTION, parse_duration
from .db import describe
from .retention import CHUNK, PruneReport, prune


def _age(ctx, param, value: str) -> int:
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise click.BadParameter("a duration like 90d, 2160h or 129600m") from None
    if seconds < MIN_HISTORY_RETENTION:
        raise click.BadParameter(
            f"at least {MIN_HISTORY_RETENTION // 86400}d (a bare number is seconds)"
        )
    return seconds


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


@click.command("prune")
@click.option(
    "--older-than",
    "older_than",
    required=True,
    metavar="AGE",
    callback=_age,
    help="Prune what is older than this: 90d, 2160h (at least 1d).",
)
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def prune_command(older_than: int, dry_run: bool, yes: bool):
    """Delete attempt-level history older than AGE, keeping every audit trail.

    What goes: retries, pauses, calls not sent, mute calls superseded by a later
    request, and status events or Telegram updates that matched nothing or could not
    be read. What stays, whatever its age: each registration's audit trail
    (submitted, conflicts, delivered, dead, removed and why, restored, requeued),
    statuses and Telegram updates that changed something or came too late to, mutes
    and unmutes requested and delivered, erase tombstones and links. The events go
    in chunks, each its own short transaction: safe while the bridge serves. On SQLite the freed
    space goes back to the file system (incremental vacuum), or the command says how
    to enable that; on PostgreSQL it prints the table's size before and after.
    BRIDGE_HISTORY_RETENTION makes the delivery worker do the same every hour.
    """
    rt = _ready()
    age = f"{older_than // 86400}d" if older_than % 86400 == 0 else f"{older_than}s"
    found = prune(rt.ledger, older_than, dry_run=True)
    when = found.cutoff.isoformat(timespec="seconds")
    if not found.prunable:
        click.echo(f"nothing to prune: no attempt-level event is older than {age} ({when})")
        return
    click.echo(format_table(["kind", "events"], sorted(found.by_kind.items()), right={1}))
    if dry_run:
        click.echo(
            f"would delete {_plural(found.prunable, 'event')} older than {age} ({when}); "
            "nothing deleted (--dry-run)"
        )
        return
    if not yes:
        click.confirm(
            f"Delete {_plural(found.prunable, 'attempt-level event')} older than {age} "
            f"({when})? Each registration's audit trail is kept.",
            abort=True,
            err=True,
        )
    with click.progressbar(length=found.prunable, label="pruning", file=sys.stderr) as bar:
        report = prune(rt.ledger, older_than, CHUNK, progress=bar.update)
    click.echo(
        f"deleted {_plural(report.deleted, 'event')} older than {age} "
        f"in {_plural(report.chunks, 'chunk')}"
    )
    for line in _space(report, describe(rt.settings.database_url)):
        click.echo(line)


def _space(report: PruneReport, where: str) -> list[str]:
    before, after = report.before, report.after
    if after is None:
        return []
    if before.dialect != "sqlite":
        return [
            f"bridge_events: {_size(before.size)} before, {_size(after.size)} after "
            "(PostgreSQL reuses the deleted rows' space once (auto)vacuum has run; "
            "VACUUM FULL bridge_events gives it back to the file system, locking the table)"
        ]
    if before.incremental:
        return [
            f"gave back {_size(report.given_back)} to the file system "
            f"(database {_size(before.size)} → {_size(after.size)})"
        ]
    path = where.removeprefix("SQLite file ")
    return [
        f"{_size(after.free)} now free inside the database file ({_size(after.size)}), "
        "reused by new rows but not given back: the database is not in incremental "
        "auto-vacuum mode.",
        "To switch it once (the bridge stopped; it rewrites the file, needing as much "
        f"free disk again): sqlite3 {path} 'PRAGMA auto_vacuum=INCREMENTAL; VACUUM;'",
    ]
