"""marshmallow schemas: what the bridge accepts and what it answers.

Owns the request shapes (at least one identifier; Reteno's priority
contactId → externalCustomerId → phone → email), each identifier field through
its rule in :mod:`bridge.identifiers`, and the shape of every response. The
views parse with these schemas and dump with them, and ``/openapi.json`` is
generated from them.
"""

from __future__ import annotations

from typing import Any

from marshmallow import (
    EXCLUDE,
    INCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
    validates_schema,
)

from .config import MAX_LINK_TTL, MAX_TOKENS_PER_REQUEST, parse_duration
from .identifiers import (
    CONTACT_ID_PATTERN,
    EMAIL_PATTERN,
    EXTERNAL_ID_PATTERN,
    INT64_MAX,
    INTEGER_RANGE,
    PHONE_PATTERN,
    TOKEN_PATTERN,
    IdentifierError,
    normalize_contact_id,
    normalize_email,
    normalize_external_id,
    normalize_phone,
    normalize_token,
)
from .ledger import MuteRequest, State, TokenRequest
from .ledger.commands import MAX_MUTE_SECONDS, MIN_MUTE_SECONDS
from .ledger.linking import CLAIM_TTL
from .models import IDENTIFIERS

STATES = tuple(s.value for s in State)


class Normalized(fields.Field):
    """A field whose value goes through one of :mod:`bridge.identifiers`' rules."""

    def __init__(self, normalizer, *, openapi: dict | None = None, **kwargs):
        kwargs.setdefault("metadata", {}).update(openapi or {})
        super().__init__(**kwargs)
        self.normalizer = normalizer

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return self.normalizer(value)
        except IdentifierError as exc:
            raise ValidationError(exc.messages) from None

    def _serialize(self, value, attr, obj, **kwargs):
        return value


def token_field(**kwargs) -> Normalized:
    return Normalized(
        normalize_token,
        openapi={
            "type": ["integer", "string"],
            "pattern": TOKEN_PATTERN,
            **INTEGER_RANGE,
            "not": {"const": 0},
            "description": "Telegram chat id (a non-zero signed 64-bit integer, or its digits "
            "as a string); forwarded to Reteno as a string.",
            "example": "123456789",
        },
        **kwargs,
    )


def identifier_fields(nullable: bool = False) -> dict[str, fields.Field]:
    """The four identifier fields; ``nullable``: ``null`` is accepted and counts as absent
    (many clients serialise an absent field as null)."""

    def spec(kind, **more) -> dict:  # apispec adds "null" to the type of allow_none
        if nullable:
            more["description"] = (more.get("description", "") + " Null counts as absent.").strip()
        return {"type": kind, **more}

    return {
        "contactId": Normalized(
            normalize_contact_id,
            allow_none=nullable,
            openapi=spec(
                ["integer", "string"],
                format="int64",
                minimum=1,
                maximum=INT64_MAX,
                pattern=CONTACT_ID_PATTERN,
                description="A positive 64-bit integer (or its digits as a string).",
            ),
        ),
        "externalCustomerId": Normalized(
            normalize_external_id,
            allow_none=nullable,
            openapi=spec(
                "string",
                minLength=1,
                maxLength=255,
                pattern=EXTERNAL_ID_PATTERN,
                description="Trimmed; no control or invisible format characters.",
            ),
        ),
        "phone": Normalized(
            normalize_phone,
            allow_none=nullable,
            openapi=spec(
                "string",
                example="+380 (95) 649-09-55",
                pattern=PHONE_PATTERN,
                description="7-15 digits; stored and forwarded as the digits alone.",
            ),
        ),
        "email": Normalized(
            normalize_email,
            allow_none=nullable,
            openapi=spec(
                "string", maxLength=254, pattern=EMAIL_PATTERN, description="Trimmed, lower-cased."
            ),
        ),
    }


# --- POST /register ----------------------------------------------------------


