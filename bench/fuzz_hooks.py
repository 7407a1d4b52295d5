"""Schemathesis checks for ``bench/fuzz.py`` (loaded with ``SCHEMATHESIS_HOOKS``).

* ``bridge_error_shape``: every 4xx/5xx body is the bridge's one error shape
  (except gunicorn's own 414/431 for a request line or headers over its limits).
* ``bridge_ledger_unchanged_by_rejections``: a rejected request (4xx) leaves
  the ledger's registrations and events as the previous answer left them
  (schemathesis runs with one worker and nothing else writes to the ledger:
  no delivery runs during the fuzz run). The ledger is read from
  ``FUZZ_LEDGER_URL``.
"""

from __future__ import annotations

import os

import schemathesis
from sqlalchemy import create_engine, text

from tests.fuzzing import error_shape_problem

_engine = None
# gunicorn's own answers to a request line over 4094 bytes or headers over its limits:
# HTML pages written before any application code runs.
SERVER_LIMITS = (414, 431)


def _counts() -> tuple[int, int]:
    global _engine
    if _engine is None:
        _engine = create_engine(os.environ["FUZZ_LEDGER_URL"])
    with _engine.connect() as conn:
        return (
            conn.execute(text("SELECT count(*) FROM bridge_registrations")).scalar(),
            conn.execute(text("SELECT count(*) FROM bridge_events")).scalar(),
        )


@schemathesis.check
def bridge_error_shape(ctx, response, case):
    """Every error answer is {code, status, message, errors} with code = HTTP status."""
    content_type = {k.lower(): v for k, v in response.headers.items()}.get("content-type")
    if isinstance(content_type, list):
        content_type = content_type[0] if content_type else None
    if response.status_code in SERVER_LIMITS and b"too large" in response.content:
        return  # refused by gunicorn before the bridge sees it (see RELIABILITY.md)
    problem = error_shape_problem(response.status_code, response.content, content_type)
    if problem:
        raise AssertionError(problem)


@schemathesis.check
class bridge_ledger_unchanged_by_rejections:  # noqa: N801 - the check's name in reports
    """A 4xx answer changed no registration and recorded no event."""

    def __init__(self):
        self.last = None

    def after_response(self, ctx, response, case):
        now = _counts()
        before, self.last = self.last, now
        if before is not None and 400 <= response.status_code < 500 and now != before:
            raise AssertionError(
                f"{response.status_code} answer but the ledger went from {before} to {now} "
                "(registrations, events)"
            )
