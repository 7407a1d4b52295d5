"""Behind a proxy: ``BRIDGE_TRUSTED_PROXIES`` (werkzeug's ``ProxyFix`` on the bundled
app) and the shipped nginx configuration (``deploy/nginx/reteno-bridge.conf``) in front
of gunicorn, where clients that trickle their headers tie up nginx, not the bridge."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest
import requests
from flask import request

from bench.common import free_port
from bench.harness import NGINX, SHIPPED_NGINX, nginx_conf
from bridge.config import ConfigError
from tests.conftest import API_KEY
from tests.test_processes import ROOT, environment, gunicorn, wait_until_listening

SUPPORT = {
    "BRIDGE_SUPPORT_PAGE": True,
    "BRIDGE_SECRET_KEY": "support-secret-key-" + "k" * 24,
}
FORWARDED = {
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "bridge.example.com",
}


def _seen(app) -> dict:
    """What the app makes of a request with ``FORWARDED`` headers from 127.0.0.1."""

    @app.get("/_probe")
    def probe():
        return {"addr": request.remote_addr, "secure": request.is_secure, "host": request.host}

    return app.test_client().get("/_probe", headers=FORWARDED).get_json()


def test_without_trusted_proxies_forwarded_headers_are_ignored(make_app):
    assert _seen(make_app()) == {"addr": "127.0.0.1", "secure": False, "host": "localhost"}


def test_a_trusted_proxy_gives_the_client_address_scheme_and_host(make_app):
    seen = _seen(make_app(BRIDGE_TRUSTED_PROXIES=1))
    assert seen == {"addr": "203.0.113.7", "secure": True, "host": "bridge.example.com"}


def test_behind_a_tls_proxy_the_support_cookie_is_secure(make_app, monkeypatch):
    monkeypatch.setenv("BRIDGE_TRUSTED_PROXIES", "1")  # the environment works as app.config
    page = make_app(**SUPPORT).test_client().get("/support/login", headers=FORWARDED)
    assert "; Secure" in page.headers["Set-Cookie"]
    plain = make_app(**SUPPORT).test_client().get("/support/login")
    assert "Secure" not in plain.headers["Set-Cookie"]


@pytest.mark.parametrize("value", ["-1", "many", "11"])
def test_a_bad_count_of_proxies_stops_start_up_naming_the_key(make_app, value):
    with pytest.raises(ConfigError, match="^BRIDGE_TRUSTED_PROXIES must be an integer"):
        make_app(BRIDGE_TRUSTED_PROXIES=value)


# --- the shipped nginx configuration in front of gunicorn --------------------------------

REQUEST_VARIABLES = ("$request", "$uri", "$args", "$query_string", "$arg_")


def _directives(text: str, name: str) -> list[str]:
    """Each ``name`` directive of an nginx configuration, comments left out."""
    lines = (line.split("#", 1)[0] for line in text.splitlines())
    statements = " ".join(lines).replace("{", ";").replace("}", ";").split(";")
    return [s.strip() for s in statements if s.split()[:1] == [name]]


def test_nginx_logs_no_request_line_path_or_query():
    """Paths and queries hold e-mails, phones, chat ids and claim codes: the shipped
    configuration switches nginx's access log off, or gives it a format without them."""
    for conf in (ROOT / "deploy" / "nginx").glob("*.conf"):
        text = conf.read_text()
        formats = _directives(text, "log_format")
        for fmt in formats:
            assert not any(v in fmt for v in REQUEST_VARIABLES), (conf.name, fmt)
        logs = _directives(text, "access_log")
        assert logs, f"{conf.name} keeps nginx's default access log (whole request lines)"
        for log in logs:
            words = log.split()
            own_format = len(words) > 2 and any(f.split()[1] == words[2] for f in formats)
            assert words[1:] == ["off"] or own_format, (conf.name, log)


