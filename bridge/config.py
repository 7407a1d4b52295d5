"""Configuration: every key in one table (:data:`KEYS`: name, reader, default,
check, help), from which the loader, its start-up errors and the configuration
reference of ``docs/`` all come; the platform presets; the bridge's limits.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from typing import Any
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
MAX_EVENTS_PER_REQUEST = 1000  # events in one POST /events body
MAX_EVENT_BYTES = 20 * 1024  # Reteno's largest event body (/api/v2/event)
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
# Upstream calls one worker keeps in flight. The events (one call each, Reteno's 350 a
# second, paced a little below it: bridge.worker.Pacer) need rate x answer time of them
# at once: 32 keep that pace with answers up to 100 ms. Batches of 1,000 tokens need
# fewer (eight answered in 100 ms are 80,000 tokens/s, far more than the ledger records).
# Starts are paced per endpoint whatever the figure: UPSTREAM_RATE a second for the
# tokens, mute and unmute calls, 350 for the events.
DEFAULT_IN_FLIGHT = 32
MAX_IN_FLIGHT = 64
UPSTREAM_RATE = 200.0
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
MIN_SESSION_SECRET = 32  # characters of BRIDGE_SECRET_KEY (it signs the support page's cookie)
DEFAULT_LINK_TTL = "30d"
MAX_LINK_TTL = 365 * 86400  # seconds: the longest a link may stay valid (0, never, aside)
# seconds: the shortest history retention (BRIDGE_HISTORY_RETENTION, bridge prune): a bare
# number is seconds, and "90" meant as days must not empty the history of its last 90 s
MIN_HISTORY_RETENTION = 86400
RETENTION_INTERVAL = 3600  # seconds: the worker prunes the history at most this often
ON_CONFLICT = ("send", "hold")
MAX_TRUSTED_PROXIES = 10  # BRIDGE_TRUSTED_PROXIES: proxies in front whose X-Forwarded-* count
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
    """The settings the bridge reads, one attribute per key of :data:`KEYS` (its
    ``field``), plus whether ``RETENO_BASE_URL`` was set rather than preset."""

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
    in_flight: int  # upstream calls one worker keeps in flight at once
    background_delivery: bool
    max_body_bytes: int
    sandbox: bool
    base_url_explicit: bool
    upstream_connect_timeout: float
    upstream_read_timeout: float
    # a whole call, its answer read included (a read time-out is per socket read only)
    upstream_deadline: float
    lease_seconds: int
    link_ttl: int  # seconds a new deep link stays valid; 0: for ever
    on_conflict: str
    max_status_events: int
    max_field_errors: int
    metrics_public: bool
    health_cache_seconds: float
    status_timezone: tzinfo  # Reteno's offset-less times are read in it
    support_page: bool = False  # the support page under /support/
    secret_key: str | None = field(default=None, repr=False)  # signs its session cookie
    history_retention: int = 0  # seconds of attempt-level history kept; 0: all of it

    @property
    def hold_conflicts(self) -> bool:
        return self.on_conflict == "hold"

    @property
    def tokens_url(self) -> str:
        return f"{self.base_url}/api/v1/apps/{self.app_uuid}/tokens"

    @property
    def events_url(self) -> str:
        """Reteno's custom events (``POST /events``: one call per event)."""
        return f"{self.base_url}/api/v2/event"


# --- readers: how a key's value is read and checked ---------------------------------
# Each takes (key, value, values read so far) and returns the setting, or raises
# ConfigError naming the key; ``kind`` says in the configuration reference what it takes.


def _reader(kind: str, text: bool = True):
    """Mark a reader: ``kind`` for the reference; ``text``: the value is read as a
    string (stripped; empty counts as unset), else it may be any ``app.config`` value."""

    def mark(function):
        function.kind, function.text = kind, text
        return function

    return mark


def text() -> Callable:
    @_reader("text")
    def read(key, value, values):
        return value

    return read


def lowered(options: tuple[str, ...], message: str) -> Callable:
    """One of ``options``, case-insensitive; ``message`` says what is expected."""

    @_reader("one of " + ", ".join(f"``{o}``" for o in options))
    def read(key, value, values):
        value = value.lower()
        if value not in options:
            raise ConfigError(f"{key} must be {message}, got {value!r}")
        return value

    return read


