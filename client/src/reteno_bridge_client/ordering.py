"""Per-chat order for an async bot: calls about one chat reach the bridge one after
another, in the order they were asked for, while other chats' calls go on at once.

:class:`ChatOrder` hands out turns: :meth:`ChatOrder.run` takes the chat's turn at the
moment it is called (synchronously, so an adapter takes it while the framework is
still handling that update) and makes the call once the chat's earlier calls are done,
whether they succeeded or not, awaited or not. Memory stays bounded: a chat has an entry only while
one of its calls waits or runs, and at most ``max_waiting`` calls of one chat wait;
past that, the call is refused at once with a :class:`BridgeError` (it is not made).

:class:`OrderedBridge` is the :class:`AsyncBridgeClient` as a bot's handlers get it from
the adapters: its calls that name a chat take that chat's turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from .calls import Token
from .client import AsyncBridgeClient
from .errors import BridgeError
from .results import ClaimCode, EventResult, HistoryEvent, MuteResult, Registration

T = TypeVar("T")

#: Calls of one chat that may wait behind the one in flight: with the bridge down, each
#: takes up to the client's deadline, so this bounds both memory and a chat's delay.
MAX_WAITING = 20


class ChatOrder:
    """Turns per chat; see the module's docstring."""

    def __init__(self, max_waiting: int = MAX_WAITING):
        self.max_waiting = max_waiting
        # chat -> (the last turn's "done" future, turns taken and not yet done)
        self._chats: dict[int, tuple[asyncio.Future[None], int]] = {}
        self._tasks: set[asyncio.Task] = set()  # the calls running (asyncio keeps weak refs)

    def __len__(self) -> int:
        """Chats with a call waiting or running (the entries kept)."""
        return len(self._chats)

    def pending(self, chat: int) -> int:
        """Calls of ``chat`` waiting or running."""
        return self._chats.get(chat, (None, 0))[1]

    def run(self, chat: int, call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        """Take ``chat``'s turn now; the awaitable makes ``call`` when the turn comes.
        :class:`BridgeError` at once if ``max_waiting`` calls of the chat already wait."""
        previous, taken = self._chats.get(chat, (None, 0))
        if taken > self.max_waiting:
            raise BridgeError(
                None,
                f"{taken} calls for this chat are already in flight or "
                "waiting for the bridge; this one was not made",
            )
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._chats[chat] = (done, taken + 1)
        # a task, not a bare coroutine: the call is made and the turn handed on even if
        # nobody awaits it (a forgotten ``await`` must not stall the chat for good)
        task = loop.create_task(self._when_turn(chat, previous, done, call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _when_turn(
        self,
        chat: int,
        previous: asyncio.Future[None] | None,
        done: asyncio.Future[None],
        call: Callable[[], Awaitable[T]],
    ) -> T:
        try:
            if previous is not None:
                await asyncio.shield(previous)
            return await call()
        finally:
            if previous is not None and not previous.done():  # cancelled while waiting:
                previous.add_done_callback(lambda _: done.set_result(None))  # keep the order
            else:
                done.set_result(None)
            last, taken = self._chats[chat]
            if taken == 1:
                del self._chats[chat]  # idle: no entry left for the chat
            else:
                self._chats[chat] = (last, taken - 1)

    async def idle(self) -> None:
        """Wait until no call of any chat waits or runs."""
        while self._chats:
            await asyncio.gather(*(last for last, _ in list(self._chats.values())))


def chat_of(token: Token) -> int:
    return int(token)


class OrderedBridge:
    """An :class:`AsyncBridgeClient` whose calls about a chat go in that chat's order
    (``register``, ``mute``, ``unmute``, ``send_event``, ``history``, ``create_claim``,
    ``forward_update``); ``client`` is the client itself, for calls about no chat in
    particular (``tokens``, ``create_link``)."""

    def __init__(self, client: AsyncBridgeClient, order: ChatOrder | None = None):
        self.client = client
        self.order = order if order is not None else ChatOrder()

    def register(self, token: Token, **identifiers: Any) -> Awaitable[Registration]:
        return self.order.run(chat_of(token), lambda: self.client.register(token, **identifiers))

    def mute(self, token: Token, duration: int | timedelta | None = None) -> Awaitable[MuteResult]:
        return self.order.run(chat_of(token), lambda: self.client.mute(token, duration))

    def unmute(self, token: Token) -> Awaitable[MuteResult]:
        return self.order.run(chat_of(token), lambda: self.client.unmute(token))

    def send_event(
        self,
        token: Token,
        event_type_key: str,
        params: Mapping[str, Any] | None = None,
        time: datetime | float | str | None = None,
    ) -> Awaitable[EventResult]:
        """A custom event about the chat, after its registration if that came first."""
        return self.order.run(
            chat_of(token), lambda: self.client.send_event(token, event_type_key, params, time)
        )

    def history(self, token: Token) -> Awaitable[list[HistoryEvent]]:
        return self.order.run(chat_of(token), lambda: self.client.history(token))

    def create_claim(self, token: Token) -> Awaitable[ClaimCode]:
        return self.order.run(chat_of(token), lambda: self.client.create_claim(token))

    def forward_update(self, chat: int, update: Mapping[str, Any]) -> Awaitable[None]:
        """``update`` (about ``chat``) to the bridge, in the chat's order."""
        return self.order.run(chat, lambda: self.client.forward_update(update))

    async def idle(self) -> None:
        await self.order.idle()
