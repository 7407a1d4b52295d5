"""Fixtures of the client's tests: a bridge answered by ``httpx.MockTransport`` (no
network), and a fake clock that the client's waits move on instead of sleeping."""

from __future__ import annotations

import json

import httpx
import pytest

from reteno_bridge_client import client as client_module
from reteno_bridge_client.retry import RetryPolicy

URL = "http://bridge.test"
KEY = "bot-api-key-0123456789"


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture
def clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(client_module.time, "sleep", clock.sleep)
    monkeypatch.setattr(client_module.asyncio, "sleep", clock.asleep)
    return clock


@pytest.fixture
def policy(clock):
    """The default policy on the fake clock, each wait the top of its jitter range."""
    return RetryPolicy(clock=clock, jitter=lambda low, high: high)


class Bridge:
    """Answers in turn from ``answers`` (status, body, headers) or raises the exception
    given in their place; keeps every request."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        status, body, *headers = answer
        return httpx.Response(status, json=body, headers=headers[0] if headers else None)

    def bodies(self) -> list:
        return [json.loads(r.content) if r.content else None for r in self.requests]


def error(code: int, message: str, errors: dict | None = None) -> tuple[int, dict]:
    return code, {"code": code, "status": "x", "message": message, "errors": errors or {}}
