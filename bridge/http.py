"""HTTP plumbing shared by every endpoint: the one JSON error shape, strict
JSON body parsing, authentication, and the flask-smorest blueprint that
declares each endpoint once (its arguments, answers and door).

Every error, whatever raised it, is answered as
``{"code", "status", "message", "errors"}``. Bodies must be
``application/json`` (415 otherwise), well-formed UTF-8 JSON without NaN,
Infinity or duplicate keys (400 otherwise) and within the size limit (413).
Credentials are compared in constant time.
"""

from __future__ import annotations

import functools
import hmac
import json
import math
import re
from http import HTTPStatus
from typing import Any

from flask import Response, current_app, g, request
from flask_smorest import Blueprint as SmorestBlueprint
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .logs import get_logger
from .runtime import current
from .schemas import capped_errors, flatten_errors

log = get_logger("bridge.http")
MAX_DEPTH = 64


class APIError(HTTPException):
    """An HTTP error with a sentence for people and field-keyed details."""

    def __init__(
        self,
        code: int,
        message: str,
        errors: dict[str, list[str]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(description=message)
        self.code = code
        self.errors = errors or {}
        self.extra_headers = headers or {}


def error_body(code: int, message: str, errors: dict | None = None) -> dict[str, Any]:
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "Error"
    return {"code": code, "status": phrase, "message": message, "errors": errors or {}}


def error_response(
    code: int, message: str, errors: dict | None = None, headers: dict | None = None
) -> Response:
    response = current_app.json.response(error_body(code, message, errors))
    response.status_code = code
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


_MESSAGES = {
    404: "No such endpoint.",
    405: "This endpoint does not take that method.",
    413: "The request body is too large.",
}


def handle_http_exception(exc: HTTPException) -> Response:
    code = exc.code or 500
    if isinstance(exc, APIError):
        return error_response(code, exc.description, exc.errors, exc.extra_headers)
    message = _MESSAGES.get(code) or (exc.description or HTTPStatus(code).phrase)
    headers = {}
    valid_methods = getattr(exc, "valid_methods", None)
    if code == 405 and valid_methods:
        headers["Allow"] = ", ".join(valid_methods)
    if code == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="reteno-telegram-bridge"'
    return error_response(code, message, {}, headers)


def handle_unexpected(exc: Exception) -> Response:
    log.exception("unhandled error: %s", type(exc).__name__)
    return error_response(500, "The bridge failed to handle this request; it has been logged.")


def protect_answer(response: Response) -> Response:
    """An ``after_request`` hook: no browser guesses a type other than the one sent
    (``nosniff``), and no cache (a proxy's, a browser's history) keeps a JSON answer,
    which may hold chat ids, e-mail addresses and phone numbers (``no-store``). The
    blueprint's hook and the bundled app's both run on a bridge answer: the second
    finds it done."""
    # not ``in response.headers``: werkzeug raises and catches an exception for a header
    # it does not find, which cost more than the rest of this hook
    if any(key.lower() == "x-content-type-options" for key, _ in response.headers):
        return response
    response.headers["X-Content-Type-Options"] = "nosniff"
    if response.is_json:
        response.headers["Cache-Control"] = "no-store"
    return response


def register_error_handlers(target) -> None:
    """JSON errors for a blueprint (its own views) or a whole app (every route)."""
    target.register_error_handler(HTTPException, handle_http_exception)
    target.register_error_handler(Exception, handle_unexpected)


# --- bodies -------------------------------------------------------------------


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name):
    raise ValueError(f"{name} is not valid JSON")


_UTF8 = {"utf-8", "utf8", "us-ascii", "ascii"}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSTORABLE = re.compile("[\ud800-\udfff\x00]")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):  # 1e400: no database stores infinity as JSON
        raise ValueError(f"the number {literal[:40]} is out of range")
    return number


def _lenient_float(literal: str) -> float | str:
    number = float(literal)
    return number if math.isfinite(number) else literal


