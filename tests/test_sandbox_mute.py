"""Tests for the simulator's mute and unmute calls (``POST .../token/mute``, ``.../unmute``)."""

import logging
from datetime import UTC, datetime, timedelta

import pytest

from bridge.sandbox import DROP_FALLBACK_HEADER, Simulator, SimulatorOptions, create_app
from tests.test_sandbox import APP, KEY, OTHER_APP, URL, FakeClock, basic, post_tokens

MUTE = f"/api/v1/apps/{APP}/token/mute"
UNMUTE = f"/api/v1/apps/{APP}/token/unmute"
START = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


class WallClock:
    """The simulator's UTC clock; tests move it instead of sleeping."""

    def __init__(self, now: datetime = START):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make(status_sink=None, wall=None, clock=None, sleep=None, **overrides):
    options = SimulatorOptions(**{"app_uuid": APP, "api_key": KEY, "rps": 0, **overrides})
    simulator = Simulator(
        options,
        status_sink=status_sink,
        clock=clock or FakeClock(),
        sleep=sleep or (lambda seconds: None),
        utc_now=wall or WallClock(),
    )
    return simulator, create_app(simulator=simulator).test_client()


def mute(client, token="100", duration=None, key=KEY, url=MUTE, **kwargs):
    body = {"token": token} if duration is None else {"token": token, "duration": duration}
    headers = {"X-Reteno-Access-Key": key} if key is not None else {}
    return client.post(url, json=body, headers=headers, **kwargs)


def unmute(client, token="100", key=KEY, url=UNMUTE):
    headers = {"X-Reteno-Access-Key": key} if key is not None else {}
    return client.post(url, json={"token": token}, headers=headers)


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def entry(token="100", until="forever", app=APP):
    return {"token": token, "app_uuid": app, "muted_until": until}


# --------------------------------------------------------------------- success


def test_mute_without_duration_is_for_ever():
    simulator, client = make()
    response = mute(client)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == "OK"
    assert simulator.muted() == [entry()]
    stats = simulator.stats()
    assert (stats["requests"], stats["mute_requests"], stats["accepted_requests"]) == (1, 1, 1)


def test_mute_with_duration_ends_that_many_seconds_after_receipt():
    wall = WallClock()
    simulator, client = make(wall=wall)
    assert mute(client, duration=60).status_code == 200
    assert simulator.muted() == [entry(until=stamp(START + timedelta(seconds=60)))]
    wall.advance(59.999)
    assert len(simulator.muted()) == 1
    wall.advance(0.001)
    assert simulator.muted() == []  # an ended mute is not listed


def test_mute_end_counts_from_receipt_not_from_after_the_latency():
    wall = WallClock()
    simulator, client = make(wall=wall, latency_ms=2000, sleep=wall.advance)
    assert mute(client, duration=10).status_code == 200
    assert simulator.muted() == [entry(until=stamp(START + timedelta(seconds=10)))]


@pytest.mark.parametrize("duration", [5, 31_536_000])
def test_duration_bounds_are_accepted(duration):
    simulator, client = make()
    assert mute(client, duration=duration).status_code == 200
    assert simulator.muted() == [entry(until=stamp(START + timedelta(seconds=duration)))]


def test_null_duration_is_for_ever():
    simulator, client = make()
    response = client.post(
        MUTE, json={"token": "100", "duration": None}, headers={"X-Reteno-Access-Key": KEY}
    )
    assert response.status_code == 200
    assert simulator.muted() == [entry()]


def test_the_last_mute_wins():
    wall = WallClock()
    simulator, client = make(wall=wall)
    mute(client, duration=60)
    mute(client)
    assert simulator.muted() == [entry()]
    wall.advance(30)
    mute(client, duration=600)
    assert simulator.muted() == [entry(until=stamp(START + timedelta(seconds=630)))]
    mute(client, duration=5)  # a shorter mute replaces a longer one too
    assert simulator.muted() == [entry(until=stamp(START + timedelta(seconds=35)))]
    assert simulator.stats()["mute_requests"] == 4


def test_a_token_no_contact_holds_can_be_muted():
    simulator, client = make()
    assert simulator.find_by_token("100") == []
    assert mute(client).status_code == 200
    assert simulator.muted() == [entry()]
    assert simulator.contacts() == []


def test_unmute_clears_the_mute():
    simulator, client = make()
    mute(client, "100")
    mute(client, "200", duration=60)
    response = unmute(client, "100")
    assert response.status_code == 200
    assert response.get_json() == "OK"
    assert [m["token"] for m in simulator.muted()] == ["200"]
    assert unmute(client, "100").status_code == 200  # not muted: still fine
    stats = simulator.stats()
    assert (stats["unmute_requests"], stats["mute_requests"], stats["requests"]) == (2, 2, 4)


