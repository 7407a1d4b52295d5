"""Logging: personal data and secrets never reach a log line in clear.

Owns the redaction of e-mail addresses, phone numbers and chat ids,
bearer/basic credentials and API-key headers, applied to every log record of
the process (a log-record factory, so loggers made later are covered too,
plus filters on the handlers already set up), and a one-line ``key=value``
request log written by the blueprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
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


def caller_of(headers) -> str:
    """Who called, without the credential: ``key#<6 hex of sha256>``, ``basic``, ..."""
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return "key#" + hashlib.sha256(value.strip().encode("utf-8")).hexdigest()[:6]
    if scheme.lower() == "basic":
        return "basic"
    if headers.get("X-Telegram-Bot-Api-Secret-Token"):
        return "telegram"
    return "anonymous"


def log_request(method: str, path: str, arg_names, status: int, seconds: float,
                caller: str) -> None:
    """``request method=GET path=/tokens query=email,limit status=200 ms=2.1 caller=key#1a2b3c``.

    Only the *names* of query arguments are logged (never their values), and the
    path goes through :func:`redact` (a chat id or address in it is masked).
    """
    names = sorted({n if _NAME.match(n) else "?" for n in arg_names})
    logging.getLogger(REQUEST_LOGGER).info(
        "request method=%s path=%s query=%s status=%d ms=%.1f caller=%s",
        method, _value("/".join(redact(part) for part in path.split("/"))),
        ",".join(names) or "-", status, seconds * 1000, caller,
    )
