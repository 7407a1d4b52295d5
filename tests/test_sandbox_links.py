"""The links section of a sandbox bridge's simulator page: the bridge's newest links, and
Press Start, which sends the bridge the update Telegram sends when a chat taps Start."""

from __future__ import annotations

import re
from html import unescape

import pytest

from bridge.sandbox import create_app as create_simulator_app
from tests.conftest import API_KEY

# The sandbox reaches its simulator, and the simulator the bridge, through an in-process
# transport that requests_mock would refuse; no socket is opened.
pytestmark = pytest.mark.real_http

AUTH = {"Authorization": f"Bearer {API_KEY}"}
PAGE = "/sandbox/reteno/"
CHAT = "4400012345"


@pytest.fixture
def sandbox(make_app):
    return make_app(
        RETENO_APP_UUID=None,
        RETENO_API_KEY=None,
        BRIDGE_SANDBOX=True,
        TELEGRAM_BOT_USERNAME="sandbox_bot",
    )


@pytest.fixture
def bridge(sandbox):
    return sandbox.extensions["reteno_bridge"]


@pytest.fixture
def client(sandbox):
    return sandbox.test_client()


def make_link(client, **identifiers) -> dict:
    response = client.post("/links", json={"email": "ann@example.com", **identifiers}, headers=AUTH)
    assert response.status_code == 201, response.data
    return response.json


def page(client) -> str:
    response = client.get(PAGE)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def links_section(html: str) -> str:
    start = html.index("<h2>Links</h2>")
    return html[start : html.index("<h2>", start + 1)]


def row_of(html: str, link_id: str) -> str:
    [row] = re.findall(rf"<tr><td><code>{link_id}</code>.*?</tr>", html, re.S)
    return row


def press_start(client, link_id: str, chat: str = CHAT, **kwargs):
    return client.post(f"{PAGE}links/{link_id}/start", data={"chat": chat}, **kwargs)


def test_the_page_lists_the_newest_links_first_without_personal_data(client, clock):
    first = make_link(client, email="ann@example.com")
    clock.advance(1)
    second = make_link(client, phone="+380501234567", email=None)
    section = links_section(page(client))
    assert section.index(second["id"]) < section.index(first["id"])
    row = row_of(section, first["id"])
    assert "<td>pending</td>" in row and "Press Start" in row
    expires = first["expiresAt"]
    assert f"{expires[:10]} {expires[11:19]} UTC" in row
    for personal in ("ann@example.com", "380501234567", first["payload"], second["payload"]):
        assert personal not in section
    chat = re.search(r'name="chat" value="(\d+)"', row).group(1)
    assert 10**9 <= int(chat) < 10**10  # a fresh test chat id, prefilled


def test_press_start_binds_the_link_and_the_chat_reaches_the_simulator(client, bridge):
    link = make_link(client, email="Ann@Example.com")
    response = press_start(client, link["id"])
    assert response.status_code == 303
    notice = unescape(page_at(client, response.headers["Location"]))
    assert f"Pressed Start on link {link['id']}: the chat is bound to it and registered" in notice

    status = client.get(f"/links/{link['id']}", headers=AUTH).json
    assert status["state"] == "used" and status["token"] == CHAT
    [registration] = client.get("/tokens", query_string={"token": CHAT}, headers=AUTH).json["items"]
    assert registration["email"] == "ann@example.com"
    history = client.get(f"/tokens/{CHAT}/history", headers=AUTH).json["events"]
    kinds = [e["kind"] for e in history]
    assert "link_used" in kinds

    bridge.deliver_once()
    held = client.get("/sandbox/reteno/contacts", query_string={"token": CHAT}).json["contacts"]
    assert held[0]["email"] == "ann@example.com" and held[0]["tokens"] == [CHAT]

    row = row_of(links_section(page(client)), link["id"])
    assert "<td>used</td>" in row and "Press Start" not in row
    assert "…345" in row and CHAT not in row  # the chat, masked


