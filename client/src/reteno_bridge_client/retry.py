"""When a call to the bridge is made again, and how long one call may take in all.

:class:`RetryPolicy` is shared by the sync and the async client; it does no I/O. A
call is repeated only if it is safe to repeat (each call says whether it is, in
:mod:`reteno_bridge_client.calls`), and only after a failure that says nothing was
done or that the bridge may do it on another try: no connection (a connection error, a
connect or pool timeout), a connection lost before the answer, 408, 429 or a 5xx. A read
timeout is not: the bridge has the call and is slow, a repeat would add to its load and
seldom answer sooner, and the call may well have been carried out (the
:class:`BridgeError` says so). Waits grow exponentially with full jitter (a random wait
between 0 and the exponential step, so bots that lost the bridge together do not come
back together); a ``Retry-After`` of a 429 or 503 is honoured as the least wait. Every
call has a **deadline** across all its attempts and waits: each attempt's timeouts are
cut to the time left, and no wait is started that would end past it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import httpx

#: Timeouts that fit a bot: a bridge that does not accept the connection in 3 s is
#: down, and one that takes longer than 5 s to answer holds the chat's next call.
DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=3.0)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """``deadline``: seconds one call may take in all, attempts and waits together;
    ``attempts``: most attempts of one call; ``backoff``: the first wait's upper bound,
    doubled after each attempt up to ``max_backoff``."""

    deadline: float = 10.0
    attempts: int = 4
    backoff: float = 0.25
    max_backoff: float = 2.0
    statuses: frozenset[int] = RETRY_STATUSES
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    jitter: Callable[[float, float], float] = field(
        default=random.uniform, repr=False, compare=False
    )

    def start(self, timeout: httpx.Timeout, repeatable: bool) -> Attempts:
        """The attempts of one call (``repeatable``: the call is safe to repeat)."""
        return Attempts(self, timeout, repeatable, self.clock() + self.deadline)


class Attempts:
    """One call's attempts under a :class:`RetryPolicy`: the timeout of the next one,
    and after each outcome whether to wait and try again."""

    def __init__(
        self, policy: RetryPolicy, timeout: httpx.Timeout, repeatable: bool, ends_at: float
    ):
        self.policy, self.limits, self.repeatable = policy, timeout, repeatable
        self.ends_at = ends_at
        self.made = 0

    def left(self) -> float:
        return max(0.0, self.ends_at - self.policy.clock())

    def timeout(self) -> httpx.Timeout:
        """The next attempt's timeouts, each cut to the time left."""
        self.made += 1
        left = self.left()

        def cut(value: float | None) -> float:
            return left if value is None else min(value, left)

        t = self.limits
        return httpx.Timeout(
            connect=cut(t.connect), read=cut(t.read), write=cut(t.write), pool=cut(t.pool)
        )

    def pause(self, outcome: httpx.Response | httpx.TransportError) -> float | None:
        """Seconds to wait before the next attempt, or None: ``outcome`` is final."""
        if isinstance(outcome, httpx.Response):
            if outcome.status_code not in self.policy.statuses:
                return None
            least = retry_after(outcome)
        elif isinstance(outcome, httpx.ReadTimeout):
            return None
        else:
            least = 0.0
        if not self.repeatable or self.made >= self.policy.attempts:
            return None
        step = min(self.policy.max_backoff, self.policy.backoff * 2 ** (self.made - 1))
        wait = max(least, self.policy.jitter(0.0, step))
        return wait if wait < self.left() else None


def retry_after(response: httpx.Response) -> float:
    """The seconds a 429 or 503 asks to wait (``Retry-After``: seconds or an HTTP date)."""
    value = response.headers.get("Retry-After", "").strip()
    if not value or response.status_code not in (429, 503):
        return 0.0
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - time.time())
