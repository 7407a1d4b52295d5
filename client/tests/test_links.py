"""The link calls of BridgeClient and AsyncBridgeClient against a mocked bridge: deep links
(create, status, revoke), the chat-first codes (create, claim), what each sends, its
typed result, its BridgeError, which are repeated, and a bridge reached in-process."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from conftest import KEY, URL, Bridge, error
from reteno_bridge_client import (
    AsyncBridgeClient,
    BridgeClient,
    BridgeError,
    ClaimCode,
    Link,
    LinkStatus,
    Registration,
)
from reteno_bridge_client.ordering import OrderedBridge

LINK = {
    "id": 12,
    "url": "https://t.me/acme_bot?start=q1W2e3R4t5Y6u7I8o9P0aSdFgH",
    "payload": "q1W2e3R4t5Y6u7I8o9P0aSdFgH",
    "expiresAt": "2026-12-08T09:00:00+00:00",
    "qr": "/bridge/links/12/qr.svg",
}
STATUS = {
    "id": 12,
    "state": "used",
    "expiresAt": "2026-12-08T09:00:00+00:00",
    "usedAt": "2026-12-07T09:30:00+00:00",
    "token": "555001",
}
CODE = {"code": "K7Q2M9", "expiresAt": "2026-12-07T09:15:00+00:00"}
REGISTERED = {
    "registrations": [
        {
            "id": 7,
            "token": "555001",
            "matchedBy": "contactId",
            "state": "queued",
            "duplicate": False,
            "conflict": False,
        }
    ]
}
EXPIRES = datetime(2026, 12, 8, 9, tzinfo=UTC)


def sync_client(bridge, policy=None):
    return BridgeClient(URL, KEY, transport=httpx.MockTransport(bridge), retry=policy)


def test_create_link_sends_the_identifiers_as_register_takes_them_and_reads_the_link(policy):
    bridge = Bridge((201, LINK))
    with sync_client(bridge, policy) as client:
        link = client.create_link(
            contact_id=42, external_customer_id="c-1", phone=None, email="ann@example.com"
        )
    assert link == Link(12, LINK["url"], LINK["payload"], EXPIRES, "/bridge/links/12/qr.svg")
    [request] = bridge.requests
    assert (request.method, request.url.path) == ("POST", "/links")
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert bridge.bodies() == [
        {"contactId": 42, "externalCustomerId": "c-1", "email": "ann@example.com"}
    ]


def test_create_link_sends_a_ttl_in_seconds_or_as_written(policy):
    bridge = Bridge((201, LINK))
    with sync_client(bridge, policy) as client:
        client.create_link(ttl=3600, phone="+380956490955")
        client.create_link(ttl=timedelta(days=2), phone="+380956490955")
        client.create_link(ttl="12h", phone="+380956490955")
    assert [body["ttl"] for body in bridge.bodies()] == [3600, 172800, "12h"]


def test_create_link_refuses_an_unknown_identifier_before_any_call(policy):
    bridge = Bridge((201, LINK))
    with sync_client(bridge, policy) as client, pytest.raises(TypeError, match="contactId"):
        client.create_link(contactId=42)
    assert bridge.requests == []


def test_link_status_quotes_the_id_and_reads_times_and_the_chat(policy):
    bridge = Bridge(
        (200, STATUS), (200, {**STATUS, "state": "pending", "usedAt": None, "token": None})
    )
    with sync_client(bridge, policy) as client:
        used = client.link_status(12)
        pending = client.link_status("a/b c")
    assert used == LinkStatus(
        12, "used", EXPIRES, datetime(2026, 12, 7, 9, 30, tzinfo=UTC), "555001"
    )
    assert (pending.state, pending.used_at, pending.token) == ("pending", None, None)
    first, second = bridge.requests
    assert (first.method, first.url.raw_path) == ("GET", b"/links/12")
    assert second.url.raw_path == b"/links/a%2Fb%20c"


def test_revoke_link_deletes_it_and_returns_nothing(policy):
    bridge = Bridge((204, None))
    with sync_client(bridge, policy) as client:
        assert client.revoke_link(12) is None
    [request] = bridge.requests
    assert (request.method, request.url.path, request.content) == ("DELETE", "/links/12", b"")


def test_a_chat_first_code_is_made_for_the_chat_and_claimed_with_identifiers(policy):
    bridge = Bridge((201, CODE), (202, REGISTERED))
    with sync_client(bridge, policy) as client:
        code = client.create_claim(555001)
        registration = client.claim(code.code, contact_id=42)
    assert code == ClaimCode("K7Q2M9", datetime(2026, 12, 7, 9, 15, tzinfo=UTC))
    assert registration == Registration(7, "555001", "contactId", "queued", False, False)
    assert [(r.method, r.url.path) for r in bridge.requests] == [
        ("POST", "/links/claims"),
        ("POST", "/links/claims/K7Q2M9"),
    ]
    assert bridge.bodies() == [{"token": 555001}, {"contactId": 42}]


@pytest.mark.parametrize(
    ("call", "answer"),
    [
        (lambda c: c.link_status(99), error(404, "No such link.")),
        (lambda c: c.revoke_link(12), error(409, "The link was used.")),
        (lambda c: c.claim("K7Q2M9", email="a@example.com"), error(410, "The code was used.")),
        (lambda c: c.claim("NOPE", email="a@example.com"), error(404, "No such code.")),
    ],
)
def test_a_refusal_is_one_bridge_error_with_the_bridges_message(policy, call, answer):
    bridge = Bridge(answer)
    with sync_client(bridge, policy) as client, pytest.raises(BridgeError) as raised:
        call(client)
    assert (raised.value.status, raised.value.message) == (answer[0], answer[1]["message"])
    assert len(bridge.requests) == 1


def test_an_invalid_link_is_a_422_with_the_field_errors(policy):
    bridge = Bridge(error(422, "The body is invalid.", {"ttl": ["Not a valid duration."]}))
    with sync_client(bridge, policy) as client, pytest.raises(BridgeError) as raised:
        client.create_link(ttl="soon", email="ann@example.com")
    assert raised.value.status == 422
    assert raised.value.errors == {"ttl": ["Not a valid duration."]}


def test_link_calls_are_repeated_after_a_bridge_failure(clock, policy):
    bridge = Bridge(error(503, "down"), (201, LINK))
    with sync_client(bridge, policy) as client:
        assert client.create_link(email="ann@example.com").id == 12
    assert len(bridge.requests) == 2 and clock.waits == [0.25]


@pytest.mark.parametrize("failure", [error(503, "down"), httpx.ConnectError("refused")])
def test_a_claim_is_not_repeated_its_code_is_single_use(clock, policy, failure):
    bridge = Bridge(failure, (202, REGISTERED))
    with sync_client(bridge, policy) as client, pytest.raises(BridgeError):
        client.claim("K7Q2M9", email="ann@example.com")
    assert len(bridge.requests) == 1 and clock.waits == []


def test_the_async_client_makes_the_same_link_calls():
    bridge = Bridge((201, LINK), (200, STATUS), (204, None), (201, CODE), (202, REGISTERED))

    async def go():
        async with AsyncBridgeClient(URL, KEY, transport=httpx.MockTransport(bridge)) as client:
            return (
                await client.create_link(ttl="30d", email="ann@example.com"),
                await client.link_status(12),
                await client.revoke_link(12),
                await client.create_claim("555001"),
                await client.claim("K7Q2M9", external_customer_id="c-1"),
            )

    link, status, revoked, code, registration = asyncio.run(go())
    assert (link.expires_at, status.token, revoked) == (EXPIRES, "555001", None)
    assert (code.code, registration.id) == ("K7Q2M9", 7)
    assert [(r.method, r.url.path) for r in bridge.requests] == [
        ("POST", "/links"),
        ("GET", "/links/12"),
        ("DELETE", "/links/12"),
        ("POST", "/links/claims"),
        ("POST", "/links/claims/K7Q2M9"),
    ]
    assert bridge.bodies() == [
        {"ttl": "30d", "email": "ann@example.com"},
        None,
        None,
        {"token": "555001"},
        {"externalCustomerId": "c-1"},
    ]


@pytest.mark.parametrize(
    ("call", "answer"),
    [
        (lambda c: c.create_link(), error(422, "invalid", {"_schema": ["No identifier."]})),
        (lambda c: c.link_status(99), error(404, "No such link.")),
        (lambda c: c.revoke_link(12), error(409, "The link was used.")),
        (lambda c: c.create_claim(1), error(422, "invalid", {"token": ["Not a chat id."]})),
        (lambda c: c.claim("K7Q2M9", email="a@example.com"), error(410, "The code expired.")),
    ],
)
def test_the_async_client_raises_the_same_bridge_errors(policy, call, answer):
    bridge = Bridge(answer)

    async def go():
        async with AsyncBridgeClient(
            URL, KEY, transport=httpx.MockTransport(bridge), retry=policy
        ) as client:
            await call(client)

    with pytest.raises(BridgeError) as raised:
        asyncio.run(go())
    assert raised.value.status == answer[0] and raised.value.errors == answer[1]["errors"]


def test_a_bot_handlers_create_claim_waits_for_the_chats_earlier_calls():
    arrived, ended = [], []

    async def bridge(request):
        arrived.append(request.url.path)
        await asyncio.sleep(0.05 if request.url.path == "/register" else 0)
        ended.append(request.url.path)
        return httpx.Response(201, json=CODE if "claims" in request.url.path else REGISTERED)

    async def go():
        ordered = OrderedBridge(AsyncBridgeClient(URL, KEY, transport=httpx.MockTransport(bridge)))
        first = ordered.register(555001, email="ann@example.com")
        code = await ordered.create_claim(555001)
        await first
        return code

    assert asyncio.run(go()).code == "K7Q2M9"
    assert arrived == ended == ["/register", "/links/claims"]


def test_a_website_reaches_a_bridge_in_its_own_wsgi_app_through_the_transport():
    seen = []

    def website(environ, start_response):  # a WSGI app with the bridge under /bridge
        seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
        body = json.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
        answer = json.dumps({**LINK, "payload": body["email"]}).encode()
        start_response("201 CREATED", [("Content-Type", "application/json")])
        return [answer]

    transport = httpx.WSGITransport(app=website)
    with BridgeClient("http://site.test/bridge", KEY, transport=transport) as client:
        link = client.create_link(email="ann@example.com")
    assert link.payload == "ann@example.com" and seen == [("POST", "/bridge/links")]