def matching(pattern: re.Pattern, message: str, kind: str, show: bool = False) -> Callable:
    """A text that ``pattern`` matches whole; ``show``: the refused value is quoted."""

    @_reader(kind)
    def read(key, value, values):
        if not pattern.fullmatch(value):
            raise ConfigError(f"{key} {message}" + (f": {value!r}" if show else ""))
        return value

    return read


def secret(check: Callable[[str, str, Mapping], None] | None = None) -> Callable:
    """A secret of at least MIN_SECRET characters (``check``: a rule before the length)."""

    @_reader(f"secret, {MIN_SECRET}+ characters")
    def read(key, value, values):
        if check:
            check(key, value, values)
        _long_enough(key, value)
        return value

    return read


def flag() -> Callable:
    @_reader("``true`` or ``false``", text=False)
    def read(key, value, values):
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ConfigError(f"{key} must be true or false, got {value!r}")

    return read


def integer(low: int | Callable, high: int) -> Callable:
    """An integer from ``low`` (or a function of the values read so far) to ``high``."""

    @_reader(
        f"integer, {low} to {high}" if isinstance(low, int) else f"integer, at most {high}",
        text=False,
    )
    def read(key, value, values):
        least = low(values) if callable(low) else low
        try:
            number = int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            number = None
        if isinstance(value, bool) or number is None or not least <= number <= high:
            raise ConfigError(f"{key} must be an integer from {least} to {high}, got {value!r}")
        return number

    return read


def seconds(low: float, high: float) -> Callable:
    @_reader(f"seconds, {low:g} to {high:g}", text=False)
    def read(key, value, values):
        try:
            number = float(str(value).strip()) if not isinstance(value, int | float) else value
        except ValueError:
            number = None
        if isinstance(value, bool) or number is None or not low <= number <= high:
            raise ConfigError(
                f"{key} must be a number of seconds from {low:g} to {high:g}, got {value!r}"
            )
        return float(number)

    return read


def duration(zero: str = "never expires") -> Callable:
    """A duration (:func:`parse_duration`); ``zero``: what ``0`` means, for the message."""

    @_reader("duration: ``90m``, ``12h``, ``30d``, seconds", text=False)
    def read(key, value, values):
        try:
            return parse_duration(value)
        except ValueError:
            raise ConfigError(
                f"{key} must be a duration like 90m, 12h or 30d (0: {zero}), got {value!r}"
            ) from None

    return read


def zone() -> Callable:
    @_reader("IANA time zone name")
    def read(key, value, values):
        if value.upper() == "UTC":
            return UTC
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ConfigError(
                f"{key} must be an IANA time zone name like Europe/Kyiv or "
                f"America/New_York, got {value!r}"
            ) from None

    return read


def secrets(check: Callable[[str, tuple[str, ...]], None], text: bool = True) -> Callable:
    """Comma-separated secrets, empty items dropped (``text=False``: a list is taken
    too); ``check`` sees them all."""

    @_reader(f"comma-separated secrets, {MIN_SECRET}+ characters each", text=text)
    def read(key, value, values):
        items = value.split(",") if isinstance(value, str) else list(value)
        found = tuple(str(i).strip() for i in items if str(i).strip())
        check(key, found)
        return found

    return read


def session_secret() -> Callable:
    @_reader(f"secret, {MIN_SESSION_SECRET}+ characters")
    def read(key, value, values):
        if len(value) < MIN_SESSION_SECRET:
            raise ConfigError(
                f"{key} must be at least {MIN_SESSION_SECRET} characters long (it has {len(value)})"
            )
        return value

    return read


def _long_enough(key: str, secret: str | None) -> None:
    if secret is not None and len(secret) < MIN_SECRET:
        raise ConfigError(
            f"{key} must be at least {MIN_SECRET} characters long (it has {len(secret)})"
        )


def _link_secrets(key: str, found: tuple[str, ...]) -> None:
    for one in found:
        _long_enough(key, one)


def _api_keys(key: str, found: tuple[str, ...]) -> None:
    if any(len(k) < MIN_SECRET for k in found):
        raise ConfigError(f"{key}: every key must be at least {MIN_SECRET} characters long")
    if any("=" in k.rstrip("=") for k in found):  # not echoed: it is a secret
        raise ConfigError(
            f"{key}: a key holds '=' before its end; werkzeug reads such an "
            "Authorization: Bearer value as name=value parameters, not a token, "
            "so that key could never authenticate (use letters, digits and "
            "- . _ ~ + /; trailing '=' padding is fine)"
        )