class TokenSchema(Schema):
    """One token object of ``POST /register``."""

    # for /openapi.json: the rule of _an_identifier, which no field can say
    openapi_rules = {
        "anyOf": [
            {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
            for name, _ in IDENTIFIERS
        ]
    }

    class Meta:
        unknown = RAISE

    token = token_field(required=True)
    contactId, externalCustomerId, phone, email = identifier_fields(nullable=True).values()

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _an_identifier(self, data, original, **kwargs):
        # Per object, reported only when the object's other fields are valid. A batch
        # loads its tokens as one collection, whose hooks marshmallow skips as soon as
        # any token has an error, so this one runs always and tells for itself: without
        # an identifier, the only other errors an object can have are its token's (then
        # not loaded) and unknown fields.
        if (
            isinstance(original, dict)
            and "token" in data
            and original.keys() <= self.fields.keys()
            and not any(original.get(name) is not None for name, _ in IDENTIFIERS)
        ):
            raise ValidationError(
                "At least one identifier is required: contactId, externalCustomerId, "
                "phone or email.",
                "identifiers",
            )

    @post_load
    def _request(self, data, **kwargs) -> TokenRequest:
        return TokenRequest(
            data["token"],
            data.get("contactId"),
            data.get("externalCustomerId"),
            data.get("phone"),
            data.get("email"),
        )


class BatchSchema(Schema):
    """``{"tokens": [token objects]}``, 1 to 1000 of them."""

    class Meta:
        unknown = RAISE

    # One nested load of many (not a List of Nested, which loads each token as a schema
    # of its own): a third less work for a 1,000-token body (BENCHMARKS.md §7).
    tokens = fields.Nested(
        TokenSchema,
        many=True,
        required=True,
        validate=validate.Length(min=1, max=MAX_TOKENS_PER_REQUEST),
        error_messages={"type": "Not a valid list."},
    )

    @pre_load
    def _bound(self, data, **kwargs):
        # Refuse oversize batches before validating every element.
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if isinstance(tokens, list) and len(tokens) > MAX_TOKENS_PER_REQUEST:
            raise ValidationError(
                f"Length must be between 1 and {MAX_TOKENS_PER_REQUEST}, got {len(tokens)}.",
                "tokens",
            )
        return data


_token_schema = TokenSchema()
_batch_schema = BatchSchema()


class RegisterBodySchema(Schema):
    """The body of ``POST /register``: one token object or ``{"tokens": [...]}``
    (documented as ``oneOf`` the two); loads as the list of :class:`TokenRequest`."""

    refusal = "The registration is not valid; nothing was stored."

    def load(self, data, **kwargs) -> list[TokenRequest]:
        if isinstance(data, dict) and "tokens" in data:
            return _batch_schema.load(data)["tokens"]
        if isinstance(data, dict):
            return [_token_schema.load(data)]
        raise ValidationError('Must be a token object or {"tokens": [token objects]}.', "_body")


class RegistrationResultSchema(Schema):
    id = fields.Integer()
    token = fields.String()
    matchedBy = fields.String(attribute="matched_by")
    state = fields.String(validate=validate.OneOf(STATES))
    duplicate = fields.Boolean()
    conflict = fields.Boolean(
        metadata={"description": "The chat has a live registration under another identity."}
    )


class RegisterResponseSchema(Schema):
    registrations = fields.Nested(RegistrationResultSchema, many=True)


# --- POST /mute, POST /unmute --------------------------------------------------------


class UnmuteSchema(Schema):
    """``POST /unmute``: a chat whose marketing messages are to arrive again."""

    refusal = "The request is not valid; nothing was stored."

    class Meta:
        unknown = RAISE

    token = token_field(required=True)

    @post_load
    def _request(self, data, **kwargs) -> MuteRequest:
        return MuteRequest(data["token"], mute=False)


class MuteSchema(UnmuteSchema):
    """``POST /mute``: a chat whose marketing messages are to stop for ``duration``
    seconds, or until unmuted (transactional messages still arrive)."""

    duration = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(min=MIN_MUTE_SECONDS, max=MAX_MUTE_SECONDS),
        metadata={
            "description": "Seconds (5 to 31,536,000); absent or null: until unmuted.",
            "example": 86400,
        },
    )

    @post_load
    def _request(self, data, **kwargs) -> MuteRequest:
        return MuteRequest(data["token"], mute=True, duration=data.get("duration"))


class MuteResultSchema(Schema):
    """The answer of ``POST /mute`` and ``POST /unmute`` (202: queued for Reteno)."""

    token = fields.String()
    muted = fields.Boolean()
    mutedUntil = fields.AwareDateTime(
        attribute="muted_until",
        allow_none=True,
        metadata={"description": "When the mute ends; null while muted: until unmuted."},
    )
    state = fields.String(metadata={"example": "queued"})
    requestedAt = fields.AwareDateTime(attribute="requested_at")


# --- links ---------------------------------------------------------------------------

_AN_IDENTIFIER = (
    "At least one identifier is required: contactId, externalCustomerId, phone or email."
)


