"""examples/website.py, the shop's "Get offers in Telegram" page, driven through Flask's
test client against a bridge: its ``BridgeClient`` reaches the bridge app in process
(``httpx.WSGITransport``), and Telegram's ``/start`` goes to the bridge's webhook."""

from __future__ import annotations

import html
import re
import textwrap
from pathlib import Path

import httpx
import pytest
from reteno_bridge_client import BridgeClient

from examples import website
from tests.conftest import API_KEY
from tests.helpers import rows, start_message, telegram, telegram_date

TG_SECRET = "tg-webhook-secret_0123456789"
SHOP_KEY = "shop-session-key-" + "s" * 32
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def app(make_app):
    return make_app(TELEGRAM_BOT_USERNAME="my_shop_bot", TELEGRAM_WEBHOOK_SECRET=TG_SECRET)


def test_the_page_makes_a_link_for_the_customer_and_says_when_it_is_connected(
    app, client, auth, clock
):
    bridge = BridgeClient("http://bridge.test", API_KEY, transport=httpx.WSGITransport(app=app))
    shop = website.create_app(bridge, secret_key=SHOP_KEY).test_client()
    assert shop.get("/telegram").status_code == 401  # signed in only
    assert shop.post("/login", data={"email": "Ann@Example.com"}).status_code == 204

    page = shop.get("/telegram")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    url = html.unescape(re.search(r'id="open" href="([^"]+)"', text).group(1))
    assert url.startswith("https://t.me/my_shop_bot?start=L")
    assert "<svg" in text
    assert "ann@example.com" not in url
    assert shop.get("/telegram/status").get_json() == {"state": "pending", "connected": False}

    payload = url.split("?start=", 1)[1]
    telegram(client, start_message(4242, telegram_date(clock), payload), TG_SECRET)
    assert shop.get("/telegram/status").get_json() == {"state": "used", "connected": True}
    [registration] = rows(client, auth, token=4242)
    assert (registration["externalCustomerId"], registration["email"]) == (
        "shop-ann@example.com",
        "ann@example.com",
    )


def test_the_shop_will_not_start_without_its_own_session_key(monkeypatch):
    """A built-in key would be public: anyone could sign a session as any customer."""
    monkeypatch.delenv("SHOP_SECRET_KEY", raising=False)
    bridge = BridgeClient("http://bridge.test", API_KEY)
    with pytest.raises(KeyError, match="SHOP_SECRET_KEY"):
        website.create_app(bridge)
    monkeypatch.setenv("SHOP_SECRET_KEY", SHOP_KEY)
    assert website.create_app(bridge).secret_key == SHOP_KEY


def test_the_readmes_snippet_is_the_examples_code():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## For websites", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    example = (ROOT / "examples" / "website.py").read_text()
    # the same lines, indented as in the example's create_app(), blank lines aside
    assert code_lines(textwrap.indent(snippet, "    ")) in code_lines(example)


def code_lines(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.strip())
