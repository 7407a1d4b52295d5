"""The client's adapters, driven by the example bots (examples/aiogram_bot.py,
examples/ptb_bot.py) against a bridge served over HTTP in sandbox mode.

Updates are built with each framework's own types (``aiogram.types.Update``,
``telegram.Update``) and fed through its own dispatch (``Dispatcher.feed_update``,
``Application.process_update``); Telegram is never called: the bots' replies go to a
stand-in that keeps them. What the bridge did is read back with ``GET /tokens``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import time
from itertools import count
from pathlib import Path

import pytest
from aiogram import Bot
from aiogram.client.session.base import BaseSession
from aiogram.types import Update as AiogramUpdate
from reteno_bridge_client import AsyncBridgeClient, BridgeClient, RetryPolicy
from telegram import Update as PtbUpdate
from telegram.request import BaseRequest

from bridge import links
from examples import aiogram_bot, ptb_bot
from tests.conftest import API_KEY
from tests.test_end_to_end import Server

BOT_TOKEN = "123456:test-token"
LINK_SECRET = "adapters-link-secret-0123456789"
CHAT = 5550001
USER = {"id": CHAT, "is_bot": False, "first_name": "Ann"}
PRIVATE = {"id": CHAT, "type": "private", "first_name": "Ann"}
BOT_USER = {"id": 123456, "is_bot": True, "first_name": "Shop", "username": "shop_bot"}
_update_ids = count(1)


def message(text: str, chat: dict = PRIVATE) -> dict:
    entities = (
        [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        if text.startswith("/")
        else []
    )
    user = {**USER, "id": chat["id"]} if chat["type"] == "private" else USER
    return {
        "update_id": next(_update_ids),
        "message": {
            "message_id": next(_update_ids),
            "date": int(time.time()),
            "chat": chat,
            "from": user,
            "text": text,
            "entities": entities,
        },
    }


def chat_member(old: str, new: str) -> dict:
    def member(status: str) -> dict:  # as Telegram sends it: a ban has its until_date
        return {
            "status": status,
            "user": BOT_USER,
            **({"until_date": 0} if status == "kicked" else {}),
        }

    return {
        "update_id": next(_update_ids),
        "my_chat_member": {
            "chat": PRIVATE,
            "from": USER,
            "date": int(time.time()),
            "old_chat_member": member(old),
            "new_chat_member": member(new),
        },
    }


def deep_link(value: str = "C-1") -> str:
    return "/start " + links.make_payload(LINK_SECRET, "externalCustomerId", value)


def sent_message(chat_id, text) -> dict:
    return {
        "message_id": 1000,
        "date": int(time.time()),
        "chat": {"id": chat_id, "type": "private"},
        "text": text,
    }


# --- the two bots, each behind the same small interface --------------------------------


class AiogramTelegram(BaseSession):
    """aiogram's session to Telegram, answered here: ``sendMessage`` kept in ``sent``."""

    def __init__(self, sent: list[str]):
        super().__init__()
        self.sent = sent

    async def make_request(self, bot, method, timeout=None):
        assert type(method).__name__ == "SendMessage", f"the bot called {method!r}"
        self.sent.append(method.text)
        content = json.dumps({"ok": True, "result": sent_message(method.chat_id, method.text)})
        return self.check_response(bot=bot, method=method, status_code=200, content=content).result

    async def stream_content(
        self, url, headers=None, timeout=30, chunk_size=65536, raise_for_status=True
    ):
        raise AssertionError("the bot streamed from Telegram")
        yield b""

    async def close(self):
        pass


class AiogramBot:
    """examples/aiogram_bot.py: each update fed as a task of its own, as aiogram's
    polling does."""

    def __init__(self, client: AsyncBridgeClient):
        self.sent: list[str] = []
        self.bot = Bot(BOT_TOKEN, session=AiogramTelegram(self.sent))
        self.dispatcher = aiogram_bot.build_dispatcher(client)
        self.tasks: list[asyncio.Task] = []

    async def __aenter__(self):
        return self

    def feed(self, update: dict) -> None:
        typed = AiogramUpdate.model_validate(update, context={"bot": self.bot})
        self.tasks.append(asyncio.create_task(self.dispatcher.feed_update(self.bot, typed)))

    async def settle(self) -> None:
        await asyncio.gather(*self.tasks)
        await self.dispatcher["bridge"].idle()

    async def __aexit__(self, *exc_info):
        await self.settle()
        await self.dispatcher.emit_shutdown()


class PtbTelegram(BaseRequest):
    """PTB's requests to Telegram, answered here: ``getMe``, ``sendMessage`` (kept)."""

    def __init__(self, sent: list[str]):
        self.sent = sent

    @property
    def read_timeout(self):
        return 1.0

    async def initialize(self):
        pass

    async def shutdown(self):
        pass

    async def do_request(
        self,
        url,
        method,
        request_data=None,
        read_timeout=None,
        write_timeout=None,
        connect_timeout=None,
        pool_timeout=None,
    ):
        endpoint = url.rsplit("/", 1)[-1]
        params = request_data.parameters if request_data else {}
        assert endpoint in ("getMe", "sendMessage"), f"the bot called {endpoint}"
        if endpoint == "getMe":
            return 200, json.dumps({"ok": True, "result": BOT_USER}).encode()
        self.sent.append(params["text"])
        result = sent_message(params["chat_id"], params["text"])
        return 200, json.dumps({"ok": True, "result": result}).encode()


