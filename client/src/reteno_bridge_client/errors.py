"""The one exception the client raises: :class:`BridgeError`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class BridgeError(Exception):
    """A call the bridge did not carry out, or whose answer never came.

    ``status`` is the HTTP status of the bridge's answer, or None when no answer came
    (the bridge could not be reached, or did not answer within the call's deadline);
    ``message`` is the bridge's own sentence (its error shape's ``message``) or what
    went wrong on the way; ``errors`` holds the field errors of a 422, keyed like
    ``tokens.0.email``."""

    def __init__(
        self, status: int | None, message: str, errors: Mapping[str, Sequence[str]] | None = None
    ):
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.errors: dict[str, list[str]] = {k: list(v) for k, v in (errors or {}).items()}

    def __str__(self) -> str:
        fields = "; ".join(f"{k}: {', '.join(v)}" for k, v in self.errors.items())
        where = f"HTTP {self.status}: " if self.status is not None else ""
        return f"{where}{self.message}" + (f" ({fields})" if fields else "")
