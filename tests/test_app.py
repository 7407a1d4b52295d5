"""Start-up: configuration, sandbox mode, migrations, /healthz."""

from __future__ import annotations

import json
import logging
import stat
from datetime import UTC, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from bridge.config import ConfigError
from bridge.db import VERSION_TABLE, SchemaBehind, migrate
from bridge.models import Base
from tests.conftest import TOKENS_URL
from tests.helpers import assert_error_shape


def test_models_match_the_migrations(db_url):
    engine = create_engine(db_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
        )
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"


def test_migrate_command_is_safe_to_run_again(make_app, tmp_path, monkeypatch):
    # As under `flask --app app bridge migrate`: a CLI process does not check the schema.
    monkeypatch.setenv("FLASK_RUN_FROM_CLI", "true")
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    runner = make_app(BRIDGE_DATABASE_URL=url).test_cli_runner()
    first = runner.invoke(args=["bridge", "migrate"])
    assert first.exit_code == 0, first.output
    assert "migrated from empty to" in first.output
    again = runner.invoke(args=["bridge", "migrate"])
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_served_app_refuses_a_database_that_is_behind(make_app, tmp_path):
    with pytest.raises(SchemaBehind, match="bridge migrate"):
        make_app(BRIDGE_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    migrate(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    make_app(BRIDGE_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.sqlite3'}")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"RETENO_PLATFORM": "mailchimp"}, "RETENO_PLATFORM"),
        ({"RETENO_AUTH": "oauth"}, "RETENO_AUTH"),
        ({"RETENO_BASE_URL": "ftp://reteno.com"}, "RETENO_BASE_URL"),
        ({"RETENO_BASE_URL": "https://bridge:s3cret-pass@reteno.com"}, "RETENO_BASE_URL"),
        # https unless this machine; no query, fragment or user-info
        ({"RETENO_BASE_URL": "http://reteno.com"}, "RETENO_BASE_URL"),
        ({"RETENO_BASE_URL": "http://127.0.0.1.nip.io:8025"}, "RETENO_BASE_URL"),
        ({"RETENO_BASE_URL": "https://reteno.com/?x=1"}, "RETENO_BASE_URL"),
        ({"RETENO_BASE_URL": "https://reteno.com?"}, "RETENO_BASE_URL"),
        ({"RETENO_BASE_URL": "https://reteno.com#top"}, "RETENO_BASE_URL"),
        ({"RETENO_BASE_URL": "https://reteno.com:port"}, "RETENO_BASE_URL"),
        ({"RETENO_BASE_URL": "https://"}, "RETENO_BASE_URL"),
        ({"RETENO_APP_UUID": ".."}, "RETENO_APP_UUID"),
        ({"RETENO_API_KEY": None}, "RETENO_API_KEY"),
        ({"RETENO_APP_UUID": None}, "RETENO_APP_UUID"),
        ({"BRIDGE_API_KEYS": None}, "BRIDGE_API_KEYS"),
        ({"BRIDGE_API_KEYS": "short"}, "BRIDGE_API_KEYS"),
        ({"BRIDGE_API_KEYS": "key-with-an=inside-0123"}, "BRIDGE_API_KEYS"),
        ({"BRIDGE_BATCH_SIZE": "lots"}, "BRIDGE_BATCH_SIZE"),
        ({"BRIDGE_BATCH_SIZE": 0}, "BRIDGE_BATCH_SIZE"),
        ({"BRIDGE_BATCH_SIZE": 1001}, "BRIDGE_BATCH_SIZE"),
        ({"BRIDGE_BACKGROUND_DELIVERY": "maybe"}, "BRIDGE_BACKGROUND_DELIVERY"),
        ({"BRIDGE_DATABASE_URL": "not a url"}, "BRIDGE_DATABASE_URL"),
        ({"BRIDGE_DATABASE_URL": "mysql+pymysql://root@127.0.0.1/test"}, "BRIDGE_DATABASE_URL"),
        ({"BRIDGE_WEBHOOK_USERNAME": "reteno"}, "BRIDGE_WEBHOOK_PASSWORD"),
        ({"TELEGRAM_WEBHOOK_SECRET": "has spaces in it"}, "TELEGRAM_WEBHOOK_SECRET"),
        ({"TELEGRAM_BOT_USERNAME": "no!"}, "TELEGRAM_BOT_USERNAME"),
        ({"BRIDGE_METRICS_PUBLIC": "maybe"}, "BRIDGE_METRICS_PUBLIC"),
        ({"BRIDGE_HEALTH_CACHE_SECONDS": -1}, "BRIDGE_HEALTH_CACHE_SECONDS"),
        ({"BRIDGE_MAX_STATUS_EVENTS": 0}, "BRIDGE_MAX_STATUS_EVENTS"),
        ({"BRIDGE_MAX_FIELD_ERRORS": "lots"}, "BRIDGE_MAX_FIELD_ERRORS"),
        # sandbox mode is opt-in, and never mixed with real credentials
        ({"BRIDGE_SANDBOX": True}, "BRIDGE_SANDBOX"),
        ({"BRIDGE_SANDBOX": "perhaps"}, "BRIDGE_SANDBOX"),
        ({"RETENO_APP_UUID": None, "RETENO_API_KEY": None}, "RETENO_APP_UUID"),
        # every secret has at least 16 characters
        ({"TELEGRAM_WEBHOOK_SECRET": "x"}, "TELEGRAM_WEBHOOK_SECRET"),
        (
            {"BRIDGE_WEBHOOK_USERNAME": "reteno", "BRIDGE_WEBHOOK_PASSWORD": "p"},
            "BRIDGE_WEBHOOK_PASSWORD",
        ),
        ({"BRIDGE_LINK_SECRET": "fifteen-chars-x"}, "BRIDGE_LINK_SECRET"),
        ({"BRIDGE_LINK_SECRET": "a-long-enough-secret,short"}, "BRIDGE_LINK_SECRET"),
        ({"BRIDGE_LINK_TTL": "soon"}, "BRIDGE_LINK_TTL"),
        ({"BRIDGE_LINK_TTL": "366d"}, "BRIDGE_LINK_TTL must be at most 365d"),
        ({"BRIDGE_STATUS_TIMEZONE": "Mars/Olympus_Mons"}, "BRIDGE_STATUS_TIMEZONE"),
        ({"BRIDGE_STATUS_TIMEZONE": "+03:00"}, "BRIDGE_STATUS_TIMEZONE"),
        ({"BRIDGE_STATUS_TIMEZONE": "../../etc/passwd"}, "BRIDGE_STATUS_TIMEZONE"),
        ({"BRIDGE_STATUS_TIMEZONE": "zone.tab"}, "BRIDGE_STATUS_TIMEZONE"),
    ],
)
def test_bad_configuration_stops_start_up_naming_the_key(make_app, overrides, key):
    with pytest.raises(ConfigError, match=key):
        make_app(**overrides)


@pytest.mark.parametrize(
    "keys",
    [
        "good-key-0123456789,key=with-equals-0123",
        "=leading-equals-0123456789",
        "a==b-0123456789abcdef",
    ],
)
def test_a_key_with_an_inner_equals_sign_is_refused_saying_why(make_app, keys):
    with pytest.raises(ConfigError) as refused:
        make_app(BRIDGE_API_KEYS=keys)
    message = str(refused.value)
    assert message.startswith("BRIDGE_API_KEYS: a key holds '=' before its end")
    assert "name=value parameters" in message and "could never authenticate" in message
    for key in keys.split(","):
        assert key not in message


def test_a_key_ending_in_base64_padding_authenticates(make_app):
    padded = "cGFkZGVkLWtleS0wMTIzNDU2Nzg5=="
    client = make_app(BRIDGE_API_KEYS=padded).test_client()
    assert client.get("/tokens", headers={"Authorization": f"Bearer {padded}"}).status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8025",
        "http://localhost:8025/",
        "HTTP://LOCALHOST",
        "http://127.0.0.2",
        "http://[::1]:8025",
        "https://api.yespo.io/",
    ],
)
def test_plain_http_reaches_only_this_machine(make_app, url):
    settings = make_app(RETENO_BASE_URL=url).extensions["reteno_bridge"].settings
    assert settings.base_url == url.rstrip("/")


