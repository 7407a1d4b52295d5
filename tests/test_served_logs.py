"""The logs of a served bridge (SECURITY.md, L5 and L6, and gunicorn's control socket):
the request log never grows without bound while its sink stalls, and the shipped
``bridge/gunicorn_conf.py`` puts the bridge's redaction on gunicorn's access log and turns
gunicorn's control socket off."""

from __future__ import annotations

import logging
import subprocess
import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest
import requests

from bridge import logs as bridge_logs
from bridge.db import migrate
from bridge.logs import flush_request_log
from tests.conftest import BACKEND
from tests.test_metrics import scrape, value
from tests.test_processes import (
    BIN,
    ROOT,
    SHIPPED,
    environment,
    free_port,
    wait_until_listening,
)

CHAT, EMAIL, PHONE = "987654321", "ann.lee@example.com", "+380956490955"


# --- L6: a stalled log sink ------------------------------------------------------------


class Stalled(logging.Handler):
    """A log sink that takes one line and then hangs until ``release``."""

    def __init__(self):
        super().__init__()
        self.took_one = threading.Event()
        self.released = threading.Event()
        self.released_by_test = None

    def emit(self, record):
        if record.name != "bridge.request":
            return
        self.took_one.set()
        if self.released_by_test is None:
            # 30 s only bounds a hang: a request that waited for the log would reach it
            self.released_by_test = self.released.wait(30)


def test_a_stalled_log_sink_drops_lines_instead_of_holding_them(client, auth, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="bridge.request")
    bound = 5
    monkeypatch.setattr(bridge_logs._REQUEST_LOG, "maxsize", bound)
    _, samples = scrape(client, auth)
    before = value(samples, "bridge_request_log_dropped_total")
    flush_request_log()  # the scrape's own line is written before the sink stalls
    sink = Stalled()
    logging.getLogger("bridge.request").addHandler(sink)
    try:
        client.get("/tokens", headers=auth)
        assert sink.took_one.wait(10), "the log thread took no line"
        for _ in range(20):  # while the sink hangs: 5 lines wait, 15 are dropped
            assert client.get("/tokens", headers=auth).status_code == 200
        assert bridge_logs._REQUEST_LOG.queue.qsize() <= bound
        _, samples = scrape(client, auth)
        assert value(samples, "bridge_request_log_dropped_total") == before + 15
    finally:
        sink.released.set()
        flush_request_log()
        logging.getLogger("bridge.request").removeHandler(sink)
    assert sink.released_by_test is True, "a request waited for the stalled log sink"
    warnings = [r.getMessage() for r in caplog.records if r.name == "bridge.request.dropped"]
    # 15, and the line of the /metrics request that counted them
    assert [w.split(":")[0] for w in warnings] == ["16 request-log lines dropped"]
    written = [r for r in caplog.records if r.name == "bridge.request"]
    assert len(written) == 1 + 1 + bound  # the first scrape, the line taken, those queued


# --- L5 and the control socket: the shipped bridge/gunicorn_conf.py -------------------


def shipped_config():
    """gunicorn's settings as the shipped ``bridge/gunicorn_conf.py`` makes them."""
    from gunicorn.app.base import Application

    class Shipped(Application):
        def init(self, parser, opts, args):
            return None

        def load_config(self):
            self.load_config_from_module_name_or_filename(SHIPPED)

        def load(self):
            return None

    return Shipped().cfg


def test_the_shipped_gunicorn_config_redacts_the_access_log_and_has_no_control_socket(capsys):
    cfg = shipped_config()
    assert cfg.settings["control_socket_disable"].get() is True
    cfg.set("accesslog", "-")
    logger = cfg.logger_class(cfg)
    environ = {
        "REQUEST_METHOD": "GET",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "RAW_URI": f"/tokens?email={EMAIL}&phone=%2B380956490955",
        "REMOTE_ADDR": "127.0.0.1",
    }
    response = SimpleNamespace(status="200 OK", headers=[], sent=2)
    logger.access(response, SimpleNamespace(headers=[]), environ, timedelta(seconds=0.01))
    environ["RAW_URI"] = f"/tokens/{CHAT}/history"
    logger.access(response, SimpleNamespace(headers=[]), environ, timedelta(seconds=0.01))
    out = capsys.readouterr().out
    assert '"GET /tokens?email=<email>&phone=<number> HTTP/1.1" 200' in out
    assert '"GET /tokens/<number>/history HTTP/1.1" 200' in out
    for secret in (EMAIL, CHAT, "380956490955"):
        assert secret not in out


@pytest.mark.real_http
@pytest.mark.skipif(BACKEND == "postgres", reason="a SQLite ledger: the SQLite pass runs it")
def test_gunicorn_serving_with_the_shipped_config_keeps_the_access_log_clean(tmp_path):
    migrate(f"sqlite:///{tmp_path / 'bridge.sqlite3'}")
    port = free_port()
    home = tmp_path / "home"
    home.mkdir()
    # where gunicorn would put its control socket (HOME/.gunicorn, or XDG_RUNTIME_DIR)
    env = environment(
        tmp_path,
        WEB_CONCURRENCY=1,
        BRIDGE_BACKGROUND_DELIVERY="false",
        HOME=home,
        XDG_RUNTIME_DIR=None,
    )
    server = subprocess.Popen(
        [
            str(BIN / "gunicorn"),
            "--config",
            SHIPPED,
            "--access-logfile",
            "-",
            "--bind",
            f"127.0.0.1:{port}",
            "bridge.factory:app",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_listening(port, server)
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {env['BRIDGE_API_KEYS']}"}
        assert (
            requests.get(
                f"{base}/tokens", params={"email": EMAIL, "phone": PHONE}, headers=auth, timeout=10
            ).status_code
            == 200
        )
        assert requests.get(
            f"{base}/tokens/{CHAT}/history", headers=auth, timeout=10
        ).status_code in (200, 404)
        # gunicorn removes its control socket when it stops: look while it serves
        assert not list(home.rglob("*.ctl")), "gunicorn made a control socket"
    finally:
        server.terminate()
        out, err = server.communicate(timeout=30)
    access = [line for line in out.splitlines() if '"GET /tokens' in line]
    assert len(access) == 2, out
    assert "/tokens?email=<email>&phone=<number>" in access[0]
    assert "/tokens/<number>/history" in access[1]
    for secret in (EMAIL, "ann.lee%40example.com", CHAT, "380956490955"):
        assert secret not in out + err
    assert "control socket" not in err.lower()