def test_mutes_are_kept_per_app():
    simulator, client = make(app_uuid=None)
    mute(client, url=f"/api/v1/apps/{APP}/token/mute")
    mute(client, url=f"/api/v1/apps/{OTHER_APP}/token/mute", duration=60)
    unmute(client, url=f"/api/v1/apps/{OTHER_APP}/token/unmute")
    assert simulator.muted() == [entry(app=APP)]


def test_mute_and_unmute_can_be_called_directly():
    simulator = Simulator(SimulatorOptions(api_key=KEY, rps=0))
    headers = {"X-Reteno-Access-Key": KEY}
    assert simulator.mute_token("any", headers, b'{"token": "1"}') == (200, "OK", {})
    assert simulator.mute_token("any", headers, {"token": "2", "duration": 5})[0] == 200
    assert [m["token"] for m in simulator.muted()] == ["1", "2"]
    assert simulator.unmute_token("any", headers, {"token": "1"}) == (200, "OK", {})
    assert [m["token"] for m in simulator.muted()] == ["2"]


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize("path", ["mute", "unmute"])
@pytest.mark.parametrize(
    "body",
    [
        {},
        {"token": ""},
        {"token": "  "},
        {"token": None},
        {"token": 100},
        {"token": ["1"]},
        {"duration": 60},
        {"tokens": [{"token": "1"}]},
    ],
)
def test_token_must_be_specified(path, body):
    simulator, client = make()
    response = client.post(
        f"/api/v1/apps/{APP}/token/{path}", json=body, headers={"X-Reteno-Access-Key": KEY}
    )
    assert response.status_code == 400
    assert response.get_json() == {"status": 400, "message": "Tokens must be specified"}
    assert simulator.muted() == []
    assert simulator.stats()["rejected"] == 1
    assert simulator.stats()["accepted_requests"] == 0


@pytest.mark.parametrize("path", ["mute", "unmute"])
def test_an_empty_body_is_a_missing_token(path):
    _, client = make()
    response = client.post(
        f"/api/v1/apps/{APP}/token/{path}",
        data="",
        content_type="application/json",
        headers={"X-Reteno-Access-Key": KEY},
    )
    assert response.get_json() == {"status": 400, "message": "Tokens must be specified"}


@pytest.mark.parametrize("duration", [0, 4, -5, 31_536_001, 60.0, 60.5, "60", True, False, [60]])
def test_duration_must_be_an_int_in_range(duration):
    simulator, client = make()
    mute(client, "100")
    response = mute(client, "100", duration=duration)
    assert response.status_code == 400
    assert response.get_json() == {"status": 400, "message": "Duration must be positive int"}
    assert simulator.muted() == [entry()]  # a refused mute changes nothing
    assert simulator.stats()["rejected"] == 1


@pytest.mark.parametrize("path", ["mute", "unmute"])
def test_malformed_app_uuid_is_400(path):
    simulator, client = make()
    response = mute(client, url=f"/api/v1/apps/nope/token/{path}")
    assert response.status_code == 400
    assert response.get_json() == {"status": 400, "message": "Wrong app uuid"}
    assert simulator.muted() == []


@pytest.mark.parametrize("path", ["mute", "unmute"])
def test_unknown_app_uuid_is_404(path):
    simulator, client = make()
    mute(client)
    response = mute(client, url=f"/api/v1/apps/{OTHER_APP}/token/{path}")
    assert response.status_code == 404
    assert response.get_json() == {"status": 404, "message": "Not registered application"}
    assert simulator.muted() == [entry()]
    assert simulator.stats()["rejected"] == 1


# ------------------------------------------------- auth, rate limit and faults


@pytest.mark.parametrize("path", ["mute", "unmute"])
@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "Access key is missing"),
        ("", "Access key is missing"),
        ("wrong", "Invalid access key"),
    ],
)
def test_header_auth_applies(path, key, message):
    simulator, client = make()
    simulator.mute_token(APP, {"X-Reteno-Access-Key": KEY}, {"token": "100"})
    response = mute(client, key=key, url=f"/api/v1/apps/{APP}/token/{path}", duration=60)
    assert response.status_code == 401
    assert response.get_json() == {"status": 401, "message": message}
    assert simulator.muted() == [entry()]
    assert simulator.stats()["unauthorized"] == 1


@pytest.mark.parametrize("path", ["mute", "unmute"])
def test_basic_auth_applies(path):
    _, client = make(auth="basic")
    url = f"/api/v1/apps/{APP}/token/{path}"
    refused = client.post(url, json={"token": "1"}, headers={"X-Reteno-Access-Key": KEY})
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic")
    assert client.post(url, json={"token": "1"}, headers=basic("u", KEY)).status_code == 200


