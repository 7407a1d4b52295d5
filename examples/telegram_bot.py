"""An example bot (python-telegram-bot) that registers its users with the bridge.

It long-polls Telegram and tells the bridge each user's chat id together with an
identifier the company knows the user by:

* ``/start``            → ``externalCustomerId = "tg-<telegram user id>"``
* a shared contact      → ``phone`` (the button "Share my phone number")

and lets users stop and resume marketing messages themselves (Reteno still sends
transactional ones):

* ``/stop``             → ``POST /mute`` (until ``/resume``)
* ``/resume``           → ``POST /unmute``

Run it::

    pip install python-telegram-bot      # brings httpx, which the bot uses too
    TELEGRAM_BOT_TOKEN=123:abc BRIDGE_URL=http://127.0.0.1:5000 \\
    BRIDGE_API_KEY=<a key from BRIDGE_API_KEYS> python examples/telegram_bot.py

The handlers are asynchronous, and so are their calls to the bridge
(``httpx.AsyncClient``): a slow bridge never blocks the bot's other updates. The
bot never talks to Reteno itself: the bridge queues the token durably and
delivers it. Deep links signed by the bridge (``bridge link``) need no code here:
point Telegram's webhook at the bridge's ``/telegram/webhook`` instead.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
from telegram import KeyboardButton, ReplyKeyboardMarkup, Update
from telegram.ext import Application, CommandHandler, ContextTypes, MessageHandler, filters
from telegram.request import BaseRequest

log = logging.getLogger("example-bot")
SETTINGS = ("TELEGRAM_BOT_TOKEN", "BRIDGE_URL", "BRIDGE_API_KEY")


@dataclass(frozen=True)
class Settings:
    bot_token: str
    bridge_url: str
    bridge_api_key: str

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Settings:
        """The bot's settings; ``ValueError`` naming every one that is missing."""
        missing = [name for name in SETTINGS if not environ.get(name, "").strip()]
        if missing:
            raise ValueError(
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: the bot "
                "needs TELEGRAM_BOT_TOKEN (from @BotFather), BRIDGE_URL (where the bridge "
                "listens) and BRIDGE_API_KEY (one of the bridge's BRIDGE_API_KEYS)"
            )
        return cls(*(environ[name].strip() for name in SETTINGS))


class BridgeClient:
    """``POST /register``, ``/mute`` and ``/unmute`` with a bearer key, asynchronously."""

    def __init__(self, base_url: str, api_key: str, client: httpx.AsyncClient | None = None):
        self.client = client or httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0))
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}

    async def register(self, token: int, **identifiers) -> dict:
        """Register a chat id; the bridge's registration (``httpx.HTTPError`` on failure)."""
        body = {"token": token, **{k: v for k, v in identifiers.items() if v is not None}}
        response = await self.client.post(f"{self.base_url}/register", json=body,
                                          headers=self.headers)
        response.raise_for_status()
        return response.json()["registrations"][0]

    async def mute(self, token: int, duration: int | None = None) -> dict:
        """Mute a chat's marketing messages (until unmuted when ``duration`` is None);
        ``httpx.HTTPStatusError`` with 404 when the bridge has no registration of it."""
        body = {"token": token} if duration is None else {"token": token, "duration": duration}
        response = await self.client.post(f"{self.base_url}/mute", json=body,
                                          headers=self.headers)
        response.raise_for_status()
        return response.json()

    async def unmute(self, token: int) -> dict:
        response = await self.client.post(f"{self.base_url}/unmute", json={"token": token},
                                          headers=self.headers)
        response.raise_for_status()
        return response.json()

    async def aclose(self) -> None:
        await self.client.aclose()


def start_registration(update: Update) -> dict | None:
    """What ``/start`` registers: the private chat's id and the user's external id."""
    chat, user = update.effective_chat, update.effective_user
    if chat is None or user is None or chat.type != "private":
        return None
    return {"token": chat.id, "externalCustomerId": f"tg-{user.id}"}


def contact_registration(update: Update) -> dict | None:
    """What a shared contact registers: the chat id with the user's own phone number."""
    message = update.effective_message
    if message is None or message.contact is None or update.effective_chat is None:
        return None
    contact = message.contact
    if update.effective_user is None or contact.user_id != update.effective_user.id:
        return None  # someone else's contact card: not this user's phone
    return {"token": update.effective_chat.id, "phone": contact.phone_number}


async def _register(context: ContextTypes.DEFAULT_TYPE, body: dict) -> bool:
    bridge: BridgeClient = context.bot_data["bridge"]
    try:
        await bridge.register(**body)
    except httpx.HTTPError as exc:
        log.warning("bridge registration failed: %s", type(exc).__name__)
        return False
    return True


async def on_start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    body = start_registration(update)
    if body is None:
        return
    await _register(context, body)
    keyboard = ReplyKeyboardMarkup(
        [[KeyboardButton("Share my phone number", request_contact=True)]],
        one_time_keyboard=True, resize_keyboard=True,
    )
    await update.effective_message.reply_text(
        "Welcome! Share your phone number to get your offers here.", reply_markup=keyboard
    )


async def on_contact(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    body = contact_registration(update)
    if body is None:
        return
    if await _register(context, body):
        await update.effective_message.reply_text("Thanks, you're subscribed.")
    else:
        await update.effective_message.reply_text("Sorry, that did not work; try again later.")


async def _mute(update: Update, context: ContextTypes.DEFAULT_TYPE, mute: bool) -> None:
    chat = update.effective_chat
    if chat is None or chat.type != "private":
        return
    bridge: BridgeClient = context.bot_data["bridge"]
    try:
        await (bridge.mute(chat.id) if mute else bridge.unmute(chat.id))
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            await update.effective_message.reply_text("You're not subscribed yet: send /start.")
            return
        log.warning("bridge %s failed: HTTP %s", "mute" if mute else "unmute",
                    exc.response.status_code)
        await update.effective_message.reply_text("Sorry, that did not work; try again later.")
        return
    except httpx.HTTPError as exc:
        log.warning("bridge %s failed: %s", "mute" if mute else "unmute", type(exc).__name__)
        await update.effective_message.reply_text("Sorry, that did not work; try again later.")
        return
    await update.effective_message.reply_text(
        "Done: no more offers here until you send /resume." if mute
        else "Welcome back: your offers will arrive here again.")


async def on_stop(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await _mute(update, context, mute=True)


async def on_resume(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await _mute(update, context, mute=False)


def build_application(bot_token: str, bridge: BridgeClient,
                      request: BaseRequest | None = None) -> Application:
    """The bot; ``request``: how it reaches Telegram (tests pass one of their own)."""
    builder = Application.builder().token(bot_token)
    if request is not None:
        builder = builder.request(request).get_updates_request(request)

    async def close_bridge(_application: Application) -> None:
        await bridge.aclose()

    application = builder.post_shutdown(close_bridge).build()
    application.bot_data["bridge"] = bridge
    application.add_handler(CommandHandler("start", on_start))
    application.add_handler(CommandHandler("stop", on_stop))
    application.add_handler(CommandHandler("resume", on_resume))
    application.add_handler(MessageHandler(filters.CONTACT, on_contact))
    return application


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    try:
        settings = Settings.from_environment(os.environ)
    except ValueError as exc:
        print(f"telegram_bot: {exc}", file=sys.stderr)
        sys.exit(2)
    bridge = BridgeClient(settings.bridge_url, settings.bridge_api_key)
    build_application(settings.bot_token, bridge).run_polling()


if __name__ == "__main__":
    main()