class IdentifiersSchema(Schema):
    """A customer's identifiers, as ``/register`` takes them (at least one); loads as a
    dict of the ones given, by API name, in normal form."""

    refusal = "The identifiers are not valid; nothing was stored."
    openapi_rules = TokenSchema.openapi_rules

    class Meta:
        unknown = RAISE

    contactId, externalCustomerId, phone, email = identifier_fields(nullable=True).values()

    @validates_schema(skip_on_field_errors=True)
    def _an_identifier(self, data, **kwargs):
        if not any(data.get(name) is not None for name, _ in IDENTIFIERS):
            raise ValidationError(_AN_IDENTIFIER, "identifiers")

    @post_load
    def _identifiers(self, data, **kwargs) -> dict:
        return {name: data[name] for name, _ in IDENTIFIERS if data.get(name) is not None}


class Ttl(fields.Field):
    """Seconds (an integer from 1), or a duration ``90m``, ``12h``, ``30d``; at most
    :data:`MAX_LINK_TTL`."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValidationError("Must be a number of seconds or a duration like 90m, 12h, 30d.")
        try:
            seconds = value if isinstance(value, int) else parse_duration(value)
        except ValueError:
            raise ValidationError("Not a duration like 90m, 12h or 30d.") from None
        if not 1 <= seconds <= MAX_LINK_TTL:
            raise ValidationError(
                f"Must be from 1 second to {MAX_LINK_TTL // 86400} days ({MAX_LINK_TTL} s)."
            )
        return seconds


class LinkRequestSchema(IdentifiersSchema):
    """``POST /links``: the customer's identifiers, and how long the link stays valid."""

    refusal = "The link request is not valid; nothing was stored."

    ttl = Ttl(
        metadata={
            "type": ["integer", "string"],
            "minimum": 1,
            "maximum": MAX_LINK_TTL,
            "pattern": r"^\s*\d{1,9}[smhdSMHD]?\s*$",
            "description": "Seconds (an integer from 1), or `90m`, `12h`, `30d`; at most "
            f"{MAX_LINK_TTL // 86400} days. Default: BRIDGE_LINK_TTL.",
            "example": "12h",
        }
    )

    @post_load
    def _identifiers(self, data, **kwargs) -> dict:
        return {
            "identifiers": super()._identifiers(data),
            "ttl": data.get("ttl"),
        }


class LinkCreatedSchema(Schema):
    """The answer of ``POST /links`` (201)."""

    id = fields.String(metadata={"description": "The link's id: for its status and QR code."})
    url = fields.String(metadata={"example": "https://t.me/my_shop_bot?start=L0123456789abcdef"})
    payload = fields.String(
        metadata={"description": "The `/start` payload: opaque, no personal data."}
    )
    expiresAt = fields.AwareDateTime(
        attribute="expires_at",
        allow_none=True,
        metadata={"description": "Null: never expires (BRIDGE_LINK_TTL=0)."},
    )
    qr = fields.String(metadata={"description": "The path of its QR code (SVG)."})


class LinkStatusSchema(Schema):
    """``GET /links/<id>``."""

    id = fields.String()
    state = fields.String(
        validate=validate.OneOf(("pending", "used", "expired", "revoked")),
        metadata={"description": "`used`: a chat opened it (`token`, `usedAt`)."},
    )
    expiresAt = fields.AwareDateTime(attribute="expires_at", allow_none=True)
    usedAt = fields.AwareDateTime(attribute="used_at", allow_none=True)
    token = fields.String(
        allow_none=True, metadata={"description": "The chat id once used, else null."}
    )


class ClaimCodeRequestSchema(Schema):
    """``POST /links/claims``: the chat that asks for a code."""

    refusal = "The request is not valid; nothing was stored."

    class Meta:
        unknown = RAISE

    token = token_field(required=True)


class ClaimCodeSchema(Schema):
    """The answer of ``POST /links/claims`` (201)."""

    code = fields.String(
        metadata={
            "description": f"Single use, valid {CLAIM_TTL.seconds // 60} minutes: the site "
            "claims it with the customer's identifiers."
        }
    )
    expiresAt = fields.AwareDateTime(attribute="expires_at")


# --- errors --------------------------------------------------------------------


class ErrorSchema(Schema):
    code = fields.Integer(metadata={"example": 422})
    status = fields.String(metadata={"example": "Unprocessable Entity"})
    message = fields.String()
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"example": {"tokens.0.email": ["Not a valid email address."]}},
    )


