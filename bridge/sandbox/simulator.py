"""The simulator itself: an in-memory imitation of the Reteno calls the bridge makes,
``POST /api/v1/apps/{app_uuid}/tokens``, ``POST /api/v1/apps/{app_uuid}/token/mute``,
``.../token/unmute`` and ``POST /api/v2/event``, with what is needed to exercise a client against it
without a Reteno account:

* the same request validation, error codes and error bodies as the real API,
  both auth schemes (``X-Reteno-Access-Key`` header or HTTP Basic), and
  Reteno's contact matching (contactId -> externalCustomerId -> phone -> email,
  tokens appended, never updated, so duplicates pile up exactly as upstream);
* mute state per (app uuid, token): muted until a time (``duration`` seconds
  after receipt) or for ever (no ``duration``), the last mute replacing the one
  before, cleared by an unmute; a mute of a token no contact holds is accepted
  and recorded too (Reteno documents no error for it);
* custom events (:mod:`.events`: Reteno's checks and 400s, the contact identifier the
  params must carry), matched to a contact when one holds that identifier, the newest
  kept for the page, under a limit of their own (``event_rps``, Reteno's 350 a second);
* a global requests-per-second limit (429 beyond it) and fault injection
  (500, 503, 429 with and without ``Retry-After``, a slow answer that outlasts
  the client's read timeout, and a dropped connection), plus added latency,
  shared by all three calls;
* a "block" action that removes a token the way Reteno does after a FAILED
  ``403 Forbidden: bot was blocked by the user`` delivery (dropping its mutes: a
  blocked token that comes back is a new token) and emits the matching status
  event to a callback or to a webhook URL (the bridge's ``/statuses``);
* inspection (contacts, muted chats, counters) for the page and the JSON
  endpoints of :mod:`.web`.

State lives in memory only (no database) and is guarded by one lock; nothing
sleeps or performs HTTP while holding it. It imports nothing from the rest of
the ``bridge`` package. API keys, passwords, e-mail addresses and phone numbers
are never logged.
"""

import base64
import binascii
import copy
import hmac
import json
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from ..logs import get_logger
from .events import EVENTS_RPS, parse_event

log = get_logger("bridge.sandbox")

#: Status returned by :meth:`Simulator.add_tokens`, :meth:`Simulator.mute_token` and
#: :meth:`Simulator.unmute_token` when the connection must be dropped.
DROP_CONNECTION = 0

#: Every fault kind the simulator knows how to inject.
FAULT_KINDS: tuple[str, ...] = ("500", "503", "429", "429-retry-after", "timeout", "drop")

#: Response header set on the fallback answer when a "drop" cannot close a socket
#: (e.g. the request came through an in-process WSGI transport or a test client).
DROP_FALLBACK_HEADER = "X-Sandbox-Fault"

ACCESS_KEY_HEADER = "X-Reteno-Access-Key"
AUTH_SCHEMES = ("header", "basic")
IDENTIFIERS = ("contactId", "externalCustomerId", "phone", "email")
DEFAULT_BLOCK_REASON = "Forbidden: bot was blocked by the user"
WEBHOOK_TIMEOUT = 5.0
#: The ``duration`` (seconds) a mute may have; without one a token is muted for ever.
MUTE_DURATION_RANGE = (5, 31_536_000)
#: What :meth:`Simulator.muted` shows as ``muted_until`` of a mute without an end.
MUTED_FOREVER = "forever"

_UUID_HEX_GROUPS = (8, 4, 4, 4, 12)
RECENT_EVENTS = 100  # custom events kept for the page


