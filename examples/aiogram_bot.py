"""An aiogram 3 bot (long polling) that reports its users to the bridge through the
adapter ``reteno_bridge_client.aiogram``.

* ``/start <payload>`` with a link made by the bridge (``POST /links``, or ``bridge
  link --email ann@example.com``): the adapter forwards it and the bridge registers the
  chat with the link's identifiers;
* ``/start`` alone: the bot registers the chat itself with a demo identifier,
  ``externalCustomerId = "tg-<Telegram user id>"`` (a real bot uses an id its company
  knows the user by);
* blocking and unblocking the bot: the adapter forwards the ``my_chat_member`` update,
  and the bridge removes the chat, or makes it live again;
* ``/stop`` and ``/resume``: mute and unmute the chat's marketing messages (Reteno still
  sends transactional ones).

Run it::

    pip install 'reteno-bridge-client[aiogram]'
    TELEGRAM_BOT_TOKEN=123:abc BRIDGE_URL=http://127.0.0.1:5000 \\
    BRIDGE_API_KEY=<one of BRIDGE_API_KEYS> python examples/aiogram_bot.py

aiogram handles each update as a task of its own, so a slow bridge holds up no other
chat; the adapter keeps each chat's calls to the bridge in the order of its updates
(a ``/stop`` right after ``/start`` mutes a chat already registered). With the bridge
down, each call gives up after the client's deadline (10 s): a forwarded block or deep
link is logged as lost (the welcome after a deep link does not wait for the bridge), and
``/start`` alone, ``/stop`` and ``/resume`` answer that it did not work. The bot never
talks to Reteno: the bridge does, from its durable outbox.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from aiogram import Bot, Dispatcher, F, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import Message
from reteno_bridge_client import AsyncBridgeClient, BridgeError
from reteno_bridge_client.aiogram import setup
from reteno_bridge_client.ordering import OrderedBridge

SETTINGS = ("TELEGRAM_BOT_TOKEN", "BRIDGE_URL", "BRIDGE_API_KEY")
WELCOME = "Welcome! Your offers will arrive here."
NOT_YET = "You're not subscribed yet: send /start."
STOPPED = "Done: no more offers here until you send /resume."
RESUMED = "Welcome back: your offers will arrive here again."
SORRY = "Sorry, that did not work; try again later."


def build_router() -> Router:
    router = Router(name="shop")
    router.message.filter(F.chat.type == "private")

    @router.message(CommandStart(deep_link=True))
    async def on_start_link(message: Message) -> None:
        await message.answer(WELCOME)  # the adapter forwarded the link to the bridge

    @router.message(CommandStart(deep_link=False))
    async def on_start(message: Message, bridge: OrderedBridge) -> None:
        try:
            await bridge.register(
                message.chat.id, external_customer_id=f"tg-{message.from_user.id}"
            )
        except BridgeError:
            await message.answer(SORRY)
            return
        await message.answer(WELCOME)

    @router.message(Command("stop", "resume"))
    async def on_stop_or_resume(message: Message, bridge: OrderedBridge) -> None:
        stop = message.text.split()[0].startswith("/stop")
        try:
            await (bridge.mute if stop else bridge.unmute)(message.chat.id)
        except BridgeError as error:
            await message.answer(NOT_YET if error.status == 404 else SORRY)
            return
        await message.answer(STOPPED if stop else RESUMED)

    return router


def build_dispatcher(bridge: AsyncBridgeClient) -> Dispatcher:
    """The bot's dispatcher; its handlers get the bridge as ``bridge``."""
    dispatcher = Dispatcher()
    setup(dispatcher, bridge)
    dispatcher.include_router(build_router())
    return dispatcher


async def run(bot_token: str, bridge_url: str, api_key: str) -> None:
    async with AsyncBridgeClient(bridge_url, api_key) as bridge, Bot(bot_token) as bot:
        await build_dispatcher(bridge).start_polling(bot)


def main() -> None:
    missing = [name for name in SETTINGS if not os.environ.get(name, "").strip()]
    if missing:
        sys.exit(
            f"aiogram_bot: {', '.join(missing)} not set: the bot needs "
            "TELEGRAM_BOT_TOKEN (from @BotFather), BRIDGE_URL (where the bridge "
            "listens) and BRIDGE_API_KEY (one of the bridge's BRIDGE_API_KEYS)"
        )
    logging.basicConfig(level=logging.INFO)
    asyncio.run(run(*(os.environ[name].strip() for name in SETTINGS)))


if __name__ == "__main__":
    main()