def _telegram_secret(key: str, value: str, values: Mapping) -> None:
    if not _SECRET_TOKEN.match(value):
        raise ConfigError(f"{key} must be 1-256 characters of A-Z a-z 0-9 _ -")


def base_url() -> Callable:
    @_reader("https URL")
    def read(key, value, values):
        return checked_base_url(value, key, "RETENO_API_KEY")

    return read


def database_url() -> Callable:
    @_reader("SQLAlchemy URL")
    def read(key, value, values):
        try:
            backend = make_url(value).get_backend_name()
        except ArgumentError as exc:
            raise ConfigError(f"{key} is not a SQLAlchemy URL: {exc}") from None
        if backend not in ("sqlite", "postgresql"):
            raise ConfigError(f"{key}: the bridge runs on SQLite or PostgreSQL, not {backend}")
        return value

    return read


def bot_username() -> Callable:
    @_reader("bot @username")
    def read(key, value, values):
        if not _BOT_USERNAME.match(value):
            raise ConfigError(f"{key} is not a bot @username: {value!r}")
        return value.lstrip("@")

    return read


def parse_duration(text: str) -> int:
    """Seconds of ``90m``, ``12h``, ``30d``, ``45s`` or plain seconds (``0``: none);
    ``ValueError`` otherwise."""
    match = _DURATION.match(str(text).strip().lower())
    if not match:
        raise ValueError(f"not a duration like 90m, 12h or 30d: {text!r}")
    return int(match.group(1)) * _UNIT[match.group(2)]


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
        raise ConfigError(
            f"{name} must not carry credentials (user:password@): the key goes in {key_goes_in}"
        )
    if "?" in url or "#" in url:
        raise ConfigError(f"{name} must be a URL without a query (?...) or fragment (#...)")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise ConfigError(f"{name} must be an https URL with a valid port, got {url!r}") from None
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if not host or not (scheme == "https" or (scheme == "http" and loopback(host))):
        raise ConfigError(
            f"{name} must be an https URL (plain http only to localhost, "
            f"127.0.0.1 or [::1]), got {url!r}"
        )
    return url


# --- the table: every key once ---------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One configuration key. The loader reads it, its start-up errors name it, and the
    configuration reference (``docs/``) lists it, all from this entry."""

    name: str
    read: Callable  # one of the readers above
    help: str  # the sentence of the reference (reStructuredText)
    # read like a value that was set, or a function of the values read so far; None: unset
    default: Any = None
    shown: str = ""  # the default as the reference shows it, when the value would not say it
    field: str | None = None  # the Settings attribute; None: read where the process starts
    check: Callable[[dict], None] | None = None  # a rule over this key and those before it

    def value(self, config: Mapping, environ: Mapping, values: Mapping) -> tuple[Any, bool]:
        """The key's value, and whether it was set (else it is the default)."""
        raw = _lookup(config, environ, self.name)
        if raw is not None and self.read.text:
            if not isinstance(raw, str):
                raise ConfigError(f"{self.name} must be a string, got {type(raw).__name__}")
            raw = raw.strip() or None
        given = raw is not None
        if raw is None:
            raw = self.default(values) if callable(self.default) else self.default
        return (None if raw is None else self.read(self.name, raw, values)), given

    @property
    def default_text(self) -> str:
        """The default as the reference shows it (reStructuredText)."""
        if self.shown:
            return self.shown
        if self.default is None or self.default == "":
            return "none"
        if isinstance(self.default, bool):
            return f"``{str(self.default).lower()}``"
        return f"``{self.default}``"


def _lookup(config: Mapping, environ: Mapping, key: str):
    if key in config and config[key] is not None:
        return config[key]
    value = environ.get(key)
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    return value


def _sandbox_or_reteno(values: Mapping) -> None:
    app_uuid, api_key = values["RETENO_APP_UUID"], values["RETENO_API_KEY"]
    if values["BRIDGE_SANDBOX"] and (app_uuid or api_key):
        given = " and ".join(
            k for k, v in (("RETENO_APP_UUID", app_uuid), ("RETENO_API_KEY", api_key)) if v
        )
        raise ConfigError(
            f"BRIDGE_SANDBOX=true and {given} are both set: sandbox mode never delivers to "
            "Reteno; unset BRIDGE_SANDBOX to deliver for real, or the credentials"
        )
    if not values["BRIDGE_SANDBOX"] and not (app_uuid and api_key):
        missing = "RETENO_API_KEY" if app_uuid else "RETENO_APP_UUID"
        raise ConfigError(
            f"{missing} is not set: set RETENO_APP_UUID and RETENO_API_KEY to deliver to "
            "Reteno (or BRIDGE_SANDBOX=true for the built-in simulator, development only)"
        )


