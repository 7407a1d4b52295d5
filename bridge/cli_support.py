"""What the ``flask bridge`` commands share: parsing identifiers with the schemas'
normalisers, getting a runtime whose database is current, and printing (aligned
tables for people, JSON for scripts) without a control character reaching the
terminal."""

from __future__ import annotations

import json
import re
import signal
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

import click

from . import db as dbmod
from .identifiers import (
    IdentifierError,
    normalize_contact_id,
    normalize_email,
    normalize_external_id,
    normalize_phone,
    normalize_token,
)
from .logs import escape_control
from .runtime import current

# What json.dumps leaves raw with ensure_ascii=False and a terminal still obeys: DEL,
# the C1 controls (\x9b is a one-byte CSI) and the Unicode line separators.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029]")


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells a character beyond U+FFFF as a UTF-16 pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def escape_invisible(text: str, escape=_json_escape) -> str:
    """``text`` with Unicode format characters (category Cf: bidi overrides and
    isolates, zero-width characters, U+FEFF) written as ``\\u`` escapes: what the
    ledger holds from before they were refused, or from Reteno's texts, shows as it is
    instead of reordering what a terminal prints after it."""
    if text.isascii():
        return text
    return "".join(escape(c) if unicodedata.category(c) == "Cf" else c for c in text)


def _echo_json(data) -> None:
    text = json.dumps(data, indent=2, default=str, ensure_ascii=False)
    click.echo(escape_invisible(_JSON_UNSAFE.sub(lambda m: _json_escape(m.group()), text)))


_ID_OPTIONS = (
    ("--token", "token", normalize_token, "Telegram chat id (digits, optional leading -)."),
    ("--contact-id", "contactId", normalize_contact_id, "Reteno contactId."),
    ("--external-customer-id", "externalCustomerId", normalize_external_id, "externalCustomerId."),
    ("--phone", "phone", normalize_phone, "Phone; any formatting, matched by its digits."),
    ("--email", "email", normalize_email, "E-mail address; matched trimmed and lower-cased."),
)


def _normalized(normalizer):
    """A click callback that applies one of :mod:`bridge.identifiers`' rules."""

    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return normalizer(value)
        except IdentifierError as exc:
            raise click.BadParameter(" ".join(exc.messages)) from None

    return callback


def _identifier_options(command):
    for flag, name, normalizer, help_text in reversed(_ID_OPTIONS):
        command = click.option(flag, name, callback=_normalized(normalizer), help=help_text)(
            command
        )
    return command


_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table."
)


def _ready():
    """The runtime, once the database schema is current (else a readable error)."""
    rt = current()
    dbmod.check_schema(rt.db.engine)  # StartupError: the schema is behind, or no database
    return rt


def _table_escape(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _cell(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    else:
        text = " ".join(str(value).split())
    return escape_invisible(escape_control(text), _table_escape)


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence], *, right: Sequence[int] = ()
) -> str:
    """Rows as aligned plain-text columns under a header; ``right``: right-aligned columns."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values):
        parts = [
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _without_empty_columns(headers, rows, keep: int):
    """Drop columns (after the first ``keep``) that are empty in every row."""
    used = [i for i in range(len(headers)) if i < keep or any(_cell(r[i]) != "-" for r in rows)]
    return [headers[i] for i in used], [[r[i] for i in used] for r in rows]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


@contextmanager
def _stopped_by_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT (supervisors, systemd and containers stop with
    SIGTERM) while the block runs; the previous handlers are put back after it."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals reach the main thread only (e.g. a test's CLI runner)
        return
    previous = {
        sig: signal.signal(sig, lambda _sig, _frame: stop.set())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
