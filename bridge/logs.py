"""Logging: personal data and secrets never reach a log line in clear.

Owns a filter, installed on the root handlers and the ``bridge`` and
``werkzeug``/``gunicorn`` loggers, that masks e-mail addresses, phone
numbers, bearer/basic credentials and API-key headers in every record, and a
one-line ``key=value`` request log written by the blueprint.
"""

from __future__ import annotations

import logging
import re

_PATTERNS = [
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(bearer|basic)\s+[^\s'\",]+"),
     r"\1\2 ***"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 ***"),
    (re.compile(r"(?i)(x-reteno-access-key['\"]?\s*[:=]\s*['\"]?)[^\s'\",]+"), r"\1***"),
    (re.compile(r"(?i)((?:api[_-]?key|password|secret|token_secret)['\"]?\s*[:=]\s*['\"]?)"
                r"[^\s'\",&]+"), r"\1***"),
    (re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"),
     "<email>"),
    # phone numbers and chat ids: 7 or more digits, possibly grouped
    (re.compile(r"(?<![\w.])\+?\d[\d ()-]{5,}\d(?![\w.])"),
     lambda m: "<number>" if sum(c.isdigit() for c in m.group()) >= 7 else m.group()),
]


def redact(text: str) -> str:
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


def install_redaction() -> None:
    """Mask every record of the loggers the bridge and its servers write to."""
    for name in ("", "bridge", "werkzeug", "gunicorn.error", "gunicorn.access", "flask.app"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
