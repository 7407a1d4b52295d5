"""python-telegram-bot (v21+): ``setup(application, client)`` forwards to the bridge
what it acts on and puts the client in ``bot_data["bridge"]``.

A handler in an early group (``group=-100``, before the bot's own handlers in group 0,
which still see every update) takes each private chat's ``my_chat_member`` and
``/start`` (with a payload or without). Its callback returns at once: it takes the
chat's turn while PTB is still handling that update and hands the forward to
``Application.create_task`` (awaited by ``Application.stop``; errors go to the error
handlers). So it holds up no update, as ``block=False`` would, and unlike
``block=False`` (whose callback starts on a later turn of the event loop, when a later
update's handler may already have called the bridge) the chat's order is fixed in the
order of its updates.

``bot_data["bridge"]`` is an :class:`~reteno_bridge_client.ordering.OrderedBridge`:
``await context.bot_data["bridge"].mute(chat_id)`` waits for the chat's earlier calls,
the forwards among them. With persistence that stores ``bot_data``, keep the object
``setup`` returns instead (it cannot be pickled).

PTB's ``concurrent_updates``: by default (off) PTB handles one update at a time, so a
slow bridge call awaited in a handler holds up every chat. Turn it on
(``ApplicationBuilder().concurrent_updates(True)``) to let other chats go on; the
adapter keeps each chat's calls in order either way, in the order its updates reach
the handler.

A forward the bridge did not take within the client's deadline is logged and lost
(:mod:`reteno_bridge_client.forwarding`). PTB never turns a handler's error into the
webhook's answer (its webhook server answers Telegram once the update is queued, and
``process_update`` hands errors to the error handlers), so an error cannot make
Telegram deliver an update again: ``raise_on_failure=True`` only hands the
:class:`~reteno_bridge_client.BridgeError` to the application's error handlers.
"""

from __future__ import annotations

from telegram import Update
from telegram.ext import Application, ContextTypes, TypeHandler

from .client import AsyncBridgeClient
from .forwarding import Forwarder
from .ordering import MAX_WAITING, ChatOrder, OrderedBridge

GROUP = -100


def setup(
    application: Application,
    client: AsyncBridgeClient,
    *,
    group: int = GROUP,
    raise_on_failure: bool = False,
    max_waiting: int = MAX_WAITING,
) -> OrderedBridge:
    """Forward ``application``'s blocks, unblocks and deep links to the bridge; the
    returned :class:`OrderedBridge` is also ``bot_data["bridge"]``. ``max_waiting``:
    calls of one chat that may wait behind the one in flight (past it a call is
    refused)."""
    if application.bot_data.get("bridge") is not None:
        raise RuntimeError(
            "setup() was already called on this application: every update would be forwarded twice"
        )
    bridge = OrderedBridge(client, ChatOrder(max_waiting))
    forwarder = Forwarder(bridge, raise_on_failure)

    async def forward(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        sending = forwarder.forward(update.to_dict())  # the chat's turn is taken here
        if sending is not None:
            context.application.create_task(sending, update=update)

    application.bot_data["bridge"] = bridge
    application.add_handler(TypeHandler(Update, forward, block=True), group=group)
    return bridge
