"""Logging: personal data and secrets never reach a log line in clear.

Owns the redaction of e-mail addresses, phone numbers and chat ids,
bearer/basic credentials and API-key headers, and the one-line ``key=value``
request log the blueprint writes.

Redaction is a filter (:class:`RedactingFilter`) on the bridge's own loggers
(``bridge.*``, made by :func:`get_logger`), so every record the bridge makes
is masked whatever handlers the host app has; :func:`configure` (called by the
bridge's app factory, never by ``init_app``) sets up the served app's handlers
and puts the filter on them too, which covers the server's own lines (the
development server's access log). Nothing process-wide is replaced.

The request log never makes a request wait for a log handler: its records go
through a queue to the standard library's :class:`~logging.handlers.QueueListener`
thread (one per process, started with the first line), which hands them, in order,
to ``bridge.request`` and so to its handlers and those above it. At exit, whatever
is queued is written. The queue holds at most ``MAX_QUEUED_LOG_LINES``: while the sink
stalls, further lines are dropped (a request never waits for the log), counted in
``/metrics`` and told in a warning line ``N request-log lines dropped`` (at most once
a minute, and at flush).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import re
import threading
import time
from logging.handlers import QueueListener
from urllib.parse import unquote

from .config import MAX_LOG_CHARS, MAX_LOGGED_PATH_CHARS, MAX_QUEUED_LOG_LINES, process_setting

# Every pattern runs in time linear in the line: no quantifier over an unbounded run
# gives anything back (possessive ``*+``, ``++``), and a pattern that starts with such a
# run only starts where the run does (a lookbehind), so a long run is scanned once, not
# once per character. tests/test_logging.py checks this on the parsed patterns.
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9.!#$%'*+^_`{|}~-])[A-Za-z0-9.!#$%'*+^_`{|}~-]++"
    r"@[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)++"
)
# a run of digits, spaces, parentheses and dashes that starts with a digit (and is not
# inside a word or a decimal, nor a port after an address: gunicorn's "Listening at:
# http://127.0.0.1:5000 (4242)" is no phone); :func:`_mask_number` decides how much of
# it is a number
_NUMBER_RUN = re.compile(r"(?<![\w.])(?<![\d\]]:)\+?\d[\d ()-]*+")
_SEPARATORS = " ()-"
_WORDISH = re.compile(r"[\w.]")

_PATTERNS = [
    (
        re.compile(r"(?i)(authorization['\"]?\s*+[:=]\s*+['\"]?)(bearer|basic)\s++[^\s'\",]++"),
        r"\1\2 ***",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s++[A-Za-z0-9._~+/=-]{8,}+"), r"\1 ***"),
    (re.compile(r"(?i)(x-reteno-access-key['\"]?\s*+[:=]\s*+['\"]?)[^\s'\",]++"), r"\1***"),
    (
        re.compile(
            r"(?i)((?:api[_-]?key|password|secret|token_secret)['\"]?\s*+[:=]\s*+['\"]?)"
            r"[^\s'\",&]++"
        ),
        r"\1***",
    ),
    (_EMAIL, "<email>"),
]


def _mask_number(match: re.Match) -> str:
    """Phone numbers and chat ids: 7 or more digits, possibly grouped, ending in a digit
    that no word character or dot follows (the longest such start of the run)."""
    run = match.group()
    end = len(run)
    if not run[-1].isdigit() or _WORDISH.match(match.string, match.end()):
        # the last digit of the run that a separator follows (the run's tail is not a number)
        last = max(run.rfind(c) for c in _SEPARATORS)
        end = len(run[:last].rstrip(_SEPARATORS)) if last > 0 else 0
    start = 1 if run.startswith("+") else 0
    number = run[:end]
    if end - start < 7 or sum(c.isdigit() for c in number) < 7:
        return run
    return "<number>" + run[end:]


# Something at least one of the patterns above needs (a keyword, an "@", seven or more
# digits): a line without any is returned as it is after one search instead of six
# substitutions. Every request writes a log line, so this is on the hot path.
_MAYBE = re.compile(
    r"(?i)@|bearer|basic|x-reteno|api[_-]?key|password|secret|"
    r"\d(?:[ ()-]*+\d){6}"
)
# Control characters (C0, DEL, C1), Unicode line breaks and the bidirectional controls:
# escaped after redaction, so no value (a URL's %0A, a status text's ESC, a name's U+202E)
# makes a second line, reaches a terminal or shows a line in another order than it has.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# A cut line drops its last partial word (an address or number cut in two would escape
# its pattern); then a trailing run of phone characters, which spans spaces.
_BREAKS = frozenset(" \t\r\n\"',;<>/?&=")
_PHONE_CHARS = "0123456789 ()+-"


def _escape_control(match: re.Match) -> str:
    char = match.group()
    return _ESCAPES.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    )


def escape_control(text: str) -> str:
    """``text`` with control characters written as escapes (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(_escape_control, text) if _CONTROL.search(text) else text


def cut(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters; else its start, without the
    word it cuts into, and a note of how much was left out."""
    if len(text) <= limit:
        return text
    end = max(0, limit - 48)  # room for the note
    while end and text[end - 1] not in _BREAKS:
        end -= 1
    kept = text[:end].rstrip(_PHONE_CHARS) if end else ""
    return f"{kept}...[{len(text) - len(kept)} more characters not logged]"


def redact(text: str) -> str:
    """``text`` as a log line may show it: at most ``MAX_LOG_CHARS`` characters of it,
    URL-decoded, credentials and personal data masked, control characters escaped."""
    if len(text) > MAX_LOG_CHARS:
        # URL-decoding shrinks a text at most threefold: cut before and after it.
        text = cut(text, 3 * MAX_LOG_CHARS)
    if "%" in text:  # access-log lines keep the query string URL-encoded (%2B380…, %40)
        text = unquote(text)
    text = cut(text, MAX_LOG_CHARS)
    if _MAYBE.search(text):
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        text = _NUMBER_RUN.sub(_mask_number, text)
    return escape_control(text)


def redact_lines(text: str) -> str:
    """A traceback or stack: each line redacted, and every line indented, so nothing in
    it can pass for a log line of its own."""
    return "\n".join("  " + redact(line) for line in text.split("\n"))


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if getattr(record, "_bridge_redacted", False):  # a logger's filter, then a handler's
            return True
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_lines(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_lines(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_lines(record.stack_info)
        record._bridge_redacted = True
        return True


_FILTER = RedactingFilter()
LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def get_logger(name: str) -> logging.Logger:
    """One of the bridge's own loggers (``bridge.*``), with the redaction filter."""
    return redacting(logging.getLogger(name))


def redacting(logger: logging.Logger) -> logging.Logger:
    """``logger`` with the redaction filter on it, whatever handlers it gets (the shipped
    ``bridge/gunicorn_conf.py`` puts it on gunicorn's access and error logs)."""
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def configure(app, level: str | None = None) -> None:
    """The served app's logging: a stream handler on the root logger if there is none,
    at ``BRIDGE_LOG_LEVEL`` (default INFO), and the redaction filter on the root's
    handlers and Flask's, so lines the bridge does not make (the development
    server's access log) are masked too. For the bridge's own app factory."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level or process_setting("BRIDGE_LOG_LEVEL"), format=LOG_FORMAT)
    for handler in (*root.handlers, *app.logger.handlers):
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


# --- the request log: one key=value line per request ---------------------------------

REQUEST_LOGGER = "bridge.request"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,39}$")


_QUOTED = re.compile(r'[\s"=]')  # a value with one of these is written as a JSON string


def _value(text: str) -> str:
    return json.dumps(text) if not text or _QUOTED.search(text) else text


class _Forward(logging.Handler):
    """The listener's one handler: hands a record to its own logger, whose filters and
    handlers (and those above it) then take it, in the listener's thread; first, now
    and then, the warning that lines were dropped."""

    def emit(self, record: logging.LogRecord) -> None:
        _REQUEST_LOG.report_drops(every=_Listener.REPORT_SECONDS)
        logging.getLogger(record.name).handle(record)


class _Listener(QueueListener):
    """A ``QueueListener`` that, once it has handed over every queued record, waits a
    little before it blocks for the next: records that come meanwhile are handed over
    together, instead of waking the thread (and switching the GIL) once a request."""

    INTERVAL = 0.05
    REPORT_SECONDS = 60.0  # at most one "lines dropped" warning a minute (and at flush)

    def dequeue(self, block: bool):
        try:
            return self.queue.get_nowait()
        except queue.Empty:
            if not block:
                raise
        time.sleep(self.INTERVAL)
        return self.queue.get()

    def enqueue_sentinel(self) -> None:
        self.queue.put(self._sentinel)  # past the bound: the listener's own last record


class _RequestLog:
    """``bridge.request`` records through a queue to a listener thread (see the top)."""

    def __init__(self) -> None:
        # The records themselves, put by the request's thread (not through a handler of
        # the logger: they must reach its handlers in the listener's thread). The listener
        # is a thread of this process and the arguments of a request-log record are plain
        # strings and numbers: nothing to prepare for another process, as QueueHandler
        # would (formatting the message, copying the record).
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.maxsize = MAX_QUEUED_LOG_LINES
        self._bound = threading.Lock()  # a check of the size and a put, as one
        self.logger = get_logger(REQUEST_LOGGER)
        self.dropped = 0  # lines dropped by this process (bridge_request_log_dropped_total)
        self._reported = 0  # of which a warning told
        self._reported_at: float | None = None
        self._drops = threading.Lock()
        self._listener: QueueListener | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def submit(self, record: logging.LogRecord) -> None:
        if self._pid != os.getpid():
            self._listen()
        with self._bound:
            if self.queue.qsize() < self.maxsize:
                self.queue.put(record)
                return
        self.count_drop()  # the sink stalls: the line goes, the request does not wait

    def _listen(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            # A forked child (gunicorn --preload) has the parent's queue but not its thread.
            self._listener = _Listener(self.queue, _Forward())
            self._listener.start()
            self._listener._thread.name = "bridge-request-log"
            self._pid = os.getpid()

    def count_drop(self) -> None:
        with self._drops:
            self.dropped += 1

    def report_drops(self, every: float = 0.0) -> None:
        """Warn of the lines dropped since the last warning, unless one was made less
        than ``every`` seconds ago."""
        if self.dropped == self._reported:  # the usual case, on every line: no lock
            return
        with self._drops:
            now = time.monotonic()
            if self.dropped == self._reported or (
                self._reported_at is not None and now - self._reported_at < every
            ):
                return
            count, self._reported, self._reported_at = (
                self.dropped - self._reported,
                self.dropped,
                now,
            )
        _DROPS_LOGGER.warning(
            "%d request-log lines dropped: the log sink fell behind (%d lines wait at most)",
            count,
            self.maxsize,
        )

    def flush(self) -> None:
        """Write every line queued so far (the listener starts again with the next)."""
        with self._lock:
            if self._listener is not None and self._pid == os.getpid():
                self._listener.stop()  # drains the queue, then ends the thread
            self._listener, self._pid = None, None
        self.report_drops()


_DROPS_LOGGER = get_logger(f"{REQUEST_LOGGER}.dropped")
_REQUEST_LOG = _RequestLog()
atexit.register(_REQUEST_LOG.flush)


def dropped_request_lines() -> int:
    """Request-log lines this process dropped because its log sink fell behind."""
    return _REQUEST_LOG.dropped


def flush_request_log() -> None:
    """Write out the request-log lines made so far (tests; the listener does it as they
    come)."""
    _REQUEST_LOG.flush()


def log_request(
    method: str, path: str, arg_names, status: int, seconds: float, caller: str
) -> None:
    """``request method=GET path=/tokens query=email,limit status=200 ms=2.1 caller=key#1``.

    Only the *names* of query arguments are logged (never their values), and the
    path goes through :func:`redact` (a chat id or address in it is masked). The
    caller is a label (:func:`bridge.http.caller_label`), never a credential.
    """
    logger = _REQUEST_LOG.logger
    if not logger.isEnabledFor(logging.INFO):
        return
    names = sorted({n if _NAME.match(n) else "?" for n in arg_names}) if arg_names else ()
    _REQUEST_LOG.submit(
        logger.makeRecord(
            REQUEST_LOGGER,
            logging.INFO,
            __file__,
            0,
            "request method=%s path=%s query=%s status=%d ms=%.1f caller=%s",
            (
                method,
                _value(
                    "/".join(redact(part) for part in cut(path, MAX_LOGGED_PATH_CHARS).split("/"))
                ),
                ",".join(names) or "-",
                status,
                seconds * 1000,
                caller,
            ),
            None,
            func="log_request",
        )
    )
