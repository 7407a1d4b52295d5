"""Fixtures: a fresh app and database per test (``app``, ``client``, ``runner``).

The backend is SQLite unless ``BRIDGE_TEST_DATABASE=postgres``, in which case
one uuid-named PostgreSQL database is made for the run (on
``BRIDGE_TEST_POSTGRES_URL``, default the local server) and emptied before
every test. Every outbound HTTP call goes through ``requests_mock``; a call
nobody mocked fails. Tests marked ``real_http`` (servers over real sockets,
the in-process sandbox) opt out.
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests_mock as requests_mock_module
from sqlalchemy import create_engine, text

from bridge.db import migrate
from bridge.logs import flush_request_log

CONFIG_KEYS = [
    "RETENO_PLATFORM",
    "RETENO_BASE_URL",
    "RETENO_APP_UUID",
    "RETENO_API_KEY",
    "RETENO_AUTH",
    "BRIDGE_DATABASE_URL",
    "BRIDGE_API_KEYS",
    "BRIDGE_WEBHOOK_USERNAME",
    "BRIDGE_WEBHOOK_PASSWORD",
    "TELEGRAM_WEBHOOK_SECRET",
    "BRIDGE_LINK_SECRET",
    "TELEGRAM_BOT_USERNAME",
    "BRIDGE_BATCH_SIZE",
    "BRIDGE_IN_FLIGHT",
    "BRIDGE_BACKGROUND_DELIVERY",
    "BRIDGE_MAX_BODY_BYTES",
    "FLASK_RUN_FROM_CLI",
    "BRIDGE_SANDBOX",
    "BRIDGE_LOG_LEVEL",
    "BRIDGE_LEASE_SECONDS",
    "BRIDGE_UPSTREAM_CONNECT_TIMEOUT",
    "BRIDGE_UPSTREAM_READ_TIMEOUT",
    "BRIDGE_METRICS_PUBLIC",
    "BRIDGE_HEALTH_CACHE_SECONDS",
    "BRIDGE_MAX_STATUS_EVENTS",
    "BRIDGE_MAX_FIELD_ERRORS",
    "BRIDGE_STATUS_TIMEZONE",
    "BRIDGE_UPSTREAM_DEADLINE",
    "BRIDGE_SUPPORT_PAGE",
    "BRIDGE_SECRET_KEY",
    "BRIDGE_TRUSTED_PROXIES",
    "BRIDGE_HISTORY_RETENTION",
]

API_KEY = "test-api-key-0123456789"
RETENO_KEY = "reteno-secret-key-xyz"
APP_UUID = "0b7e3a4e-6f0e-4a57-9d7c-2a1f3b4c5d6e"
TOKENS_URL = f"https://reteno.com/api/v1/apps/{APP_UUID}/tokens"
POSTGRES_URL = os.environ.get(
    "BRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKEND = os.environ.get("BRIDGE_TEST_DATABASE", "sqlite")


def postgres_available() -> str | None:
    """None when the test PostgreSQL server answers, else why not."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install '.[postgres]')"
    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        return f"PostgreSQL is not reachable at {POSTGRES_URL.split('@')[-1]}: {type(exc).__name__}"
    finally:
        engine.dispose()
    return None


@pytest.fixture(scope="session")
def _database_template(tmp_path_factory):
    """A migrated database made once per run: a SQLite file, or a PostgreSQL database."""
    if BACKEND == "postgres":
        reason = postgres_available()
        if reason:
            pytest.exit(f"BRIDGE_TEST_DATABASE=postgres but {reason}", returncode=3)
        name = f"bridge_test_{uuid.uuid4().hex[:12]}"
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
        migrate(url)
        yield ("postgres", url)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    else:
        path = tmp_path_factory.mktemp("template") / "bridge.sqlite3"
        migrate(f"sqlite:///{path}")
        yield ("sqlite", str(path))


@pytest.fixture
def db_url(_database_template, tmp_path):
    kind, where = _database_template
    if kind == "sqlite":
        path = tmp_path / "bridge.sqlite3"
        shutil.copy(where, path)
        return f"sqlite:///{path}"
    engine = create_engine(where)
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE bridge_events, bridge_commands, bridge_registrations, bridge_links, "
                "bridge_support_users, bridge_support_logins, bridge_outgoing_events, "
                "bridge_state RESTART IDENTITY CASCADE"
            )
        )
    engine.dispose()
    return where


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch, tmp_path):
    for key in CONFIG_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("BRIDGE_INSTANCE_PATH", str(tmp_path / "instance"))


@pytest.fixture(autouse=True)
def _own_request_log_lines():
    """Request-log lines are handed to the handlers by a thread of their own: every test
    starts without another test's lines and hands its own over before it ends."""
    flush_request_log()
    yield
    flush_request_log()


@pytest.fixture(autouse=True)
def requests_mock(request):
    """Every outbound call must be mocked; ``real_http`` tests opt out."""
    if request.node.get_closest_marker("real_http"):
        yield None
        return
    with requests_mock_module.Mocker() as mocker:
        yield mocker


@pytest.fixture
def config(db_url):
    """The configuration of a bridge with (fake) Reteno credentials."""
    return {
        "TESTING": True,
        "RETENO_APP_UUID": APP_UUID,
        "RETENO_API_KEY": RETENO_KEY,
        "BRIDGE_API_KEYS": API_KEY,
        "BRIDGE_DATABASE_URL": db_url,
        "BRIDGE_BACKGROUND_DELIVERY": False,
        "BRIDGE_BATCH_SIZE": 100,
        # one call at a time: a test's scripted answers come in the order it lists them
        # (tests/test_in_flight.py keeps several in flight)
        "BRIDGE_IN_FLIGHT": 1,
        # the ledger's counts fresh on every read, so a test sees what it just did
        # (tests/test_app.py checks the cache with its default)
        "BRIDGE_HEALTH_CACHE_SECONDS": 0,
    }


@pytest.fixture
def make_app(config):
    from app import create_app

    made = []

    def factory(**overrides):
        cfg = {**config, **overrides}
        cfg = {k: v for k, v in cfg.items() if v is not None}
        instance = create_app(cfg)
        made.append(instance)
        return instance

    yield factory
    for instance in made:
        rt = instance.extensions["reteno_bridge"]
        if rt.background:
            rt.background.stop()
        rt.db.dispose()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def bridge(app):
    """The bridge runtime of ``app``."""
    return app.extensions["reteno_bridge"]


@pytest.fixture
def auth():
    return {"Authorization": f"Bearer {API_KEY}"}


class Clock:
    """A clock the ledger reads; tests move it instead of sleeping."""

    def __init__(self):
        self.now = datetime.now(UTC)

    def __call__(self):
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(bridge):
    c = Clock()
    bridge.ledger.clock = c
    return c
