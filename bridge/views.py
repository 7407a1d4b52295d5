"""The blueprint: every HTTP endpoint of the bridge, each declared once, kept thin.

flask-smorest's decorators say what an endpoint takes (``@bp.arguments``, parsed
with a schema from :mod:`bridge.schemas`), what it answers (``@bp.response``,
dumped with a schema) and which errors (``@bp.alt_response``); a door from
:mod:`bridge.http` says who may call. ``/openapi.json`` is generated from these
declarations and the views' docstrings (:mod:`bridge.openapi`). The view itself
calls the ledger (or the status / Telegram handlers). Errors of every kind leave
as the one JSON shape of :mod:`bridge.http`.
"""

from __future__ import annotations

import functools
import time
from collections import Counter

from flask import Response, g, request
from marshmallow import ValidationError

from . import statuses, telegram
from .config import MAX_TOKENS_PER_REQUEST
from .http import (
    APIError,
    Blueprint,
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
    RegisterBodySchema,
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
    capped_errors,
    flatten_errors,
    token_field,
)

bp = Blueprint("bridge", __name__, description="The Reteno Telegram bridge.")
register_error_handlers(bp)
bp.after_request(protect_answer)


def invalid(exc: ValidationError, message: str) -> APIError:
    return APIError(
        422, message, capped_errors(flatten_errors(exc.messages), rt().settings.max_field_errors)
    )


