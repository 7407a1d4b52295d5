"""The Reteno client: one upstream call, ``POST /api/v1/apps/{app_uuid}/tokens``, a
chat's ``…/token/mute`` or ``…/token/unmute``, or a custom event (``/api/v2/event``).

Owns the HTTP details (a ``requests.Session`` with connect/read time-outs and
a deadline for the whole call, at most ``MAX_UPSTREAM_ANSWER_BYTES`` of an answer read,
the auth scheme of the platform preset, a User-Agent naming the bridge, the
exact body Reteno expects) and the classification of the answer into what
the delivery worker should do: ``delivered``, ``retry`` (429, 5xx, time-outs,
the deadline, broken connections), ``pause`` (401/403/404: credentials or app id wrong; a 3xx:
the base URL is wrong) or ``reject`` (any other 4xx: the batch holds a token
Reteno refuses; an event Reteno refuses, e.g. ``The event should have the following
params: […]``). Redirects are never followed: requests would resend the body
(personal data) and our ``X-Reteno-Access-Key`` to whatever host the answer
names. Each result carries a reason code (``reason``), which is what the
bridge shows outside the ledger; Reteno's own text can quote personal data.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from . import __version__
from .config import MAX_UPSTREAM_ANSWER_BYTES
from .logs import get_logger
from .models import utcnow
from .watch import Job, Watch

log = get_logger("bridge.reteno")

USER_AGENT = f"reteno-telegram-bridge/{__version__} (+requests/{requests.__version__})"

DELIVERED, RETRY, PAUSE, REJECT = "delivered", "retry", "pause", "reject"
# 400s Reteno documents for the request as a whole (reteno-api.md: mute/unmute errors),
# and their reason codes
_WHOLE_REQUEST_ERRORS = re.compile(
    r"wrong app uuid|tokens must be specified|not registered application", re.IGNORECASE
)
_WHOLE_REQUEST_REASONS = {
    "wrong app uuid": "wrong_app_uuid",
    "tokens must be specified": "tokens_missing",
    "not registered application": "app_not_registered",
}
_STATUS_REASONS = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "request_timeout",
    429: "rate_limited",
}


@dataclass
class CallResult:
    outcome: str
    status: int | None
    reason: str
    error: str | None = None
    retry_after: float | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def detail(self, batch: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "reason": self.reason,
            "batch": batch,
            "ms": round(self.seconds * 1000, 1),
        }
        if self.error:
            out["error"] = self.error
        if self.retry_after is not None:
            out["retryAfter"] = self.retry_after
        return out


def token_body(rows) -> dict:
    """Reteno's body for registrations (objects with the ledger's columns)."""
    tokens = []
    for row in rows:
        item: dict[str, Any] = {"token": row.token}
        if row.contact_id is not None:
            item["contactId"] = int(row.contact_id)
        if row.external_customer_id is not None:
            item["externalCustomerId"] = row.external_customer_id
        if row.phone is not None:
            item["phone"] = row.phone
        if row.email is not None:
            item["email"] = row.email
        tokens.append(item)
    return {"tokens": tokens}


def command_body(row, now: datetime) -> dict:
    """Reteno's body for a mute or unmute (a claimed command): a mute with an end is sent
    with the seconds it has left, so it ends when it was asked to."""
    body: dict[str, Any] = {"token": row.token}
    if row.action == "mute" and row.muted_until is not None:
        body["duration"] = max(1, math.ceil((row.muted_until - now).total_seconds()))
    return body


def event_body(row) -> dict:
    """Reteno's body for a custom event (a claimed event): its params as name/value pairs,
    the chat's contact identifier first."""
    params = [{"name": row.identifier, "value": row.identifier_value}]
    params.extend({"name": name, "value": value} for name, value in row.params.items())
    return {"eventTypeKey": row.event_type_key, "params": params}


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds, or an HTTP date read against
    ``now``), at most an hour; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, min(float(value), 3600.0))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is in GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, min((when - now).total_seconds(), 3600.0))


