"""The example bot: its handlers driven through python-telegram-bot's ``Application``
with real ``Update`` objects, against a bridge served over HTTP in sandbox mode.
Telegram itself is a stand-in request object answering the Bot API locally."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from telegram import Update
from telegram.request import BaseRequest

from examples.telegram_bot import (
    BridgeClient,
    Settings,
    build_application,
    contact_registration,
    start_registration,
)
from tests.conftest import API_KEY
from tests.helpers import rows
from tests.test_end_to_end import Server

BOT_TOKEN = "123456:test-token"
PRIVATE = {"id": 555001, "type": "private", "first_name": "Ann"}
USER = {"id": 555001, "is_bot": False, "first_name": "Ann"}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def command_message(command, chat=PRIVATE):
    return {
        "message_id": 10, "date": 1760000000, "chat": chat, "from": USER, "text": command,
        "entities": [{"type": "bot_command", "offset": 0, "length": len(command)}],
    }


def start_message(chat=PRIVATE):
    return command_message("/start", chat)


def contact_message(user_id=555001, phone="+380956490955"):
    return {"message_id": 11, "date": 1760000000, "chat": PRIVATE, "from": USER,
            "contact": {"phone_number": phone, "first_name": "Ann", "user_id": user_id}}


class FakeTelegram(BaseRequest):
    """The Bot API, answered here: ``getMe`` and ``sendMessage`` (kept in ``sent``)."""

    def __init__(self):
        self.sent: list[dict] = []

    @property
    def read_timeout(self):
        return 1.0

    async def initialize(self):
        pass

    async def shutdown(self):
        pass

    async def do_request(self, url, method, request_data=None, read_timeout=None,
                         write_timeout=None, connect_timeout=None, pool_timeout=None):
        endpoint = url.rsplit("/", 1)[-1]
        params = request_data.parameters if request_data else {}
        if endpoint == "getMe":
            result = {"id": 123456, "is_bot": True, "first_name": "Shop",
                      "username": "shop_bot"}
        elif endpoint == "sendMessage":
            self.sent.append(params)
            result = {"message_id": 100 + len(self.sent), "date": 1760000000,
                      "chat": {"id": params["chat_id"], "type": "private"},
                      "text": params["text"]}
        else:
            return 404, json.dumps({"ok": False, "error_code": 404,
                                    "description": "Not Found"}).encode()
        return 200, json.dumps({"ok": True, "result": result}).encode()


def through_the_bot(bridge_url: str, *messages: dict) -> FakeTelegram:
    """Every message handed to the bot as a real ``Update``; what the bot sent back."""
    telegram = FakeTelegram()

    async def go():
        application = build_application(BOT_TOKEN, BridgeClient(bridge_url, API_KEY),
                                        request=telegram)
        async with application:
            for n, message in enumerate(messages, 1):
                await application.process_update(
                    Update.de_json({"update_id": n, "message": message}, application.bot))

    asyncio.run(go())
    return telegram


@pytest.fixture
def bridge_url(make_app):
    app = make_app(RETENO_APP_UUID=None, RETENO_API_KEY=None, BRIDGE_SANDBOX=True)
    server = Server(app)
    yield server.url, app.test_client()
    server.stop()


@pytest.mark.real_http
def test_start_and_a_shared_phone_register_the_chat(bridge_url):
    url, client = bridge_url
    telegram = through_the_bot(url, start_message(), contact_message())
    registered = {(r["matchedBy"], r["externalCustomerId"], r["phone"])
                  for r in rows(client, AUTH, token=555001)}
    assert registered == {("externalCustomerId", "tg-555001", None),
                          ("phone", None, "380956490955")}
    assert [m["text"] for m in telegram.sent] == [
        "Welcome! Share your phone number to get your offers here.",
        "Thanks, you're subscribed."]
    assert telegram.sent[0]["reply_markup"]["keyboard"][0][0]["request_contact"] is True


@pytest.mark.real_http
def test_someone_elses_contact_or_a_group_registers_nothing(bridge_url):
    url, client = bridge_url
    group = {"id": -100123, "type": "supergroup", "title": "fans"}
    telegram = through_the_bot(url, start_message(group), contact_message(user_id=999))
    assert rows(client, AUTH) == [] and telegram.sent == []


@pytest.mark.real_http
def test_stop_mutes_and_resume_unmutes_the_chat(bridge_url):
    url, client = bridge_url
    telegram = through_the_bot(url, command_message("/stop"), start_message(),
                               command_message("/stop"))
    assert telegram.sent[0]["text"] == "You're not subscribed yet: send /start."
    assert telegram.sent[-1]["text"] == "Done: no more offers here until you send /resume."
    [item] = rows(client, AUTH, token=555001)
    assert item["muted"] is True and item["mutedUntil"] is None  # until /resume
    telegram = through_the_bot(url, command_message("/resume"))
    assert [m["text"] for m in telegram.sent] == [
        "Welcome back: your offers will arrive here again."]
    [item] = rows(client, AUTH, token=555001)
    assert item["muted"] is False
    kinds = [e["kind"] for e in client.get("/tokens/555001/history", headers=AUTH).json["events"]]
    assert [k for k in kinds if k.endswith("_requested")] == ["mute_requested",
                                                               "unmute_requested"]


@pytest.mark.real_http
def test_a_bridge_that_is_down_gets_an_apology_not_a_crash(bridge_url):
    telegram = through_the_bot("http://127.0.0.1:9", contact_message())
    assert [m["text"] for m in telegram.sent] == ["Sorry, that did not work; try again later."]


def test_start_and_contact_registration_rules():
    def update(message):
        return Update.de_json({"update_id": 1, "message": message}, None)

    assert start_registration(update(start_message())) == {
        "token": 555001, "externalCustomerId": "tg-555001"}
    assert contact_registration(update(contact_message())) == {
        "token": 555001, "phone": "+380956490955"}
    assert contact_registration(update(contact_message(user_id=999))) is None


def test_missing_settings_are_named_in_one_line():
    with pytest.raises(ValueError, match="BRIDGE_URL, BRIDGE_API_KEY are not set"):
        Settings.from_environment({"TELEGRAM_BOT_TOKEN": "1:a"})
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "examples/telegram_bot.py"], cwd=root,
                            env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert "TELEGRAM_BOT_TOKEN, BRIDGE_URL, BRIDGE_API_KEY are not set" in line
