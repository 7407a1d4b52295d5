"""Parts of ``POST /register`` served alone: where the gap to bare Flask comes from.

``gunicorn bench.parts_app:app`` with ``BENCH_PARTS`` set to a comma-separated
choice of

* ``validate``: the bearer check, the strict JSON body (``bridge.http``), the
  marshmallow token schema and the response schema, as the view runs them;
* ``ledger``: ``Ledger.register`` (group commit, durable SQLite write) on the
  ledger at ``BENCH_PARTS_DB`` (migrated by the caller); without ``validate`` the
  body is read with a plain ``json.loads``.

Nothing else of the bridge runs: no request log, no metrics, no blueprint hooks
and no delivery. ``bench_register.py`` serves these next to bare Flask and the
whole bridge, the same way, in the same run.
"""

from __future__ import annotations

import json
import os

from flask import Flask, Response, request

from bridge.db import Database
from bridge.http import APIError, bearer_ok, json_body
from bridge.ledger import Ledger, Outcome, TokenRequest
from bridge.schemas import RegisterResponseSchema, TokenSchema

PARTS = {part.strip() for part in os.environ.get("BENCH_PARTS", "").split(",") if part}
KEYS = (os.environ.get("BENCH_PARTS_KEY", ""),)
app = Flask(__name__)
_ledger = (
    Ledger(Database(f"sqlite:///{os.environ['BENCH_PARTS_DB']}")) if "ledger" in PARTS else None
)
_token = TokenSchema()
_response = RegisterResponseSchema()


@app.post("/register")
def register():
    if "validate" in PARTS:
        if not bearer_ok(KEYS):
            raise APIError(401, "A valid API key is required.")
        items = [_token.load(json_body(1 << 22))]
    else:
        data = json.loads(request.get_data())
        items = [TokenRequest(str(data["token"]), email=data["email"])]
    if _ledger is not None:
        outcomes = _ledger.register(items)
    else:
        outcomes = [Outcome(0, i.token, i.matched_by, "queued", False) for i in items]
    if "validate" in PARTS:
        return _response.dump({"registrations": outcomes}), 202
    body = {"registrations": [{**vars(o), "matchedBy": o.matched_by} for o in outcomes]}
    return Response(json.dumps(body), 202, mimetype="application/json")
