"""Running the simulator alone: ``flask bridge sandbox`` and ``python -m bridge.sandbox``
(the same click command), port and behaviour by flags."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import click

from .simulator import AUTH_SCHEMES, FAULT_KINDS, SimulatorOptions, _redact_url
from .web import create_app

_DEFAULTS = SimulatorOptions()


def options_from(params: dict) -> SimulatorOptions:
    """Simulator options from the command's parameters (validated)."""
    options = SimulatorOptions(
        app_uuid=params["app_uuid"],
        api_key=params["api_key"],
        auth=params["auth"],
        rps=params["rps"],
        event_rps=params["event_rps"],
        latency_ms=params["latency_ms"],
        failure_rate=params["failure_rate"],
        failures=tuple(k.strip() for k in params["failures"].split(",") if k.strip()),
        timeout_seconds=params["timeout_seconds"],
        seed=params["seed"],
        webhook_url=params["webhook_url"],
        webhook_username=params["webhook_username"],
        webhook_password=params["webhook_password"],
        webhook_bearer=params["webhook_bearer"],
    )
    options.validate()
    return options


def describe(host: str, port: int, options: SimulatorOptions) -> str:
    """One line with the address and settings; secrets only as set/unset."""
    shown_host = f"[{host}]" if ":" in host else host
    webhook = "none"
    if options.webhook_url:
        auth = (
            "basic"
            if options.webhook_username
            else "bearer"
            if options.webhook_bearer
            else "no auth"
        )
        webhook = f"{_redact_url(options.webhook_url)} ({auth})"
    settings: Iterable[str] = (
        f"app_uuid={options.app_uuid or 'any'}",
        f"auth={options.auth}",
        f"api_key={'set' if options.api_key else 'any'}",
        f"rps={options.rps:g}",
        f"event_rps={options.event_rps:g}",
        f"latency_ms={options.latency_ms:g}",
        f"failure_rate={options.failure_rate:g}",
        f"failures={','.join(options.failures) or 'none'}",
        f"timeout_seconds={options.timeout_seconds:g}",
        f"seed={options.seed}",
        f"webhook={webhook}",
    )
    return f"Reteno sandbox listening on http://{shown_host}:{port}/ ({' '.join(settings)})"


@click.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=int, default=8025, show_default=True, help="Port to listen on.")
@click.option("--app-uuid", default=None, help="The only app uuid accepted (default: any).")
@click.option(
    "--api-key",
    default=None,
    envvar="SANDBOX_API_KEY",
    help="The access key required (default: any non-empty; env SANDBOX_API_KEY).",
)
@click.option(
    "--auth",
    type=click.Choice(AUTH_SCHEMES),
    default=_DEFAULTS.auth,
    show_default=True,
    help="Auth scheme.",
)
@click.option(
    "--rps",
    type=float,
    default=_DEFAULTS.rps,
    show_default=True,
    help="Requests per second to the tokens, mute and unmute calls (0: unlimited).",
)
@click.option(
    "--event-rps",
    type=float,
    default=_DEFAULTS.event_rps,
    show_default=True,
    help="Requests per second to /api/v2/event, a limit of its own (0: unlimited).",
)
@click.option(
    "--latency-ms",
    type=float,
    default=_DEFAULTS.latency_ms,
    show_default=True,
    help="Latency added to every API call.",
)
@click.option(
    "--failure-rate",
    type=float,
    default=_DEFAULTS.failure_rate,
    show_default=True,
    help="Share of tokens calls that fail (0..1).",
)
@click.option(
    "--failures",
    default=",".join(_DEFAULTS.failures),
    show_default=True,
    help=f"Comma-separated fault kinds out of {','.join(FAULT_KINDS)}.",
)
@click.option(
    "--timeout-seconds",
    type=float,
    default=_DEFAULTS.timeout_seconds,
    show_default=True,
    help="How long a 'timeout' fault waits.",
)
@click.option("--seed", type=int, default=None, help="Seed of the fault choices.")
@click.option("--webhook-url", default=None, help="Where to POST status events.")
@click.option("--webhook-username", default=None)
@click.option("--webhook-password", default=None, envvar="SANDBOX_WEBHOOK_PASSWORD")
@click.option("--webhook-bearer", default=None, envvar="SANDBOX_WEBHOOK_BEARER")
def sandbox_command(host: str, port: int, **params) -> None:
    """Run the Reteno API simulator alone (for trying, demos, load and fault tests)."""
    from werkzeug.serving import make_server

    try:
        options = options_from(params)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = make_server(host, port, create_app(options), threaded=True)
    click.echo(describe(host, server.server_port, options))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> None:
    """``python -m bridge.sandbox`` and the ``reteno-sandbox`` script."""
    sandbox_command.main(args=argv, prog_name="python -m bridge.sandbox")
