"""The bridge as an application of its own: ``create_app``, and the ``reteno-bridge``
command (``serve``, and the ``bridge`` CLI group on that app, configured by the
environment).

``gunicorn -c python:bridge.gunicorn_conf bridge.factory:app`` serves it (the Procfile,
``reteno-bridge serve``); the repository's
``app.py`` is an example host built the same way. Start-up problems (a missing or bad
setting, an unreachable database, a schema behind the code) are
:class:`~bridge.config.StartupError`; :func:`app_or_exit` turns one into a single
line on stderr and exit status 1, for processes that start from the command line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import click
from flask import Flask
from flask.cli import ScriptInfo
from werkzeug.middleware.proxy_fix import ProxyFix

from . import logs
from .config import StartupError, instance_folder, trusted_proxies
from .extension import Bridge
from .http import protect_answer, register_error_handlers


def create_app(
    config: dict | None = None, import_name: str = "bridge", url_prefix: str = "/"
) -> Flask:
    """A Flask app serving the bridge at ``url_prefix``; configuration from ``config``
    and the environment; its instance folder :func:`~bridge.config.instance_folder`
    (``./instance`` of the working directory by default); behind
    ``BRIDGE_TRUSTED_PROXIES`` proxies, their ``X-Forwarded-*`` headers honoured
    (werkzeug's ``ProxyFix``). When served (not a CLI
    command) it checks the database first and raises
    :class:`~bridge.config.StartupError` if it cannot start."""
    app = Flask(import_name, instance_path=instance_folder(config or {}))
    proxies = trusted_proxies(config or {})
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)
    app.json.sort_keys = False
    if config:
        app.config.from_mapping(config)
    logs.configure(app)
    runtime = Bridge().init_app(app, url_prefix=url_prefix)
    register_error_handlers(app)  # the whole app answers 404/405 in the same JSON shape
    app.after_request(protect_answer)  # those too (a 404's path can name a person)
    runtime.start()  # when served: check the database, say where tokens go, maybe deliver
    return app


def app_or_exit(factory: Callable[[], Flask]) -> Flask:
    """``factory()``, or one line on stderr and exit status 1 if the bridge cannot start."""
    try:
        return factory()
    except StartupError as exc:
        click.echo(f"reteno-bridge: cannot start: {exc}", err=True)
        sys.exit(1)


def __getattr__(name: str):
    # ``gunicorn bridge.factory:app``: the bundled app, built on first access; a bridge
    # that cannot start says why in one line and exits 1.
    if name == "app":
        globals()["app"] = instance = app_or_exit(create_app)
        return instance
    raise AttributeError(name)


def main() -> None:
    """``reteno-bridge``: ``serve``, and the ``bridge`` CLI group on the bundled app."""
    command_group().main(prog_name="reteno-bridge")


def command_group() -> click.Group:
    """The ``reteno-bridge`` group (built without settings; the docs' CLI reference
    is generated from it)."""
    from .cli import StartupErrorsInOneLine, cli
    from .serve import serve_command

    class Bundled(StartupErrorsInOneLine, click.Group):
        """The bundled app is built only when a command runs (``with_appcontext``), so
        ``--help``, of the group or of any command, needs no settings."""

        def make_context(self, info_name, args, parent=None, **extra):
            # as under ``flask``: a command, not a served app (create_app starts nothing)
            os.environ["FLASK_RUN_FROM_CLI"] = "true"
            extra.setdefault(
                "obj",
                ScriptInfo(
                    create_app=lambda: app_or_exit(create_app),
                    set_debug_flag=False,
                    load_dotenv_defaults=False,
                ),
            )
            return super().make_context(info_name, args, parent=parent, **extra)

    group = Bundled(
        name="reteno-bridge",
        help="Reteno bridge on the bundled app, configured by the environment "
        "(docs: Configuration); its data in ./instance unless "
        "BRIDGE_INSTANCE_PATH or BRIDGE_DATABASE_URL say otherwise. "
        "`reteno-bridge serve --sandbox` tries it in one command.",
    )
    group.add_command(serve_command)
    for name, command in cli.commands.items():
        group.add_command(command, name)
    return group
