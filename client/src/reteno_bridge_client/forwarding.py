"""What the adapters forward to the bridge, and what a lost forward leaves in the log.

The bridge acts on two kinds of Telegram update, both about a private chat (the
chat's id is the token): ``my_chat_member`` (the user blocked or unblocked the bot)
and a message ``/start`` (with a payload, a deep link; with or without one, a sign of
life, which keeps the chat out of the stale-token report). :class:`Forwarder` takes such an
update's turn in its chat's order (:mod:`reteno_bridge_client.ordering`) and sends it
with the client's retries and deadline. A forward the bridge did not take is either
raised (``raise_on_failure``, for a webhook-mode bot that answers Telegram with an
error so that Telegram delivers the update again) or logged as one ERROR line on the
``reteno_bridge_client`` logger, with the chat id cut to its last three digits, and the
bot goes on: that block, unblock, deep link or sign of life is then lost.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Mapping
from typing import Any

from .errors import BridgeError
from .ordering import OrderedBridge

log = logging.getLogger("reteno_bridge_client")

_START = re.compile(r"/start(?:@\w+)?(?:\s|$)")
_LONG_NUMBER = re.compile(r"-?\d{4,}")


def chat_to_forward(update: Mapping[str, Any]) -> int | None:
    """The private chat an update is about, if the bridge acts on it; else None."""
    if "my_chat_member" in update:
        container = update["my_chat_member"]
    else:
        container = update.get("message")
        text = container.get("text") if isinstance(container, dict) else None
        if not isinstance(text, str) or not _START.match(text):
            return None
    chat = container.get("chat") if isinstance(container, dict) else None
    if not isinstance(chat, dict) or chat.get("type") != "private":
        return None
    chat_id = chat.get("id")
    return chat_id if isinstance(chat_id, int) else None


def masked(chat: int | str) -> str:
    """A chat id as log lines show it: its last three digits (``***001``)."""
    return "***" + str(chat)[-3:]


def _masked_text(text: str) -> str:
    return _LONG_NUMBER.sub(lambda m: masked(m.group()), text)


class Forwarder:
    """Forwards what the bridge acts on, each in its chat's order."""

    def __init__(self, bridge: OrderedBridge, raise_on_failure: bool = False):
        self.bridge = bridge
        self.raise_on_failure = raise_on_failure

    def forward(self, update: Mapping[str, Any]) -> Awaitable[None] | None:
        """None if the bridge does not act on ``update``; else the chat's turn is taken
        now and the awaitable sends it (and raises or logs, see the module)."""
        chat = chat_to_forward(update)
        if chat is None:
            return None
        try:
            sending = self.bridge.forward_update(chat, update)
        except BridgeError as error:  # too many calls of the chat already waiting
            return self._failed(chat, update, error, time.monotonic())
        return self._send(chat, update, sending)

    async def _send(self, chat: int, update: Mapping[str, Any], sending: Awaitable[None]) -> None:
        started = time.monotonic()
        try:
            await sending
        except BridgeError as error:
            await self._failed(chat, update, error, started)

    async def _failed(
        self, chat: int, update: Mapping[str, Any], error: BridgeError, started: float
    ) -> None:
        if self.raise_on_failure:
            raise error
        kind = "my_chat_member" if "my_chat_member" in update else "/start"
        log.error(
            "reteno-bridge: update %s (%s) of chat %s lost after %.1f s: %s",
            update.get("update_id"),
            kind,
            masked(chat),
            time.monotonic() - started,
            _masked_text(str(error)),
        )
