"""``GET /openapi.json``: the OpenAPI 3.1 document of the blueprint.

Built with apispec's marshmallow plugin from the very schemas in
:mod:`bridge.schemas` that the views parse and dump with, so the document
cannot drift from the code's field names and rules. It covers every route of
the blueprint, the three ways of authenticating (bearer API keys, the status
webhook's HTTP Basic credentials, Telegram's secret-token header) and the one
error shape, which every error response references. The document is built once
per bridge runtime; only ``servers`` (the mount prefix, a relative URL) is
filled in per request.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from . import __version__
from .config import MAX_TOKENS_PER_REQUEST
from .schemas import (
    BatchSchema,
    ErrorSchema,
    HealthSchema,
    HistorySchema,
    MuteResultSchema,
    MuteSchema,
    RegisterResponseSchema,
    StatusEventSchema,
    StatusProbeSchema,
    StatusResultSchema,
    TelegramAckSchema,
    TelegramUpdateSchema,
    TokenPageSchema,
    TokenQuerySchema,
    TokenSchema,
    UnmuteSchema,
)

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"

# components.responses: name and description of every error status the bridge answers.
ERRORS = {
    400: ("BadRequest", "The body is not well-formed JSON (or not UTF-8)."),
    401: ("Unauthorized", "Missing or wrong credentials."),
    404: ("NotFound", "No such endpoint, the Telegram webhook is not configured, or (mute, "
                      "unmute) the chat has no live registration."),
    413: ("PayloadTooLarge", "The body is larger than BRIDGE_MAX_BODY_BYTES ({limit} bytes)."),
    415: ("UnsupportedMediaType", "The body is not JSON (Content-Type: application/json)."),
    422: ("UnprocessableEntity", "A field is not valid; `errors` is keyed by field path "
                                 "(`tokens.0.email`); nothing was stored."),
    503: ("ServiceUnavailable", "The ledger database is unreachable."),
}

_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): {"$ref": f"#/components/responses/{ERRORS[code][0]}"} for code in codes}


def _json(schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _body(schema, description: str) -> dict[str, Any]:
    return {"required": True, "description": description, "content": {JSON: {"schema": schema}}}


BEARER = [{"bearer": []}]
JSON_BODY_ERRORS = (400, 413, 415)


def build(max_body_bytes: int) -> dict[str, Any]:
    """The document without ``servers``."""
    spec = APISpec(
        title="reteno-telegram-bridge",
        version=__version__,
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={
            "description": (
                "Registers Telegram bot users' chat ids (contact tokens) with Reteno, keeps an "
                "audit ledger of every token, upstream attempt and status, and removes a token "
                "once a status says the user blocked the bot. Every error body has the shape "
                "of the `Error` schema."
            ),
        },
    )
    c = spec.components
    c.security_scheme("bearer", {"type": "http", "scheme": "bearer",
                                 "description": "One of BRIDGE_API_KEYS."})
    c.security_scheme("webhookBasic", {
        "type": "http", "scheme": "basic",
        "description": "BRIDGE_WEBHOOK_USERNAME / BRIDGE_WEBHOOK_PASSWORD (Reteno's webhook).",
    })
    c.security_scheme("telegramSecret", {
        "type": "apiKey", "in": "header", "name": "X-Telegram-Bot-Api-Secret-Token",
        "description": "TELEGRAM_WEBHOOK_SECRET, the secret_token given to setWebhook.",
    })
    for name, schema in (
        ("Error", ErrorSchema),
        ("Token", TokenSchema),
        ("TokenBatch", BatchSchema),
        ("RegisterResponse", RegisterResponseSchema),
        ("TokenPage", TokenPageSchema),
        ("History", HistorySchema),
        ("Health", HealthSchema),
        ("StatusEvent", StatusEventSchema),
        ("StatusResult", StatusResultSchema),
        ("StatusProbe", StatusProbeSchema),
        ("TelegramUpdate", TelegramUpdateSchema),
        ("TelegramAck", TelegramAckSchema),
        ("Mute", MuteSchema),
        ("Unmute", UnmuteSchema),
        ("MuteResult", MuteResultSchema),
    ):
        c.schema(name, schema=schema)
    for _code, (name, description) in ERRORS.items():
        c.response(name, _json("Error", description.format(limit=max_body_bytes)))

    spec.path("/register", operations={"post": {
        "operationId": "register",
        "summary": "Register contact tokens with Reteno (through the ledger's outbox)",
        "description": (
            "One token object, or `{\"tokens\": [...]}` with 1 to "
            f"{MAX_TOKENS_PER_REQUEST}. 202 means the registrations are durably in the "
            "ledger; delivery "
            "happens off the request path. A token already registered with the same "
            "identifier, and not removed, is answered as a duplicate and not queued again."
        ),
        "tags": ["registration"],
        "security": BEARER,
        "requestBody": _body({"oneOf": ["Token", "TokenBatch"]},
                             "A token object or a batch of them."),
        "responses": {
            "202": _json("RegisterResponse", "One result per token object, in order."),
            **_errors(*JSON_BODY_ERRORS, 401, 422),
        },
    }})
    for path, schema, summary in (
        ("/mute", "Mute", "Mute a chat's marketing messages for a while or until unmuted "
                          "(transactional messages still arrive); the last request wins"),
        ("/unmute", "Unmute", "Let a chat's marketing messages arrive again"),
    ):
        spec.path(path, operations={"post": {
            "operationId": path.strip("/"),
            "summary": summary,
            "description": (
                "The chat must have a live registration. 202 means the request is in the "
                "ledger; it goes to Reteno through the outbox once Reteno knows the chat, "
                "with the same retries and pause as registrations. For a bot's own /stop "
                "and /resume."
            ),
            "tags": ["registration"],
            "security": BEARER,
            "requestBody": _body(schema, "The chat (and for a mute, how long)."),
            "responses": {
                "202": _json("MuteResult", "Queued for Reteno."),
                **_errors(*JSON_BODY_ERRORS, 401, 404, 422),
            },
        }})
    spec.path("/statuses", operations={
        "get": {
            "operationId": "statusesProbe",
            "summary": "Answers 200 (Reteno checks the webhook URL with a GET)",
            "tags": ["statuses"],
            "security": [],
            "responses": {"200": _json("StatusProbe", "The webhook is here.")},
        },
        "post": {
            "operationId": "statuses",
            "summary": "Message statuses from Reteno's webhook or the bot backend",
            "description": (
                "One event or an array of events, in the simple vocabulary (`status`, "
                "`error`, `token` and/or identifiers) or as Reteno activity webhook objects. "
                "A failure whose error says the bot can no longer reach the chat (Telegram's "
                "`Forbidden: bot was blocked by the user`, `user is deactivated`, `bot was "
                "kicked from the ... chat`, or a bare Forbidden / 403) removes the token; "
                "others (`Bad Request: chat not found`) are recorded only. Offset-less times "
                "are read in BRIDGE_STATUS_TIMEZONE; a time later than its receipt counts as "
                "its receipt. "
                "Every JSON object or array of objects is answered 200; replays change nothing."
            ),
            "tags": ["statuses"],
            "security": [{"webhookBasic": []}, {"bearer": []}],
            "requestBody": _body(
                {"oneOf": ["StatusEvent", {"type": "array", "items": "StatusEvent"}]},
                "A status event or an array of them.",
            ),
            "responses": {
                "200": _json("StatusResult", "What the events did."),
                **_errors(*JSON_BODY_ERRORS, 401, 422),
            },
        },
    })
    spec.path("/telegram/webhook", operations={"post": {
        "operationId": "telegramWebhook",
        "summary": "Telegram bot updates: blocks, unblocks and /start deep links",
        "description": "Telegram sends the secret-token header (TELEGRAM_WEBHOOK_SECRET); "
                       "a bot backend forwarding its own updates sends a bearer key.",
        "tags": ["telegram"],
        "security": [{"telegramSecret": []}, {"bearer": []}],
        "requestBody": _body("TelegramUpdate", "A Telegram Update object."),
        "responses": {
            "200": _json("TelegramAck", "Taken (whatever the update held)."),
            **_errors(*JSON_BODY_ERRORS, 401),
        },
    }})
    spec.path("/tokens", operations={"get": {
        "operationId": "tokens",
        "summary": "Query registrations, newest first",
        "description": (
            "Identifiers are normalised as `/register` normalises them. Pages are "
            "keyset-paginated: pass `next` of a page as `cursor` to get the following one; "
            "`next` is null on the last page."
        ),
        "tags": ["ledger"],
        "security": BEARER,
        "parameters": [{"in": "query", "schema": TokenQuerySchema}],
        "responses": {
            "200": _json("TokenPage", "A page of registrations."),
            **_errors(401, 422),
        },
    }})
    spec.path("/tokens/{token}/history", operations={"get": {
        "operationId": "tokenHistory",
        "summary": "Every event of a token, oldest first",
        "tags": ["ledger"],
        "security": BEARER,
        "parameters": [{
            "in": "path", "name": "token", "required": True,
            "description": "Telegram chat id.",
            "schema": {"type": "string", "pattern": "^-?[0-9]{1,19}$"},
        }],
        "responses": {
            "200": _json("History", "Submissions, upstream attempts, statuses and removals."),
            **_errors(401, 422),
        },
    }})
    spec.path("/healthz", operations={"get": {
        "operationId": "healthz",
        "summary": "Health: status and reason codes, the sandbox flag; with a bearer key the "
                   "outbox, dead letters, held conflicts and the last upstream result",
        "tags": ["operations"],
        "security": [{}, *BEARER],
        "responses": {"200": _json("Health", "The bridge is up."), **_errors(401, 503)},
    }})
    spec.path("/metrics", operations={"get": {
        "operationId": "metrics",
        "summary": "Prometheus metrics (text exposition format); open with "
                   "BRIDGE_METRICS_PUBLIC=true",
        "tags": ["operations"],
        "security": BEARER,
        "responses": {"200": {
            "description": "Prometheus text format 0.0.4.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }, **_errors(401)},
    }})
    spec.path("/openapi.json", operations={"get": {
        "operationId": "openapi",
        "summary": "This document",
        "tags": ["operations"],
        "security": [],
        "responses": {"200": _json({"type": "object"}, "An OpenAPI 3.1 document.")},
    }})
    return spec.to_dict()


def document(runtime, script_root: str) -> dict[str, Any]:
    """The document for ``runtime``. Its server URL is relative (``script_root``, the
    WSGI mount, + the blueprint's prefix): a client resolves it against the URL it
    fetched the document from, and no request header (a forged ``Host``) can make the
    document send it elsewhere."""
    spec = _cache.get(runtime)
    if spec is None:
        spec = _cache[runtime] = build(runtime.settings.max_body_bytes)
    server = script_root.rstrip("/") + runtime.url_prefix.rstrip("/")
    return {**copy.deepcopy(spec), "servers": [{"url": server or "/"}]}
