"""The built-in Reteno simulator ("sandbox"), for trying, demos, load and fault tests.

It imitates ``POST /api/v1/apps/{app_uuid}/tokens`` and ``…/token/mute`` and
``…/token/unmute`` (Reteno's validation, error bodies, auth schemes, contact
matching and rate limit), injects latency and faults, and can "block" a token,
sending the FAILED (Forbidden) status back to the bridge. Modules:
:mod:`.simulator` (the in-memory Reteno), :mod:`.web` (its routes and page),
:mod:`.transport` (an in-process ``requests`` adapter), :mod:`.links` (the page's
links section, a sandbox bridge's only), :mod:`.cli` (``flask bridge sandbox``,
``python -m bridge.sandbox``).

The bridge knows it through one setting: with ``BRIDGE_SANDBOX=true``,
:func:`attach` mounts it under ``<prefix>/sandbox/reteno`` and points the
Reteno client at it. Nothing in the bridge's production modules imports it
otherwise.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import secrets
import stat

from ..config import MIN_SECRET
from ..logs import get_logger
from .links import links_panel
from .simulator import (
    DROP_CONNECTION,
    DROP_FALLBACK_HEADER,
    FAULT_KINDS,
    Simulator,
    SimulatorOptions,
)
from .transport import WSGITransport, post_in_process
from .web import create_app, create_blueprint

__all__ = [
    "DROP_CONNECTION",
    "DROP_FALLBACK_HEADER",
    "FAULT_KINDS",
    "Simulator",
    "SimulatorOptions",
    "WSGITransport",
    "attach",
    "create_app",
    "create_blueprint",
    "settings_for",
]

log = get_logger("bridge.sandbox")

APP_UUID = "sandbox-app"
API_KEY = "sandbox-reteno-key"
HOST = "http://reteno-sandbox.local"  # the simulator in this process (never a socket)


def settings_for(settings):
    """The settings a sandbox bridge runs with: the simulator's app id and key, and the
    simulator in this process unless ``RETENO_BASE_URL`` names one elsewhere."""
    return dataclasses.replace(
        settings,
        app_uuid=APP_UUID,
        api_key=API_KEY,
        base_url=settings.base_url if settings.base_url_explicit else HOST,
    )


def dev_key_path(instance_path: str) -> str:
    return os.path.join(instance_path, "dev-api-key")


def _kept_key(path: str) -> tuple[str | None, str | None]:
    """``(key, None)`` from the key file at ``path``, or ``(None, why it will not do)``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None, None
    except OSError:  # a symbolic link (ELOOP), or unreadable
        return None, "is not a regular file the bridge can read"
    with os.fdopen(fd, "rb") as fh:
        status = os.fstat(fh.fileno())
        if not stat.S_ISREG(status.st_mode):
            return None, "is not a regular file the bridge can read"
        if stat.S_IMODE(status.st_mode) != 0o600:
            return None, f"had mode {stat.S_IMODE(status.st_mode):04o}, readable by others"
        key = fh.read().decode("utf-8", "replace").strip()
    if len(key) < MIN_SECRET:
        return None, f"held a key under {MIN_SECRET} characters"
    return key, None


def dev_api_key(path: str) -> str:
    """The development API key kept in the file ``path`` (in the instance folder), so
    every process shares it; made on first use, and made anew (with a log line, never
    the key) when the file's key is short or others may read it (mode not 0600)."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    # Several processes may start at once: one at a time reads and replaces (a lock on
    # the folder), so they all end with the key in the file.
    lock = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        key, problem = _kept_key(path)
        if key is not None:
            return key
        key = "dev-" + secrets.token_urlsafe(24)
        tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)  # whatever the umask
            fh.write(key + "\n")
        os.replace(tmp, path)
        if problem:
            log.warning(
                "sandbox: the development API key file %s %s: replaced it with a "
                "new key, mode 0600",
                path,
                problem,
            )
        return key
    finally:
        os.close(lock)  # and the lock with it


def attach(app, runtime) -> Simulator:
    """Mount a simulator in ``app`` for ``runtime`` (a sandbox bridge); no I/O."""
    prefix = runtime.url_prefix.rstrip("/")

    def report(events: list[dict]) -> None:
        """The simulator reports statuses to the bridge's own /statuses, as Reteno would."""
        response = post_in_process(app.wsgi_app, f"{prefix}/statuses", events, runtime.api_keys[0])
        if response.status_code != 200:
            log.error("sandbox status report refused: HTTP %s", response.status_code)

    simulator = Simulator(
        SimulatorOptions(app_uuid=APP_UUID, api_key=API_KEY, auth=runtime.settings.auth),
        status_sink=report,
    )
    if not runtime.settings.base_url_explicit:
        # reached through this transport only, never a socket: its Host is HOST's
        runtime.client.session.mount(
            HOST, WSGITransport(create_app(simulator=simulator, loopback_only=False))
        )
    if not runtime.settings.api_keys:
        runtime.dev_key_path = dev_key_path(app.instance_path)
    app.register_blueprint(
        create_blueprint(simulator, links=links_panel(app, runtime)),
        url_prefix=f"{prefix}/sandbox/reteno",
    )
    runtime.simulator = simulator
    return simulator