def flatten_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested messages as ``{"tokens.0.email": [...]}``."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        items = messages.items()
        if all(isinstance(key, int) for key in messages):  # a list's: in the list's order
            items = sorted(items)
        for key, value in items:
            name = prefix if key == "_schema" else (f"{prefix}.{key}" if prefix else str(key))
            for path, msgs in flatten_errors(value, name).items():
                out.setdefault(path, []).extend(msgs)
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out[prefix or "_body"] = list(messages)
    elif isinstance(messages, list):
        for index, value in enumerate(messages):
            name = f"{prefix}.{index}" if prefix else str(index)
            for path, msgs in flatten_errors(value, name).items():
                out.setdefault(path, []).extend(msgs)
    else:
        out[prefix or "_body"] = [str(messages)]
    return out


def capped_errors(errors: dict[str, list[str]], limit: int) -> dict[str, list[str]]:
    """The first ``limit`` field paths of ``errors``; the number of the others under
    ``_more`` (a body with 330,000 unknown keys made a 9.5 MB 422)."""
    if len(errors) <= limit:
        return errors
    kept = dict(list(errors.items())[:limit])
    kept["_more"] = [f"{len(errors) - limit} more fields have errors (not listed)."]
    return kept


# --- reading the ledger ------------------------------------------------------


class TokenQuerySchema(Schema):
    """Filters of ``GET /tokens`` (identifiers normalised as ``/register`` does)."""

    refusal = "The query is not valid."

    class Meta:
        unknown = RAISE

    token = token_field()
    contactId, externalCustomerId, phone, email = identifier_fields().values()
    state = fields.String(validate=validate.OneOf(STATES))
    conflict = fields.Boolean(
        metadata={
            "description": "Only registrations submitted while "
            "the chat had another identity (true), or not."
        }
    )
    quietDays = fields.Integer(
        validate=validate.Range(min=1, max=36500),
        metadata={
            "description": "The stale-token report: live registrations with no sign of life for "
            "this many days, the longest quiet first."
        },
    )
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    cursor = fields.String(validate=validate.Length(max=200))


class RegistrationSchema(Schema):
    """A registration as the read API shows it."""

    id = fields.Integer()
    token = fields.String()
    contactId = fields.Integer(attribute="contact_id", allow_none=True)
    externalCustomerId = fields.String(attribute="external_customer_id", allow_none=True)
    phone = fields.String(allow_none=True)
    email = fields.String(allow_none=True)
    matchedBy = fields.String(attribute="matched_by")
    state = fields.String()
    attempts = fields.Integer()
    lastError = fields.String(attribute="last_error", allow_none=True)
    nextAttemptAt = fields.AwareDateTime(attribute="next_attempt_at", allow_none=True)
    createdAt = fields.AwareDateTime(attribute="created_at")
    deliveredAt = fields.AwareDateTime(attribute="delivered_at", allow_none=True)
    removedAt = fields.AwareDateTime(attribute="removed_at", allow_none=True)
    removalReason = fields.String(attribute="removal_reason", allow_none=True)
    lastSeenAt = fields.AwareDateTime(
        attribute="last_seen_at",
        allow_none=True,
        metadata={
            "description": "Latest sign of life: submission, unblock, /start, or a "
            "SENT / DELIVERED / CLICKED status."
        },
    )
    conflict = fields.Boolean(
        metadata={
            "description": "Submitted while the chat had a live "
            "registration under another identity."
        }
    )
    retenoHolds = fields.Boolean(
        attribute="reteno_holds",
        metadata={
            "description": "Reteno still holds the token: delivered under this identity, and "
            "no Forbidden from Reteno since (a Telegram block leaves it held; an "
            "unblock then sends nothing)."
        },
    )
    muted = fields.Boolean(
        metadata={"description": "The chat's marketing messages are muted (POST /mute)."}
    )
    mutedUntil = fields.AwareDateTime(
        attribute="muted_until",
        allow_none=True,
        metadata={"description": "When the mute ends; null while muted: until unmuted."},
    )


class TokenPageSchema(Schema):
    items = fields.List(fields.Nested(RegistrationSchema))
    next = fields.String(allow_none=True)


class EventSchema(Schema):
    at = fields.AwareDateTime()
    kind = fields.String()
    detail = fields.Dict()
    registrationId = fields.Integer(attribute="registration_id", allow_none=True)


class HistorySchema(Schema):
    token = fields.String()
    events = fields.List(fields.Nested(EventSchema))


_DETAILS = {"description": "With a bearer key only."}