def _message(response: requests.Response, answer: bytes) -> str:
    """Reteno's error message (from ``answer``, the start of its body), short; never
    echoes our credentials."""
    text = answer.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = text
    if isinstance(body, dict):
        body = body.get("message") or body.get("error") or body
    text = body if isinstance(body, str) else str(body)
    text = " ".join(text.split())[:300]
    status = (
        f"{response.status_code} {response.reason}"
        if response.reason
        else str(response.status_code)
    )
    return f"{status}: {text}"


def _read_answer(response: requests.Response) -> bytes:
    """The start of the body, at most ``MAX_UPSTREAM_ANSWER_BYTES``: a longer answer is
    not read on (closing the response then closes its connection instead of draining it)."""
    answer = bytearray()
    for chunk in response.iter_content(8192):
        answer += chunk
        if len(answer) >= MAX_UPSTREAM_ANSWER_BYTES:
            break
    return bytes(answer[:MAX_UPSTREAM_ANSWER_BYTES])


# --- the deadline of a call -----------------------------------------------------------

_IN_FLIGHT = threading.local()  # .deadline: the _Deadline of this thread's call


class _Deadline:
    """A call's total time limit: past it, a job on the client's watch shuts the socket
    of the call's connection, so a read blocked on a trickling or stalled answer
    (headers or body) ends at once. Connecting cannot be cut short (no socket yet): the
    connect time-out bounds it, and the job shuts the socket as soon as there is one."""

    def __init__(self, watch: Watch, seconds: float):
        self.watch = watch
        self.seconds = seconds
        self.connection = None  # the urllib3 connection the call uses (_WatchedAdapter)
        self.expired = False
        self._job: Job | None = None

    def __enter__(self) -> _Deadline:
        _IN_FLIGHT.deadline = self
        self._job = self.watch.after(self.seconds, self._expire)
        return self

    def __exit__(self, *exc) -> None:
        _IN_FLIGHT.deadline = None
        self._job.cancel()  # once the call is over, the watch shuts nothing of it

    def _expire(self) -> float | None:
        self.expired = True
        return None if _shut(self.connection) else 0.05  # still connecting: soon again


def _shut(connection) -> bool:
    """Shut the socket of a urllib3 connection (reads in other threads end); False while
    it has none."""
    sock = getattr(connection, "sock", None)
    while sock is not None and not isinstance(sock, socket.socket):
        sock = getattr(sock, "socket", None)  # urllib3's TLS-in-TLS wrapper (a proxy)
    if sock is None:
        return False
    try:
        # the plain socket's shutdown: an SSLSocket's own would drop its TLS state under
        # the reading thread's feet
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass
    return True


_WATCHED: dict[type, type] = {}


