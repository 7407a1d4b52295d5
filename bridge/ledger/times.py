"""Reported times: what a time from outside counts as, and how two times compare.

A status event or a Telegram update says when it happened; the ledger decides by
those times (``reports``). Two rules, each in one function here:

* **nothing from the future** (:func:`received`): a reported time later than the
  moment the bridge received it counts as that moment; the history keeps the
  reported value and says it was clamped. A sender's wrong clock, or an offset-less
  time read in the wrong zone, never dates anything after its receipt.
* **the resolution it was given in** (:func:`later`): Telegram and most of Reteno's
  times are whole seconds, while the bridge's own clock has microseconds. A time
  within the same second as a whole-second time is not later than it: a block dated
  10:00:00 that follows a registration at 10:00:00.4 removes it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

#: The resolution of the bridge's own clock (``now``) and of times given to the
#: microsecond: no two different times are "the same" at it.
EXACT = timedelta(microseconds=1)
SECOND = timedelta(seconds=1)


def received(
    reported: datetime | None, now: datetime, resolution: timedelta = EXACT
) -> tuple[datetime, timedelta, dict]:
    """What a reported time counts as when it is received at ``now``: ``(time, its
    resolution, note)``. No time, or one later than ``now``, counts as ``now`` (to the
    microsecond); the note, for the history, is ``{"reportedAt", "clamped": True}``
    for a clamped one and empty otherwise."""
    if reported is None:
        return now, EXACT, {}
    if reported > now:
        return now, EXACT, {"reportedAt": reported.isoformat(), "clamped": True}
    return reported, resolution, {}


def later(moment: datetime, than: datetime, resolution: timedelta = EXACT) -> bool:
    """Whether ``moment`` is later than ``than``, a time given to ``resolution``: a
    moment within the same second (or whatever ``resolution`` is) as ``than`` is not.

    The one comparison by which a report is weighed against the chat's other news: a
    block applies unless the chat's latest sign of life is later than it; an unblock
    is stale when the chat's latest block is later than it."""
    return moment >= than + resolution
