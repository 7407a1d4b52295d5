"""gunicorn's settings for serving the bridge, shipped in the package:
``gunicorn -c python:bridge.gunicorn_conf bridge.factory:app`` (the Procfile's web
process, ``make serve``, ``reteno-bridge serve``). They suit any app, with the bridge
or without it.
"""

import queue
import signal
import sys

from gunicorn.glogging import Logger

from bridge.config import process_setting

bind = f"{process_setting('HOST')}:{process_setting('PORT')}"
workers = process_setting("WEB_CONCURRENCY")
# Threaded workers: registrations that arrive together share one transaction and one
# flush to disk (BENCHMARKS.md).
worker_class = "gthread"
threads = 16
# The app is built once, in the master, before any worker forks: a bad setting, an
# unreachable database or a schema behind the code stops gunicorn with one line and
# exit status 1 instead of workers failing to boot over and over.
preload_app = True
# A worker told to stop finishes its requests and the upstream calls in flight of its
# delivery thread (at most BRIDGE_UPSTREAM_DEADLINE, 13 s by default) within this.
graceful_timeout = 30
# No control socket (gunicorn 25.1+ opens one by default, in $XDG_RUNTIME_DIR or
# ~/.gunicorn): nothing should reconfigure or stop the server from outside its signals.
control_socket_disable = True
# How long an idle keep-alive connection waits for its next request. nginx keeps
# connections to gunicorn open between requests and closes an idle one after its
# upstream ``keepalive_timeout`` (60 s in deploy/nginx): gunicorn must wait longer, or
# it closes one just as nginx sends a request on it, and nginx answers that request
# 502 (it never sends a POST twice). gunicorn's own default is 2 s.
keepalive = 75


class RedactingLogger(Logger):
    """gunicorn's logs through the bridge's redaction: an access-log line holds the
    request's path and query string, and so chat ids, e-mail addresses and phones."""

    def setup(self, cfg):
        super().setup(cfg)
        from bridge.logs import redacting

        redacting(self.access_log)
        redacting(self.error_log)


logger_class = RedactingLogger


_STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def _stop_booting_worker(_signum, _frame):
    sys.exit(0)


def post_fork(server, worker):
    """A stop that reaches a worker while it boots stops it.

    A forked worker keeps the master's signal handlers until it sets its own, and the
    master's handler only queues the signal in the worker's copy of the master's queue,
    where nobody reads it: gunicorn's SIGTERM to a booting worker was lost, and a stop
    waited the whole ``graceful_timeout`` (30 s) before the master killed it. Here the
    worker exits on such a signal until gunicorn installs its own handlers, and exits at
    once if one already arrived."""
    for signum in _STOPS:
        signal.signal(signum, _stop_booting_worker)
    if any(signum in _STOPS for signum in _queued(server.SIG_QUEUE)):
        sys.exit(0)


def _queued(signals) -> list:
    """The signals in this process's copy of the master's queue (a list before gunicorn
    25, a ``SimpleQueue`` since)."""
    if isinstance(signals, list):
        return list(signals)
    arrived = []
    while True:
        try:
            arrived.append(signals.get_nowait())
        except queue.Empty:
            return arrived


def post_worker_init(worker):
    """Each worker starts its delivery thread at once (BRIDGE_BACKGROUND_DELIVERY=true;
    a no-op when separate ``bridge deliver`` workers deliver, or for an app without the
    bridge)."""
    from bridge.runtime import EXTENSION

    runtime = getattr(worker.wsgi, "extensions", {}).get(EXTENSION)
    if runtime is not None:
        runtime.ensure_background()