@dataclass
class SimulatorOptions:
    """Behaviour of a :class:`Simulator` (see the module docstring)."""

    app_uuid: str | None = None  # None: accept any app uuid
    api_key: str | None = None  # None: accept any non-empty key
    auth: str = "header"  # "header" | "basic"
    rps: float = 200.0  # global requests-per-second limit; 0 = unlimited
    event_rps: float = EVENTS_RPS  # /api/v2/event's own limit; 0 = unlimited
    latency_ms: float = 0.0  # added to every API call (tokens, mute, unmute)
    failure_rate: float = 0.0  # 0..1 share of API calls that fail before processing
    failures: tuple[str, ...] = FAULT_KINDS  # the mix a fault is chosen from, uniformly
    timeout_seconds: float = 12.0  # how long a "timeout" fault sleeps before its 504
    seed: int | None = None
    webhook_url: str | None = None  # where status events are POSTed (the bridge's /statuses)
    webhook_username: str | None = None
    webhook_password: str | None = None
    webhook_bearer: str | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` if a setting is out of range."""
        if self.auth not in AUTH_SCHEMES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_SCHEMES)}, not {self.auth!r}")
        if not (self.rps >= 0 and math.isfinite(self.rps)):
            raise ValueError("rps must be a finite number >= 0")
        if not (self.event_rps >= 0 and math.isfinite(self.event_rps)):
            raise ValueError("event_rps must be a finite number >= 0")
        if not (self.latency_ms >= 0 and math.isfinite(self.latency_ms)):
            raise ValueError("latency_ms must be a finite number >= 0")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        if not (self.timeout_seconds >= 0 and math.isfinite(self.timeout_seconds)):
            raise ValueError("timeout_seconds must be a finite number >= 0")
        unknown = [kind for kind in self.failures if kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(
                f"unknown fault kind(s) {', '.join(unknown)}; known: {', '.join(FAULT_KINDS)}"
            )
        if self.failure_rate > 0 and not self.failures:
            raise ValueError("failure_rate > 0 needs at least one fault kind in failures")


def _error(status: int, message: str) -> dict[str, Any]:
    return {"status": status, "message": message}


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    """``moment`` as Reteno writes times: ISO 8601, milliseconds, ``Z``."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _looks_like_uuid(value: str) -> bool:
    groups = value.split("-")
    if len(groups) != len(_UUID_HEX_GROUPS):
        return False
    hexdigits = set("0123456789abcdefABCDEF")
    return all(
        len(group) == size and set(group) <= hexdigits
        for group, size in zip(groups, _UUID_HEX_GROUPS, strict=True)
    )


def _same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _redact_url(url: str | None) -> str | None:
    """The URL without user-info and query string (those may carry secrets)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<unparseable url>"


class _Headers:
    """Case-insensitive read access to a mapping of request headers."""

    def __init__(self, headers: Mapping[str, str] | None):
        self._values = {str(k).lower(): str(v) for k, v in (headers or {}).items()}

    def get(self, name: str) -> str | None:
        return self._values.get(name.lower())


class Simulator:
    """In-memory Reteno: contacts, tokens, mutes, counters, faults and status events.

    ``status_sink`` is an optional ``callable(list_of_event_dicts)`` that receives
    status events instead of ``options.webhook_url``. ``clock`` (seconds, monotonic)
    and ``sleep`` can be injected to make rate limiting and delays deterministic,
    ``utc_now`` (an aware UTC ``datetime``) to make mute ends and event times so.
    """

    def __init__(
        self,
        options: SimulatorOptions | None = None,
        status_sink: Callable[[list[dict[str, Any]]], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        utc_now: Callable[[], datetime] = _utc_now,
    ):
        options = replace(options) if options is not None else SimulatorOptions()
        options.failures = tuple(options.failures)
        options.validate()
        self.options = options
        self.status_sink = status_sink
        self._clock = clock
        self._sleep = sleep
        self._utc_now = utc_now
        self._lock = threading.Lock()
        self._reset_state()

    # ----------------------------------------------------------------- state

    def _reset_state(self) -> None:
        self._rng = random.Random(self.options.seed)
        self._contacts: list[dict[str, Any]] = []
        # (identifier, matched value) -> the first contact holding it; identifiers never
        # change once a contact exists, so matching is a look-up, not a scan of them all.
        self._by_identifier: dict[tuple[str, Any], dict[str, Any]] = {}
        self._next_contact_id = 1
        self._next_message_id = 1
        self._window: deque[float] = deque()
        self._event_window: deque[float] = deque()
        self._events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self._received: dict[str, int] = {}
        # (app uuid, token) -> muted until (UTC), None: for ever
        self._mutes: dict[tuple[str, str], datetime | None] = {}
        self._counters = {
            "requests": 0,
            "mute_requests": 0,
            "unmute_requests": 0,
            "event_requests": 0,
            "events_received": 0,
            "accepted_requests": 0,
            "tokens_received": 0,
            "rate_limited": 0,
            "unauthorized": 0,
            "rejected": 0,
            "blocked": 0,
        }
        self._faults = {kind: 0 for kind in FAULT_KINDS}

    def reset(self) -> None:
        """Forget every contact, token, mute and counter (options are kept)."""
        with self._lock:
            self._reset_state()

    def configure(self, **changes: Any) -> SimulatorOptions:
        """Change options at run time (validated); returns the new options."""
        known = {f.name for f in fields(SimulatorOptions)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(unknown)}")
        if "failures" in changes:
            changes["failures"] = tuple(changes["failures"])
        with self._lock:
            options = replace(self.options, **changes)
            options.validate()
            if options.seed != self.options.seed:
                self._rng = random.Random(options.seed)
            self.options = options
            return options

    # ------------------------------------------------------------ inspection

    def contacts(self) -> list[dict[str, Any]]:
        """Every contact, as ``{"id", "contactId", "externalCustomerId", "phone", "email",
        "tokens"}`` (copies)."""
        with self._lock:
            return copy.deepcopy(self._contacts)

    def find_by_token(self, token: str) -> list[dict[str, Any]]:
        """The contacts holding ``token``."""
        with self._lock:
            return [copy.deepcopy(c) for c in self._contacts if token in c["tokens"]]

    def received_counts(self) -> dict[str, int]:
        """Token -> how many times it arrived in accepted calls."""
        with self._lock:
            return dict(self._received)

    def muted(self) -> list[dict[str, Any]]:
        """The chats muted now, as ``{"token", "app_uuid", "muted_until"}``: the end as
        Reteno writes times, or :data:`MUTED_FOREVER`; mutes that have ended are left out."""
        now = self._utc_now()
        with self._lock:
            mutes = list(self._mutes.items())
        return [
            {
                "token": token,
                "app_uuid": app_uuid,
                "muted_until": MUTED_FOREVER if until is None else _stamp(until),
            }
            for (app_uuid, token), until in mutes
            if until is None or until > now
        ]

    def events(self) -> list[dict[str, Any]]:
        """The newest custom events taken, newest first, as ``{"at", "eventTypeKey",
        "identifier", "contact", "params"}``: the identifier's name, the matching
        contact's id (None: no contact holds it) and the param names (copies)."""
        with self._lock:
            return copy.deepcopy(list(self._events))

    def stats(self) -> dict[str, Any]:
        """Counters. ``requests`` counts every API call, ``mute_requests`` and
        ``unmute_requests`` the mute and unmute calls among them; ``accepted_requests``,
        ``rejected`` (400/404), ``unauthorized``, ``rate_limited`` and ``faults`` cover
        all three calls."""
        with self._lock:
            return self._stats_locked()

    def _stats_locked(self) -> dict[str, Any]:
        counters = self._counters
        return {
            "requests": counters["requests"],
            "mute_requests": counters["mute_requests"],
            "unmute_requests": counters["unmute_requests"],
            "event_requests": counters["event_requests"],
            "events_received": counters["events_received"],
            "accepted_requests": counters["accepted_requests"],
            "tokens_received": counters["tokens_received"],
            "distinct_tokens": len(self._received),
            "duplicate_tokens": sum(1 for n in self._received.values() if n > 1),
            "rate_limited": counters["rate_limited"],
            "faults": dict(self._faults),
            "contacts": len(self._contacts),
            "unauthorized": counters["unauthorized"],
            "rejected": counters["rejected"],
            "blocked": counters["blocked"],
        }

    # ------------------------------------------------------------ the calls

    def add_tokens(
        self, app_uuid: str, headers: Mapping[str, str] | None, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        """Handle one ``POST /api/v1/apps/{app_uuid}/tokens``.

        ``headers`` are the request headers (any mapping; looked up case-insensitively),
        ``body`` is the raw body (``bytes``/``str``) or already decoded JSON. Returns
        ``(status, json_payload, response_headers)``; status :data:`DROP_CONNECTION`
        means the caller must close the connection without answering.
        """
        answer = self._open_call(app_uuid, headers)
        if answer is not None:
            return answer
        items, problem = self._parse_body(body)
        if problem is not None:
            return self._reject(problem)
        with self._lock:
            for item in items:
                self._store_locked(item)
            self._counters["accepted_requests"] += 1
            self._counters["tokens_received"] += len(items)
        return 200, "OK", {}

    def mute_token(
        self, app_uuid: str, headers: Mapping[str, str] | None, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        """Handle one ``POST /api/v1/apps/{app_uuid}/token/mute`` (``{"token", "duration"}``):
        the token is muted for ``duration`` seconds from now, or for ever without one,
        whatever mute it had before. Arguments and result as :meth:`add_tokens`."""
        received = self._utc_now()
        answer = self._open_call(app_uuid, headers, "mute_requests")
        if answer is not None:
            return answer
        token, duration, problem = _parse_mute_body(body, with_duration=True)
        if problem is not None:
            return self._reject(problem)
        until = None if duration is None else received + timedelta(seconds=duration)
        with self._lock:
            self._mutes[(app_uuid, token)] = until
            self._counters["accepted_requests"] += 1
        return 200, "OK", {}

    def unmute_token(
        self, app_uuid: str, headers: Mapping[str, str] | None, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        """Handle one ``POST /api/v1/apps/{app_uuid}/token/unmute`` (``{"token"}``): the
        token's mute, if any, ends. Arguments and result as :meth:`add_tokens`."""
        answer = self._open_call(app_uuid, headers, "unmute_requests")
        if answer is not None:
            return answer
        token, _, problem = _parse_mute_body(body, with_duration=False)
        if problem is not None:
            return self._reject(problem)
        with self._lock:
            self._mutes.pop((app_uuid, token), None)
            self._counters["accepted_requests"] += 1
        return 200, "OK", {}

    def send_event(
        self, headers: Mapping[str, str] | None, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        """Handle one ``POST /api/v2/event``: checked as Reteno does (:mod:`.events`),
        matched to the contact holding its identifier, kept among the newest. Arguments
        and result as :meth:`add_tokens` (``body`` raw)."""
        answer = self._open_call(None, headers, "event_requests")
        if answer is not None:
            return answer
        event, problem = parse_event(body if isinstance(body, bytes | str) else json.dumps(body))
        if problem is not None:
            return self._reject(problem)
        name, value = event["identifier"]
        with self._lock:
            contact = self._by_identifier.get(_match_key(name, value))
            if contact is None and name == "contactId":  # Reteno's own contact id
                contact = next((c for c in self._contacts if c["id"] == value), None)
            self._events.appendleft(
                {
                    "at": _stamp(self._utc_now()),
                    "eventTypeKey": event["eventTypeKey"],
                    "identifier": name,
                    "contact": contact["id"] if contact else None,
                    "params": [p["name"] for p in event["params"] if p["name"] != name],
                }
            )
            self._counters["accepted_requests"] += 1
            self._counters["events_received"] += 1
        return 200, "OK", {}

    def _open_call(
        self, app_uuid: str | None, headers: Mapping[str, str] | None, counter: str | None = None
    ) -> tuple | None:
        """What every API call goes through before its body is read: counting, auth, the
        rate limit, fault injection, latency and the app check. None if the call goes on,
        else the answer to give. ``app_uuid`` None: a custom event (no app in its path; its
        own rate limit)."""
        with self._lock:
            self._counters["requests"] += 1
            if counter is not None:
                self._counters[counter] += 1
            options = self.options

        problem = self._check_auth(options, _Headers(headers))
        if problem is not None:
            with self._lock:
                self._counters["unauthorized"] += 1
            return problem

        with self._lock:
            retry_in = (
                self._admit_locked(options.rps, self._window)
                if app_uuid is not None
                else self._admit_locked(options.event_rps, self._event_window)
            )
            if retry_in is not None:
                self._counters["rate_limited"] += 1
            fault = None
            if retry_in is None and options.failure_rate > 0:
                if self._rng.random() < options.failure_rate:
                    fault = self._rng.choice(options.failures)
                    self._faults[fault] += 1
        if retry_in is not None:
            seconds = max(1, math.ceil(retry_in))
            return 429, _error(429, "Too many requests"), {"Retry-After": str(seconds)}
        if fault is not None:
            log.info("sandbox: injecting fault %s", fault)
            return self._fault_answer(fault, options)

        if options.latency_ms > 0:
            self._sleep(options.latency_ms / 1000.0)

        problem = None if app_uuid is None else self._check_app(options, app_uuid)
        return None if problem is None else self._reject(problem)

    def _reject(self, problem: tuple) -> tuple:
        """Count a call refused for its app uuid or its body; returns ``problem``."""
        with self._lock:
            self._counters["rejected"] += 1
        return problem

    @staticmethod
    def _check_auth(options: SimulatorOptions, headers: _Headers) -> tuple | None:
        if options.auth == "basic":
            given = None
            value = headers.get("Authorization") or ""
            scheme, _, encoded = value.strip().partition(" ")
            if scheme.lower() == "basic" and encoded.strip():
                try:
                    decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    decoded = ""
                _, sep, password = decoded.partition(":")
                given = password if sep else None
            challenge = {"WWW-Authenticate": 'Basic realm="Reteno sandbox"'}
        else:
            given = headers.get(ACCESS_KEY_HEADER)
            challenge = {}
        if not given:
            return 401, _error(401, "Access key is missing"), challenge
        if options.api_key is not None and not _same_secret(given, options.api_key):
            return 401, _error(401, "Invalid access key"), challenge
        return None

    def _admit_locked(self, rps: float, calls: deque[float]) -> float | None:
        """Sliding-window rate limit of ``rps`` over the times of the ``calls`` admitted;
        None if admitted, else seconds until a slot frees."""
        if rps <= 0:
            return None
        window = max(1.0, 1.0 / rps)
        capacity = max(1, int(rps * window + 1e-9))
        now = self._clock()
        while calls and calls[0] <= now - window:
            calls.popleft()
        if len(calls) >= capacity:
            return calls[0] + window - now
        calls.append(now)
        return None

    def _fault_answer(self, fault: str, options: SimulatorOptions) -> tuple:
        if fault == "500":
            return 500, _error(500, "Internal server error (injected fault)"), {}
        if fault == "503":
            return 503, _error(503, "Service unavailable (injected fault)"), {}
        if fault == "429":
            return 429, _error(429, "Too many requests (injected fault)"), {}
        if fault == "429-retry-after":
            return 429, _error(429, "Too many requests (injected fault)"), {"Retry-After": "1"}
        if fault == "timeout":
            self._sleep(options.timeout_seconds)
            return 504, _error(504, "Gateway timeout (injected fault)"), {}
        return DROP_CONNECTION, None, {}

    @staticmethod
    def _check_app(options: SimulatorOptions, app_uuid: str) -> tuple | None:
        if options.app_uuid is None and app_uuid:
            return None
        if options.app_uuid is not None and app_uuid == options.app_uuid:
            return None
        if not _looks_like_uuid(app_uuid or ""):
            return 400, _error(400, "Wrong app uuid"), {}
        return 404, _error(404, "Not registered application"), {}

    @staticmethod
    def _parse_body(body: Any) -> tuple[list[dict[str, Any]], tuple | None]:
        body, problem = _decode_body(body)
        if problem is not None:
            return [], problem
        tokens = body.get("tokens")
        if tokens is None or tokens == []:
            return [], (400, _error(400, "Tokens must be specified"), {})
        if not isinstance(tokens, list):
            return [], (400, _error(400, "tokens must be an array"), {})
        items = []
        for index, raw in enumerate(tokens):
            item, message = _parse_token_object(raw)
            if message is not None:
                return [], (400, _error(400, f"tokens[{index}]: {message}"), {})
            items.append(item)
        return items, None

    def _store_locked(self, item: dict[str, Any]) -> None:
        token = item["token"]
        contact = None
        for key in IDENTIFIERS:
            value = item.get(key)
            if value is None:
                continue
            contact = self._by_identifier.get(_match_key(key, value))
            if contact is not None:
                break
        if contact is None:
            contact = {"id": self._next_contact_id}
            contact.update({key: item.get(key) for key in IDENTIFIERS})
            contact["tokens"] = []
            self._next_contact_id += 1
            self._contacts.append(contact)
            for key in IDENTIFIERS:
                if contact[key] is not None:
                    self._by_identifier.setdefault(_match_key(key, contact[key]), contact)
        contact["tokens"].append(token)
        self._received[token] = self._received.get(token, 0) + 1

    # ----------------------------------------------------------------- block

    def block(self, token: str, reason: str = DEFAULT_BLOCK_REASON) -> list[dict[str, Any]]:
        """Remove ``token`` from every contact (as Reteno does on FAILED Forbidden).

        Emits one status event per contact that held it, to ``status_sink`` or
        ``options.webhook_url``, and returns the events ([] for an unknown token, which
        changes nothing). A removed token's mutes go with it, in every app.
        """
        stamp = _stamp(self._utc_now())
        events: list[dict[str, Any]] = []
        with self._lock:
            options = self.options
            for contact in self._contacts:
                if token not in contact["tokens"]:
                    continue
                contact["tokens"] = [t for t in contact["tokens"] if t != token]
                event: dict[str, Any] = {
                    "status": "FAILED",
                    "error": reason,
                    "token": token,
                    "activityStatus": "UNDELIVERED",
                    "statusDescription": f"403: {reason}",
                    "mediaType": "telegrambot",
                }
                for key in ("contactId", "externalCustomerId", "email"):
                    if contact.get(key) is not None:
                        event[key] = contact[key]
                event["activityDateTime"] = stamp
                event["messageId"] = self._next_message_id
                self._next_message_id += 1
                events.append(event)
            if events:
                self._counters["blocked"] += 1
                self._mutes = {key: until for key, until in self._mutes.items() if key[1] != token}
        if not events:
            return []
        log.info("sandbox: blocked token %s (%d status event(s))", token, len(events))
        self._emit(events, options)
        return events

    def _emit(self, events: list[dict[str, Any]], options: SimulatorOptions) -> None:
        if self.status_sink is not None:
            try:
                self.status_sink(copy.deepcopy(events))
            except Exception:
                log.exception("sandbox: status sink failed")
            return
        if not options.webhook_url:
            return
        target = _redact_url(options.webhook_url)
        kwargs: dict[str, Any] = {"json": events, "timeout": WEBHOOK_TIMEOUT}
        if options.webhook_username:
            kwargs["auth"] = (options.webhook_username, options.webhook_password or "")
        elif options.webhook_bearer:
            kwargs["headers"] = {"Authorization": f"Bearer {options.webhook_bearer}"}
        try:
            response = requests.post(options.webhook_url, **kwargs)
        except requests.RequestException as exc:
            log.warning("sandbox: status webhook %s failed: %s", target, type(exc).__name__)
            return
        with response:
            if response.status_code >= 300:
                log.warning("sandbox: status webhook %s answered %s", target, response.status_code)


def _match_key(key: str, value: Any) -> tuple[str, Any]:
    """How an identifier value matches a contact's: e-mail case-insensitively, the rest
    as given (Reteno's contact matching)."""
    return (key, str(value).casefold()) if key == "email" else (key, value)


def _decode_body(body: Any) -> tuple[dict[str, Any], tuple | None]:
    """The JSON object of a request body (raw or decoded), or the 400 to answer."""
    if isinstance(body, bytes | bytearray):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            return {}, (400, _error(400, "Request body must be UTF-8 JSON"), {})
    if isinstance(body, str):
        if not body.strip():
            return {}, (400, _error(400, "Tokens must be specified"), {})
        try:
            body = json.loads(body)
        except ValueError:
            return {}, (400, _error(400, "Malformed JSON body"), {})
    if not isinstance(body, dict):
        return {}, (400, _error(400, "Request body must be a JSON object"), {})
    return body, None


def _parse_mute_body(body: Any, with_duration: bool) -> tuple[str, int | None, tuple | None]:
    """The ``token`` and ``duration`` (None when absent or null: for ever) of a mute or
    unmute body, or the 400 to answer."""
    data, problem = _decode_body(body)
    if problem is not None:
        return "", None, problem
    token = data.get("token")
    if not isinstance(token, str) or not token.strip():
        return "", None, (400, _error(400, "Tokens must be specified"), {})
    duration = data.get("duration") if with_duration else None
    if duration is None:
        return token, None, None
    low, high = MUTE_DURATION_RANGE
    if isinstance(duration, bool) or not isinstance(duration, int) or not low <= duration <= high:
        return "", None, (400, _error(400, "Duration must be positive int"), {})
    return token, duration, None


def _parse_token_object(raw: Any) -> tuple[dict[str, Any], str | None]:
    if not isinstance(raw, dict):
        return {}, "must be an object"
    token = raw.get("token")
    if token is None:
        return {}, "token is required"
    if not isinstance(token, str) or not token.strip():
        return {}, "token must be a non-empty string"
    item: dict[str, Any] = {"token": token}
    contact_id = raw.get("contactId")
    if contact_id is not None:
        if isinstance(contact_id, bool) or not isinstance(contact_id, int):
            return {}, "contactId must be an integer"
        item["contactId"] = contact_id
    for key in ("externalCustomerId", "phone", "email"):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            return {}, f"{key} must be a non-empty string"
        item[key] = value
    if not any(key in item for key in IDENTIFIERS):
        return {}, "at least one identifier is required"
    return item, None