def json_request_body(schema, description: str) -> dict:
    """A ``requestBody`` for a view that reads its body itself (any object)."""
    return {
        "required": True,
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def counting_invalid(counter: str):
    """A view whose refused body (a 422) counts as ``result="invalid"`` on the metrics'
    ``counter`` (``registrations``: ``bridge_registrations_total``; ``events``)."""

    def decorate(view):
        @functools.wraps(view)
        def counted(*args, **kwargs):
            try:
                return view(*args, **kwargs)
            except APIError as exc:
                if exc.code == 422:
                    getattr(rt().metrics, counter).labels("invalid").inc()
                raise

        return counted

    return decorate


# --- POST /register ----------------------------------------------------------


# RegisterBodySchema parses one token object or a batch; the document says so as the
# oneOf of the two schemas (a marshmallow schema cannot describe a union itself).
@bp.post("/register", tags=["registration"])
@bp.doc(
    description=(
        f'One token object, or `{{"tokens": [...]}}` with 1 to {MAX_TOKENS_PER_REQUEST}. 202 '
        "means the registrations are durably in the ledger; delivery happens off the request "
        "path. A token already registered with the same identifier, and not removed, is "
        "answered as a duplicate and not queued again."
    ),
    requestBody=json_request_body(
        {"oneOf": [TokenSchema, BatchSchema]}, "A token object or a batch of them."
    ),
)
@bearer_required
@counting_invalid("registrations")
@bp.arguments(RegisterBodySchema())
@bp.response(202, RegisterResponseSchema, description="One result per token object, in order.")
def register(items):
    """Register contact tokens with Reteno (through the ledger's outbox)"""
    bridge = rt()
    outcomes = bridge.ledger.register(items, source="api")
    duplicates = sum(o.duplicate for o in outcomes)  # counted per body, not per token
    for label, count in (("duplicate", duplicates), ("queued", len(outcomes) - duplicates)):
        if count:
            bridge.metrics.registrations.labels(label).inc(count)
    for state, count in Counter(
        o.state for o in outcomes if o.conflict and not o.duplicate
    ).items():
        bridge.metrics.conflicts.labels(state).inc(count)
    return {"registrations": outcomes}


# --- POST /mute, POST /unmute ------------------------------------------------------

MUTE_DESCRIPTION = (
    "The chat must have a live registration. 202 means the request is in the ledger; it goes "
    "to Reteno through the outbox once Reteno knows the chat, with the same retries and "
    "pause as registrations. For a bot's own /stop and /resume."
)


def _mute(mute_request):
    record = rt().ledger.mute(mute_request, source="api")
    if record is None:
        raise APIError(
            404,
            "The chat has no live registration; register it first.",
            {"token": ["No live registration."]},
        )
    return record


@bp.post("/mute", tags=["registration"])
@bp.doc(description=MUTE_DESCRIPTION)
@bearer_required
@bp.arguments(MuteSchema(), description="The chat, and how long.")
@bp.response(202, MuteResultSchema, description="Queued for Reteno.")
@bp.alt_response(404, response="NOT_FOUND")
def mute(mute_request):
    """Mute a chat's marketing messages for a while or until unmuted

    Transactional messages still arrive; the last request wins.
    """
    return _mute(mute_request)


@bp.post("/unmute", tags=["registration"])
@bp.doc(description=MUTE_DESCRIPTION)
@bearer_required
@bp.arguments(UnmuteSchema(), description="The chat.")
@bp.response(202, MuteResultSchema, description="Queued for Reteno.")
@bp.alt_response(404, response="NOT_FOUND")
def unmute(mute_request):
    """Let a chat's marketing messages arrive again"""
    return _mute(mute_request)


# --- reading the ledger ---------------------------------------------------------


@bp.get("/tokens", tags=["ledger"])
@bearer_required
@bp.arguments(TokenQuerySchema(), location="query")
@bp.response(200, TokenPageSchema, description="A page of registrations.")
def tokens(query):
    """Query registrations, newest first

    Identifiers are normalised as `/register` normalises them. Pages are
    keyset-paginated: pass `next` of a page as `cursor` to get the following one;
    `next` is null on the last page.
    """
    limit = query.pop("limit")
    cursor = query.pop("cursor", None)
    try:
        rows, nxt = rt().ledger.find(query, limit=limit, cursor=cursor)
    except ValueError as exc:
        raise APIError(422, "The query is not valid.", {"cursor": [str(exc)]}) from None
    return {"items": rows, "next": nxt}


_PATH_TOKEN = {
    "in": "path",
    "name": "token",
    "description": "Telegram chat id.",
    "schema": {"type": "string", "pattern": token_field().metadata["pattern"]},
}


@bp.get("/tokens/<token>/history", tags=["ledger"], parameters=[_PATH_TOKEN])
@bearer_required
@bp.response(
    200, HistorySchema, description="Submissions, upstream attempts, statuses and removals."
)
@bp.alt_response(422, response="UNPROCESSABLE_ENTITY")
@bp.alt_response(404, response="NOT_FOUND")
def history(token: str):
    """Every event of a token, oldest first"""
    try:
        token = normalize_token(token)
    except IdentifierError as exc:
        raise APIError(422, "Not a Telegram chat id.", {"token": exc.messages}) from None
    return {"token": token, "events": rt().ledger.history(token)}


# --- operations ---------------------------------------------------------------------


@bp.get("/healthz", tags=["operations"])
@bearer_optional
@bp.response(200, HealthSchema, description="The bridge is up.")
@bp.alt_response(503, response="SERVICE_UNAVAILABLE")
def healthz(authenticated: bool):
    """Health: status and reason codes, the sandbox flag

    With a bearer key, also the outbox, dead letters, held conflicts and the last
    upstream result.
    """
    body, ok = rt().health(details=authenticated)
    if not ok:
        raise APIError(503, body["message"], {"database": [body["message"]]})
    return body


@bp.get("/metrics", tags=["operations"])
@metrics_auth_required
@bp.alt_response(
    200,
    schema={"type": "string"},
    content_type="text/plain",
    success=True,
    description="Prometheus text format 0.0.4.",
)
def metrics():
    """Prometheus metrics (text exposition format); open with BRIDGE_METRICS_PUBLIC=true"""
    return Response(
        rt().metrics.render(),
        mimetype="text/plain",
        content_type="text/plain; version=0.0.4; charset=utf-8",
    )


# --- statuses: Reteno's activity webhook and the bot backend's reports ----------------


@bp.get("/statuses", tags=["statuses"])
@bp.doc(security=[])
@bp.response(200, StatusProbeSchema, description="The webhook is here.")
def statuses_probe():
    """Answers 200 (Reteno checks the webhook URL with a GET)"""
    return {"status": "ok", "message": "POST status events (a JSON object or array) here."}


@bp.post("/statuses", tags=["statuses"])
@webhook_auth_required
@Blueprint.json_body_doc(
    requestBody=json_request_body(
        {"oneOf": [StatusEventSchema, {"type": "array", "items": StatusEventSchema}]},
        "A status event or an array of them.",
    ),
    responses={422: "UNPROCESSABLE_ENTITY"},
)
@bp.response(200, StatusResultSchema, description="What the events did.")
def statuses_post():
    """Message statuses from Reteno's webhook or the bot backend

    One event or an array of events, in the simple vocabulary (`status`, `error`,
    `token` and/or identifiers) or as Reteno activity webhook objects. A failure whose
    error says the bot can no longer reach the chat (Telegram's `Forbidden: bot was
    blocked by the user`, `user is deactivated`, `bot was kicked from the ... chat`, or
    a bare Forbidden / 403) removes the token; others (`Bad Request: chat not found`)
    are recorded only. Offset-less times are read in BRIDGE_STATUS_TIMEZONE; a time
    later than its receipt counts as its receipt. Every JSON object or array of objects
    is answered 200; replays change nothing.
    """
    bridge = rt()
    data = json_body(bridge.settings.max_body_bytes, replace_unstorable=True)
    try:
        objects = statuses.events_from_body(data, bridge.settings.max_status_events)
    except statuses.TooManyEvents as exc:
        raise APIError(413, str(exc)) from None
    except ValidationError as exc:
        raise invalid(
            exc, "The body must be a status event object or an array of them; nothing was recorded."
        ) from None
    return statuses.handle(bridge.ledger, objects, bridge.metrics, bridge.settings.status_timezone)


# --- Telegram: the bot's webhook (blocks, unblocks, /start deep links) --------------------


@bp.post("/telegram/webhook", tags=["telegram"])
@telegram_secret_required
@Blueprint.json_body_doc(
    requestBody=json_request_body(
        {"anyOf": [TelegramUpdateSchema, {"description": "Any other JSON value: ignored."}]},
        "A Telegram Update object.",
    )
)
@bp.response(200, TelegramAckSchema, description="Taken (whatever the update held).")
def telegram_webhook():
    """Telegram bot updates: blocks, unblocks and /start deep links

    Telegram sends the secret-token header (TELEGRAM_WEBHOOK_SECRET); a bot backend
    forwarding its own updates sends a bearer key.
    """
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


# Path variables that are credentials: a claim code registers a chat for whoever holds it.
SECRET_PATH_VARIABLES = frozenset({"code"})


def _logged_path() -> str:
    """The request's path as the request log shows it: a secret variable of its route
    is ``…``. (This blueprint's hooks see only requests that matched one of its routes.)"""
    pattern, segments = request.url_rule.rule.split("/"), request.path.split("/")
    if len(pattern) != len(segments):  # a variable spanning segments: mask from there
        return "/".join(segments[:2]) + "/…"
    return "/".join(
        "…" if _variable(part) in SECRET_PATH_VARIABLES else segment
        for part, segment in zip(pattern, segments, strict=True)
    )


def _variable(part: str) -> str | None:
    """``code`` for a rule's segment ``<code>`` or ``<string:code>``, else None."""
    if part.startswith("<") and part.endswith(">"):
        return part[1:-1].rsplit(":", 1)[-1]
    return None


@bp.after_request
def _log_request(response):
    """One ``key=value`` line per request; query values and credentials never appear."""
    started = g.get("bridge_started")
    log_request(
        request.method,
        _logged_path(),
        request.args.keys() if request.query_string else (),
        response.status_code,
        time.perf_counter() - started if started is not None else 0.0,
        caller_label(rt().api_keys),
    )
    return response


@bp.get("/openapi.json", tags=["operations"])
@bp.doc(security=[])
@bp.alt_response(
    200, schema={"type": "object"}, description="An OpenAPI 3.1 document.", success=True
)
def openapi():
    """This document"""
    return openapi_document(rt(), request.script_root)


# the links' endpoints, declared on this blueprint in a module of their own
from . import event_views, link_views  # noqa: E402, F401
