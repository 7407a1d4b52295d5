"""``flask bridge support-user add|remove|list``: the support page's staff accounts.

Parsing and printing only: the password is hashed here (werkzeug's
``generate_password_hash``) and the ledger keeps the hash alone.
"""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup
from werkzeug.security import generate_password_hash

from .cli_support import _echo_json, _json_option, _plural, _ready, format_table
from .ledger.staff import valid_name

MIN_PASSWORD = 12  # characters of a staff password


def _name(ctx, param, value: str) -> str:
    if not valid_name(value):
        raise click.BadParameter(
            "1 to 64 letters, digits and . _ @ -, starting with a letter or digit"
        )
    return value


support_user_group = AppGroup(
    "support-user",
    help="Staff accounts of the support page (BRIDGE_SUPPORT_PAGE): read-only, separate "
    "from the API keys.",
)


@support_user_group.command("add")
@click.argument("name", callback=_name)
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from standard input (one line) instead of prompting.",
)
def add_command(name: str, password_stdin: bool):
    """Create the account NAME, or give it a new password (asked for twice)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD:
        raise click.ClickException(f"the password must be at least {MIN_PASSWORD} characters long")
    rt = _ready()
    created = rt.ledger.add_staff(name, generate_password_hash(password))
    click.echo(f"support user {name} " + ("added" if created else "has a new password"))


@support_user_group.command("remove")
@click.argument("name", callback=_name)
def remove_command(name: str):
    """Delete the account NAME; its open sessions end with their next request."""
    rt = _ready()
    if not rt.ledger.remove_staff(name):
        raise click.ClickException(f"there is no support user {name}")
    click.echo(f"support user {name} removed")


@support_user_group.command("list")
@_json_option
def list_command(as_json: bool):
    """The staff accounts: name, when made, last login."""
    rt = _ready()
    accounts = rt.ledger.staff_accounts()
    if as_json:
        _echo_json([{"name": n, "createdAt": c, "lastLoginAt": last} for n, c, last in accounts])
        return
    if not accounts:
        click.echo("no support users; add one with `bridge support-user add NAME`")
        return
    click.echo(format_table(["NAME", "CREATED", "LAST LOGIN"], accounts))
    click.echo("")
    click.echo(_plural(len(accounts), "support user"))
