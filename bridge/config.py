"""Configuration: reads the contract's keys from ``app.config`` or the
environment, applies the platform presets and refuses bad values.

A key set in ``app.config`` wins over the environment; the environment wins
over the default. Every problem raises :class:`ConfigError` with a message
that names the key, so a misconfigured bridge stops at start-up instead of
failing later in the background.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

PLATFORMS = {
    # platform: (base URL, auth scheme)
    "reteno": ("https://reteno.com", "header"),
    "esputnik": ("https://esputnik.com", "basic"),
    "yespo": ("https://yespo.io", "basic"),
}
AUTH_SCHEMES = ("header", "basic")
# The one home of the bridge's limits and defaults.
MAX_TOKENS_PER_REQUEST = 1000  # token objects in one /register body
DEFAULT_BATCH_SIZE = 1000  # tokens in one upstream call
MAX_BATCH_SIZE = 1000
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
# Status events in one POST /statuses body; more is a 413. Reteno documents no batch
# size for its activity webhook (its bulk APIs take at most 3,000 objects a call), and
# a 4 MB body holds about 12,000 real events: this never bites on real traffic, and it
# must not, since Reteno retries anything but a 200 and holds later events meanwhile.
DEFAULT_MAX_STATUS_EVENTS = 10_000
DEFAULT_MAX_FIELD_ERRORS = 100  # field paths listed in a 422; the rest are counted
DEFAULT_CONNECT_TIMEOUT = 3.05
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_LEASE_SECONDS = 120
# Bytes of any answer of Reteno read; the rest is never read (its connection is closed):
# the classification needs the status and the start of the message, nothing more.
MAX_UPSTREAM_ANSWER_BYTES = 64 * 1024
MAX_LOG_CHARS = 2000  # characters of one log message redacted and written; the rest is cut
MAX_LOGGED_PATH_CHARS = 512  # characters of a URL path in the request log
# Request-log lines waiting for a slow log sink (about 1 KB each); more are dropped, counted
# (bridge_request_log_dropped_total) and reported in a warning line, never waited for.
MAX_QUEUED_LOG_LINES = 10_000
DEFAULT_HEALTH_CACHE_SECONDS = 5.0  # the ledger's counts in /healthz and /metrics
BACKLOG_SECONDS = 900  # /healthz says "outbox_backlog" once the oldest queued row is older
MIN_SECRET = 16  # characters of every secret: API keys, webhook password, link secrets
DEFAULT_LINK_TTL = "30d"
ON_CONFLICT = ("send", "hold")
_DURATION = re.compile(r"^(\d{1,9})([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# An application ID (Settings → My bots): it goes into URLs, so never "." or ".."
APP_ID = re.compile(r"(?!\.+$)[A-Za-z0-9_.-]{1,128}")
_SECRET_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_BOT_USERNAME = re.compile(r"^@?[A-Za-z][A-Za-z0-9_]{3,31}$")


class StartupError(RuntimeError):
    """The bridge cannot start; the message says why in one line (and names the key
    or the command that fixes it)."""


class ConfigError(StartupError):
    """A configuration value is missing or malformed; the message names the key."""


@dataclass(frozen=True)
class Settings:
    platform: str
    base_url: str
    app_uuid: str | None
    api_key: str | None = field(repr=False)
    auth: str
    database_url: str
    api_keys: tuple[str, ...] = field(repr=False)
    webhook_username: str | None = field(repr=False)
    webhook_password: str | None = field(repr=False)
    telegram_webhook_secret: str | None = field(repr=False)
    link_secrets: tuple[str, ...] = field(repr=False)  # the first signs, every one verifies
    telegram_bot_username: str | None
    batch_size: int
    background_delivery: bool
    max_body_bytes: int
    sandbox: bool
    base_url_explicit: bool
    upstream_connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    upstream_read_timeout: float = DEFAULT_READ_TIMEOUT
    # a whole call, its answer read included (a read time-out is per socket read only)
    upstream_deadline: float = DEFAULT_CONNECT_TIMEOUT + DEFAULT_READ_TIMEOUT
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    link_ttl: int = 30 * 86400  # seconds a new deep link stays valid; 0: for ever
    hold_conflicts: bool = False  # BRIDGE_ON_CONFLICT=hold
    max_status_events: int = DEFAULT_MAX_STATUS_EVENTS
    max_field_errors: int = DEFAULT_MAX_FIELD_ERRORS
    metrics_public: bool = False
    health_cache_seconds: float = DEFAULT_HEALTH_CACHE_SECONDS
    status_timezone: tzinfo = UTC  # BRIDGE_STATUS_TIMEZONE: Reteno's offset-less times

    @property
    def tokens_url(self) -> str:
        return f"{self.base_url}/api/v1/apps/{self.app_uuid}/tokens"


def _lookup(config: Mapping, environ: Mapping, key: str):
    if key in config and config[key] is not None:
        return config[key]
    value = environ.get(key)
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    return value


def _text(config, environ, key) -> str | None:
    value = _lookup(config, environ, key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {type(value).__name__}")
    value = value.strip()
    return value or None


def _bool(config, environ, key, default: bool) -> bool:
    value = _lookup(config, environ, key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _int(config, environ, key, default: int, low: int, high: int) -> int:
    value = _lookup(config, environ, key)
    if value is None:
        return default
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        number = None
    if isinstance(value, bool) or number is None or not low <= number <= high:
        raise ConfigError(f"{key} must be an integer from {low} to {high}, got {value!r}")
    return number


def _float(config, environ, key, default: float, low: float, high: float) -> float:
    value = _lookup(config, environ, key)
    if value is None:
        return default
    try:
        number = float(str(value).strip()) if not isinstance(value, int | float) else value
    except ValueError:
        number = None
    if isinstance(value, bool) or number is None or not low <= number <= high:
        raise ConfigError(f"{key} must be a number of seconds from {low:g} to {high:g}, "
                          f"got {value!r}")
    return float(number)


def parse_duration(text: str) -> int:
    """Seconds of ``90m``, ``12h``, ``30d``, ``45s`` or plain seconds (``0``: none);
    ``ValueError`` otherwise."""
    match = _DURATION.match(str(text).strip().lower())
    if not match:
        raise ValueError(f"not a duration like 90m, 12h or 30d: {text!r}")
    return int(match.group(1)) * _UNIT[match.group(2)]


def _duration(config, environ, key: str, default: str) -> int:
    value = _lookup(config, environ, key)
    try:
        return parse_duration(default if value is None else value)
    except ValueError:
        raise ConfigError(f"{key} must be a duration like 90m, 12h or 30d (0: never "
                          f"expires), got {value!r}") from None


def _zone(config, environ, key: str) -> tzinfo:
    name = _text(config, environ, key)
    if name is None or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(f"{key} must be an IANA time zone name like Europe/Kyiv or "
                          f"America/New_York, got {name!r}") from None


def _long_enough(key: str, secret: str | None) -> None:
    if secret is not None and len(secret) < MIN_SECRET:
        raise ConfigError(f"{key} must be at least {MIN_SECRET} characters long "
                          f"(it has {len(secret)})")


def loopback(hostname: str) -> bool:
    """Whether ``hostname`` (no brackets, no port) names this machine: ``localhost``,
    an address in 127.0.0.0/8, or ``::1``."""
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def checked_base_url(url: str, name: str, key_goes_in: str) -> str:
    """``url`` without a trailing slash, or a ConfigError naming ``name``: an upstream
    base URL gets our key and personal data, so it is https (plain http only to this
    machine: localhost, 127.0.0.0/8, [::1]), with a host, and with no user-info (the
    key goes in ``key_goes_in``), query or fragment (never echoed: either may hold a
    secret). ``RETENO_BASE_URL`` and ``bridge replay --base-url`` both pass here."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ConfigError(f"{name} must not carry credentials (user:password@): the key "
                          f"goes in {key_goes_in}")
    if "?" in url or "#" in url:
        raise ConfigError(f"{name} must be a URL without a query (?...) or fragment (#...)")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise ConfigError(f"{name} must be an https URL with a valid port, got {url!r}") \
            from None
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if not host or not (scheme == "https" or (scheme == "http" and loopback(host))):
        raise ConfigError(f"{name} must be an https URL (plain http only to localhost, "
                          f"127.0.0.1 or [::1]), got {url!r}")
    return url


