"""A client for reteno-telegram-bridge: ``BridgeClient`` and ``AsyncBridgeClient``,
typed results, one exception (``BridgeError``), timeouts and retries that fit a bot.
The adapters live in ``reteno_bridge_client.aiogram`` and ``reteno_bridge_client.ptb``
(extras ``[aiogram]`` and ``[ptb]``)."""

from .client import AsyncBridgeClient, BridgeClient
from .errors import BridgeError
from .results import (
    ClaimCode,
    EventResult,
    HistoryEvent,
    Link,
    LinkStatus,
    MuteResult,
    Registration,
    RegistrationRecord,
    TokenPage,
)
from .retry import DEFAULT_TIMEOUT, RetryPolicy

__all__ = [
    "AsyncBridgeClient",
    "BridgeClient",
    "BridgeError",
    "ClaimCode",
    "DEFAULT_TIMEOUT",
    "EventResult",
    "HistoryEvent",
    "Link",
    "LinkStatus",
    "MuteResult",
    "Registration",
    "RegistrationRecord",
    "RetryPolicy",
    "TokenPage",
]