class PtbBot:
    """examples/ptb_bot.py, started as ``run_polling`` starts it, with updates put in its
    update queue instead of fetched from Telegram (so its ``concurrent_updates`` setting
    decides how they are handled)."""

    def __init__(self, client: AsyncBridgeClient):
        self.sent: list[str] = []
        self.application = ptb_bot.build_application(
            BOT_TOKEN, client, request=PtbTelegram(self.sent)
        )

    async def __aenter__(self):
        await self.application.initialize()
        await self.application.start()
        return self

    def feed(self, update: dict) -> None:
        self.application.update_queue.put_nowait(PtbUpdate.de_json(update, self.application.bot))

    async def settle(self) -> None:
        await self.application.update_queue.join()  # every update handled
        await self.application.bot_data["bridge"].idle()

    async def __aexit__(self, *exc_info):
        await self.settle()
        await self.application.stop()
        await self.application.shutdown()


BOTS = [pytest.param(AiogramBot, id="aiogram"), pytest.param(PtbBot, id="ptb")]


def talk(make_bot, url: str, *steps, retry: RetryPolicy | None = None) -> list[str]:
    """Each step (an update, or None: wait until the bot and the bridge are done) fed to
    a fresh bot; the bot's replies."""

    async def go():
        client = AsyncBridgeClient(url, API_KEY, retry=retry)
        async with make_bot(client) as bot:
            for step in steps:
                if step is None:
                    await bot.settle()
                else:
                    bot.feed(step)
        await client.aclose()
        return bot.sent

    return asyncio.run(go())


# --- the bridge ----------------------------------------------------------------------


class Slow:
    """WSGI middleware: the bridge answers requests to ``path`` after ``delay`` seconds."""

    def __init__(self, app, delay: float, path: str):
        self.app, self.delay, self.path = app, delay, path

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"] == self.path:
            time.sleep(self.delay)
        return self.app(environ, start_response)


@pytest.fixture
def served(make_app):
    """A sandbox bridge served on 127.0.0.1 (answering ``path`` late with
    ``served(delay, path)``); its URL."""
    servers = []

    def serve(delay: float = 0.0, path: str = "/telegram/webhook") -> str:
        app = make_app(
            RETENO_APP_UUID=None,
            RETENO_API_KEY=None,
            BRIDGE_SANDBOX=True,
            BRIDGE_LINK_SECRET=LINK_SECRET,
            TELEGRAM_BOT_USERNAME="shop_bot",
        )
        if delay:
            app.wsgi_app = Slow(app.wsgi_app, delay, path)
        servers.append(Server(app))
        return servers[-1].url

    yield serve
    for server in servers:
        server.stop()


def registrations(url: str) -> list:
    with BridgeClient(url, API_KEY) as client:
        return list(client.iter_tokens(token=CHAT))


def live(url: str) -> list:
    return [r for r in registrations(url) if r.state in ("queued", "delivered")]


# --- the tests -----------------------------------------------------------------------


@pytest.mark.real_http
@pytest.mark.parametrize("make_bot", BOTS)
def test_a_deep_link_registers_and_blocks_and_unblocks_reach_the_bridge(served, make_bot):
    url = served()
    assert talk(make_bot, url, message(deep_link("C-1"))) == [aiogram_bot.WELCOME]
    [record] = live(url)
    assert (record.external_customer_id, record.matched_by) == ("C-1", "externalCustomerId")

    talk(make_bot, url, chat_member("member", "kicked"))
    assert live(url) == []
    [removed] = registrations(url)
    assert removed.state == "removed" and "blocked the bot" in removed.removal_reason

    talk(make_bot, url, chat_member("kicked", "member"))
    assert [r.external_customer_id for r in live(url)] == ["C-1"]


@pytest.mark.real_http
@pytest.mark.parametrize("make_bot", BOTS)
def test_start_registers_stop_mutes_and_resume_unmutes(served, make_bot):
    url = served()
    replies = talk(make_bot, url, message("/stop"), None, message("/start"), None, message("/stop"))
    assert replies == [aiogram_bot.NOT_YET, aiogram_bot.WELCOME, aiogram_bot.STOPPED]
    [record] = live(url)
    assert record.external_customer_id == f"tg-{CHAT}"
    assert record.muted is True and record.muted_until is None
    assert talk(make_bot, url, message("/resume")) == [aiogram_bot.RESUMED]
    [record] = live(url)
    assert record.muted is False


@pytest.mark.real_http
@pytest.mark.parametrize("make_bot", BOTS)
def test_a_start_without_a_link_reaches_the_bridge_as_a_sign_of_life(served, make_bot):
    url = served()
    talk(make_bot, url, message("/start"))
    with BridgeClient(url, API_KEY) as client:
        starts = [e for e in client.history(CHAT) if e.detail.get("update") == "/start"]
    assert [e.kind for e in starts] == ["telegram_ignored"]
    assert starts[0].detail["reason"] == "/start without a deep-link payload"


