"""``reteno-bridge serve``: the bundled app in one command.

It applies the migrations, then serves: with gunicorn and the shipped settings
(:mod:`bridge.gunicorn_conf`) when gunicorn is installed (the ``serve`` extra), this
process becoming gunicorn's master; otherwise with werkzeug's development server in
this process, after a line saying so. Either way the served app's start-up banner
names the ledger and, in sandbox mode, the development key; Ctrl-C or SIGTERM stops
it cleanly (the delivery thread finishes its upstream calls in flight).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

import click

from . import db as dbmod
from .factory import app_or_exit, create_app
from .runtime import current

GUNICORN_CONFIG = "python:bridge.gunicorn_conf"


@click.command("serve")
@click.option(
    "--sandbox",
    is_flag=True,
    help="Sandbox mode (BRIDGE_SANDBOX=true): deliver to the built-in Reteno "
    "simulator, never to Reteno (development only; refused with Reteno "
    "credentials set).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=5000,
    show_default=True,
    help="Port to listen on.",
)
def serve_command(sandbox: bool, host: str, port: int):
    """Apply the migrations and serve the bridge on http://HOST:PORT/.

    Served by gunicorn with the shipped settings (bridge.gunicorn_conf) when it is
    installed (pip install 'reteno-telegram-bridge[serve]'), else by werkzeug's
    development server (one process). The ledger and the sandbox's development key
    are in ./instance of the working directory unless BRIDGE_INSTANCE_PATH (or
    BRIDGE_DATABASE_URL) says otherwise. In sandbox mode gunicorn runs one worker, so
    the simulator's page shows every delivery. Ctrl-C or SIGTERM stops it.
    """
    if sandbox:
        os.environ["BRIDGE_SANDBOX"] = "true"
    app = app_or_exit(create_app)  # a command so far: nothing checked or started yet
    runtime = current(app)
    url = runtime.settings.database_url
    with dbmod.reachable(url):
        before, after = dbmod.migrate(url, runtime.db.engine)
    click.echo(
        f"bridge database at revision {after}"
        if before == after
        else f"bridge database migrated from {before or 'empty'} to {after}",
        err=True,
    )
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # an IPv6 address
    address = f"http://{bind}/"
    os.environ.pop("FLASK_RUN_FROM_CLI", None)  # from here on, a served app
    try:
        gunicorn = importlib.import_module("gunicorn")
    except ImportError:
        gunicorn = None
    if gunicorn is not None:
        runtime.db.dispose()
        workers = ["--workers", "1"] if runtime.settings.sandbox else []
        click.echo(
            f"serving {address} with gunicorn {gunicorn.__version__} and the shipped "
            f"settings{' (one worker: one simulator)' if workers else ''}; "
            "Ctrl-C or SIGTERM stops it",
            err=True,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        # gunicorn's master takes this process over: signals and the exit status are its
        os.execv(
            sys.executable,
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                GUNICORN_CONFIG,
                "--bind",
                bind,
                *workers,
                "bridge.factory:app",
            ],
        )
    click.echo(
        "gunicorn is not installed (pip install 'reteno-telegram-bridge[serve]'): "
        f"serving {address} with werkzeug's development server, one process; "
        "Ctrl-C or SIGTERM stops it",
        err=True,
    )
    _serve_with_werkzeug(app, host, port)


def _serve_with_werkzeug(app, host: str, port: int) -> None:
    from werkzeug.serving import make_server

    server = make_server(host, port, app, threaded=True)  # a port in use: werkzeug says so
    runtime = current(app)
    runtime.start(background=True)  # the schema check, the banner, the delivery thread

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt  # serve_forever ends on it and closes the socket

    signal.signal(signal.SIGTERM, interrupt)
    server.serve_forever()  # until Ctrl-C (SIGINT) or SIGTERM
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already
    if runtime.background is not None:
        runtime.background.stop()  # the upstream calls in flight are finished and recorded
    click.echo("reteno-bridge serve: stopped", err=True)
