"""The ``flask bridge`` command group: migrate, deliver, and the ledger's tools.

Owns argument parsing and printing only; every change goes through the
ledger service.
"""

from __future__ import annotations

import json
import sys
import time

import click
from flask import current_app
from flask.cli import AppGroup

from . import db as dbmod

cli = AppGroup("bridge", help="Reteno bridge: migrations, delivery and the audit ledger.")


def _rt():
    return current_app.extensions["reteno_bridge"]


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


@cli.command("migrate")
def migrate_command():
    """Apply the Alembic migrations to the configured database (safe to run again)."""
    rt = _rt()
    before, after = dbmod.migrate(rt.settings.database_url, rt.db.engine)
    if before == after:
        click.echo(f"bridge database already at revision {after}; nothing to do")
    else:
        click.echo(f"bridge database migrated from {before or 'empty'} to {after}")


@cli.command("deliver")
@click.option("--once", is_flag=True, help="Drain what is due now, then exit.")
@click.option("--poll", default=0.5, show_default=True, help="Seconds between outbox polls.")
def deliver_command(once: bool, poll: float):
    """Run the delivery worker (alongside BRIDGE_BACKGROUND_DELIVERY=false servers)."""
    rt = _rt()
    dbmod.check_schema(rt.db.engine)
    if once:
        depth = rt.ledger.outbox()["depth"]
        with click.progressbar(length=depth, label="delivering", file=sys.stderr) as bar:
            stats = rt.worker.drain(progress=bar.update)
        summary = ", ".join(f"{k} {v}" for k, v in sorted(stats.items())) or "nothing due"
        click.echo(f"delivery finished: {summary}")
        remaining = rt.ledger.outbox()["depth"]
        if remaining:
            click.echo(f"{remaining} registration(s) still queued (backing off or paused)")
        return
    click.echo("delivery worker running; Ctrl-C to stop", err=True)
    try:
        while True:
            rt.worker.drain()
            time.sleep(poll)
    except KeyboardInterrupt:
        click.echo("delivery worker stopped", err=True)
