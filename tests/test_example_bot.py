"""The example bot's handler logic, with constructed Telegram updates."""

from __future__ import annotations

import asyncio

import pytest
from telegram import Update

from examples.telegram_bot import (
    BridgeClient,
    contact_registration,
    on_contact,
    start_registration,
)

BRIDGE = "http://bridge.test"


def update(message: dict) -> Update:
    return Update.de_json({"update_id": 1, "message": message}, None)


PRIVATE = {"id": 555001, "type": "private", "first_name": "Ann"}
USER = {"id": 555001, "is_bot": False, "first_name": "Ann"}


def start_message(chat=PRIVATE):
    return {
        "message_id": 10, "date": 1760000000, "chat": chat, "from": USER, "text": "/start",
        "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
    }


def test_start_registers_the_chat_with_the_external_id():
    assert start_registration(update(start_message())) == {
        "token": 555001, "externalCustomerId": "tg-555001",
    }


def test_start_in_a_group_registers_nothing():
    group = {"id": -100123, "type": "supergroup", "title": "fans"}
    assert start_registration(update(start_message(group))) is None


def test_own_contact_registers_the_phone():
    message = {
        "message_id": 11, "date": 1760000000, "chat": PRIVATE, "from": USER,
        "contact": {"phone_number": "+380956490955", "first_name": "Ann", "user_id": 555001},
    }
    assert contact_registration(update(message)) == {"token": 555001, "phone": "+380956490955"}


def test_someone_elses_contact_is_ignored():
    message = {
        "message_id": 12, "date": 1760000000, "chat": PRIVATE, "from": USER,
        "contact": {"phone_number": "+380950000000", "first_name": "Bob", "user_id": 999},
    }
    assert contact_registration(update(message)) is None


def test_client_posts_to_register_with_the_bearer_key(requests_mock):
    requests_mock.post(f"{BRIDGE}/register", status_code=202, json={"registrations": [
        {"id": 1, "token": "555001", "matchedBy": "phone", "state": "queued",
         "duplicate": False}]})
    result = BridgeClient(BRIDGE, "bot-key-0123456789abcdef").register(555001, phone="+380 95")
    assert result["state"] == "queued"
    call = requests_mock.last_request
    assert call.headers["Authorization"] == "Bearer bot-key-0123456789abcdef"
    assert call.json() == {"token": 555001, "phone": "+380 95"}


def test_contact_handler_calls_the_bridge(requests_mock):
    requests_mock.post(f"{BRIDGE}/register", status_code=202, json={"registrations": [{}]})
    message = {
        "message_id": 11, "date": 1760000000, "chat": PRIVATE, "from": USER,
        "contact": {"phone_number": "+380956490955", "first_name": "Ann", "user_id": 555001},
    }
    replies = []

    class Context:
        bot_data = {"bridge": BridgeClient(BRIDGE, "bot-key-0123456789abcdef")}

    upd = update(message)

    async def reply_text(text, **kwargs):
        replies.append(text)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(upd.effective_message), "reply_text",
                   lambda self, text, **kw: reply_text(text, **kw))
        asyncio.run(on_contact(upd, Context()))
    assert requests_mock.last_request.json() == {"token": 555001, "phone": "+380956490955"}
    assert replies == ["Thanks, you're subscribed."]