def test_a_base_url_with_a_query_is_refused_without_echoing_it(make_app):
    with pytest.raises(ConfigError) as refused:
        make_app(RETENO_BASE_URL="https://reteno.com/?key=reteno-secret-in-a-url")
    assert str(refused.value) == (
        "RETENO_BASE_URL must be a URL without a query (?...) or fragment (#...)"
    )


def test_environment_configures_the_bridge(make_app, monkeypatch, requests_mock):
    monkeypatch.setenv("RETENO_PLATFORM", "yespo")
    monkeypatch.setenv("BRIDGE_BATCH_SIZE", "250")
    app = make_app(BRIDGE_BATCH_SIZE=None)
    settings = app.extensions["reteno_bridge"].settings
    assert settings.base_url == "https://yespo.io"
    assert settings.auth == "basic"
    assert settings.batch_size == 250


def test_the_status_timezone_is_an_iana_zone_from_either_place(make_app, monkeypatch):
    assert make_app().extensions["reteno_bridge"].settings.status_timezone == UTC
    monkeypatch.setenv("BRIDGE_STATUS_TIMEZONE", "Europe/Kyiv")
    assert make_app().extensions["reteno_bridge"].settings.status_timezone == ZoneInfo(
        "Europe/Kyiv"
    )
    app = make_app(BRIDGE_STATUS_TIMEZONE="America/New_York")
    assert app.extensions["reteno_bridge"].settings.status_timezone == ZoneInfo("America/New_York")


