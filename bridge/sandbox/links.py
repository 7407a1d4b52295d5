"""The links section of a sandbox bridge's simulator page: the bridge's newest links,
and *Press Start* on one, which sends the update Telegram sends when a chat taps Start
on a link: a private chat's ``message`` with ``/start <payload>``, dated now by the
bridge's clock, to the bridge's own ``POST <prefix>/telegram/webhook`` in this process
with a bearer key (as a bot backend forwarding its updates does). The bridge then does
what it does for Telegram: the first chat binds the link and is registered, and the
delivery brings its token to the simulator.

:func:`bridge.sandbox.attach` hands :func:`links_panel` to the page (:mod:`.web`), which
imports nothing of the bridge's: a standalone simulator has no links section. Reads go
through the ledger's facade; nothing here writes. The page shows no personal data of a
link: no identifiers, and of its chat only the last three digits.
"""

from __future__ import annotations

import secrets
from typing import Any

from ..identifiers import IdentifierError, normalize_token
from ..ledger.linking import LINK_ID
from ..logs import get_logger
from .transport import post_in_process
from .web import LinksPanel

log = get_logger("bridge.sandbox")

LIMIT = 50  # the newest links the page lists


def masked_chat(token: str | None) -> str | None:
    """A chat id as the page shows it: its last three digits."""
    return None if token is None else "…" + token[-3:]


def start_update(chat: int, payload: str, date: int) -> dict[str, Any]:
    """The update Telegram sends when a user taps Start on ``t.me/<bot>?start=<payload>``
    (the private chat's id is the user's)."""
    user = {"id": chat, "is_bot": False, "first_name": "Sandbox"}
    return {
        "update_id": secrets.randbelow(2**31),
        "message": {
            "message_id": 1 + secrets.randbelow(2**31 - 1),
            "from": user,
            "chat": {"id": chat, "first_name": "Sandbox", "type": "private"},
            "date": date,
            "text": f"/start {payload}",
            "entities": [{"offset": 0, "length": len("/start"), "type": "bot_command"}],
        },
    }


def links_panel(app, runtime) -> LinksPanel:
    """The links section over ``runtime``'s ledger, pressing Start through ``app``."""
    webhook = f"{runtime.url_prefix.rstrip('/')}/telegram/webhook"
    ledger = runtime.ledger

    def recent() -> list[dict[str, Any]]:
        return [
            {
                "id": link.id,
                "state": link.state,
                "expires_at": link.expires_at,
                "used_at": link.used_at,
                "chat": masked_chat(link.token),
            }
            for link in ledger.recent_links(LIMIT)
        ]

    def press_start(link_id: str, chat: str) -> str:
        try:
            token = normalize_token(chat)
        except IdentifierError:
            return "bad_chat"
        if int(token) < 0:  # a group's: a link opened there registers nothing
            return "bad_chat"
        before = ledger.link(link_id) if LINK_ID.match(link_id) else None
        payload = ledger.link_payload(link_id) if before is not None else None
        if payload is None:
            return "unknown"
        update = start_update(int(token), payload, int(ledger.clock().timestamp()))
        response = post_in_process(app.wsgi_app, webhook, update, runtime.api_keys[0])
        if response.status_code != 200:
            log.error("sandbox: Press Start refused by the webhook: HTTP %s", response.status_code)
            return "refused"
        after = ledger.link(link_id)
        if after.state == "used":
            if after.token is None:  # erased: a tombstone, revoked for every chat
                return "revoked"
            if after.token != token:
                return "reused"
            return "again" if before.state == "used" else "bound"
        return after.state if after.state in ("expired", "revoked") else "unchanged"

    return LinksPanel(recent, press_start)
