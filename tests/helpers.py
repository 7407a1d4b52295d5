"""What many tests do through the bridge's HTTP API, each call asserted to succeed."""

from __future__ import annotations


def register(client, auth, *items):
    """``POST /register`` of one token object (sent as it is) or several (as
    ``{"tokens": [...]}``); the registrations of the 202."""
    body = items[0] if len(items) == 1 else {"tokens": list(items)}
    response = client.post("/register", json=body, headers=auth)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["registrations"]


def rows(client, auth, **filters):
    """``GET /tokens`` with ``filters``: the items of one page of up to 500."""
    response = client.get("/tokens", query_string={"limit": 500, **filters}, headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["items"]


def history(client, auth, token):
    """``GET /tokens/<token>/history``: the events, oldest first."""
    response = client.get(f"/tokens/{token}/history", headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["events"]


def assert_error_shape(response, code):
    """``response`` is an error of status ``code`` in the bridge's one JSON error shape;
    its body."""
    assert response.status_code == code, response.data
    body = response.get_json()
    assert set(body) == {"code", "status", "message", "errors"}
    assert body["code"] == code
    assert isinstance(body["status"], str) and body["status"]
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["errors"], dict)
    return body