def page_at(client, location: str) -> str:
    response = client.get(location)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_press_start_again_in_the_same_chat_is_a_duplicate(client):
    link = make_link(client)
    assert press_start(client, link["id"]).status_code == 303
    text = press_start(client, link["id"], follow_redirects=True).get_data(as_text=True)
    assert f"Pressed Start on link {link['id']} again in the chat it is bound to" in text
    items = client.get("/tokens", query_string={"token": CHAT}, headers=AUTH).json["items"]
    assert len(items) == 1


def test_press_start_in_another_chat_registers_nothing(client):
    link = make_link(client)
    assert press_start(client, link["id"]).status_code == 303
    response = press_start(client, link["id"], chat="4400099999", follow_redirects=True)
    assert f"Link {link['id']} is bound to another chat: nothing was registered." in (
        response.get_data(as_text=True)
    )
    assert client.get(f"/links/{link['id']}", headers=AUTH).json["token"] == CHAT
    assert (
        client.get("/tokens", query_string={"token": "4400099999"}, headers=AUTH).json["items"]
        == []
    )


def test_an_expired_or_revoked_link_has_no_button_and_registers_nothing(client, clock):
    expiring = make_link(client, ttl=60)
    revoked = make_link(client)
    assert client.delete(f"/links/{revoked['id']}", headers=AUTH).status_code == 204
    clock.advance(61)
    section = links_section(page(client))
    for link, state in ((expiring, "expired"), (revoked, "revoked")):
        row = row_of(section, link["id"])
        assert f"<td>{state}</td>" in row and "Press Start" not in row
        text = press_start(client, link["id"], follow_redirects=True).get_data(as_text=True)
        assert f"Link {link['id']} " in text and "nothing was registered" in text
    assert client.get("/tokens", query_string={"token": CHAT}, headers=AUTH).json["items"] == []


@pytest.mark.parametrize("chat", ["", "ann", "-1001234567890", "0", "1" * 20])
def test_press_start_refuses_what_is_not_a_private_chat(client, chat):
    link = make_link(client)
    text = press_start(client, link["id"], chat=chat, follow_redirects=True).get_data(as_text=True)
    assert "Not a private chat&#39;s id" in text and "Nothing was sent." in text
    assert client.get(f"/links/{link['id']}", headers=AUTH).json["state"] == "pending"


@pytest.mark.parametrize("link_id", ["0" * 32, "not-a-link"])
def test_press_start_on_no_such_link(client, link_id):
    text = press_start(client, link_id, follow_redirects=True).get_data(as_text=True)
    assert "No such link: nothing was sent." in text


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_press_start_refuses_a_cross_site_post(client, headers):
    link = make_link(client)
    response = press_start(client, link["id"], headers=headers)
    assert response.status_code == 403
    assert "Cross-site requests are refused" in response.json["message"]
    assert client.get(f"/links/{link['id']}", headers=AUTH).json["state"] == "pending"


def test_press_start_answers_only_for_a_loopback_host(client):
    link = make_link(client)
    response = press_start(client, link["id"], base_url="http://rebound.example")
    assert response.status_code == 421
    assert client.get(f"/links/{link['id']}", headers=AUTH).json["state"] == "pending"


def test_press_start_from_the_page_itself(client):
    link = make_link(client)
    headers = {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}
    assert press_start(client, link["id"], headers=headers).status_code == 303
    assert client.get(f"/links/{link['id']}", headers=AUTH).json["state"] == "used"


def test_no_links_yet(client):
    assert "No links yet" in links_section(page(client))


def test_the_standalone_simulator_has_no_links_section():
    client = create_simulator_app().test_client()
    html = client.get("/").get_data(as_text=True)
    assert "<h2>Muted chats</h2>" in html and "Links" not in html
    assert client.post(f"/links/{'0' * 32}/start", data={"chat": CHAT}).status_code == 404
