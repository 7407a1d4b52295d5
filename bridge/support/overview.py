"""The support page's overview: counts by state, the outbox (queued, oldest waiting,
paused and why, dead letters and why), the conflicts waiting for review, and the
last 30 days' chart. Flask-free: it words what ``/healthz``'s details, the ledger's
statistics and its per-day activity say. It shows no customer's data: ids and counts,
and Reteno's reasons for dead letters with addresses and numbers masked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..logs import redact
from . import chart

DAYS = 30
STATE_MEANING = {
    "queued": "waiting to be sent to Reteno",
    "delivered": "with Reteno: it can message these chats",
    "removed": "the customer blocked the bot, or the chat went quiet",
    "dead": "Reteno refused them for good (dead letters)",
    "held": "identity conflicts kept back for review",
}
PAUSE_REASONS = {
    "unauthorized": "Reteno refused the bridge's API key (401)",
    "forbidden": "Reteno refused the bridge's API key or app (403)",
    "not_found": "Reteno does not know the application ID (404)",
    "wrong_app_uuid": "Reteno says the application ID is wrong (400)",
    "app_not_registered": "Reteno says the application is not registered (400)",
    "tokens_missing": "Reteno refused the request itself (400)",
}


@dataclass(frozen=True)
class Overview:
    states: list[tuple[str, int, str]]
    queued: int
    oldest_wait: str
    paused: str | None  # why, and until when; None: not paused
    dead: int
    dead_by_error: list[tuple[str, int]]
    dead_commands: dict[str, int]
    held: list[Any]  # the held registrations (RegistrationRecord), newest first
    held_total: int
    last_upstream: dict | None
    days: list[dict]
    totals: dict[str, int]
    chart_svg: str


def duration(seconds: float) -> str:
    """``3 h 12 min``, ``45 s``: how long something has waited."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if days:
        return f"{days} d {hours % 24} h"
    if hours:
        return f"{hours} h {minutes % 60} min"
    return f"{minutes} min"


def _time(iso: str | None) -> str:
    """An ISO 8601 time of ``/healthz`` as the page shows times."""
    if not iso:
        return "unknown"
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def build(health: dict, stats: dict, days: list[dict], held: list[Any]) -> Overview:
    """``health``: ``Runtime.health(details=True)``'s body; ``stats``: the ledger's
    statistics; ``days``: its per-day activity; ``held``: held registrations."""
    delivery = health.get("delivery", {})
    paused = None
    if delivery.get("paused"):
        why = PAUSE_REASONS.get(delivery.get("pauseReason"), delivery.get("pauseReason"))
        again = _time(delivery["pausedUntil"])
        paused = f"{why or 'Reteno refused the bridge'}; tried again at {again}"
    elif delivery.get("heldUntil"):
        again = _time(delivery["heldUntil"])
        paused = f"Reteno asked the bridge to wait (Retry-After) until {again}"
    totals = {key: sum(d[key] for d in days) for key, _, _ in chart.SERIES}
    return Overview(
        states=[(s, n, STATE_MEANING.get(s, "")) for s, n in health.get("states", {}).items()],
        queued=health["outbox"]["depth"],
        oldest_wait=duration(health["outbox"]["oldestAgeSeconds"]),
        paused=paused,
        dead=health.get("deadLetters", 0),
        dead_by_error=[  # Reteno's words may quote someone: masked as in the logs
            (redact(item["error"]) if item["error"] else "no reason given", item["count"])
            for item in stats["deadLetters"]["byError"]
        ],
        dead_commands=health.get("deadCommands", {}),
        held=held,
        held_total=health.get("heldConflicts", 0),
        last_upstream=(
            {**health["lastUpstream"], "at": _time(health["lastUpstream"].get("at"))}
            if health.get("lastUpstream")
            else None
        ),
        days=days,
        totals=totals,
        chart_svg=chart.svg(
            days,
            f"Registrations, removals and comebacks per day, the last {len(days)} days "
            f"({totals['registered']}, {totals['removed']} and {totals['cameBack']} in all)",
        ),
    )
