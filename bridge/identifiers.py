"""The identifier rules: a Telegram chat id as the token; contactId,
externalCustomerId, phone and email; each one's normal form.

Domain rules, not HTTP: the request schemas, the status and Telegram services,
the deep links and the CLI all normalise through this module, and a value that
breaks a rule raises :class:`IdentifierError` with the sentence a user reads.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any


class IdentifierError(ValueError):
    """A value breaks an identifier rule; ``messages`` holds the sentence(s) to show."""

    def __init__(self, message: str):
        super().__init__(message)
        self.messages = [message]


INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

_TOKEN = re.compile(r"^-?[0-9]{1,19}$")
_DIGITS = re.compile(r"^[0-9]{1,19}$")
_PHONE = re.compile(r"^\+?[0-9 ()\-]+$")
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def normalize_token(value: Any) -> str:
    """A Telegram chat id, as a canonical decimal string."""
    if isinstance(value, bool):
        raise IdentifierError("Must be a Telegram chat id: an integer or a string of digits.")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _TOKEN.match(value.strip()):
        number = int(value.strip())
    else:
        raise IdentifierError("Must be a Telegram chat id: an integer or a string of digits.")
    if not INT64_MIN <= number <= INT64_MAX or number == 0:
        raise IdentifierError("Must be a non-zero chat id within a signed 64-bit integer.")
    return str(number)


def normalize_contact_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        # ASCII digits only: str.isdigit() also admits "²" and other scripts' digits
        if isinstance(value, str) and _DIGITS.match(value.strip()):
            value = int(value.strip())
        else:
            raise IdentifierError("Must be a positive integer.")
    if not 1 <= value <= INT64_MAX:
        raise IdentifierError("Must be a positive integer within a signed 64-bit integer.")
    return value


def _visible_text(value: Any) -> str:
    """``value`` trimmed and in Unicode NFC, so one identifier has one spelling however a
    client composed its accents; refused if it holds a format character (category Cf:
    bidi overrides such as U+202E, zero-width spaces and joiners, U+FEFF), which shows
    nothing yet changes the value, or how a terminal or page lays out what follows."""
    if not isinstance(value, str):
        raise IdentifierError("Not a valid string.")
    text = value.strip()
    if text.isascii():  # already NFC, and no format character is ASCII
        return text
    text = unicodedata.normalize("NFC", text)
    for char in text:
        if unicodedata.category(char) == "Cf":
            raise IdentifierError(
                f"Must not contain invisible format characters (U+{ord(char):04X})."
            )
    return text


def normalize_external_id(value: Any) -> str:
    value = _visible_text(value)
    if not value:
        raise IdentifierError("Must not be empty.")
    if len(value) > 255:
        raise IdentifierError("Must be at most 255 characters.")
    if _CONTROL.search(value):
        raise IdentifierError("Must not contain control characters.")
    return value


def normalize_phone(value: Any) -> str:
    """The digits alone, as Reteno stores them (``380956490955``)."""
    text = _visible_text(value)
    if not _PHONE.match(text) or "+" in text[1:]:
        raise IdentifierError(
            "Must be digits with an optional leading +; spaces, dashes and parentheses allowed."
        )
    digits = re.sub(r"[^0-9]", "", text)
    if not 7 <= len(digits) <= 15:
        raise IdentifierError("Must have 7 to 15 digits.")
    return digits


def normalize_email(value: Any) -> str:
    text = _visible_text(value).lower()
    if len(text) > 254 or not _EMAIL.match(text) or len(text.split("@", 1)[0]) > 64:
        raise IdentifierError("Not a valid email address.")
    return text


NORMALIZERS = {
    "contactId": normalize_contact_id,
    "externalCustomerId": normalize_external_id,
    "phone": normalize_phone,
    "email": normalize_email,
}


# --- the normalisers' rules as JSON Schema, for /openapi.json ----------------------
# Exact: a value the document allows is one the normaliser takes, and the other way
# round (schemathesis checks both). Python's ``\s`` is what ``str.strip`` removes.


def _decimals_up_to(bound: int) -> str:
    """A regex of the decimal strings of 1 to ``bound`` (a 19-digit number) with at most
    19 characters, leading zeros allowed (as ``_TOKEN`` and ``_DIGITS`` take them)."""
    top = str(bound)
    width = len(top)
    shorter = [
        f"0{{{zeros}}}[1-9][0-9]{{0,{min(width - 2, width - 1 - zeros)}}}" for zeros in range(width)
    ]  # fewer significant digits than ``bound``
    full = [top] + [
        f"{top[:i]}[{1 if i == 0 else 0}-{int(top[i]) - 1}][0-9]{{{width - 1 - i}}}"
        for i in range(width)
        if int(top[i]) > (1 if i == 0 else 0)
    ]
    return "(?:" + "|".join(shorter + full) + ")"


_POSITIVE = _decimals_up_to(INT64_MAX)
TOKEN_PATTERN = rf"^\s*(?:{_POSITIVE}|-{_decimals_up_to(-INT64_MIN)})\s*$"
CONTACT_ID_PATTERN = rf"^\s*{_POSITIVE}\s*$"


def _format_characters() -> str:
    """A regex class body of Unicode's format characters (category Cf), as ranges.
    Unicode has them only in planes 0, 1 and 14: reading those alone keeps this off
    every process's start (the whole range took 0.2 s)."""
    planes = (range(0x20000), range(0xE0000, 0xF0000))
    codes = [c for plane in planes for c in plane if unicodedata.category(chr(c)) == "Cf"]
    ranges: list[list[int]] = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    char = "\\u{:04x}".format
    wide = "\\U{:08x}".format
    return "".join(
        (char if high < 0x10000 else wide)(low)
        + ("" if low == high else "-" + (char if high < 0x10000 else wide)(high))
        for low, high in ranges
    )


# after trimming: something, no control character (_CONTROL), no format character (Cf)
_UNSEEN = "\\x00-\\x1f\\x7f" + _format_characters()
EXTERNAL_ID_PATTERN = rf"^\s*[^\s{_UNSEEN}](?:[^{_UNSEEN}]*[^\s{_UNSEEN}])?\s*$"
PHONE_PATTERN = r"^\s*\+?[ ()\-]*(?:[0-9][ ()\-]*){7,15}\s*$"
EMAIL_PATTERN = r"^\s*" + _EMAIL.pattern[1:].replace("]+@", "]{1,64}@", 1)[:-1] + r"\s*$"
INTEGER_RANGE = {"minimum": INT64_MIN, "maximum": INT64_MAX}
