"""An example bot (python-telegram-bot) that registers its users with the bridge.

It long-polls Telegram and, for every ``/start``, tells the bridge the user's
chat id together with an identifier the company knows the user by:

* ``/start``            → ``externalCustomerId = "tg-<telegram user id>"``
* a shared contact      → ``phone`` (the button "Share my phone number")

Run it::

    pip install python-telegram-bot requests
    TELEGRAM_BOT_TOKEN=123:abc BRIDGE_URL=http://127.0.0.1:5000 \
    BRIDGE_API_KEY=<a key from BRIDGE_API_KEYS> python examples/telegram_bot.py

The bot never talks to Reteno itself: the bridge queues the token durably and
delivers it, so a slow or failing Reteno never slows the bot down.
Deep links signed by the bridge (``flask --app app bridge link``) need no code
here: point Telegram's webhook at the bridge's ``/telegram/webhook`` instead.
"""

from __future__ import annotations

import logging
import os

import requests
from telegram import KeyboardButton, ReplyKeyboardMarkup, Update
from telegram.ext import Application, CommandHandler, ContextTypes, MessageHandler, filters

log = logging.getLogger("example-bot")


class BridgeClient:
    """The two lines of HTTP a bot needs: POST /register with a bearer key."""

    def __init__(self, base_url: str, api_key: str, session: requests.Session | None = None):
        self.url = base_url.rstrip("/") + "/register"
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def register(self, token: int, **identifiers) -> dict:
        """Register a chat id; returns the bridge's registration (raises on 4xx/5xx)."""
        body = {"token": token, **{k: v for k, v in identifiers.items() if v is not None}}
        response = self.session.post(self.url, json=body, timeout=(3, 10))
        response.raise_for_status()
        return response.json()["registrations"][0]


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


async def on_start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    body = start_registration(update)
    if body is None:
        return
    bridge: BridgeClient = context.bot_data["bridge"]
    try:
        bridge.register(**body)
    except requests.RequestException as exc:
        log.warning("bridge registration failed: %s", type(exc).__name__)
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
    try:
        context.bot_data["bridge"].register(**body)
    except requests.RequestException as exc:
        log.warning("bridge registration failed: %s", type(exc).__name__)
        return
    await update.effective_message.reply_text("Thanks, you're subscribed.")


def build_application(bot_token: str, bridge: BridgeClient) -> Application:
    application = Application.builder().token(bot_token).build()
    application.bot_data["bridge"] = bridge
    application.add_handler(CommandHandler("start", on_start))
    application.add_handler(MessageHandler(filters.CONTACT, on_contact))
    return application


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    bridge = BridgeClient(os.environ["BRIDGE_URL"], os.environ["BRIDGE_API_KEY"])
    build_application(os.environ["TELEGRAM_BOT_TOKEN"], bridge).run_polling()


if __name__ == "__main__":
    main()
