"""The settings table: every setting the bridge reads comes from one key of it, with
its default, and the loader applies the table (the messages of bad values are pinned
in test_app.py)."""

from __future__ import annotations

import dataclasses

import pytest

from bridge.config import KEYS, ConfigError, Settings, load_settings, process_setting

SANDBOX = {"BRIDGE_SANDBOX": "true"}


def test_every_setting_comes_from_one_key():
    fields = [key.field for key in KEYS if key.field]
    assert len(fields) == len(set(fields))
    assert set(fields) | {"base_url_explicit"} == {f.name for f in dataclasses.fields(Settings)}


def test_every_key_has_a_help_sentence_and_a_shown_default():
    for key in KEYS:
        assert key.help.endswith(".") and key.default_text, key.name
        assert key.read.kind, key.name


def test_the_defaults_are_the_tables(tmp_path):
    settings = load_settings({}, str(tmp_path), SANDBOX)
    assert settings.batch_size == 1000 and settings.link_ttl == 30 * 86400
    assert settings.upstream_deadline == pytest.approx(13.05)
    assert settings.lease_seconds == 120 and not settings.hold_conflicts
    assert settings.database_url == f"sqlite:///{tmp_path}/bridge.sqlite3"
    assert settings.base_url == "https://reteno.com" and not settings.base_url_explicit


def test_app_config_wins_over_the_environment_which_wins_over_the_default(tmp_path):
    environ = {**SANDBOX, "BRIDGE_BATCH_SIZE": "50", "BRIDGE_ON_CONFLICT": "hold"}
    settings = load_settings({"BRIDGE_BATCH_SIZE": 7}, str(tmp_path), environ)
    assert settings.batch_size == 7 and settings.hold_conflicts


def test_a_default_may_follow_the_keys_before_it(tmp_path):
    environ = {**SANDBOX, "RETENO_PLATFORM": "esputnik", "BRIDGE_UPSTREAM_READ_TIMEOUT": "100"}
    settings = load_settings({}, str(tmp_path), environ)
    assert (settings.base_url, settings.auth) == ("https://esputnik.com", "basic")
    assert settings.lease_seconds == 207  # twice the 103.05 s deadline, rounded up


def test_process_settings_are_read_from_the_environment():
    assert process_setting("PORT", {}) == 5000
    assert process_setting("WEB_CONCURRENCY", {"WEB_CONCURRENCY": "4"}) == 4
    with pytest.raises(ConfigError, match="PORT must be an integer from 1 to 65535"):
        process_setting("PORT", {"PORT": "http"})
