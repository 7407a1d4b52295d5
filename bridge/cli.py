"""The ``flask bridge`` command group: migrate, deliver, and the ledger's tools.

Owns argument parsing and printing only; every change goes through the
ledger service. What it prints from the ledger (error texts Reteno or a webhook
sent, raw status objects) never carries a control character to the terminal:
tables show them as escapes (``\\x1b``), JSON as ``\\u`` escapes.
"""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup, with_appcontext

from . import db as dbmod
from . import heap
from .cli_chats import COMMANDS as chat_commands
from .cli_retention import prune_command
from .cli_staff import support_user_group
from .cli_support import (
    _ID_OPTIONS,
    _echo_json,
    _identifier_options,
    _json_option,
    _normalized,
    _plural,
    _ready,
    _stopped_by_signals,
    _without_empty_columns,
    format_table,
)
from .config import StartupError, parse_duration
from .identifiers import normalize_token
from .runtime import current
from .sandbox.cli import sandbox_command
from .schemas import STATES, HistorySchema, TokenPageSchema


class StartupErrorsInOneLine:
    """For a click group: a command that cannot start (a bad setting, the database
    unreachable or behind) says why in one line and exits 1, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except StartupError as exc:
            raise click.ClickException(str(exc)) from None


class _Group(StartupErrorsInOneLine, AppGroup):
    pass


cli = _Group("bridge", help="Reteno bridge: migrations, delivery and the audit ledger.")
cli.add_command(sandbox_command)  # the simulator alone: `flask bridge sandbox --port 8025`
for _command in chat_commands:  # mute, unmute, stale, replay
    cli.add_command(_command)
cli.add_command(support_user_group)  # the support page's staff accounts
cli.add_command(prune_command)  # attempt-level history out past an age


@cli.command("migrate")
def migrate_command():
    """Apply the Alembic migrations to the configured database (safe to run again)."""
    rt = current()
    with dbmod.reachable(rt.settings.database_url):
        before, after = dbmod.migrate(rt.settings.database_url, rt.db.engine)
    if before == after:
        click.echo(f"bridge database already at revision {after}; nothing to do")
    else:
        click.echo(f"bridge database migrated from {before or 'empty'} to {after}")


@cli.command("deliver")
@click.option("--once", is_flag=True, help="Drain what is due now, then exit.")
@click.option("--poll", default=0.5, show_default=True, help="Seconds between outbox polls.")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve this worker's Prometheus metrics (its deliveries, their delay, Reteno's "
    "answers) on http://HOST:PORT/metrics, without a key.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Where --metrics-port listens.",
)
def deliver_command(once: bool, poll: float, metrics_port: int | None, metrics_host: str):
    """Run the delivery worker (alongside BRIDGE_BACKGROUND_DELIVERY=false servers).

    SIGTERM or SIGINT (Ctrl-C) stops it cleanly: the upstream calls in flight are
    finished and recorded (within the upstream time-outs), what was not sent goes
    back to the queue, and a restart re-sends nothing Reteno answered.
    """
    heap.delivery_process()  # before any of its threads starts (bridge.heap)
    rt = _ready()
    stop_metrics = None
    if metrics_port and not once:
        try:
            stop_metrics = rt.metrics.serve(metrics_host, metrics_port)
        except OSError as exc:
            raise click.ClickException(
                f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc.strerror}"
            ) from None
    try:
        _deliver(rt, once, poll)
    finally:
        if stop_metrics:
            stop_metrics()


def _deliver(rt, once: bool, poll: float) -> None:
    with _stopped_by_signals() as stop:
        if once:
            depth = rt.ledger.outbox()["depth"]
            with click.progressbar(length=depth, label="delivering", file=sys.stderr) as bar:
                stats = rt.worker.drain(progress=bar.update, stop=stop)
            summary = ", ".join(f"{k} {v}" for k, v in sorted(stats.items())) or "nothing due"
            click.echo(f"delivery finished: {summary}")
            remaining = rt.ledger.outbox()["depth"]
            if remaining:
                click.echo(f"{remaining} registration(s) still queued (backing off or paused)")
            return
        click.echo("delivery worker running; Ctrl-C or SIGTERM to stop", err=True)
        rt.worker.run(stop, poll_seconds=poll)
    click.echo("delivery worker stopped", err=True)


# --- reading and operating the ledger ------------------------------------------------
#
# ``tokens``, ``history``, ``stats``, ``erase`` and ``requeue`` print aligned plain-text
# tables for people and, with ``--json``, the same data as the HTTP read API for scripts.

_FLAG_OF = {name: flag for flag, name, _fn, _help in _ID_OPTIONS}


def _page(filters: dict, limit: int, cursor: str | None, as_json: bool):
    """A page of registrations (the filters of GET /tokens): printed as JSON with
    ``--json`` (then None), else ``(rows, next cursor)`` for a table."""
    rt = _ready()
    try:
        rows, nxt = rt.ledger.find(filters, limit=limit, cursor=cursor)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--cursor'") from None
    if as_json:
        _echo_json(TokenPageSchema().dump({"items": rows, "next": nxt}))
        return None
    return rows, nxt


@cli.command("tokens")
@_identifier_options
@click.option("--state", type=click.Choice(STATES), help="Only registrations in this state.")
@click.option(
    "--conflict/--no-conflict",
    default=None,
    help="Only identity conflicts (or only registrations without one).",
)
@click.option(
    "--quiet-days",
    type=click.IntRange(1, 36500),
    help="Only live registrations with no sign of life for this many days, the "
    "longest quiet first (the stale-token report).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 500),
    default=50,
    show_default=True,
    help="Registrations per page.",
)
@click.option("--cursor", help="The next-page cursor a previous page printed.")
@_json_option
def tokens_command(state, conflict, quiet_days, limit, cursor, as_json, **identifiers):
    """Query registrations, newest first (the filters of GET /tokens)."""
    filters = {k: v for k, v in identifiers.items() if v is not None}
    if quiet_days is not None:
        filters["quietDays"] = quiet_days
    if state:
        filters["state"] = state
    if conflict is not None:
        filters["conflict"] = conflict
    page = _page(filters, limit, cursor, as_json)
    if page is None:
        return
    rows, nxt = page
    if not rows:
        click.echo("no registrations match")
        return
    headers = [
        "ID",
        "TOKEN",
        "STATE",
        "MATCHED BY",
        "CONTACT ID",
        "EXTERNAL ID",
        "PHONE",
        "EMAIL",
        "ATTEMPTS",
        "CREATED",
        "DELIVERED",
        "REMOVED",
        "RETENO HOLDS",
        "MUTED",
        "NOTE",
    ]
    table = [
        [
            r.id,
            r.token,
            r.state,
            r.matched_by,
            r.contact_id,
            r.external_customer_id,
            r.phone,
            r.email,
            r.attempts,
            r.created_at,
            r.delivered_at,
            r.removed_at,
            "yes" if r.reteno_holds else None,
            (r.muted_until or "until unmuted") if r.muted else None,
            r.removal_reason or r.last_error,
        ]
        for r in rows
    ]
    headers, table = _without_empty_columns(headers, table, keep=4)
    right = {headers.index(h) for h in ("ID", "CONTACT ID", "ATTEMPTS") if h in headers}
    click.echo(format_table(headers, table, right=right))
    click.echo("")
    if nxt:
        click.echo(f"{_plural(len(rows), 'registration')} shown; next page: --cursor {nxt}")
    else:
        click.echo(f"{_plural(len(rows), 'registration')}; no more pages")


@cli.command("history")
@click.argument("token", callback=_normalized(normalize_token))
@_json_option
def history_command(token, as_json):
    """Every event of TOKEN, oldest first (use `history -- -100123` for a negative id)."""
    rt = _ready()
    events = rt.ledger.history(token)
    if as_json:
        _echo_json(HistorySchema().dump({"token": token, "events": events}))
        return
    if not events:
        click.echo(f"no events for token {token}")
        return
    click.echo(
        format_table(
            ["AT", "KIND", "REGISTRATION", "DETAIL"],
            [[e.at, e.kind, e.registration_id, e.detail] for e in events],
            right={2},
        )
    )
    click.echo("")
    click.echo(f"{_plural(len(events), 'event')} for token {token}")


@cli.command("stats")
@click.option(
    "--days",
    type=click.IntRange(1, 366),
    default=7,
    show_default=True,
    help="Days (UTC, today included) of the per-day summary.",
)
@click.option(
    "--quiet-days",
    type=click.IntRange(1, 36500),
    default=30,
    show_default=True,
    help="Live registrations quiet this long are counted as stale.",
)
@_json_option
def stats_command(days, quiet_days, as_json):
    """Registrations by state, the outbox, dead letters by error, stale registrations,
    mutes and replays, custom events, deliveries per day."""
    rt = _ready()
    stats = rt.ledger.stats(days=days, quiet_days=quiet_days)
    if as_json:
        _echo_json(stats)
        return
    click.echo("Registrations by state")
    click.echo(format_table(["STATE", "COUNT"], list(stats["states"].items()), right={1}))
    outbox = stats["outbox"]
    age = outbox["oldestAgeSeconds"]
    click.echo("")
    click.echo(
        f"Outbox: {_plural(outbox['depth'], 'registration')} queued"
        + (f", oldest queued {age:.0f} s ago" if outbox["depth"] else "")
    )
    click.echo("")
    dead = stats["deadLetters"]
    click.echo(f"Dead letters: {dead['total']}")
    if dead["byError"]:
        click.echo(
            format_table(
                ["COUNT", "LAST ERROR"],
                [[d["count"], d["error"]] for d in dead["byError"]],
                right={0},
            )
        )
    stale = stats["stale"]
    quiet = ", ".join(f"{state} {n}" for state, n in stale["states"].items() if n) or "none"
    click.echo("")
    click.echo(
        f"Quiet for {stale['quietDays']} days (bridge stale): {quiet}; removed as "
        f"stale so far: {stale['removed']}"
    )
    if stats["commands"]:
        click.echo("")
        click.echo("Mutes, unmutes and replays")
        click.echo(
            format_table(
                ["ACTION", "QUEUED", "DELIVERED", "DEAD"],
                [
                    [a, c.get("queued", 0), c.get("delivered", 0), c.get("dead", 0)]
                    for a, c in sorted(stats["commands"].items())
                ],
                right={1, 2, 3},
            )
        )
    if any(stats["events"].values()):
        click.echo("")
        click.echo(
            "Custom events: " + ", ".join(f"{state} {n}" for state, n in stats["events"].items())
        )
    click.echo("")
    click.echo(f"Per day (UTC), last {_plural(days, 'day')}")
    click.echo(
        format_table(
            ["DAY", "DELIVERED", "REMOVED"],
            [[d["day"], d["delivered"], d["removed"]] for d in stats["perDay"]],
            right={1, 2},
        )
    )


@cli.command("erase")
@_identifier_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_json_option
def erase_command(yes, as_json, **identifiers):
    """Delete one contact's personal data from the ledger (exactly one identifier).

    Deletes the registrations with that value and every registration of their
    tokens, their history, and the unattached events (unmatched or ignored
    statuses) that mention them; a mention in another contact's line or error
    text becomes "[erased]". Leaves one `erased` audit event without personal
    data. Running it again erases nothing.
    """
    given = [(name, value) for name, value in identifiers.items() if value is not None]
    if len(given) != 1:
        raise click.UsageError("Name exactly one of " + ", ".join(_FLAG_OF.values()) + " to erase.")
    api_name, value = given[0]
    what = f"{_FLAG_OF[api_name].lstrip('-').replace('-', ' ')} {value}"
    rt = _ready()
    if not yes:
        click.confirm(
            f"Erase every registration and event of {what}? This cannot be undone.",
            abort=True,
            err=True,
        )
    from .links import marks

    result = rt.ledger.erase(api_name, value, marks(rt.settings.link_secrets))
    if as_json:
        _echo_json(result)
        return
    if not result["erased"]:
        click.echo(f"nothing to erase: no registration or event mentions {what}")
        return
    message = (
        f"erased {_plural(result['registrations'], 'registration')} and "
        f"{_plural(result['events'], 'event')} of {what}"
    )
    if result["scrubbed"]:
        message += f"; blanked {_plural(result['scrubbed'], 'mention')} elsewhere"
    if result["revoked"]:
        message += f"; revoked their links ({_plural(result['revoked'], 'tombstone')})"
    click.echo(message)
    click.echo("recorded an 'erased' audit event (it holds no personal data)")


@cli.command("requeue")
@click.option(
    "--id", "ids", type=click.IntRange(min=1), multiple=True, help="Registration id (repeatable)."
)
@click.option("--error-contains", help="Only dead letters whose last error contains this text.")
@click.option(
    "--token",
    callback=_normalized(normalize_token),
    help="Only dead letters of this Telegram chat id.",
)
@_json_option
def requeue_command(ids, error_contains, token, as_json):
    """Move dead letters back to the queue: all of them, or those matching the filters."""
    rt = _ready()
    count = rt.ledger.requeue_dead(
        ids=list(ids) or None, error_contains=error_contains, token=token
    )
    if as_json:
        _echo_json({"requeued": count})
        return
    if not count:
        click.echo("no dead letters match; nothing requeued")
        return
    click.echo(
        f"requeued {_plural(count, 'dead letter')}; the delivery worker sends them next "
        "(or run `bridge deliver --once`)"
    )


# --- deep links ---------------------------------------------------------------------


@cli.command("link")
@click.option("--contact-id", "contact_id", help="Reteno contactId.")
@click.option(
    "--external-customer-id",
    "external_customer_id",
    help="externalCustomerId (your own customer id).",
)
@click.option("--phone", help="Phone number (stored as its digits).")
@click.option("--email", help="E-mail address.")
@click.option(
    "--ttl",
    help="How long the link stays valid: 90m, 12h, 30d (at most 365d); 0 for ever "
    "(default BRIDGE_LINK_TTL).",
)
@click.option("--qr", "show_qr", is_flag=True, help="Print its QR code in the terminal too.")
def link_command(contact_id, external_customer_id, phone, email, ttl, show_qr):
    """Print a https://t.me/<bot>?start=… link that registers the chat that opens it
    first with these identifiers (any other chat opening it registers nothing).

    Give at least one identifier. Needs TELEGRAM_BOT_USERNAME. The link is kept in the
    ledger like those of POST /links (GET /links/<id> tells whether it was used).
    """
    import io

    import segno

    from .config import MAX_LINK_TTL
    from .identifiers import NORMALIZERS, IdentifierError

    given = {
        name: value
        for name, value in (
            ("contactId", contact_id),
            ("externalCustomerId", external_customer_id),
            ("phone", phone),
            ("email", email),
        )
        if value is not None
    }
    if not given:
        raise click.UsageError(
            "Give at least one of --contact-id, --external-customer-id, --phone, --email."
        )
    identifiers = {}
    for name, value in given.items():
        try:
            identifiers[name] = NORMALIZERS[name](value)
        except IdentifierError as exc:
            raise click.UsageError(f"{name}: {' '.join(exc.messages)}") from None
    try:
        ttl_seconds = parse_duration(ttl) if ttl is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--ttl'") from None
    if ttl_seconds is not None and ttl_seconds > MAX_LINK_TTL:
        raise click.BadParameter(
            f"at most {MAX_LINK_TTL // 86400}d (0: never expires)", param_hint="'--ttl'"
        )
    rt = _ready()
    username = rt.settings.telegram_bot_username
    if not username:
        raise click.UsageError(
            "TELEGRAM_BOT_USERNAME is not set: a link needs the bot's @username."
        )
    made = rt.ledger.create_link(
        identifiers, rt.settings.link_ttl if ttl_seconds is None else ttl_seconds
    )
    url = f"https://t.me/{username}?start={made.payload}"
    click.echo(url)
    if show_qr:
        out = io.StringIO()
        segno.make_qr(url).terminal(out=out, compact=True)
        click.echo(out.getvalue(), nl=False)
    expires = made.expires_at.isoformat() if made.expires_at else "never"
    click.echo(f"link {made.id}: expires {expires}", err=True)


# --- identity conflicts ---------------------------------------------------------------


@cli.group("conflicts", invoke_without_command=True)
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--cursor", help="The next-page cursor a previous page printed.")
@_json_option
@click.pass_context
def conflicts_group(ctx, limit, cursor, as_json):
    """Registrations submitted while their chat had another identity (newest first);
    `release ID` sends a held one."""
    if ctx.invoked_subcommand is None:  # a subcommand loads the app itself, after its --help
        ctx.invoke(_list_conflicts, limit, cursor, as_json)


@with_appcontext
def _list_conflicts(limit, cursor, as_json):
    page = _page({"conflict": True}, limit, cursor, as_json)
    if page is None:
        return
    rows, nxt = page
    if not rows:
        click.echo("no identity conflicts")
        return
    click.echo(
        format_table(
            ["ID", "TOKEN", "STATE", "MATCHED BY", "CREATED"],
            [[r.id, r.token, r.state, r.matched_by, r.created_at] for r in rows],
            right={0},
        )
    )
    held = sum(r.state == "held" for r in rows)
    click.echo("")
    click.echo(
        f"{_plural(len(rows), 'conflict')} shown, {held} held"
        + (f"; next page: --cursor {nxt}" if nxt else "")
    )


@conflicts_group.command("release")
@click.argument("registration_id", type=click.IntRange(min=1))
def conflicts_release(registration_id):
    """Send a held registration to Reteno after all (it goes to the queue)."""
    rt = _ready()
    if not rt.ledger.release_held(registration_id):
        raise click.ClickException(f"registration {registration_id} is not held")
    click.echo(f"released registration {registration_id}: queued for delivery")