def _callers_have_keys(values: Mapping) -> None:
    if not values["BRIDGE_API_KEYS"] and not values["BRIDGE_SANDBOX"]:
        raise ConfigError(
            "BRIDGE_API_KEYS is not set: outside sandbox mode the bridge needs at least one "
            "key for its callers (comma-separated)"
        )


def _webhook_pair(key: str, password: str, values: Mapping) -> None:
    if not values["BRIDGE_WEBHOOK_USERNAME"]:
        _webhook_needs_both({**values, key: password})


def _webhook_needs_both(values: Mapping) -> None:
    username, password = values["BRIDGE_WEBHOOK_USERNAME"], values["BRIDGE_WEBHOOK_PASSWORD"]
    if bool(username) != bool(password):
        missing = "BRIDGE_WEBHOOK_PASSWORD" if username else "BRIDGE_WEBHOOK_USERNAME"
        raise ConfigError(
            f"{missing} is not set: the webhook needs both a user name and a password"
        )


def _link_ttl_bounded(values: Mapping) -> None:
    if values["BRIDGE_LINK_TTL"] > MAX_LINK_TTL:
        raise ConfigError(
            f"BRIDGE_LINK_TTL must be at most {MAX_LINK_TTL // 86400}d (or 0: never expires)"
        )


def _retention_bounded(values: Mapping) -> None:
    if 0 < values["BRIDGE_HISTORY_RETENTION"] < MIN_HISTORY_RETENTION:
        raise ConfigError(
            f"BRIDGE_HISTORY_RETENTION must be at least {MIN_HISTORY_RETENTION // 86400}d "
            "(or 0: keep the whole history); a bare number is seconds"
        )


def _support_page_has_key(values: Mapping) -> None:
    if values["BRIDGE_SUPPORT_PAGE"] and not values["BRIDGE_SECRET_KEY"]:
        raise ConfigError(
            "BRIDGE_SECRET_KEY is not set: BRIDGE_SUPPORT_PAGE=true needs it to sign the "
            f"support page's session cookie ({MIN_SESSION_SECRET}+ characters)"
        )


def _deadline_covers_connect(values: Mapping) -> None:
    deadline, connect = (
        values["BRIDGE_UPSTREAM_DEADLINE"],
        values["BRIDGE_UPSTREAM_CONNECT_TIMEOUT"],
    )
    if deadline < connect:
        raise ConfigError(
            f"BRIDGE_UPSTREAM_DEADLINE ({deadline:g}) must be at least "
            f"BRIDGE_UPSTREAM_CONNECT_TIMEOUT ({connect:g})"
        )


def _shortest_lease(values: Mapping) -> int:
    # A claim's lease must outlast an upstream call, or a second worker could take the
    # rows while the first is still sending them (a double send); the worker also renews
    # it while a call is in flight.
    return math.ceil(2 * values["BRIDGE_UPSTREAM_DEADLINE"])


def _preset(index: int) -> Callable[[Mapping], str]:
    return lambda values: PLATFORMS[values["RETENO_PLATFORM"]][index]


