"""Reteno's custom events as the simulator takes them (``POST /api/v2/event``): the
checks of an event's body and the contact identifier it names, with Reteno's 400s.

Reteno's rules (reteno-api.md, *Custom events*): ``eventTypeKey`` a string of at most
100 characters without ``< ; ' \\ / | " ` ^ ? ! , >``; ``params`` a list of ``{"name",
"value"}``, names unique and at most 100 characters, values strings or objects; the
body at most 20 KB; the params carry a contact identifier (contactId →
externalCustomerId → email → phone; v2 ignores an externalCustomerId of ``""``, ``" "``
or ``"null"``), or the event is refused. Pure functions, no state.
"""

from __future__ import annotations

import json
from typing import Any

#: The identifiers an event's params may carry, in Reteno's order for events.
EVENT_IDENTIFIERS = ("contactId", "externalCustomerId", "email", "phone")
EVENTS_RPS = 350.0  # Reteno's limit for /api/v2/event, requests a second
MAX_EVENT_BYTES = 20 * 1024
FORBIDDEN_KEY_CHARACTERS = frozenset("<;'\\/|\"`^?!,>")
_IGNORED_EXTERNAL_IDS = ("", "null")


def _bad(message: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    return 400, {"status": 400, "message": message}, {}


def _key_problem(key: Any) -> str | None:
    if not isinstance(key, str) or not key:
        return "eventTypeKey must be specified"
    if len(key) > 100:
        return "eventTypeKey must be at most 100 characters"
    if FORBIDDEN_KEY_CHARACTERS & set(key):
        return "eventTypeKey contains forbidden characters"
    return None


def _params_problem(params: Any) -> str | None:
    if not isinstance(params, list):
        return "params must be an array of {name, value}"
    seen: set[str] = set()
    for item in params:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return "params must be an array of {name, value}"
        name = item["name"]
        if not name or len(name) > 100:
            return "A param name must be 1 to 100 characters"
        if name in seen:
            return f"Duplicate param name: {name}"
        seen.add(name)
        if not isinstance(item.get("value"), str | dict):
            return f"The value of param {name} must be a string or an object"
    return None


def identifier(params: list[dict[str, Any]]) -> tuple[str, Any] | None:
    """The contact identifier an event's params carry (the highest in Reteno's order),
    as (name, value); None without one."""
    given = {item["name"]: item["value"] for item in params}
    for name in EVENT_IDENTIFIERS:
        value = given.get(name)
        if not isinstance(value, str):
            continue
        if name == "externalCustomerId" and value.strip().lower() in _IGNORED_EXTERNAL_IDS:
            continue
        if value.strip():
            if name == "contactId":
                return (name, int(value)) if value.strip().isdigit() else None
            return name, value
    return None


def parse_event(raw: bytes | str) -> tuple[dict[str, Any] | None, tuple | None]:
    """The event of a request body (``{"eventTypeKey", "params", "identifier"}``), or the
    400 to answer."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if len(raw) > MAX_EVENT_BYTES:
        return None, _bad(f"The event content exceeds {MAX_EVENT_BYTES // 1024} KB")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, _bad("Malformed JSON body")
    if not isinstance(body, dict):
        return None, _bad("Request body must be a JSON object")
    problem = _key_problem(body.get("eventTypeKey")) or _params_problem(body.get("params", []))
    if problem:
        return None, _bad(problem)
    params = body.get("params", [])
    found = identifier(params)
    if found is None:
        return None, _bad(
            "The event must contain a contact identifier in params: contactId, "
            "externalCustomerId, email or phone"
        )
    return {"eventTypeKey": body["eventTypeKey"], "params": params, "identifier": found}, None
