"""The ``flask bridge`` commands that act on chats beyond registering them: ``mute``
and ``unmute``, the stale-token report (``stale``) and ``replay`` into another app.

Parsing and printing only: the ledger (and :mod:`bridge.replay`) do the work.
"""

from __future__ import annotations

import math
import os
import sys

import click
from flask.cli import with_appcontext

from .cli_support import (
    _echo_json,
    _json_option,
    _normalized,
    _plural,
    _ready,
    _stopped_by_signals,
    _without_empty_columns,
    format_table,
)
from .config import PLATFORMS, ConfigError
from .identifiers import normalize_token
from .ledger import MuteRequest, ReplayTarget
from .ledger.commands import MAX_MUTE_SECONDS, MIN_MUTE_SECONDS
from .replay import Replay, target_settings
from .reteno import RetenoClient
from .schemas import MuteResultSchema, TokenPageSchema


def _mute(request: MuteRequest, as_json: bool) -> None:
    rt = _ready()
    record = rt.ledger.mute(request, source="cli")
    if record is None:
        raise click.ClickException(
            f"chat {request.token} has no live registration; register it first"
        )
    if as_json:
        _echo_json(MuteResultSchema().dump(record))
        return
    if not record.muted:
        click.echo(f"chat {record.token}: unmute queued for Reteno")
    elif record.muted_until is None:
        click.echo(f"chat {record.token}: muted until unmuted; queued for Reteno")
    else:
        until = record.muted_until.strftime("%Y-%m-%d %H:%M:%S UTC")
        click.echo(f"chat {record.token}: muted until {until}; queued for Reteno")


@click.command("mute")
@with_appcontext
@click.argument("token", callback=_normalized(normalize_token))
@click.option(
    "--duration",
    type=click.IntRange(MIN_MUTE_SECONDS, MAX_MUTE_SECONDS),
    help=f"Seconds ({MIN_MUTE_SECONDS} to {MAX_MUTE_SECONDS}); default: until unmuted.",
)
@_json_option
def mute_command(token, duration, as_json):
    """Mute TOKEN's marketing messages (transactional ones still arrive); the last mute or
    unmute of a chat wins. It goes to Reteno through the outbox."""
    _mute(MuteRequest(token, mute=True, duration=duration), as_json)


@click.command("unmute")
@with_appcontext
@click.argument("token", callback=_normalized(normalize_token))
@_json_option
def unmute_command(token, as_json):
    """Let TOKEN's marketing messages arrive again."""
    _mute(MuteRequest(token, mute=False), as_json)


@click.command("stale")
@with_appcontext
@click.option(
    "--days",
    type=click.IntRange(1, 36500),
    required=True,
    help="Quiet for this many days: no submission, unblock, /start or SENT / "
    "DELIVERED / CLICKED status (FCM calls a token stale after 30).",
)
@click.option("--remove", is_flag=True, help="Remove them (reason stale), after a confirmation.")
@click.option("--yes", is_flag=True, help="With --remove: do not ask.")
@click.option(
    "--limit",
    type=click.IntRange(1, 10000),
    default=50,
    show_default=True,
    help="Registrations listed.",
)
@_json_option
def stale_command(days, remove, yes, limit, as_json):
    """The stale-token report: live registrations with no sign of life for DAYS days, the
    longest quiet first, with counts by state; --remove removes them."""
    rt = _ready()
    counts = rt.ledger.stale_counts(days)
    total = sum(counts.values())
    if not remove:
        rows = rt.ledger.stale(days, limit)
        if as_json:
            _echo_json(
                {
                    "quietDays": days,
                    "counts": counts,
                    **TokenPageSchema(only=["items"]).dump({"items": rows}),
                }
            )
            return
        if not rows:
            click.echo(f"no live registration has been quiet for {_plural(days, 'day')}")
            return
        headers = ["ID", "TOKEN", "STATE", "MATCHED BY", "LAST SEEN", "CREATED", "MUTED"]
        table = [
            [
                r.id,
                r.token,
                r.state,
                r.matched_by,
                r.last_seen_at or r.created_at,
                r.created_at,
                "yes" if r.muted else None,
            ]
            for r in rows
        ]
        headers, table = _without_empty_columns(headers, table, keep=5)
        click.echo(format_table(headers, table, right={0}))
        click.echo("")
        by_state = ", ".join(f"{state} {n}" for state, n in counts.items() if n)
        click.echo(
            f"{_plural(total, 'registration')} quiet for {_plural(days, 'day')} "
            f"({by_state}); {len(rows)} shown, the longest quiet first"
        )
        return
    if not total:
        click.echo(
            f"no live registration has been quiet for {_plural(days, 'day')}; nothing removed"
        )
        return
    if not yes:
        click.confirm(
            f"Remove {_plural(total, 'registration')} quiet for "
            f"{_plural(days, 'day')} (reason stale)?",
            abort=True,
        )
    with click.progressbar(length=total, label="removing", file=sys.stderr) as bar:
        removed = rt.ledger.remove_stale(days, progress=bar.update)
    if as_json:
        _echo_json({"quietDays": days, "removed": removed})
    else:
        click.echo(f"removed {_plural(removed, 'registration')} (reason stale)")