def test_app_config_wins_over_the_environment(make_app, monkeypatch):
    monkeypatch.setenv("BRIDGE_BATCH_SIZE", "250")
    app = make_app(BRIDGE_BATCH_SIZE=7)
    assert app.extensions["reteno_bridge"].settings.batch_size == 7


@pytest.mark.real_http
def test_sandbox_mode_is_loud_and_makes_a_development_key(make_app, capsys):
    app = make_app(
        RETENO_APP_UUID=None, RETENO_API_KEY=None, BRIDGE_SANDBOX=True, BRIDGE_API_KEYS=None
    )
    err = capsys.readouterr().err
    assert "SANDBOX MODE" in err
    key = app.extensions["reteno_bridge"].api_keys[0]
    # The banner says where the key is, never the key itself (consoles end up in logs).
    assert key not in err
    key_file = Path(app.instance_path) / "dev-api-key"
    assert str(key_file) in err
    assert key_file.read_text().strip() == key
    client = app.test_client()
    health = client.get("/healthz").json
    assert health["sandbox"] is True
    assert "SANDBOX" in health["warning"]
    response = client.post(
        "/register",
        json={"token": 1, "email": "a@b.co"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 202
    # the key is kept in the instance folder: every process and restart shares it
    again = make_app(
        RETENO_APP_UUID=None, RETENO_API_KEY=None, BRIDGE_SANDBOX=True, BRIDGE_API_KEYS=None
    )
    assert again.extensions["reteno_bridge"].api_keys[0] == key


@pytest.mark.real_http
@pytest.mark.parametrize(
    ("content", "mode", "why"),
    [
        ("dev-a-long-enough-key-0123456789", 0o644, "had mode 0644, readable by others"),
        ("dev-a-long-enough-key-0123456789", 0o640, "had mode 0640, readable by others"),
        ("short-key", 0o600, "held a key under 16 characters"),
        ("", 0o600, "held a key under 16 characters"),
    ],
)
def test_a_weak_development_key_file_is_replaced(make_app, caplog, content, mode, why):
    instance = Path(make_app().instance_path)
    instance.mkdir(parents=True, exist_ok=True)
    key_file = instance / "dev-api-key"
    key_file.write_text(content + "\n")
    key_file.chmod(mode)
    caplog.set_level(logging.WARNING, logger="bridge.sandbox")
    app = make_app(
        RETENO_APP_UUID=None, RETENO_API_KEY=None, BRIDGE_SANDBOX=True, BRIDGE_API_KEYS=None
    )
    key = app.extensions["reteno_bridge"].api_keys[0]
    assert key != content and len(key) >= 16
    assert key_file.read_text().strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert f"{key_file} {why}: replaced it with a new key, mode 0600" in caplog.text
    assert key not in caplog.text and (not content or content not in caplog.text)
    client = app.test_client()
    assert client.get("/tokens", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/tokens", headers={"Authorization": f"Bearer {content}"}).status_code == 401


@pytest.mark.real_http
def test_a_development_key_file_behind_a_symbolic_link_is_replaced(make_app, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("dev-a-long-enough-key-0123456789\n")
    elsewhere.chmod(0o600)
    instance = Path(make_app().instance_path)
    instance.mkdir(parents=True, exist_ok=True)
    key_file = instance / "dev-api-key"
    key_file.symlink_to(elsewhere)
    app = make_app(
        RETENO_APP_UUID=None, RETENO_API_KEY=None, BRIDGE_SANDBOX=True, BRIDGE_API_KEYS=None
    )
    key = app.extensions["reteno_bridge"].api_keys[0]
    assert not key_file.is_symlink() and key_file.read_text().strip() == key
    assert elsewhere.read_text() == "dev-a-long-enough-key-0123456789\n"  # left alone


def test_the_instance_folder_is_in_the_working_directory_or_where_the_user_says(
    make_app, monkeypatch, tmp_path
):
    # Flask's own default for an installed package is inside the virtualenv
    # (<venv>/var/bridge-instance): recreating the virtualenv would wipe the ledger.
    sandbox = {
        "RETENO_APP_UUID": None,
        "RETENO_API_KEY": None,
        "BRIDGE_SANDBOX": True,
        "BRIDGE_API_KEYS": None,
        "BRIDGE_DATABASE_URL": None,
    }
    monkeypatch.delenv("BRIDGE_INSTANCE_PATH")
    monkeypatch.setenv("FLASK_RUN_FROM_CLI", "true")  # built for a command: no database yet
    monkeypatch.chdir(tmp_path)
    for where, instance in (
        (None, tmp_path / "instance"),
        ("data", tmp_path / "data"),
        (str(tmp_path / "abs"), tmp_path / "abs"),
    ):
        if where is not None:
            monkeypatch.setenv("BRIDGE_INSTANCE_PATH", where)
        runtime = make_app(**sandbox).extensions["reteno_bridge"]
        assert runtime.app.instance_path == str(instance)
        assert runtime.settings.database_url == f"sqlite:///{instance / 'bridge.sqlite3'}"
        assert runtime.dev_key_path == str(instance / "dev-api-key")


def test_a_sound_development_key_file_is_kept(tmp_path):
    from bridge.sandbox import dev_api_key

    key_file = tmp_path / "dev-api-key"
    key_file.write_text("dev-a-long-enough-key-0123456789\n")
    key_file.chmod(0o600)
    assert dev_api_key(str(key_file)) == "dev-a-long-enough-key-0123456789"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev-api-key"]


@pytest.mark.real_http
def test_sandbox_delivers_to_the_simulator(make_app):
    app = make_app(RETENO_APP_UUID=None, RETENO_API_KEY=None, BRIDGE_SANDBOX=True)
    client = app.test_client()
    from tests.conftest import API_KEY

    auth = {"Authorization": f"Bearer {API_KEY}"}
    client.post("/register", json={"token": 42, "email": "Ann@Example.com"}, headers=auth)
    app.extensions["reteno_bridge"].deliver_once()
    contacts = client.get("/sandbox/reteno/contacts").json["contacts"]
    assert [(c["email"], c["tokens"]) for c in contacts] == [("ann@example.com", ["42"])]
    assert client.get("/tokens", headers=auth).json["items"][0]["state"] == "delivered"


@pytest.mark.real_http
def test_sandbox_deliveries_are_marked_in_the_history(make_app):
    app = make_app(RETENO_APP_UUID=None, RETENO_API_KEY=None, BRIDGE_SANDBOX=True)
    client = app.test_client()
    from tests.conftest import API_KEY

    auth = {"Authorization": f"Bearer {API_KEY}"}
    client.post("/register", json={"token": 43, "email": "ann@example.com"}, headers=auth)
    app.extensions["reteno_bridge"].deliver_once()
    events = client.get("/tokens/43/history", headers=auth).json["events"]
    assert [(e["kind"], e["detail"].get("sandbox")) for e in events] == [
        ("submitted", None),
        ("delivered", True),
    ]


def test_real_deliveries_are_not_marked_sandbox(client, auth, bridge, requests_mock):
    from tests.conftest import TOKENS_URL

    requests_mock.post(TOKENS_URL, json="OK")
    client.post("/register", json={"token": 44, "email": "ann@example.com"}, headers=auth)
    bridge.deliver_once()
    events = client.get("/tokens/44/history", headers=auth).json["events"]
    assert events[-1]["kind"] == "delivered" and "sandbox" not in events[-1]["detail"]


def test_sandbox_is_not_mounted_when_credentials_are_set(client):
    assert client.get("/sandbox/reteno/contacts").status_code == 404
    assert client.get("/healthz").json["sandbox"] is False


def test_healthz_reports_503_when_the_database_is_gone(app, client):
    rt = app.extensions["reteno_bridge"]
    rt.db.engine.dispose()
    import os

    path = rt.db.engine.url.database
    if rt.db.dialect != "sqlite":
        pytest.skip("removing the database file only works on SQLite")
    os.remove(path)
    os.makedirs(path)  # a directory where the database file was: unopenable
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json["code"] == 503
    assert "database" in response.json["errors"]


# --- /healthz: open and cheap; the details behind a bearer key -------------------------


def test_open_healthz_says_ok_with_no_reasons(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "reasons": [], "sandbox": False}


def test_healthz_details_need_a_bearer_key_and_never_quote_reteno(
    client, auth, bridge, requests_mock
):
    """Reteno's error text can quote personal data: /healthz shows a status and a code."""
    requests_mock.post(
        TOKENS_URL,
        status_code=401,
        json={"message": "key revoked by ann.lee@example.com (+380956490955)"},
    )
    assert (
        client.post(
            "/register", json={"token": 7, "email": "ann.lee@example.com"}, headers=auth
        ).status_code
        == 202
    )
    bridge.deliver_once()
    open_body = client.get("/healthz").get_json()
    assert open_body == {"status": "degraded", "reasons": ["delivery_paused"], "sandbox": False}
    response = client.get("/healthz", headers=auth)
    details = response.get_json()
    assert details["status"] == "degraded" and details["reasons"] == ["delivery_paused"]
    assert details["delivery"]["paused"] is True
    assert details["delivery"]["pauseReason"] == "unauthorized"
    last = details["lastUpstream"]
    assert {k: last[k] for k in ("outcome", "status", "reason", "batch")} == {
        "outcome": "paused",
        "status": 401,
        "reason": "unauthorized",
        "batch": 1,
    }
    assert set(last) == {"outcome", "status", "reason", "batch", "ms", "at"}
    assert details["outbox"]["depth"] == 1 and details["deadLetters"] == 0
    assert details["heldConflicts"] == 0
    for text in (response.get_data(as_text=True), json.dumps(open_body)):
        assert "ann.lee" not in text and "380956490955" not in text and "revoked" not in text
    wrong = client.get("/healthz", headers={"Authorization": "Bearer not-the-key-0123456789"})
    assert_error_shape(wrong, 401)


def test_healthz_names_dead_letters_and_a_failing_upstream(client, auth, bridge, requests_mock):
    requests_mock.post(
        TOKENS_URL,
        [
            {"status_code": 400, "json": {"message": "Invalid"}},
            {"status_code": 503, "json": {"message": "down"}},
        ],
    )
    client.post("/register", json={"token": 8, "contactId": 8}, headers=auth)
    bridge.deliver_once()
    assert client.get("/healthz").get_json()["reasons"] == ["dead_letters"]
    client.post("/register", json={"token": 9, "contactId": 9}, headers=auth)
    bridge.deliver_once()
    body = client.get("/healthz").get_json()
    assert body["status"] == "degraded"
    assert body["reasons"] == ["upstream_failing", "dead_letters"]


def test_a_pause_reason_stored_before_reason_codes_is_not_shown(client, auth, bridge, clock):
    """An upgraded ledger may hold Reteno's text as the pause reason: shown as unknown."""
    from bridge.ledger import outbox

    until = (clock.now + timedelta(seconds=60)).isoformat()
    with bridge.db.write() as conn:
        outbox.set_upstream(
            conn,
            clock.now,
            paused_until=until,
            pause_reason="401 Unauthorized: ann.lee@example.com",
            last={
                "outcome": "paused",
                "status": 401,
                "error": "401 Unauthorized: ann.lee@example.com",
            },
        )
    text = client.get("/healthz", headers=auth).get_data(as_text=True)
    assert '"pauseReason":"unknown"' in text.replace(" ", "")
    assert "ann.lee" not in text