def test_all_three_calls_share_the_rate_limit():
    clock = FakeClock()
    simulator, client = make(clock=clock, rps=2)
    assert post_tokens(client, [{"token": "1", "phone": "+1"}]).status_code == 200
    assert mute(client, "1").status_code == 200
    limited = unmute(client, "1")
    assert limited.status_code == 429
    assert limited.get_json() == {"status": 429, "message": "Too many requests"}
    assert limited.headers["Retry-After"] == "1"
    assert mute(client, "2").status_code == 429
    assert [m["token"] for m in simulator.muted()] == ["1"]
    stats = simulator.stats()
    assert stats["rate_limited"] == 2
    assert (stats["mute_requests"], stats["unmute_requests"]) == (2, 1)

    clock.now += 1.0
    assert unmute(client, "1").status_code == 200
    assert simulator.muted() == []


@pytest.mark.parametrize("path", ["mute", "unmute"])
@pytest.mark.parametrize(("kind", "status"), [("500", 500), ("503", 503), ("429", 429)])
def test_faults_are_injected_before_validation(path, kind, status):
    simulator, client = make(failure_rate=1.0, failures=(kind,))
    response = client.post(
        f"/api/v1/apps/{APP}/token/{path}", json={}, headers={"X-Reteno-Access-Key": KEY}
    )
    assert response.status_code == status
    assert response.get_json()["status"] == status
    assert simulator.stats()["faults"][kind] == 1
    assert simulator.stats()["rejected"] == 0


def test_a_dropped_mute_records_nothing():
    simulator, client = make(failure_rate=1.0, failures=("drop",))
    response = mute(client)
    assert response.status_code == 502
    assert response.headers[DROP_FALLBACK_HEADER] == "drop"
    assert simulator.muted() == []


def test_latency_is_added_to_mute_calls():
    slept = []
    _, client = make(latency_ms=250, sleep=slept.append)
    assert mute(client).status_code == 200
    assert unmute(client).status_code == 200
    assert slept == [0.25, 0.25]


def test_mute_calls_log_no_key(caplog):
    _, client = make(failure_rate=1.0, failures=("500",))
    with caplog.at_level(logging.DEBUG, logger="bridge.sandbox"):
        mute(client, duration=60)
        unmute(client, key="wrong-key")
    assert KEY not in caplog.text
    assert "wrong-key" not in caplog.text


# ----------------------------------------------------------------------- block


def test_block_drops_the_mute_and_a_returning_token_is_not_muted():
    received = []
    simulator, client = make(status_sink=received.extend, app_uuid=None)
    post_tokens(client, [{"token": "100", "phone": "+1"}, {"token": "200", "phone": "+2"}], url=URL)
    mute(client, "100")
    mute(client, "100", url=f"/api/v1/apps/{OTHER_APP}/token/mute")
    mute(client, "200", duration=60)
    assert len(simulator.block("100")) == 1
    assert [m["token"] for m in simulator.muted()] == ["200"]  # in every app
    post_tokens(client, [{"token": "100", "phone": "+1"}], url=URL)
    assert [m["token"] for m in simulator.muted()] == ["200"]
    assert len(received) == 1


def test_block_of_a_token_no_contact_holds_keeps_its_mute():
    simulator, client = make()
    mute(client, "100")
    assert simulator.block("100") == []
    assert simulator.muted() == [entry()]


def test_block_from_the_page_drops_the_mute():
    simulator, client = make(status_sink=lambda events: None)
    post_tokens(client, [{"token": "100", "phone": "+1"}])
    mute(client, "100")
    assert client.post("/block/100", data={"from": "page"}).status_code == 303
    assert simulator.muted() == []


def test_reset_forgets_mutes():
    simulator, client = make()
    mute(client)
    assert client.post("/reset").status_code == 200
    assert simulator.muted() == []
    assert simulator.stats()["mute_requests"] == 0


# ------------------------------------------------------------------ inspection


def test_page_lists_muted_chats_escaped():
    wall = WallClock()
    simulator, client = make(wall=wall)
    assert "No muted chats." in client.get("/").get_data(as_text=True)
    mute(client, "<b>100</b>")
    mute(client, "200", duration=60)
    mute(client, "300", duration=5)
    wall.advance(10)
    text = client.get("/").get_data(as_text=True)
    assert "<h2>Muted chats</h2>" in text
    assert "<code>&lt;b&gt;100&lt;/b&gt;</code></td><td>" + APP + "</td><td>forever</td>" in text
    assert "<code>200</code></td><td>" + APP + "</td><td>2030-01-02T03:05:05.000Z</td>" in text
    assert "<code>300</code>" not in text  # ended
    assert "No muted chats." not in text
    assert "mute requests: 3" in text
    assert "unmute requests: 0" in text
    assert KEY not in text


def test_muted_endpoint():
    simulator, client = make()
    mute(client, "100")
    unmute(client, "200")
    response = client.get("/muted")
    assert response.status_code == 200
    body = response.get_json()
    assert body["muted"] == [entry()]
    assert body["stats"] == simulator.stats()
    assert (body["stats"]["mute_requests"], body["stats"]["unmute_requests"]) == (1, 1)