def _target(rt, to_app: str, platform: str | None, base_url: str | None, key: str):
    try:
        settings = target_settings(rt.settings, to_app, key, platform, base_url)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return settings, ReplayTarget(settings.app_uuid, settings.base_url)  # one spelling


@click.command("replay")
@with_appcontext
@click.option(
    "--to-app",
    "to_app",
    required=True,
    metavar="UUID",
    help="The Reteno application (Settings → My bots) to register the chats in.",
)
@click.option(
    "--platform",
    type=click.Choice(list(PLATFORMS)),
    help="The target's platform preset (base URL, auth scheme); default: the bridge's own.",
)
@click.option("--base-url", help="The target's base URL (default: its platform's).")
@click.option(
    "--api-key-env",
    metavar="NAME",
    help="The environment variable holding the target's API key (keys never go "
    "on the command line). Required unless --dry-run.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be sent; send nothing.")
def replay_command(to_app, platform, base_url, api_key_env, dry_run):
    """Register every live registration (not removed, dead or held) again in another
    Reteno app or platform, through the outbox: rate-limited and retried like delivery,
    recorded in each chat's history. Running it again sends nothing new; a run stopped
    halfway (even kill -9) goes on where it stopped."""
    rt = _ready()
    if rt.settings.sandbox and not base_url:
        # The simulator of sandbox mode lives in each process and holds one app: another
        # app's is a simulator of its own, run apart (it takes any app id).
        raise click.UsageError(
            "in sandbox mode the target is a simulator run apart: start "
            "one (`reteno-sandbox --port 8026`) and pass --base-url "
            "http://127.0.0.1:8026"
        )
    key = os.environ.get(api_key_env, "") if api_key_env else ""
    if not dry_run and not key:
        raise click.UsageError(
            "--api-key-env must name an environment variable holding the target's API key"
            if not api_key_env
            else f"the environment variable {api_key_env} is not set"
        )
    settings, target = _target(rt, to_app, platform, base_url, key or "unused")
    batch = rt.settings.batch_size
    if dry_run:
        new, waiting = rt.ledger.plan_replay(target), rt.ledger.replay_summary(target)["queued"]
        for row in rt.ledger.replay_preview(target):
            click.echo(f"  {row.token}  (registration {row.id}, matched by {row.matched_by})")
        total = new + waiting
        click.echo(
            f"dry run: {_plural(new, 'registration')} to queue"
            + (f" and {waiting} queued by an earlier run" if waiting else "")
            + f" for app {to_app} at {settings.base_url}/api/v1/apps/{to_app}/tokens: "
            f"{_plural(math.ceil(total / batch), 'request')} of up to {batch} tokens; "
            "nothing sent"
        )
        return
    replay = Replay(
        rt.ledger,
        RetenoClient(settings),
        target,
        batch,
        rt.settings.lease_seconds,
        rt.metrics,
        in_flight=rt.settings.in_flight,
    )
    with _stopped_by_signals() as stop:
        before = rt.ledger.plan_replay(target) + replay.queued()
        with click.progressbar(length=before, label="replaying", file=sys.stderr) as bar:
            result = replay.run(progress=bar.update, stop=stop)
    s = result.summary
    click.echo(
        f"replay into app {to_app}: {_plural(result.queued, 'registration')} queued now; "
        f"{s['delivered']} delivered, {s['dead']} dead, {s['queued']} still queued; "
        f"{_plural(result.calls, 'upstream call')}"
    )
    if s["dead"]:
        click.echo(
            "dead: refused by the target, or their chat went away before they were "
            "sent (`bridge history TOKEN` says which)"
        )
    if result.stopped:
        click.echo(f"not finished: {result.stopped}; run the same command again to go on", err=True)
        sys.exit(1)


COMMANDS = (mute_command, unmute_command, stale_command, replay_command)