KEYS: tuple[Key, ...] = (
    Key(
        "RETENO_PLATFORM",
        lowered(tuple(PLATFORMS), "one of " + ", ".join(PLATFORMS)),
        "Preset for the base URL and the auth scheme.",
        default="reteno",
        field="platform",
    ),
    Key(
        "RETENO_BASE_URL",
        base_url(),
        "Where ``/api/v1/apps/{app_uuid}/tokens`` lives: https (plain http only to "
        "``localhost``, ``127.0.0.0/8``, ``[::1]``), no user-info, query or fragment (as "
        "``bridge replay --base-url``).",
        default=_preset(0),
        shown=", ".join(f"``{url}``" for url, _ in PLATFORMS.values()) + " by platform",
        field="base_url",
    ),
    Key(
        "RETENO_AUTH",
        lowered(AUTH_SCHEMES, "'header' or 'basic'"),
        "``header``: ``X-Reteno-Access-Key: <key>``; ``basic``: HTTP Basic, user "
        "``bridge``, the key as password.",
        default=_preset(1),
        shown="``header`` for reteno, ``basic`` for esputnik and yespo",
        field="auth",
    ),
    Key(
        "RETENO_APP_UUID",
        matching(APP_ID, "must be the application ID from Settings → My bots", "application ID"),
        "The bot's application ID (Reteno: Settings → My bots).",
        field="app_uuid",
    ),
    Key("RETENO_API_KEY", text(), "The Reteno API key.", field="api_key"),
    Key(
        "BRIDGE_SANDBOX",
        flag(),
        "``true``: deliver to the built-in Reteno simulator (development only; ``make run`` "
        "sets it). Refused together with Reteno credentials; without it, both "
        "``RETENO_APP_UUID`` and ``RETENO_API_KEY`` are needed.",
        default=False,
        field="sandbox",
        check=_sandbox_or_reteno,
    ),
    Key(
        "BRIDGE_DATABASE_URL",
        database_url(),
        "A SQLAlchemy URL of SQLite or PostgreSQL, e.g. "
        "``postgresql+psycopg://user@host/db`` (the two databases the suite runs on; "
        "others are refused at start-up).",
        default=lambda values: (
            "sqlite:///" + os.path.join(values["BRIDGE_INSTANCE_PATH"], "bridge.sqlite3")
        ),
        shown="``sqlite:///<instance folder>/bridge.sqlite3``",
        field="database_url",
    ),
    Key(
        "BRIDGE_API_KEYS",
        secrets(_api_keys, text=False),
        "The callers' keys, sent as ``Authorization: Bearer <key>``; no ``=`` but trailing "
        "padding (werkzeug would read ``Bearer <key>`` as parameters). Needed outside "
        "sandbox mode.",
        default="",
        field="api_keys",
        check=_callers_have_keys,
    ),
    Key(
        "BRIDGE_WEBHOOK_USERNAME",
        text(),
        "The HTTP Basic user name Reteno's status webhook is configured with.",
        field="webhook_username",
    ),
    Key(
        "BRIDGE_WEBHOOK_PASSWORD",
        secret(_webhook_pair),
        "Its password; the two go together.",
        field="webhook_password",
        check=_webhook_needs_both,
    ),
    Key(
        "TELEGRAM_WEBHOOK_SECRET",
        secret(_telegram_secret),
        "The ``secret_token`` given to Telegram's setWebhook (A-Z a-z 0-9 _ -, at most 256); "
        "while unset, ``/telegram/webhook`` takes only a bearer key (a bot forwarding its "
        "updates).",
        field="telegram_webhook_secret",
    ),
    Key(
        "BRIDGE_LINK_SECRET",
        secrets(_link_secrets),
        "Keys that verify the signed ``/start`` payloads of the links made before links "
        "became opaque (they keep working until they expire); no new link is signed.",
        default="",
        field="link_secrets",
    ),
    Key(
        "BRIDGE_LINK_TTL",
        duration(),
        "How long a new link stays valid (``0``: never expires; at most ``365d``), unless "
        "``POST /links`` or ``bridge link --ttl`` says otherwise.",
        default=DEFAULT_LINK_TTL,
        field="link_ttl",
        check=_link_ttl_bounded,
    ),
    Key(
        "BRIDGE_HISTORY_RETENTION",
        duration("keep"),
        "Age after which the delivery worker prunes attempt-level history (retries, "
        "pauses, calls not sent or superseded, ignored updates), at most once an hour, as "
        "``bridge prune`` does; each registration's audit trail is kept (``0``: keep "
        "everything; else at least ``1d``).",
        default=0,
        shown="``0`` (keep)",
        field="history_retention",
        check=_retention_bounded,
    ),
    Key(
        "BRIDGE_ON_CONFLICT",
        lowered(ON_CONFLICT, "one of " + ", ".join(ON_CONFLICT)),
        "A token submitted under a second identity: ``send`` (Reteno's own behaviour, "
        "flagged) or ``hold`` (kept back for review).",
        default="send",
        field="on_conflict",
    ),
    Key(
        "TELEGRAM_BOT_USERNAME",
        bot_username(),
        "The bot's @username, for ``https://t.me/<username>?start=…`` links.",
        field="telegram_bot_username",
    ),
    Key(
        "BRIDGE_UPSTREAM_CONNECT_TIMEOUT",
        seconds(0.1, 120.0),
        "Seconds to connect to Reteno.",
        default=DEFAULT_CONNECT_TIMEOUT,
        field="upstream_connect_timeout",
    ),
    Key(
        "BRIDGE_UPSTREAM_READ_TIMEOUT",
        seconds(0.1, 600.0),
        "Seconds to wait for each read of Reteno's answer.",
        default=DEFAULT_READ_TIMEOUT,
        field="upstream_read_timeout",
    ),
    # The read time-out bounds each socket read, not the call: an answer trickling a byte
    # a second would never end. The deadline bounds the whole call; connecting cannot be
    # cut short, so it is at least the connect time-out.
    Key(
        "BRIDGE_UPSTREAM_DEADLINE",
        seconds(0.1, 600.0),
        "Seconds one call to Reteno may last, its answer read included (a slow trickle "
        "ends there and is retried like a time-out); at least the connect time-out. At "
        f"most {MAX_UPSTREAM_ANSWER_BYTES // 1024} KB of any answer is read.",
        default=lambda values: (
            values["BRIDGE_UPSTREAM_CONNECT_TIMEOUT"] + values["BRIDGE_UPSTREAM_READ_TIMEOUT"]
        ),
        shown=f"the two time-outs added (``{DEFAULT_CONNECT_TIMEOUT + DEFAULT_READ_TIMEOUT:g}``)",
        field="upstream_deadline",
        check=_deadline_covers_connect,
    ),
    Key(
        "BRIDGE_LEASE_SECONDS",
        integer(_shortest_lease, 86400),
        "How long a worker holds claimed rows before another may take them; at least twice "
        "the deadline, and renewed every third of it while their call is in flight.",
        default=lambda values: max(DEFAULT_LEASE_SECONDS, _shortest_lease(values)),
        shown=f"``{DEFAULT_LEASE_SECONDS}`` (at least twice the deadline)",
        field="lease_seconds",
    ),
    Key(
        "BRIDGE_BATCH_SIZE",
        integer(1, MAX_BATCH_SIZE),
        "Most tokens in one upstream call.",
        default=DEFAULT_BATCH_SIZE,
        field="batch_size",
    ),
    Key(
        "BRIDGE_IN_FLIGHT",
        integer(1, MAX_IN_FLIGHT),
        "Upstream calls one worker (each ``bridge deliver``, each served process's delivery "
        "thread, a replay) keeps in flight at once, each batch of tokens under its own "
        "lease; custom events are claimed this many at a time under one lease, one call "
        "each. The default keeps the events' pace with answers up to 100 ms; "
        f"starts never exceed {UPSTREAM_RATE:g} a second for tokens, mutes and unmutes, "
        "350 for events (Reteno's limits). ``1``: one call at a time.",
        default=DEFAULT_IN_FLIGHT,
        field="in_flight",
    ),
    Key(
        "BRIDGE_BACKGROUND_DELIVERY",
        flag(),
        "The served app delivers in a background thread; ``false`` when separate "
        "``bridge deliver`` workers do it.",
        default=True,
        field="background_delivery",
    ),
    Key(
        "BRIDGE_MAX_BODY_BYTES",
        integer(1024, 1 << 30),
        "Request bodies above this get 413.",
        default=DEFAULT_MAX_BODY_BYTES,
        field="max_body_bytes",
    ),
    Key(
        "BRIDGE_MAX_STATUS_EVENTS",
        integer(1, 10_000_000),
        "Most events in one ``POST /statuses`` body; more is a 413 (far above what Reteno "
        "sends in one call).",
        default=DEFAULT_MAX_STATUS_EVENTS,
        field="max_status_events",
    ),
    Key(
        "BRIDGE_MAX_FIELD_ERRORS",
        integer(1, 100_000),
        "Most field paths listed in a 422's ``errors``; the number of the others is under "
        "``_more``.",
        default=DEFAULT_MAX_FIELD_ERRORS,
        field="max_field_errors",
    ),
    Key(
        "BRIDGE_METRICS_PUBLIC",
        flag(),
        "``true``: ``/metrics`` answers without a bearer key (for a scraper on a private network).",
        default=False,
        field="metrics_public",
    ),
    Key(
        "BRIDGE_HEALTH_CACHE_SECONDS",
        seconds(0.0, 300.0),
        "The ledger's table-wide counts in ``/healthz`` and ``/metrics`` are made at most "
        "this often (``0``: on every call).",
        default=DEFAULT_HEALTH_CACHE_SECONDS,
        field="health_cache_seconds",
    ),
    Key(
        "BRIDGE_STATUS_TIMEZONE",
        zone(),
        "The zone (``Europe/Kyiv``) in which Reteno's offset-less times "
        "(``activityDateTime``) are read: your Reteno account's zone; an unknown zone "
        "stops start-up.",
        default="UTC",
        field="status_timezone",
    ),
    Key(
        "BRIDGE_SUPPORT_PAGE",
        flag(),
        "``true``: serve the support page under ``/support/`` of the bridge's mount "
        "(read-only, for support staff with ``bridge support-user`` accounts; needs "
        "``BRIDGE_SECRET_KEY``).",
        default=False,
        field="support_page",
    ),
    Key(
        "BRIDGE_SECRET_KEY",
        session_secret(),
        "Signs the support page's session cookie; changing it logs every staff user out.",
        field="secret_key",
        check=_support_page_has_key,
    ),
    # Read where the process starts, not into Settings (an app that mounts the bridge
    # has its own instance folder, logging and server).
    Key(
        "BRIDGE_INSTANCE_PATH",
        text(),
        "The folder of the default SQLite file and the sandbox's development key, for the "
        "bundled app (``reteno-bridge``, ``bridge.factory``) and ``app.py``; an app of your "
        "own that mounts the bridge uses its Flask instance folder.",
        default="instance",
        shown="``./instance`` of the working directory",
    ),
    Key("BRIDGE_LOG_LEVEL", text(), "Log level of the bundled app and ``app.py``.", default="INFO"),
    Key(
        "BRIDGE_TRUSTED_PROXIES",
        integer(0, MAX_TRUSTED_PROXIES),
        "How many proxies in front (nginx: ``deploy/nginx``) set ``X-Forwarded-For``, "
        "``-Proto`` and ``-Host``, for the bundled app and ``app.py`` (werkzeug's "
        "``ProxyFix``): the client's address, the scheme (the support page's cookie is "
        "``Secure`` behind TLS) and the host are then theirs. ``0``: the headers are "
        "ignored (anyone could forge them). An app of your own that mounts the bridge "
        "wraps its ``wsgi_app`` itself (*Operating*).",
        default=0,
    ),
    Key(
        "HOST",
        text(),
        "Where ``make run``, ``make serve`` and the shipped gunicorn settings listen.",
        default="127.0.0.1",
    ),
    Key("PORT", integer(1, 65535), "Their port.", default=5000),
    Key(
        "WEB_CONCURRENCY",
        integer(1, 1000),
        "gunicorn's worker processes (shipped settings).",
        default=2,
    ),
)
KEY = {key.name: key for key in KEYS}