def _watched(cls: type) -> type:
    """``cls`` (a urllib3 connection class) telling the current call's deadline which
    connection it uses, each time it sends a request."""
    if getattr(cls, "_bridge_watched", False):
        return cls
    if cls not in _WATCHED:

        def request(self, *args, **kwargs):
            deadline = getattr(_IN_FLIGHT, "deadline", None)
            if deadline is not None:
                deadline.connection = self
            return cls.request(self, *args, **kwargs)

        _WATCHED[cls] = type(
            f"Watched{cls.__name__}", (cls,), {"request": request, "_bridge_watched": True}
        )
    return _WATCHED[cls]


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter whose connections (direct or through a proxy) are watched."""

    def get_connection_with_tls_context(self, *args, **kwargs):
        pool = super().get_connection_with_tls_context(*args, **kwargs)
        pool.ConnectionCls = _watched(pool.ConnectionCls)
        return pool


class RetenoClient:
    def __init__(
        self,
        settings,
        session: requests.Session | None = None,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.url = settings.tokens_url
        self.events_url = settings.events_url
        self.app_url = self.url.removesuffix("/tokens")
        self.timeout = (settings.upstream_connect_timeout, settings.upstream_read_timeout)
        self.deadline = settings.upstream_deadline
        self.clock = clock  # reads Retry-After dates
        # its calls' deadlines; the worker's lease renewals of the claims they send, too
        self.watch = Watch()
        self.session = session or requests.Session()
        # a kept connection for each call in flight (BRIDGE_IN_FLIGHT)
        pool = max(10, getattr(settings, "in_flight", 1))
        for prefix in ("https://", "http://"):
            self.session.mount(prefix, _WatchedAdapter(pool_maxsize=pool))
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.headers["Accept"] = "application/json"
        # an answer is read raw, at most MAX_UPSTREAM_ANSWER_BYTES: never a compressed one,
        # whose few bytes could unpack to far more
        self.session.headers["Accept-Encoding"] = "identity"
        if settings.auth == "basic":
            self.session.auth = ("bridge", settings.api_key)
        else:
            self.session.headers["X-Reteno-Access-Key"] = settings.api_key

    def add_tokens(self, rows) -> CallResult:
        return self._post(self.url, token_body(rows))

    def send_command(self, rows) -> CallResult:
        """A chat's mute or unmute (``rows``: one claimed command)."""
        [row] = rows
        return self._post(f"{self.app_url}/token/{row.action}", command_body(row, self.clock()))

    def send_event(self, rows) -> CallResult:
        """A custom event (``rows``: one claimed event; Reteno has no bulk call for live
        events)."""
        [row] = rows
        return self._post(self.events_url, event_body(row))

    def _post(self, url: str, body: dict) -> CallResult:
        """Every body goes as compact UTF-8 JSON (requests' ``json=`` escapes non-ASCII
        as six characters each and adds spaces): an event's bytes are those its route
        measured against Reteno's 20 KB limit."""
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        started = time.perf_counter()
        deadline = _Deadline(self.watch, self.deadline)
        try:
            with deadline:
                response = self.session.post(
                    url,
                    data=payload,
                    headers={"Content-Type": "application/json"},
                    timeout=self.timeout,
                    allow_redirects=False,
                    stream=True,
                )
                try:
                    answer = _read_answer(response)
                finally:
                    response.close()
        except requests.RequestException as exc:
            return self._no_answer(exc, deadline.expired, time.perf_counter() - started)
        seconds = time.perf_counter() - started
        status = response.status_code
        if 200 <= status < 300:
            return CallResult(DELIVERED, status, "ok", seconds=seconds)
        if 300 <= status < 400:
            # Not followed (see the top): the base URL is wrong, as with a 404.
            return CallResult(
                PAUSE,
                status,
                "redirect",
                f"{status} {response.reason or 'redirect'}: redirects are not "
                "followed; check RETENO_BASE_URL",
                seconds=seconds,
            )
        message = _message(response, answer)
        if status == 429 or status >= 500 or status == 408:
            return CallResult(
                RETRY,
                status,
                _STATUS_REASONS.get(status, "server_error"),
                message,
                parse_retry_after(response.headers.get("Retry-After"), self.clock()),
                seconds,
            )
        whole = _WHOLE_REQUEST_ERRORS.search(message)
        if status in (401, 403, 404) or whole:
            # Credentials or app id wrong, or Reteno refusing the request itself, not a
            # token in it: splitting would dead-letter every token, so pause instead.
            reason = (
                _STATUS_REASONS.get(status)
                if status in (401, 403, 404)
                else _WHOLE_REQUEST_REASONS[whole.group().lower()]
            )
            return CallResult(PAUSE, status, reason, message, seconds=seconds)
        return CallResult(REJECT, status, "rejected", message, seconds=seconds)

    def _no_answer(
        self, exc: requests.RequestException, expired: bool, seconds: float
    ) -> CallResult:
        """A call that ended without a whole answer: retried, as a time-out is."""
        if expired:
            return CallResult(
                RETRY,
                None,
                "deadline",
                f"no whole answer within {self.deadline:g} s",
                seconds=seconds,
            )
        if isinstance(exc, requests.Timeout):
            return CallResult(RETRY, None, "timeout", "timed out", seconds=seconds)
        if isinstance(exc, requests.ConnectionError):
            return CallResult(
                RETRY,
                None,
                "connection_failed",
                f"connection failed ({type(exc).__name__})",
                seconds=seconds,
            )
        return CallResult(
            RETRY, None, "request_failed", f"request failed ({type(exc).__name__})", seconds=seconds
        )
