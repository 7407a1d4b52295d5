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
    text = unicodedata.normalize("NFC", value.strip())
    if not text.isascii():
        for char in text:
            if unicodedata.category(char) == "Cf":
                raise IdentifierError(f"Must not contain invisible format characters "
                                      f"(U+{ord(char):04X}).")
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
