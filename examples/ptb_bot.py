"""A python-telegram-bot bot (long polling) that reports its users to the bridge
through the adapter ``reteno_bridge_client.ptb``.

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

    pip install 'reteno-bridge-client[ptb]'
    TELEGRAM_BOT_TOKEN=123:abc BRIDGE_URL=http://127.0.0.1:5000 \\
    BRIDGE_API_KEY=<one of BRIDGE_API_KEYS> python examples/ptb_bot.py

The application handles updates concurrently (``concurrent_updates(True)``), so a slow
bridge holds up no other chat; the adapter keeps each chat's calls to the bridge in the
order of its updates (a ``/stop`` right after ``/start`` mutes a chat already
registered). With the bridge down, each call gives up after the client's deadline
(10 s): a forwarded block or deep link is logged as lost (the welcome after a deep link
does not wait for the bridge), and ``/start`` alone, ``/stop`` and ``/resume`` answer
that it did not work. The bot never talks to Reteno: the bridge does, from its durable
outbox.
"""

from __future__ import annotations

import os
import sys

from reteno_bridge_client import AsyncBridgeClient, BridgeError
from reteno_bridge_client.ptb import setup
from telegram import Update
from telegram.ext import Application, CommandHandler, ContextTypes, filters
from telegram.request import BaseRequest

SETTINGS = ("TELEGRAM_BOT_TOKEN", "BRIDGE_URL", "BRIDGE_API_KEY")
WELCOME = "Welcome! Your offers will arrive here."
NOT_YET = "You're not subscribed yet: send /start."
STOPPED = "Done: no more offers here until you send /resume."
RESUMED = "Welcome back: your offers will arrive here again."
SORRY = "Sorry, that did not work; try again later."


async def on_start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    if not context.args:  # a deep link's payload was forwarded by the adapter
        try:
            await context.bot_data["bridge"].register(
                update.effective_chat.id, external_customer_id=f"tg-{update.effective_user.id}"
            )
        except BridgeError:
            await update.effective_message.reply_text(SORRY)
            return
    await update.effective_message.reply_text(WELCOME)


async def on_stop_or_resume(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    bridge = context.bot_data["bridge"]
    stop = update.effective_message.text.split()[0].startswith("/stop")
    try:
        await (bridge.mute if stop else bridge.unmute)(update.effective_chat.id)
    except BridgeError as error:
        await update.effective_message.reply_text(NOT_YET if error.status == 404 else SORRY)
        return
    await update.effective_message.reply_text(STOPPED if stop else RESUMED)


def build_application(
    bot_token: str, bridge: AsyncBridgeClient, request: BaseRequest | None = None
) -> Application:
    """The bot; ``request``: how it reaches Telegram (tests pass one of their own)."""
    builder = Application.builder().token(bot_token).concurrent_updates(True)
    if request is not None:
        builder = builder.request(request).get_updates_request(request)

    async def close_bridge(_application: Application) -> None:
        await bridge.aclose()

    application = builder.post_shutdown(close_bridge).build()
    setup(application, bridge)
    private = filters.ChatType.PRIVATE
    application.add_handler(CommandHandler("start", on_start, filters=private))
    application.add_handler(CommandHandler(["stop", "resume"], on_stop_or_resume, filters=private))
    return application


def main() -> None:
    missing = [name for name in SETTINGS if not os.environ.get(name, "").strip()]
    if missing:
        sys.exit(
            f"ptb_bot: {', '.join(missing)} not set: the bot needs "
            "TELEGRAM_BOT_TOKEN (from @BotFather), BRIDGE_URL (where the bridge "
            "listens) and BRIDGE_API_KEY (one of the bridge's BRIDGE_API_KEYS)"
        )
    token, url, key = (os.environ[name].strip() for name in SETTINGS)
    build_application(token, AsyncBridgeClient(url, key)).run_polling()


if __name__ == "__main__":
    main()
