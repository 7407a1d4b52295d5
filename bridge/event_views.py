"""``POST /events`` on the blueprint of :mod:`bridge.views`, declared as every endpoint
is, with its schemas: a bot's custom events for Reteno about a chat, checked by the
rules Reteno refuses an event for (its event type key, its param names, its size) and
put in the ledger's outbox (:mod:`bridge.ledger.events_out`), which adds the chat's
contact identifier when it sends each one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, pre_load, validate

from .config import MAX_EVENT_BYTES, MAX_EVENTS_PER_REQUEST
from .http import APIError, bearer_required
from .ledger import EventRequest
from .runtime import current as rt
from .schemas import token_field
from .statuses import event_time
from .views import bp, counting_invalid, json_request_body

MAX_KEY_CHARS = 100  # Reteno's longest event type key
MAX_NAME_CHARS = 100  # and param name
#: The characters Reteno refuses in an event type key.
FORBIDDEN_KEY_CHARACTERS = "<;'\\/|\"`^?!,>"
KEY_PATTERN = "^[^" + re.escape(FORBIDDEN_KEY_CHARACTERS) + "]{1,100}$"
#: Params the bridge adds itself (the chat's contact identifier), refused from a bot.
RESERVED_PARAMS = ("contactId", "externalCustomerId", "email", "phone")
# room kept in an event's size for the identifier param the bridge adds when sending it
IDENTIFIER_ROOM = 512


def body_bytes(event_type_key: str, params: dict[str, Any]) -> int:
    """The size of Reteno's body for an event (compact JSON, UTF-8), without the
    identifier param."""
    body = {
        "eventTypeKey": event_type_key,
        "params": [{"name": name, "value": value} for name, value in params.items()],
    }
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())


class Params(fields.Field):
    """An event's params: ``{name: value}``, or Reteno's own list of ``{"name",
    "value"}``; names 1-100 characters and unique, none of :data:`RESERVED_PARAMS`;
    values strings or JSON objects. Loads as a dict, in the order given."""

    def _deserialize(self, value, attr, data, **kwargs) -> dict[str, Any]:
        pairs = _pairs(value)
        errors: dict[str, list[str]] = {}
        seen: set[str] = set()
        for name, item, path in pairs:
            problems = _name_problems(name, seen)
            if not isinstance(item, str | dict):
                problems.append("A param value is a string or a JSON object.")
            if isinstance(name, str):
                seen.add(name)
            if problems:
                errors[path] = problems
        if errors:
            raise ValidationError(errors)
        return {name: item for name, item, _ in pairs}


def _pairs(value) -> list[tuple[Any, Any, str]]:
    """(name, value, error path) of each param of either form."""
    if isinstance(value, dict):
        return [(name, item, name) for name, item in value.items()]
    if not isinstance(value, list):
        raise ValidationError('Must be an object {name: value} or a list of {"name", "value"}.')
    bad = {
        str(i): ['Must be {"name": ..., "value": ...}.']
        for i, item in enumerate(value)
        if not (isinstance(item, dict) and item.keys() == {"name", "value"})
    }
    if bad:
        raise ValidationError(bad)
    return [(item["name"], item["value"], f"{i}.name") for i, item in enumerate(value)]


_RESERVED = {name.casefold() for name in RESERVED_PARAMS}


def _name_problems(name, seen: set[str]) -> list[str]:
    if not isinstance(name, str) or not name.strip():
        return ["A param name is a non-empty string."]
    if len(name) > MAX_NAME_CHARS:
        return [f"A param name has at most {MAX_NAME_CHARS} characters."]
    if name.casefold() in _RESERVED:
        return [
            "The bridge adds the chat's own contact identifier: contactId, "
            "externalCustomerId, email and phone cannot be given."
        ]
    return ["Param names must be unique."] if name in seen else []


class EventTime(fields.Field):
    """When the event happened: ISO 8601 (UTC without an offset) or epoch seconds."""

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return event_time(value)[0]
        except (ValueError, OverflowError, OSError):
            raise ValidationError("Not a time: ISO 8601 or epoch seconds.") from None


class CustomEventSchema(Schema):
    """One custom event of ``POST /events``."""

    class Meta:
        unknown = RAISE

    token = token_field(required=True)
    eventTypeKey = fields.String(
        required=True,
        validate=[
            validate.Length(min=1, max=MAX_KEY_CHARS),
            validate.Regexp(
                KEY_PATTERN,
                error="None of these characters: " + " ".join(FORBIDDEN_KEY_CHARACTERS) + ".",
            ),
        ],
        metadata={
            "description": "Reteno's event type (an unknown key creates it): at most 100 "
            "characters, none of `< ; ' \\ / | \" ` ^ ? ! , >`.",
            "example": "subscribed_to_sales",
        },
    )
    params = Params(
        load_default=dict,
        metadata={
            "type": ["object", "array"],
            "description": "`{name: value}` (or Reteno's list of `{name, value}`): names 1-100 "
            "characters and unique, not contactId, externalCustomerId, email or phone (the "
            "bridge adds the chat's own); values strings or JSON objects.",
            "example": {"plan": "premium"},
        },
    )
    time = EventTime(
        load_default=None,
        allow_none=True,
        metadata={
            "type": ["string", "number"],
            "description": "When it happened (ISO 8601 or epoch seconds; default: when "
            "received). Kept in the ledger's history; Reteno's live events carry no time.",
        },
    )

    @post_load
    def _request(self, data, **kwargs) -> EventRequest:
        size = body_bytes(data["eventTypeKey"], data["params"]) + IDENTIFIER_ROOM
        if size > MAX_EVENT_BYTES:
            raise ValidationError(
                f"The event is {size} bytes with the chat's identifier; Reteno takes at most "
                f"{MAX_EVENT_BYTES}.",
                "params",
            )
        return EventRequest(data["token"], data["eventTypeKey"], data["params"], data["time"])


class CustomEventBatchSchema(Schema):
    """``{"events": [events]}``, 1 to 1000 of them."""

    class Meta:
        unknown = RAISE

    events = fields.List(
        fields.Nested(CustomEventSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_EVENTS_PER_REQUEST),
    )

    @pre_load
    def _bound(self, data, **kwargs):
        events = data.get("events") if isinstance(data, dict) else None
        if isinstance(events, list) and len(events) > MAX_EVENTS_PER_REQUEST:
            raise ValidationError(
                f"Length must be between 1 and {MAX_EVENTS_PER_REQUEST}, got {len(events)}.",
                "events",
            )
        return data


_event_schema = CustomEventSchema()
_batch_schema = CustomEventBatchSchema()


class CustomEventsBodySchema(Schema):
    """The body of ``POST /events``: one event or ``{"events": [...]}`` (documented as
    ``oneOf`` the two); loads as ``(list of EventRequest, batch?)``."""

    refusal = "The event is not valid; nothing was stored."

    def load(self, data, **kwargs) -> tuple[list[EventRequest], bool]:
        if isinstance(data, dict) and "events" in data:
            return _batch_schema.load(data)["events"], True
        if isinstance(data, dict):
            return [_event_schema.load(data)], False
        raise ValidationError('Must be an event object or {"events": [event objects]}.', "_body")


class CustomEventResultSchema(Schema):
    id = fields.Integer()
    token = fields.String()
    eventTypeKey = fields.String(attribute="event_type_key")
    state = fields.String(metadata={"example": "queued"})
    occurredAt = fields.AwareDateTime(
        attribute="time",
        metadata={"description": "When it happened (`time`, else when received)."},
    )
    requestedAt = fields.AwareDateTime(attribute="requested_at")


class CustomEventsResultSchema(Schema):
    events = fields.Nested(CustomEventResultSchema, many=True)


@bp.post("/events", tags=["events"])
@bp.doc(
    description=(
        f'One event, or `{{"events": [...]}}` with 1 to {MAX_EVENTS_PER_REQUEST}. 202 means the '
        "events are durably in the ledger; each goes to Reteno's `/api/v2/event` through the "
        "outbox once Reteno has the chat, one call each, with the contact identifier of the "
        "chat's registration added to its params (contactId, else externalCustomerId, email, "
        "phone). 404 when a chat has no live registration: then nothing of the body is "
        "stored, and `errors` names each such event's `token`."
    ),
    requestBody=json_request_body(
        {"oneOf": [CustomEventSchema, CustomEventBatchSchema]}, "An event or a batch of them."
    ),
)
@bearer_required
@counting_invalid("events")
@bp.arguments(CustomEventsBodySchema())
@bp.response(202, CustomEventsResultSchema, description="One result per event, in order.")
@bp.alt_response(404, response="NOT_FOUND")
def send_events(body):
    """Send a bot's custom events to Reteno for a chat (through the ledger's outbox)"""
    requests, batch = body
    bridge = rt()
    records, missing = bridge.ledger.send_events(requests, source="api")
    if missing:
        bridge.metrics.events.labels("not_found").inc(len(requests))
        gone = set(missing)
        raise APIError(
            404,
            "A chat has no live registration; register it first. Nothing was stored.",
            {
                (f"events.{i}.token" if batch else "token"): ["No live registration."]
                for i, r in enumerate(requests)
                if r.token in gone
            },
        )
    bridge.metrics.events.labels("queued").inc(len(records))
    return {"events": records}