def process_setting(name: str, environ: Mapping | None = None) -> Any:
    """A key read where the process starts (``field`` None): the environment or the
    default."""
    environ = os.environ if environ is None else environ
    return KEY[name].value({}, environ, {})[0]


def instance_folder(config: Mapping, environ: Mapping | None = None) -> str:
    """The bundled app's instance folder (the default SQLite ledger, the sandbox's
    development key): ``BRIDGE_INSTANCE_PATH``, else ``instance`` in the working
    directory; an absolute path. Never Flask's default for an installed package,
    which is inside the virtualenv (recreating it would wipe the ledger)."""
    environ = os.environ if environ is None else environ
    return os.path.abspath(KEY["BRIDGE_INSTANCE_PATH"].value(config, environ, {})[0])


def trusted_proxies(config: Mapping, environ: Mapping | None = None) -> int:
    """``BRIDGE_TRUSTED_PROXIES`` of the bundled app: ``app.config``, else the environment,
    else 0."""
    environ = os.environ if environ is None else environ
    return KEY["BRIDGE_TRUSTED_PROXIES"].value(config, environ, {})[0]


def load_settings(config: Mapping, instance_path: str, environ: Mapping | None = None) -> Settings:
    """Build :class:`Settings` from a Flask config mapping and the environment, key by
    key in the table's order (a key's default or check may use the keys before it)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {"BRIDGE_INSTANCE_PATH": instance_path}
    given: set[str] = set()
    for key in KEYS:
        if key.field is None:
            continue
        values[key.name], was_given = key.value(config, environ, values)
        if was_given:
            given.add(key.name)
        if key.check:
            key.check(values)
    return Settings(
        **{key.field: values[key.name] for key in KEYS if key.field},
        base_url_explicit="RETENO_BASE_URL" in given,
    )
