"""Reteno's answers are bounded (SECURITY.md, L4): a call ends at its deadline however
slowly the answer trickles in, at most 64 KB of any answer is read, and a claim's lease
is renewed while its call is in flight, so no other worker sends the batch meanwhile.

The trickle is a real socket server on 127.0.0.1 (a read time-out is per socket read:
only a real socket shows that it does not bound a call); the rest is ``requests_mock``
and the suite's fake clock.
"""

from __future__ import annotations

import io
import socket
import threading
import time

import pytest

from bridge.config import MAX_UPSTREAM_ANSWER_BYTES
from tests.conftest import TOKENS_URL, Clock
from tests.helpers import LEASE, Tally, history, register, rows, second_worker

TRICKLE_SECONDS = 20.0  # how long the trickling answer would last if read to its end
BYTE_EVERY = 0.2


class Trickle:
    """An upstream on a real socket. The first request is answered a byte every
    ``BYTE_EVERY`` seconds (from its status line, or from its body after whole headers);
    every later one at once with a 200. ``cut_after`` is how long the trickle went on
    before the bridge closed the connection."""

    def __init__(self, part: str):
        self.part = part
        self.requests = 0
        self.cut_after: float | None = None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            while self._read_request(conn):
                self.requests += 1
                if self.requests > 1:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                    continue
                body = b"x" * int(TRICKLE_SECONDS / BYTE_EVERY)
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                if self.part == "body":
                    conn.sendall(head)
                    answer = body
                else:
                    answer = head + body
                started = time.monotonic()
                try:
                    for i in range(len(answer)):
                        conn.sendall(answer[i : i + 1])
                        time.sleep(BYTE_EVERY)
                except OSError:
                    self.cut_after = time.monotonic() - started
                return

    @staticmethod
    def _read_request(conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += conn.recv(65536)
        return True

    def close(self) -> None:
        self.listener.close()


@pytest.mark.real_http
@pytest.mark.parametrize("part", ["status line", "body"])
def test_a_trickling_answer_ends_at_the_deadline_and_is_retried_later(make_app, auth, part):
    upstream = Trickle(part)
    try:
        app = make_app(
            RETENO_BASE_URL=upstream.url,
            BRIDGE_UPSTREAM_CONNECT_TIMEOUT=0.5,
            BRIDGE_UPSTREAM_READ_TIMEOUT=1,
            BRIDGE_UPSTREAM_DEADLINE=1,
        )
        bridge = app.extensions["reteno_bridge"]
        clock = bridge.ledger.clock = Clock()  # leases and backoffs; the socket is real
        client = app.test_client()
        register(client, auth, {"token": 1, "contactId": 1})
        started = time.monotonic()
        bridge.deliver_once()
        # a generous bound for a 1 s deadline against a 20 s trickle (a busy machine)
        assert time.monotonic() - started < 5
        [row] = rows(client, auth)
        last = history(client, auth, "1")[-1]
        assert row["state"] == "queued" and last["kind"] == "retry"
        assert last["detail"]["reason"] == "deadline"
        assert row["lastError"] == "no whole answer within 1 s"
        # the bridge closed the connection: the trickle stopped long before its end
        _wait_for(lambda: upstream.cut_after is not None)
        assert upstream.cut_after < 5
        # nothing is sent again before its backoff; then it is, and delivered
        bridge.deliver_once()
        assert upstream.requests == 1
        clock.advance(2)
        bridge.deliver_once()
        assert upstream.requests == 2
        assert rows(client, auth)[0]["state"] == "delivered"
    finally:
        upstream.close()


def _wait_for(condition, timeout: float = 10.0) -> None:
    """A bounded wait on the server thread (it notices the closed socket on its next
    byte)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the trickle was never cut"
        time.sleep(0.02)


class Huge(io.RawIOBase):
    """An answer body of ``size`` bytes made as it is read; ``given`` counts the bytes
    handed out."""

    def __init__(self, start: bytes, size: int):
        self.start, self.size, self.given = start, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.size - self.given)
        data = (self.start[self.given : self.given + n]).ljust(n, b"x")
        buffer[:n] = data
        self.given += n
        return n


@pytest.mark.parametrize(
    ("status", "state", "kind"),
    [(200, "delivered", "delivered"), (400, "dead", "dead"), (503, "queued", "retry")],
)
def test_at_most_64_kb_of_a_huge_answer_is_read(
    client, auth, bridge, requests_mock, status, state, kind
):
    body = Huge(b'{"message": "Invalid token ', 400 * 1024 * 1024)
    requests_mock.post(TOKENS_URL, status_code=status, reason="Reason", body=body)
    register(client, auth, {"token": 1, "contactId": 1})
    bridge.deliver_once()
    assert body.given <= MAX_UPSTREAM_ANSWER_BYTES == 64 * 1024
    [row] = rows(client, auth)
    assert row["state"] == state and history(client, auth, "1")[-1]["kind"] == kind
    if status != 200:  # the message is read from the start of the answer
        assert row["lastError"].startswith(f'{status} Reason: {{"message": "Invalid token xxx')


def test_a_call_in_flight_keeps_its_lease(make_app, auth, requests_mock, monkeypatch):
    app = make_app(BRIDGE_LEASE_SECONDS=LEASE)
    bridge = app.extensions["reteno_bridge"]
    clock = bridge.ledger.clock = Clock()
    other = second_worker(make_app, clock)
    renewed = Tally(monkeypatch, app, "renew", amount=len)
    bridge.worker.heartbeat_seconds = 0.05  # LEASE / 3 of real time would be 20 s
    taken = []

    def slow_answer(request, context):
        # The call lasts longer than the lease: the clock passes the first lease's end
        # only after a renewal made while the call was under way.
        clock.advance(LEASE - 1)
        renewed.wait_for(renewed.total + 2)  # a whole renewal after the clock moved
        clock.advance(2)
        taken.append(other.ledger.claim(100, LEASE))
        return "OK"

    requests_mock.post(TOKENS_URL, text=slow_answer)
    client = app.test_client()
    register(client, auth, {"token": 1, "contactId": 1})
    bridge.deliver_once()
    assert taken == [None], "another worker took the rows of a call in flight"
    assert requests_mock.call_count == 1
    assert rows(client, auth)[0]["state"] == "delivered"


def test_one_thread_keeps_every_calls_lease_and_deadline_and_ends_with_the_worker(
    make_app, auth, requests_mock, monkeypatch
):
    """No thread per call: the calls of a worker share one watch thread (lease renewals,
    deadlines), which ends once the worker's loop is stopped."""
    app = make_app(BRIDGE_LEASE_SECONDS=LEASE, BRIDGE_BATCH_SIZE=1)
    bridge = app.extensions["reteno_bridge"]
    bridge.worker.heartbeat_seconds = 0.02
    renewed = Tally(monkeypatch, app, "renew", amount=len)
    renewers = set()
    real_renew = bridge.ledger.renew
    monkeypatch.setattr(
        bridge.ledger,
        "renew",
        lambda *args: renewers.add(threading.current_thread()) or real_renew(*args),
    )
    client = app.test_client()
    register(client, auth, *({"token": n, "contactId": n} for n in range(1, 4)))
    before = set(threading.enumerate())
    alive_in_calls = []
    stop = threading.Event()

    def slow_answer(request, context):
        renewed.wait_for(renewed.total + 1)  # a renewal while this call is in flight
        alive_in_calls.append(set(threading.enumerate()) - before)
        if len(alive_in_calls) == 3:
            stop.set()
        return "OK"

    requests_mock.post(TOKENS_URL, text=slow_answer)
    bridge.worker.run(stop, poll_seconds=0.01)
    assert {r["state"] for r in rows(client, auth)} == {"delivered"}
    [watch] = renewers
    assert watch.name == "bridge-watch"
    assert alive_in_calls == [{watch}] * 3
    watch.join(10)  # bounds a hang; times nothing
    assert not watch.is_alive()


def test_the_deadline_is_at_most_half_the_lease_and_at_least_the_connect_time_out(make_app):
    settings = make_app().extensions["reteno_bridge"].settings
    # the default: the two time-outs, which a lease of 120 s outlasts twice over
    assert settings.upstream_deadline == 13.05 and settings.lease_seconds == 120
    from bridge.config import ConfigError

    with pytest.raises(ConfigError, match="BRIDGE_LEASE_SECONDS must be an integer from 60"):
        make_app(BRIDGE_UPSTREAM_DEADLINE=30, BRIDGE_LEASE_SECONDS=59)
    with pytest.raises(
        ConfigError,
        match="BRIDGE_UPSTREAM_DEADLINE .* must be at least BRIDGE_UPSTREAM_CONNECT_TIMEOUT",
    ):
        make_app(BRIDGE_UPSTREAM_DEADLINE=1, BRIDGE_UPSTREAM_CONNECT_TIMEOUT=2)
