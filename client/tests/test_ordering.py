"""Per-chat order (ChatOrder, OrderedBridge) and the Forwarder: one chat's calls in the
order asked for while other chats go on, bounded waiting, and one log line per lost
forward with the chat id masked."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from conftest import KEY, URL
from reteno_bridge_client import AsyncBridgeClient, BridgeError, RetryPolicy
from reteno_bridge_client.forwarding import Forwarder, chat_to_forward
from reteno_bridge_client.ordering import ChatOrder, OrderedBridge

PRIVATE = {"id": 5550001, "type": "private"}


def start(chat=PRIVATE, text="/start abc", update_id=1):
    return {
        "update_id": update_id,
        "message": {"message_id": 1, "date": 1, "chat": chat, "text": text},
    }


def member(chat=PRIVATE, status="kicked"):
    return {
        "update_id": 2,
        "my_chat_member": {"chat": chat, "date": 1, "new_chat_member": {"status": status}},
    }


class SlowBridge:
    """Answers every call after ``delay`` seconds (``/register`` of chat 1 slower);
    keeps (path, token) in the order calls arrive and in the order they end."""

    def __init__(self, delay=0.01):
        self.delay = delay
        self.arrived: list[tuple[str, object]] = []
        self.ended: list[tuple[str, object]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        call = (request.url.path, body.get("token") or body.get("update_id"))
        self.arrived.append(call)
        await asyncio.sleep(self.delay * (10 if call == ("/register", 1) else 1))
        self.ended.append(call)
        return httpx.Response(
            202,
            json={
                "registrations": [
                    {
                        "id": 1,
                        "token": "1",
                        "matchedBy": "email",
                        "state": "queued",
                        "duplicate": False,
                        "conflict": False,
                    }
                ]
            }
            if request.url.path == "/register"
            else {"token": "1", "muted": True, "state": "queued"},
        )


def ordered(bridge, **order) -> OrderedBridge:
    return OrderedBridge(
        AsyncBridgeClient(URL, KEY, transport=httpx.MockTransport(bridge)), ChatOrder(**order)
    )


def test_one_chats_calls_go_in_order_while_other_chats_go_on():
    bridge = SlowBridge()

    async def go():
        client = ordered(bridge)
        first = client.register(1, email="a@example.com")  # slow
        then = client.mute(1)
        other = client.mute(2)
        await asyncio.gather(then, other, first)  # awaited in another order: no matter
        assert len(client.order) == 0  # idle chats keep no entry

    asyncio.run(go())
    assert bridge.arrived.index(("/mute", 1)) > bridge.ended.index(("/register", 1))
    assert bridge.ended.index(("/mute", 2)) < bridge.ended.index(("/register", 1))


def test_a_failed_call_does_not_stop_the_chats_next_one():
    calls = []

    def bridge(request):
        calls.append(request.url.path)
        if request.url.path == "/register":
            return httpx.Response(422, json={"message": "invalid", "errors": {}})
        return httpx.Response(202, json={"token": "1", "muted": True, "state": "queued"})

    async def go():
        client = ordered(bridge)
        first, then = client.register(1, email="x"), client.mute(1)
        with pytest.raises(BridgeError):
            await first
        return await then

    assert asyncio.run(go()).muted and calls == ["/register", "/mute"]


def test_past_max_waiting_a_chats_call_is_refused_at_once():
    async def go():
        client = ordered(SlowBridge(), max_waiting=2)
        calls = [client.mute(1) for _ in range(3)]  # one in flight, two waiting
        with pytest.raises(BridgeError, match="already in flight or waiting"):
            client.mute(1)
        other = client.mute(2)  # another chat is not held back
        await asyncio.gather(*calls, other)
        await client.idle()
        return client.order.pending(1)

    assert asyncio.run(go()) == 0


def test_a_call_nobody_awaits_is_made_and_does_not_hold_the_chat_back():
    bridge = SlowBridge()

    async def go():
        client = ordered(bridge)
        client.register(1, email="a@example.com")  # a forgotten await
        muted = await asyncio.wait_for(client.mute(1), 10)
        await client.idle()
        return muted.muted, len(client.order)

    assert asyncio.run(go()) == (True, 0)
    assert bridge.arrived == [("/register", 1), ("/mute", 1)]


def test_a_call_cancelled_while_waiting_keeps_the_next_one_behind_the_first():
    ended = []

    async def call(name, delay):
        await asyncio.sleep(delay)
        ended.append(name)

    async def go():
        order = ChatOrder()
        first = asyncio.ensure_future(order.run(1, lambda: call("first", 0.05)))
        second = asyncio.ensure_future(order.run(1, lambda: call("second", 0)))
        third = asyncio.ensure_future(order.run(1, lambda: call("third", 0)))
        await asyncio.sleep(0.01)
        second.cancel()
        await asyncio.gather(first, third)
        return len(order)

    assert asyncio.run(go()) == 0 and ended == ["first", "third"]


@pytest.mark.parametrize(
    ("update", "chat"),
    [
        (start(), 5550001),
        (start(text="/start@shop_bot abc"), 5550001),
        (member(), 5550001),
        (member(status="member"), 5550001),
        (start(text="/start"), 5550001),  # no payload: a sign of life all the same
        (start(text="/start@shop_bot"), 5550001),
        (start(text="/starting x"), None),
        (start(text="hello"), None),
        (start(chat={"id": -100123, "type": "supergroup"}), None),
        (member(chat={"id": -100123, "type": "group"}), None),
        ({"update_id": 3, "callback_query": {"id": "1"}}, None),
    ],
)
def test_what_is_forwarded(update, chat):
    assert chat_to_forward(update) == chat


def down_client():
    def refused(request):
        raise httpx.ConnectError("[Errno 111] Connection refused")

    return AsyncBridgeClient(
        URL,
        KEY,
        transport=httpx.MockTransport(refused),
        retry=RetryPolicy(deadline=0.2, backoff=0.01),
    )


def test_a_lost_forward_is_one_error_line_with_the_chat_masked(caplog):
    async def go():
        forwarder = Forwarder(OrderedBridge(down_client()))
        assert forwarder.forward(start(text="hello")) is None
        await forwarder.forward(start())

    with caplog.at_level(logging.DEBUG, logger="reteno_bridge_client"):
        asyncio.run(go())
    [line] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.levelno == logging.ERROR
    assert "update 1 (/start) of chat ***001 lost after" in line.getMessage()
    assert "ConnectError" in line.getMessage() and "5550001" not in caplog.text


def test_raise_on_failure_raises_instead_of_logging(caplog):
    async def go():
        await Forwarder(OrderedBridge(down_client()), raise_on_failure=True).forward(member())

    with pytest.raises(BridgeError) as raised:
        asyncio.run(go())
    assert raised.value.status is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
