"""The blueprint: every HTTP endpoint of the bridge, kept thin.

Each view authenticates, parses with a schema from :mod:`bridge.schemas`,
calls the ledger (or the status / Telegram handlers) and dumps with a schema.
Errors of every kind leave as the one JSON shape of :mod:`bridge.http`.
"""

from __future__ import annotations

import time
from collections import Counter

from flask import Blueprint, Response, g, request
from marshmallow import ValidationError

from . import statuses, telegram
from .http import (
    APIError,
    bearer_optional,
    bearer_required,
    caller_label,
    json_body,
    metrics_auth_required,
    protect_answer,
    register_error_handlers,
    telegram_secret_required,
    webhook_auth_required,
)
from .identifiers import IdentifierError, normalize_token
from .logs import log_request
from .openapi import document as openapi_document
from .runtime import current as rt
from .schemas import (
    BatchSchema,
    HealthSchema,
    HistorySchema,
    MuteResultSchema,
    MuteSchema,
    RegisterResponseSchema,
    TokenPageSchema,
    TokenQuerySchema,
    TokenSchema,
    UnmuteSchema,
    capped_errors,
    flatten_errors,
)

bp = Blueprint("bridge", __name__)
register_error_handlers(bp)
bp.after_request(protect_answer)

_token_schema = TokenSchema()
_batch_schema = BatchSchema()
_register_response = RegisterResponseSchema()
_query_schema = TokenQuerySchema()
_page_schema = TokenPageSchema()
_history_schema = HistorySchema()
_health_schema = HealthSchema()
_mute_schema = MuteSchema()
_unmute_schema = UnmuteSchema()
_mute_result = MuteResultSchema()




def invalid(exc: ValidationError, message: str = "The request is not valid.") -> APIError:
    return APIError(422, message, capped_errors(flatten_errors(exc.messages),
                                                rt().settings.max_field_errors))


# --- POST /register ----------------------------------------------------------


@bp.post("/register")
@bearer_required
def register():
    bridge = rt()
    data = json_body(bridge.settings.max_body_bytes)
    try:
        if isinstance(data, dict) and "tokens" in data:
            items = _batch_schema.load(data)["tokens"]
        elif isinstance(data, dict):
            items = [_token_schema.load(data)]
        else:
            raise ValidationError(
                "Must be a token object or {\"tokens\": [token objects]}.", "_body"
            )
    except ValidationError as exc:
        bridge.metrics.registrations.labels("invalid").inc()
        raise invalid(exc, "The registration is not valid; nothing was stored.") from None
    outcomes = bridge.ledger.register(items, source="api")
    duplicates = sum(o.duplicate for o in outcomes)  # counted per body, not per token
    for label, count in (("duplicate", duplicates), ("queued", len(outcomes) - duplicates)):
        if count:
            bridge.metrics.registrations.labels(label).inc(count)
    for state, count in Counter(o.state for o in outcomes if o.conflict and not o.duplicate
                                ).items():
        bridge.metrics.conflicts.labels(state).inc(count)
    return _register_response.dump({"registrations": outcomes}), 202


# --- POST /mute, POST /unmute ------------------------------------------------------


def _mute(schema):
    bridge = rt()
    try:
        mute_request = schema.load(json_body(bridge.settings.max_body_bytes))
    except ValidationError as exc:
        raise invalid(exc, "The request is not valid; nothing was stored.") from None
    record = bridge.ledger.mute(mute_request, source="api")
    if record is None:
        raise APIError(404, "The chat has no live registration; register it first.",
                       {"token": ["No live registration."]})
    return _mute_result.dump(record), 202


@bp.post("/mute")
@bearer_required
def mute():
    return _mute(_mute_schema)


@bp.post("/unmute")
@bearer_required
def unmute():
    return _mute(_unmute_schema)


# --- reading the ledger ---------------------------------------------------------


@bp.get("/tokens")
@bearer_required
def tokens():
    bridge = rt()
    try:
        query = _query_schema.load(request.args.to_dict())
    except ValidationError as exc:
        raise invalid(exc, "The query is not valid.") from None
    limit = query.pop("limit")
    cursor = query.pop("cursor", None)
    try:
        rows, nxt = bridge.ledger.find(query, limit=limit, cursor=cursor)
    except ValueError as exc:
        raise APIError(422, "The query is not valid.", {"cursor": [str(exc)]}) from None
    return _page_schema.dump({"items": rows, "next": nxt})


@bp.get("/tokens/<token>/history")
@bearer_required
def history(token: str):
    bridge = rt()
    try:
        token = normalize_token(token)
    except IdentifierError as exc:
        raise APIError(422, "Not a Telegram chat id.", {"token": exc.messages}) from None
    return _history_schema.dump({"token": token, "events": bridge.ledger.history(token)})


# --- operations ---------------------------------------------------------------------


@bp.get("/healthz")
@bearer_optional
def healthz(authenticated: bool):
    body, ok = rt().health(details=authenticated)
    if not ok:
        raise APIError(503, body["message"], {"database": [body["message"]]})
    return _health_schema.dump(body)


@bp.get("/metrics")
@metrics_auth_required
def metrics():
    return Response(rt().metrics.render(), mimetype="text/plain",
                    content_type="text/plain; version=0.0.4; charset=utf-8")


# --- statuses: Reteno's activity webhook and the bot backend's reports ----------------


@bp.get("/statuses")
def statuses_probe():
    """Reteno checks the webhook URL with a GET when it is configured."""
    return {"status": "ok", "message": "POST status events (a JSON object or array) here."}


@bp.post("/statuses")
@webhook_auth_required
def statuses_post():
    bridge = rt()
    data = json_body(bridge.settings.max_body_bytes, replace_unstorable=True)
    try:
        objects = statuses.events_from_body(data, bridge.settings.max_status_events)
    except statuses.TooManyEvents as exc:
        raise APIError(413, str(exc)) from None
    except ValidationError as exc:
        raise invalid(exc, "The body must be a status event object or an array of them; "
                           "nothing was recorded.") from None
    return statuses.handle(bridge.ledger, objects, bridge.metrics,
                           bridge.settings.status_timezone)


# --- Telegram: the bot's webhook (blocks, unblocks, /start deep links) --------------------


@bp.post("/telegram/webhook")
@telegram_secret_required
def telegram_webhook():
    bridge = rt()
    update = json_body(bridge.settings.max_body_bytes, replace_unstorable=True)
    outcome = telegram.handle_update(bridge.ledger, bridge.settings, update, bridge.metrics)
    bridge.metrics.telegram_updates.labels(outcome).inc()
    return {"ok": True}


# --- the request log and the OpenAPI document -----------------------------------------


@bp.before_request
def _start_clock():
    g.bridge_started = time.perf_counter()
    # The delivery thread runs in the process that serves, started with its first
    # request (a forking server's workers each start their own); see Runtime.start.
    rt().ensure_background()


@bp.after_request
def _log_request(response):
    """One ``key=value`` line per request; query values and credentials never appear."""
    started = g.get("bridge_started")
    log_request(request.method, request.path,
                request.args.keys() if request.query_string else (), response.status_code,
                time.perf_counter() - started if started is not None else 0.0,
                caller_label(rt().api_keys))
    return response


@bp.get("/openapi.json")
def openapi():
    return openapi_document(rt(), request.script_root)