def _clean_text(value, replace: bool, level: int = 0):
    """Check the depth and the strings of a parsed body.

    JSON's ``\\ud800`` escapes can make strings no database or encoder takes
    (unpaired UTF-16 surrogates), and PostgreSQL text holds no NUL. Strict
    (``replace=False``): an unpaired surrogate is a 400. Lenient: both become
    U+FFFD, for webhooks where one odd field must not refuse a whole body.
    """
    if level > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if replace:
            return _UNSTORABLE.sub("\ufffd", value)
        if _LONE_SURROGATE.search(value):
            raise ValueError("a string holds an unpaired UTF-16 surrogate escape")
        return value
    if isinstance(value, dict):
        return {
            _clean_text(k, replace, level): _clean_text(v, replace, level + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_clean_text(v, replace, level + 1) for v in value]
    return value


def _int_or_text(literal: str):
    """An integer literal; one too long for int() (4,300+ digits) stays text for the
    schema to refuse, instead of failing the whole body as malformed JSON."""
    try:
        return int(literal)
    except ValueError:
        return literal


def json_body(limit: int, replace_unstorable: bool = False) -> Any:
    """The request's JSON body, or an :class:`APIError` (415, 400, 413).

    ``replace_unstorable``: unpaired surrogates and NUL characters in strings
    become U+FFFD, and a number too large for a float stays its literal text,
    instead of a 400 (see :func:`_clean_text`).
    """
    mimetype = request.mimetype or ""
    if not (mimetype == "application/json" or mimetype.endswith("+json")):
        raise APIError(415, "The body must be JSON (Content-Type: application/json).")
    charset = request.mimetype_params.get("charset", "utf-8").strip().lower()
    if charset not in _UTF8:
        raise APIError(
            415, "JSON bodies must be UTF-8 (Content-Type: application/json; charset=utf-8)."
        )
    if request.content_length is not None and request.content_length > limit:
        raise APIError(413, f"The request body is larger than {limit} bytes.")
    # One byte more than the limit: a chunked body (no Content-Length) is cut at
    # max_content_length without an error, so reading limit + 1 tells "too large".
    request.max_content_length = limit + 1
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise APIError(413, f"The request body is larger than {limit} bytes.") from None
    if len(raw) > limit:
        raise APIError(413, f"The request body is larger than {limit} bytes.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, "The body is not valid UTF-8.") from None
    try:
        data = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
            parse_float=_lenient_float if replace_unstorable else _finite_float,
            parse_int=_int_or_text,
        )
        # Unpaired surrogates and NULs can only come from \u escapes (the UTF-8 decoding
        # and the JSON grammar refuse them raw), and no body with at most MAX_DEPTH
        # brackets is nested deeper: the usual small body skips the walk.
        if "\\" in text or text.count("{") + text.count("[") > MAX_DEPTH:
            data = _clean_text(data, replace_unstorable)
    except RecursionError:
        raise APIError(400, "The body is not valid JSON: nested too deeply.") from None
    except ValueError as exc:
        raise APIError(400, f"The body is not valid JSON: {exc}") from None
    return data


# --- authentication: one decorator per door ---------------------------------------------

_BEARER_CHALLENGE = 'Bearer realm="reteno-telegram-bridge"'
TELEGRAM_SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def _equal(given: str | None, expected: str) -> bool:
    return hmac.compare_digest((given or "").encode("utf-8"), expected.encode("utf-8"))


def key_index(keys: tuple[str, ...]) -> int | None:
    """The position in ``keys`` of the request's bearer key, or None; found once per
    request (the door asks, then the request log). The key is compared with every one
    of ``keys``: the time does not tell which matched."""
    known = g.get("bridge_key_index")
    if known is not None and known[0] == keys:
        return known[1]
    auth = request.authorization  # werkzeug parses the header
    found = None
    if auth is not None and auth.type == "bearer" and (auth.token or "").strip():
        given = auth.token.strip()
        for index, key in enumerate(keys):
            if _equal(given, key) and found is None:
                found = index
    g.bridge_key_index = (keys, found)
    return found


def bearer_ok(keys: tuple[str, ...]) -> bool:
    return key_index(keys) is not None


def caller_label(keys: tuple[str, ...]) -> str:
    """Who called, for the request log, without anything derived from a credential:
    ``key#N`` (the key's place in ``BRIDGE_API_KEYS``, from 1: the same in every worker
    and after a restart), ``key#unknown`` (a bearer value that is no key), ``basic``,
    ``telegram`` or ``anonymous``."""
    scheme = request.headers.get("Authorization", "").partition(" ")[0].lower()
    if scheme == "bearer":
        index = key_index(keys)
        return "key#unknown" if index is None else f"key#{index + 1}"
    if scheme == "basic":
        return "basic"
    if request.headers.get(TELEGRAM_SECRET_HEADER):
        return "telegram"
    return "anonymous"


def _basic_ok(username: str | None, password: str | None) -> bool:
    auth = request.authorization
    if not username or not password or auth is None or auth.type != "basic":
        return False
    return _equal(auth.username, username) & _equal(auth.password, password)


# Each door's scheme, for the OpenAPI document; a door documents itself on every
# view it guards (``security`` and its 401), so no view restates it.
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "One of BRIDGE_API_KEYS."},
    "webhookBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "BRIDGE_WEBHOOK_USERNAME / BRIDGE_WEBHOOK_PASSWORD (Reteno's webhook).",
    },
    "telegramSecret": {
        "type": "apiKey",
        "in": "header",
        "name": TELEGRAM_SECRET_HEADER,
        "description": "TELEGRAM_WEBHOOK_SECRET, the secret_token given to setWebhook.",
    },
}
BEARER = [{"bearer": []}]


