"""aiogram 3: ``setup(dispatcher, client)`` forwards to the bridge what it acts on and
gives every handler the client as ``bridge``.

An outer middleware on the dispatcher's updates sees each update before any router:
a private chat's ``my_chat_member`` and ``/start`` (with a payload or without) take
their chat's turn there and go to the bridge's ``/telegram/webhook`` with the client's
bearer key, then the update goes on to the bot's own handlers (``/start`` reaches them
as usual).

aiogram handles each update as a task of its own. Handlers get ``bridge``, an
:class:`~reteno_bridge_client.ordering.OrderedBridge`: its calls about a chat
(``await bridge.mute(message.chat.id)``) wait for that chat's earlier calls, the
forwards among them, so a ``/stop`` right after ``/start`` mutes a chat the bridge
already registered, while other chats go on concurrently.

By default a forward runs in the background and the handlers do not wait for it; one
the bridge did not take within the client's deadline is logged and lost (see
:mod:`reteno_bridge_client.forwarding`). With ``raise_on_failure=True`` (a webhook-mode
bot fed with ``handle_in_background=False``) the middleware waits for the forward and
raises :class:`~reteno_bridge_client.BridgeError`, so that Telegram gets an error
answer and delivers the update again; the handlers then run only once it is taken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import Dispatcher
from aiogram.dispatcher.middlewares.base import BaseMiddleware
from aiogram.types import TelegramObject, Update

from .client import AsyncBridgeClient
from .forwarding import Forwarder
from .ordering import MAX_WAITING, ChatOrder, OrderedBridge


class BridgeMiddleware(BaseMiddleware):
    """The outer update middleware ``setup`` installs."""

    def __init__(self, forwarder: Forwarder):
        self.forwarder = forwarder
        self._background: set[asyncio.Task[None]] = set()

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if isinstance(event, Update):
            sending = self.forwarder.forward(
                event.model_dump(mode="json", exclude_none=True, by_alias=True)
            )
            if sending is not None and self.forwarder.raise_on_failure:
                await sending
            elif sending is not None:
                task = asyncio.ensure_future(sending)
                self._background.add(task)  # a reference, so the task is not collected
                task.add_done_callback(self._background.discard)
        return await handler(event, data)


def setup(
    dispatcher: Dispatcher,
    client: AsyncBridgeClient,
    *,
    raise_on_failure: bool = False,
    max_waiting: int = MAX_WAITING,
) -> OrderedBridge:
    """Forward ``dispatcher``'s blocks, unblocks and deep links to the bridge; handlers
    get the returned :class:`OrderedBridge` as ``bridge``. ``max_waiting``: calls of
    one chat that may wait behind the one in flight (past it a call is refused)."""
    if dispatcher.get("bridge") is not None:
        raise RuntimeError(
            "setup() was already called on this dispatcher: every update would be forwarded twice"
        )
    bridge = OrderedBridge(client, ChatOrder(max_waiting))
    dispatcher["bridge"] = bridge
    dispatcher.update.outer_middleware(BridgeMiddleware(Forwarder(bridge, raise_on_failure)))

    async def finish_forwards() -> None:
        await bridge.idle()  # each call ends within the client's deadline

    dispatcher.shutdown.register(finish_forwards)
    return bridge