def test_nginx_closes_idle_connections_to_gunicorn_before_gunicorn_does():
    """Otherwise gunicorn closes an idle connection just as nginx sends a request on it,
    and nginx answers that request 502 (the hour of RELIABILITY.md, figure 8, had three
    such answers to POST /register while gunicorn waited its default 2 s)."""
    from bridge import gunicorn_conf

    upstream = SHIPPED_NGINX.read_text().split("upstream reteno_bridge {", 1)[1].split("}")[0]
    [timeout] = _directives(upstream, "keepalive_timeout")
    seconds = int(timeout.split()[1].removesuffix("s"))
    assert gunicorn_conf.keepalive > seconds


SLOW_CLIENTS = 300
ATTACK_SECONDS = 15
BOUND = 5.0  # seconds: a generous bound on an answer while the attack runs


class SlowHeaders:
    """``count`` connections that each send one header line a second and never finish
    their headers; a connection the server closes is opened again."""

    def __init__(self, port: int, count: int):
        self.port, self.count = port, count
        self.stop = threading.Event()
        self.opened = self.cut = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n")
        except OSError:
            return None
        self.opened += 1
        return sock

    def _run(self) -> None:
        socks = [self._open() for _ in range(self.count)]
        while not self.stop.wait(1.0):
            for i, sock in enumerate(socks):
                try:
                    if sock is None:
                        raise OSError
                    sock.sendall(b"X-Slow: %d\r\n" % i)
                except OSError:
                    self.cut += sock is not None
                    if sock is not None:
                        sock.close()
                    socks[i] = self._open()
        for sock in socks:
            if sock is not None:
                sock.close()

    def __enter__(self):
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)


def timed(call) -> tuple[float, int]:
    started = time.monotonic()
    answer = call()
    return time.monotonic() - started, answer.status_code


@pytest.mark.real_http
@pytest.mark.skipif(not os.path.exists(NGINX), reason=f"{NGINX} is absent (apt-get install nginx)")
def test_slow_header_clients_leave_healthz_and_register_answering(tmp_path, db_url):
    env = environment(
        tmp_path,
        BRIDGE_DATABASE_URL=db_url,
        BRIDGE_BACKGROUND_DELIVERY="false",
        BRIDGE_TRUSTED_PROXIES="1",
    )
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    with gunicorn(env, "bridge.factory:app") as (_server, upstream):
        port = free_port()
        conf = nginx_conf(prefix, port, upstream)
        check = subprocess.run(
            [NGINX, "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stderr
        proxy = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_until_listening(port, proxy)
            base = f"http://127.0.0.1:{port}"
            auth = {"Authorization": f"Bearer {API_KEY}"}
            chat = iter(range(700_000_001, 700_001_000))

            def healthz():
                return requests.get(f"{base}/healthz", timeout=30)

            def register():
                body = {"token": next(chat), "email": "ann@example.com"}
                return requests.post(f"{base}/register", json=body, headers=auth, timeout=30)

            usual = [timed(healthz) for _ in range(5)] + [timed(register) for _ in range(5)]
            with SlowHeaders(port, SLOW_CLIENTS) as attack:
                time.sleep(3)  # every slow connection is open and trickling
                during = []
                while time.monotonic() - attack.started < ATTACK_SECONDS:
                    during += [timed(healthz), timed(register)]
                    time.sleep(0.5)
            figures = {
                "usual_max_s": round(max(s for s, _ in usual), 3),
                "attack_max_s": round(max(s for s, _ in during), 3),
                "answers_during_attack": len(during),
                "slow_connections_opened": attack.opened,
                "cut_by_nginx": attack.cut,
            }
            print("slow-header attack behind nginx:", figures)
            assert attack.opened >= SLOW_CLIENTS
            assert {code for _, code in usual + during} <= {200, 202}, (usual, during)
            assert all(seconds < BOUND for seconds, _ in during), during
        finally:
            proxy.terminate()
            proxy.communicate(timeout=10)