def _refused(door: str) -> None:
    """Count a request a door refused (``bridge_auth_failures_total``)."""
    current().metrics.auth_failures.labels(door).inc()


def _door(security: list[dict]):
    return Blueprint.doc(security=security, responses={401: HTTPStatus.UNAUTHORIZED.name})


def bearer_required(view):
    """The door of ``/register`` and the read API: ``Authorization: Bearer <key>``."""

    @functools.wraps(view)
    def guarded(*args, **kwargs):
        if not bearer_ok(current().api_keys):
            _refused("api")
            raise APIError(
                401,
                "A valid API key is required: send Authorization: Bearer <key>.",
                headers={"WWW-Authenticate": _BEARER_CHALLENGE},
            )
        return view(*args, **kwargs)

    return _door(BEARER)(guarded)


def webhook_auth_required(view):
    """The door of ``POST /statuses``: HTTP Basic with the webhook credentials, or a
    bearer key."""

    @functools.wraps(view)
    def guarded(*args, **kwargs):
        runtime = current()
        settings = runtime.settings
        # Both checks always run (constant-time each), so the timing tells nothing.
        ok = _basic_ok(settings.webhook_username, settings.webhook_password)
        ok |= bearer_ok(runtime.api_keys)
        if not ok:
            _refused("statuses")
            challenges = [_BEARER_CHALLENGE]
            if settings.webhook_username:
                challenges.insert(0, 'Basic realm="reteno-telegram-bridge"')
            raise APIError(
                401,
                "Credentials are required: HTTP Basic with the webhook user name and password "
                "(BRIDGE_WEBHOOK_USERNAME / BRIDGE_WEBHOOK_PASSWORD), or Authorization: "
                "Bearer <key>.",
                headers={"WWW-Authenticate": ", ".join(challenges)},
            )
        return view(*args, **kwargs)

    return _door([{"webhookBasic": []}, *BEARER])(guarded)


def telegram_secret_required(view):
    """The door of ``POST /telegram/webhook``: the secret-token header equal to
    TELEGRAM_WEBHOOK_SECRET (Telegram itself), or a bearer key (a bot backend forwarding
    its own updates, which then holds one credential). While the secret is unset, only a
    bearer key opens it."""

    @functools.wraps(view)
    def guarded(*args, **kwargs):
        runtime = current()
        expected = runtime.settings.telegram_webhook_secret
        # Both checks always run (constant-time each), so the timing tells nothing.
        ok = bool(expected) & _equal(
            request.headers.get(TELEGRAM_SECRET_HEADER, ""), expected or ""
        )
        ok |= bearer_ok(runtime.api_keys)
        if not ok:
            _refused("telegram")
            raise APIError(
                401,
                f"A valid API key (Authorization: Bearer <key>) or the "
                f"{TELEGRAM_SECRET_HEADER} header equal to the webhook's "
                "secret_token is required.",
                headers={"WWW-Authenticate": _BEARER_CHALLENGE},
            )
        return view(*args, **kwargs)

    return _door([{"telegramSecret": []}, *BEARER])(guarded)


