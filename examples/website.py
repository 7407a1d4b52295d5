"""A shop's website with a "Get offers in Telegram" button for the signed-in customer.

``GET /telegram`` asks the bridge for a link made for this customer
(``BridgeClient.create_link``: ``POST /links``) and shows it twice: as a button, for a
visitor with Telegram on this device, and as a QR code, for a desktop visitor to scan
with their phone. The page then polls ``GET /telegram/status`` (``link_status``:
``GET /links/<id>``) every few seconds and says "Connected ✓" once the customer
tapped Start: the bridge has registered their chat with the identifiers the link was
made with. The link holds no personal data (an opaque payload); the first chat that
opens it binds it.

Sign-in is the shop's own; here a demo stands in for it (``POST /login`` with an
e-mail address). Run it::

    pip install flask segno reteno-bridge-client
    BRIDGE_URL=http://127.0.0.1:5000 BRIDGE_API_KEY=<one of BRIDGE_API_KEYS> \\
    SHOP_SECRET_KEY=<random> flask --app examples.website run --port 8000

The bridge needs ``TELEGRAM_BOT_USERNAME`` to make links. The API key stays on the
server: the browser only ever talks to the shop.
"""

from __future__ import annotations

import os

import segno
from flask import Flask, abort, jsonify, render_template_string, request, session
from markupsafe import Markup
from reteno_bridge_client import BridgeClient

PAGE = """<!doctype html>
<title>Get offers in Telegram</title>
<p><a id="open" href="{{ url }}">Open in Telegram</a> and tap Start.</p>
<p>On a computer? Scan this with your phone's camera:</p>
{{ qr }}
<p id="status">Waiting for Telegram…</p>
<script>
  const poll = setInterval(async () => {
    const answer = await fetch("{{ status_url }}");
    const link = await answer.json();
    if (link.connected) {
      document.getElementById("status").textContent = "Connected ✓";
      clearInterval(poll);
    } else if (link.state !== "pending") {
      document.getElementById("status").textContent = "This link has " + link.state
        + ": reload the page for a new one.";
      clearInterval(poll);
    }
  }, 3000);
</script>
"""


def create_app(bridge: BridgeClient | None = None, secret_key: str | None = None) -> Flask:
    """The shop; ``bridge`` and ``secret_key`` (its session's key) default to the
    environment: ``BRIDGE_URL`` and ``BRIDGE_API_KEY``, ``SHOP_SECRET_KEY`` (required:
    anyone who knows the key can sign in as any customer)."""
    app = Flask(__name__)
    app.secret_key = secret_key or os.environ["SHOP_SECRET_KEY"]
    if bridge is None:
        bridge = BridgeClient(os.environ["BRIDGE_URL"], os.environ["BRIDGE_API_KEY"])

    @app.post("/login")
    def login():
        """The demo's sign-in: a real shop knows its customer from its own session."""
        email = request.form["email"].strip().lower()
        session["customer"] = {"id": f"shop-{email}", "email": email}
        return "", 204

    @app.get("/telegram")
    def connect_telegram():
        customer = session.get("customer") or abort(401)
        link = bridge.create_link(external_customer_id=customer["id"], email=customer["email"])
        session["telegram_link"] = link.id
        return render_template_string(
            PAGE,
            url=link.url,
            qr=Markup(segno.make_qr(link.url).svg_inline(scale=4)),
            status_url="/telegram/status",
        )

    @app.get("/telegram/status")
    def telegram_status():
        link_id = session.get("telegram_link") or abort(404)
        state = bridge.link_status(link_id).state  # pending, used, expired, revoked
        return jsonify(state=state, connected=state == "used")

    return app