@pytest.mark.real_http
@pytest.mark.parametrize("make_bot", BOTS)
def test_a_group_or_plain_chatter_is_not_forwarded(served, make_bot):
    url = served()
    group = {"id": -100123, "type": "supergroup", "title": "fans"}
    assert talk(make_bot, url, message(deep_link(), chat=group), message("hello")) == []
    with BridgeClient(url, API_KEY) as client:
        assert client.tokens().items == []
        assert client.history(-100123) == []


@pytest.mark.real_http
@pytest.mark.parametrize("make_bot", BOTS)
def test_with_a_slow_bridge_a_stop_right_after_start_still_mutes(served, make_bot):
    """The bridge takes 0.5 s to take each forwarded update; ``/stop`` comes at once
    after the deep link, yet its mute reaches the bridge after the registration."""
    url = served(delay=0.5)
    started = time.monotonic()
    replies = talk(make_bot, url, message(deep_link("C-2")), message("/stop"))
    assert sorted(replies) == sorted([aiogram_bot.WELCOME, aiogram_bot.STOPPED])
    assert time.monotonic() - started >= 0.5
    [record] = live(url)
    assert record.external_customer_id == "C-2" and record.muted is True


@pytest.mark.real_http
@pytest.mark.parametrize("make_bot", BOTS)
def test_a_slow_bridge_holds_up_no_other_chat(served, make_bot):
    """Two chats' ``/start`` against a bridge taking 1 s per registration: both answered
    after about one such second, not two."""
    url = served(delay=1.0, path="/register")
    started = time.monotonic()
    replies = talk(
        make_bot, url, message("/start"), message("/start", chat={**PRIVATE, "id": CHAT + 1})
    )
    assert replies == [aiogram_bot.WELCOME, aiogram_bot.WELCOME]
    assert time.monotonic() - started < 1.8


@pytest.mark.real_http
@pytest.mark.parametrize("make_bot", BOTS)
def test_with_the_bridge_down_one_error_line_per_lost_forward_and_the_bot_goes_on(make_bot, caplog):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    retry = RetryPolicy(deadline=1.0)
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        replies = talk(make_bot, url, message(deep_link()), None, message("/stop"), retry=retry)
    assert time.monotonic() - started < 2 * retry.deadline + 1.0
    assert replies == [aiogram_bot.WELCOME, aiogram_bot.SORRY]  # the next update answered
    lines = [
        r
        for r in caplog.records
        if r.name.startswith("reteno_bridge_client") and r.levelno >= logging.WARNING
    ]
    assert [r.levelno for r in lines] == [logging.ERROR]
    assert "(/start) of chat ***001 lost after" in lines[0].getMessage()
    assert str(CHAT) not in caplog.text


@pytest.mark.real_http
def test_a_webhook_mode_aiogram_bot_can_answer_telegram_with_an_error_instead(caplog):
    """``raise_on_failure=True``: the update's handling fails (aiogram's webhook answers
    Telegram with an error, so Telegram delivers it again); no handler ran."""
    from aiogram import Dispatcher
    from reteno_bridge_client import BridgeError
    from reteno_bridge_client.aiogram import setup

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    handled = []

    async def go():
        dispatcher = Dispatcher()
        async with AsyncBridgeClient(url, API_KEY, retry=RetryPolicy(deadline=0.5)) as client:
            setup(dispatcher, client, raise_on_failure=True)
            dispatcher.message.register(lambda message: handled.append(message.text))
            bot = Bot(BOT_TOKEN, session=AiogramTelegram([]))
            with pytest.raises(BridgeError):
                await dispatcher.feed_webhook_update(bot, message(deep_link()))
            await dispatcher.feed_webhook_update(bot, message("hello"))  # not forwarded

    asyncio.run(go())
    assert handled == ["hello"]
    assert not [r for r in caplog.records if r.name.startswith("reteno_bridge_client")]


def test_setting_up_an_adapter_twice_is_refused():
    from reteno_bridge_client import aiogram as aiogram_adapter
    from reteno_bridge_client import ptb as ptb_adapter

    client = AsyncBridgeClient("http://127.0.0.1:9", API_KEY)
    dispatcher = aiogram_bot.build_dispatcher(client)
    with pytest.raises(RuntimeError, match="already called"):
        aiogram_adapter.setup(dispatcher, client)
    application = ptb_bot.build_application(BOT_TOKEN, client)
    with pytest.raises(RuntimeError, match="already called"):
        ptb_adapter.setup(application, client)
    asyncio.run(client.aclose())


@pytest.mark.parametrize("example", ["examples/aiogram_bot.py", "examples/ptb_bot.py"])
def test_an_example_without_its_settings_names_them_in_one_line(example):
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, example],
        cwd=root,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert "TELEGRAM_BOT_TOKEN, BRIDGE_URL, BRIDGE_API_KEY not set" in line