def bearer_optional(view):
    """The door of ``GET /healthz``: open; a valid bearer key makes the view's
    ``authenticated`` argument True (details), a wrong one is a 401 (so an operator
    with a stale key learns it instead of seeing less)."""

    @functools.wraps(view)
    def guarded(*args, **kwargs):
        if "Authorization" not in request.headers:
            return view(*args, authenticated=False, **kwargs)
        if not bearer_ok(current().api_keys):
            _refused("healthz")
            raise APIError(
                401,
                "The API key is not valid: send a valid Authorization: Bearer "
                "<key> for the details, or no Authorization header.",
                headers={"WWW-Authenticate": _BEARER_CHALLENGE},
            )
        return view(*args, authenticated=True, **kwargs)

    return _door([{}, *BEARER])(guarded)  # open; details with a key


def metrics_auth_required(view):
    """The door of ``GET /metrics``: a bearer key, unless ``BRIDGE_METRICS_PUBLIC=true``."""

    @functools.wraps(view)
    def guarded(*args, **kwargs):
        runtime = current()
        if not runtime.settings.metrics_public and not bearer_ok(runtime.api_keys):
            _refused("metrics")
            raise APIError(
                401,
                "A valid API key is required: send Authorization: Bearer <key> "
                "(or set BRIDGE_METRICS_PUBLIC=true for a scraper on a private "
                "network).",
                headers={"WWW-Authenticate": _BEARER_CHALLENGE},
            )
        return view(*args, **kwargs)

    return _door(BEARER)(guarded)


# --- declaring endpoints: flask-smorest ----------------------------------------------


class ArgumentParser(FlaskParser):
    """webargs' parser, reading a body with :func:`json_body` (415, 400, 413 as above)
    and answering refused arguments in the one error shape: 422, keyed by field path
    (``tokens.0.email``), at most ``BRIDGE_MAX_FIELD_ERRORS`` paths. The 422's sentence
    is the schema's ``refusal``. Every schema decides for itself about unknown keys
    (webargs would drop unknown query keys)."""

    DEFAULT_VALIDATION_STATUS = 422
    DEFAULT_UNKNOWN_BY_LOCATION: dict = {}

    def load_json(self, req, schema):
        return json_body(current().settings.max_body_bytes)

    def handle_error(self, error, req, schema, *, error_status_code, error_headers):
        (messages,) = error.messages.values()  # webargs keys them by location
        raise APIError(
            422,
            getattr(schema, "refusal", "The request is not valid."),
            capped_errors(flatten_errors(messages), current().settings.max_field_errors),
        )


JSON_BODY_ERRORS = {code: HTTPStatus(code).name for code in (400, 413, 415)}


def _documenting(decorator):
    """A flask-smorest decorator that only documents (``doc``, ``alt_response``), without
    the wrapper it puts around the view, which would only call it: the same ``_apidoc``,
    on the view itself, and no extra call on every request."""

    def document(view):
        view._apidoc = decorator(view)._apidoc  # the wrapper's: a copy, with the addition
        return view

    return document


class Blueprint(SmorestBlueprint):
    """flask-smorest's blueprint with the bridge's parser; a JSON body's arguments
    document its 400, 413 and 415 as well as the 422."""

    ARGUMENTS_PARSER = ArgumentParser()

    @staticmethod
    def doc(**kwargs):
        return _documenting(SmorestBlueprint.doc(**kwargs))

    def alt_response(self, status_code, *args, **kwargs):
        return _documenting(super().alt_response(status_code, *args, **kwargs))

    def arguments(self, schema, *, location: str = "json", **kwargs):
        parse = super().arguments(schema, location=location, **kwargs)
        if location != "json":
            return parse
        return lambda view: self.json_body_doc()(parse(view))

    @staticmethod
    def json_body_doc(**doc):
        """The answers of any view that reads a JSON body (``doc``: more of the
        operation's documentation, such as a ``requestBody`` the view reads itself)."""
        responses = {**JSON_BODY_ERRORS, **doc.pop("responses", {})}
        return Blueprint.doc(responses=responses, **doc)