def instance_folder(config: Mapping, environ: Mapping | None = None) -> str:
    """The bundled app's instance folder (the default SQLite ledger, the sandbox's
    development key): ``BRIDGE_INSTANCE_PATH``, else ``instance`` in the working
    directory; an absolute path. Never Flask's default for an installed package,
    which is inside the virtualenv (recreating it would wipe the ledger)."""
    environ = os.environ if environ is None else environ
    path = _text(config, environ, "BRIDGE_INSTANCE_PATH")
    return os.path.abspath(path or "instance")


def load_settings(config: Mapping, instance_path: str, environ: Mapping | None = None) -> Settings:
    """Build :class:`Settings` from a Flask config mapping and the environment."""
    environ = os.environ if environ is None else environ

    platform = (_text(config, environ, "RETENO_PLATFORM") or "reteno").lower()
    if platform not in PLATFORMS:
        raise ConfigError(
            f"RETENO_PLATFORM must be one of {', '.join(PLATFORMS)}, got {platform!r}"
        )
    preset_url, preset_auth = PLATFORMS[platform]

    base_url = _text(config, environ, "RETENO_BASE_URL")
    base_url_explicit = base_url is not None
    base_url = checked_base_url(base_url or preset_url, "RETENO_BASE_URL", "RETENO_API_KEY")

    auth = (_text(config, environ, "RETENO_AUTH") or preset_auth).lower()
    if auth not in AUTH_SCHEMES:
        raise ConfigError(f"RETENO_AUTH must be 'header' or 'basic', got {auth!r}")

    app_uuid = _text(config, environ, "RETENO_APP_UUID")
    api_key = _text(config, environ, "RETENO_API_KEY")
    if app_uuid and not APP_ID.fullmatch(app_uuid):
        raise ConfigError("RETENO_APP_UUID must be the application ID from Settings → My bots")
    sandbox = _bool(config, environ, "BRIDGE_SANDBOX", False)
    if sandbox and (app_uuid or api_key):
        given = " and ".join(k for k, v in (("RETENO_APP_UUID", app_uuid),
                                            ("RETENO_API_KEY", api_key)) if v)
        raise ConfigError(
            f"BRIDGE_SANDBOX=true and {given} are both set: sandbox mode never delivers to "
            "Reteno; unset BRIDGE_SANDBOX to deliver for real, or the credentials"
        )
    if not sandbox and not (app_uuid and api_key):
        missing = "RETENO_API_KEY" if app_uuid else "RETENO_APP_UUID"
        raise ConfigError(
            f"{missing} is not set: set RETENO_APP_UUID and RETENO_API_KEY to deliver to "
            "Reteno (or BRIDGE_SANDBOX=true for the built-in simulator, development only)"
        )

    database_url = _text(config, environ, "BRIDGE_DATABASE_URL")
    if database_url is None:
        database_url = "sqlite:///" + os.path.join(instance_path, "bridge.sqlite3")
    try:
        backend = make_url(database_url).get_backend_name()
    except ArgumentError as exc:
        raise ConfigError(f"BRIDGE_DATABASE_URL is not a SQLAlchemy URL: {exc}") from None
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"BRIDGE_DATABASE_URL: the bridge runs on SQLite or PostgreSQL, "
                          f"not {backend}")

    raw_keys = _lookup(config, environ, "BRIDGE_API_KEYS")
    if raw_keys is None:
        api_keys: tuple[str, ...] = ()
    else:
        items = raw_keys.split(",") if isinstance(raw_keys, str) else list(raw_keys)
        api_keys = tuple(str(k).strip() for k in items if str(k).strip())
        if any(len(k) < MIN_SECRET for k in api_keys):
            raise ConfigError(f"BRIDGE_API_KEYS: every key must be at least {MIN_SECRET} "
                              "characters long")
        if any("=" in k.rstrip("=") for k in api_keys):  # not echoed: it is a secret
            raise ConfigError("BRIDGE_API_KEYS: a key holds '=' before its end; werkzeug reads "
                              "such an Authorization: Bearer value as name=value parameters, "
                              "not a token, so that key could never authenticate (use letters, "
                              "digits and - . _ ~ + /; trailing '=' padding is fine)")
    if not api_keys and not sandbox:
        raise ConfigError(
            "BRIDGE_API_KEYS is not set: outside sandbox mode the bridge needs at least one "
            "key for its callers (comma-separated)"
        )

    webhook_username = _text(config, environ, "BRIDGE_WEBHOOK_USERNAME")
    webhook_password = _text(config, environ, "BRIDGE_WEBHOOK_PASSWORD")
    if bool(webhook_username) != bool(webhook_password):
        missing = "BRIDGE_WEBHOOK_PASSWORD" if webhook_username else "BRIDGE_WEBHOOK_USERNAME"
        raise ConfigError(
            f"{missing} is not set: the webhook needs both a user name and a password"
        )
    _long_enough("BRIDGE_WEBHOOK_PASSWORD", webhook_password)

    tg_secret = _text(config, environ, "TELEGRAM_WEBHOOK_SECRET")
    if tg_secret and not _SECRET_TOKEN.match(tg_secret):
        raise ConfigError("TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Z a-z 0-9 _ -")
    _long_enough("TELEGRAM_WEBHOOK_SECRET", tg_secret)

    raw_secrets = _text(config, environ, "BRIDGE_LINK_SECRET") or ""
    link_secrets = tuple(part.strip() for part in raw_secrets.split(",") if part.strip())
    for secret in link_secrets:
        _long_enough("BRIDGE_LINK_SECRET", secret)
    link_ttl = _duration(config, environ, "BRIDGE_LINK_TTL", DEFAULT_LINK_TTL)

    on_conflict = (_text(config, environ, "BRIDGE_ON_CONFLICT") or "send").lower()
    if on_conflict not in ON_CONFLICT:
        raise ConfigError(f"BRIDGE_ON_CONFLICT must be one of {', '.join(ON_CONFLICT)}, "
                          f"got {on_conflict!r}")

    bot_username = _text(config, environ, "TELEGRAM_BOT_USERNAME")
    if bot_username:
        if not _BOT_USERNAME.match(bot_username):
            raise ConfigError(f"TELEGRAM_BOT_USERNAME is not a bot @username: {bot_username!r}")
        bot_username = bot_username.lstrip("@")

    connect_timeout = _float(config, environ, "BRIDGE_UPSTREAM_CONNECT_TIMEOUT",
                             DEFAULT_CONNECT_TIMEOUT, 0.1, 120.0)
    read_timeout = _float(config, environ, "BRIDGE_UPSTREAM_READ_TIMEOUT",
                          DEFAULT_READ_TIMEOUT, 0.1, 600.0)
    # The read time-out bounds each socket read, not the call: an answer trickling a
    # byte a second would never end. The deadline bounds the whole call; connecting
    # cannot be cut short, so it is at least the connect time-out.
    deadline = _float(config, environ, "BRIDGE_UPSTREAM_DEADLINE",
                      connect_timeout + read_timeout, 0.1, 600.0)
    if deadline < connect_timeout:
        raise ConfigError(f"BRIDGE_UPSTREAM_DEADLINE ({deadline:g}) must be at least "
                          f"BRIDGE_UPSTREAM_CONNECT_TIMEOUT ({connect_timeout:g})")
    # A claim's lease must outlast an upstream call, or a second worker could take
    # the rows while the first is still sending them (a double send); the worker also
    # renews it while a call is in flight.
    shortest_lease = math.ceil(2 * deadline)
    lease_seconds = _int(config, environ, "BRIDGE_LEASE_SECONDS",
                         max(DEFAULT_LEASE_SECONDS, shortest_lease), shortest_lease, 86400)

    return Settings(
        platform=platform,
        base_url=base_url,
        app_uuid=app_uuid,
        api_key=api_key,
        auth=auth,
        database_url=database_url,
        api_keys=api_keys,
        webhook_username=webhook_username,
        webhook_password=webhook_password,
        telegram_webhook_secret=tg_secret,
        link_secrets=link_secrets,
        link_ttl=link_ttl,
        hold_conflicts=on_conflict == "hold",
        telegram_bot_username=bot_username,
        batch_size=_int(
            config, environ, "BRIDGE_BATCH_SIZE", DEFAULT_BATCH_SIZE, 1, MAX_BATCH_SIZE
        ),
        background_delivery=_bool(config, environ, "BRIDGE_BACKGROUND_DELIVERY", True),
        max_body_bytes=_int(
            config, environ, "BRIDGE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1024, 1 << 30
        ),
        sandbox=sandbox,
        base_url_explicit=base_url_explicit,
        upstream_connect_timeout=connect_timeout,
        upstream_read_timeout=read_timeout,
        upstream_deadline=deadline,
        lease_seconds=lease_seconds,
        max_status_events=_int(config, environ, "BRIDGE_MAX_STATUS_EVENTS",
                               DEFAULT_MAX_STATUS_EVENTS, 1, 10_000_000),
        max_field_errors=_int(config, environ, "BRIDGE_MAX_FIELD_ERRORS",
                              DEFAULT_MAX_FIELD_ERRORS, 1, 100_000),
        metrics_public=_bool(config, environ, "BRIDGE_METRICS_PUBLIC", False),
        health_cache_seconds=_float(config, environ, "BRIDGE_HEALTH_CACHE_SECONDS",
                                    DEFAULT_HEALTH_CACHE_SECONDS, 0.0, 300.0),
        status_timezone=_zone(config, environ, "BRIDGE_STATUS_TIMEZONE"),
    )
