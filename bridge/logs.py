"""Logging: personal data and secrets never reach a log line in clear.

Owns the redaction of e-mail addresses, phone numbers and chat ids,
bearer/basic credentials and API-key headers, applied to every log record of
the process (a log-record factory, so loggers made later are covered too,
plus filters on the handlers already set up), and a one-line ``key=value``
request log written by the blueprint.

The request log never makes a request wait for a log handler: its records are
made in the request's thread and handed to the handlers of the
``bridge.request`` logger by one thread per process, every 50 ms, in order
(under load, sixteen request threads queueing for one handler's lock and its
write cost more than the rest of a registration). If that thread falls behind
by more than 10,000 records, requests hand their records over themselves
again; at exit, whatever is pending is handed over.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections import deque
from urllib.parse import unquote

_PATTERNS = [
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(bearer|basic)\s+[^\s'\",]+"),
     r"\1\2 ***"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 ***"),
    (re.compile(r"(?i)(x-reteno-access-key['\"]?\s*[:=]\s*['\"]?)[^\s'\",]+"), r"\1***"),
    (re.compile(r"(?i)((?:api[_-]?key|password|secret|token_secret)['\"]?\s*[:=]\s*['\"]?)"
                r"[^\s'\",&]+"), r"\1***"),
    (re.compile(r"[A-Za-z0-9.!#$%'*+^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"),
     "<email>"),
    # phone numbers and chat ids: 7 or more digits, possibly grouped
    (re.compile(r"(?<![\w.])\+?\d[\d ()-]{5,}\d(?![\w.])"),
     lambda m: "<number>" if sum(c.isdigit() for c in m.group()) >= 7 else m.group()),
]


# Something at least one of the patterns above needs (a keyword, an "@", seven or more
# digits): a line without any is returned as it is after one search instead of six
# substitutions. Every request writes a log line, so this is on the hot path.
_MAYBE = re.compile(r"(?i)@|bearer|basic|x-reteno|api[_-]?key|password|secret|\d[\d ()-]{5,}\d")


def redact(text: str) -> str:
    if "%" in text:  # access-log lines keep the query string URL-encoded (%2B380…, %40)
        text = unquote(text)
    if not _MAYBE.search(text):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactingFilter()
_previous_factory = None


def _redacting_record_factory(*args, **kwargs) -> logging.LogRecord:
    record = _previous_factory(*args, **kwargs)
    _FILTER.filter(record)
    return record


def install_redaction(*loggers: logging.Logger) -> None:
    """Mask every log record of this process, and filter the handlers set up by now."""
    global _previous_factory
    if _previous_factory is None:
        _previous_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_redacting_record_factory)
    for logger in loggers:  # e.g. the Flask app's logger and its default handler
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
    # A logger's filters see only the records logged on it, not its children's: so every
    # ``bridge.*`` logger that exists by now gets the filter too.
    children = [name for name in list(logging.root.manager.loggerDict)
                if name.startswith("bridge.")]
    for name in ("", "bridge", "werkzeug", "gunicorn.error", "gunicorn.access", "flask.app",
                 REQUEST_LOGGER, *children):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)


# --- the request log: one key=value line per request ---------------------------------

REQUEST_LOGGER = "bridge.request"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,39}$")


def _value(text: str) -> str:
    return json.dumps(text) if not text or re.search(r'[\s"=]', text) else text


_CALLERS: dict[str, str] = {}  # bearer value -> "key#<6 hex>", for the few keys in use


def caller_of(headers) -> str:
    """Who called, without the credential: ``key#<6 hex of sha256>``, ``basic``, ..."""
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        value = value.strip()
        caller = _CALLERS.get(value)
        if caller is None:
            caller = "key#" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:6]
            if len(_CALLERS) < 64:  # wrong keys must not grow it without end
                _CALLERS[value] = caller
        return caller
    if scheme.lower() == "basic":
        return "basic"
    if headers.get("X-Telegram-Bot-Api-Secret-Token"):
        return "telegram"
    return "anonymous"


class _Deferred:
    """Records handed to their logger's handlers by a thread of their own (see the top)."""

    INTERVAL = 0.05
    BACKLOG = 10_000

    def __init__(self) -> None:
        self._pending: deque[logging.LogRecord] = deque()
        self._lock = threading.Lock()  # one flush at a time, so the order is kept
        self._pid: int | None = None

    def submit(self, record: logging.LogRecord) -> None:
        if self._pid != os.getpid():
            self._start()
        self._pending.append(record)
        if len(self._pending) > self.BACKLOG:
            self.flush()

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            # A forked child (gunicorn --preload) has the parent's queue but not its thread.
            self._pid = os.getpid()
            threading.Thread(target=self._run, name="bridge-request-log", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.INTERVAL)
            try:
                self.flush()
            except Exception:  # a failing logger filter must not end the request log
                traceback.print_exc(file=sys.stderr)

    def flush(self) -> None:
        """Hand every pending record to its handlers now, in the order they were made."""
        with self._lock:
            pending = self._pending
            while pending:
                record = pending.popleft()
                logging.getLogger(record.name).handle(record)


_DEFERRED = _Deferred()
atexit.register(_DEFERRED.flush)


def flush_request_log() -> None:
    """Write out the request-log lines made so far (tests; the log thread does it every
    50 ms)."""
    _DEFERRED.flush()


def log_request(method: str, path: str, arg_names, status: int, seconds: float,
                headers) -> None:
    """``request method=GET path=/tokens query=email,limit status=200 ms=2.1 caller=key#1a2b3c``.

    Only the *names* of query arguments are logged (never their values), and the
    path goes through :func:`redact` (a chat id or address in it is masked). The
    caller is named by :func:`caller_of` (``headers``: the request's).
    """
    logger = logging.getLogger(REQUEST_LOGGER)
    if not logger.isEnabledFor(logging.INFO):
        return
    names = sorted({n if _NAME.match(n) else "?" for n in arg_names}) if arg_names else ()
    record = logger.makeRecord(
        REQUEST_LOGGER, logging.INFO, __file__, 0,
        "request method=%s path=%s query=%s status=%d ms=%.1f caller=%s",
        (method, _value("/".join(redact(part) for part in path.split("/"))),
         ",".join(names) or "-", status, seconds * 1000, caller_of(headers)),
        None, func="log_request",
    )
    _DEFERRED.submit(record)