class HealthSchema(Schema):
    """``GET /healthz``: status, reason codes and the sandbox flag for anyone; the rest
    only with a bearer key."""

    class Meta:
        unknown = EXCLUDE

    status = fields.String(metadata={"enum": ["ok", "degraded"], "example": "ok"})
    reasons = fields.List(
        fields.String(),
        metadata={
            "description": "Why degraded: delivery_paused, delivery_held, upstream_failing, "
            "dead_letters, dead_commands, held_conflicts, outbox_backlog."
        },
    )
    sandbox = fields.Boolean()
    warning = fields.String(metadata={"description": "Present in sandbox mode."})
    database = fields.Dict(metadata=_DETAILS)
    outbox = fields.Dict(metadata=_DETAILS)
    deadLetters = fields.Integer(metadata=_DETAILS)
    deadCommands = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={
            "description": "With a bearer key only: mutes, unmutes, replays and custom events "
            "(`event`) Reteno refused for good, by action (none: {})."
        },
    )
    heldConflicts = fields.Integer(metadata=_DETAILS)
    delivery = fields.Dict(metadata=_DETAILS)
    lastUpstream = fields.Dict(
        allow_none=True,
        metadata={
            "description": "With a bearer key only: outcome, HTTP status, reason code, time."
        },
    )
    platform = fields.String(metadata={"example": "reteno", **_DETAILS})
    states = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata=_DETAILS)


# --- statuses, Telegram (documented in /openapi.json) ---------------------------------


def _loose(description: str, **metadata) -> fields.Raw:
    """A field documented as is, any JSON value: the statuses handler normalises (or
    ignores) it, so the document promises nothing about its type."""
    return fields.Raw(metadata={"description": description, **metadata})


class StatusEventSchema(Schema):
    """One event of ``POST /statuses``, in either vocabulary: any object (a value the
    handler cannot read is ignored and counted, never refused); other fields are ignored."""

    class Meta:
        unknown = INCLUDE

    status = _loose("Simple vocabulary (a bot backend): SENT, FAILED or CLICKED.", example="FAILED")
    error = _loose("Why it failed.", example="Forbidden: bot was blocked by the user")
    token = _loose("Telegram chat id.", example="123456789")
    contactId = _loose("Reteno contact id.")
    externalCustomerId = _loose("External customer id.")
    phone = _loose("Phone number.")
    sms = _loose("Reteno's name for the phone.")
    email = _loose("E-mail address.")
    activityStatus = _loose(
        "Reteno activity webhook: SENT, DELIVERED, UNDELIVERED, CLICKED, BOT_SEND_ERROR, ...",
        example="UNDELIVERED",
    )
    statusDescription = _loose("Reteno's description of the status.", example="Forbidden")
    mediaType = _loose("Reteno's channel.")
    messageId = _loose("Reteno message id.")
    activityDateTime = _loose(
        "When it happened: ISO 8601 (no offset: in "
        "BRIDGE_STATUS_TIMEZONE, UTC by default) or epoch seconds."
    )
    time = _loose("The simple vocabulary's event time, as activityDateTime.")


class StatusResultSchema(Schema):
    """The answer of ``POST /statuses``."""

    processed = fields.Integer(metadata={"description": "Events in the body."})
    removed = fields.List(fields.String(), metadata={"description": "Tokens removed now."})
    unmatched = fields.Integer(metadata={"description": "Events that matched no registration."})
    ignored = fields.Integer(
        metadata={"description": "Objects with no recognisable status or identifier."}
    )
    stale = fields.Integer(
        metadata={
            "description": "Blocks older than the chat's latest sign of life: nothing removed."
        }
    )
    ambiguous = fields.Integer(
        metadata={
            "description": "Blocks naming no token whose "
            "identifier matched several live "
            "chats: nothing removed."
        }
    )


class StatusProbeSchema(Schema):
    """The answer of ``GET /statuses`` (Reteno's check of the webhook URL)."""

    status = fields.String(metadata={"example": "ok"})
    message = fields.String()


class TelegramUpdateSchema(Schema):
    """A Telegram ``Update``, any object: the bridge reads ``my_chat_member`` and
    ``message`` and ignores what it cannot read."""

    class Meta:
        unknown = INCLUDE

    update_id = _loose("Telegram's update id.")
    message = _loose("Text `/start <signed payload>` registers.")
    my_chat_member = _loose("`kicked` removes the chat's token; `member` queues it again.")


class TelegramAckSchema(Schema):
    ok = fields.Boolean(metadata={"example": True})
