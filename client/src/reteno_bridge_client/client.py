"""``BridgeClient`` (sync) and ``AsyncBridgeClient`` (async): the calls of
:mod:`reteno_bridge_client.calls` over httpx, under a :class:`RetryPolicy`.

Both send ``Authorization: Bearer <api_key>`` (one of the bridge's
``BRIDGE_API_KEYS``) and take the same options: ``timeout`` (an ``httpx.Timeout``,
default :data:`DEFAULT_TIMEOUT`: connect 3 s, read, write and pool 5 s), ``retry``
(default: a 10 s deadline per call, at most 4 attempts) and ``transport`` (an httpx
transport: ``httpx.MockTransport`` in tests, or ``httpx.WSGITransport(app=app)`` to call
a bridge mounted in the same Flask app, as a website's tests do). The two classes differ
only in how they wait and send; what each call sends and reads is said once, in ``calls``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

import httpx

from . import calls
from .calls import Call, Token
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

T = TypeVar("T")
log = logging.getLogger("reteno_bridge_client")


def _options(base_url: str, api_key: str, timeout: httpx.Timeout) -> dict[str, Any]:
    return {
        "base_url": base_url.rstrip("/"),
        "timeout": timeout,
        "headers": {"Authorization": f"Bearer {api_key}", "User-Agent": "reteno-bridge-client"},
    }


def _retrying(call: Call, outcome: httpx.Response | httpx.TransportError, pause: float):
    what = (
        f"HTTP {outcome.status_code}"
        if isinstance(outcome, httpx.Response)
        else type(outcome).__name__
    )
    log.debug("%s %s: %s; again in %.2f s", call.method, call.path, what, pause)


class BridgeClient:
    """The bridge's bot-facing API, synchronously. Each method raises
    :class:`~reteno_bridge_client.BridgeError` for a call the bridge did not carry out."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._http = httpx.Client(transport=transport, **_options(base_url, api_key, timeout))

    def _send(self, call: Call[T]) -> T:
        attempts = self.retry.start(self.timeout, call.repeatable)
        while True:
            try:
                outcome: httpx.Response | httpx.TransportError = self._http.request(
                    call.method,
                    call.path,
                    json=call.json,
                    params=call.params,
                    timeout=attempts.timeout(),
                )
            except httpx.TransportError as exc:
                outcome = exc
            pause = attempts.pause(outcome)
            if pause is None:
                return call.result(outcome)
            _retrying(call, outcome, pause)
            time.sleep(pause)

    def register(self, token: Token, **identifiers: Any) -> Registration:
        """Register chat ``token`` with ``contact_id``, ``external_customer_id``,
        ``phone`` and/or ``email`` (at least one)."""
        return self._send(calls.register(token, **identifiers))

    def register_many(self, contacts: Iterable[Mapping[str, Any]]) -> list[Registration]:
        """Register up to 1000 chats at once: mappings with ``token`` and identifiers;
        all or nothing (a 422 names the invalid ones as ``tokens.N.field``)."""
        return self._send(calls.register_many(contacts))

    def mute(self, token: Token, duration: int | timedelta | None = None) -> MuteResult:
        """Stop marketing messages to the chat, for ``duration`` (5 s to a year) or until
        :meth:`unmute`; a 404 when the chat has no live registration."""
        return self._send(calls.mute(token, duration))

    def unmute(self, token: Token) -> MuteResult:
        return self._send(calls.unmute(token))

    def send_event(
        self,
        token: Token,
        event_type_key: str,
        params: Mapping[str, Any] | None = None,
        time: datetime | float | str | None = None,
    ) -> EventResult:
        """Send a custom event about chat ``token`` to Reteno (its workflows start from
        them): ``params`` ``{name: str or dict}``; the bridge adds the chat's contact
        identifier. ``time``: when it happened (default: now). A 404 when the chat has no
        live registration. Not retried: a repeat would send the event twice."""
        return self._send(calls.send_event(token, event_type_key, params, time))

    def forward_update(self, update: Mapping[str, Any]) -> None:
        """Hand a Telegram ``Update`` (its JSON) to the bridge's ``/telegram/webhook``."""
        return self._send(calls.forward_update(update))

    def tokens(self, **filters: Any) -> TokenPage:
        """One page of ``GET /tokens`` (filters: ``token``, the identifiers, ``state``,
        ``conflict``, ``quiet_days``, ``limit``, ``cursor``)."""
        return self._send(calls.tokens(**filters))

    def iter_tokens(self, **filters: Any) -> Iterator[RegistrationRecord]:
        """Every registration matching ``filters``, page after page."""
        page = self.tokens(**filters)
        yield from page.items
        while page.next:
            page = self.tokens(**{**filters, "cursor": page.next})
            yield from page.items

    def history(self, token: Token) -> list[HistoryEvent]:
        return self._send(calls.history(token))

    def create_link(self, *, ttl: int | str | timedelta | None = None, **identifiers: Any) -> Link:
        """A deep link that registers, with these identifiers (as :meth:`register` takes
        them), the chat that opens it; ``ttl``: seconds, a ``timedelta`` or ``"12h"``
        (default: the bridge's ``BRIDGE_LINK_TTL``)."""
        return self._send(calls.create_link(ttl=ttl, **identifiers))

    def link_status(self, link_id: int | str) -> LinkStatus:
        return self._send(calls.link_status(link_id))

    def revoke_link(self, link_id: int | str) -> None:
        return self._send(calls.revoke_link(link_id))

    def create_claim(self, token: Token) -> ClaimCode:
        """A single-use code (15 minutes) for chat ``token`` to show its user, who enters
        it on the website; the website then calls :meth:`claim`."""
        return self._send(calls.create_claim(token))

    def claim(self, code: str, **identifiers: Any) -> Registration:
        """Register the chat behind ``code`` with these identifiers; a 410 for a code
        used or expired, a 404 for an unknown one (neither registers anything)."""
        return self._send(calls.claim(code, **identifiers))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BridgeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncBridgeClient:
    """The same calls as :class:`BridgeClient`, awaitable."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._http = httpx.AsyncClient(transport=transport, **_options(base_url, api_key, timeout))

    async def _send(self, call: Call[T]) -> T:
        attempts = self.retry.start(self.timeout, call.repeatable)
        while True:
            try:
                outcome: httpx.Response | httpx.TransportError = await self._http.request(
                    call.method,
                    call.path,
                    json=call.json,
                    params=call.params,
                    timeout=attempts.timeout(),
                )
            except httpx.TransportError as exc:
                outcome = exc
            pause = attempts.pause(outcome)
            if pause is None:
                return call.result(outcome)
            _retrying(call, outcome, pause)
            await asyncio.sleep(pause)

    async def register(self, token: Token, **identifiers: Any) -> Registration:
        return await self._send(calls.register(token, **identifiers))

    async def register_many(self, contacts: Iterable[Mapping[str, Any]]) -> list[Registration]:
        return await self._send(calls.register_many(contacts))

    async def mute(self, token: Token, duration: int | timedelta | None = None) -> MuteResult:
        return await self._send(calls.mute(token, duration))

    async def unmute(self, token: Token) -> MuteResult:
        return await self._send(calls.unmute(token))

    async def send_event(
        self,
        token: Token,
        event_type_key: str,
        params: Mapping[str, Any] | None = None,
        time: datetime | float | str | None = None,
    ) -> EventResult:
        return await self._send(calls.send_event(token, event_type_key, params, time))

    async def forward_update(self, update: Mapping[str, Any]) -> None:
        return await self._send(calls.forward_update(update))

    async def tokens(self, **filters: Any) -> TokenPage:
        return await self._send(calls.tokens(**filters))

    async def iter_tokens(self, **filters: Any) -> AsyncIterator[RegistrationRecord]:
        page = await self.tokens(**filters)
        for item in page.items:
            yield item
        while page.next:
            page = await self.tokens(**{**filters, "cursor": page.next})
            for item in page.items:
                yield item

    async def history(self, token: Token) -> list[HistoryEvent]:
        return await self._send(calls.history(token))

    async def create_link(
        self, *, ttl: int | str | timedelta | None = None, **identifiers: Any
    ) -> Link:
        return await self._send(calls.create_link(ttl=ttl, **identifiers))

    async def link_status(self, link_id: int | str) -> LinkStatus:
        return await self._send(calls.link_status(link_id))

    async def revoke_link(self, link_id: int | str) -> None:
        return await self._send(calls.revoke_link(link_id))

    async def create_claim(self, token: Token) -> ClaimCode:
        return await self._send(calls.create_claim(token))

    async def claim(self, code: str, **identifiers: Any) -> Registration:
        return await self._send(calls.claim(code, **identifiers))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncBridgeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
