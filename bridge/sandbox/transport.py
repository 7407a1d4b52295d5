"""A ``requests`` adapter that calls a WSGI app in this process instead of opening a
socket: how a sandbox bridge reaches its simulator, and the simulator the bridge
(:func:`post_in_process`)."""

from __future__ import annotations

import io
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from werkzeug.test import EnvironBuilder, run_wsgi_app


class WSGITransport(BaseAdapter):
    """A requests adapter that calls a WSGI app in-process (the mounted simulator)."""

    def __init__(self, wsgi_app):
        super().__init__()
        self.wsgi_app = wsgi_app

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        parts = urlsplit(request.url)
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        builder = EnvironBuilder(
            path=parts.path,
            query_string=parts.query,
            method=request.method,
            headers=dict(request.headers),
            data=body,
            base_url=f"{parts.scheme}://{parts.netloc}",
        )
        try:
            environ = builder.get_environ()
        finally:
            builder.close()
        app_iter, status, headers = run_wsgi_app(self.wsgi_app, environ, buffered=True)
        try:
            content = b"".join(app_iter)
        finally:
            if hasattr(app_iter, "close"):
                app_iter.close()
        response = requests.Response()
        response.status_code = int(status.split(" ", 1)[0])
        response.reason = status.split(" ", 1)[1] if " " in status else ""
        response.headers = CaseInsensitiveDict(headers.items())
        response.raw = io.BytesIO(content)
        response._content = content
        response.url = request.url
        response.request = request
        response.encoding = requests.utils.get_encoding_from_headers(response.headers)
        return response

    def close(self):
        pass


BRIDGE_HOST = "http://bridge.local"  # the bridge in this process (never a socket)


def post_in_process(wsgi_app, path: str, body, key: str) -> requests.Response:
    """``POST path`` of ``wsgi_app`` in this process, ``body`` as JSON, with the bearer
    ``key`` (as a client of the bridge holding an API key would send it)."""
    session = requests.Session()
    session.mount(BRIDGE_HOST, WSGITransport(wsgi_app))
    return session.post(
        f"{BRIDGE_HOST}{path}",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
